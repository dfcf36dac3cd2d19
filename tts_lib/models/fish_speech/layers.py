"""Building blocks of the dual-AR transformer: RMSNorm, rotary embeddings, GQA attention with an
optional KV cache, SwiGLU feed-forward, and the pre-norm block.

Attribute names (`wqkv`, `wo`, `q_norm`, `k_norm`, `w1`, `w2`, `w3`, `attention_norm`, `ffn_norm`)
are the checkpoint format and must not change. Numerics follow upstream where they change results:
norms and rotary run in float32, the rotary table holds bfloat16-rounded cos/sin (upstream rounds it
so, and the released weights were trained with it), rotary rotates consecutive pairs (x[2i], x[2i+1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class BlockShape:
    """The sizes one stack of blocks needs; the slow and the fast transformer each have one."""

    dim: int
    n_head: int
    n_local_heads: int
    head_dim: int
    intermediate_size: int
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool
    norm_eps: float
    dropout: float


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in float32, cast back, then scale: upstream's order (it matters in bf16).
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_table(positions: int, head_dim: int, base: float, device: torch.device | str | None = None) -> Tensor:
    """(positions, head_dim // 2, 2) float32 holding [cos, sin] per position and frequency pair.

    Values are rounded to bfloat16 as upstream's table is; they stay float32 so the rotation itself
    runs in float32, and casting the model to bf16 loses nothing more."""
    exponents = torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim
    inv_freq = 1.0 / (base**exponents)  # (head_dim/2,)
    angles = torch.outer(torch.arange(positions, device=device).float(), inv_freq)  # (P, head_dim/2)
    # torch.polar, not cos/sin: its rounding differs in the last float32 bit for a few entries, and
    # after the bf16 rounding that flips whole table entries relative to upstream's table.
    unit = torch.polar(torch.ones_like(angles), angles)
    table = torch.stack([unit.real, unit.imag], dim=-1)
    return table.to(torch.bfloat16).float()


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate x (B, T, H, D) by table (T, D/2, 2): each pair (x[2i], x[2i+1]) as a complex number."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, T, H, D/2, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]  # (1, T, 1, D/2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return rotated.flatten(-2).type_as(x)


class KVCache:
    """Rotated keys and values of one attention layer for positions 0..max_len-1."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device) -> None:
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def write(self, pos: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, H_kv, T, D) at pos..pos+T-1; return everything up to pos+T-1."""
        end = pos + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} positions, asked to write up to {end}")
        self.k[:, :, pos:end] = k
        self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, s: BlockShape) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = s.n_head, s.n_local_heads, s.head_dim
        self.dropout = s.dropout
        # Fused projection, rows ordered [q heads | k heads | v heads]: the checkpoint layout.
        self.wqkv = nn.Linear(s.dim, (s.n_head + 2 * s.n_local_heads) * s.head_dim, bias=s.qkv_bias)
        self.wo = nn.Linear(s.n_head * s.head_dim, s.dim, bias=s.o_bias)
        self.qk_norm = s.qk_norm
        if s.qk_norm:
            self.q_norm = RMSNorm(s.head_dim, s.norm_eps)
            self.k_norm = RMSNorm(s.head_dim, s.norm_eps)

    def forward(self, x: Tensor, rope: Tensor, cache: KVCache | None = None, pos: int = 0) -> Tensor:
        B, T, _ = x.shape
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv * self.head_dim
        q, k, v = self.wqkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim)
        k = k.view(B, T, self.n_kv, self.head_dim)
        v = v.view(B, T, self.n_kv, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)

        if cache is not None:
            k, v = cache.write(pos, k, v)  # (B, H_kv, pos + T, D)
        # Query head h reads key/value head h // (n_head / n_kv): repeat_interleave grouping.
        groups = self.n_head // self.n_kv
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)

        dropout = self.dropout if self.training else 0.0
        if k.shape[2] == T:  # no earlier positions: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        elif T == 1:  # one new position sees every cached one
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:  # a chunk after cached positions: query i sees keys 0..pos+i
            key_pos = torch.arange(k.shape[2], device=x.device)
            visible = key_pos[None, :] <= pos + torch.arange(T, device=x.device)[:, None]  # (T, pos + T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout)
        return self.wo(y.transpose(1, 2).reshape(B, T, q_size))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, s: BlockShape) -> None:
        super().__init__()
        self.w1 = nn.Linear(s.dim, s.intermediate_size, bias=False)
        self.w3 = nn.Linear(s.dim, s.intermediate_size, bias=False)
        self.w2 = nn.Linear(s.intermediate_size, s.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + ffn(norm(.))."""

    def __init__(self, s: BlockShape) -> None:
        super().__init__()
        self.attention = Attention(s)
        self.feed_forward = FeedForward(s)
        self.ffn_norm = RMSNorm(s.dim, s.norm_eps)
        self.attention_norm = RMSNorm(s.dim, s.norm_eps)

    def forward(self, x: Tensor, rope: Tensor, cache: KVCache | None = None, pos: int = 0) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, cache, pos)
        return h + self.feed_forward(self.ffn_norm(h))
