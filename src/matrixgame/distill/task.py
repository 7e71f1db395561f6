"""The distillation step for the trainer: the student's multi-segment self rollout
(:mod:`.rollout`), then the DMD loss of its last segment against the frozen teacher and the
critic (:mod:`.dmd`), and the critic's flow matching on the same samples.

The critic is updated every step and the student every ``student_every``-th (the report:
5 in the cold start, 3 after), with DMD's regression term where it is weighted (its
target: the teacher's Euler ODE, at ``teacher_sigmas`` and with the DMD term's guidance,
from the point the student's exit step starts at, same window); on a critic-only step the
rollout runs without grad. The step's choices (segments, exit step, masks) come from the
step number alone, so every process of a distributed run makes the same ones and leaves
the same gradients unset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from matrixgame.data.windows import WindowConfig
from matrixgame.diffusion.samplers import sample_euler
from matrixgame.distill.dmd import (
    DMDConfig,
    critic_loss,
    dmd_loss,
    regression_loss,
    sample_dmd_sigma,
)
from matrixgame.distill.rollout import conditioned, self_rollout

Tensor = torch.Tensor


class StudentCritic(nn.Module):
    """The two trained parts of distillation, each with its own learning rate; AdamW betas
    (0, 0.999) as the DMD papers. Gradients are averaged by the trainer after backward
    (several forwards per step do not suit DDP's hooks)."""

    manual_gradient_sync = True

    def __init__(self, student: nn.Module, critic: nn.Module, student_lr: float,
                 critic_lr: float, betas: tuple[float, float] = (0.0, 0.999)) -> None:  # fmt: skip
        super().__init__()
        self.student, self.critic = student, critic
        self.lrs, self.betas = (student_lr, critic_lr), betas

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in part.parameters() if p.requires_grad], "lr": lr,
                 "betas": self.betas, "name": name}
                for name, part, lr in (("student", self.student, self.lrs[0]),
                                       ("critic", self.critic, self.lrs[1]))]  # fmt: skip


@dataclass
class DistillTask:
    teacher: nn.Module
    window: WindowConfig
    height: int
    width: int
    sigmas: Tensor  # the student's sampler levels, from 1 to 0
    dmd: DMDConfig
    segments: int = 1  # rollouts of 1..segments segments; 1 is the cold start (true past)
    mask: float = 0.2  # probability of masking the past, and (apart) the memory
    seed: int = 0
    teacher_sigmas: Tensor | None = None  # the regression target's levels (dmd.regression)
    # the noise level on the past latents (a teacher trained with DiTTask.past_noise; the
    # student then plays so): one draw per window, read by student, critic and teacher alike
    past_noise: float = 0.0

    def __post_init__(self) -> None:
        if self.dmd.regression > 0 and self.teacher_sigmas is None:
            raise ValueError("the regression term needs the teacher's levels (teacher_sigmas)")

    def choices(self, step: int) -> dict:
        """The step's segments, exit step, masks and noise seeds: from the step alone."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        pick = lambda n: int(torch.randint(n, (), generator=g))  # noqa: E731
        return {
            "segments": 1 + pick(self.segments),
            "exit_step": pick(len(self.sigmas) - 1),
            "drop_past": bool(torch.rand((), generator=g) < self.mask),
            "drop_memory": bool(torch.rand((), generator=g) < self.mask),
            "student": self.dmd.updates_student(step),
        }

    def loss(self, pair: StudentCritic, batch: dict, step: int) -> tuple[Tensor, dict]:
        pick = self.choices(step)
        b = batch["latents"].shape[0]
        seeds = torch.randint(2**62, (b,)).tolist()  # per process (seeded per step and rank)
        with torch.set_grad_enabled(pick["student"]):
            roll = self_rollout(pair.student, batch, self.window, pick["segments"],
                                self.sigmas, pick["exit_step"], self.height, self.width,
                                seeds, pick["drop_past"], pick["drop_memory"],
                                self.past_noise)  # fmt: skip
        c, level = self.window.current, roll.past_level
        critic = conditioned(pair.critic, roll.batch, c, past_level=level)
        sigma = sample_dmd_sigma(b, self.dmd, device=roll.x.device)
        loss, logs = critic_loss(critic, roll.x, sigma, torch.randn_like(roll.x), {})
        logs = {"critic_loss": logs["loss"], "segments": roll.segments,
                "exit_step": pick["exit_step"]}  # fmt: skip
        if pick["student"]:
            teacher = conditioned(self.teacher, roll.batch, c, roll.null, level)
            sigma = sample_dmd_sigma(b, self.dmd, device=roll.x.device)
            student_loss, dmd_logs = dmd_loss(roll.x, teacher, critic, sigma,
                                              torch.randn_like(roll.x), {}, {"null": True},
                                              self.dmd.guidance)  # fmt: skip
            loss = loss + student_loss
            logs.update(dmd_loss=dmd_logs["loss"], dmd_grad=dmd_logs["grad_norm"],
                        normaliser=dmd_logs["normaliser"])  # fmt: skip
            if self.dmd.regression > 0:
                with torch.no_grad():
                    levels = ode_levels(self.teacher_sigmas, roll.exit_sigma)
                    target = sample_euler(guided(teacher, self.dmd.guidance), roll.exit_x,
                                          levels)  # fmt: skip
                reg, reg_logs = regression_loss(roll.x, target)
                loss = loss + self.dmd.regression * reg
                logs["regression"] = reg_logs["loss"]
        logs["loss"] = float(loss.detach())
        return loss, logs


def guided(velocity: Callable, guidance: float) -> Callable:
    """A :func:`conditioned` velocity with classifier-free guidance as the DMD term's teacher
    has it, ``v_null + g (v - v_null)`` (1: itself), so that the regression term's target is
    the guided teacher's own ODE sample."""
    if guidance == 1.0:
        return velocity

    def velocity_guided(x: Tensor, sigma) -> Tensor:
        v_null = velocity(x, sigma, null=True)
        return v_null + guidance * (velocity(x, sigma) - v_null)

    return velocity_guided


def ode_levels(sigmas: Tensor, start: float) -> Tensor:
    """A sampler's levels (from 1 to 0) for an ODE that starts at level ``start``: ``start``,
    then those of ``sigmas`` below it (at ``start`` 1, all of them)."""
    below = sigmas[sigmas < start - 1e-9]
    return torch.cat([torch.tensor([start], dtype=sigmas.dtype), below])
