"""FishCodec on a tiny random-init config: shapes and frame arithmetic, checkpoint round trips,
errors for wrong files and wrong inputs. Upstream parity lives in test_fish_codec_parity.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tts_lib.models.fish_speech.codec import FishCodec, FishCodecConfig

TINY = FishCodecConfig.tiny()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine OpenMP's barriers made the
    2-thread run of this file 3-6x slower (8 s alone, up to 50 s with other jobs on the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_codec(seed: int = 0) -> FishCodec:
    torch.manual_seed(seed)
    return FishCodec(TINY)


def wave(num_samples: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(num_samples) / 44100
    return 0.3 * torch.sin(2 * math.pi * 220 * t) + 0.05 * torch.randn(num_samples, generator=g)


@pytest.fixture(scope="module")
def codec() -> FishCodec:
    return make_codec()


def test_default_config_is_s1_mini():
    c = FishCodecConfig()
    assert (c.sample_rate, c.hop_length, c.frame_length, c.latent_dim) == (44100, 512, 2048, 1024)
    assert c.num_codebooks == 10 and (c.semantic_codebook_size, c.residual_codebook_size) == (4096, 1024)
    assert c.sample_rate / c.frame_length == pytest.approx(21.533, abs=1e-3)
    assert c.max_frames == 4096  # about 190 s per call


def test_full_size_state_dict_layout():
    with torch.device("meta"):
        model = FishCodec()
    state = model.state_dict()
    assert len(state) == 541
    assert sum(p.numel() for p in model.parameters()) == 391_430_530
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    # New-style weight norm on the encoder/decoder convolutions, legacy on the quantizer projections.
    assert shapes["encoder.block.0.conv.parametrizations.weight.original0"] == (64, 1, 1)
    assert shapes["encoder.block.0.conv.parametrizations.weight.original1"] == (64, 1, 7)
    assert shapes["decoder.model.1.block.1.conv.parametrizations.weight.original1"] == (1536, 768, 16)
    assert shapes["quantizer.semantic_quantizer.quantizers.0.in_proj.weight_v"] == (8, 1024, 1)
    assert shapes["quantizer.semantic_quantizer.quantizers.0.codebook.weight"] == (4096, 8)
    assert shapes["quantizer.quantizer.quantizers.8.codebook.weight"] == (1024, 8)
    assert shapes["encoder.block.4.block.5.layers.3.attention.wqkv.weight"] == (3072, 1024)
    assert shapes["encoder.block.4.block.5.causal_mask"] == (16384, 16384)
    assert shapes["quantizer.pre_module.freqs_cis"] == (4096, 32, 2)
    assert state["quantizer.post_module.freqs_cis"].dtype == torch.bfloat16


@pytest.mark.parametrize(("num_samples", "frames"), [(1, 1), (2048, 1), (2049, 2), (44100, 22)])
def test_encode_frame_arithmetic(codec, num_samples, frames):
    codes = codec.encode(wave(num_samples))
    assert codes.shape == (TINY.num_codebooks, frames) and codes.dtype == torch.int64
    assert codec.num_frames(num_samples) == frames
    assert 0 <= int(codes[0].min()) and int(codes[0].max()) < TINY.semantic_codebook_size
    assert int(codes[1:].max()) < TINY.residual_codebook_size


def test_decode_shapes(codec):
    codes = codec.encode(wave(44100))
    audio = codec.decode(codes)
    assert audio.shape == (22 * 2048,) and audio.dtype == torch.float32
    assert audio.abs().max() <= 1.0
    batch = codec.decode(torch.stack([codes, codes]))
    assert batch.shape == (2, 22 * 2048)
    torch.testing.assert_close(batch[1], audio)
    assert codec.decode(codes[:1]).shape == audio.shape  # the semantic row alone still decodes


def test_batch_encode_matches_single_clips(codec):
    clips = [wave(5000, seed=1), wave(44100, seed=2), wave(2048, seed=3)]
    codes, lengths = codec.encode_batch(clips)
    assert codes.shape == (3, TINY.num_codebooks, 22) and lengths.tolist() == [3, 22, 1]
    for clip, row, n in zip(clips, codes, lengths.tolist()):
        assert torch.equal(row[:, :n], codec.encode(clip))
    padded = torch.stack([torch.nn.functional.pad(c, (0, 44100 - len(c))) for c in clips])
    codes2, lengths2 = codec.encode_batch(padded, lengths=[len(c) for c in clips])
    assert torch.equal(codes2, codes) and torch.equal(lengths2, lengths)
    assert torch.equal(codec.encode(padded), codes)  # (B, T) without lengths: same codes, padded rows


def test_numpy_input_and_determinism(codec):
    x = wave(30000)
    codes = codec.encode(x.numpy())
    assert torch.equal(codes, codec.encode(x))
    assert torch.equal(make_codec(seed=0).encode(x), codes)
    assert torch.equal(codec.decode(codes), codec.decode(codes.numpy()))


def test_out_of_range_residual_codes_are_clamped(codec):
    codes = codec.encode(wave(10000))
    high = codes.clone()
    high[1:] = 4095  # the text-to-semantic model samples every codebook over 4096 entries
    top = codes.clone()
    top[1:] = TINY.residual_codebook_size - 1
    torch.testing.assert_close(codec.decode(high), codec.decode(top), rtol=0, atol=0)


def test_save_load_round_trip(codec, tmp_path):
    path = codec.save_pretrained(tmp_path / "ckpt")
    assert path == tmp_path / "ckpt" / "codec.pth"
    loaded = FishCodec.from_pretrained(tmp_path / "ckpt", config=TINY)
    x = wave(44100)
    assert torch.equal(loaded.encode(x), codec.encode(x))
    assert torch.equal(loaded.decode(codec.encode(x)), codec.decode(codec.encode(x)))
    for key, value in codec.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not loaded.training


def test_load_wrapped_and_partial_checkpoints(codec, tmp_path):
    state = codec.state_dict()
    x = wave(20000)
    # A GAN training checkpoint: generator.-prefixed keys under "state_dict", other nets alongside.
    wrapped = {"state_dict": {**{f"generator.{k}": v for k, v in state.items()}, "discriminator.w": torch.ones(1)}}
    torch.save(wrapped, tmp_path / "gan.ckpt")
    assert torch.equal(FishCodec.from_pretrained(tmp_path / "gan.ckpt", TINY).encode(x), codec.encode(x))
    # Without the derived tables, and in half precision: tables recomputed, weights cast to float32.
    slim = {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}
    slim = {k: v for k, v in slim.items() if not k.endswith(("freqs_cis", "causal_mask"))}
    torch.save(slim, tmp_path / "slim.pth")
    loaded = FishCodec.from_pretrained(tmp_path / "slim.pth", TINY)
    assert loaded.dtype == torch.float32
    for key in ("quantizer.pre_module.freqs_cis", "encoder.block.4.block.5.causal_mask"):
        assert torch.equal(loaded.state_dict()[key], state[key])


def test_load_errors(codec, tmp_path):
    state = codec.state_dict()
    with pytest.raises(FileNotFoundError, match="codec.pth"):
        FishCodec.from_pretrained(tmp_path / "nothing.pth", TINY)

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth.*weights-only"):
        FishCodec.from_pretrained(tmp_path / "junk.pth", TINY)

    lm = {"embeddings.weight": torch.zeros(4, 2), "layers.0.attention.wqkv.weight": torch.zeros(6, 2)}
    torch.save(lm, tmp_path / "model.pth")
    with pytest.raises(ValueError, match="model.pth is a Fish Speech text-to-semantic model"):
        FishCodec.from_pretrained(tmp_path / "model.pth", TINY)

    broken = dict(state)
    broken.pop("quantizer.quantizer.quantizers.1.codebook.weight")
    broken["extra.weight"] = torch.zeros(1)
    key = "quantizer.semantic_quantizer.quantizers.0.codebook.weight"
    broken[key] = torch.zeros(7, 4)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError) as err:
        FishCodec.from_pretrained(tmp_path / "broken.pth", TINY)
    message = str(err.value)
    assert "broken.pth" in message and message.count("broken.pth") == 1
    assert "1 missing keys: quantizer.quantizer.quantizers.1.codebook.weight" in message
    assert "1 unexpected keys: extra.weight" in message
    assert f"{key}: expected (64, 4), found (7, 4)" in message

    # The S1-mini default config against a tiny checkpoint: shapes named, not a torch traceback.
    codec.save_pretrained(tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="shape mismatches"):
        FishCodec.from_pretrained(tmp_path / "tiny.pth")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.zeros(2, 1, 100), "mono audio"),
        (torch.zeros(0), "mono audio"),
        (torch.zeros(100, dtype=torch.int16), "float audio"),
    ],
)
def test_bad_audio(codec, bad, match):
    with pytest.raises(ValueError, match=match):
        codec.encode(bad)


def test_bad_sample_rate_and_length(codec):
    with pytest.raises(ValueError, match="44100 Hz audio; got 16000 Hz"):
        codec.encode(wave(100), sample_rate=16000)
    too_long = TINY.max_frames * TINY.frame_length + 1
    with pytest.raises(ValueError, match="split the audio"):
        codec.encode(torch.zeros(too_long))
    with pytest.raises(ValueError, match="split the audio"):
        codec.decode(torch.zeros(TINY.num_codebooks, TINY.max_frames + 1, dtype=torch.long))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((3, 5), dtype=np.float32), "integer codes"),
        (torch.zeros(TINY.num_codebooks + 1, 5, dtype=torch.long), "codebooks"),
        (torch.zeros(5, dtype=torch.long), "codebooks"),
        (torch.full((3, 5), -1), "non-negative"),
    ],
)
def test_bad_codes(codec, bad, match):
    with pytest.raises(ValueError, match=match):
        codec.decode(bad)
