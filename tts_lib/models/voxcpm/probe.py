"""VoxCPM2's export-check probe: fixed inputs through every part an adapter can touch (both LMs, the local encoder,
the quantiser, the DiT and the stop head), and their outputs in float32 (tts_lib.versions.export compares them for
base + adapter, base, merged and reloaded)."""

from __future__ import annotations

import torch
from torch import Tensor

from tts_lib.models.voxcpm.model import AUDIO_END, AUDIO_START


@torch.no_grad()
def probe(model: torch.nn.Module, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(stop logits (1, T, 2), DiT conditioning (1, T, C), DiT velocity (A, D, P)) of `model` or its peft wrapper."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    param = next(core.parameters())
    g = torch.Generator().manual_seed(seed)
    text, audio, p, d = 5, 6, core.patch_size, core.feat_dim
    vocab = core.config.lm_config.vocab_size
    tokens = torch.cat([torch.randint(3, max(4, min(vocab, 100)), (text,), generator=g), torch.tensor([AUDIO_START]),
                        torch.zeros(audio, dtype=torch.long), torch.tensor([AUDIO_END])])  # fmt: skip
    text_mask = (torch.arange(tokens.shape[0]) <= text) | (torch.arange(tokens.shape[0]) == tokens.shape[0] - 1)
    feats = torch.randn(tokens.shape[0], p, d, generator=g) * (~text_mask)[:, None, None]
    args = [x[None].to(param.device) for x in (tokens, text_mask.to(param.dtype), feats.to(param.dtype),
                                                (~text_mask).to(param.dtype))]  # fmt: skip
    lm_hidden, _, condition = core.hidden_states(*args)
    rows = condition[0, text + 1 : text + 1 + audio]  # the audio positions' conditioning
    x = torch.randn(audio, d, p, generator=g).to(param)
    t = torch.rand(audio, generator=g).to(param)
    previous = feats[text : text + audio].transpose(1, 2).to(param)
    velocity = core.feat_decoder.estimator(x, rows, t, previous, torch.zeros_like(t))
    return core.stop_logits(lm_hidden).float(), condition.float(), velocity.float()
