"""Fish Speech at a given shape, for planning without weights: the model on the meta device, a planned batch,
its loss (tts_lib.training.memory_plan traces the training step, tts_lib.training.flops counts its FLOPs).

    from tts_lib.models.fish_speech.planning import FishPlanningShape, s1_mini_shape
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tts_lib.models import LossParts
from tts_lib.models.fish_speech.codec import FishCodecConfig
from tts_lib.models.fish_speech.config import S1_MINI_CONFIG, FishSpeechConfig
from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.models.fish_speech.loss import loss_parts

S1_MINI_FRAME_RATE = FishCodecConfig().sample_rate / FishCodecConfig().frame_length  # about 21.5
# Positions per item of the planned batch: an utterance of about 10 s (215 frames) with its text.
ITEM_TOKENS = 256


@dataclass(frozen=True)
class FishPlanningShape:
    config: FishSpeechConfig
    frame_rate: float = S1_MINI_FRAME_RATE  # the codec's frames per second of audio

    @property
    def supervised_per_frame(self) -> int:
        return 1 + self.config.num_codebooks  # the slow (semantic) position and each codebook

    @property
    def key(self) -> tuple:
        return ("fish_speech", *sorted(self.config.to_dict().items()))

    @property
    def logits_width(self) -> int:
        return self.config.vocab_size  # the slow head's: the widest output

    @property
    def semantic_begin(self) -> int:
        # Where the semantic ids lie changes no size: take the last codebook_size ids of the vocabulary.
        return self.config.vocab_size - self.config.codebook_size

    def meta_model(self) -> nn.Module:
        with torch.device("meta"):
            return FishSpeechLM(self.config, semantic_begin_id=self.semantic_begin)

    def materialize(self, model: FishSpeechLM, device: torch.device | str) -> None:
        model.build_rope_tables(device)  # a buffer computed from the config, not a weight

    def batch(self, max_tokens: int) -> dict[str, torch.Tensor]:
        """Real (tiny) index tensors: ceil(max_tokens / ITEM_TOKENS) items, every position a supervised frame
        (the most the fast transformer and the loss can cost per position)."""
        c = self.config
        length = min(ITEM_TOKENS, max_tokens, c.max_seq_len)
        items = math.ceil(max_tokens / length)
        tokens = torch.zeros(items, 1 + c.num_codebooks, length, dtype=torch.long)
        tokens[:, 0] = self.semantic_begin
        labels = torch.full((items, length), self.semantic_begin, dtype=torch.long)
        return {"tokens": tokens, "labels": labels, "codes": tokens[:, 1:].clone()}

    @staticmethod
    def loss_parts(model: nn.Module, batch: dict[str, torch.Tensor]) -> LossParts:
        return loss_parts(model, batch)


def s1_mini_shape() -> FishPlanningShape:
    return FishPlanningShape(FishSpeechConfig(**S1_MINI_CONFIG))
