"""Model families tts_lib can fine-tune, behind one small interface, and the registry that finds them.

A family loads a checkpoint folder, turns audio into training targets (integer codes or float latents),
builds and batches training sequences, computes named loss components, generates from text and reference clips,
and saves in its own upstream layout. `ModelFamily` below lists the interface and what each member guarantees;
the stages use nothing else (tests/test_layout.py: no module outside tts_lib/models/ imports a family's modules;
tests/test_toy_family.py: a toy family with float latents runs every mode). `FAMILIES` maps a checkpoint's
config.json `model_type` to its family. How to add one: docs/architecture.md.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping, Sequence
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


@dataclass(frozen=True)
class VoiceReference:
    """A voice for generation to imitate: a clip and what is said in it (tts_lib.listening.players.read_reference
    reads one from a file at the family's rate)."""

    wave: Any  # (samples,) float32 numpy, mono, at the family's sample_rate
    transcript: str


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
    frame_rate: float  # training frames per second of audio (the time table's steps)
    supervised_per_frame: int  # supervised tokens one frame position adds (FLOPs are counted per supervised token)

    def meta_model(self) -> Any: ...  # the model on the meta device, float32, as load_model builds it
    def materialize(self, model: Any, device: Any) -> None: ...  # buffers after to_empty (e.g. rotary tables)
    def batch(self, max_tokens: int) -> dict[str, Any]: ...  # max_tokens padded positions, every one supervised
    def loss_parts(self, model: Any, batch: dict[str, Any]) -> LossParts: ...


# The adapter settings a family without a recipe of its own gets: Fish Speech's upstream LoRA recipe.
HOUSE_ADAPTER = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.01, "targets": "attention_mlp"}


@dataclass(frozen=True)
class ModuleRoles:
    """Which of a model's modules play which part, by name: what adapters and the optimiser's groups need. The
    model a family loads carries its roles as the class attribute `module_roles` (tts_lib.models.module_roles)."""

    adapter_presets: dict[str, list[str] | str] = field(default_factory=dict)  # preset -> peft target_modules
    # The family's LoRA recipe: what an AdapterConfig field left unset (None) becomes (tts_lib.training.adapters)
    adapter_defaults: dict[str, Any] = field(default_factory=lambda: dict(HOUSE_ADAPTER))
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
      sample_rate, frame_rate: the codec's input rate (Hz) and training targets per second of audio;
        output_sample_rate: the rate decode makes (VoxCPM2: 48 kHz from 16 kHz input).
      codec_spec(device): a batched encoder for the features cache; targets are integer codes or float latents
        of any shape, stored exactly (tts_lib.data.codes_cache).
      frames_for_seconds(s), sequence_length(text, frames), max_seq_len: an item's training sequence length
        exactly as build_sample will make it, so validation refuses what training cannot take.
      build_sample(text, targets), collate(samples): training sequences and padded batches (dict of tensors).
        A sample's `length` is its positions (what max_tokens counts); it equals sequence_length(text, frames).
      trains_with_reference: True when training sequences start with a voice reference clip (VoxCPM2: a JSONL
        row's ref_audio); then build_sample(text, targets, reference=targets of the clip or None) and
        sequence_length(text, frames, reference_frames) take it, and the features cache encodes those clips too.

    Training
      module_roles: the ModuleRoles of the model load_model returns (adapter presets and the LoRA recipe, read
        before any weights are: a run records the adapter settings it will train with).
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
      export_upstream_adapter(adapter_dir, out), optional: the adapter also in the upstream project's own LoRA
        format (VoxCPM2: lora_weights.safetensors + lora_config.json); a version gets it beside the peft one.

    Listening
      generate(model, text, references, max_new_tokens=, seed=): targets for `text` spoken in the voice of the
        VoiceReference clips (none: the model's own choice), at most max_new_tokens frames, the same for the same
        seed; decode(targets): a float32 wave at output_sample_rate (empty for no frames).
      text_encoder(): the model's tokenizer (`encode(text) -> ids`): validation reports how many tokens each
        script costs, so a language the tokenizer barely knows shows before training.
    """

    name: str
    folder: Path
    selection_metric: str
    sample_rate: int
    output_sample_rate: int
    frame_rate: float
    max_seq_len: int
    module_roles: ModuleRoles
    trains_with_reference: bool

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
    def generate(self, model: Any, text: str, references: Sequence[VoiceReference] = (), **sampling: Any) -> Any: ...
    def text_encoder(self) -> Any: ...
    def decode(self, targets: Any, device: Any = "cpu") -> Any: ...
    def weights_dtype(self) -> Any: ...
    def probe(self, model: Any, seed: int = 0) -> tuple[Any, ...]: ...


# ---- the registry: which families exist, and how a checkpoint folder names its own ---------------------------


@dataclass(frozen=True)
class PublishedModel:
    """A released checkpoint tts_lib downloads by name: setup.sh's BASE_MODEL and every base_model setting take
    `name`, and it lives in checkpoints/<name> on the instance."""

    name: str  # the base-model name, e.g. "openaudio-s1-mini"
    repo: str  # its Hugging Face model repository
    files: tuple[str, ...]  # what a complete folder holds, downloaded then checked; "a|b": either will do
    title: str  # for people, e.g. "OpenAudio S1-mini"
    gated: bool = False  # True: the hub asks for an accepted licence and HF_TOKEN
    optional: tuple[str, ...] = ()  # downloaded when the repository has them


@dataclass(frozen=True)
class FamilyEntry:
    """A registered family. `module` is imported only when the family is used; it defines:

      Family(folder)                           the ModelFamily of a checkpoint folder
      make_tiny_checkpoint(out, seed, overwrite) a tiny random checkpoint in the upstream layout (tests, demo)
      card_text(merged, adapter, random)       the family's parts of a model card (see `card_text` below)
      reference_shape()                        the PlanningShape of the model it is mostly fine-tuned from
      gpu_speeds(device, dtype, smoke, work, timed) optional: gpu-check's family figures (codec, generation)
    """

    name: str  # what metadata.json records as base_model.family
    model_type: str  # the value of config.json's `config_key` that selects this family
    module: str  # importable module path
    models: str  # the checkpoints it loads, for error messages
    published: tuple[PublishedModel, ...] = ()  # released checkpoints, downloadable by name
    refused: tuple[tuple[str, str], ...] = ()  # (name people try, why it is not supported): refused with the reason
    config_key: str = "model_type"  # the config.json key naming the model (VoxCPM: "architecture")
    # max_tokens when a run leaves it unset: training positions per micro-batch, chosen so that the reference
    # model's quick_lora fits a 24 GB GPU and a batch holds a few minutes of audio (memory_needs.json)
    default_max_tokens: int = 4096


FAMILIES: dict[str, FamilyEntry] = {}  # name -> entry, in registration order


def register_family(entry: FamilyEntry) -> None:
    """Add (or replace) a family. A family living outside tts_lib registers itself before use; tests register a
    toy one (tests/toy_family.py)."""
    FAMILIES[entry.name] = entry


def unregister_family(name: str) -> None:
    FAMILIES.pop(name, None)


register_family(
    FamilyEntry(
        "fish_speech", "dual_ar", "tts_lib.models.fish_speech.registry",
        "Fish Speech: OpenAudio S1-mini, fish-speech-1.5",
        published=(
            PublishedModel("openaudio-s1-mini", "fishaudio/openaudio-s1-mini",
                           ("config.json", "model.pth", "tokenizer.tiktoken", "special_tokens.json", "codec.pth"),
                           "OpenAudio S1-mini", gated=True),
        ),
        refused=(("fish-speech-1.5", "its tokenizer files and its codec (firefly GAN VQ) differ from S1-mini's and "
                  "are not implemented or verified here"),),
    )
)  # fmt: skip


register_family(
    FamilyEntry(
        "voxcpm", "voxcpm2", "tts_lib.models.voxcpm.registry", "VoxCPM2 (OpenBMB)", config_key="architecture",
        # a position is a patch of 4 latent frames (0.16 s) or a text token: 1024 hold about 9 utterances of 10 s
        # (S1-mini's 4096 codec frames about 15); quick_lora then fits 24 GB and full 80 GB without checkpointing
        default_max_tokens=1024,
        # The hub folder's files as upstream's loader reads them (either weights format; public ports of VoxCPM2
        # name model.safetensors, audiovae.pth and the tokenizer files, but the listing itself has not been seen
        # from the build machine, hence the alternatives).
        published=(
            PublishedModel("voxcpm2", "openbmb/VoxCPM2",
                           ("config.json", "model.safetensors|pytorch_model.bin", "audiovae.safetensors|audiovae.pth",
                            "tokenizer.json"),
                           "VoxCPM2",
                           optional=("tokenizer_config.json", "special_tokens_map.json", "tokenization_voxcpm2.py")),
        ),
    )
)  # fmt: skip


def published_models() -> list[PublishedModel]:
    """Every family's released checkpoints; the first is the default base model (setup.sh's `auto`)."""
    return [model for entry in FAMILIES.values() for model in entry.published]


def reference_model(family: str) -> PublishedModel | None:
    """The released checkpoint a family is mostly fine-tuned from (its first published; reference_shape plans it),
    or None for a family that has released none (the toy family of the tests)."""
    entry = FAMILIES.get(family)
    return entry.published[0] if entry and entry.published else None


def published_model(name: str) -> PublishedModel | None:
    """The released checkpoint called `name` (its base-model name or its repository), else None."""
    return next((m for m in published_models() if name in (m.name, m.repo)), None)


def refused_models() -> dict[str, str]:
    """Names people try that tts_lib does not support -> why."""
    return {name: why for entry in FAMILIES.values() for name, why in entry.refused}


def family_module(name: str):
    """The module of the family called `name` (what metadata records), or a clear error."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; tts_lib knows {', '.join(FAMILIES)}")
    return importlib.import_module(FAMILIES[name].module)


def family_name_of(folder: str | Path) -> str | None:
    """The name of the family whose model the folder's config.json names; None when there is no config.json or
    no family knows it (cheap: reads only config.json)."""
    config = Path(folder) / "config.json"
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return next((e.name for e in FAMILIES.values() if isinstance(raw, dict) and raw.get(e.config_key) == e.model_type),
                None)  # fmt: skip


def load_family(folder: str | Path) -> ModelFamily:
    """The family of the checkpoint folder `folder`, from its config.json's model_type."""
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        has = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no such folder"
        raise FileNotFoundError(f"{config} not found: a checkpoint folder has config.json; {folder} has {has}")
    name = family_name_of(folder)
    if name is not None:
        return family_module(name).Family(folder)
    raw = json.loads(config.read_text(encoding="utf-8"))
    known = "; ".join(f"{e.config_key} {e.model_type!r} ({e.models})" for e in FAMILIES.values())
    raise ValueError(f"{config}: model_type {raw.get('model_type')!r} is not supported; tts_lib supports {known}")


def default_max_tokens(family: str) -> int:
    """The max_tokens a run of `family` trains with when it leaves max_tokens unset."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; tts_lib knows {', '.join(FAMILIES)}")
    return FAMILIES[family].default_max_tokens


def reference_shape(family: str = "fish_speech") -> PlanningShape:
    """The planning shape of the model a family is mostly fine-tuned from (Fish Speech: OpenAudio S1-mini): what
    the memory tables, `memory-plan`, the time table and `gpu-check` plan for."""
    return family_module(family).reference_shape()


# Tiny random checkpoints, one per family, in the family's upstream layout: the demo and the tests run the whole
# pipeline on them offline. Every one carries a README.md whose first line is TINY_README_TITLE.
TINY_README_TITLE = "# tiny-demo"


def make_tiny_checkpoint(out_dir: str | Path, family: str = "fish_speech", seed: int = 0, overwrite: bool = False):
    """Write `family`'s tiny random checkpoint folder (the same seed gives the same files); returns the folder."""
    return family_module(family).make_tiny_checkpoint(out_dir, seed=seed, overwrite=overwrite)


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
    return family_module(family).card_text(merged, adapter, random)
