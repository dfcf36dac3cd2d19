"""Loss components and semantic accuracy for one batch of training sequences.

Returns sums and counts, not means: the trainer divides by the number of supervised tokens over
all micro-batches of an update, so the update does not depend on how items fell into batches.

Both heads' cross-entropy runs a chunk of rows at a time, each chunk recomputed during backward: the
slow head's logits over S1-mini's 155,776-token vocabulary would otherwise exist whole, in the compute
dtype and again in fp32 with their log-softmax and gradient (2.4 GiB per fp32 copy at 4096 tokens),
and the fast head's over 10 codebooks of 4096 codes nearly as large. Chunking costs one more forward
of each head in backward and changes no result beyond float summation order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from tts_lib.models import LossParts
from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.models.fish_speech.samples import IGNORE

# Logits per chunk: 2**25 is 128 MiB in fp32 (215 rows of S1-mini's vocabulary, 819 frames of its fast
# head), big enough to keep a GPU's matmuls efficient, small enough that a chunk's transients stay small.
CHUNK_ELEMENTS = 2**25


# The loss components' names: validation reports val_<name>_loss, and the codebook loss picks the best checkpoint.
SLOW, CODEBOOK = "slow", "codebook"
SELECTION_METRIC = "val_codebook_loss"


def loss_parts(model: FishSpeechLM, batch: dict[str, Tensor]) -> LossParts:
    tokens, labels, codes = batch["tokens"], batch["labels"], batch["codes"]  # (B,1+nc,T) (B,T) (B,nc,T)
    c = model.config
    _, hidden = model(tokens, head=False)  # (B, T, dim); the heads run in chunks below
    hidden = hidden.flatten(0, 1)  # (B*T, dim)
    # Integer positions, not boolean masks: their sizes come from the labels alone, so a trace with
    # fake weights (tts_lib.training.memory_plan) knows every shape.
    labels = labels.flatten()  # (B*T,)
    supervised = (labels != IGNORE).nonzero().squeeze(1)  # (S,)
    frames = ((labels >= model.semantic_begin_id) & (labels <= model.semantic_end_id)).nonzero().squeeze(1)  # (N,)

    target = labels[supervised]  # (S,)
    is_frame = (target >= model.semantic_begin_id) & (target <= model.semantic_end_id)  # (S,)
    slow_sum, hits = chunked_cross_entropy(model._slow_head, hidden[supervised], target, c.vocab_size, is_frame)

    frame_codes = codes.transpose(1, 2).flatten(0, 1)[frames].long()  # (N, nc)
    fast_hidden = model.fast_logits(hidden[frames], frame_codes, head=False)  # (N, nc, fast_dim)
    fast_sum, _ = chunked_cross_entropy(model._fast_head, fast_hidden, frame_codes, c.num_codebooks * c.codebook_size)
    frame_count = int(frames.numel())
    return LossParts(
        sums={SLOW: slow_sum, CODEBOOK: fast_sum},  # the slow head's tokens and the fast head's codes
        counts={SLOW: int(target.numel()), CODEBOOK: int(frame_codes.numel())},
        scores={"top1": hits[0], "top5": hits[1]},  # the slow head at frames: target predicted first, in the top 5
        score_counts={"top1": frame_count, "top5": frame_count},
    )


def chunked_cross_entropy(
    head: Callable[[Tensor], Tensor],
    hidden: Tensor,
    target: Tensor,
    logits_per_row: int,
    is_frame: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy of head(hidden) (n, ..., classes) against target (n, ...), and (2,) top-1 and
    top-5 hits over the rows where is_frame (n,) (zeros without it). A chunk of rows runs at a time,
    under activation checkpointing when grad is on: backward keeps `hidden` only and recomputes one
    chunk's logits at a time."""
    rows = max(1, CHUNK_ELEMENTS // logits_per_row)
    total = hidden.new_zeros((), dtype=torch.float32)
    hits = hidden.new_zeros(2, dtype=torch.long)
    for start in range(0, hidden.shape[0], rows):
        part = slice(start, start + rows)
        args = (head, hidden[part], target[part], None if is_frame is None else is_frame[part])
        if torch.is_grad_enabled():
            chunk_sum, chunk_hits = checkpoint(chunk_loss, *args, use_reentrant=False)
        else:
            chunk_sum, chunk_hits = chunk_loss(*args)
        total, hits = total + chunk_sum, hits + chunk_hits
    return total, hits


def chunk_loss(head, hidden: Tensor, target: Tensor, is_frame: Tensor | None) -> tuple[Tensor, Tensor]:
    logits = head(hidden).float()  # (n, ..., classes): this chunk's rows only
    loss = F.cross_entropy(logits.flatten(0, -2), target.flatten(), reduction="sum")
    if is_frame is None:
        return loss, loss.new_zeros(2, dtype=torch.long)
    with torch.no_grad():
        hit = (logits.topk(5, dim=-1).indices == target[:, None]) & is_frame[:, None]  # (n, 5)
        return loss, torch.stack([hit[:, 0].sum(), hit.any(-1).sum()])


def supervised_counts(model: FishSpeechLM, batch: dict[str, Tensor]) -> dict[str, int]:
    """The counts loss_parts will report (slow positions, fast codes), known before the forward pass, so
    the loss of every micro-batch of an update can be divided by the update's totals."""
    labels = batch["labels"]
    frames = int(((labels >= model.semantic_begin_id) & (labels <= model.semantic_end_id)).sum())
    return {SLOW: int((labels != IGNORE).sum()), CODEBOOK: frames * model.config.num_codebooks}
