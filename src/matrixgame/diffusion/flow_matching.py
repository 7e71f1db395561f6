"""Rectified flow / flow matching (Lipman et al. 2023; Esser et al. 2024), as Wan trains.

    x_s = (1 - s) x_0 + s eps,    target velocity v = eps - x_0,    timestep t = 1000 s

Noise levels are drawn uniformly and bent towards noise by the time shift
s' = k s / (1 + (k - 1) s) (k > 1 spends more steps at high noise, as larger frames need).
The loss covers the current latents only: past and memory latents are clean context.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor
NUM_TIMESTEPS = 1000


def shift_sigma(sigma: Tensor, shift: float) -> Tensor:
    """The time shift s' = k s / (1 + (k - 1) s); k = 1 leaves s unchanged."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigma(
    batch: int, shift: float, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """``[B]`` noise levels in (0, 1): uniform, then shifted."""
    u = torch.rand(batch, generator=generator, device=device)
    return shift_sigma(u.clamp(1e-4, 1 - 1e-4), shift)


def add_noise(x0: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
    """x_s = (1 - s) x_0 + s eps, with ``sigma [B]`` broadcast over ``x0 [B, ...]``."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0)
    return (1 - s) * x0 + s * noise


def predicted_clean(x_s: Tensor, sigma: Tensor, velocity: Tensor) -> Tensor:
    """x_0 estimate from a velocity prediction: x_0 = x_s - s v."""
    s = sigma.view(-1, *([1] * (x_s.ndim - 1))).to(x_s)
    return x_s - s * velocity


def flow_matching_loss(
    model_velocity: Tensor, x0: Tensor, noise: Tensor, current: slice | None = None
) -> tuple[Tensor, dict[str, float]]:
    """Mean squared error of the velocity on the current latents ``[:, :, current]``
    (``[B, C, F, H, W]``); returns (loss, logs)."""
    current = current or slice(None)
    target = (noise - x0)[:, :, current]
    pred = model_velocity[:, :, current]
    loss = (pred.float() - target.float()).pow(2).mean()
    return loss, {
        "loss": float(loss.detach()),
        "target_rms": float(target.float().pow(2).mean().sqrt()),
    }
