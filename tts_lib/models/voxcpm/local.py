"""VoxCPM2's small parts around the two LMs: the local encoder (a patch of latents -> one LM input vector), the
scalar quantiser on the base LM's audio positions, and the local DiT that predicts a patch's flow-matching velocity.
Parameter names are upstream's (`special_token`, `in_proj`, `encoder.*`, `time_mlp.linear_1`, `decoder.*`, ...).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tts_lib.models.voxcpm.config import LMConfig
from tts_lib.models.voxcpm.minicpm import MiniCPM


class LocalEncoder(nn.Module):
    """Each patch (P latent frames) -> one vector: a learned summary token read after a bidirectional MiniCPM."""

    def __init__(self, config: LMConfig, feat_dim: int):
        super().__init__()
        self.special_token = nn.Parameter(torch.randn(1, 1, 1, config.hidden_size))
        self.in_proj = nn.Linear(feat_dim, config.hidden_size)
        self.encoder = MiniCPM(config)

    def forward(self, feats: Tensor) -> Tensor:
        """feats (B, T, P, D) -> (B, T, hidden)."""
        b, t, p, _ = feats.shape
        x = self.in_proj(feats)  # (B, T, P, H)
        x = torch.cat([self.special_token.expand(b, t, 1, -1), x], dim=2)  # (B, T, 1 + P, H)
        out = self.encoder(x.reshape(b * t, p + 1, -1), causal=False)
        return out[:, 0].reshape(b, t, -1)


class ScalarQuantizer(nn.Module):
    """Project down, tanh, round to `scale` levels either side of 0 (straight-through while training), project up."""

    def __init__(self, dim: int, latent_dim: int, scale: int):
        super().__init__()
        self.scale = scale
        self.in_proj = nn.Linear(dim, latent_dim)
        self.out_proj = nn.Linear(latent_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.in_proj(x))
        rounded = torch.round(h * self.scale) / self.scale
        h = h + (rounded - h).detach() if self.training else rounded
        return self.out_proj(h)


def timestep_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Sinusoidal features of flow-matching times t (N,) -> (N, dim): sines then cosines."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=t.dtype, device=t.device) * -(math.log(10000) / (half - 1)))
    angles = scale * t.reshape(-1)[:, None] * freqs[None]
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class TimeMLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(torch.nn.functional.silu(self.linear_1(x)))


class LocalDiT(nn.Module):
    """The velocity of a noisy patch, from the LM's two conditioning vectors, the time, and the previous patch:
    one bidirectional MiniCPM over [mu_lm, mu_residual, time, previous patch..., noisy patch...]."""

    def __init__(self, config: LMConfig, feat_dim: int):
        super().__init__()
        self.hidden = config.hidden_size
        self.in_proj = nn.Linear(feat_dim, config.hidden_size)
        self.cond_proj = nn.Linear(feat_dim, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, feat_dim)
        self.time_mlp = TimeMLP(config.hidden_size)
        self.delta_time_mlp = TimeMLP(config.hidden_size)
        self.decoder = MiniCPM(config)

    def forward(self, x: Tensor, mu: Tensor, t: Tensor, cond: Tensor, dt: Tensor) -> Tensor:
        """x (N, D, P) noisy patch, mu (N, 2 * hidden), t and dt (N,), cond (N, D, P') -> velocity (N, D, P)."""
        x = self.in_proj(x.transpose(1, 2))  # (N, P, H)
        cond = self.cond_proj(cond.transpose(1, 2))  # (N, P', H)
        time = self.time_mlp(timestep_embedding(t, self.hidden).to(x.dtype))
        time = time + self.delta_time_mlp(timestep_embedding(dt, self.hidden).to(x.dtype))  # (N, H)
        mu = mu.reshape(x.shape[0], -1, self.hidden)  # (N, 2, H)
        h = self.decoder(torch.cat([mu, time[:, None], cond, x], dim=1), causal=False)
        return self.out_proj(h[:, -x.shape[1] :]).transpose(1, 2)


class FlowDecoder(nn.Module):
    """Holds the DiT as `estimator`: upstream's parameter names are `feat_decoder.estimator.*`."""

    def __init__(self, config: LMConfig, feat_dim: int):
        super().__init__()
        self.estimator = LocalDiT(config, feat_dim)
