"""Model families tts_lib can fine-tune, behind one small interface.

A family loads a checkpoint folder, turns audio into training targets (integer codes or float latents),
builds and batches training sequences, computes named loss components, generates, and saves in its own
upstream layout. `ModelFamily` below lists the interface and what each member guarantees. The stages use
this surface; the places that still reach past it are listed in tests/test_layout.py (issue 13).
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


class PlanningShape(Protocol):
    """A family's model at a given shape, for planning without weights: training/memory_plan.py traces its
    training step on fake tensors, training/flops.py counts that step's FLOPs."""

    key: tuple  # identifies the shape: plans and counts are remembered per key
    logits_width: int  # the widest output (the vocabulary): tensors this wide count as logits in the plan

    def meta_model(self) -> Any: ...  # the model on the meta device, float32, as load_model builds it
    def materialize(self, model: Any, device: Any) -> None: ...  # buffers after to_empty (e.g. rotary tables)
    def batch(self, max_tokens: int) -> dict[str, Any]: ...  # max_tokens padded positions, every one supervised
    def loss_parts(self, model: Any, batch: dict[str, Any]) -> LossParts: ...


def reference_shape(family: str = "fish_speech") -> PlanningShape:
    """The planning shape of the model a family is mostly fine-tuned from (Fish Speech: OpenAudio S1-mini): what
    the memory tables, `memory-plan` and `gpu-check` plan for."""
    if family == "fish_speech":
        from tts_lib.models.fish_speech.planning import s1_mini_shape

        return s1_mini_shape()
    raise ValueError(f"no reference shape for family {family!r}")


@dataclass(frozen=True)
class ModuleRoles:
    """Which of a model's modules play which part, by name: what adapters and the optimiser's groups need. The
    model a family loads carries its roles as the class attribute `module_roles` (tts_lib.models.module_roles)."""

    adapter_presets: dict[str, list[str] | str] = field(default_factory=dict)  # preset -> peft target_modules
    text_embeddings: str | None = None  # the module `train_embeddings` trains fully (new-language tokens)
    embeddings: frozenset[str] = frozenset()  # name parts of embedding tables: their own lr (embedding_lr)
    heads: frozenset[str] = frozenset()  # name parts of output heads: their own lr (head_lr)
    layer_pattern: str | None = None  # regex, group 1 a main-stack layer's index (layer-wise lr decay)


def module_roles(model: Any) -> ModuleRoles:
    """The roles the model (or the model under a peft wrapper) declares; none for any other module."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "module_roles", ModuleRoles())


class ModelFamily(Protocol):
    """What the stages need of a model family, and what each member must guarantee. A family is made from a
    checkpoint folder in its upstream layout (`load_family`); nothing outside tts_lib/models/<family>/ knows more.

    Loading and saving
      load_model(device, dtype): the model, weights as in the folder (dtype None: the file's), in eval mode.
      identity(): {"id", "hash"}: the sha256 of the weights; adapters and lineage record it as "the base".
      save(model, out): a complete folder in the upstream layout that upstream's own loader and load_family
        both load with every key; writes atomically, returns `out`.

    Data
      sample_rate, frame_rate: the codec's input rate (Hz) and training targets per second of audio.
      codec_spec(device): a batched encoder for the features cache; targets are integer codes or float latents
        of any shape, stored exactly (tts_lib.data.codes_cache).
      frames_for_seconds(s), sequence_length(text, frames), max_seq_len: an item's training sequence length
        exactly as build_sample will make it, so validation refuses what training cannot take.
      build_sample(text, targets), collate(samples): training sequences and padded batches (dict of tensors).

    Training
      loss_parts(model, batch): LossParts with named components (sums and supervised counts, not means), so the
        loop normalises each over a whole update; supervised_counts(model, batch) returns the same counts
        without a forward pass. selection_metric ("val_<component>_loss" or a score; lower is better) is what
        best checkpoints, early stopping and the forgetting check compare.
      planning_shape(): this model's PlanningShape: the memory plan (max_tokens: auto) and the FLOP count (the
        cost estimate) trace it without weights.

    Export
      weights_dtype(): the dtype the checkpoint ships its weights in (exports are saved in it by default).
      probe(model, seed): float32 outputs on a fixed input of `seed` that runs through every part an adapter can
        touch (peft-wrapped or plain model); the export check compares base+adapter, base, merged and reloaded.

    Listening
      generate(model, text, references): targets for `text`, with (transcript, encode_reference(wave)) pairs as
        voice references; decode(targets): a float32 wave at sample_rate (empty for no frames).
    """

    name: str
    folder: Path
    selection_metric: str
    sample_rate: int
    frame_rate: float
    max_seq_len: int

    def load_model(self, device: Any = "cpu", dtype: Any = None) -> Any: ...
    def identity(self) -> dict[str, str]: ...
    def save(self, model: Any, out: str | Path) -> Path: ...
    def codec_spec(self, device: Any = "cpu") -> CodecSpec: ...
    def frames_for_seconds(self, seconds: float) -> int: ...
    def sequence_length(self, text: str, frames: int) -> int: ...
    def build_sample(self, text: str, targets: Any) -> Any: ...
    def collate(self, samples: list[Any]) -> dict[str, Any]: ...
    def loss_parts(self, model: Any, batch: dict[str, Any]) -> LossParts: ...
    def supervised_counts(self, model: Any, batch: dict[str, Any]) -> dict[str, int]: ...
    def planning_shape(self) -> PlanningShape: ...
    def generate(self, model: Any, text: str, references: Any = (), **sampling: Any) -> Any: ...
    def encode_reference(self, wave: Any, device: Any = "cpu") -> Any: ...
    def decode(self, targets: Any, device: Any = "cpu") -> Any: ...
    def weights_dtype(self) -> Any: ...
    def probe(self, model: Any, seed: int = 0) -> tuple[Any, ...]: ...


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


# Tiny random checkpoints, one per family, in the family's upstream layout: the demo and the tests run the whole
# pipeline on them offline. Every one carries a README.md whose first line is TINY_README_TITLE.
TINY_README_TITLE = "# tiny-demo"
TINY_FAMILIES = ("fish_speech",)


def make_tiny_checkpoint(out_dir: str | Path, family: str = "fish_speech", seed: int = 0, overwrite: bool = False):
    """Write `family`'s tiny random checkpoint folder (the same seed gives the same files); returns the folder."""
    if family == "fish_speech":
        from tts_lib.models.fish_speech.tiny import make_tiny_checkpoint as make
    else:
        raise ValueError(f"no tiny checkpoint for family {family!r}; families with one: {', '.join(TINY_FAMILIES)}")
    return make(out_dir, seed=seed, overwrite=overwrite)


def is_tiny_checkpoint(folder: str | Path) -> bool:
    """True for a folder a family's tiny maker wrote (random weights), told by its README's first line."""
    readme = Path(folder) / "README.md"
    try:
        with readme.open(encoding="utf-8") as f:
            return f.readline().strip() == TINY_README_TITLE
    except (OSError, UnicodeDecodeError):
        return False


def card_text(family: str, merged: str | None, adapter: str | None, random: bool) -> dict:
    """The family's parts of a version's model card: {"what", "licence", "metrics": text; "use_merged",
    "use_adapter": Markdown lines}. `family`: the name metadata.json records (older versions: fish_speech)."""
    if family == "fish_speech":
        from tts_lib.models.fish_speech.card import card_text as text
    else:
        raise ValueError(f"no model card text for family {family!r}")
    return text(merged, adapter, random)
