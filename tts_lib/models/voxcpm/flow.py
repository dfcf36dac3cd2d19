"""Flow matching for VoxCPM2's patches: the training loss and the Euler sampler with classifier-free guidance.

Training (`flow_loss`): a patch x1 and noise z are mixed at a time t, y = (1 - t) x1 + t z, and the DiT predicts the
velocity z - x1; the loss is its squared error per frame, summed over the supervised frames. The random draws
come in upstream's order, with upstream's shapes and dtypes, so the same seed gives upstream's loss exactly:
conditioning dropout (one uniform per patch), the noisy-previous-patch choice (one uniform per patch), that noise
(one normal per value of the previous patch, drawn even when its scale is 0), two normals per patch for the times,
one uniform per patch for the mean-flow choice, then z. Unlike upstream, the DiT runs only on the patches the loss
reads (not on text and padding positions): the draws are still made for every patch, so the result is the same and
a batch costs what its audio costs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tts_lib.models.voxcpm.config import CfmConfig
from tts_lib.models.voxcpm.local import LocalDiT


def flow_loss(
    estimator: LocalDiT, cfm: CfmConfig, x1: Tensor, mu: Tensor, cond: Tensor, rows: Tensor, progress: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:  # fmt: skip
    """The squared velocity error summed over the supervised patches `rows` (indices into N), every frame of a
    supervised patch supervised (upstream's mask repeats the patch's). x1 (N, D, P) target patches, mu (N, C)
    conditioning, cond (N, D, P) previous patches. `generator`: draws from it instead of the global generator
    (validation uses a fixed one, so its losses compare from one validation to the next)."""
    if cfm.t_scheduler != "log-norm":
        raise ValueError(f"flow matching: t_scheduler {cfm.t_scheduler!r} is not supported; VoxCPM2 uses 'log-norm'")
    n, device, g = x1.shape[0], x1.device, generator
    if cfm.training_cfg_rate > 0:
        mu = mu * (torch.rand(n, device=device, generator=g) > cfm.training_cfg_rate).view(-1, 1)
    low, high = cfm.noise_cond_prob_range
    noisy = torch.rand(n, device=device, generator=g) > 1.0 - (low + progress * (high - low))
    noise = torch.randn(cond.shape, device=device, dtype=cond.dtype, generator=g)
    cond = cond + noisy.view(-1, 1, 1) * noise * cfm.noise_cond_scale
    torch.randn(n, device=device, dtype=x1.dtype, generator=g)  # r: differs from t in mean-flow training only
    s_t = torch.randn(n, device=device, dtype=x1.dtype, generator=g) - 0.4  # log-norm: sigmoid of N(-0.4, 1)
    torch.rand(n, device=device, dtype=x1.dtype, generator=g)  # upstream's mean-flow draw: kept for the order
    t = torch.sigmoid(s_t)
    z = torch.randn(x1.shape, device=device, dtype=x1.dtype, generator=g)
    y = (1 - t.view(-1, 1, 1)) * x1 + t.view(-1, 1, 1) * z
    velocity = estimator(y[rows], mu[rows], t[rows], cond[rows], torch.zeros_like(t[rows]))  # the DiT: these only
    return (velocity.float() - (z - x1)[rows].float()).pow(2).mean(dim=1).sum()


@torch.no_grad()
def sample_patch(
    estimator: LocalDiT, mu: Tensor, cond: Tensor, patch_size: int, steps: int = 10, cfg: float = 2.0,
    sway: float = 1.0, generator: torch.Generator | None = None,
) -> Tensor:  # fmt: skip
    """One patch (N, D, P) from noise by `steps` Euler steps from t = 1 to 0 on a sway-sampled schedule, with
    classifier-free guidance (CFG-zero*: the unconditional prediction scaled by its best fit, the first 4% of
    steps skipped)."""
    n, d = mu.shape[0], cond.shape[1]
    x = torch.randn((n, d, patch_size), device=mu.device, dtype=mu.dtype, generator=generator)
    t_span = torch.linspace(1, 0, steps + 1, device=mu.device, dtype=mu.dtype)
    t_span = t_span + sway * (torch.cos(torch.pi / 2 * t_span) - 1 + t_span)
    zero_steps = max(1, int(len(t_span) * 0.04))
    t, dt = t_span[0], t_span[0] - t_span[1]
    for step in range(1, len(t_span)):
        if step > zero_steps:  # CFG-zero*: the velocity of the first steps is taken as zero
            both = estimator(torch.cat([x, x]), torch.cat([mu, torch.zeros_like(mu)]), t.expand(2 * n),
                             torch.cat([cond, cond]), torch.zeros(2 * n, device=mu.device, dtype=mu.dtype))  # fmt: skip
            conditional, unconditional = both[:n], both[n:]
            fit = (conditional * unconditional).flatten(1).sum(1, keepdim=True)
            fit = (fit / (unconditional.pow(2).flatten(1).sum(1, keepdim=True) + 1e-8)).view(n, 1, 1)
            x = x - dt * (unconditional * fit + cfg * (conditional - unconditional * fit))
        t = t - dt  # upstream's arithmetic: t steps by dt, not read from t_span
        if step < len(t_span) - 1:
            dt = t - t_span[step + 1]
    return x
