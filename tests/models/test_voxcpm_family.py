"""VoxCPM2 through the whole pipeline on the tiny random checkpoint: the family's data, loss and generation, then
quick_lora (the family's recipe: upstream's LoRA preset), full and two_phase from the CLI, an incremental run and
an exact resume, with exports that upstream's own loader reads with every key."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import copy_clips
from safetensors.torch import load_file
from upstream import upstream_voxcpm

from tts_lib.cli import main
from tts_lib.models import VoiceReference, load_family, make_tiny_checkpoint
from tts_lib.models.voxcpm import VoxCPM2Model
from tts_lib.versions.lineage import read_metadata


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("voxcpm-world")
    data = root / "data"
    copy_clips(data, "fi_female", range(1, 8))
    copy_clips(data, "fi_male", range(1, 5))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TTS_LIB_CACHE", str(root / "cache"))
        yield {"root": root, "base": make_tiny_checkpoint(root / "tiny-voxcpm", family="voxcpm"), "data": data}


def finetune(world, name: str, *extra: str) -> dict:
    out = world["root"] / "runs" / name
    args = ["finetune", "--base-model", str(world["base"]), "--data", str(world["data"]), "--out", str(out),
            "--max-steps", "3", "--val-every", "3", "--save-every", "3", "--max-tokens", "512",
            "--set", "estimate_steps=1", *extra]  # fmt: skip
    assert main(args) == 0
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def lora(world) -> dict:
    """quick_lora with no adapter setting (the family's recipe: upstream's), run once for the tests that read it."""
    return finetune(world, "lora")


def test_the_family_reads_its_folder_and_makes_float_latent_targets(world):
    family = load_family(world["base"])
    assert family.name == "voxcpm" and family.sample_rate == 16000 and family.output_sample_rate == 48000
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)  # 1 s
    [latents] = family.codec_spec().encode_batch([wave])
    assert latents.dtype == np.float32 and latents.shape == (8, family.frames_for_seconds(1.0))
    sample = family.build_sample("hyvää huomenta", torch.from_numpy(latents))
    assert sample.length == family.sequence_length("hyvää huomenta", latents.shape[1])
    with pytest.raises(TypeError, match="float latents"):
        family.build_sample("x", torch.zeros(8, 4, dtype=torch.long))


def test_validation_losses_are_the_same_every_time_training_ones_are_drawn(world):
    family = load_family(world["base"])
    model = family.load_model()
    [latents] = family.codec_spec().encode_batch([np.ones(8000, np.float32) * 0.1])
    batch = family.collate([family.build_sample("hei", torch.from_numpy(latents))])
    model.eval()
    first, second = family.loss_parts(model, batch), family.loss_parts(model, batch)
    assert torch.equal(first.sums["diff"], second.sums["diff"])
    model.train()
    assert not torch.equal(family.loss_parts(model, batch).sums["diff"], family.loss_parts(model, batch).sums["diff"])


def test_generation_follows_a_reference_clip_and_decodes_at_48_khz(world):
    family = load_family(world["base"])
    model = family.load_model()
    plain = family.generate(model, "hei maailma", max_new_tokens=12, seed=0)
    assert plain.shape[0] == 8 and 0 < plain.shape[1] <= 12 and torch.equal(
        plain, family.generate(model, "hei maailma", max_new_tokens=12, seed=0))  # fmt: skip
    voice = VoiceReference(np.sin(np.arange(8000) / 5).astype(np.float32) * 0.3, "hei")
    assert not torch.equal(family.generate(model, "hei maailma", [voice], max_new_tokens=12, seed=0), plain)
    wave = family.decode(plain)
    assert wave.dtype == np.float32 and wave.shape == (plain.shape[1] * 1920,)


def test_quick_lora_with_upstreams_preset_exports_a_folder_upstream_loads(world, lora):
    results = lora
    out = world["root"] / "runs" / "lora"
    meta = read_metadata(out)
    assert meta["base_model"]["family"] == "voxcpm" and meta["best_val"]["val_diff_loss"] > 0
    config = json.loads((out / results["adapter_dir"] / "adapter_config.json").read_text())
    assert config["target_modules"].endswith(r"\.self_attn\.(q_proj|k_proj|v_proj|o_proj)")
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (32, 32, 0.0)  # upstream's recipe
    assert meta["hyperparameters"]["r"] == 32 and meta["hyperparameters"]["targets"] == "upstream"
    adapted = {k.split(".lora_A")[0] for k in load_file(out / results["adapter_dir"] / "adapter_model.safetensors")
               if ".lora_A" in k}  # fmt: skip
    assert any("feat_decoder.estimator.decoder" in k for k in adapted) and not any("feat_encoder" in k for k in adapted)
    merged = out / results["merged_dir"]
    u = upstream_voxcpm()
    theirs = u.voxcpm2.VoxCPM2Model.from_local(str(merged), optimize=False, training=True, device="cpu")
    state = {**load_file(merged / "model.safetensors"),
             **{f"audio_vae.{k}": v for k, v in load_file(merged / "audiovae.safetensors").items()}}  # fmt: skip
    loaded = theirs.load_state_dict(state, strict=False)
    assert loaded.missing_keys == [] and loaded.unexpected_keys == []
    base = VoxCPM2Model.from_pretrained(world["base"]).state_dict()
    assert any(not torch.equal(base[k], v) for k, v in VoxCPM2Model.from_pretrained(merged).state_dict().items())
    assert "VoxCPM2" in (merged / "README.md").read_text()


def test_full_and_two_phase_from_the_cli(world):
    full = finetune(world, "full", "--mode", "full", "--no-package")
    trained = VoxCPM2Model.from_pretrained(world["root"] / "runs" / "full" / full["merged_dir"]).state_dict()
    base = VoxCPM2Model.from_pretrained(world["base"]).state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in base)
    two = finetune(world, "two", "--mode", "two_phase", "--no-package", "--set", "speaker_max_steps=2")
    assert (world["root"] / "runs" / "two" / two["language_base_dir"] / "audiovae.safetensors").is_file()
    assert (world["root"] / "runs" / "two" / two["adapter_dir"] / "adapter_model.safetensors").is_file()


def test_the_adapter_in_upstreams_lora_format_loads_with_no_skipped_key_and_acts_the_same(world, lora, tmp_path):
    from test_voxcpm_parity import batch

    results = lora
    exported = world["root"] / "runs" / "lora" / results["upstream_adapter_dir"]
    saved = json.loads((exported / "lora_config.json").read_text())
    assert saved["lora_config"]["enable_lm"] and saved["lora_config"]["enable_dit"]
    assert (saved["lora_config"]["r"], saved["lora_config"]["alpha"]) == (32, 32)
    assert saved["base_model"] == load_family(world["base"]).identity()
    u = upstream_voxcpm()
    base = shutil.copytree(world["base"], tmp_path / "base")  # upstream computes in the config's dtype: fp32 here
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "dtype": "float32"}))
    theirs = u.voxcpm2.VoxCPM2Model.from_local(str(base), optimize=False, training=True, device="cpu",
                                               lora_config=u.voxcpm2.LoRAConfig(**saved["lora_config"]))  # fmt: skip
    loaded, skipped = theirs.load_lora_weights(str(exported))
    assert skipped == [] and len(loaded) == len(load_file(exported / "lora_weights.safetensors"))
    merged = VoxCPM2Model.from_pretrained(world["root"] / "runs" / "lora" / results["merged_dir"]).train()
    inputs = batch(json.loads((world["base"] / "config.json").read_text()))
    torch.manual_seed(5)
    expected = theirs.train()(**inputs)
    torch.manual_seed(5)
    got = merged(**inputs)
    for key in ("loss/diff", "loss/stop"):  # upstream's model + our adapter == our merged model
        assert abs(got[key].item() - expected[key].item()) <= 1e-4, key


def test_adapters_hot_swap_on_one_loaded_voxcpm2(world, lora):
    from tts_lib.versions.hotswap import AdapterBank

    results = lora
    bank = AdapterBank(load_family(world["base"]))
    bank.load("lora", world["root"] / "runs" / "lora" / results["adapter_dir"])
    adapted = bank.generate("hei maailma", max_new_tokens=8, seed=0)
    with bank.base_only() as model:
        plain = bank.family.generate(model, "hei maailma", max_new_tokens=8, seed=0)
    base = load_family(world["base"])
    alone = base.generate(base.load_model(), "hei maailma", max_new_tokens=8, seed=0)
    # the base, within MKL's rounding: its sgemm rounds differently at other memory alignments of the operands
    # (two models, two sets of addresses); with MKL_CBWR=AUTO,STRICT the two are bitwise equal
    assert plain.shape == alone.shape and (plain - alone).abs().max() <= 1e-5
    assert adapted.shape[0] == plain.shape[0] and not torch.equal(adapted[:, :4], plain[:, :4])


def test_gradient_checkpointing_in_all_four_transformers_changes_nothing_but_memory(world):
    """Upstream has none (its full fine-tune of the 2B model does not fit 24 GB); ours gives the same gradients."""
    family = load_family(world["base"])
    [latents] = family.codec_spec().encode_batch([np.sin(np.arange(12000) / 7).astype(np.float32) * 0.2])
    batch = family.collate([family.build_sample("hyvää päivää", torch.from_numpy(latents))])
    grads = []
    for checkpointing in (False, True):
        model = family.load_model().train()
        model.gradient_checkpointing = checkpointing
        assert all(m.gradient_checkpointing == checkpointing for m in (model.base_lm, model.residual_lm,
                   model.feat_encoder.encoder, model.feat_decoder.estimator.decoder))  # fmt: skip
        torch.manual_seed(3)
        family.loss_parts(model, batch).loss().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


@pytest.mark.parametrize("residual_no_rope", [False, True])  # the released VoxCPM2's residual LM has no rope
def test_generation_caches_give_the_full_sequences_states(residual_no_rope):
    """What generation computes from its KV caches (a prefix, then one position at a time) is what the whole
    sequence computed at once gives."""
    from test_voxcpm_parity import TINY, batch

    from tts_lib.models.voxcpm import VoxCPM2Config
    from tts_lib.models.voxcpm.minicpm import KVCache

    config = {**TINY, "residual_lm_no_rope": residual_no_rope}
    torch.manual_seed(0)
    model = VoxCPM2Model(VoxCPM2Config.from_dict(config)).eval()
    b = batch(config)
    inputs = [b[k][:1].float() if k != "text_tokens" else b[k][:1] for k in
              ("text_tokens", "text_mask", "audio_feats", "audio_mask")]  # fmt: skip
    with torch.no_grad():
        whole = model.position_states(*inputs)
        caches, prefix = (KVCache(), KVCache()), 5  # the text and the audio start; then each audio patch
        parts = [model.position_states(*(x[:, :prefix] for x in inputs), caches)]
        for t in range(prefix, inputs[0].shape[1]):
            parts.append(model.position_states(*(x[:, t : t + 1] for x in inputs), caches))
    for i, name in enumerate(("base LM", "residual LM")):
        cached = torch.cat([part[i] for part in parts], dim=1)
        assert (cached - whole[i]).abs().max() <= 1e-5, name
    assert caches[0].seen() == inputs[0].shape[1]


def test_jsonl_ref_audio_is_the_voice_reference_of_its_training_sequence(world, tmp_path):
    """A JSONL row's ref_audio is encoded once (the features cache) and goes first in the row's training sequence,
    [103, its patches, 104], unsupervised, as upstream's packer puts it; a row without one has none."""
    from tts_lib.data.manifest import read_manifest
    from tts_lib.models.voxcpm.model import REF_END, REF_START
    from tts_lib.training.train import load_samples

    clips = sorted((world["data"] / "fi_female").glob("*.flac"))
    rows = [{"audio": str(c), "text": c.with_suffix(".lab").read_text().strip(), "speaker": "fi_female",
             **({"ref_audio": str(clips[-1])} if k % 2 == 0 else {})} for k, c in enumerate(clips[:-1])]  # fmt: skip
    data = tmp_path / "voice.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    out = world["root"] / "runs" / "with-ref"
    assert main(["finetune", "--base-model", str(world["base"]), "--data", str(data), "--out", str(out),
                 "--max-steps", "2", "--val-every", "2", "--save-every", "2", "--no-package",
                 "--set", "estimate_steps=0"]) == 0  # fmt: skip
    items = read_manifest(out / "data" / "manifest.jsonl")
    family = load_family(world["base"])
    for item, sample in zip(items, load_samples(family, items)):
        with_ref = item.ref_audio is not None
        assert (item.ref_codes is not None) == with_ref, item.id
        assert (sample.text_tokens[0].item() == REF_START) == with_ref
        if with_ref:
            patches = -(-np.load(item.ref_codes).shape[1] // family.config.patch_size)
            assert sample.text_tokens[patches + 1].item() == REF_END
            assert sample.loss_mask[: patches + 2].sum() == 0 and sample.audio_mask[1 : patches + 1].all()
            assert sample.length == family.sequence_length(item.text, np.load(item.codes).shape[1],
                                                           np.load(item.ref_codes).shape[1])  # fmt: skip


def test_an_incremental_run_continues_the_adapter_and_checks_forgetting_on_val_diff_loss(world, lora):
    more = world["root"] / "more-data"
    shutil.copytree(world["data"], more)
    copy_clips(more, "fi_male", range(5, 8))  # new items beside the parent's
    v2 = finetune(world, "lora-v2", "--parent", str(world["root"] / "runs" / "lora"), "--data", str(more),
                  "--no-package")  # fmt: skip
    meta = read_metadata(world["root"] / "runs" / "lora-v2")
    assert meta["parent"]["version"] == "lora" and meta["hyperparameters"]["lora_lr"] == pytest.approx(1e-5)
    assert v2["forgetting"]["metric"] == "val_diff_loss" and v2["forgetting"]["old_data"]["before"] > 0


def test_an_interrupted_voxcpm2_run_resumes_to_the_same_weights(world, lora, tmp_path):
    """The flow-matching loss draws noise and timesteps every step: a resume must restore where the draws were."""
    from tts_lib.training.adapters import AdapterConfig
    from tts_lib.training.train import train
    from tts_lib.training.train_config import TrainConfig

    def run(run_dir, steps):
        return train(TrainConfig(base_model=str(world["base"]), run_dir=str(run_dir), max_steps=steps,
                                 manifest=str(world["root"] / "runs" / "lora" / "data" / "manifest.jsonl"),
                                 max_tokens=256, val_every=2, save_every=2, adapter=AdapterConfig()))  # fmt: skip

    run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    assert run(tmp_path / "resumed", 4).step == 4
    name = "checkpoints/step_00000004/trainable.safetensors"
    a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "resumed" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("mode", "precision"), [("quick_lora", "bf16"), ("full", "fp16")])
def test_the_gpu_precisions_train_and_export_under_cpu_autocast(world, mode, precision):
    """A GPU run's paths on the CPU: bf16 autocast with the frozen base in bf16 (quick_lora), fp16 autocast with
    loss scaling (full): finite losses, the adapter kept in fp32, and a verified export."""
    name = f"{mode}-{precision}"
    results = finetune(world, name, "--mode", mode, "--no-package", "--set", f"train.precision={precision}")
    out = world["root"] / "runs" / name
    rows = [json.loads(line) for line in next(out.rglob("metrics.jsonl")).read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) for r in rows) and np.isfinite(rows[-1]["val_diff_loss"])
    if mode == "quick_lora":
        adapter = load_file(out / results["adapter_dir"] / "adapter_model.safetensors")
        assert adapter and all(t.dtype == torch.float32 for t in adapter.values())
    assert VoxCPM2Model.from_pretrained(out / results["merged_dir"]).stop_head.weight.isfinite().all()
