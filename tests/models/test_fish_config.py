import json

import pytest

from tts_lib.models.fish_speech.config import FishSpeechConfig

# OpenAudio S1-mini's config.json as published.
S1_MINI = dict(
    model_type="dual_ar", vocab_size=155776, n_layer=28, n_head=16, n_local_heads=8, dim=1024, head_dim=128,
    intermediate_size=3072, rope_base=1000000.0, norm_eps=1e-6, max_seq_len=8192, dropout=0.0,
    tie_word_embeddings=False, attention_qkv_bias=False, attention_o_bias=False, attention_qk_norm=True,
    codebook_size=4096, num_codebooks=10, use_gradient_checkpointing=True, initializer_range=0.02,
    is_reward_model=False, scale_codebook_embeddings=True, n_fast_layer=4, fast_dim=1024, fast_n_head=16,
    fast_n_local_heads=8, fast_head_dim=64, fast_intermediate_size=3072, fast_attention_qkv_bias=False,
    fast_attention_qk_norm=False, fast_attention_o_bias=False,
)  # fmt: skip


def test_defaults_are_upstreams():
    c = FishSpeechConfig()
    assert (c.model_type, c.vocab_size, c.n_layer, c.n_head, c.dim) == ("dual_ar", 32000, 32, 32, 4096)
    assert c.n_local_heads == 32  # -1 means "as many as n_head"
    assert c.intermediate_size == 11008  # int(2 * 4 * 4096 / 3) = 10922, rounded up to a multiple of 256
    assert c.head_dim == 64  # a plain default, not dim // n_head
    assert (c.rope_base, c.norm_eps, c.max_seq_len, c.codebook_size, c.num_codebooks) == (10000, 1e-5, 2048, 160, 4)
    assert c.tie_word_embeddings and c.use_gradient_checkpointing and not c.scale_codebook_embeddings
    assert (c.fast_dim, c.fast_n_head, c.fast_n_local_heads, c.fast_head_dim) == (4096, 32, 32, 64)
    assert c.fast_intermediate_size == 11008 and c.n_fast_layer == 4
    assert (c.fast_attention_qkv_bias, c.fast_attention_qk_norm, c.fast_attention_o_bias) == (False, False, False)


def test_derived_values():
    c = FishSpeechConfig(dim=64, n_head=4, head_dim=None, intermediate_size=None, n_local_heads=-1)
    assert (c.head_dim, c.intermediate_size, c.n_local_heads) == (16, 256, 4)  # 2*4*64/3 = 170 -> 256
    c = FishSpeechConfig(
        dim=64, n_head=4, attention_qk_norm=True, attention_qkv_bias=True, fast_attention_qk_norm=False
    )
    assert c.fast_attention_qk_norm is False and c.fast_attention_qkv_bias is True  # None inherits, False stays
    c = FishSpeechConfig(dim=64, n_head=4, n_local_heads=2, fast_dim=0, fast_n_local_heads=-1)
    assert c.fast_dim == 64 and c.fast_n_local_heads == 4  # 0 inherits (upstream's `or`); -1 as for the slow one
    c = FishSpeechConfig(**S1_MINI)
    assert c.to_dict() == S1_MINI  # fully specified: nothing changes


def test_from_file_reads_a_folder_or_a_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(S1_MINI))
    assert FishSpeechConfig.from_file(tmp_path) == FishSpeechConfig.from_file(tmp_path / "config.json")
    assert FishSpeechConfig.from_file(tmp_path).fast_head_dim == 64


def test_save_writes_what_upstream_writes(tmp_path):
    c = FishSpeechConfig(dim=64, n_head=4, intermediate_size=None)
    c.save(tmp_path / "config.json")
    text = (tmp_path / "config.json").read_text()
    assert text == json.dumps(c.to_dict(), indent=4, sort_keys=True, ensure_ascii=False)
    again = FishSpeechConfig.from_file(tmp_path)
    assert again == c and again.to_dict() == json.loads(text)


@pytest.mark.parametrize("found", ["naive", "dual_ar_v2", "fish_qwen3_omni"])
def test_other_model_types_are_refused(tmp_path, found):
    (tmp_path / "config.json").write_text(json.dumps({**S1_MINI, "model_type": found}))
    with pytest.raises(ValueError) as e:
        FishSpeechConfig.from_file(tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "config.json") in msg and repr(found) in msg
    assert "dual_ar" in msg and "S1-mini" in msg and "fish-speech-1.5" in msg
    with pytest.raises(ValueError, match="not supported"):
        FishSpeechConfig(model_type=found)


def test_unknown_and_missing_keys(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**S1_MINI, "rope_scaling": 2, "audio_embed_dim": 8}))
    with pytest.raises(ValueError, match=r"unknown keys \['audio_embed_dim', 'rope_scaling'\]"):
        FishSpeechConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"dim": 64}))
    with pytest.raises(ValueError, match="no model_type"):
        FishSpeechConfig.from_file(tmp_path)


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        FishSpeechConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="could not parse"):
        FishSpeechConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="found list"):
        FishSpeechConfig.from_file(tmp_path)


def test_inconsistent_sizes_are_refused():
    with pytest.raises(ValueError, match="dim .* multiple of n_head"):
        FishSpeechConfig(dim=65, n_head=4)
    with pytest.raises(ValueError, match="n_head .* multiple of n_local_heads"):
        FishSpeechConfig(dim=64, n_head=4, n_local_heads=3)
    with pytest.raises(ValueError, match="fast_n_head"):
        FishSpeechConfig(dim=64, n_head=4, fast_n_head=3)
    with pytest.raises(ValueError, match="is_reward_model"):
        FishSpeechConfig(dim=64, n_head=4, is_reward_model=True)
