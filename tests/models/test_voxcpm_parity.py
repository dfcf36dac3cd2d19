"""Our VoxCPM2 against upstream voxcpm 2.0.3 on tiny random weights: the same weights give the same transformer
outputs, the same stop logits, and the same two training losses and gradients under the same seed."""

import copy
from types import SimpleNamespace

import pytest
import torch
from upstream import upstream_voxcpm

from tts_lib.models.voxcpm import VoxCPM2Config, VoxCPM2Model
from tts_lib.models.voxcpm.minicpm import MiniCPM
from tts_lib.models.voxcpm.samples import build_sample

ROPE = {"type": "longrope", "long_factor": [1.0, 1.5, 2.0, 3.0], "short_factor": [1.0, 1.1, 1.2, 1.3],
        "original_max_position_embeddings": 32}  # fmt: skip
TINY = {
    "architecture": "voxcpm2",
    "lm_config": {"bos_token_id": 1, "eos_token_id": 2, "hidden_size": 32, "intermediate_size": 64,
                  "max_position_embeddings": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                  "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_scaling": ROPE, "vocab_size": 128,
                  "use_mup": True, "scale_emb": 12.0, "dim_model_base": 256, "scale_depth": 1.4, "rope_theta": 10000.0,
                  "no_rope": False},
    "patch_size": 2, "feat_dim": 8, "residual_lm_num_layers": 1, "residual_lm_no_rope": False,
    "scalar_quantization_latent_dim": 16, "scalar_quantization_scale": 9,
    "encoder_config": {"hidden_dim": 16, "ffn_dim": 32, "num_heads": 2, "num_layers": 1},
    "dit_config": {"hidden_dim": 16, "ffn_dim": 32, "num_heads": 2, "num_layers": 2,
                   "dit_mean_mode": False, "cfm_config": {"sigma_min": 1e-6, "solver": "euler",
                                                          "t_scheduler": "log-norm", "training_cfg_rate": 0.1,
                                                          "inference_cfg_rate": 1.0}},
    "max_length": 64, "device": "cpu", "dtype": "float32",
}  # fmt: skip


def upstream_model(config: dict):
    u = upstream_voxcpm()
    torch.manual_seed(0)
    model = u.voxcpm2.VoxCPM2Model(u.voxcpm2.VoxCPMConfig.model_validate(copy.deepcopy(config)),
                                   SimpleNamespace(vocab={}), SimpleNamespace(chunk_size=640, sample_rate=16000),
                                   device="cpu")  # fmt: skip
    return model.train()


def ours_like(upstream, config: dict) -> VoxCPM2Model:
    model = VoxCPM2Model(VoxCPM2Config.from_dict(copy.deepcopy(config)))
    model.load_state_dict(upstream.state_dict(), strict=True)  # every key, both ways
    return model.train()


def batch(config: dict, seed: int = 1) -> dict:
    """Two sequences as upstream's packer lays them out: text, 101, audio patches, 102; the second padded."""
    g = torch.Generator().manual_seed(seed)
    p, d = config["patch_size"], config["feat_dim"]
    rows = []
    for text, audio, pad in ((4, 6, 0), (3, 4, 3)):
        n = text + 1 + audio + 1
        zeros = torch.zeros(audio + 1 + pad, dtype=torch.long)
        tokens = torch.cat([torch.randint(3, 100, (text,), generator=g), torch.tensor([101]), zeros])
        tokens[text + 1 + audio] = 102
        text_mask = torch.tensor([1] * (text + 1) + [0] * audio + [1] + [0] * pad)
        audio_mask = torch.tensor([0] * (text + 1) + [1] * audio + [0] + [0] * pad)
        feats = torch.randn(n + pad, p, d, generator=g) * audio_mask[:, None, None]
        labels = torch.zeros(n + pad, dtype=torch.long)
        labels[n - 2] = 1
        rows.append((tokens, text_mask, feats, audio_mask, audio_mask.clone(), labels))
    keys = ("text_tokens", "text_mask", "audio_feats", "audio_mask", "loss_mask", "labels")
    out = {k: torch.stack([r[i] for r in rows]) for i, k in enumerate(keys)}
    out["position_ids"] = torch.arange(out["text_tokens"].shape[1]).expand(2, -1)
    return out


def test_the_minicpm_transformer_matches_upstream_with_long_and_short_rope():
    u = upstream_voxcpm()
    for max_pos in (64, 32):  # longer than the original context (long factors), then not (short factors)
        lm = {**TINY["lm_config"], "max_position_embeddings": max_pos}
        theirs = u.minicpm4.MiniCPMModel(u.minicpm4.MiniCPM4Config.model_validate(lm)).eval()
        ours = MiniCPM(VoxCPM2Config.from_dict({**TINY, "lm_config": lm}).lm_config).eval()
        ours.load_state_dict(theirs.state_dict(), strict=True)
        x = torch.randn(2, 20, 32, generator=torch.Generator().manual_seed(0))
        for causal in (True, False):
            expected, _ = theirs(x, is_causal=causal)
            assert (ours(x, causal=causal) - expected).abs().max() <= 1e-5


def test_training_losses_and_gradients_equal_upstreams_under_the_same_seed():
    theirs = upstream_model(TINY)
    ours = ours_like(theirs, TINY)
    inputs = batch(TINY)
    torch.manual_seed(7)
    expected = theirs(**inputs)
    torch.manual_seed(7)
    got = ours(**inputs)
    for key in ("loss/diff", "loss/stop"):
        assert abs(got[key].item() - expected[key].item()) <= 1e-5, key
    assert got["loss/diff"].item() > 0 and got["loss/stop"].item() > 0
    (expected["loss/diff"] + expected["loss/stop"]).backward()
    (got["loss/diff"] + got["loss/stop"]).backward()
    ours_params = dict(ours.named_parameters())
    for name, param in theirs.named_parameters():
        if param.grad is not None:
            assert (ours_params[name].grad - param.grad).abs().max() <= 1e-5, name
    torch.manual_seed(8)  # another seed, other draws: another loss (the seed is what makes them equal)
    assert ours(**inputs)["loss/diff"].item() != got["loss/diff"].item()


def test_stop_logits_and_dit_velocity_match_upstream():
    theirs = upstream_model(TINY).eval()
    ours = ours_like(theirs, TINY).eval()
    inputs = batch(TINY)
    lm_hidden, _, condition = ours.hidden_states(inputs["text_tokens"], inputs["text_mask"].float(),
                                                 inputs["audio_feats"], inputs["audio_mask"].float())  # fmt: skip
    expected_stop = theirs.stop_head(theirs.stop_actn(theirs.stop_proj(lm_hidden)))
    assert (ours.stop_logits(lm_hidden) - expected_stop).abs().max() <= 1e-6
    g = torch.Generator().manual_seed(3)
    n = 5
    x, cond = torch.randn(n, 8, 2, generator=g), torch.randn(n, 8, 2, generator=g)
    mu, t = condition.reshape(-1, condition.shape[-1])[:n], torch.rand(n, generator=g)
    expected = theirs.feat_decoder.estimator(x, mu, t, cond, torch.zeros(n))
    assert (ours.feat_decoder.estimator(x, mu, t, cond, torch.zeros(n)) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("missing", ["lm_config", "dit_config"])
def test_a_config_without_a_required_part_is_one_clear_error(missing):
    with pytest.raises(ValueError, match=f"expected a VoxCPM2 config with '{missing}'"):
        VoxCPM2Config.from_dict({k: v for k, v in TINY.items() if k != missing})


def test_unknown_config_keys_are_kept_and_written_back():
    raw = {**TINY, "new_top": 1, "lm_config": {**TINY["lm_config"], "new_lm": 2},
           "dit_config": {**TINY["dit_config"], "mean_mode": False,
                          "cfm_config": {**TINY["dit_config"]["cfm_config"], "new_cfm": 3}}}  # fmt: skip
    config = VoxCPM2Config.from_dict(copy.deepcopy(raw))
    assert config.unknown_keys == ["architecture", "dit_config.cfm_config.new_cfm", "dit_config.mean_mode",
                                   "lm_config.new_lm", "new_top"]  # fmt: skip
    written = config.to_dict()
    assert written["lm_config"]["new_lm"] == 2 and written["new_top"] == 1
    assert written["dit_config"]["mean_mode"] is False and written["dit_config"]["cfm_config"]["new_cfm"] == 3


VAE = {"encoder_dim": 4, "encoder_rates": [2, 2], "latent_dim": 8, "decoder_dim": 16, "decoder_rates": [3, 2, 2],
       "depthwise": True, "sample_rate": 16000, "out_sample_rate": 48000}  # fmt: skip


@pytest.mark.parametrize("variant", [{}, {"depthwise": False, "sr_bin_boundaries": None}])
def test_the_audio_vae_encodes_and_decodes_like_upstream(variant):
    from tts_lib.models.voxcpm.vae import AudioVAE, AudioVAEConfig

    u = upstream_voxcpm()
    config = {**VAE, **variant}
    torch.manual_seed(0)
    theirs = u.audiovae.AudioVAEV2(u.audiovae.AudioVAEConfigV2(**config)).eval()
    with torch.no_grad():  # trained-looking weights: g away from |v|, rate embeddings away from 1 and 0
        for name, p in theirs.named_parameters():
            if name.endswith(("weight_g", "alpha", "embed.weight")):
                p.mul_(1 + 0.3 * torch.rand_like(p))
    ours = AudioVAE(AudioVAEConfig.from_dict(config)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    wave = torch.randn(2, 1, 101, generator=torch.Generator().manual_seed(1)) * 0.3  # not a multiple of the hop
    with torch.no_grad():
        latents = ours.encode(wave, 16000)
        assert latents.shape == (2, 8, 26)
        assert (latents - theirs.encode(wave, 16000)).abs().max() <= 1e-5
        audio = ours.decode(latents)
        assert audio.shape == (2, 1, 26 * 12)
        assert (audio - theirs.decode(latents)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="encodes 16000 Hz audio, found 44100 Hz"):
        ours.encode(wave, 44100)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from tts_lib.models.voxcpm.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("voxcpm") / "tiny-voxcpm")


def test_upstream_loads_our_tiny_folder_and_our_save_with_every_key(tiny_folder, tmp_path):
    from safetensors.torch import load_file

    u = upstream_voxcpm()
    ours = VoxCPM2Model.from_pretrained(tiny_folder)
    saved = ours.save_pretrained(tmp_path / "saved")
    assert {"config.json", "model.safetensors", "audiovae.safetensors", "tokenizer.json"} <= {
        p.name for p in saved.iterdir()
    }
    theirs = u.voxcpm2.VoxCPM2Model.from_local(str(saved), optimize=False, training=True, device="cpu")
    state = {**load_file(saved / "model.safetensors"),
             **{f"audio_vae.{k}": v for k, v in load_file(saved / "audiovae.safetensors").items()}}  # fmt: skip
    result = theirs.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    mine = ours.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in theirs.state_dict().items() if not k.startswith("audio_vae."))


def test_a_folder_with_missing_or_extra_weights_is_refused_naming_them(tiny_folder, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(tiny_folder, bad)
    state = load_file(bad / "model.safetensors")
    del state["stop_head.weight"]
    save_file({**state, "extra.weight": torch.zeros(1)}, bad / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors: .*missing stop_head.weight; unexpected extra.weight"):
        VoxCPM2Model.from_pretrained(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="expected the model's weights .model.safetensors or pytorch_model"):
        VoxCPM2Model.from_pretrained(bad)


def test_a_hub_tokenizer_config_naming_its_own_class_loads_without_running_its_code_and_is_exported(
    tiny_folder, tmp_path
):
    """The hub's tokenizer_config.json names VoxCPM2Tokenizer in tokenization_voxcpm2.py (remote code): we read
    tokenizer.json as upstream does, never import that file, and copy it into an export unchanged."""
    import json
    import shutil

    from tts_lib.models.voxcpm.tokenizer import VoxCPMTokenizer

    hub = tmp_path / "hub"
    shutil.copytree(tiny_folder, hub)
    config = json.loads((hub / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="VoxCPM2Tokenizer",
                  auto_map={"AutoTokenizer": ["tokenization_voxcpm2.VoxCPM2Tokenizer", None]})  # fmt: skip
    (hub / "tokenizer_config.json").write_text(json.dumps(config))
    (hub / "tokenization_voxcpm2.py").write_text("raise RuntimeError('remote code ran')\n")
    assert VoxCPMTokenizer.from_folder(hub).encode("hyvää") == VoxCPMTokenizer.from_folder(tiny_folder).encode("hyvää")
    saved = VoxCPM2Model.from_pretrained(hub).save_pretrained(tmp_path / "saved")
    for name in ("tokenization_voxcpm2.py", "tokenizer_config.json"):
        assert (saved / name).read_bytes() == (hub / name).read_bytes()


def test_the_tokenizer_splits_cjk_words_like_upstream(tiny_folder):
    from transformers import LlamaTokenizerFast

    from tts_lib.models.voxcpm.tokenizer import VoxCPMTokenizer

    u = upstream_voxcpm()
    theirs = u.voxcpm2.mask_multichar_chinese_tokens(LlamaTokenizerFast.from_pretrained(str(tiny_folder)))
    ours = VoxCPMTokenizer.from_folder(tiny_folder)
    for text in ("hyvää huomenta", "你好世界", "ሰላም 你好 x", "Zürich 7.45"):
        assert ours.encode(text) == theirs(text), text
    assert ours.base.tokenize("你好世界") == ["▁", "你好", "世界"]  # the BPE merges them ...
    assert ours.tokens("你好世界") == ["▁", "你", "好", "世", "界"]  # ... the model reads one character at a time


def test_training_sequences_are_packed_as_upstreams_packer_packs_them_with_and_without_a_reference(tiny_folder):
    """Upstream's AudioFeatureProcessingPacker (waves in, its VAE encodes) against the family's features cache
    encoding and build_sample: the same tokens, masks, latents and stop labels, the reference prefix included."""
    from tts_lib.models import load_family
    from tts_lib.models.voxcpm.samples import collate

    u = upstream_voxcpm()
    theirs = u.voxcpm2.VoxCPM2Model.from_local(str(tiny_folder), optimize=False, training=True, device="cpu")
    vae = theirs.audio_vae.float()
    family = load_family(tiny_folder)
    packer = u.packers.AudioFeatureProcessingPacker(1, 4096, family.config.patch_size, family.config.feat_dim, vae)
    g = torch.Generator().manual_seed(0)
    waves = [torch.randn(n, generator=g) * 0.1 for n in (16000, 9000)]
    reference = torch.randn(7000, generator=g) * 0.1
    texts = [[5, 6, 7, 8], [9, 10]]

    def pad(rows: list[torch.Tensor]) -> torch.Tensor:
        out = torch.full((len(rows), max(len(r) for r in rows)), -100, dtype=rows[0].dtype)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    packed = packer(pad(waves), pad([torch.tensor(t, dtype=torch.int32) for t in texts]), torch.tensor([1, 1]),
                    torch.tensor([0, 0]), [False, False], pad([reference, torch.empty(0)]))  # fmt: skip
    latents = [family._encode(family.vae(), w.numpy(), "cpu") for w in (*waves, reference)]
    ours = collate([
        build_sample(texts[0], latents[0], family.config.patch_size, reference=latents[2]),
        build_sample(texts[1], latents[1], family.config.patch_size),
    ])  # fmt: skip
    for key in ("text_tokens", "text_mask", "audio_mask", "loss_mask", "labels"):
        assert torch.equal(ours[key].long(), packed[key].long()), key
    assert (ours["audio_feats"] - packed["audio_feats"]).abs().max() <= 1e-5
