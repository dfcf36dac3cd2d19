"""The VoxCPM2 family behind tts_lib's family interface (tts_lib.models.ModelFamily): a hub folder's model, its
audio VAE as the "codec" of the features cache (float latents), training sequences, the two loss components,
generation from text and reference clips, and saving in the hub's layout."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tts_lib.common.fileio import checkpoint_hash
from tts_lib.models import CodecSpec, LossParts, VoiceReference
from tts_lib.models.voxcpm.checkpoint import CONFIG_FILE, MODEL_FILES, VAE_FILES, find_file, read_state_dict
from tts_lib.models.voxcpm.config import VoxCPM2Config
from tts_lib.models.voxcpm.generate import generate
from tts_lib.models.voxcpm.model import VoxCPM2Model
from tts_lib.models.voxcpm.samples import Sample, build_sample, collate
from tts_lib.models.voxcpm.tokenizer import VoxCPMTokenizer
from tts_lib.models.voxcpm.vae import AudioVAE, AudioVAEConfig

DIFF, STOP = "diff", "stop"
SELECTION_METRIC = "val_diff_loss"  # how well the patches are predicted: what "best" means
VALIDATION_SEED = 1234  # flow matching draws times and noise: validation draws the same ones every time


def loss_parts(model: torch.nn.Module, batch: dict[str, Tensor]) -> LossParts:
    """The two losses as sums over their supervised counts. In eval mode (validation) the flow-matching draws come
    from a fixed seed, so one validation compares with the next; training draws from the global generator."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    generator = None
    if not core.training:
        generator = torch.Generator(device=batch["audio_feats"].device).manual_seed(VALIDATION_SEED)
    sums = core.loss_sums(batch["text_tokens"], batch["text_mask"], batch["audio_feats"], batch["audio_mask"],
                          batch["loss_mask"], batch["labels"], generator=generator)  # fmt: skip
    return LossParts({name: total for name, (total, _) in sums.items()}, {name: n for name, (_, n) in sums.items()})


class VoxCPMFamily:
    name = "voxcpm"
    module_roles = VoxCPM2Model.module_roles  # adapter presets and upstream's LoRA recipe (r 32 / alpha 32)
    trains_with_reference = True  # a JSONL row's ref_audio goes first, [103, its patches, 104], as upstream packs it
    selection_metric = SELECTION_METRIC

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.config = VoxCPM2Config.from_file(self.folder / CONFIG_FILE)
        self.vae_config = AudioVAEConfig.from_dict(self.config.audio_vae_config)
        self._tokenizer: VoxCPMTokenizer | None = None
        self._vae: AudioVAE | None = None
        self._reference_latents: dict[tuple[str, str], Tensor] = {}

    # ---- loading and saving
    def load_model(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> VoxCPM2Model:
        return VoxCPM2Model.from_pretrained(self.folder, device=device, dtype=dtype)

    def identity(self) -> dict[str, str]:
        return {"id": self.folder.name, "hash": checkpoint_hash(find_file(self.folder, MODEL_FILES, "the weights"))}

    def save(self, model: VoxCPM2Model, out: str | Path) -> Path:
        if model.source_folder is None:
            model.source_folder = self.folder
        return model.save_pretrained(out)

    def weights_dtype(self) -> torch.dtype:
        path = find_file(self.folder, MODEL_FILES, "the model's weights")
        return next(t.dtype for t in read_state_dict(path).values() if t.is_floating_point())

    # ---- data
    @property
    def sample_rate(self) -> int:
        return self.vae_config.sample_rate  # what the VAE encodes: 16 kHz

    @property
    def output_sample_rate(self) -> int:
        return self.vae_config.out_sample_rate  # what it decodes to: 48 kHz

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / math.prod(self.vae_config.encoder_rates)  # latent frames a second: 25

    @property
    def max_seq_len(self) -> int:
        return self.config.lm_config.max_position_embeddings

    def tokenizer(self) -> VoxCPMTokenizer:
        if self._tokenizer is None:
            self._tokenizer = VoxCPMTokenizer.from_folder(self.folder)
        return self._tokenizer

    text_encoder = tokenizer

    def vae(self, device: str | torch.device = "cpu") -> AudioVAE:
        if self._vae is None:
            vae = AudioVAE(self.vae_config)
            path = find_file(self.folder, VAE_FILES, "the audio VAE's weights")
            vae.load_state_dict(read_state_dict(path), strict=True)
            self._vae = vae.float().eval()
        return self._vae.to(device)

    def codec_spec(self, device: str | torch.device = "cpu") -> CodecSpec:
        """The VAE as the features cache's encoder: each clip padded to whole patches (as upstream pads it), its
        latents (latent_dim, frames) float32."""
        vae, patch = self.vae(device), self.config.patch_size

        def encode_batch(waves: list[np.ndarray]) -> list[np.ndarray]:
            return [self._encode(vae, w, device).numpy() for w in waves]

        weights = checkpoint_hash(find_file(self.folder, VAE_FILES, "the audio VAE's weights"))
        return CodecSpec(encode_batch=encode_batch, sample_rate=self.sample_rate, num_codebooks=vae.config.latent_dim,
                         frame_rate=self.frame_rate, checkpoint_hash=f"{weights}/patch{patch}",
                         device=str(device))  # fmt: skip

    def _encode(self, vae: AudioVAE, wave: np.ndarray, device) -> Tensor:
        step = vae.hop_length * self.config.patch_size
        audio = torch.as_tensor(np.asarray(wave, np.float32), device=device)
        audio = torch.nn.functional.pad(audio, (0, -audio.shape[0] % step))
        with torch.no_grad():
            return vae.encode(audio[None], self.sample_rate)[0].float().cpu()  # (D, F)

    def frames_for_seconds(self, seconds: float) -> int:
        """Latent frames of a clip, padded to whole patches as the encoder pads it."""
        step = math.prod(self.vae_config.encoder_rates) * self.config.patch_size
        samples = math.ceil(seconds * self.sample_rate - 1e-6)
        return max(1, -(-samples // step)) * self.config.patch_size

    def sequence_length(self, text: str, frames: int, reference_frames: int = 0) -> int:
        patch = self.config.patch_size
        reference = 2 + -(-reference_frames // patch) if reference_frames else 0
        return len(self.tokenizer().encode(text)) + 2 + -(-frames // patch) + reference

    def build_sample(self, text: str, targets: Tensor, reference: Tensor | None = None) -> Sample:
        """`reference`: the latents (D, F') of a clip in the same voice, put first and never supervised."""
        for latents in (targets, reference):
            if latents is not None and not latents.is_floating_point():
                raise TypeError(f"VoxCPM2 trains on float latents, found {latents.dtype}: re-extract the features")
        return build_sample(self.tokenizer().encode(text), targets.float(), self.config.patch_size,
                            None if reference is None else reference.float())  # fmt: skip

    collate = staticmethod(collate)

    # ---- training
    loss_parts = staticmethod(loss_parts)

    def supervised_counts(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> dict[str, int]:
        patches = int(batch["loss_mask"].sum())
        return {DIFF: patches * self.config.patch_size, STOP: patches}

    def planning_shape(self):
        from tts_lib.models.voxcpm.planning import VoxCPMPlanningShape

        return VoxCPMPlanningShape(json.dumps(self.config.to_dict(), sort_keys=True),
                                   self.frame_rate / self.config.patch_size)  # fmt: skip

    # ---- export
    @staticmethod
    def probe(model: torch.nn.Module, seed: int = 0) -> tuple[Tensor, ...]:
        from tts_lib.models.voxcpm.probe import probe

        return probe(model, seed)

    def export_upstream_adapter(self, adapter_dir: str | Path, out: str | Path) -> Path:
        """The adapter also in upstream VoxCPM's LoRA format (models/voxcpm/upstream_lora.py)."""
        from tts_lib.models.voxcpm.upstream_lora import export_upstream_lora

        return export_upstream_lora(adapter_dir, out, self.identity())

    # ---- listening
    def encode_reference(self, wave: np.ndarray, device: str | torch.device = "cpu") -> Tensor:
        """A reference clip at sample_rate -> its latents (D, F), remembered per clip."""
        key = (hashlib.sha1(np.ascontiguousarray(wave, np.float32).tobytes()).hexdigest(), str(device))
        if key not in self._reference_latents:
            self._reference_latents[key] = self._encode(self.vae(device), wave, device)
        return self._reference_latents[key]

    def generate(self, model: torch.nn.Module, text: str, references: Sequence[VoiceReference] = (),
                 max_new_tokens: int = 300, seed: int = 0, **sampling) -> Tensor:  # fmt: skip
        """Latents (D, F) for `text`; a reference clip's voice is put before it (the first, if several).
        max_new_tokens counts latent frames (25 a second)."""
        core = model.get_base_model() if hasattr(model, "get_base_model") else model
        device = next(core.parameters()).device
        reference = self.encode_reference(references[0].wave, device) if references else None
        patches = max(1, max_new_tokens // self.config.patch_size)
        return generate(core, self.tokenizer().encode(text), reference, max_patches=patches, seed=seed, **sampling)

    def decode(self, latents: Tensor, device: str | torch.device = "cpu") -> np.ndarray:
        """Latents (D, F) -> a float32 wave at output_sample_rate (48 kHz)."""
        if latents.shape[-1] == 0:
            return np.zeros(0, np.float32)
        vae = self.vae(device)
        with torch.no_grad():
            return vae.decode(latents.float().to(device)[None])[0, 0].cpu().numpy().astype(np.float32)
