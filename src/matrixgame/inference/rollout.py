"""Autoregressive rollouts of the memory-augmented DiT (the report's later-clip loop).

Each step generates the next ``current`` latents from noise with Euler steps, given the
last ``past`` latents of the sequence so far (the model's own output after the context)
and ``memory`` latents retrieved from everything before the window by frustum overlap of
the camera poses, exactly as the training windows are built (:func:`window_inputs`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from matrixgame.accel.precision import model_dtype
from matrixgame.data.windows import WindowConfig, window_inputs, window_kwargs
from matrixgame.diffusion.flow_matching import NUM_TIMESTEPS
from matrixgame.diffusion.samplers import get_sampler, sigma_schedule
from matrixgame.train.vae_task import to_uint8

Tensor = torch.Tensor


@dataclass(frozen=True)
class RolloutConfig:
    steps: int = 4
    shift: float = 3.0
    memory: bool = True  # False: the ablation without retrieved memory
    seed: int = 0


@torch.no_grad()
def denoise_window(model, batch: dict, current: int, steps: int = 4, shift: float = 3.0,
                   generator: torch.Generator | None = None, sampler: str = "euler",
                   sigmas: Tensor | None = None) -> Tensor:  # fmt: skip
    """``current`` latents ``[B, z, current, h, w]`` sampled from noise (Euler by default;
    any sampler of :mod:`matrixgame.diffusion.samplers`, with ``sigmas`` or ``steps`` shifted
    levels), given a collated window ``batch`` (memory, past, actions, camera; see
    :func:`window_inputs`)."""
    past = batch["past"]
    b, k = past.shape[0], past.shape[2]
    shape = (b, past.shape[1], current, *past.shape[3:])
    noise = torch.randn(shape, generator=generator).to(past)
    # the model in its own dtype (bf16 where that pays: matrixgame.accel.precision), the
    # sampler in the latents' (float32)
    dtype = model_dtype(model)
    cond = {name: value.to(dtype) if value.is_floating_point() else value
            for name, value in window_kwargs(batch).items()}  # fmt: skip
    past_in = past.to(dtype)

    def velocity(x, sigma):
        t = torch.cat([torch.zeros(b, k), torch.full((b, current), NUM_TIMESTEPS * sigma)], 1)
        v = model(torch.cat([past_in, x.to(dtype)], 2), t.to(x), None, **cond)[:, :, k:]
        return v.to(x.dtype)

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
        new = denoise_window(model, batch, current, config.steps, config.shift, generator)
        spent += time.perf_counter() - start
        known = torch.cat([known, new[0].to(known)], 1)
    return Rollout(known, context, spent, window.frames_per_latent)


@torch.no_grad()
def decode_frames(vae, latents: Tensor) -> np.ndarray:
    """Normalised latents ``[z, L, h, w]`` -> uint8 frames ``[1 + 4 (L - 1), H, W, 3]``."""
    video = vae.decode(latents[None].float())[0]  # [3, T, H, W]
    return to_uint8(video.permute(1, 2, 3, 0)).numpy()
