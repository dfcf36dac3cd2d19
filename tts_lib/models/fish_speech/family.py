"""The Fish Speech family behind the small interface the rest of tts_lib uses (`tts_lib.models`):
load a checkpoint folder, turn audio into training targets, build and batch training sequences,
compute loss components, generate, and save in upstream's layout."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tts_lib.common.fileio import atomic_copy, checkpoint_hash
from tts_lib.models import CodecSpec, LossParts, VoiceReference
from tts_lib.models.fish_speech.checkpoint import MODEL_FILE, load_state_dict_file
from tts_lib.models.fish_speech.codec import CODEC_CONFIG_FILE, FishCodec, FishCodecConfig
from tts_lib.models.fish_speech.config import CONFIG_FILE, FishSpeechConfig
from tts_lib.models.fish_speech.generate import build_prompt, generate
from tts_lib.models.fish_speech.lm import FishSpeechLM
from tts_lib.models.fish_speech.loss import SELECTION_METRIC, loss_parts, supervised_counts
from tts_lib.models.fish_speech.samples import Sample, build_sample, collate
from tts_lib.models.fish_speech.tokenizer import IM_END, FishTokenizer

CODEC_FILE = "codec.pth"
# Files an export copies from the base folder unchanged (codec.pth too: upstream's merge forgets it).
PASSTHROUGH_FILES = ("tokenizer.tiktoken", "special_tokens.json", CODEC_FILE, CODEC_CONFIG_FILE)


class FishSpeechFamily:
    name = "fish_speech"
    module_roles = FishSpeechLM.module_roles  # adapter presets; the house LoRA recipe (upstream's r 8 / alpha 16)
    trains_with_reference = False  # upstream's recipe trains on text and codes alone

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.config = FishSpeechConfig.from_file(self.folder / CONFIG_FILE)
        self.tokenizer = FishTokenizer.from_dir(self.folder)
        self._codec: FishCodec | None = None
        self._reference_codes: dict[tuple[str, str], Tensor] = {}

    def load_model(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> FishSpeechLM:
        return FishSpeechLM.from_pretrained(self.folder, device=device, dtype=dtype)

    def identity(self) -> dict[str, str]:
        """What adapters and lineage record as "the base model": the folder's name and the sha256 of
        its weights (hashed once, then remembered beside the cache)."""
        return {"id": self.folder.name, "hash": checkpoint_hash(self.folder / MODEL_FILE)}

    def planning_shape(self):
        """This model's shape for the memory plan and the FLOP count (models/fish_speech/planning.py)."""
        from tts_lib.models.fish_speech.planning import FishPlanningShape

        return FishPlanningShape(self.config, self.frame_rate)

    def codec(self, device: str | torch.device = "cpu") -> FishCodec:
        if self._codec is None:
            self._codec = FishCodec.from_pretrained(self.folder / CODEC_FILE, device=device)
        elif self._codec.device != torch.device(device):  # loaded earlier for another device: moved, not reloaded
            self._codec.to(device)
        return self._codec

    def codec_config(self) -> FishCodecConfig:
        """The codec's settings without loading its weights (the sidecar, else S1-mini's)."""
        if self._codec is not None:
            return self._codec.config
        sidecar = self.folder / CODEC_CONFIG_FILE
        return FishCodecConfig.from_file(sidecar) if sidecar.is_file() else FishCodecConfig()

    def codec_spec(self, device: str | torch.device = "cpu") -> CodecSpec:
        """What the codes cache needs: a batch encoder and the codec's identity."""
        codec = self.codec(device)

        def encode_batch(waves: list[np.ndarray]) -> list[np.ndarray]:
            codes, lengths = codec.encode_batch([torch.from_numpy(w).to(device) for w in waves])
            return [c[:, :n].cpu().numpy() for c, n in zip(codes, lengths.tolist())]

        return CodecSpec(
            encode_batch=encode_batch,
            sample_rate=codec.sample_rate,
            num_codebooks=codec.num_codebooks,
            frame_rate=codec.sample_rate / codec.frame_length,
            checkpoint_hash=checkpoint_hash(self.folder / CODEC_FILE),
            device=str(device),
        )

    def build_sample(self, text: str, codes: Tensor) -> Sample:
        return build_sample(self.tokenizer, text, codes)

    collate = staticmethod(collate)

    selection_metric = SELECTION_METRIC

    @property
    def sample_rate(self) -> int:
        return self.codec_config().sample_rate

    @property
    def output_sample_rate(self) -> int:
        return self.sample_rate  # the codec decodes at the rate it encodes

    @property
    def frame_rate(self) -> float:
        codec = self.codec_config()
        return codec.sample_rate / codec.frame_length  # S1-mini: 44100 / 2048, about 21.5

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    def frames_for_seconds(self, seconds: float) -> int:
        """As the codec counts them: ceil(samples / frame_length); the epsilon keeps a whole number of samples
        (seconds = samples / rate in floating point) from rounding up."""
        codec = self.codec_config()
        samples = math.ceil(seconds * codec.sample_rate - 1e-6)
        return max(1, -(-samples // codec.frame_length))

    def sequence_length(self, text: str, frames: int) -> int:
        """Positions of the training sequence build_sample makes of `text` and `frames` codec frames."""
        codes = torch.zeros(self.config.num_codebooks, frames, dtype=torch.long)
        return int(self.build_sample(text, codes).tokens.shape[1])

    @staticmethod
    def loss_parts(model: FishSpeechLM, batch: dict[str, Tensor]) -> LossParts:
        return loss_parts(model, batch)

    @staticmethod
    def supervised_counts(model: FishSpeechLM, batch: dict[str, Tensor]) -> dict[str, int]:
        return supervised_counts(model, batch)

    def generate(
        self, model: FishSpeechLM, text: str, references: Sequence[VoiceReference] = (), **sampling
    ) -> Tensor:
        """Text (and optional voice reference clips, encoded here) -> codes (num_codebooks, F)."""
        device = next(model.parameters()).device
        pairs = [(r.transcript, self.encode_reference(r.wave, device)) for r in references]
        prompt = build_prompt(self.tokenizer, text, num_codebooks=self.config.num_codebooks, references=pairs)
        residual = self.codec_config().residual_codebook_size if (self.folder / CODEC_FILE).exists() else None
        sampling.setdefault("max_new_tokens", self.config.max_seq_len - prompt.shape[1])
        return generate(
            model, prompt, im_end_id=self.tokenizer.token_id(IM_END), residual_codebook_size=residual, **sampling
        )

    def text_encoder(self) -> FishTokenizer:
        return self.tokenizer

    @staticmethod
    def read_weights(path: str | Path) -> dict[str, Tensor]:
        """A state dict from a file upstream's trainer or a release wrote (Lightning checkpoints unwrapped, loralib
        `lora_A`/`lora_B` keys kept), keys as load_model's model names them: what an upstream LoRA import reads."""
        return load_state_dict_file(path)

    def weights_dtype(self) -> torch.dtype:
        """The dtype the checkpoint ships its weights in (S1-mini: bf16): its first floating tensor's."""
        path = self.folder / MODEL_FILE
        for tensor in load_state_dict_file(path).values():
            if tensor.is_floating_point():
                return tensor.dtype
        raise ValueError(f"{path}: expected floating-point weights, found none; is this a model checkpoint?")

    @staticmethod
    def probe(model: torch.nn.Module, seed: int = 0) -> tuple[Tensor, Tensor]:
        """The export check's probe: (slow, fast) float32 logits on a fixed batch (models/fish_speech/probe.py)."""
        from tts_lib.models.fish_speech.probe import probe

        return probe(model, seed)

    def encode_reference(self, wave: np.ndarray, device: str | torch.device = "cpu") -> Tensor:
        """A reference clip (mono float wave at sample_rate) -> its codes (num_codebooks, F), on the CPU. Remembered
        per clip: listening generates many sentences in one voice, and the codec need not run for each."""
        key = (hashlib.sha1(np.ascontiguousarray(wave, np.float32).tobytes()).hexdigest(), str(device))
        if key not in self._reference_codes:
            codec = self.codec(device)
            self._reference_codes[key] = codec.encode(torch.as_tensor(wave, device=codec.device)).cpu()
        return self._reference_codes[key]

    def decode(self, codes: Tensor, device: str | torch.device = "cpu") -> np.ndarray:
        """Generated codes (num_codebooks, F) -> float32 wave at sample_rate (empty for no frames)."""
        codec = self.codec(device)
        if codes.shape[-1] == 0:
            return np.zeros(0, np.float32)
        return codec.decode(codes.to(codec.device)).float().cpu().numpy().astype(np.float32, copy=False)

    def save(self, model: FishSpeechLM, out: str | Path) -> Path:
        """A complete checkpoint folder in upstream's layout: the model plus the base's other files."""
        out = Path(model.save_pretrained(out))
        for name in PASSTHROUGH_FILES:
            if (self.folder / name).is_file() and not (out / name).exists():
                atomic_copy(self.folder / name, out / name)
        return out
