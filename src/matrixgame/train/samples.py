"""Sample strips during training: what the world model generates for a held-out window,
decoded beside the real frames, so a person can look at progress."""

from __future__ import annotations

import numpy as np
import torch

from matrixgame.inference.rollout import denoise_window
from matrixgame.train.vae_task import to_uint8


@torch.no_grad()
def generate_current(
    model, batch: dict, steps: int = 4, shift: float = 3.0, seed: int = 0
) -> torch.Tensor:
    """Current latents ``[B, C, F, h, w]`` sampled with Euler from noise, given the window's
    memory, past latents, actions and camera."""
    generator = torch.Generator().manual_seed(seed)
    return denoise_window(model, batch, batch["current"].shape[2], steps, shift, generator)


@torch.no_grad()
def strip(vae, real: torch.Tensor, generated: torch.Tensor, frames: int = 8) -> np.ndarray:
    """``[H, W, 3]`` uint8: real frames on top, generated below (decoded current latents of
    the first sample; each later-piece latent decodes to 4 frames)."""
    rows = []
    for latents in (real[:1], generated[:1]):
        video = vae.decode(latents)[0].clamp(-1, 1)  # [3, T, H, W]
        idx = np.linspace(0, video.shape[1] - 1, frames).astype(int)
        row = torch.cat([video[:, i] for i in idx], dim=2)  # [3, H, W * frames]
        rows.append(to_uint8(row.permute(1, 2, 0)).numpy())
    return np.concatenate(rows, 0)


@torch.no_grad()
def side_by_side(vae, real: torch.Tensor, generated: torch.Tensor) -> np.ndarray:
    """``[T, H, 2W, 3]`` uint8 video: the real clip left, the generated one right (first
    sample of the batch)."""
    halves = [vae.decode(latents[:1])[0].clamp(-1, 1) for latents in (real, generated)]
    video = torch.cat(halves, dim=3).permute(1, 2, 3, 0)  # [T, H, 2W, 3]
    return to_uint8(video).numpy()
