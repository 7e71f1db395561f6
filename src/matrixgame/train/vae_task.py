"""Training the small VAE presets on recorded frames: reconstruction losses that need no
downloaded network (L1 + L2). The released preset uses the released Wan2.2 VAE instead."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def frames_to_model(frames: Tensor, height: int, width: int) -> Tensor:
    """uint8 ``[B, T, H, W, 3]`` -> float ``[B, 3, T, h, w]`` in [-1, 1], area-resized."""
    b, t, h, w, _ = frames.shape
    x = frames.permute(0, 1, 4, 2, 3).reshape(b * t, 3, h, w).float() / 127.5 - 1.0
    if (h, w) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="area")
    return x.reshape(b, t, 3, height, width).transpose(1, 2)


def to_uint8(x: Tensor) -> Tensor:
    """Values in [-1, 1] (any layout) -> uint8 in [0, 255], clamped and rounded."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte()


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of frames in [-1, 1]."""
    mse = (a.float().clamp(-1, 1) - b.float()).pow(2).mean()
    return float(10 * torch.log10(4.0 / mse.clamp(min=1e-10)))


def reconstruction_loss(err: Tensor, l1: float, l2: float) -> Tensor:
    """l1 |err| + l2 err^2, each averaged: the pixel loss of every autoencoder task here."""
    return l1 * err.abs().mean() + l2 * err.pow(2).mean()


@dataclass(frozen=True)
class VAETask:
    height: int = 96
    width: int = 128
    l1: float = 1.0
    l2: float = 1.0

    def loss(self, model, batch: dict, step: int) -> tuple[Tensor, dict]:
        x = frames_to_model(batch["frames"], self.height, self.width)
        recon, latents = model(x)
        err = recon.float() - x
        loss = reconstruction_loss(err, self.l1, self.l2)
        return loss, {
            "loss": float(loss.detach()),
            "psnr": psnr(recon.detach(), x),
            "latent_std": float(latents.detach().float().std()),
        }


@torch.no_grad()
def reconstruction_strip(model, frames: Tensor, height: int, width: int):
    """``[H, W, 3]`` uint8: a clip's frames on top, their reconstruction below."""
    x = frames_to_model(frames, height, width)
    was_training = model.training
    model.eval()
    recon, _ = model(x)
    model.train(was_training)
    rows = [torch.cat(list(v[0].clamp(-1, 1).unbind(1)), dim=2) for v in (x, recon)]  # [3, H, W T]
    image = torch.cat(rows, dim=1).permute(1, 2, 0)
    return to_uint8(image).cpu().numpy()
