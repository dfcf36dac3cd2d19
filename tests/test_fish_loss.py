import math

import pytest
import torch

from tts_lib.models.fish_speech.config import FishSpeechConfig
from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.models.fish_speech.loss import loss_parts
from tts_lib.models.fish_speech.samples import build_sample, collate
from tts_lib.models.fish_speech.tokenizer import FishTokenizer

NC, CB = 4, 32


@pytest.fixture
def tok(tmp_path):
    from conftest import write_tokenizer_dir

    return FishTokenizer.from_dir(write_tokenizer_dir(tmp_path / "tok", num_semantic=CB))


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    config = FishSpeechConfig(
        vocab_size=1024, n_layer=2, n_head=4, n_local_heads=2, dim=64, head_dim=16, intermediate_size=128,
        codebook_size=CB, num_codebooks=NC, n_fast_layer=1, max_seq_len=128, tie_word_embeddings=False,
        attention_qk_norm=True, scale_codebook_embeddings=True,
    )  # fmt: skip
    return FishSpeechLM(config, semantic_begin_id=tok.semantic_ids[0])


def samples(tok, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        build_sample(tok, "hello world", torch.randint(0, CB, (NC, 7), generator=g)),
        build_sample(tok, "world", torch.randint(0, CB, (NC, 12), generator=g)),
    ]


def test_counts_and_finite_losses(tok):
    parts = loss_parts(tiny_model(tok).eval(), collate(samples(tok)))
    assert parts.slow_count == (7 + 1) + (12 + 1)  # frames plus the end token, per sample
    assert parts.semantic_count == 19 and parts.fast_count == 19 * NC
    assert torch.isfinite(parts.slow_sum) and torch.isfinite(parts.fast_sum)
    # A random model is near chance: log(vocab) per slow token, log(codebook_size) per code.
    assert parts.slow_sum.item() / parts.slow_count == pytest.approx(math.log(1024), rel=0.15)
    assert parts.fast_sum.item() / parts.fast_count == pytest.approx(math.log(CB), rel=0.15)
    assert 0 <= parts.top1 <= parts.top5 <= parts.semantic_count


def test_padding_does_not_change_the_sums(tok):
    model = tiny_model(tok).eval()
    a, b = samples(tok)
    together = loss_parts(model, collate([a, b]))
    alone = [loss_parts(model, collate([s])) for s in (a, b)]
    assert together.slow_count == sum(p.slow_count for p in alone)
    assert together.slow_sum.item() == pytest.approx(sum(p.slow_sum.item() for p in alone), rel=1e-5)
    assert together.fast_sum.item() == pytest.approx(sum(p.fast_sum.item() for p in alone), rel=1e-5)


def test_a_few_steps_on_one_batch_learn_it(tok):
    model = tiny_model(tok)
    batch = collate(samples(tok))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    first = None
    for _ in range(25):
        parts = loss_parts(model, batch)
        loss = parts.loss()
        first = first if first is not None else (loss.item(), parts.top1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first[0]
    assert parts.top1 > max(first[1], parts.semantic_count // 2)
