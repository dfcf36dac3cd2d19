"""VoxCPM2 generation: text (and a voice reference's latents) -> latents, one patch at a time.

    latents = generate(model, tokenizer.encode("Hyvää huomenta"), max_patches=200, seed=0)  # (D, F)

Each step runs the model over the sequence so far plus one empty audio position, reads that position's
conditioning (the LMs' states after the last patch), draws the next patch with the flow-matching sampler
(classifier-free guidance) conditioned on the previous patch, and stops after a patch the stop head marks as the
last. Deterministic under a seed. Not KV-cached yet: each step recomputes the whole sequence (fine for listening to
a few sentences; a long-form server would cache).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tts_lib.models.voxcpm.flow import sample_patch
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
    tokens_t = torch.tensor(tokens, device=param.device)
    feats_t = torch.cat(feats).to(param)
    text_mask = torch.tensor(is_text, device=param.device, dtype=param.dtype)
    generator = torch.Generator(device=param.device).manual_seed(seed)
    made = []
    for step in range(max_patches):
        # one more audio position: its conditioning is what the model says after the last one
        tokens_in = torch.cat([tokens_t, torch.zeros(1, dtype=tokens_t.dtype, device=param.device)])
        feats_in = torch.cat([feats_t, torch.zeros(1, p, d, device=param.device, dtype=param.dtype)])
        text_in = torch.cat([text_mask, torch.zeros(1, device=param.device, dtype=param.dtype)])
        lm_hidden, _, condition = model.hidden_states(tokens_in[None], text_in[None], feats_in[None],
                                                      (1 - text_in)[None])  # fmt: skip
        previous = feats_t[-1].T[None]  # (1, D, P): zeros right after the text, as in training
        estimator = model.feat_decoder.estimator
        patch = sample_patch(estimator, condition[:, -1], previous, p, steps, cfg, generator=generator)
        made.append(patch[0].T)  # (P, D)
        tokens_t, feats_t, text_mask = tokens_in, torch.cat([feats_t, patch[0].T[None]]), text_in
        stop = model.stop_logits(lm_hidden[:, -1]).argmax(-1).item() == 1
        if stop and step + 1 >= min_patches:
            break
    if not made:
        return torch.zeros(d, 0)
    return torch.cat(made).T.float().cpu()  # (D, patches * P)
