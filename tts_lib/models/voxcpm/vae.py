"""VoxCPM2's audio VAE: 16 kHz audio -> 64 latent values per 640 samples (25 frames a second) -> 48 kHz audio.

    from tts_lib.models.voxcpm.vae import AudioVAE, AudioVAEConfig
    vae = AudioVAE(AudioVAEConfig())
    latents = vae.encode(wave_16k[None], 16000)  # (1, 64, frames): the VAE's mean, as training targets
    audio = vae.decode(latents)  # (1, 1, frames * 1920) at 48 kHz

A causal DAC-style network: weight-normalised 1-D convolutions padded on the left only, Snake activations,
residual units at dilations 1, 3, 9, strided blocks; the decoder is conditioned on the output sample rate (a scale
and bias per rate bucket before each upsampling block). Frozen during fine-tuning: it only turns audio into targets
once (the features cache) and generated latents back into audio. Parameter names are upstream's (`weight_g`,
`weight_v`, `encoder.block.N`, `decoder.model.N`, `decoder.sr_cond_model.N`), so `audiovae.safetensors` loads as
published.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class AudioVAEConfig:
    encoder_dim: int = 128
    encoder_rates: list[int] = field(default_factory=lambda: [2, 5, 8, 8])  # hop 640 at 16 kHz: 25 frames/s
    latent_dim: int = 64
    decoder_dim: int = 2048
    decoder_rates: list[int] = field(default_factory=lambda: [8, 6, 5, 2, 2, 2])  # 1920 samples a frame: 48 kHz
    depthwise: bool = True
    sample_rate: int = 16000  # the rate encode takes: anything else is refused
    out_sample_rate: int = 48000  # the rate decode makes
    use_noise_block: bool = False
    sr_bin_boundaries: list[int] | None = field(default_factory=lambda: [20000, 30000, 40000])
    cond_type: str = "scale_bias"
    cond_dim: int = 128
    cond_out_layer: bool = False

    @classmethod
    def from_dict(cls, raw: dict | None) -> AudioVAEConfig:
        """The VAE's settings from config.json's audio_vae_config (None: the defaults, as upstream). Keys this
        reader does not know are ignored, as upstream ignores them (VoxCPM2Config keeps them in the file)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (raw or {}).items() if k in known})


class WNConv(nn.Module):
    """A weight-normalised causal Conv1d (or ConvTranspose1d): weight = weight_g * weight_v / |weight_v| per output
    channel. `padding` is upstream's argument: the convolution sees 2 * padding - output_padding zeros on the left
    (a transposed one drops that many samples on the right instead)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, dilation: int = 1, groups: int = 1,
                 padding: int = 0, output_padding: int = 0, bias: bool = True, transpose: bool = False):  # fmt: skip
        super().__init__()
        shape = (cin, cout // groups, kernel_size) if transpose else (cout, cin // groups, kernel_size)
        bound = 1 / math.sqrt(shape[1] * kernel_size)
        self.weight_v = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        self.weight_g = nn.Parameter(self.weight_v.detach().flatten(1).norm(dim=1).view(-1, 1, 1).clone())
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.stride, self.dilation, self.groups, self.transpose = stride, dilation, groups, transpose
        self.causal = 2 * padding - output_padding

    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.flatten(1).norm(dim=1).view(-1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.transpose:
            out = F.conv_transpose1d(x, self.weight(), self.bias, self.stride, groups=self.groups,
                                     dilation=self.dilation)  # fmt: skip
            return out[..., : -self.causal] if self.causal else out
        return F.conv1d(F.pad(x, (self.causal, 0)), self.weight(), self.bias, self.stride, 0, self.dilation,
                        self.groups)  # fmt: skip


class Snake(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int, groups: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake(dim),
            WNConv(dim, dim, 7, dilation=dilation, groups=groups, padding=3 * dilation),
            Snake(dim),
            WNConv(dim, dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def residual_units(dim: int, groups: int) -> list[nn.Module]:
    return [ResidualUnit(dim, dilation, groups) for dilation in (1, 3, 9)]


class EncoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.block = nn.Sequential(
            *residual_units(cin, groups), Snake(cin),
            WNConv(cin, cout, 2 * stride, stride=stride, padding=math.ceil(stride / 2), output_padding=stride % 2),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Encoder(nn.Module):
    def __init__(self, c: AudioVAEConfig):
        super().__init__()
        dim, layers = c.encoder_dim, [WNConv(1, c.encoder_dim, 7, padding=3)]
        for stride in c.encoder_rates:
            layers.append(EncoderBlock(dim, 2 * dim, stride, dim if c.depthwise else 1))
            dim *= 2
        self.block = nn.Sequential(*layers)
        self.fc_mu = WNConv(dim, c.latent_dim, 3, padding=1)
        self.fc_logvar = WNConv(dim, c.latent_dim, 3, padding=1)  # unused by encode (the mean is the latent)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_mu(self.block(x))


class NoiseBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = WNConv(dim, dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        noise = torch.randn((x.shape[0], 1, x.shape[2]), device=x.device, dtype=x.dtype)
        return x + noise * self.linear(x)


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int, noise: bool):
        super().__init__()
        self.input_channels = cin
        layers = [Snake(cin), WNConv(cin, cout, 2 * stride, stride=stride, padding=math.ceil(stride / 2),
                                     output_padding=stride % 2, transpose=True)]  # fmt: skip
        layers += [NoiseBlock(cout)] if noise else []
        self.block = nn.Sequential(*layers, *residual_units(cout, groups))

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class RateCondition(nn.Module):
    """Scale and bias (or an added or concatenated embedding) per output-rate bucket, before an upsampling block."""

    def __init__(self, dim: int, buckets: int, kind: str, cond_dim: int, out_layer: bool):
        super().__init__()
        self.kind, width = kind, dim
        if kind in ("scale_bias", "scale_bias_init"):
            self.scale_embed, self.bias_embed = nn.Embedding(buckets, dim), nn.Embedding(buckets, dim)
            nn.init.ones_(self.scale_embed.weight)
            nn.init.zeros_(self.bias_embed.weight)
        elif kind in ("add", "concat"):
            self.cond_embed = nn.Embedding(buckets, dim if kind == "add" else cond_dim)
            width = dim + cond_dim if kind == "concat" else dim
        else:
            raise ValueError(
                f"audio_vae_config.cond_type {kind!r}: expected scale_bias, scale_bias_init, add or concat"
            )
        self.out_layer = nn.Sequential(Snake(width), WNConv(width, dim, 1)) if out_layer else nn.Identity()

    def forward(self, x: Tensor, bucket: Tensor) -> Tensor:
        if self.kind == "add":
            x = x + self.cond_embed(bucket)[..., None]
        elif self.kind == "concat":
            x = torch.cat([x, self.cond_embed(bucket)[..., None].expand(-1, -1, x.shape[-1])], dim=1)
        else:
            x = x * self.scale_embed(bucket)[..., None] + self.bias_embed(bucket)[..., None]
        return self.out_layer(x)


class Decoder(nn.Module):
    def __init__(self, c: AudioVAEConfig):
        super().__init__()
        dim, first = c.decoder_dim, c.latent_dim
        if c.depthwise:
            layers = [WNConv(first, first, 7, groups=first, padding=3), WNConv(first, dim, 1)]
        else:
            layers = [WNConv(first, dim, 7, padding=3)]
        for i, stride in enumerate(c.decoder_rates):
            cin, cout = dim // 2**i, dim // 2 ** (i + 1)
            layers.append(DecoderBlock(cin, cout, stride, cout if c.depthwise else 1, c.use_noise_block))
        layers += [Snake(cout), WNConv(cout, 1, 7, padding=3), nn.Tanh()]
        self.model = nn.ModuleList(layers)
        self.sr_cond_model = None
        if c.sr_bin_boundaries is not None:
            self.register_buffer("sr_bin_boundaries", torch.tensor(c.sr_bin_boundaries, dtype=torch.int32))
            buckets = len(c.sr_bin_boundaries) + 1
            self.sr_cond_model = nn.ModuleList(
                RateCondition(layer.input_channels, buckets, c.cond_type, c.cond_dim, c.cond_out_layer)
                if isinstance(layer, DecoderBlock) else None for layer in layers
            )  # fmt: skip

    def forward(self, z: Tensor, rate: Tensor | None) -> Tensor:
        conditions = [None] * len(self.model) if self.sr_cond_model is None else list(self.sr_cond_model)
        bucket = torch.bucketize(rate, self.sr_bin_boundaries) if self.sr_cond_model is not None else None
        for layer, condition in zip(self.model, conditions):
            z = layer(condition(z, bucket) if condition is not None else z)
        return z


class AudioVAE(nn.Module):
    def __init__(self, config: AudioVAEConfig | None = None):
        super().__init__()
        self.config = config = config or AudioVAEConfig()
        self.encoder, self.decoder = Encoder(config), Decoder(config)
        self.hop_length = math.prod(config.encoder_rates)  # input samples per latent frame
        self.decode_hop = math.prod(config.decoder_rates)  # output samples per latent frame
        self.sample_rate, self.out_sample_rate = config.sample_rate, config.out_sample_rate

    def encode(self, audio: Tensor, sample_rate: int) -> Tensor:
        """audio (B, T) or (B, 1, T) at sample_rate -> latents (B, latent_dim, ceil(T / hop_length)). A rate other
        than the VAE's is refused: upstream's most reported silent failure was audio at the wrong rate."""
        if sample_rate != self.sample_rate:
            raise ValueError(f"the audio VAE encodes {self.sample_rate} Hz audio, found {sample_rate} Hz: resample "
                             "first (tts_lib.data.audio.load_audio does)")  # fmt: skip
        audio = audio[:, None] if audio.ndim == 2 else audio
        pad = -audio.shape[-1] % self.hop_length
        return self.encoder(F.pad(audio, (0, pad)))

    def decode(self, latents: Tensor, rate: Tensor | None = None) -> Tensor:
        """latents (B, latent_dim, F) -> audio (B, 1, F * decode_hop) at out_sample_rate (or the `rate` bucket)."""
        if rate is None:
            rate = torch.tensor([self.out_sample_rate], device=latents.device, dtype=torch.int32)
        return self.decoder(latents, rate)
