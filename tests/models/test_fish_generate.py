import pytest
import torch
from conftest import write_tokenizer_dir
from test_fish_lm import SEM, batch, tiny

from tts_lib.models.fish_speech.generate import _sample, build_prompt, generate
from tts_lib.models.fish_speech.tokenizer import FishTokenizer

IM_END = 900  # a non-semantic id playing <|im_end|> for the tiny model


def prompt(T: int = 10) -> torch.Tensor:
    return batch(B=1, T=T, seed=4)[0]  # (5, T)


def test_cached_slow_logits_equal_the_full_sequence():
    model = tiny().eval()
    tokens = batch(B=1, T=16)
    with torch.no_grad():
        full = model.slow_logits(tokens)[0]  # (T, vocab)
        caches = model.new_caches(max_len=16)
        logits, _ = model.step_slow(tokens[:, :, :6], caches, 0)  # prefill
        assert (logits[0] - full[5]).abs().max() <= 1e-4
        for t in range(6, 10):  # one position at a time
            logits, _ = model.step_slow(tokens[:, :, t : t + 1], caches, t)
            assert (logits[0] - full[t]).abs().max() <= 1e-4
        logits, hidden = model.step_slow(tokens[:, :, 10:], caches, 10)  # a chunk after cached positions
        assert (logits[0] - full[15]).abs().max() <= 1e-4
        assert (hidden - model(tokens)[1][:, 15]).abs().max() <= 1e-4


def test_cached_fast_steps_equal_teacher_forcing():
    model = tiny(fast_dim=32, fast_n_head=2, n_fast_layer=2).eval()
    hidden, codes = torch.randn(1, 64), torch.tensor([[3, 9, 0, 31]])
    with torch.no_grad():
        forced = model.fast_logits(hidden, codes)[0]  # (nc, codebook_size)
        caches = model.new_caches(max_len=4)
        x = model.fast_project_in(hidden)
        for k in range(4):
            assert (model.step_fast(x, caches, k)[0] - forced[k]).abs().max() <= 1e-4
            x = model.fast_embeddings(codes[:, k])


def test_same_seed_same_codes():
    model = tiny().eval()
    runs = [generate(model, prompt(), max_new_tokens=6, im_end_id=IM_END, seed=s) for s in (1, 1, 2)]
    assert runs[0].shape == (4, 6) and runs[0].dtype == torch.long
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    state = torch.random.get_rng_state()
    generate(model, prompt(), max_new_tokens=2, im_end_id=IM_END, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone


def test_codes_stay_in_range():
    model = tiny().eval()
    codes = generate(model, prompt(), max_new_tokens=8, im_end_id=IM_END, seed=0, temperature=1.5, top_p=1.0)
    assert codes[0].max() < 32 and codes[1:].max() < 32 and codes.min() >= 0
    limited = generate(model, prompt(), max_new_tokens=8, im_end_id=IM_END, seed=0, residual_codebook_size=4)
    assert limited[1:].max() < 4  # upstream samples codes 1.. from the first 1024 (S1 residual codebooks)


def test_stops_at_the_end_token():
    model = tiny().eval()
    calls = []
    plain_head = model._slow_head

    def head(hidden):
        logits = plain_head(hidden)
        calls.append(1)
        if len(calls) == 4:  # the fourth frame's prediction: make <|im_end|> certain
            logits[..., IM_END] = 1e4
        return logits

    model._slow_head = head
    codes = generate(model, prompt(), max_new_tokens=20, im_end_id=IM_END, seed=0)
    assert codes.shape == (4, 3)  # three frames, then the end token, which is not returned


def test_max_length():
    model = tiny().eval()
    assert generate(model, prompt(), max_new_tokens=5, im_end_id=IM_END, seed=0).shape == (4, 5)
    # max_seq_len 64 bounds prompt + new frames
    assert generate(model, prompt(60), max_new_tokens=50, im_end_id=IM_END, seed=0).shape == (4, 4)
    with pytest.raises(ValueError, match="max_seq_len is 64"):
        generate(model, prompt(64), max_new_tokens=5, im_end_id=IM_END)
    with pytest.raises(ValueError, match=r"expected \(1 \+ 4, T\)"):
        generate(model, prompt()[:3], max_new_tokens=5, im_end_id=IM_END)
    with pytest.raises(ValueError, match="disagree with the model"):
        generate(model, prompt(), max_new_tokens=5, im_end_id=IM_END, semantic_begin_id=SEM + 1)


def test_constrained_first_code():
    model = tiny().eval()
    with torch.no_grad():  # text tokens dominate: the constraint must still pick semantic tokens
        model.output.weight[:SEM] *= 50
    codes = generate(model, prompt(), max_new_tokens=6, im_end_id=IM_END, seed=0, temperature=1.0, top_p=1.0)
    assert codes.shape == (4, 6) and not (codes[0] == 0).all()
    free = generate(model, prompt(), max_new_tokens=6, im_end_id=IM_END, seed=0, constrain_to_semantic=False)
    assert (free[0] == 0).all()  # upstream's behaviour: a text token becomes code 0


def test_sampling_rules():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([2.0, 1.9, -1.0, 0.5])
    kw = dict(temperature=1.0, repetition_penalty=1.0, generator=g)
    # top-p drops the token that crosses the threshold: with top_p below p(top) only the top is left
    assert {_sample(logits, torch.tensor([], dtype=torch.long), top_p=0.1, **kw) for _ in range(20)} == {0}
    # a strong repetition penalty on tokens 0 and 1 moves the choice to token 3
    kw["repetition_penalty"] = 100.0
    assert _sample(logits, torch.tensor([0, 1]), top_p=0.1, **kw) == 3


def test_build_prompt_layout(tmp_path):
    tok = FishTokenizer.from_dir(write_tokenizer_dir(tmp_path / "tok", num_semantic=32))
    sem, im_end = tok.semantic_ids[0], tok.token_id("<|im_end|>")
    ref = torch.tensor([[3, 7], [1, 2], [0, 5], [9, 9]])
    p = build_prompt(tok, "world", num_codebooks=4, references=[("hello", ref)])
    interleave, speaker = tok.encode("<|interleave|>"), tok.encode("<|speaker:0|>")  # not specials here
    row0 = interleave + speaker + tok.encode("hello") + [sem + 3, sem + 7, im_end] + speaker + tok.encode("world")
    assert p.shape == (5, len(row0)) and p[0].tolist() == row0
    at = len(interleave + speaker + tok.encode("hello"))
    assert torch.equal(p[1:, at : at + 2], ref) and p[1:].sum() == ref.sum()  # codes only beside their tokens
    plain = build_prompt(tok, "world", num_codebooks=4)
    assert plain[0].tolist() == interleave + speaker + tok.encode("world")
    with pytest.raises(ValueError, match=r"expected \(4, frames\), found \(3, 2\)"):
        build_prompt(tok, "x", num_codebooks=4, references=[("y", ref[:3])])
    with pytest.raises(ValueError, match="codes from another codec"):
        build_prompt(tok, "x", num_codebooks=4, references=[("y", ref + 40)])
