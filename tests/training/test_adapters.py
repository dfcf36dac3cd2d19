"""LoRA/DoRA through peft on tiny-demo: the base is untouched, presets adapt what they say, the
trainer saves adapters only, resumes them exactly, and refuses adapters that do not fit; under bf16
the frozen base is bf16 and every trainable weight fp32; train_embeddings trains the text table only."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tts_lib.models import load_family
from tts_lib.training.adapters import (
    SIDECAR,
    AdapterConfig,
    add_adapters,
    check_base,
    load_adapted,
    merge,
)
from tts_lib.training.checkpoints import load_checkpoint
from tts_lib.training.optim import OptimConfig, param_groups
from tts_lib.training.train import build_model, train
from tts_lib.training.train_config import TrainConfig


def tokens(family, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = family.config
    return torch.randint(0, c.codebook_size, (2, 1 + c.num_codebooks, 9), generator=g)


def lora_config(prepared, run_dir, adapter=None, **over) -> TrainConfig:
    base, manifest = prepared
    adapter = adapter or AdapterConfig(lora_dropout=0.0)
    fields = dict(base_model=str(base), manifest=str(manifest), run_dir=str(run_dir), max_steps=6, max_tokens=256,
                  val_every=3, save_every=3, log_every_seconds=60.0, adapter=adapter)  # fmt: skip
    config = TrainConfig(**{**fields, **over})
    config.optim.lr = 1e-2
    config.schedule.warmup_steps = 1
    return config


def test_fresh_adapter_leaves_the_base_exactly_as_loaded(prepared):
    family = load_family(prepared[0])
    base = family.load_model().eval()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    x = tokens(family)
    with torch.no_grad():
        expected = base(x)[0]
    model = add_adapters(base, AdapterConfig(targets="upstream", lora_dropout=0.0)).eval()
    with torch.no_grad():
        assert torch.equal(model(x)[0], expected)  # B starts at zero: the adapted model is the base
    merged_state = model.get_base_model().state_dict()
    for key, value in before.items():  # the loaded weights were not re-initialised
        found = (
            merged_state.get(key) if key in merged_state else merged_state[key.replace(".weight", ".base_layer.weight")]
        )
        assert torch.equal(found, value), key


@pytest.mark.parametrize(
    ("targets", "adapted", "not_adapted"),
    [
        ("attention_mlp", ["layers.0.attention.wqkv", "fast_layers.0.feed_forward.w2"], ["embeddings", "output"]),
        ("upstream", ["embeddings", "codebook_embeddings", "fast_embeddings", "output", "fast_output"], []),
        ("fast_only", ["fast_layers.0.attention.wqkv"], ["layers.0.attention.wqkv", "embeddings"]),
    ],
)
def test_presets_adapt_what_they_name_and_never_norms(prepared, targets, adapted, not_adapted):
    model = add_adapters(load_family(prepared[0]).load_model(), AdapterConfig(targets=targets))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    prefixes = {n.split(".lora_")[0].removeprefix("base_model.model.") for n in trainable}
    assert set(adapted) <= prefixes
    assert not prefixes & set(not_adapted)
    assert not any("norm" in p for p in prefixes)


def test_train_embeddings_gets_its_own_learning_rate(prepared):
    model = add_adapters(load_family(prepared[0]).load_model(), AdapterConfig(train_embeddings=True))
    groups = {g["name"]: g for g in param_groups(model, OptimConfig(lr=1e-4, embedding_lr=1e-5))}
    assert groups["embeddings/decay"]["lr"] == 1e-5
    assert groups["adapter/decay"]["lr"] == 1e-4
    base = load_family(prepared[0]).load_model()
    with pytest.raises(ValueError, match="'upstream' preset already puts a LoRA on them"):
        add_adapters(base, AdapterConfig(train_embeddings=True, targets="upstream"))
    with pytest.raises(ValueError, match="'everything' is not a preset of this model; its presets: attention_mlp, "):
        add_adapters(base, AdapterConfig(targets="everything"))


def test_train_embeddings_trains_the_text_embeddings_and_no_other_table(prepared, tmp_path):
    model = add_adapters(load_family(prepared[0]).load_model(), AdapterConfig(train_embeddings=True))
    full = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert full == ["base_model.model.embeddings.modules_to_save.default.weight"]  # not codebook_/fast_embeddings

    adapter = AdapterConfig(train_embeddings=True, lora_dropout=0.0)
    final = train(lora_config(prepared, tmp_path / "run", adapter=adapter, max_steps=2, val_every=0)).final_model
    saved = [k for k in load_file(str(final / "adapter_model.safetensors")) if "lora_" not in k]
    assert saved == ["base_model.model.embeddings.weight"]  # the export carries the text table only


def test_under_bf16_the_frozen_base_is_bf16_and_what_trains_is_fp32(prepared, tmp_path):
    family = load_family(prepared[0])
    adapter = AdapterConfig(train_embeddings=True)
    model = build_model(family, lora_config(prepared, tmp_path, adapter=adapter), torch.device("cpu"), torch.bfloat16)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}  # the copied text embeddings too
    full_config = lora_config(prepared, tmp_path)
    full_config.adapter = None
    full = build_model(family, full_config, torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in full.parameters()} == {torch.float32}  # a full fine-tune's weights all train: fp32
    fp32 = build_model(family, lora_config(prepared, tmp_path), torch.device("cpu"), None)
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}  # no autocast: nothing would compute in bf16

    # The loop runs on it: bf16 autocast over the bf16 base, fp32 adapter and EMA.
    run = train(lora_config(prepared, tmp_path / "bf16", max_steps=2, val_every=2, precision="bf16"))
    weights = load_file(str(run.final_model / "adapter_model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # it trained


def test_under_autocast_adapters_take_their_inputs_uncast_with_the_same_loss(prepared, tmp_path):
    """The loop turns off peft's cast of adapter inputs to fp32 under autocast (memory: test_memory_plan.py), and
    only there: without autocast a bf16 input would meet fp32 adapter weights. The loss does not change."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from tts_lib.data.manifest import read_manifest
    from tts_lib.training.train import load_samples

    family = load_family(prepared[0])
    batch = family.collate(load_samples(family, read_manifest(prepared[1])[:4]))

    def loss(amp_dtype, peft_default: bool = False):
        torch.manual_seed(0)
        model = build_model(family, lora_config(prepared, tmp_path), torch.device("cpu"), amp_dtype)
        tuners = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        assert tuners and all(m.cast_input_dtype_enabled == (amp_dtype is None) for m in tuners)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapter an effect
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(len(name)))
        for m in tuners:
            m.cast_input_dtype_enabled = m.cast_input_dtype_enabled or peft_default
        with torch.autocast("cpu", dtype=amp_dtype) if amp_dtype else torch.autocast("cpu", enabled=False):
            return family.loss_parts(model, batch).loss().item()

    loss(None)
    assert loss(torch.bfloat16) == pytest.approx(loss(torch.bfloat16, peft_default=True), rel=1e-3)


def test_lora_run_saves_adapters_only_and_resumes_exactly(prepared, tmp_path):
    straight = train(lora_config(prepared, tmp_path / "a"))
    weights = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000006" / "trainable.safetensors"))
    assert weights and all("lora_" in k for k in weights)  # adapters only, no base weights
    ema = load_checkpoint(tmp_path / "a" / "checkpoints" / "step_00000006")["ema"]["shadow"]
    assert ema.keys() == weights.keys()  # the EMA averages the adapter only
    assert (straight.final_model / "adapter_model.safetensors").is_file()
    sidecar = json.loads((straight.final_model / SIDECAR).read_text())
    assert sidecar["base_model"] == load_family(prepared[0]).identity()

    middle = tmp_path / "a" / "checkpoints" / "step_00000003"  # an adapter-only checkpoint
    resumed = train(lora_config(prepared, tmp_path / "b", resume_from=str(middle)))
    a = load_file(str(straight.final_model / "adapter_model.safetensors"))
    b = load_file(str(resumed.final_model / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # it trained


def test_resume_warns_about_a_changed_learning_rate(prepared, tmp_path, capsys):
    train(lora_config(prepared, tmp_path / "run", max_steps=3))
    changed = lora_config(prepared, tmp_path / "run", max_steps=3)
    changed.optim.lr = 5e-3
    train(changed)
    assert "warning: resuming with a changed setting, optim.lr: saved 0.01, now 0.005" in capsys.readouterr().out


def test_lora_on_lora_continues_and_refuses_another_rank(prepared, tmp_path):
    first = train(lora_config(prepared, tmp_path / "v1")).final_model
    more = train(lora_config(prepared, tmp_path / "v2", max_steps=2, init_adapter=str(first)))
    assert more.final_model.is_dir()
    with pytest.raises(ValueError, match="r 8 -> 4.*merge"):
        train(lora_config(prepared, tmp_path / "v3", adapter=AdapterConfig(r=4), init_adapter=str(first)))


def test_adapter_is_refused_on_another_base(prepared, tmp_path):
    first = train(lora_config(prepared, tmp_path / "v1", max_steps=1)).final_model
    check_base(first, load_family(prepared[0]).identity())
    with pytest.raises(ValueError, match="trained on base model"):
        check_base(first, {"id": "other", "hash": "0" * 64})


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_merged_weights_compute_what_base_plus_adapter_computes(prepared, tmp_path, kind):
    adapter = AdapterConfig(kind=kind, targets="upstream", lora_dropout=0.0)
    final = train(lora_config(prepared, tmp_path / kind, adapter=adapter, max_steps=3)).final_model
    family = load_family(prepared[0])
    model = load_adapted(family.load_model(), final).eval()
    x = tokens(family, seed=1)
    with torch.no_grad():
        adapted = model(x)[0]
        with model.disable_adapter():
            base = model(x)[0]
        merged = merge(model)(x)[0]
    assert not torch.allclose(adapted, base)  # the adapter changes the output...
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-4)  # ...and merging keeps that change


def test_unset_adapter_settings_are_the_familys_recipe_and_set_ones_are_kept():
    from tts_lib.models.fish_speech.lm import FishSpeechLM
    from tts_lib.models.voxcpm import VoxCPM2Model
    from tts_lib.training.adapters import resolve_adapter

    fish = resolve_adapter(AdapterConfig(), FishSpeechLM.module_roles)
    assert (fish.r, fish.lora_alpha, fish.lora_dropout, fish.targets) == (8, 16, 0.01, "attention_mlp")
    vox = resolve_adapter(AdapterConfig(r=16, kind="dora"), VoxCPM2Model.module_roles)
    assert (vox.r, vox.lora_alpha, vox.lora_dropout, vox.targets, vox.kind) == (16, 32, 0.0, "upstream", "dora")
    with pytest.raises(ValueError, match="r must be >= 1"):
        AdapterConfig(r=0)
