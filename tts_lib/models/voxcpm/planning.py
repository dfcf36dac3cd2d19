"""VoxCPM2 at a given shape, for planning without weights (tts_lib.training.memory_plan traces its training step on
fake tensors, tts_lib.training.flops counts its FLOPs): the model on the meta device, a planned batch, its loss."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
from torch import nn

from tts_lib.models import LossParts
from tts_lib.models.voxcpm.config import VoxCPM2Config
from tts_lib.models.voxcpm.minicpm import MiniCPM
from tts_lib.models.voxcpm.model import VoxCPM2Model
from tts_lib.models.voxcpm.samples import Sample, collate

ITEM_POSITIONS = 64  # an utterance of about 10 s: 63 patches at 6.25 a second, with its text


@dataclass(frozen=True)
class VoxCPMPlanningShape:
    config_json: str  # the config, as JSON (hashable)
    frame_rate: float = 25 / 4  # positions (patches) per second of audio

    @property
    def config(self) -> VoxCPM2Config:
        return VoxCPM2Config.from_dict(json.loads(self.config_json))

    @property
    def key(self) -> tuple:
        return ("voxcpm", self.config_json)

    @property
    def logits_width(self) -> int:
        return self.config.lm_config.vocab_size

    @property
    def supervised_per_frame(self) -> int:
        return self.config.patch_size + 1  # the patch's latent frames and the stop decision

    def meta_model(self) -> nn.Module:
        with torch.device("meta"):
            return VoxCPM2Model(self.config)

    def materialize(self, model: VoxCPM2Model, device) -> None:
        for module in model.modules():
            if isinstance(module, MiniCPM):
                module.build_rope_tables(device)

    def batch(self, max_tokens: int) -> dict[str, torch.Tensor]:
        """ceil(max_tokens / ITEM_POSITIONS) items, every position an audio patch the loss reads."""
        c = self.config
        length = min(ITEM_POSITIONS, max_tokens)
        ones, ids = torch.ones(length), torch.zeros(length, dtype=torch.long)
        item = Sample(ids, torch.zeros(length), torch.zeros(length, c.patch_size, c.feat_dim), ones, ones, ids)
        return collate([item] * math.ceil(max_tokens / length))

    @staticmethod
    def loss_parts(model: nn.Module, batch: dict[str, torch.Tensor]) -> LossParts:
        from tts_lib.models.voxcpm.family import loss_parts

        return loss_parts(model, batch)
