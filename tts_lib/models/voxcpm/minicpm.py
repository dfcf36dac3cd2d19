"""MiniCPM-4, the transformer behind every part of VoxCPM2: the base LM, the residual LM, the local encoder and the
local DiT are all this class at different sizes.

    from tts_lib.models.voxcpm.minicpm import KVCache, MiniCPM
    hidden = MiniCPM(config.lm_config)(embeddings, causal=True)  # (B, T, hidden_size)
    cache = KVCache()  # generation: the prefix once, then one position at a time
    hidden = lm(prefix, cache=cache); hidden = lm(next_position, cache=cache)

Llama-style pre-norm blocks (RMSNorm, grouped-query attention through SDPA, SwiGLU), "LongRoPE" rotary tables, and
muP's scaling: each residual branch is multiplied by scale_depth / sqrt(num_hidden_layers). Parameter names are
upstream's (`layers.N.self_attn.q_proj`, `mlp.gate_proj`, `input_layernorm`, ...), so checkpoints load as they
are; tests/models/test_voxcpm_parity.py checks the outputs against upstream's MiniCPMModel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tts_lib.models.voxcpm.config import LMConfig


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # The statistic in float32, the scaling back in x's dtype, then the weight: upstream's order of roundings.
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


def rope_tables(config: LMConfig, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """(cos, sin), each (max_position_embeddings, head_dim) float32: LongRoPE's frequencies divided by the long
    factors when the model is longer than its original context (else the short ones), times its attention factor."""
    dim, length = config.head_dim, config.max_position_embeddings
    scaling = config.rope_scaling
    original = scaling.original_max_position_embeddings
    factors = scaling.long_factor if length > original else scaling.short_factor
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, device=device).float() / dim))  # (dim / 2,)
    positions = torch.arange(length, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, 1.0 / torch.tensor(factors, dtype=torch.float32, device=device)) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)  # (length, dim)
    attention_factor = math.sqrt(1 + math.log(length / original) / math.log(original))
    return emb.cos() * attention_factor, emb.sin() * attention_factor


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding in float32 (q or k: (B, heads, T, head_dim)), back in x's dtype."""
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Each layer's keys and values of the positions seen so far (generation): (B, kv_heads, T, head_dim) each."""

    def __init__(self):
        self.layers: dict[int, tuple[Tensor, Tensor]] = {}

    def seen(self, layer: int = 0) -> int:
        """Positions cached for `layer` (every layer has the same between forwards)."""
        return self.layers[layer][0].shape[2] if layer in self.layers else 0

    def extend(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if layer in self.layers:
            old_k, old_v = self.layers[layer]
            k, v = torch.cat((old_k, k), dim=2), torch.cat((old_v, v), dim=2)
        self.layers[layer] = (k, v)
        return k, v


class Attention(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                    config.head_dim)  # fmt: skip
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None, causal: bool, cache: tuple[KVCache, int] | None = None
    ) -> Tensor:
        """`cache`: (the cache, this layer's index): x holds the positions after the cached ones."""
        b, t, _ = x.shape  # (B, T, hidden)
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, T, head_dim)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        seen = 0
        if cache is not None:
            seen = cache[0].seen(cache[1])
            k, v = cache[0].extend(cache[1], k, v)
        if causal and seen and t > 1:
            raise ValueError("a cached forward takes one position at a time after the prefix")
        # one new position after cached ones sees them all: causal needs no mask there
        out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(),
                                             is_causal=causal and not seen, enable_gqa=True)  # fmt: skip
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.branch_scale = config.scale_depth / math.sqrt(config.num_hidden_layers) if config.use_mup else 1.0

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, causal: bool, cache=None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, causal, cache) * self.branch_scale
        return x + self.mlp(self.post_attention_layernorm(x)) * self.branch_scale


class MiniCPM(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size) if config.vocab_size > 0 else None
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.build_rope_tables()

    def build_rope_tables(self, device: torch.device | str | None = None) -> None:
        """Computed from the config, not weights (not in the state dict): again after `to_empty`."""
        cos, sin = (torch.empty(0), torch.empty(0)) if self.config.no_rope else rope_tables(self.config, device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: Tensor, causal: bool = True, cache: KVCache | None = None) -> Tensor:
        """x (B, T, hidden_size) input vectors -> (B, T, hidden_size), after the final norm. With `cache`, x holds
        the positions after the cached ones (the prefix, then one at a time), and the cache grows by them."""
        start = cache.seen() if cache is not None else 0
        end = start + x.shape[1]
        rope = None if self.config.no_rope else (self.rope_cos[start:end], self.rope_sin[start:end])
        for index, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, rope, causal, use_reentrant=False)
            else:
                x = layer(x, rope, causal, None if cache is None else (cache, index))
        return self.norm(x)
