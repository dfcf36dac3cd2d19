"""The codec's small causal transformer (upstream's `WindowLimitedTransformer`): pre-norm blocks with
RMSNorm, rotary attention over a sliding causal window, a SwiGLU feed-forward, and layer scale.
It runs on channels-first tensors (B, C, T) like the convolutions around it.

Inference only: upstream's dropout layers are identity in eval mode and are left out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rope_table(length: int, head_dim: int, base: float) -> Tensor:
    """(length, head_dim // 2, 2) cos/sin pairs in bfloat16. Upstream stores this table in the
    checkpoint in bfloat16 and rotates with the rounded values, so the rounding is part of the model."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(length), inv_freq)  # (length, head_dim // 2)
    rotation = torch.polar(torch.ones_like(angles), angles)
    return torch.stack([rotation.real, rotation.imag], dim=-1).to(torch.bfloat16)


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate consecutive element pairs (x0, x1), (x2, x3), ... of each head by position."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, T, H, D / 2, 2)
    cos_sin = table.view(1, pairs.shape[1], 1, pairs.shape[3], 2)
    cos, sin = cos_sin[..., 0], cos_sin[..., 1]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return rotated.flatten(3).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-2):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, head_dim: int):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.wqkv = nn.Linear(dim, 3 * n_heads * head_dim, bias=False)
        self.wo = nn.Linear(n_heads * head_dim, dim, bias=False)

    def forward(self, x: Tensor, rope: Tensor, mask: Tensor) -> Tensor:  # (B, T, dim)
        B, T, _ = x.shape
        q, k, v = self.wqkv(x).split(self.n_heads * self.head_dim, dim=-1)
        q = apply_rope(q.view(B, T, self.n_heads, self.head_dim), rope)
        k = apply_rope(k.view(B, T, self.n_heads, self.head_dim), rope)
        v = v.view(B, T, self.n_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, head_dim: int, hidden: int, norm_eps: float):
        super().__init__()
        self.attention = Attention(dim, n_heads, head_dim)
        self.feed_forward = FeedForward(dim, hidden)
        self.ffn_norm = RMSNorm(dim, norm_eps)
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.attention_layer_scale = LayerScale(dim)
        self.ffn_layer_scale = LayerScale(dim)

    def forward(self, x: Tensor, rope: Tensor, mask: Tensor) -> Tensor:  # (B, T, dim)
        h = x + self.attention_layer_scale(self.attention(self.attention_norm(x), rope, mask))
        return h + self.ffn_layer_scale(self.feed_forward(self.ffn_norm(h)))


class CodecTransformer(nn.Module):
    """Causal transformer whose attention sees at most `window` frames back (None: all of them).

    `block_size` is the longest sequence it accepts: positions index the stored rotary table."""

    def __init__(
        self,
        dim: int,
        n_layers: int,
        n_heads: int,
        head_dim: int,
        hidden: int,
        block_size: int,
        window: int | None,
        rope_base: float = 10000.0,
        norm_eps: float = 1e-5,
        input_dim: int | None = None,
    ):
        super().__init__()
        self.block_size = block_size
        self.head_dim = head_dim
        self.rope_base = rope_base
        self.window = window
        self.layers = nn.ModuleList(TransformerBlock(dim, n_heads, head_dim, hidden, norm_eps) for _ in range(n_layers))
        self.norm = RMSNorm(dim, norm_eps)
        # Both tables are derived from the sizes but upstream saves them in codec.pth, so they are
        # persistent buffers here too. causal_mask is never read: attention builds its window mask.
        self.register_buffer("freqs_cis", rope_table(block_size, head_dim, rope_base))
        self.register_buffer("causal_mask", torch.ones(block_size, block_size, dtype=torch.bool).tril())
        needs_proj = input_dim is not None and input_dim != dim
        self.input_proj = nn.Linear(input_dim, dim) if needs_proj else nn.Identity()
        self.output_proj = nn.Linear(dim, input_dim) if needs_proj else nn.Identity()

    def rebuild_tables(self) -> None:
        """Compute the derived buffers a checkpoint did not provide (left on the meta device)."""
        device = self.norm.weight.device
        if self.freqs_cis.is_meta:
            self.freqs_cis = rope_table(self.block_size, self.head_dim, self.rope_base).to(device)
        if self.causal_mask.is_meta:
            self.causal_mask = torch.ones(self.block_size, self.block_size, dtype=torch.bool, device=device).tril()

    def window_mask(self, length: int, device: torch.device) -> Tensor:
        """(1, 1, T, T) bool, True where query i may attend to key j: j <= i and j > i - window."""
        pos = torch.arange(length, device=device)
        back = pos[:, None] - pos[None, :]  # (T, T): how far key j lies behind query i
        allowed = back >= 0
        if self.window is not None:
            allowed &= back < self.window
        return allowed[None, None]

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, C, T)
        length = x.shape[-1]
        if length > self.block_size:
            raise ValueError(
                f"sequence of {length} frames is longer than the codec transformer's limit of "
                f"{self.block_size}; split the audio into shorter pieces"
            )
        h = self.input_proj(x.transpose(1, 2))  # (B, T, dim)
        rope = self.freqs_cis[:length]
        mask = self.window_mask(length, x.device)
        for layer in self.layers:
            h = layer(h, rope, mask)
        h = self.output_proj(self.norm(h))
        return h.transpose(1, 2)
