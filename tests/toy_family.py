"""A toy model family, registered by tests only: proof that the stages need nothing but the family interface.

Its targets are float latents (unlike Fish Speech's integer codes): a "codec" that turns each 40 ms frame of
8 kHz audio into 3 floats (log energy, zero crossings, slope) and back into a tone, and a small MLP that
predicts each frame's latents from the text's bytes and the previous frame, trained with a squared error.
The checkpoint folder is config.json + model.safetensors. Nothing here is imported by tts_lib.

    from toy_family import registered
    with registered():
        family = load_family(make_tiny_checkpoint(out, family="toy"))
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from tts_lib.common.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, checkpoint_hash
from tts_lib.models import (
    TINY_README_TITLE,
    CodecSpec,
    FamilyEntry,
    LossParts,
    ModuleRoles,
    PublishedModel,
    register_family,
    unregister_family,
)

WEIGHTS = "model.safetensors"
TINY = {"model_type": "toy_latent", "dim": 16, "latent_dim": 3, "layers": 2, "sample_rate": 8000, "hop": 320,
        "max_seq_len": 600}  # fmt: skip


class ToyLM(nn.Module):
    module_roles = ModuleRoles(
        adapter_presets={"attention_mlp": ["proj_in", "proj_out"], "all_linear": ["proj_in", "proj_out", "head"]},
        adapter_defaults={"r": 4, "lora_alpha": 4, "lora_dropout": 0.0, "targets": "all_linear"},  # its own recipe
        text_embeddings="text_embeddings", embeddings=frozenset({"text_embeddings"}), heads=frozenset({"head"}),
        layer_pattern=r"layers\.(\d+)\.",
    )  # fmt: skip

    def __init__(self, config: dict):
        super().__init__()
        dim, latent = config["dim"], config["latent_dim"]
        self.config = config
        self.text_embeddings = nn.Embedding(256, dim)  # UTF-8 bytes
        self.latent_in = nn.Linear(latent, dim)
        self.layers = nn.ModuleList(nn.ModuleDict({"proj_in": nn.Linear(dim, dim), "proj_out": nn.Linear(dim, dim)})
                                    for _ in range(config["layers"]))  # fmt: skip
        self.head = nn.Linear(dim, latent)

    def forward(self, text: Tensor, text_mask: Tensor, previous: Tensor) -> Tensor:
        """text (B, T) bytes, text_mask (B, T), previous (B, L, F) latents -> each frame's next latents (B, L, F)."""
        emb = self.text_embeddings(text) * text_mask[..., None]  # (B, T, dim)
        context = emb.sum(1) / text_mask.sum(1, keepdim=True).clamp(min=1)  # (B, dim)
        h = self.latent_in(previous.transpose(1, 2)) + context[:, None]  # (B, F, dim)
        for layer in self.layers:
            h = h + layer["proj_out"](torch.nn.functional.gelu(layer["proj_in"](h)))
        return self.head(h).transpose(1, 2)


@dataclass
class Sample:
    text: Tensor  # (T,) long bytes
    latents: Tensor  # (L, F) float

    @property
    def length(self) -> int:
        return self.text.shape[0] + self.latents.shape[1]


def collate(samples: list[Sample]) -> dict[str, Tensor]:
    b, t, f = len(samples), max(s.text.shape[0] for s in samples), max(s.latents.shape[1] for s in samples)
    batch = {"text": torch.zeros(b, t, dtype=torch.long), "text_mask": torch.zeros(b, t),
             "latents": torch.zeros(b, samples[0].latents.shape[0], f), "frame_mask": torch.zeros(b, f)}  # fmt: skip
    for i, s in enumerate(samples):
        n, m = s.text.shape[0], s.latents.shape[1]
        batch["text"][i, :n], batch["text_mask"][i, :n] = s.text, 1
        batch["latents"][i, :, :m], batch["frame_mask"][i, :m] = s.latents, 1
    return batch


def loss_parts(model: nn.Module, batch: dict[str, Tensor]) -> LossParts:
    target = batch["latents"]
    previous = torch.cat([torch.zeros_like(target[..., :1]), target[..., :-1]], dim=-1)  # teacher forcing
    error = (model(batch["text"], batch["text_mask"], previous).float() - target).pow(2).mean(1)  # (B, F)
    mask = batch["frame_mask"]
    return LossParts({"latent": (error * mask).sum()}, {"latent": int(mask.sum())},
                     {"close": ((error < 0.5).float() * mask).sum()}, {"close": int(mask.sum())})  # fmt: skip


def encode(wave: np.ndarray, hop: int) -> np.ndarray:
    """(samples,) -> (3, F) float32: per frame log energy, zero-crossing rate, mean slope."""
    frames = max(1, -(-len(wave) // hop))
    x = np.zeros(frames * hop, np.float32)
    x[: len(wave)] = wave
    x = x.reshape(frames, hop)
    energy = np.log(np.mean(x**2, axis=1) + 1e-6)
    crossings = np.mean(np.abs(np.diff(np.sign(x), axis=1)) > 0, axis=1)
    slope = np.mean(np.diff(x, axis=1), axis=1) * 100
    return np.stack([energy, crossings, slope]).astype(np.float32)


@dataclass(frozen=True)
class ToyPlanningShape:
    config: tuple

    key = property(lambda self: ("toy", self.config))
    logits_width = property(lambda self: dict(self.config)["latent_dim"])
    frame_rate = property(lambda self: dict(self.config)["sample_rate"] / dict(self.config)["hop"])
    supervised_per_frame = 1

    def meta_model(self) -> nn.Module:
        with torch.device("meta"):
            return ToyLM(dict(self.config))

    def materialize(self, model: nn.Module, device) -> None:
        pass

    def batch(self, max_tokens: int) -> dict[str, Tensor]:
        items = max(1, max_tokens // 64)
        return collate([Sample(torch.zeros(8, dtype=torch.long), torch.zeros(dict(self.config)["latent_dim"], 56))
                        for _ in range(items)])  # fmt: skip

    loss_parts = staticmethod(loss_parts)


class Family:
    name = "toy"
    module_roles = ToyLM.module_roles
    trains_with_reference = False
    selection_metric = "val_latent_loss"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.config = json.loads((self.folder / "config.json").read_text())
        self.sample_rate, self.max_seq_len = self.config["sample_rate"], self.config["max_seq_len"]
        self.output_sample_rate = 2 * self.sample_rate  # decodes at another rate than it encodes, as VoxCPM2 does
        self.frame_rate = self.sample_rate / self.config["hop"]

    def load_model(self, device="cpu", dtype=None) -> ToyLM:
        model = ToyLM(self.config)
        model.load_state_dict(load_file(self.folder / WEIGHTS))
        return model.to(device=device, dtype=dtype or self.weights_dtype()).eval()

    def identity(self) -> dict[str, str]:
        return {"id": self.folder.name, "hash": checkpoint_hash(self.folder / WEIGHTS)}

    def save(self, model: ToyLM, out) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", model.config)
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        atomic_write_bytes(out / WEIGHTS, save(state))
        return out

    def codec_spec(self, device="cpu") -> CodecSpec:
        return CodecSpec(lambda waves: [encode(w, self.config["hop"]) for w in waves], self.sample_rate,
                         self.config["latent_dim"], self.frame_rate, checkpoint_hash(self.folder / "config.json"),
                         str(device))  # fmt: skip

    def text_encoder(self):
        return ByteEncoder()

    def frames_for_seconds(self, seconds: float) -> int:
        return max(1, math.ceil(seconds * self.sample_rate / self.config["hop"] - 1e-6))

    def sequence_length(self, text: str, frames: int) -> int:
        return len(text.encode()) + frames

    def build_sample(self, text: str, targets: Tensor) -> Sample:
        assert targets.dtype == torch.float32, targets.dtype  # float latents arrive as stored, never as integers
        return Sample(torch.tensor(list(text.encode()), dtype=torch.long), targets)

    collate = staticmethod(collate)
    loss_parts = staticmethod(loss_parts)

    @staticmethod
    def supervised_counts(model, batch) -> dict[str, int]:
        return {"latent": int(batch["frame_mask"].sum())}

    def planning_shape(self) -> ToyPlanningShape:
        return ToyPlanningShape(tuple(sorted(self.config.items())))

    @torch.no_grad()
    def generate(self, model, text: str, references=(), max_new_tokens: int = 300, seed: int = 0, **sampling) -> Tensor:
        """(3, F) latents, F from the text's length; a reference clip's mean latent starts the voice."""
        p = next(model.parameters())
        ids = torch.tensor([list(text.encode())], device=p.device)
        frame = torch.zeros(1, self.config["latent_dim"], 1, device=p.device, dtype=p.dtype)
        for ref in references:
            frame[0, :, 0] = torch.from_numpy(encode(ref.wave, self.config["hop"]).mean(1)).to(frame)
        g, frames = torch.Generator().manual_seed(seed), []
        for _ in range(min(max_new_tokens, 2 * ids.shape[1] + 4)):
            frame = model(ids, torch.ones(ids.shape, device=p.device), frame)
            frame = frame + 0.01 * torch.randn(frame.shape, generator=g).to(frame)
            frames.append(frame[0, :, 0].float().cpu())
        return torch.stack(frames, 1) if frames else torch.zeros(self.config["latent_dim"], 0)

    def decode(self, latents: Tensor, device="cpu") -> np.ndarray:
        hop, out = 2 * self.config["hop"], []
        for energy, crossings, _ in latents.T.tolist():
            t = np.arange(hop) / self.output_sample_rate
            freq = 100 + min(max(crossings, 0.0), 1.0) * self.sample_rate / 4
            out.append(min(math.exp(energy / 2), 1.0) * np.sin(2 * np.pi * freq * t))
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def weights_dtype(self) -> torch.dtype:
        return next(iter(load_file(self.folder / WEIGHTS).values())).dtype

    @staticmethod
    def probe(model, seed: int = 0) -> tuple[Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
        text = torch.randint(0, 256, (2, 7), generator=g)
        previous = torch.randn(2, config["latent_dim"], 5, generator=g)
        p = next(model.parameters())
        with torch.no_grad():
            return (model(text.to(p.device), torch.ones(2, 7, device=p.device), previous.to(p)).float(),)


class ByteEncoder:
    def encode(self, text: str) -> list[int]:
        return list(text.encode())


def make_tiny_checkpoint(out_dir, seed: int = 0, overwrite: bool = False) -> Path:
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty")
    torch.manual_seed(seed)
    Family.save(None, ToyLM(TINY), out)
    atomic_write_text(out / "README.md", f"{TINY_README_TITLE}\n\nThe toy family's random checkpoint (tests).\n")
    return out


def card_text(merged, adapter, random: bool) -> dict:
    return {"what": "A toy-family fine-tune (tests)", "licence": "Random weights.",
            "metrics": "val_latent_loss: mean squared error of the latents.",
            "use_merged": [f"`{merged}`: config.json + {WEIGHTS}"],
            "use_adapter": [f"`{adapter}`: a peft adapter"]}  # fmt: skip


def reference_shape() -> ToyPlanningShape:
    return ToyPlanningShape(tuple(sorted({**TINY, "dim": 256, "layers": 8}.items())))


@contextlib.contextmanager
def registered():
    """The toy family in tts_lib's registry for the duration."""
    released = PublishedModel("toy-small", "example/toy-small", ("config.json", WEIGHTS), "Toy small")
    register_family(FamilyEntry("toy", "toy_latent", __name__, "a toy family (tests)", published=(released,)))
    try:
        yield
    finally:
        unregister_family("toy")
