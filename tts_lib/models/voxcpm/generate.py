"""VoxCPM2 generation: text (and a voice reference's latents) -> latents, one patch at a time.

    latents = generate(model, tokenizer.encode("Hyvää huomenta"), max_patches=200, seed=0)  # (D, F)

The reference and the text run through both LMs once, filling their KV caches; then each step draws the next
patch with the flow-matching sampler (classifier-free guidance), conditioned on the LMs' states after the last
position and on the previous patch, and feeds that patch back as one new position (the caches grow by one). It
stops after a patch the stop head marks as the last. Deterministic under a seed.
tests/models/test_voxcpm_family.py checks that the cached states are the full sequence's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tts_lib.models.voxcpm.flow import sample_patch
from tts_lib.models.voxcpm.minicpm import KVCache
from tts_lib.models.voxcpm.model import AUDIO_START, REF_END, REF_START, VoxCPM2Model
from tts_lib.models.voxcpm.samples import patches


@torch.no_grad()
def generate(
    model: VoxCPM2Model, text_ids: list[int], reference: Tensor | None = None, max_patches: int = 200,
    min_patches: int = 2, steps: int = 10, cfg: float = 2.0, seed: int = 0,
) -> Tensor:  # fmt: skip
    """Latents (D, F) for `text_ids`; `reference`: a voice clip's latents (D, F') put before the text."""
    p, d = model.patch_size, model.feat_dim
    param = next(model.parameters())
    tokens, feats, is_text = [], [], []
    if reference is not None:
        ref = patches(reference.float(), p)
        tokens += [REF_START] + [0] * ref.shape[0] + [REF_END]
        feats += [torch.zeros(1, p, d), ref, torch.zeros(1, p, d)]
        is_text += [1.0] + [0.0] * ref.shape[0] + [1.0]
    tokens += list(text_ids) + [AUDIO_START]
    feats.append(torch.zeros(len(text_ids) + 1, p, d))
    is_text += [1.0] * (len(text_ids) + 1)
    tokens_t = torch.tensor(tokens, device=param.device)[None]  # (1, T)
    feats_t = torch.cat(feats).to(param)[None]  # (1, T, P, D)
    text_mask = torch.tensor(is_text, device=param.device, dtype=param.dtype)[None]
    caches = (KVCache(), KVCache())
    lm_out, residual = model.position_states(tokens_t, text_mask, feats_t, 1 - text_mask, caches)
    generator = torch.Generator(device=param.device).manual_seed(seed)
    previous = torch.zeros(1, d, p, device=param.device, dtype=param.dtype)  # right after the text, as in training
    one_audio = torch.ones(1, 1, device=param.device, dtype=param.dtype)
    made = []
    for step in range(max_patches):
        condition = model.dit_condition(lm_out[:, -1], residual[:, -1])  # what follows the last position
        patch = sample_patch(model.feat_decoder.estimator, condition, previous, p, steps, cfg, generator=generator)
        made.append(patch[0].T)  # (P, D)
        stop = model.stop_logits(lm_out[:, -1]).argmax(-1).item() == 1
        if stop and step + 1 >= min_patches:
            break
        previous = patch  # (1, D, P)
        no_text = torch.zeros(1, 1, dtype=tokens_t.dtype, device=param.device)
        lm_out, residual = model.position_states(no_text, 1 - one_audio, patch.transpose(1, 2)[:, None], one_audio,
                                                 caches)  # fmt: skip
    if not made:
        return torch.zeros(d, 0)
    return torch.cat(made).T.float().cpu()  # (D, patches * P)
