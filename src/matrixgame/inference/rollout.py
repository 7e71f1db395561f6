"""Autoregressive rollouts of the memory-augmented DiT (the report's later-clip loop).

Each step generates the next ``current`` latents from noise with Euler steps, given the
last ``past`` latents of the sequence so far (the model's own output after the context)
and ``memory`` latents retrieved from everything before the window by frustum overlap of
the camera poses, exactly as the training windows are built (:func:`window_inputs`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from matrixgame.accel.precision import model_dtype
from matrixgame.data.windows import (
    WindowConfig,
    window_inputs,
    window_kwargs,
    with_null_actions,
    without_memory,
)
from matrixgame.diffusion.flow_matching import NUM_TIMESTEPS, add_noise
from matrixgame.diffusion.samplers import get_sampler, sigma_schedule
from matrixgame.train.vae_task import to_uint8

Tensor = torch.Tensor


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance (Ho & Salimans 2022) on a window's conditions, each weight 1
    for off: the velocity ``v + (a - 1) (v - v_no_actions) + (m - 1) (v - v_no_memory)``,
    where ``v_no_actions`` sees the null actions and ``v_no_memory`` no memory latents,
    everything else the same (the DiT's training drops both: ``DiTTask``). With the actions
    alone it is the usual ``v_null + a (v - v_null)``. Each weight != 1 costs one more DiT
    evaluation per step (the actions' in the same batch)."""

    actions: float = 1.0
    memory: float = 1.0

    def __post_init__(self) -> None:
        for name in ("actions", "memory"):
            g = getattr(self, name)
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) \
                    or g < 0:  # fmt: skip
                raise ValueError(f"{name} guidance must be a finite number >= 0 (1: off), "
                                 f"got {g!r}")  # fmt: skip

    @classmethod
    def from_meta(cls, meta) -> Guidance:
        """A world's ``sampler.guidance`` (``{"actions": a, "memory": m}``; absent: off)."""
        if meta is None:
            return cls()
        if not isinstance(meta, dict) or set(meta) - {"actions", "memory"}:
            raise ValueError(f"a sampler's guidance is {{'actions': a, 'memory': m}}, "
                             f"got {meta!r}")  # fmt: skip
        return cls(**meta)

    @property
    def off(self) -> bool:
        return self.actions == 1.0 and self.memory == 1.0


@dataclass(frozen=True)
class RolloutConfig:
    steps: int = 4
    shift: float = 3.0
    memory: bool = True  # False: the ablation without retrieved memory
    seed: int = 0
    guidance: Guidance = Guidance()
    past_noise: float = 0.0  # the noise level put on the past (see denoise_window)


def _model_inputs(batch: dict, dtype: torch.dtype) -> tuple[Tensor, dict]:
    """A window's past latents and conditioning in the model's ``dtype`` (RoPE offsets, which
    are positions, stay float32)."""
    cond = {name: value.to(dtype) if value.is_floating_point() and name != "rope_offset"
            else value for name, value in window_kwargs(batch).items()}  # fmt: skip
    return batch["past"].to(dtype), cond


def noised_past(batch: dict, level: float, generator: torch.Generator | None = None) -> dict:
    """A collated window with its past latents noised to ``level`` (a world trained with
    ``DiTTask.past_noise`` reads its past so, given the level as its timestep), one draw of
    ``generator`` for the whole window; 0 or no past: the window itself."""
    past = batch["past"]
    if level <= 0 or past.shape[2] == 0:
        return batch
    eps = torch.randn(past.shape, generator=generator).to(past)
    return {**batch, "past": add_noise(past, torch.full((past.shape[0],), level), eps)}


@torch.no_grad()
def denoise_window(model, batch: dict, current: int, steps: int = 4, shift: float = 3.0,
                   generator: torch.Generator | None = None, sampler: str = "euler",
                   sigmas: Tensor | None = None, guidance: Guidance = Guidance(),
                   past_noise: float = 0.0) -> Tensor:  # fmt: skip
    """``current`` latents ``[B, z, current, h, w]`` sampled from noise (Euler by default;
    any sampler of :mod:`matrixgame.diffusion.samplers`, with ``sigmas`` or ``steps`` shifted
    levels), given a collated window ``batch`` (memory, past, actions, camera; see
    :func:`window_inputs`), with classifier-free ``guidance`` where it is on. ``past_noise``
    > 0 (a world model trained so: ``DiTTask.past_noise``): the past latents noised to that
    level first, and given it as their timestep."""
    past = batch["past"]
    b, k = past.shape[0], past.shape[2]
    batch = noised_past(batch, past_noise, generator)
    shape = (b, past.shape[1], current, *past.shape[3:])
    noise = torch.randn(shape, generator=generator).to(past)
    # the model in its own dtype (bf16 where that pays: matrixgame.accel.precision), the
    # sampler in the latents' (float32)
    dtype = model_dtype(model)
    # the window, then its branch with null actions in the same batch (same shapes); the
    # branch without memory (fewer tokens) in a call of its own
    branches = [batch] + ([with_null_actions(batch)] if guidance.actions != 1.0 else [])
    full = [_model_inputs(w, dtype) for w in branches]
    past_in = torch.cat([p for p, _ in full])
    cond = {name: torch.cat([c[name] for _, c in full]) for name in full[0][1]}
    no_memory = None
    if guidance.memory != 1.0 and batch["memory"].shape[2] > 0:
        no_memory = _model_inputs(without_memory(batch), dtype)

    def run(x, sigma, past_in, cond):
        n = past_in.shape[0]
        t = torch.cat([torch.full((n, k), NUM_TIMESTEPS * past_noise),
                       torch.full((n, current), NUM_TIMESTEPS * sigma)], 1)  # fmt: skip
        x_in = x.to(dtype).repeat(n // b, 1, 1, 1, 1)
        return model(torch.cat([past_in, x_in], 2), t.to(x), None, **cond)[:, :, k:].to(x.dtype)

    def velocity(x, sigma):
        v, *null = run(x, sigma, past_in, cond).split(b)
        out = v
        if null:
            out = out + (guidance.actions - 1.0) * (v - null[0])
        if no_memory is not None:
            out = out + (guidance.memory - 1.0) * (v - run(x, sigma, *no_memory))
        return out

    levels = sigma_schedule(steps, shift) if sigmas is None else sigmas
    return get_sampler(sampler)(velocity, noise, levels, generator=generator)


@dataclass
class Rollout:
    latents: Tensor  # [z, L, h, w]: the context latents, then the generated ones
    context: int  # how many latents were given
    seconds: float  # time spent in the DiT
    frames_per_latent: int = 4

    @property
    def frames(self) -> int:
        """Video frames the latents decode to (1 + f (L - 1))."""
        return 1 + self.frames_per_latent * (self.latents.shape[1] - 1)


@torch.no_grad()
def rollout(model, clip: dict, context: int, total: int, window: WindowConfig, height: int,
            width: int, metres_per_unit: float = 1.0,
            config: RolloutConfig = RolloutConfig()) -> Rollout:  # fmt: skip
    """Generate latents ``context .. total - 1`` of ``clip`` (a latent clip's tensors: its
    first ``context`` latents, and poses ``c2w [>= total, 4, 4]``, ``K`` and actions for the
    frames up to latent ``total - 1``) chunk by chunk, each conditioned on the sequence so
    far. The actions and poses are the clip's: the caller replays a recorded trajectory."""
    if context < window.past + 1:
        raise ValueError(f"need at least past + 1 = {window.past + 1} context latents")
    frames_needed = window.frames(total)
    if len(clip["c2w"]) < total or len(clip["keyboard"]) < frames_needed:
        raise ValueError(
            f"the clip's poses/actions cover {len(clip['c2w'])} latents, {total} requested"
        )
    generator = torch.Generator().manual_seed(config.seed)
    known, spent = clip["latents"][:, :context], 0.0
    while known.shape[1] < total:
        n = known.shape[1]
        current = min(window.current, total - n)
        item = window_inputs({**clip, "latents": known}, n - window.past, window, height,
                             width, metres_per_unit, current, config.memory)  # fmt: skip
        batch = {k: v[None] for k, v in item.items()}
        start = time.perf_counter()
        new = denoise_window(model, batch, current, config.steps, config.shift, generator,
                             guidance=config.guidance, past_noise=config.past_noise)  # fmt: skip
        spent += time.perf_counter() - start
        known = torch.cat([known, new[0].to(known)], 1)
    return Rollout(known, context, spent, window.frames_per_latent)


@torch.no_grad()
def decode_frames(vae, latents: Tensor) -> np.ndarray:
    """Normalised latents ``[z, L, h, w]`` -> uint8 frames ``[1 + 4 (L - 1), H, W, 3]``."""
    video = vae.decode(latents[None].float())[0]  # [3, T, H, W]
    return to_uint8(video.permute(1, 2, 3, 0)).numpy()
