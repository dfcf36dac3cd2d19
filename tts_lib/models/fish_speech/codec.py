"""FishCodec: our implementation of the OpenAudio S1-mini audio codec (`codec.pth`, upstream config
`modded_dac_vq`). It turns 44.1 kHz mono audio into 10 rows of integer codes at about 21.5 frames
per second (the text-to-semantic model's targets) and codes back into audio.

Shapes: encode (T,) -> (10, F) and (B, T) -> (B, 10, F) with F = ceil(T / 2048); decode (10, F)
-> (F * 2048,) and (B, 10, F) -> (B, F * 2048). Audio is zero-padded on the right to a whole
frame first, as upstream does, so decoded audio is that padded length.

The module tree mirrors upstream's DAC so `state_dict()` has the same keys and shapes as
codec.pth; see codec_checkpoint.py for loading and saving."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tts_lib.common.fileio import atomic_write_text
from tts_lib.models.fish_speech.codec_checkpoint import load_codec, save_codec
from tts_lib.models.fish_speech.codec_layers import Decoder, Encoder
from tts_lib.models.fish_speech.codec_quantizer import DownsampleQuantizer
from tts_lib.models.fish_speech.codec_transformer import CodecTransformer

CODEC_CONFIG_FILE = "codec_config.json"  # ours only: upstream keeps codec settings in its code


@dataclass(frozen=True)
class FishCodecConfig:
    """Defaults are S1-mini's, from upstream's `fish_speech/configs/modded_dac_vq.yaml` (fish-speech
    0.1.0 wheel) and the sizes hard-coded in `models/dac/modded_dac.py`. Comments give the yaml name."""

    sample_rate: int = 44100
    encoder_dim: int = 64  # encoder_dim; doubles in each encoder block
    encoder_rates: tuple[int, ...] = (2, 4, 8, 8)  # encoder_rates; hop = product = 512
    encoder_transformer_layers: tuple[int, ...] = (0, 0, 0, 4)  # encoder_transformer_layers
    encoder_window: int = 512  # hard-coded in EncoderBlock
    encoder_block_size: int = 16384  # transformer_general_config.block_size: max latent frames
    encoder_head_dim: int = 64  # transformer_general_config.head_dim; heads = dim // 64 (hard-coded)
    decoder_dim: int = 1536  # decoder_dim; halves in each decoder block
    decoder_rates: tuple[int, ...] = (8, 8, 4, 2)  # decoder_rates
    rope_base: float = 10000.0  # rope_base (both transformer configs)
    norm_eps: float = 1e-5  # norm_eps (both transformer configs)
    semantic_codebook_size: int = 4096  # quantizer.semantic_codebook_size
    residual_codebooks: int = 9  # quantizer.n_codebooks
    residual_codebook_size: int = 1024  # quantizer.codebook_size
    codebook_dim: int = 8  # quantizer.codebook_dim
    downsample_factors: tuple[int, ...] = (2, 2)  # quantizer.downsample_factor
    quantizer_layers: int = 8  # quantizer.{pre,post}_module.config.n_layer
    quantizer_dim: int = 1024  # ...config.dim (input_dim 1024 = latent_dim, so no projection)
    quantizer_heads: int = 16  # ...config.n_head
    quantizer_head_dim: int = 64  # ...config.head_dim
    quantizer_hidden: int = 3072  # ...config.intermediate_size
    quantizer_block_size: int = 4096  # ...config.block_size: max code frames
    quantizer_window: int = 128  # quantizer.{pre,post}_module.window_size

    def __post_init__(self) -> None:
        if len(self.encoder_rates) != len(self.encoder_transformer_layers):
            raise ValueError("encoder_rates and encoder_transformer_layers need one entry per encoder block")
        if self.decoder_dim % 2 ** len(self.decoder_rates):
            raise ValueError(f"decoder_dim {self.decoder_dim} must halve {len(self.decoder_rates)} times")

    @classmethod
    def from_file(cls, path: Path) -> FishCodecConfig:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - names:
            unknown = sorted(set(data) - names) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path}: expected codec settings with keys from {sorted(names)}, found {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def save(self, path: Path) -> Path:
        return atomic_write_text(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def tiny(cls) -> FishCodecConfig:
        """Same structure and frame rate, a few channels and short tables: for tests on CPU."""
        return cls(
            encoder_dim=4,  # latent_dim 64: one encoder attention head of 64
            encoder_window=16,
            encoder_block_size=1024,  # about 11.9 s of audio
            decoder_dim=64,  # >= 64: upstream builds (and discards) a dim // 64-head decoder transformer
            semantic_codebook_size=64,
            residual_codebooks=2,
            residual_codebook_size=32,
            codebook_dim=4,
            quantizer_layers=1,
            quantizer_dim=64,
            quantizer_heads=2,
            quantizer_head_dim=16,
            quantizer_hidden=96,
            quantizer_block_size=256,
            quantizer_window=4,
        )

    @property
    def latent_dim(self) -> int:
        return self.encoder_dim * 2 ** len(self.encoder_rates)

    @property
    def hop_length(self) -> int:
        return math.prod(self.encoder_rates)

    @property
    def frame_length(self) -> int:
        """Audio samples per code frame: 2048 for S1-mini."""
        return self.hop_length * math.prod(self.downsample_factors)

    @property
    def num_codebooks(self) -> int:
        return 1 + self.residual_codebooks

    @property
    def max_frames(self) -> int:
        """Longest input, in code frames, that the transformers' stored position tables allow."""
        return min(self.encoder_block_size // math.prod(self.downsample_factors), self.quantizer_block_size)


class FishCodec(nn.Module):
    def __init__(self, config: FishCodecConfig | None = None):
        super().__init__()
        self.config = c = config or FishCodecConfig()

        def encoder_transformer(dim: int, n_layers: int) -> CodecTransformer:
            return CodecTransformer(
                dim,
                n_layers,
                n_heads=dim // 64,  # upstream: 64 channels per head whatever head_dim says
                head_dim=c.encoder_head_dim,
                hidden=3 * dim,
                block_size=c.encoder_block_size,
                window=c.encoder_window,
                rope_base=c.rope_base,
                norm_eps=c.norm_eps,
            )

        def quantizer_transformer() -> CodecTransformer:
            return CodecTransformer(
                c.quantizer_dim,
                c.quantizer_layers,
                c.quantizer_heads,
                c.quantizer_head_dim,
                c.quantizer_hidden,
                block_size=c.quantizer_block_size,
                window=c.quantizer_window,
                rope_base=c.rope_base,
                norm_eps=c.norm_eps,
                input_dim=c.latent_dim,
            )

        self.encoder = Encoder(
            c.encoder_dim, c.encoder_rates, c.latent_dim, c.encoder_transformer_layers, encoder_transformer
        )
        self.quantizer = DownsampleQuantizer(
            c.latent_dim,
            c.semantic_codebook_size,
            c.residual_codebooks,
            c.residual_codebook_size,
            c.codebook_dim,
            c.downsample_factors,
            pre_module=quantizer_transformer(),
            post_module=quantizer_transformer(),
        )
        self.decoder = Decoder(c.latent_dim, c.decoder_dim, c.decoder_rates)
        self.eval()  # inference only: nothing here trains

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_length(self) -> int:
        return self.config.frame_length

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    @property
    def device(self) -> torch.device:
        return self.decoder.model[0].conv.parametrizations.weight.original1.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.model[0].conv.parametrizations.weight.original1.dtype

    def num_frames(self, num_samples: int) -> int:
        """Code frames for `num_samples` of audio: 1 s at 44.1 kHz gives 22."""
        return -(-num_samples // self.frame_length)

    # -- checkpoints (codec_checkpoint.py) --

    @classmethod
    def from_pretrained(
        cls, path: str | Path, config: FishCodecConfig | None = None, device: str | torch.device = "cpu"
    ) -> FishCodec:
        """Load `codec.pth` (or a checkpoint folder holding it) strictly; ValueError if it is not
        a codec with this config's keys and shapes. With no `config`, a `codec_config.json` beside
        the file (written for non-S1-mini sizes such as tiny-demo; upstream ignores it) is used,
        else S1-mini's."""
        path = Path(path)
        if config is None:
            sidecar = (path if path.is_dir() else path.parent) / CODEC_CONFIG_FILE
            config = FishCodecConfig.from_file(sidecar) if sidecar.is_file() else FishCodecConfig()
        return load_codec(cls, path, config, device)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a plain state dict that upstream's loader accepts; a folder gets `codec.pth`."""
        return save_codec(self, Path(path))

    # -- audio <-> codes --

    @torch.inference_mode()
    def encode(self, wave: Tensor | np.ndarray, sample_rate: int | None = None) -> Tensor:
        """Mono float audio (T,) or (B, T) at `sample_rate` (must be the codec's) -> int64 codes
        (num_codebooks, F) or (B, num_codebooks, F), F = ceil(T / frame_length)."""
        x = self._check_wave(wave, sample_rate)
        codes = self._encode(x if x.ndim == 2 else x[None])
        return codes if x.ndim == 2 else codes[0]

    @torch.inference_mode()
    def encode_batch(
        self, waves: Sequence[Tensor | np.ndarray] | Tensor, lengths: Tensor | Sequence[int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Encode clips of different lengths together: a list of (T_i,) waves, or a right-padded
        (B, T) tensor with `lengths`. Returns codes (B, num_codebooks, F_max) and code lengths (B,);
        the codec is causal, so codes[i, :, : code_lengths[i]] equal what encode() gives clip i alone
        (up to floating-point differences between batch shapes)."""
        if isinstance(waves, Tensor | np.ndarray):
            x = self._check_wave(waves, None)
            if x.ndim != 2:
                raise ValueError(f"encode_batch expects a (B, T) batch; got shape {tuple(x.shape)}")
            lengths = torch.as_tensor(lengths if lengths is not None else [x.shape[1]] * len(x), dtype=torch.long)
            if lengths.shape != (len(x),) or int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]:
                raise ValueError(f"lengths must be {len(x)} values in 1..{x.shape[1]}; got {lengths.tolist()}")
        else:
            clips = [self._check_wave(w, None) for w in waves]
            if not clips or any(c.ndim != 1 for c in clips):
                raise ValueError("encode_batch expects a non-empty list of 1-D waves")
            lengths = torch.tensor([len(c) for c in clips])
            x = torch.stack([F.pad(c, (0, int(lengths.max()) - len(c))) for c in clips])
        code_lengths = -(-lengths // self.frame_length)  # ceil, as upstream's indices_lens
        return self._encode(x), code_lengths.to(x.device)

    @torch.inference_mode()
    def decode(self, codes: Tensor | np.ndarray) -> Tensor:
        """Integer codes (num_codebooks, F) or (B, num_codebooks, F) -> float audio (F * frame_length,)
        or (B, F * frame_length) in [-1, 1]. Fewer rows than num_codebooks decode at lower quality."""
        c = self._check_codes(codes)
        batched = c if c.ndim == 3 else c[None]
        latents = self.quantizer.decode(batched)  # (B, latent_dim, F * prod(downsample_factors))
        wave = self.decoder(latents)[:, 0]  # (B, F * frame_length)
        return wave if c.ndim == 3 else wave[0]

    def _encode(self, x: Tensor) -> Tensor:  # (B, T) -> (B, num_codebooks, F)
        padded = F.pad(x, (0, -x.shape[-1] % self.frame_length))
        self._check_length(padded.shape[-1] // self.frame_length)
        latents = self.encoder(padded[:, None])  # (B, latent_dim, T / hop)
        return self.quantizer.encode(latents)

    def _check_length(self, frames: int) -> None:
        if frames > self.config.max_frames:
            limit = self.config.max_frames * self.frame_length / self.sample_rate
            raise ValueError(
                f"{frames} code frames ({frames * self.frame_length / self.sample_rate:.1f} s) is more than the "
                f"codec handles in one piece ({self.config.max_frames} frames, {limit:.1f} s); split the audio"
            )

    def _check_wave(self, wave: Tensor | np.ndarray, sample_rate: int | None) -> Tensor:
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise ValueError(f"the codec expects {self.sample_rate} Hz audio; got {sample_rate} Hz, resample first")
        x = torch.as_tensor(wave)
        if not x.is_floating_point():
            raise ValueError(f"expected float audio in [-1, 1]; got dtype {x.dtype}")
        if x.ndim not in (1, 2) or x.shape[-1] == 0:
            raise ValueError(
                f"expected mono audio shaped (T,) or (B, T) with T > 0; got shape {tuple(x.shape)} "
                "(mix multi-channel audio down to mono first)"
            )
        return x.to(device=self.device, dtype=self.dtype)

    def _check_codes(self, codes: Tensor | np.ndarray) -> Tensor:
        c = torch.as_tensor(codes)
        if c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
            raise ValueError(f"expected integer codes; got dtype {c.dtype}")
        if c.ndim not in (2, 3) or not 1 <= c.shape[-2] <= self.num_codebooks or c.shape[-1] == 0:
            raise ValueError(
                f"expected codes shaped (num_codebooks, frames) or (B, num_codebooks, frames) with "
                f"1..{self.num_codebooks} codebooks and frames > 0; got shape {tuple(c.shape)}"
            )
        if int(c.min()) < 0:
            raise ValueError(f"codes must be non-negative; found {int(c.min())}")
        self._check_length(c.shape[-1])
        return c.to(device=self.device, dtype=torch.long)
