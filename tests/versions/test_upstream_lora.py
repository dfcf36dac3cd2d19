"""Importing upstream fish-speech LoRA checkpoints: a LoRA made by upstream's own setup_lora (loralib)
on tiny-demo, imported as our peft adapter, computes what upstream's LoRA model computes and merges
as merge_loralib_lora does; other bases, mixed ranks and foreign modules are refused."""

import json

import pytest
import torch
from safetensors.torch import load_file
from upstream import upstream_fish_speech

from tts_lib.models import load_family
from tts_lib.models.fish_speech.checkpoint import MODEL_FILE, load_state_dict_file, merge_loralib_lora
from tts_lib.training.adapters import PEFT_WEIGHTS, SIDECAR, adapter_config_of, load_adapted, merge
from tts_lib.versions.upstream_lora import import_upstream_lora, is_upstream_lora

R, ALPHA = 4, 8  # not upstream's 8/16, so a default silently used instead would show
TOL = 1e-5


@pytest.fixture(scope="module")
def up():
    return upstream_fish_speech()


@pytest.fixture(scope="module")
def theirs(up, prepared):
    """Upstream's DualARTransformer on tiny-demo's weights with upstream's LoRA, random A and B, in
    train mode (unmerged: loralib adds B(A x) on the fly)."""
    base = prepared[0]
    family = load_family(base)
    assert not family.config.tie_word_embeddings  # setup_lora replaces `output`: it must exist
    model = up.llama.DualARTransformer(
        up.llama.DualARModelArgs(**family.config.to_dict()),
        tokenizer=up.tokenizer.FishTokenizer.from_pretrained(str(base)),
    )
    up.lora.setup_lora(model, up.lora.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0))
    result = model.load_state_dict(load_state_dict_file(base / MODEL_FILE), strict=False)
    assert not result.unexpected_keys and all("lora_" in k for k in result.missing_keys)
    torch.manual_seed(3)
    with torch.no_grad():  # fresh loralib B (or A for embeddings) is zero: make the adapter do something
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.1)
    return model.train()


def lightning(state: dict, path, with_base: bool = True):
    """What upstream's Lightning module saves: everything under state_dict with a `model.` prefix."""
    kept = {k: v.clone() for k, v in state.items() if with_base or "lora_" in k}
    torch.save({"state_dict": {"model." + k: v for k, v in kept.items()}, "global_step": 100, "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(theirs, tmp_path_factory):
    return lightning(theirs.state_dict(), tmp_path_factory.mktemp("upstream") / "step_000000100.ckpt")


def sequence(family, n_text=7, frames=10, seed=1):
    """(1, 1 + nc, T): text tokens, then frames (semantic token + codes), as a real sequence has."""
    c = family.config
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, c.codebook_size, (c.num_codebooks, frames), generator=g)
    row0 = torch.cat([torch.randint(0, 200, (n_text,), generator=g), codes[0] + family.tokenizer.semantic_ids[0]])
    rows = torch.zeros(c.num_codebooks, n_text + frames, dtype=torch.long)
    rows[:, n_text:] = codes
    return torch.cat([row0[None], rows])[None]


def outputs(model, tokens, n_text=7):
    """Slow logits, hidden states, and fast logits of every frame: the whole model's output."""
    with torch.no_grad():
        logits, hidden = model(tokens)
        fast = model.fast_logits(hidden[0, n_text - 1 : -1], tokens[0, 1:, n_text:].T)
    return logits, hidden, fast


def test_imported_adapter_computes_what_upstream_lora_computes(up, prepared, theirs, checkpoint, tmp_path):
    base = prepared[0]
    family = load_family(base)
    out = import_upstream_lora(checkpoint, base, tmp_path / "adapter", lora_alpha=ALPHA, lora_dropout=0.0)
    config = adapter_config_of(out)
    assert (config.r, config.lora_alpha, config.targets) == (R, ALPHA, "upstream")
    assert json.loads((out / SIDECAR).read_text())["base_model"] == family.identity()
    assert is_upstream_lora(checkpoint) and not is_upstream_lora(out / PEFT_WEIGHTS)

    ours = load_adapted(family.load_model(), out).eval()
    tokens = sequence(family)
    with torch.no_grad():  # upstream's inference forward over all positions, unmerged LoRA
        expected = up.llama.BaseTransformer.forward_generate(theirs, tokens, return_all=True).logits
    logits, hidden, fast = outputs(ours, tokens)
    assert (logits - expected).abs().max() <= TOL
    plain = outputs(family.load_model().eval(), tokens)[0]
    assert (logits - plain).abs().max() > 1e-2  # the adapter does change the output

    # The whole model (fast transformer too) against the loralib merge, itself checked against upstream.
    lora = {k: v for k, v in theirs.state_dict().items() if "lora_" in k}
    merged_state = merge_loralib_lora(load_state_dict_file(base / MODEL_FILE), lora, alpha=ALPHA, r=R)
    merged = family.load_model().eval()
    merged.load_state_dict(merged_state)
    for found, want in zip((logits, hidden, fast), outputs(merged, tokens)):
        assert (found - want).abs().max() <= TOL
    # peft's merge folds in the same update as loralib's
    peft_merged = merge(ours).state_dict()
    assert peft_merged.keys() == merged_state.keys()
    for key, value in merged_state.items():
        torch.testing.assert_close(peft_merged[key], value, atol=1e-6, rtol=1e-6, msg=key)


def test_lora_only_checkpoint_gives_the_same_adapter(prepared, theirs, checkpoint, tmp_path):
    """Upstream's LoRA runs may save only the LoRA tensors: same adapter, nothing to compare the base with."""
    only = lightning(theirs.state_dict(), tmp_path / "lora_only.ckpt", with_base=False)
    assert is_upstream_lora(only)
    a = load_file(str(import_upstream_lora(checkpoint, prepared[0], tmp_path / "a", lora_alpha=ALPHA) / PEFT_WEIGHTS))
    b = load_file(str(import_upstream_lora(only, prepared[0], tmp_path / "b", lora_alpha=ALPHA) / PEFT_WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileExistsError, match="overwrite"):
        import_upstream_lora(only, prepared[0], tmp_path / "b", lora_alpha=ALPHA)
    import_upstream_lora(only, prepared[0], tmp_path / "b", lora_alpha=ALPHA, overwrite=True)


def test_checkpoint_of_other_base_weights_is_refused(prepared, theirs, tmp_path):
    state = dict(theirs.state_dict())
    wide = lightning({k: v.double() for k, v in state.items()}, tmp_path / "float64.ckpt")
    import_upstream_lora(wide, prepared[0], tmp_path / "wide")  # same values in another dtype: accepted
    state["layers.1.feed_forward.w2.weight"] = state["layers.1.feed_forward.w2.weight"] + 1e-3
    other = lightning(state, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other base weights than .*tiny-demo.*layers\.1\.feed_forward\.w2\.weight"):
        import_upstream_lora(other, prepared[0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mixed_ranks_and_foreign_modules_are_refused(prepared, theirs, tmp_path):
    state = {k: v for k, v in theirs.state_dict().items() if "lora_" in k}
    mixed = dict(state)
    mixed["layers.0.attention.wo.lora_A"] = mixed["layers.0.attention.wo.lora_A"][:2]
    mixed["layers.0.attention.wo.lora_B"] = mixed["layers.0.attention.wo.lora_B"][:, :2]
    with pytest.raises(ValueError, match=r"one LoRA rank.*r=2: layers\.0\.attention\.wo;.*lora_alpha"):
        import_upstream_lora(lightning(mixed, tmp_path / "mixed.ckpt"), prepared[0], tmp_path / "out")

    foreign = {**state, "norm.lora_A": torch.zeros(R, 4), "norm.lora_B": torch.zeros(4, R)}
    with pytest.raises(ValueError, match="found LoRA on norm"):
        import_upstream_lora(lightning(foreign, tmp_path / "foreign.ckpt"), prepared[0], tmp_path / "out")

    unpaired = {k: v for k, v in state.items() if k != "output.lora_B"}
    with pytest.raises(ValueError, match="only one of them for output"):
        import_upstream_lora(lightning(unpaired, tmp_path / "unpaired.ckpt"), prepared[0], tmp_path / "out")


def test_non_lora_files_are_not_upstream_lora(prepared, tmp_path):
    model_pth = prepared[0] / MODEL_FILE
    assert not is_upstream_lora(model_pth)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert not is_upstream_lora(tmp_path / "notes.txt")
    assert not is_upstream_lora(tmp_path / "missing.ckpt")
    assert not is_upstream_lora(tmp_path)
    with pytest.raises(ValueError, match="no LoRA ones: this is a full model"):
        import_upstream_lora(model_pth, prepared[0], tmp_path / "out")
    with pytest.raises(ValueError, match="lora_alpha must be > 0.*r_8_alpha_16"):
        import_upstream_lora(model_pth, prepared[0], tmp_path / "out", lora_alpha=0)
