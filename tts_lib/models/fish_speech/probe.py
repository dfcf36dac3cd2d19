"""Fish Speech's verification probe: a fixed batch through every part an adapter can touch, and its logits.

tts_lib.versions.export compares the probe's outputs of base+adapter, the base alone, the merged model and the
saved folder reloaded (FishSpeechFamily.probe).
"""

from __future__ import annotations

import torch
from peft import PeftModel
from torch import Tensor

from tts_lib.models.fish_speech.lm import FishSpeechLM

PROBE_BATCH = 2
PROBE_TEXT = 6  # text positions before the frames
PROBE_FRAMES = 9  # semantic positions: exercise codebook embeddings and the fast transformer


def probe_tokens(model: FishSpeechLM, seed: int = 0) -> Tensor:
    """A fixed batch (B, 1 + num_codebooks, T): text ids, then frames (semantic id + codes), then text."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    t = PROBE_TEXT + PROBE_FRAMES + 1
    codes = torch.randint(0, c.codebook_size, (PROBE_BATCH, c.num_codebooks, t), generator=g)
    row0 = torch.randint(0, model.semantic_begin_id, (PROBE_BATCH, t), generator=g)
    frames = slice(PROBE_TEXT, PROBE_TEXT + PROBE_FRAMES)
    semantic = torch.randint(
        model.semantic_begin_id, model.semantic_end_id + 1, (PROBE_BATCH, PROBE_FRAMES), generator=g
    )
    row0[:, frames] = semantic
    # A frame's first code is its semantic token's index, as in real training sequences.
    codes[:, 0, frames] = (semantic - model.semantic_begin_id) % c.codebook_size
    return torch.cat([row0[:, None], codes], dim=1)


@torch.no_grad()
def probe_logits(model: torch.nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """(slow logits (B, T, vocab), fast logits (N, nc, codebook_size)) in float32.

    As in training (loss.py), the fast transformer of a frame reads the slow hidden state of the
    position just before it, teacher-forced with the frame's codes."""
    core = model.get_base_model() if isinstance(model, PeftModel) else model
    logits, hidden = model(tokens)
    ids = tokens[:, 0]
    is_frame = (ids[:, 1:] >= core.semantic_begin_id) & (ids[:, 1:] <= core.semantic_end_id)  # (B, T - 1)
    frame_codes = tokens[:, 1:, 1:].transpose(1, 2)[is_frame]  # (N, nc)
    # peft's wrapper forwards only __call__; fast_logits runs on the (adapted) inner modules.
    fast = core.fast_logits(hidden[:, :-1][is_frame], frame_codes)
    return logits.float(), fast.float()


def probe(model: torch.nn.Module, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(slow, fast) float32 logits of `model` (or its peft wrapper) on the probe batch of `seed`."""
    core = model.get_base_model() if isinstance(model, PeftModel) else model
    slow, fast = probe_logits(model, probe_tokens(core, seed))
    if fast.numel() == 0:
        raise ValueError("the probe batch has no semantic positions: the fast transformer would go unchecked")
    return slow, fast
