"""Loss components and semantic accuracy for one batch of training sequences.

Returns sums and counts, not means: the trainer divides by the number of supervised tokens over
all micro-batches of an update, so the update does not depend on how items fell into batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.models.fish_speech.samples import IGNORE


@dataclass
class LossParts:
    slow_sum: Tensor  # summed cross-entropy of the slow head (semantic tokens + end token)
    slow_count: int  # supervised slow positions
    fast_sum: Tensor  # summed cross-entropy of the fast head over every codebook of every frame
    fast_count: int  # frames * num_codebooks
    top1: int  # slow head: semantic positions whose target is the top prediction
    top5: int  # ... among the top 5
    semantic_count: int  # semantic positions (frames)

    def loss(self, slow_tokens: int | None = None, fast_tokens: int | None = None) -> Tensor:
        """Mean slow loss + mean fast loss, summed unweighted as upstream does. Pass the counts of
        the whole accumulated update to normalise per supervised token across micro-batches."""
        return self.slow_sum / max(slow_tokens or self.slow_count, 1) + self.fast_sum / max(
            fast_tokens or self.fast_count, 1
        )


def loss_parts(model: FishSpeechLM, batch: dict[str, Tensor]) -> LossParts:
    tokens, labels, codes = batch["tokens"], batch["labels"], batch["codes"]  # (B,1+nc,T) (B,T) (B,nc,T)
    logits, hidden = model(tokens)  # (B, T, vocab), (B, T, dim)
    supervised = labels != IGNORE  # (B, T)
    target = labels[supervised]  # (S,)
    slow = logits[supervised].float()  # (S, vocab)
    slow_sum = F.cross_entropy(slow, target, reduction="sum")

    is_frame = (labels >= model.semantic_begin_id) & (labels <= model.semantic_end_id)  # (B, T)
    frame_codes = codes.transpose(1, 2)[is_frame]  # (N, nc)
    fast = model.fast_logits(hidden[is_frame], frame_codes).float()  # (N, nc, codebook_size)
    fast_sum = F.cross_entropy(fast.flatten(0, 1), frame_codes.flatten().long(), reduction="sum")

    with torch.no_grad():
        semantic_slow = logits[is_frame].float()  # (N, vocab)
        top5 = semantic_slow.topk(5, dim=-1).indices  # (N, 5)
        hit = top5 == labels[is_frame][:, None]
        top1, top5_hits = int(hit[:, 0].sum()), int(hit.any(-1).sum())
    return LossParts(
        slow_sum, int(target.numel()), fast_sum, int(frame_codes.numel()), top1, top5_hits, int(is_frame.sum())
    )


def supervised_counts(model: FishSpeechLM, batch: dict[str, Tensor]) -> tuple[int, int]:
    """(slow positions, fast codes) a batch supervises: known before the forward pass, so the
    loss of every micro-batch of an update can be divided by the update's totals."""
    labels = batch["labels"]
    frames = int(((labels >= model.semantic_begin_id) & (labels <= model.semantic_end_id)).sum())
    return int((labels != IGNORE).sum()), frames * model.config.num_codebooks
