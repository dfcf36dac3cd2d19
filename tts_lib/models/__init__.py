"""Model families tts_lib can fine-tune, behind one small interface.

A family loads a checkpoint folder, turns audio into training targets (codes), builds and batches
training sequences, computes loss components, generates, and saves in its own upstream layout.
The trainer, the data layer and the notebooks use only this surface, so a second family (VoxCPM,
XTTS v2, IndexTTS2) plugs in without touching them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass
class CodecSpec:
    """What a family's codec gives the features cache (tts_lib.data.codes_cache): a batched encoder and what
    identifies its output."""

    encode_batch: Callable[[list[Any]], list[Any]]  # waves (numpy) -> codes (numpy)
    sample_rate: int  # Hz the codec expects
    num_codebooks: int
    frame_rate: float  # frames per second, to check reused upstream files
    checkpoint_hash: str  # identifies the codec weights: part of every cache key
    device: str = "cpu"  # where encode_batch runs, for the log


@dataclass
class LossParts:
    """One batch's loss as a family computes it: per named component, the summed loss and the supervised tokens it
    sums over. Sums, not means: the trainer divides each by the whole update's count over every micro-batch and
    process, so an update does not depend on how items fell into batches. `scores` (summed, e.g. top-1 hits) are
    read by validation only, over `score_counts` items: training never waits for the GPU to count them."""

    sums: dict[str, Any]  # component -> summed loss, a 0-dim tensor
    counts: dict[str, int]  # component -> supervised tokens it sums over
    scores: dict[str, Any] = field(default_factory=dict)  # score -> summed value, a 0-dim tensor
    score_counts: dict[str, int] = field(default_factory=dict)  # score -> items it is summed over

    def loss(self, totals: Mapping[str, int] | None = None) -> Any:
        """The training loss: each component's mean, summed unweighted. `totals`: the counts of the whole update
        (default: this batch's)."""
        totals = totals or self.counts
        return sum(self.sums[name] / max(totals[name], 1) for name in self.sums)

    @property
    def tokens(self) -> int:
        return sum(self.counts.values())


class ModelFamily(Protocol):
    name: str
    folder: Path

    def load_model(self, device: Any = "cpu", dtype: Any = None) -> Any: ...
    def identity(self) -> dict[str, str]: ...  # {"id": name, "hash": sha256 of the weights}
    def codec_spec(self, device: Any = "cpu") -> CodecSpec: ...
    def build_sample(self, text: str, codes: Any) -> Any: ...
    def collate(self, samples: list[Any]) -> dict[str, Any]: ...
    def loss_parts(self, model: Any, batch: dict[str, Any]) -> LossParts: ...
    # what loss_parts(model, batch).counts will be, known before the forward pass (the update's totals)
    def supervised_counts(self, model: Any, batch: dict[str, Any]) -> dict[str, int]: ...
    selection_metric: str  # the validation metric (lower is better) that picks the best checkpoint
    sample_rate: int  # Hz the family's codec takes audio at
    frame_rate: float  # codec frames (training targets) per second of audio
    max_seq_len: int  # positions of the longest training sequence the model takes
    def frames_for_seconds(self, seconds: float) -> int: ...  # as the codec counts them
    def sequence_length(self, text: str, frames: int) -> int: ...  # positions of that item's training sequence
    def generate(self, model: Any, text: str, references: Any = (), **sampling: Any) -> Any: ...
    # a reference clip (float wave at sample_rate) -> what generate takes as the reference's targets
    def encode_reference(self, wave: Any, device: Any = "cpu") -> Any: ...
    def decode(self, targets: Any, device: Any = "cpu") -> Any: ...  # generated targets -> float32 wave at sample_rate
    def save(self, model: Any, out: str | Path) -> Path: ...
    # training FLOPs (forward + backward) per supervised token in mode quick_lora or full
    def flops_per_token(self, mode: str, gradient_checkpointing: bool = False) -> float: ...
    # the largest max_tokens (at most cap) whose training step (mode quick_lora or full) fits free_gib less margin
    def max_tokens_for(
        self, mode: str, free_gib: float, margin: float, gradient_checkpointing: bool, precision: str, cap: int
    ) -> int: ...


def load_family(folder: str | Path) -> ModelFamily:
    """The family of the checkpoint folder `folder`, from its config.json."""
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        has = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no such folder"
        raise FileNotFoundError(f"{config} not found: a checkpoint folder has config.json; {folder} has {has}")
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    if model_type == "dual_ar":
        from tts_lib.models.fish_speech.family import FishSpeechFamily

        return FishSpeechFamily(folder)
    raise ValueError(
        f"{config}: model_type {model_type!r} is not supported; tts_lib supports 'dual_ar' "
        "(Fish Speech: OpenAudio S1-mini, fish-speech-1.5)"
    )
