import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_tokenizer_dir
from test_fish_config import S1_MINI

from tts_lib.models.fish_speech import lm
from tts_lib.models.fish_speech.checkpoint import (
    check_tokenizer,
    load_state_dict_file,
    merge_loralib_lora,
    split_lora,
)
from tts_lib.models.fish_speech.config import FishSpeechConfig
from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.models.fish_speech.tokenizer import FishTokenizer

TINY = dict(
    vocab_size=1024, n_layer=2, n_head=4, n_local_heads=2, dim=64, head_dim=16, intermediate_size=128,
    codebook_size=32, num_codebooks=4, n_fast_layer=1, max_seq_len=64, tie_word_embeddings=False,
    attention_qk_norm=True, scale_codebook_embeddings=True,
)  # fmt: skip
SEM = 944  # <|semantic:0|> of conftest's tokenizer with 32 semantic tokens


def tiny(seed: int = 0, **over) -> FishSpeechLM:
    torch.manual_seed(seed)
    return FishSpeechLM(FishSpeechConfig(**{**TINY, **over}), semantic_begin_id=SEM)


def batch(B: int = 2, T: int = 12, seed: int = 0) -> torch.Tensor:
    """(B, 5, T): 4 text tokens, then frames."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(B, 5, T, dtype=torch.long)
    tokens[:, 0, :4] = torch.randint(0, 900, (B, 4), generator=g)
    tokens[:, 1:, 4:] = torch.randint(0, 32, (B, 4, T - 4), generator=g)
    tokens[:, 0, 4:] = tokens[:, 1, 4:] + SEM
    return tokens


def test_shapes():
    model = tiny().eval()
    logits, hidden = model(batch())
    assert logits.shape == (2, 12, 1024) and hidden.shape == (2, 12, 64)
    assert model.slow_logits(batch()).dtype == torch.float32
    fast = model.fast_logits(hidden[:, 3:-1].reshape(-1, 64), batch()[:, 1:, 4:].transpose(1, 2).reshape(-1, 4))
    assert fast.shape == (16, 4, 32)


def test_fast_logits_in_chunks(monkeypatch):
    model = tiny().eval()
    hidden, codes = torch.randn(7, 64), torch.randint(0, 32, (7, 4))
    with torch.no_grad():
        whole = model.fast_logits(hidden, codes)
        monkeypatch.setattr(lm, "FAST_CHUNK", 3)
        assert torch.allclose(model.fast_logits(hidden, codes), whole, atol=1e-6)


def test_s1_mini_parameter_names_and_count():
    with torch.device("meta"):
        model = FishSpeechLM(FishSpeechConfig(**S1_MINI), semantic_begin_id=151658)
    state = model.state_dict()
    assert len(state) == 2 + 28 * 9 + 2 + 1 + 4 * 7 + 2  # no buffers: rotary tables are not saved
    assert state["layers.0.attention.wqkv.weight"].shape == ((16 + 2 * 8) * 128, 1024)
    assert state["layers.0.attention.wo.weight"].shape == (1024, 16 * 128)
    assert state["layers.27.attention.q_norm.weight"].shape == (128,)
    assert state["fast_layers.3.attention.wqkv.weight"].shape == ((16 + 2 * 8) * 64, 1024)
    assert "fast_layers.0.attention.q_norm.weight" not in state and "fast_project_in.weight" not in state
    assert state["codebook_embeddings.weight"].shape == (4096 * 10, 1024)
    assert state["output.weight"].shape == (155776, 1024) and state["fast_output.weight"].shape == (4096, 1024)
    total = sum(v.numel() for v in state.values())
    assert 850e6 < total < 870e6  # about 860M


def test_optional_parameters():
    keys = tiny(tie_word_embeddings=True, fast_dim=32, fast_n_head=2, attention_qkv_bias=True).state_dict().keys()
    assert "output.weight" not in keys and {"fast_project_in.weight", "fast_project_in.bias"} <= keys
    assert "layers.0.attention.wqkv.bias" in keys and "fast_layers.0.attention.wqkv.bias" in keys


def test_embedding_rule():
    model = tiny().eval()
    tokens = batch(B=1)
    x = model.embed(tokens)
    text = model.embeddings(tokens[0, 0, :4])
    assert torch.allclose(x[0, :4], text)  # codebook rows ignored under text...
    garbage = tokens.clone()
    garbage[0, 1:, :4] = -100  # ...even when they hold padding values
    assert torch.equal(model.embed(garbage), x)
    t = 6
    frame = sum(model.codebook_embeddings.weight[i * 32 + tokens[0, 1 + i, t]] for i in range(4))
    expected = (model.embeddings.weight[tokens[0, 0, t]] + frame) / math.sqrt(5)
    assert torch.allclose(x[0, t], expected, atol=1e-6)
    unscaled = tiny(scale_codebook_embeddings=False).embed(tokens)
    assert torch.allclose(unscaled[0, t], expected * math.sqrt(5), atol=1e-6)


def test_right_padding_needs_no_mask():
    model = tiny().eval()
    tokens = batch(B=1, T=10)
    padded = torch.zeros(2, 5, 12, dtype=torch.long)
    padded[0, :, :10] = tokens[0]
    padded[1] = batch(B=1, T=12, seed=3)[0]
    with torch.no_grad():
        alone, padded_out = model.slow_logits(tokens), model.slow_logits(padded)
    assert (alone[0] - padded_out[0, :10]).abs().max() < 1e-5


def loss_and_grads(model: FishSpeechLM, tokens: torch.Tensor):
    logits, hidden = model(tokens)
    loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), tokens[:, 0, 1:].flatten())
    frames_hidden = hidden[:, 3:-1].reshape(-1, hidden.shape[-1])
    codes = tokens[:, 1:, 4:].transpose(1, 2).reshape(-1, 4)
    loss = loss + F.cross_entropy(model.fast_logits(frames_hidden, codes).flatten(0, 1).float(), codes.flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_checkpointing_gives_the_same_loss_and_grads():
    plain = tiny().train()
    loss, grads = loss_and_grads(plain, batch())
    checked = tiny().train()
    checked.gradient_checkpointing = True
    loss_ckpt, grads_ckpt = loss_and_grads(checked, batch())
    assert torch.allclose(loss, loss_ckpt)
    assert all(torch.allclose(grads[n], grads_ckpt[n], atol=1e-6) for n in grads)


def test_bf16_on_cpu():
    model = tiny().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = loss_and_grads(model, batch())
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())
    half = tiny().to(torch.bfloat16).eval()
    with torch.no_grad():
        logits = half.slow_logits(batch())
    assert torch.isfinite(logits).all()
    assert torch.equal(half.rope, tiny().rope)  # the rotary table is bf16-exact: casting loses nothing


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A saved tiny model: config, weights and tokenizer files, as a release folder has them."""
    tokenizer = FishTokenizer.from_dir(write_tokenizer_dir(tmp_path / "tok", num_semantic=32))
    model = tiny()
    model.tokenizer = tokenizer
    return model.save_pretrained(tmp_path / "ckpt")


def test_a_model_without_its_tokenizer_is_not_saved_half(tmp_path):
    with pytest.raises(ValueError, match="has no tokenizer.*tokenizer.tiktoken and special_tokens.json"):
        tiny().save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_round_trip_is_bit_identical(folder):
    saved = tiny().state_dict()
    model = FishSpeechLM.from_pretrained(folder)
    assert model.semantic_begin_id == SEM and model.config == FishSpeechConfig(**TINY)
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], v) for k, v in saved.items())
    assert torch.equal(model.rope, tiny().rope) and model.rope.device.type == "cpu"
    model.save_pretrained(folder.parent / "again")  # the folder alone loads again: tokenizer files included
    assert load_state_dict_file(folder.parent / "again" / "model.pth").keys() == saved.keys()
    for name in ("config.json", "tokenizer.tiktoken", "special_tokens.json"):
        assert (folder.parent / "again" / name).read_bytes() == (folder / name).read_bytes()
    assert FishSpeechLM.from_pretrained(folder.parent / "again").semantic_begin_id == SEM
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave nothing behind
    with torch.no_grad():
        assert torch.equal(model.eval().slow_logits(batch()), tiny().eval().slow_logits(batch()))


def test_weights_are_memory_mapped(folder):
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs Linux /proc")
    model = FishSpeechLM.from_pretrained(folder, semantic_begin_id=SEM)
    assert str(folder / "model.pth") in maps.read_text()  # parameters live in the mapped file
    assert model.embeddings.weight.requires_grad  # still trainable


def test_dtype_on_load(folder):
    model = FishSpeechLM.from_pretrained(folder, dtype=torch.bfloat16, semantic_begin_id=SEM)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rope.dtype == torch.float32


def test_missing_files_are_listed(folder):
    (folder / "model.pth").rename(folder / "weights.bin")
    with pytest.raises(ValueError, match=r"model.pth missing; the folder has \['config.json', 'special_tokens.json'"):
        FishSpeechLM.from_pretrained(folder)
    with pytest.raises(ValueError, match="found no folder"):
        FishSpeechLM.from_pretrained(folder / "nope")


def test_semantic_ids_come_from_the_tokenizer(folder):
    (folder / "special_tokens.json").unlink()
    with pytest.raises(FileNotFoundError, match="special_tokens.json"):
        FishSpeechLM.from_pretrained(folder)
    assert FishSpeechLM.from_pretrained(folder, semantic_begin_id=SEM).semantic_end_id == SEM + 31


def test_codec_checkpoint_is_recognised(folder):
    torch.save({"encoder.block.0.weight": torch.zeros(2), "quantizer.x": torch.zeros(1)}, folder / "model.pth")
    with pytest.raises(ValueError, match=r"model.pth: expected the text-to-semantic model.*codec checkpoint"):
        FishSpeechLM.from_pretrained(folder)


def test_missing_and_unexpected_keys_name_the_config_field(folder):
    state = tiny().state_dict()
    state.pop("output.weight")
    state["layers.2.attention_norm.weight"] = torch.ones(64)
    torch.save(state, folder / "model.pth")
    with pytest.raises(ValueError) as e:
        FishSpeechLM.from_pretrained(folder)
    msg = str(e.value)
    assert "model.pth" in msg and "missing 1 keys (output.weight)" in msg
    assert "unexpected 1 keys (layers.2.attention_norm.weight)" in msg and "n_layer, tie_word_embeddings" in msg


def test_shape_mismatch_names_key_shapes_and_field(folder):
    state = tiny().state_dict()
    state["layers.1.feed_forward.w1.weight"] = torch.zeros(96, 64)
    torch.save(state, folder / "model.pth")
    with pytest.raises(
        ValueError, match=r"w1.weight: expected \(128, 64\), found \(96, 64\) \(check intermediate_size"
    ):
        FishSpeechLM.from_pretrained(folder)


def test_lora_checkpoint_as_model_is_refused(folder):
    torch.save({"state_dict": {"model.layers.0.attention.wqkv.lora_A": torch.zeros(4, 64)}}, folder / "model.pth")
    with pytest.raises(ValueError, match="only LoRA weights .* merge_loralib_lora"):
        FishSpeechLM.from_pretrained(folder)


def test_unreadable_weights(folder):
    (folder / "model.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="model.pth: expected a PyTorch state dict"):
        FishSpeechLM.from_pretrained(folder)
    torch.save({"weights": [1, 2]}, folder / "model.pth")
    with pytest.raises(ValueError, match="expected a mapping of parameter names to tensors"):
        FishSpeechLM.from_pretrained(folder)


def test_legacy_and_lightning_formats(tmp_path):
    state = tiny().state_dict()
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({"state_dict": {"model." + k: v for k, v in state.items()}, "epoch": 3}, tmp_path / "lit.ckpt")
    for name in ("legacy.pth", "lit.ckpt"):
        loaded = load_state_dict_file(tmp_path / name)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())


def test_merge_loralib_lora_math():
    base = {"wqkv.weight": torch.randn(6, 4), "embeddings.weight": torch.randn(10, 4)}
    lora = {
        "wqkv.lora_A": torch.randn(2, 4), "wqkv.lora_B": torch.randn(6, 2),  # linear: A (r, in), B (out, r)
        "embeddings.lora_A": torch.randn(2, 10), "embeddings.lora_B": torch.randn(4, 2),  # A (r, num), B (dim, r)
    }  # fmt: skip
    merged = merge_loralib_lora(base, lora, alpha=8, r=2)
    x, ids = torch.randn(3, 4), torch.tensor([1, 7])
    linear = x @ base["wqkv.weight"].T + (x @ lora["wqkv.lora_A"].T) @ lora["wqkv.lora_B"].T * 4
    assert torch.allclose(x @ merged["wqkv.weight"].T, linear, atol=1e-5)
    # loralib's Embedding: rows of A.T, then times B.T
    looked_up = base["embeddings.weight"][ids] + lora["embeddings.lora_A"].T[ids] @ lora["embeddings.lora_B"].T * 4
    assert torch.allclose(merged["embeddings.weight"][ids], looked_up, atol=1e-5)
    assert torch.equal(split_lora({**base, **lora})[0]["wqkv.weight"], base["wqkv.weight"])
    with pytest.raises(ValueError, match="expected rank r=4"):
        merge_loralib_lora(base, lora, alpha=8, r=4)
    with pytest.raises(ValueError, match="only one of them"):
        merge_loralib_lora(base, {"wqkv.lora_A": lora["wqkv.lora_A"]}, alpha=8, r=2)


def test_check_tokenizer(tmp_path):
    tok = FishTokenizer.from_dir(write_tokenizer_dir(tmp_path / "t", num_semantic=32))
    check_tokenizer(FishSpeechConfig(**TINY), tok)
    with pytest.raises(ValueError, match="uses 976 token ids, but the model's vocab_size is 900"):
        check_tokenizer(FishSpeechConfig(**{**TINY, "vocab_size": 900}), tok)
    with pytest.raises(ValueError, match="has 32 semantic tokens .* codebook_size is 64"):
        check_tokenizer(FishSpeechConfig(**{**TINY, "codebook_size": 64}), tok, source="tok")


def test_semantic_range_must_fit_the_vocabulary():
    with pytest.raises(ValueError, match="inside the vocabulary"):
        FishSpeechLM(FishSpeechConfig(**TINY), semantic_begin_id=1000)
