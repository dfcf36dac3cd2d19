"""Verified merge export on tiny-demo: upstream layout with codec.pth, the merged folder computes what
base+adapter computed (here and in upstream's own loader), broken merges and existing outputs are
refused, bf16 bases export bf16 and a bf16 export that loses the adapter is refused even when the
adapter moved the logits less than the bf16 tolerance, adapters that change nothing are checked
against the base, adapter-only exports carry their base's identity."""

import json
import shutil

import pytest
import torch
from upstream import upstream_fish_speech

import tts_lib.versions.export as export
from tts_lib.models import load_family
from tts_lib.models.fish_speech.checkpoint import MODEL_FILE, load_state_dict_file
from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.models.fish_speech.probe import probe_logits, probe_tokens
from tts_lib.training.adapters import PEFT_CONFIG, PEFT_WEIGHTS, SIDECAR, AdapterConfig, add_adapters, save_adapter
from tts_lib.versions.export import export_adapter, export_merged, merge_adapter_folder

UPSTREAM_FILES = set(
    f"config.json {MODEL_FILE} tokenizer.tiktoken special_tokens.json codec.pth codec_config.json".split()
)


def adapted(family, targets="upstream", seed=0, size=0.05):
    """The base with a LoRA whose B matrices are random of std `size`, as if trained (size 0: fresh, a no-op)."""
    model = add_adapters(family.load_model(), AdapterConfig(targets=targets, lora_dropout=0.0)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * size)
    return model


def bf16_family(prepared, tmp_path):
    """tiny-demo with its weights saved in bf16, as S1-mini ships."""
    base = shutil.copytree(prepared[0], tmp_path / "tiny-bf16")
    state = load_state_dict_file(base / MODEL_FILE)
    torch.save({k: v.to(torch.bfloat16) for k, v in state.items()}, base / MODEL_FILE)
    return load_family(base)


def effect_and_scale(model):
    """(max |base - (base+adapter)|, max |base+adapter|) over the probe's logits, in float32."""
    model = model.float()
    tokens = probe_tokens(model.get_base_model())
    adapted_logits = probe_logits(model, tokens)
    with model.disable_adapter():
        base_logits = probe_logits(model, tokens)
    effect = max((a - b).abs().max().item() for a, b in zip(adapted_logits, base_logits))
    return effect, max(x.abs().max().item() for x in adapted_logits)


def dropping_the_adapter(model):
    return model.unload()  # what a broken merge does: the base weights, the adapter gone


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_export_writes_upstream_layout_and_reproduces_base_plus_adapter(prepared, tmp_path):
    family = load_family(prepared[0])
    model = adapted(family)
    tokens = probe_tokens(model.get_base_model(), seed=3)
    want_slow, want_fast = probe_logits(model, tokens)
    with torch.no_grad(), model.disable_adapter():
        base_slow, _ = probe_logits(model, tokens)
    assert (want_slow - base_slow).abs().max() > 0.1  # the adapter matters, so the check below means something

    report = export_merged(family, model, tmp_path / "merged")
    assert report.out == tmp_path / "merged" and report.dtype == "float32"
    assert report.max_abs_diff <= report.tolerance < 1e-2
    assert UPSTREAM_FILES <= {p.name for p in report.out.iterdir()}
    assert (report.out / "codec.pth").read_bytes() == (prepared[0] / "codec.pth").read_bytes()
    assert not any("lora" in k or "base_layer" in k for k in load_state_dict_file(report.out / MODEL_FILE))
    assert leftovers(tmp_path) == []

    merged = FishSpeechLM.from_pretrained(report.out).eval()
    slow, fast = probe_logits(merged, tokens)
    torch.testing.assert_close(slow, want_slow, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast, want_fast, atol=1e-4, rtol=1e-4)


def test_a_broken_merge_is_refused_and_leaves_nothing(prepared, tmp_path, monkeypatch):
    family = load_family(prepared[0])
    monkeypatch.setattr(export, "merge", dropping_the_adapter)
    refused = "does not reproduce base\\+adapter.*Nothing was exported.*adapter was dropped"
    with pytest.raises(ValueError, match=refused):
        export_merged(family, adapted(family), tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []


def test_an_adapter_on_the_fast_transformer_only_is_checked_too(prepared, tmp_path, monkeypatch):
    """The slow logits cannot see a fast-only adapter: the probe's fast logits must catch its loss."""
    family = load_family(prepared[0])
    monkeypatch.setattr(export, "merge", dropping_the_adapter)
    with pytest.raises(ValueError, match="does not reproduce"):
        export_merged(family, adapted(family, targets="fast_only"), tmp_path / "merged")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_refused_and_untouched(prepared, tmp_path):
    family = load_family(prepared[0])
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="merged already exists"):
        export_merged(family, adapted(family), out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and leftovers(tmp_path) == []
    report = export_merged(family, adapted(family), out, overwrite=True)
    assert not (out / "keep.txt").exists() and report.max_abs_diff <= report.tolerance
    assert leftovers(tmp_path) == []


def test_merged_export_loads_in_upstream_with_the_same_logits(prepared, tmp_path):
    up = upstream_fish_speech()
    family = load_family(prepared[0])
    report = export_merged(family, adapted(family), tmp_path / "merged")
    theirs = up.llama.BaseTransformer.from_pretrained(str(report.out), load_weights=True).eval()
    theirs.load_state_dict(torch.load(report.out / MODEL_FILE, weights_only=True), strict=True)
    ours = FishSpeechLM.from_pretrained(report.out).eval()
    tokens = probe_tokens(ours, seed=1)
    with torch.no_grad():  # upstream's inference path over all positions
        their_logits = up.llama.BaseTransformer.forward_generate(theirs, tokens, return_all=True).logits
        assert (ours.slow_logits(tokens) - their_logits).abs().max() <= 1e-4


def test_bf16_base_exports_bf16_within_the_looser_tolerance(prepared, tmp_path):
    family = bf16_family(prepared, tmp_path)
    model = adapted(family)
    _, scale = effect_and_scale(model)
    report = export_merged(family, model, tmp_path / "merged")
    assert report.dtype == "bfloat16" and report.max_abs_diff <= report.tolerance
    saved = load_state_dict_file(report.out / MODEL_FILE)
    assert {v.dtype for v in saved.values()} == {torch.bfloat16}
    assert report.max_abs_diff > export.RELATIVE[torch.float32] * scale  # bf16 rounding is real: fp32's bound fails


def test_bf16_export_that_drops_an_adapter_is_refused_even_within_the_bf16_tolerance(prepared, tmp_path, monkeypatch):
    family = bf16_family(prepared, tmp_path)
    model = adapted(family, size=5e-4)
    effect, scale = effect_and_scale(model)
    assert 0 < effect < export.RELATIVE[torch.bfloat16] * scale  # a tolerance alone would let the drop through
    monkeypatch.setattr(export, "merge", dropping_the_adapter)
    measured = r"max \|merged - \(base\+adapter\)\| is \S+ and max \|base - \(base\+adapter\)\| \(the adapter"
    with pytest.raises(ValueError, match=f"{measured}'s effect\\).*adapter was dropped, not merged"):
        export_merged(family, model, tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and leftovers(tmp_path) == []


def test_bf16_export_of_a_small_adapter_merged_right_keeps_its_effect(prepared, tmp_path):
    family = bf16_family(prepared, tmp_path)
    model = adapted(family, size=1e-3)
    tokens = probe_tokens(model.get_base_model())
    effect, scale = effect_and_scale(model)
    assert effect < 2 * export.RELATIVE[torch.bfloat16] * scale  # small: within a few bf16 tolerances
    want = probe_logits(model, tokens)
    report = export_merged(family, model, tmp_path / "merged")
    assert report.dtype == "bfloat16" and report.adapter_effect == pytest.approx(effect)
    got = probe_logits(FishSpeechLM.from_pretrained(report.out, dtype=torch.float32).eval(), tokens)
    off = max((a - b).abs().max().item() for a, b in zip(got, want))
    assert off < effect / 5  # the export is far closer to base+adapter than the base is


def test_an_adapter_too_small_for_bf16_is_refused_and_exports_in_float32(prepared, tmp_path):
    family = bf16_family(prepared, tmp_path)
    with pytest.raises(ValueError, match="merge is right .* too small to survive torch.bfloat16 weights"):
        export_merged(family, adapted(family, size=3e-5), tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    report = export_merged(family, adapted(family, size=3e-5), tmp_path / "merged", dtype=torch.float32)
    assert report.dtype == "float32" and report.adapter_effect > 0 and not report.adapter_changes_nothing
    assert {v.dtype for v in load_state_dict_file(report.out / MODEL_FILE).values()} == {torch.float32}


def test_a_fresh_adapter_changes_nothing_and_its_export_is_checked_against_the_base(prepared, tmp_path, monkeypatch):
    """LoRA starts with B = 0: no effect to keep. A bf16 export of the fp32 tiny base then differs from
    base+adapter by bf16 rounding alone, which is accepted; a corrupted one is still refused."""
    family = load_family(prepared[0])
    report = export_merged(family, adapted(family, size=0.0), tmp_path / "merged", dtype=torch.bfloat16)
    assert report.adapter_changes_nothing and report.adapter_effect == 0.0
    assert 0 < report.max_abs_diff <= report.tolerance  # bf16 rounding, within the dtype's tolerance

    def corrupting(model):
        base = model.unload()
        with torch.no_grad():
            for p in base.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        return base

    monkeypatch.setattr(export, "merge", corrupting)
    with pytest.raises(ValueError, match="the adapter changes nothing, so the export had to reproduce the base"):
        export_merged(family, adapted(family, size=0.0), tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_merge_adapter_folder_checks_the_base_and_exports(prepared, tmp_path):
    family = load_family(prepared[0])
    model = adapted(family)
    config = AdapterConfig(targets="upstream", lora_dropout=0.0)
    folder = save_adapter(model, tmp_path / "adapter", config, family.identity())
    want, _ = probe_logits(model, probe_tokens(model.get_base_model()))
    report = merge_adapter_folder(prepared[0], folder, tmp_path / "merged")
    got, _ = probe_logits(FishSpeechLM.from_pretrained(report.out).eval(), probe_tokens(model.get_base_model()))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    sidecar = json.loads((folder / SIDECAR).read_text())
    sidecar["base_model"]["hash"] = "0" * 64
    (folder / SIDECAR).write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match="trained on base model"):
        merge_adapter_folder(prepared[0], folder, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_export_adapter_copies_peft_files_and_the_base_identity(prepared, tmp_path):
    family = load_family(prepared[0])
    folder = save_adapter(adapted(family), tmp_path / "adapter", AdapterConfig(targets="upstream"), family.identity())
    out = export_adapter(folder, tmp_path / "export" / "adapter")
    assert {p.name for p in out.iterdir()} == {PEFT_CONFIG, PEFT_WEIGHTS, SIDECAR}
    assert json.loads((out / SIDECAR).read_text())["base_model"] == family.identity()
    assert (out / PEFT_WEIGHTS).read_bytes() == (folder / PEFT_WEIGHTS).read_bytes()
    with pytest.raises(FileExistsError):
        export_adapter(folder, out)
    (folder / SIDECAR).unlink()
    with pytest.raises(ValueError, match="missing tts_adapter.json"):
        export_adapter(folder, tmp_path / "broken")
    assert not (tmp_path / "broken").exists() and leftovers(tmp_path / "export") == []
