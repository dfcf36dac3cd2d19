"""Convolutional building blocks of the S1-mini codec: causal (weight-normed) convolutions, the Snake
activation, residual units, and the encoder and decoder stacks built from them.

Module and attribute names follow upstream's `modded_dac.py` because they become the keys of
`codec.pth` (`encoder.block.1.block.0.block.1.conv.parametrizations.weight.original0`, ...)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha, one alpha per channel (descript-audio-codec's Snake1d)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T)
        # The 1e-9 keeps a zero alpha finite; the term order matches the checkpoint's training code.
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class CausalConv1d(nn.Module):
    """Conv1d that only looks back: (kernel span - stride) zeros on the left, so no output depends on
    later input, and zeros on the right up to a whole stride, so T samples give ceil(T / stride) frames."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        normed: bool = True,
    ):
        super().__init__()
        conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, groups=groups)
        self.conv = weight_norm(conv) if normed else conv
        self.stride = stride
        self.left_pad = (kernel_size - 1) * dilation + 1 - stride

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, T) -> (B, C_out, ceil(T / stride))
        right_pad = -x.shape[-1] % self.stride
        return self.conv(F.pad(x, (self.left_pad, right_pad)))


class CausalConvTranspose1d(nn.Module):
    """ConvTranspose1d trimmed on the right so T frames become exactly T * stride samples and no
    output depends on a later input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, normed: bool = True):
        super().__init__()
        conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride)
        self.conv = weight_norm(conv) if normed else conv
        self.trim = kernel_size - stride

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, T) -> (B, C_out, T * stride)
        y = self.conv(x)
        return y[..., : y.shape[-1] - self.trim]


class ResidualUnit(nn.Module):
    """Snake, dilated 7-tap conv, Snake, 1x1 conv, plus the input."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake(channels),
            CausalConv1d(channels, channels, kernel_size=7, dilation=dilation),
            Snake(channels),
            CausalConv1d(channels, channels, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T)
        return x + self.block(x)


def residual_stack(channels: int) -> list[nn.Module]:
    return [ResidualUnit(channels, dilation) for dilation in (1, 3, 9)]


class ConvNeXtBlock(nn.Module):
    """Depthwise causal conv, LayerNorm, 4x MLP with GELU, layer scale, residual: the block that
    follows each 2x down/upsampling step around the quantizer."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, kernel_size: int = 7):
        super().__init__()
        self.dwconv = CausalConv1d(dim, dim, kernel_size, groups=dim, normed=False)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, int(mlp_ratio * dim))
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(int(mlp_ratio * dim), dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T)
        y = self.dwconv(x).permute(0, 2, 1)  # (B, T, C)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 2, 1)


class EncoderBlock(nn.Module):
    """Residual units at dim // 2 channels, then a strided conv to dim channels, then (in the last
    block of S1-mini) a windowed causal transformer."""

    def __init__(self, dim: int, stride: int, transformer: nn.Module | None):
        super().__init__()
        self.block = nn.Sequential(
            *residual_stack(dim // 2),
            Snake(dim // 2),
            CausalConv1d(dim // 2, dim, kernel_size=2 * stride, stride=stride),
            # Identity keeps the Sequential's indices (and so the checkpoint keys) the same either way.
            transformer if transformer is not None else nn.Identity(),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, dim // 2, T) -> (B, dim, T / stride)
        return self.block(x)


class Encoder(nn.Module):
    """Mono wave to latent frames: (B, 1, T) -> (B, latent_dim, T / prod(rates))."""

    def __init__(
        self,
        dim: int,
        rates: tuple[int, ...],
        latent_dim: int,
        transformer_layers: tuple[int, ...],
        make_transformer: Callable[[int, int], nn.Module],  # (dim, n_layers) -> transformer
    ):
        super().__init__()
        layers: list[nn.Module] = [CausalConv1d(1, dim, kernel_size=7)]
        for stride, n_layers in zip(rates, transformer_layers):
            dim *= 2
            transformer = make_transformer(dim, n_layers) if n_layers > 0 else None
            layers.append(EncoderBlock(dim, stride, transformer))
        layers += [Snake(dim), CausalConv1d(dim, latent_dim, kernel_size=3)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    """Snake, transposed conv upsampling by `stride` (halving channels), residual units.
    Upstream's config asks for a transformer in the first decoder block, but upstream builds it
    without placing it in the block: it has no weights and never runs, so it is left out here."""

    def __init__(self, in_dim: int, out_dim: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake(in_dim),
            CausalConvTranspose1d(in_dim, out_dim, kernel_size=2 * stride, stride=stride),
            *residual_stack(out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, in_dim, T) -> (B, out_dim, T * stride)
        return self.block(x)


class Decoder(nn.Module):
    """Latent frames to a mono wave in [-1, 1]: (B, latent_dim, T) -> (B, 1, T * prod(rates))."""

    def __init__(self, latent_dim: int, dim: int, rates: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = [CausalConv1d(latent_dim, dim, kernel_size=7)]
        for i, stride in enumerate(rates):
            layers.append(DecoderBlock(dim // 2**i, dim // 2 ** (i + 1), stride))
        out_dim = dim // 2 ** len(rates)
        layers += [Snake(out_dim), CausalConv1d(out_dim, 1, kernel_size=7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)
