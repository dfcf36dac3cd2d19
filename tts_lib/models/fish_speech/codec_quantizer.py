"""The S1-mini codec's quantizer: latent frames are downsampled 4x in time, run through a causal
transformer, and quantized as one "semantic" codebook followed by residual codebooks; decoding
mirrors this (codebook lookup, transformer, upsampling).

Each codebook is factorised (DAC style): project down to `codebook_dim`, pick the nearest entry by
cosine similarity, project back up. Inference only: no losses, no quantizer dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tts_lib.models.fish_speech.codec_layers import CausalConv1d, CausalConvTranspose1d, ConvNeXtBlock


class WeightNormConv1x1(nn.Module):
    """1x1 Conv1d with weight norm stored the pre-parametrization way (`weight_g`, `weight_v`):
    descript-audio-codec built these projections with the legacy `torch.nn.utils.weight_norm`,
    so that is how codec.pth names them."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        v = torch.empty(out_channels, in_channels, 1)
        nn.init.kaiming_uniform_(v, a=5**0.5)
        self.weight_g = nn.Parameter(v.norm(dim=(1, 2), keepdim=True))  # (out, 1, 1)
        self.weight_v = nn.Parameter(v)  # (out, in, 1)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, T) -> (B, C_out, T)
        # torch._weight_norm is the function both weight-norm flavours in torch call, so the
        # effective weight is bit-identical to the one the checkpoint was trained with.
        weight = torch._weight_norm(self.weight_v, self.weight_g, 0)
        return F.conv1d(x, weight, self.bias)


class Codebook(nn.Module):
    """One factorised codebook (descript-audio-codec's VectorQuantize)."""

    def __init__(self, input_dim: int, size: int, dim: int):
        super().__init__()
        self.in_proj = WeightNormConv1x1(input_dim, dim)
        self.out_proj = WeightNormConv1x1(dim, input_dim)
        self.codebook = nn.Embedding(size, dim)

    @property
    def size(self) -> int:
        return self.codebook.num_embeddings

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(B, input_dim, T) -> codes (B, T) and their reconstruction (B, input_dim, T)."""
        z_e = self.in_proj(z)  # (B, dim, T)
        B, dim, T = z_e.shape
        flat = F.normalize(z_e.transpose(1, 2).reshape(B * T, dim))
        book = F.normalize(self.codebook.weight)
        # The full squared distance rather than only the dot product: both rank entries the same
        # for unit vectors, but this is the arithmetic the codes were produced with, so near-ties
        # resolve the same way.
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1, keepdim=True).t()
        codes = (-dist).max(1).indices.view(B, T)
        z_q = self.lookup(codes)
        # Upstream's straight-through estimator z_e + (z_q - z_e) is not exactly z_q in floating
        # point; the next residual codebook sees that rounding, so it is kept.
        z_q = z_e + (z_q - z_e)
        return codes, self.out_proj(z_q)

    def lookup(self, codes: Tensor) -> Tensor:  # (B, T) -> (B, dim, T), unnormalised entries
        return self.codebook(codes).transpose(1, 2)

    def decode(self, codes: Tensor) -> Tensor:  # (B, T) -> (B, input_dim, T)
        return self.out_proj(self.lookup(codes))


class ResidualQuantizer(nn.Module):
    """Codebooks applied in turn, each to what the previous ones left unexplained."""

    def __init__(self, input_dim: int, n_codebooks: int, size: int, dim: int):
        super().__init__()
        self.quantizers = nn.ModuleList(Codebook(input_dim, size, dim) for _ in range(n_codebooks))

    @property
    def size(self) -> int:
        return self.quantizers[0].size

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(B, input_dim, T) -> codes (B, n_codebooks, T) and the summed reconstruction."""
        residual = z
        z_q = torch.zeros_like(z)
        codes = []
        for codebook in self.quantizers:
            codes_i, z_q_i = codebook.quantize(residual)
            z_q = z_q + z_q_i
            residual = residual - z_q_i
            codes.append(codes_i)
        return torch.stack(codes, dim=1), z_q

    def decode(self, codes: Tensor) -> Tensor:  # (B, n <= n_codebooks, T) -> (B, input_dim, T)
        z_q = self.quantizers[0].decode(codes[:, 0])
        for i in range(1, codes.shape[1]):
            z_q = z_q + self.quantizers[i].decode(codes[:, i])
        return z_q


class DownsampleQuantizer(nn.Module):
    """Upstream's DownsampleResidualVectorQuantize, inference half."""

    def __init__(
        self,
        input_dim: int,
        semantic_codebook_size: int,
        residual_codebooks: int,
        residual_codebook_size: int,
        codebook_dim: int,
        downsample_factors: tuple[int, ...],
        pre_module: nn.Module,
        post_module: nn.Module,
    ):
        super().__init__()
        self.semantic_quantizer = ResidualQuantizer(input_dim, 1, semantic_codebook_size, codebook_dim)
        self.quantizer = ResidualQuantizer(input_dim, residual_codebooks, residual_codebook_size, codebook_dim)
        # Each step changes the frame rate by f, then a ConvNeXt block; upsampling undoes them in reverse.
        self.downsample = nn.Sequential(
            *(
                nn.Sequential(CausalConv1d(input_dim, input_dim, f, stride=f, normed=False), ConvNeXtBlock(input_dim))
                for f in downsample_factors
            )
        )
        self.upsample = nn.Sequential(
            *(
                nn.Sequential(
                    CausalConvTranspose1d(input_dim, input_dim, f, stride=f, normed=False), ConvNeXtBlock(input_dim)
                )
                for f in reversed(downsample_factors)
            )
        )
        self.pre_module = pre_module
        self.post_module = post_module

    def encode(self, z: Tensor) -> Tensor:
        """(B, input_dim, T) latents -> (B, 1 + residual_codebooks, T / prod(factors)) codes."""
        z = self.pre_module(self.downsample(z))
        semantic_codes, semantic_z = self.semantic_quantizer.quantize(z)
        residual_codes, _ = self.quantizer.quantize(z - semantic_z)
        return torch.cat([semantic_codes, residual_codes], dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        """(B, n, T) codes -> (B, input_dim, T * prod(factors)) latents."""
        # Residual entries above the codebook size are clamped, not rejected: the text-to-semantic
        # model predicts every codebook over the 4096-way semantic vocabulary, and upstream clamps.
        semantic = codes[:, :1].clamp(max=self.semantic_quantizer.size - 1)
        z_q = self.semantic_quantizer.decode(semantic)
        if codes.shape[1] > 1:
            residual = codes[:, 1:].clamp(max=self.quantizer.size - 1)
            z_q = z_q + self.quantizer.decode(residual)
        return self.upsample(self.post_module(z_q))
