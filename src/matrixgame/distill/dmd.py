"""Distribution Matching Distillation (DMD, Yin et al. 2024; DMD2, Yin et al. 2024b), as
Self-Forcing and CausVid train a few-step student against a flow-matching teacher.

The student's sample x is re-noised to x_s; the teacher (real score) and a critic trained on
the student's own samples (fake score) each predict x_0. Their difference is the reverse-KL
gradient of DMD eq. 7, divided per sample by mean |x - x0_teacher| (DMD eq. 8). Optionally,
DMD's regression term (eq. 9; DMD2 drops it): the student's sample against the teacher's
deterministic ODE sample from the same noise and condition.

Models are velocity predictors ``model(x_s, sigma, **cond) -> v`` with ``sigma [B]`` in (0, 1)
and x_s = (1 - s) x_0 + s eps (``diffusion.flow_matching``). Tensors are ``[B, ...]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from matrixgame.diffusion.flow_matching import add_noise, predicted_clean, shift_sigma

Tensor = torch.Tensor
VelocityModel = Callable[..., Tensor]

# Keeps the per-sample normaliser away from 0 when the student already sits on the teacher's x_0.
MIN_NORMALISER = 1e-6


@dataclass(frozen=True)
class DMDConfig:
    """Hyper-parameters of the DMD objective.

    ``guidance`` is the teacher's classifier-free guidance in the form
    x0_uncond + g (x0_cond - x0_uncond), so 1.0 is off; Self-Forcing's ``guidance_scale``
    g' (x0_cond + g' (x0_cond - x0_uncond)) is our g = 1 + g'. The critic is updated every
    step and the student every ``student_every``-th step (Self-Forcing's
    ``dfake_gen_update_ratio``).
    """

    shift: float = 5.0
    min_sigma: float = 0.02
    max_sigma: float = 0.98
    guidance: float = 1.0
    student_every: int = 5
    regression: float = 0.0  # weight of the regression term (0: off, as DMD2)

    def __post_init__(self):
        if not self.shift > 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if not 0 < self.min_sigma < self.max_sigma < 1:
            raise ValueError(
                f"need 0 < min_sigma < max_sigma < 1, got {self.min_sigma}, {self.max_sigma}"
            )
        if not self.guidance >= 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        if not self.regression >= 0:
            raise ValueError(f"regression must be >= 0, got {self.regression}")
        if isinstance(self.student_every, bool) or not isinstance(self.student_every, int):
            raise ValueError(f"student_every must be an int, got {self.student_every!r}")
        if self.student_every < 1:
            raise ValueError(f"student_every must be >= 1, got {self.student_every}")

    def updates_student(self, step: int) -> bool:
        """Whether training step ``step`` (from 0) also updates the student."""
        return step % self.student_every == 0


def sample_dmd_sigma(
    batch: int,
    cfg: DMDConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``[B]`` noise levels for the DMD and critic losses: uniform, shifted, then clamped to
    ``[cfg.min_sigma, cfg.max_sigma]``."""
    u = torch.rand(batch, generator=generator, device=device)
    return shift_sigma(u, cfg.shift).clamp(cfg.min_sigma, cfg.max_sigma)


def _clean(
    model: VelocityModel, x_s: Tensor, sigma: Tensor, cond: Mapping[str, Any], dtype: torch.dtype
) -> Tensor:
    """A model's x_0 prediction ``[B, ...]`` in ``dtype`` (float32 at least, so that guidance
    and the normaliser are not computed in the model's bf16)."""
    return predicted_clean(x_s.to(dtype), sigma, model(x_s, sigma, **cond).to(dtype))


def _teacher_clean(
    teacher: VelocityModel,
    x_s: Tensor,
    sigma: Tensor,
    cond: Mapping[str, Any],
    null_cond: Mapping[str, Any] | None,
    guidance: float,
    dtype: torch.dtype,
) -> Tensor:
    """The teacher's x_0 prediction ``[B, ...]``, with classifier-free guidance (Ho & Salimans
    2022) when ``guidance != 1`` (at 1 the unconditional branch is not run)."""
    x0_cond = _clean(teacher, x_s, sigma, cond, dtype)
    if guidance == 1.0:
        return x0_cond
    if null_cond is None:
        raise ValueError(f"guidance {guidance} needs null_cond for the unconditional branch")
    x0_uncond = _clean(teacher, x_s, sigma, null_cond, dtype)
    return x0_uncond + guidance * (x0_cond - x0_uncond)


def dmd_loss(
    x: Tensor,
    teacher: VelocityModel,
    critic: VelocityModel,
    sigma: Tensor,
    noise: Tensor,
    cond: Mapping[str, Any],
    null_cond: Mapping[str, Any] | None = None,
    guidance: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """The student's DMD loss on its samples ``x [B, ...]``, re-noised with ``noise [B, ...]``
    at ``sigma [B]``; returns (loss, logs).

    The teacher sees ``cond`` (and ``null_cond`` for guidance, see ``DMDConfig``), the
    critic ``cond``. The loss is a surrogate, 0.5 mse(x, x - grad): its gradient w.r.t. x is
    grad / x.numel(), grad being the normalised DMD gradient; teacher and critic get none.
    """
    work = torch.promote_types(x.dtype, torch.float32)
    with torch.no_grad():
        x_s = add_noise(x.detach(), sigma, noise)
        x0_teacher = _teacher_clean(teacher, x_s, sigma, cond, null_cond, guidance, work)
        x0_critic = _clean(critic, x_s, sigma, cond, work)
        # DMD eq. 7: grad_x KL(p_fake || p_real) = E[score_fake(x_s) - score_real(x_s)], and
        # on this path score = ((1 - s) x0_hat - x_s) / s^2 (Tweedie), so the difference is
        # (1 - s) / s^2 (x0_critic - x0_teacher); eq. 8 swaps that weight for the normaliser.
        x_detached = x.detach().to(work)
        dims = tuple(range(1, x.ndim))
        normaliser = (x_detached - x0_teacher).abs().mean(dim=dims, keepdim=True)
        normaliser = normaliser.clamp_min(MIN_NORMALISER)
        grad = (x0_critic - x0_teacher) / normaliser
        target = x_detached - grad
    loss = 0.5 * (x.to(work) - target).pow(2).mean()
    return loss, {
        "loss": float(loss.detach()),
        "grad_norm": float(grad.abs().mean()),
        "normaliser": float(normaliser.mean()),
    }


def critic_loss(
    critic: VelocityModel,
    x: Tensor,
    sigma: Tensor,
    noise: Tensor,
    cond: Mapping[str, Any],
) -> tuple[Tensor, dict[str, float]]:
    """Flow matching of the critic (fake score) on the student's samples ``x [B, ...]``
    (detached: no gradient reaches the student), noised with ``noise [B, ...]`` at
    ``sigma [B]``; returns (loss, logs)."""
    work = torch.promote_types(x.dtype, torch.float32)
    x = x.detach()
    x_s = add_noise(x, sigma, noise)
    target = (noise - x).to(work)
    loss = (critic(x_s, sigma, **cond).to(work) - target).pow(2).mean()
    return loss, {"loss": float(loss.detach()), "target_rms": float(target.pow(2).mean().sqrt())}


def regression_loss(x: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
    """DMD's regression term (eq. 9): mean squared distance of the student's samples
    ``x [B, ...]`` to ``target [B, ...]``, the teacher's deterministic (ODE) samples from the
    same noise and condition; returns (loss, logs). It ties the student to the teacher's
    noise-to-sample map, where the distribution-matching gradient alone lets it seek modes
    of its own (sharp, invented detail). The paper measures it with LPIPS on pixels; here
    on latents, squared. ``target`` gets no gradient."""
    work = torch.promote_types(x.dtype, torch.float32)
    loss = (x.to(work) - target.detach().to(work)).pow(2).mean()
    return loss, {"loss": float(loss.detach())}
