"""Frame metrics that do not reward blur on their own: PSNR beside SSIM, a sharpness ratio,
and the baselines a world model must beat (copy the last frame, or a blurred copy of it).

Videos are ``[T, H, W, 3]`` uint8 or float in [-1, 1]; every function returns per-frame
values ``[T]`` unless it says otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def to_float(video: Tensor) -> Tensor:
    """``[T, H, W, 3]`` -> float ``[T, 3, H, W]`` in [0, 1]."""
    v = torch.as_tensor(video)
    v = v.float() / 255.0 if v.dtype == torch.uint8 else (v.float() + 1) / 2
    return v.permute(0, 3, 1, 2).clamp(0, 1)


def psnr(generated: Tensor, real: Tensor) -> Tensor:
    """Per-frame PSNR in dB (inf for identical frames)."""
    mse = (to_float(generated) - to_float(real)).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1.0 / mse)


def _gaussian(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # [1, 1, k, k]


def _filter(x: Tensor, kernel: Tensor) -> Tensor:
    c = x.shape[1]
    return F.conv2d(x, kernel.expand(c, 1, *kernel.shape[2:]), groups=c)


def ssim(generated: Tensor, real: Tensor) -> Tensor:
    """Per-frame SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K = 0.01, 0.03),
    averaged over channels and valid windows."""
    a, b = to_float(generated), to_float(real)
    k = _gaussian()
    mu_a, mu_b = _filter(a, k), _filter(b, k)
    var_a = _filter(a * a, k) - mu_a**2
    var_b = _filter(b * b, k) - mu_b**2
    cov = _filter(a * b, k) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return s.mean(dim=(1, 2, 3))


def gradient_energy(video: Tensor) -> Tensor:
    """Per-frame mean squared finite difference (horizontal + vertical): detail."""
    v = to_float(video)
    dx = (v[..., :, 1:] - v[..., :, :-1]).pow(2).mean(dim=(1, 2, 3))
    dy = (v[..., 1:, :] - v[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))
    return dx + dy


def sharpness_ratio(generated: Tensor, real: Tensor) -> Tensor:
    """Gradient energy of generated over real frames: about 1 for a faithful model, well
    below 1 for blurry mush (which PSNR can still like)."""
    return gradient_energy(generated) / gradient_energy(real).clamp(min=1e-12)


def blur(video: Tensor, sigma: float = 2.0) -> Tensor:
    """A Gaussian-blurred copy, same layout and dtype as the input."""
    v = to_float(video)
    size = 2 * round(3 * sigma) + 1
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    k = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]
    out = _filter(F.pad(v, [size // 2] * 4, mode="replicate"), k).permute(0, 2, 3, 1)
    if torch.as_tensor(video).dtype == torch.uint8:
        return (out * 255).round().to(torch.uint8)
    return out * 2 - 1


def copy_last(context: Tensor, frames: int) -> Tensor:
    """Baseline: the last context frame repeated ``frames`` times."""
    return context[-1:].expand(frames, *context.shape[1:]).clone()


def is_static(video: Tensor, threshold: float = 0.005) -> bool:
    """The static-video gate: mean absolute change between consecutive frames (in [0, 1]
    units) below ``threshold`` means the video barely moves, so a loop-closure score on it
    proves nothing."""
    v = to_float(video)
    if len(v) < 2:
        return True
    return float((v[1:] - v[:-1]).abs().mean()) < threshold


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features ``a [N, D]`` and ``b [M, D]``
    (Heusel et al. 2017, FID): |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2),
    in float64, with the matrix square roots taken by symmetric eigendecomposition."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        shapes = f"{list(a.shape)}, {list(b.shape)}"
        raise ValueError(f"features must be [N, D] and [M, D], got {shapes}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least 2 feature vectors on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    w, v = torch.linalg.eigh(cov_a)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)
