"""VoxCPM2's training sequences, laid out as upstream's packer lays them out:

    text tokens, 101, one position per patch of latents (token 0), 102

text_mask marks the token positions, audio_mask the patches, loss_mask the patches the loss reads (all of them
here), labels the stop target (1 at the last patch). With a voice reference, [103, reference patches, 104] comes
first and is never supervised. A clip's latents are padded with zero frames to whole patches, as upstream pads the
audio before encoding it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tts_lib.models.voxcpm.model import AUDIO_END, AUDIO_START, REF_END, REF_START


@dataclass
class Sample:
    text_tokens: Tensor  # (T,) long
    text_mask: Tensor  # (T,) float
    audio_feats: Tensor  # (T, P, D) float: zero at token positions
    audio_mask: Tensor  # (T,) float
    loss_mask: Tensor  # (T,) float
    labels: Tensor  # (T,) long: 1 where the audio ends

    @property
    def length(self) -> int:
        return self.text_tokens.shape[0]


def patches(latents: Tensor, patch_size: int) -> Tensor:
    """(D, F) latents -> (ceil(F / P), P, D), zero frames added at the end to fill the last patch."""
    d, f = latents.shape
    padded = torch.zeros(d, -(-f // patch_size) * patch_size, dtype=latents.dtype)
    padded[:, :f] = latents
    return padded.T.reshape(-1, patch_size, d)


def build_sample(text_ids: list[int], latents: Tensor, patch_size: int, reference: Tensor | None = None) -> Sample:
    """A training sequence of `text_ids` and the clip's latents (D, F); `reference`: a voice clip's latents."""
    audio = patches(latents, patch_size)  # (A, P, D)
    parts: list[tuple[list[int], Tensor | None, bool]] = []  # (tokens, patches or None, supervised)
    if reference is not None:
        parts += [([REF_START], None, False), ([], patches(reference, patch_size), False), ([REF_END], None, False)]
    parts += [(list(text_ids) + [AUDIO_START], None, False), ([], audio, True), ([AUDIO_END], None, False)]
    tokens, feats, text_mask, audio_mask, loss_mask = [], [], [], [], []
    d = latents.shape[0]
    for ids, feat, supervised in parts:
        if feat is None:
            tokens += ids
            feats.append(torch.zeros(len(ids), patch_size, d, dtype=latents.dtype))
            text_mask += [1.0] * len(ids)
            audio_mask += [0.0] * len(ids)
            loss_mask += [0.0] * len(ids)
        else:
            tokens += [0] * feat.shape[0]
            feats.append(feat)
            text_mask += [0.0] * feat.shape[0]
            audio_mask += [1.0] * feat.shape[0]
            loss_mask += [1.0 if supervised else 0.0] * feat.shape[0]
    labels = torch.zeros(len(tokens), dtype=torch.long)
    labels[-2] = 1  # the last audio patch: the audio ends after it
    return Sample(torch.tensor(tokens, dtype=torch.long), torch.tensor(text_mask), torch.cat(feats),
                  torch.tensor(audio_mask), torch.tensor(loss_mask), labels)  # fmt: skip


def collate(samples: list[Sample]) -> dict[str, Tensor]:
    """Samples padded to the longest with zeros (masks 0: padding is neither text, audio nor supervised)."""
    longest = max(s.length for s in samples)
    out = {}
    for name in ("text_tokens", "text_mask", "audio_feats", "audio_mask", "loss_mask", "labels"):
        first = getattr(samples[0], name)
        batch = torch.zeros((len(samples), longest, *first.shape[1:]), dtype=first.dtype)
        for i, s in enumerate(samples):
            value = getattr(s, name)
            batch[i, : value.shape[0]] = value
        out[name] = batch
    return out
