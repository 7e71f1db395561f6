"""Multi-segment self rollouts for distillation (the report's multi-segment DMD), with
Self-Forcing's gradient truncation.

The student continues a recorded episode segment by segment through a :class:`WorldSession`
(the same window assembly and memory pool as play): each segment's past latents are the
tail of its own previous segment, and its memory is retrieved by frustum overlap from the
pool of the episode's history and the student's own generated latents. Earlier segments run
without grad through the student's full few-step sampler, as at inference; the last one is
denoised up to a random exit step without grad, and the exit step's x_0 prediction keeps
its graph: the only path of the gradient into the student.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from matrixgame.data.windows import (
    WindowConfig,
    window_kwargs,
    with_null_actions,
    without_memory,
    without_past,
)
from matrixgame.diffusion.flow_matching import NUM_TIMESTEPS
from matrixgame.diffusion.samplers import renoise_step
from matrixgame.inference.rollout import noised_past
from matrixgame.inference.session import Start, WorldSession

Tensor = torch.Tensor


def episode_start(episodes: dict, i: int, frames_per_latent: int = 4) -> Start:
    """Sample ``i`` of a collated :class:`~matrixgame.train.memory_sampling.EpisodeDataset`
    batch (latents of ``frames_per_latent`` frames) as a session start (its history and past
    latents)."""
    lat = episodes["latents"][i]
    n = 1 + frames_per_latent * (lat.shape[1] - 1)
    return Start(lat, episodes["c2w"][i, : lat.shape[1]], episodes["frame_c2w"][i, :n],
                 episodes["keyboard"][i, :n], episodes["mouse"][i, :n], episodes["K"][i],
                 name=f"episode {i}", frames_per_latent=frames_per_latent)  # fmt: skip


def mask_window(batch: dict, drop_past: bool = False, drop_memory: bool = False,
                null_actions: bool = False, frames_per_latent: int = 4) -> dict:  # fmt: skip
    """A collated window (of latents of ``frames_per_latent`` frames) with its past latents
    and/or memory removed (the report's masking, as the training objective's condition
    dropout) or its actions nulled (keyboard -1, mouse +1: the model's unconditional
    branch)."""
    out = without_past(batch, frames_per_latent) if drop_past else dict(batch)
    if drop_memory:
        out = without_memory(out)
    return with_null_actions(out) if null_actions else out


def conditioned(model, batch: dict, current: int, null: dict | None = None,
                past_level: float = 0.0) -> Callable:  # fmt: skip
    """A velocity model of the current latents alone, ``fn(x_s, sigma, null=False) -> v``
    (``sigma`` a float or ``[B]``), for a collated window: its past latents are context before
    ``x_s`` at timestep ``past_level`` (0: clean; a past already noised to that level by
    :func:`~matrixgame.inference.rollout.noised_past`); ``null=True`` runs the window ``null``
    instead (the teacher's unconditional branch: the same window with null actions)."""
    past = batch["past"]
    b, k = past.shape[0], past.shape[2]
    kwargs, null_kwargs = window_kwargs(batch), None if null is None else window_kwargs(null)

    def velocity(x_s: Tensor, sigma, null: bool = False) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32).to(x_s.device).expand(b)
        t = torch.cat([torch.full((b, k), NUM_TIMESTEPS * past_level, device=x_s.device),
                       (NUM_TIMESTEPS * sigma)[:, None].expand(b, current)], 1)  # fmt: skip
        cond = null_kwargs if null else kwargs
        if cond is None:
            raise ValueError("this window has no unconditional branch (null=None)")
        return model(torch.cat([past.to(x_s), x_s], 2), t.to(x_s), None, **cond)[:, :, k:]

    return velocity


def sample_with_exit(velocity: Callable, noise: Tensor, sigmas: Tensor,
                     exit_step: int) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The student's few-step sample (``sample_renoise``) stopped at ``exit_step``: the steps
    before it without grad, then the exit step's x_0 prediction with its graph; returns
    (that prediction, the exit step's input: the sample at level ``sigmas[exit_step]``)."""
    levels = sigmas.tolist()
    if not 0 <= exit_step < len(levels) - 1:
        raise ValueError(f"exit_step must lie in 0..{len(levels) - 2}, got {exit_step}")
    x = noise
    with torch.no_grad():
        for s, s_next in zip(levels[:exit_step], levels[1 : exit_step + 1], strict=True):
            x = renoise_step(x - s * velocity(x, s), s_next)
    s = levels[exit_step]
    return x - s * velocity(x, s), x


@dataclass
class SelfRollout:
    """The last segment of every sample's rollout, ready for the DMD loss."""

    x: Tensor  # [B, z, C, h, w] the student's sample (graph through the exit step only)
    exit_x: Tensor  # [B, z, C, h, w] the exit step's input (no graph), at level exit_sigma
    exit_sigma: float
    batch: dict  # its window, collated and masked: past, memory, actions, camera
    null: dict  # the same window's unconditional branch (null actions; past, memory kept)
    segments: int
    windows: list[list[dict]]  # per sample, every segment's window (unmasked), for tests
    generated: list[list[Tensor]]  # per sample, the latents of segments 1 .. k-1
    past_level: float = 0.0  # the noise level on ``batch``'s past (``noised_past``)


def self_rollout(student, episodes: dict, window: WindowConfig, segments: int,
                 sigmas: Tensor, exit_step: int, height: int, width: int,
                 seeds: list[int], drop_past: bool = False, drop_memory: bool = False,
                 past_noise: float = 0.0) -> SelfRollout:  # fmt: skip
    """Roll the student out over ``segments`` segments of each episode (a collated
    :class:`~matrixgame.train.memory_sampling.EpisodeDataset` batch) along the recorded
    poses and actions; ``seeds`` (one per sample) seed each session's noise. ``past_noise``
    > 0: every segment's past latents noised to that level, as the world plays."""
    c = window.current
    meta = {"sampler": {"name": "renoise", "sigmas": sigmas.tolist()}}
    world = SimpleNamespace(dit=student, vae=None, window=window, height=height, width=width,
                            meta=meta)  # fmt: skip
    windows, generated, last = [], [], []
    for i in range(episodes["latents"].shape[0]):
        start = episode_start(episodes, i, window.frames_per_latent)
        session = WorldSession(world, seed=seeds[i], decode=False, past_noise=past_noise,
                               metres_per_unit=float(episodes["metres_per_unit"][i]))  # fmt: skip
        session.reset(start)
        first = start.frame_c2w.shape[0]
        n = session.frames_per_step
        seen, made = [], []
        for j in range(segments):
            frames = slice(first + j * n, first + (j + 1) * n)
            actions = (episodes["keyboard"][i, frames], episodes["mouse"][i, frames],
                       episodes["frame_c2w"][i, frames])  # fmt: skip
            prepared = session.prepare(*actions)
            seen.append(prepared.batch)
            if j == segments - 1:
                last.append(prepared.batch)
                break
            made.append(session.generate(prepared).latents)  # the full sampler, no grad
        windows.append(seen)
        generated.append(made)
    batch = {k: torch.cat([w[k] for w in last]) for k in last[0]}
    masked = mask_window(batch, drop_past, drop_memory, frames_per_latent=window.frames_per_latent)
    masked = noised_past(masked, past_noise)  # one draw, read by every model alike
    null = with_null_actions(masked)  # guidance on the actions, as at inference
    velocity = conditioned(student, masked, c, past_level=past_noise)
    past = masked["past"]
    noise = torch.randn((past.shape[0], past.shape[1], c, *past.shape[3:]), device=past.device)
    x, exit_x = sample_with_exit(velocity, noise, sigmas, exit_step)
    return SelfRollout(x, exit_x, float(sigmas[exit_step]), masked, null, segments, windows,
                       generated, past_noise)  # fmt: skip
