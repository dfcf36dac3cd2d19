import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tts_lib.models.fish_speech import loss as loss_module
from tts_lib.models.fish_speech.config import FishSpeechConfig
from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.models.fish_speech.loss import loss_parts
from tts_lib.models.fish_speech.samples import IGNORE, build_sample, collate
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
    assert parts.counts["slow"] == (7 + 1) + (12 + 1)  # frames plus the end token, per sample
    assert parts.score_counts["top1"] == 19 and parts.counts["codebook"] == 19 * NC
    assert torch.isfinite(parts.sums["slow"]) and torch.isfinite(parts.sums["codebook"])
    # A random model is near chance: log(vocab) per slow token, log(codebook_size) per code.
    assert parts.sums["slow"].item() / parts.counts["slow"] == pytest.approx(math.log(1024), rel=0.15)
    assert parts.sums["codebook"].item() / parts.counts["codebook"] == pytest.approx(math.log(CB), rel=0.15)
    assert 0 <= int(parts.scores["top1"]) <= int(parts.scores["top5"]) <= parts.score_counts["top1"]


def test_padding_does_not_change_the_sums(tok):
    model = tiny_model(tok).eval()
    a, b = samples(tok)
    together = loss_parts(model, collate([a, b]))
    alone = [loss_parts(model, collate([s])) for s in (a, b)]
    assert together.counts["slow"] == sum(p.counts["slow"] for p in alone)
    assert together.sums["slow"].item() == pytest.approx(sum(p.sums["slow"].item() for p in alone), rel=1e-5)
    assert together.sums["codebook"].item() == pytest.approx(sum(p.sums["codebook"].item() for p in alone), rel=1e-5)


def test_a_few_steps_on_one_batch_learn_it(tok):
    model = tiny_model(tok)
    batch = collate(samples(tok))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    first = None
    for _ in range(25):
        parts = loss_parts(model, batch)
        loss = parts.loss()
        first = first if first is not None else (loss.item(), int(parts.scores["top1"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first[0]
    assert int(parts.scores["top1"]) > max(first[1], parts.score_counts["top1"] // 2)


def whole_logits_parts(model, batch):
    """The loss written the plain way, as before chunking: whole logits, boolean masks."""
    logits, hidden = model(batch["tokens"])
    labels = batch["labels"]
    supervised = labels != IGNORE
    slow = F.cross_entropy(logits[supervised].float(), labels[supervised], reduction="sum")
    is_frame = (labels >= model.semantic_begin_id) & (labels <= model.semantic_end_id)
    codes = batch["codes"].transpose(1, 2)[is_frame]
    fast_logits = model.fast_logits(hidden[is_frame], codes).float()
    fast = F.cross_entropy(fast_logits.flatten(0, 1), codes.flatten(), reduction="sum")
    hit = logits[is_frame].float().topk(5, dim=-1).indices == labels[is_frame][:, None]
    return slow, fast, int(hit[:, 0].sum()), int(hit.any(-1).sum())


def gradients(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_chunked_heads_give_the_whole_logits_loss_and_gradients(tok, monkeypatch):
    # 640 logits per chunk: one slow row (vocab 1024) and 5 frames of the fast head (4 x 32) at a time,
    # so both heads run in several chunks, the last one partial
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 640)
    model = tiny_model(tok)
    batch = collate(samples(tok))
    slow, fast, top1, top5 = whole_logits_parts(model, batch)
    (slow / 21 + fast / 76).backward()
    expected = gradients(model)
    model.zero_grad(set_to_none=True)

    parts = loss_parts(model, batch)
    parts.loss().backward()
    assert parts.sums["slow"].item() == pytest.approx(slow.item(), rel=1e-6)
    assert parts.sums["codebook"].item() == pytest.approx(fast.item(), rel=1e-6)
    assert (int(parts.scores["top1"]), int(parts.scores["top5"])) == (top1, top5)
    found = gradients(model)
    assert found.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(found[name], grad, rtol=1e-5, atol=1e-7, msg=name)


class LargestLogits(TorchDispatchMode):
    """Rows of the largest new tensor (not a view of an input, such as the head's weight transposed)
    an op makes whose last dimension is `width`."""

    def __init__(self, width):
        super().__init__()
        self.width, self.rows = width, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.ndim and t.shape[-1] == self.width:
                if t.untyped_storage().data_ptr() not in inputs:
                    self.rows = max(self.rows, t.numel() // self.width)
        return out


def test_the_whole_vocabulary_logits_never_exist(tok, monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 4 * 1024)  # 4 slow rows per chunk
    model = tiny_model(tok)
    with LargestLogits(1024) as largest:
        parts = loss_parts(model, collate(samples(tok)))
        parts.loss().backward()
    assert parts.counts["slow"] == 21 and largest.rows == 4  # forward, recomputation and gradients alike
