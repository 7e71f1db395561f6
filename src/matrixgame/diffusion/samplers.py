"""Samplers for flow models. Each is a plain function ``(velocity_fn, x, sigmas) -> x`` where
``velocity_fn(x, sigma)`` returns the model's velocity at noise level ``sigma``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from matrixgame.diffusion.flow_matching import shift_sigma

Tensor = torch.Tensor


def sigma_schedule(steps: int, shift: float = 5.0) -> Tensor:
    """``[steps + 1]`` noise levels from 1 to 0, evenly spaced then shifted (the distilled
    student uses 3 steps at shift 5)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1), shift)


@torch.no_grad()
def sample_euler(
    velocity_fn: Callable[[Tensor, float], Tensor], x: Tensor, sigmas: Tensor
) -> Tensor:
    """Euler's method on the probability-flow ODE dx/ds = v (rectified flow)."""
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        x = x + (s_next - s) * velocity_fn(x, s)
    return x
