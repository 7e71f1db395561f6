"""Samplers for flow models, and the noise schedules they walk. Each sampler is a plain function
``(velocity_fn, x, sigmas) -> x`` where ``velocity_fn(x, sigma)`` returns the model's velocity
v = eps - x_0 at noise level ``sigma`` (x_s = (1 - s) x_0 + s eps) and ``sigmas`` falls from
noise (1) towards data (usually ending at 0).

- ``sample_euler``: Euler's method on the probability-flow ODE dx/ds = v.
- ``sample_unipc``: UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework
  for Fast Sampling of Diffusion Models"), multistep UniP predictor + UniC corrector on the
  data prediction, B(h) = e^h - 1 ("bh2"), as Wan's ``FlowUniPCMultistepScheduler`` samples.
- ``sample_renoise``: few-step sampling of a distilled student (multistep consistency
  sampling, Song et al. 2023, as DMD2 and Self-Forcing sample): predict x_0, re-noise it to
  the next level with fresh noise, and return the last x_0.

Every sampler takes an optional ``generator`` (only ``sample_renoise`` draws noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import torch

from matrixgame.diffusion.flow_matching import NUM_TIMESTEPS, shift_sigma

Tensor = torch.Tensor
VelocityFn = Callable[[Tensor, float], Tensor]
Sampler = Callable[[VelocityFn, Tensor, Tensor], Tensor]

# The distilled student's denoising steps, as timesteps of the 1000-step training schedule.
DISTILLED_TIMESTEPS = (1000, 666, 333)


def sigma_schedule(steps: int, shift: float = 5.0) -> Tensor:
    """``[steps + 1]`` noise levels from 1 to 0, evenly spaced then shifted (``distilled_schedule``
    gives the distilled student's exact 3 steps)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1), shift)


def distilled_schedule(shift: float = 5.0) -> Tensor:
    """``[4]`` noise levels of the Matrix-Game 2.0/3.0 distilled student, then 0.

    Its ``denoising_step_list`` [1000, 666, 333] is "warped": step t takes entry 1000 - t of a
    1000-step training schedule whose n-th noise level is shift_sigma(1 - n / 1000), so
    sigma = k u / (1 + (k - 1) u) with u = t / 1000 and k = ``shift``. At k = 5 the effective
    timesteps are 1000, 908.8, 714.0.
    """
    s = torch.tensor([*DISTILLED_TIMESTEPS, 0]) / NUM_TIMESTEPS
    return shift_sigma(s, shift)


@torch.no_grad()
def sample_euler(velocity_fn: VelocityFn, x: Tensor, sigmas: Tensor, generator=None) -> Tensor:
    """Euler's method on the probability-flow ODE dx/ds = v (rectified flow)."""
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        x = x + (s_next - s) * velocity_fn(x, s)
    return x


def _lambda(sigma: float) -> float:
    """Half log-SNR lambda = log(alpha / sigma), alpha = 1 - sigma: -inf at noise, +inf at data."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log((1.0 - sigma) / sigma)


def _unipc_rhos(rs: list[float], hh: float, b_h: float) -> list[float]:
    """Weights of the K divided differences: sum_k rho_k r_k^(i-1) = i! hh phi_{i+1}(hh) / B(h)
    for i = 1..K (the order conditions of UniP/UniC). For K = 1 the reference fixes rho = 1/2,
    the h -> 0 limit of that ratio; we do the same so as to step exactly as Wan does."""
    if len(rs) == 1:
        return [0.5]
    b, g, factorial = [], math.expm1(hh) / hh - 1, 1  # g = hh phi_2(hh)
    for i in range(1, len(rs) + 1):
        b.append(g * factorial / b_h)
        factorial *= i + 1
        g = g / hh - 1 / factorial  # hh phi_{i+2}(hh), from phi_{k+1} = (phi_k - 1/k!) / hh
    r = torch.tensor([[rk**i for rk in rs] for i in range(len(rs))], dtype=torch.float64)
    return torch.linalg.solve(r, torch.tensor(b, dtype=torch.float64)).tolist()


def _unipc_update(
    x: Tensor,
    s: float,
    t: float,
    x0: Tensor,
    past: list[tuple[float, Tensor]],
    x0_t: Tensor | None = None,
) -> Tensor:
    """One step of ``x`` from noise level ``s`` to ``t``: UniP when ``x0_t`` is None, else UniC.

    ``x0`` is the data prediction at ``(x, s)``, ``past`` earlier ``(sigma, x0)`` pairs newest
    first, ``x0_t`` the prediction at the predictor's end point. With h = lambda_t - lambda_s:

        x_t = (t / s) x - alpha_t (e^-h - 1) x0 - alpha_t B(-h) sum_k rho_k D_k,
        D_k = (x0_k - x0) / r_k,  r_k = (lambda_k - lambda_s) / h   (r = 1 for x0_t),

    with alpha_t = 1 - t and B(z) = e^z - 1 (bh2). The first two terms are DDIM, which for a
    flow model is exactly the Euler step.
    """
    lam_s = _lambda(s)
    h = _lambda(t) - lam_s
    hh = -h  # the data prediction integrates e^-h (x0 form of the exponential integrator)
    h_phi_1 = math.expm1(hh)  # -1 when t = 0 (lambda = inf): the step lands on x0
    b_h = h_phi_1  # bh2
    rs = [(_lambda(sk) - lam_s) / h for sk, _ in past]
    ds = [(x0k - x0) / r for (_, x0k), r in zip(past, rs, strict=True)]
    if x0_t is not None:
        rs.append(1.0)
        ds.append(x0_t - x0)
    x_t = (t / s) * x - (1 - t) * h_phi_1 * x0
    if ds:
        rhos = _unipc_rhos(rs, hh, b_h)
        x_t = x_t - (1 - t) * b_h * sum(rho * d for rho, d in zip(rhos, ds, strict=True))
    return x_t


@torch.no_grad()
def sample_unipc(
    velocity_fn: VelocityFn,
    x: Tensor,
    sigmas: Tensor,
    generator=None,
    order: int = 2,
    corrector: bool = True,
) -> Tensor:
    """UniPC-p (Zhao et al. 2023) on the data prediction x_0 = x - sigma v, bh2, one model call
    per step, as Wan's ``FlowUniPCMultistepScheduler``.

    Step i predicts with UniP of order min(order, i + 1, steps - i) (warm-up, then lower order at
    the end: the step to sigma = 0 is first order and lands on the data prediction). The model
    call at the next point then corrects the step with UniC, except after the last step.
    Wan starts at shift_sigma(0.999); ``sigmas`` may start at 1, whose lambda = -inf makes that
    point a start but not a history point. ``corrector=False`` leaves UniP alone.
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    sig = sigmas.tolist()
    if any(b >= a for a, b in pairwise(sig)):
        raise ValueError(f"sigmas must fall strictly, got {sig}")
    steps = len(sig) - 1
    past: list[tuple[float, Tensor]] = []  # earlier (sigma, x0) below sigma 1, newest first
    last = None  # the previous predictor step, for the corrector
    for i, (s, t) in enumerate(zip(sig[:-1], sig[1:], strict=True)):
        x0 = x - s * velocity_fn(x, s)
        if corrector and last is not None:
            x = _unipc_update(*last, x0_t=x0)  # UniC reuses this step's model call
        p = min(order, steps - i, len(past) + 1)
        last = (x, s, t, x0, past[: p - 1])
        x = _unipc_update(*last)
        if s < 1:
            past = [(s, x0), *past][: order - 1]
    return x


def renoise_step(x0: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """x_0 taken back to noise level ``sigma`` with fresh noise: (1 - s) x_0 + s eps."""
    if sigma <= 0:
        return x0
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    return (1 - sigma) * x0 + sigma * eps


@torch.no_grad()
def sample_renoise(
    velocity_fn: VelocityFn, x: Tensor, sigmas: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1), the distilled student's:
    at each level x_0 = x - s v, then x = renoise(x_0, next level); returns the last x_0."""
    sig = sigmas.tolist()
    for s, s_next in zip(sig[:-1], sig[1:], strict=True):
        x = renoise_step(x - s * velocity_fn(x, s), s_next, generator)
    return x


SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "unipc": sample_unipc,
    "renoise": sample_renoise,
}


def get_sampler(name: str) -> Sampler:
    """The sampler registered as ``name``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]
