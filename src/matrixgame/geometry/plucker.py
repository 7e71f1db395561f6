"""Plücker ray embeddings: per-pixel camera rays, folded into per-latent channels.

Each pixel of each camera gets 6 numbers ``(o, d)``: the ray origin (camera centre) and the
unit ray direction in world coordinates, as in the released Matrix-Game-3.0 ``cam_utils``
(which keeps the origin rather than the moment ``o x d``). The DiT consumes them folded: every
``(H / h) x (W / w)`` pixel block becomes ``6 * (H / h) * (W / w)`` channels of one latent
position, channel order ``(c, dy, dx)``.
"""

from __future__ import annotations

import functools

import torch

from matrixgame.geometry.cameras import (
    check_c2w,
    check_image_size,
    check_intrinsics,
    relative_poses,
)

Tensor = torch.Tensor


def plucker_rays(c2w: Tensor, K: Tensor, height: int, width: int) -> Tensor:
    """Rays ``[N, H, W, 6] = (origin, direction)`` for cameras ``c2w [N, 4, 4]``.

    ``K`` is ``[4]`` (shared) or ``[N, 4]`` = (fx, fy, cx, cy) in pixels of this image size.
    """
    check_c2w(c2w)
    check_intrinsics(K)
    check_image_size(height, width)
    if c2w.ndim != 3:
        raise ValueError(f"c2w must have shape [N, 4, 4], got {list(c2w.shape)}")
    n = len(c2w)
    if K.ndim == 1 or (K.ndim == 2 and len(K) == 1):  # shared: its directions made once
        key = (*K.reshape(4).tolist(), height, width, c2w.dtype, str(c2w.device))
        dirs = _pixel_directions(*key).expand(n, height * width, 3)
    else:
        dirs = _directions(K.to(c2w).expand(n, 4), height, width).reshape(n, -1, 3)
    rays = c2w.new_empty(n, height * width, 6)
    rays[..., 3:] = dirs @ c2w[:, :3, :3].transpose(-1, -2)  # camera frame to world
    rays[..., :3] = c2w[:, None, :3, 3]
    return rays.view(n, height, width, 6)


def _directions(K: Tensor, height: int, width: int) -> Tensor:
    """Unit camera-frame directions ``[N, H, W, 3]`` through the pixel centres of cameras
    ``K [N, 4]``."""
    fx, fy, cx, cy = (k[:, None, None] for k in K.unbind(-1))  # each [N, 1, 1]
    v, u = torch.meshgrid(
        torch.arange(height, dtype=K.dtype, device=K.device) + 0.5,
        torch.arange(width, dtype=K.dtype, device=K.device) + 0.5,
        indexing="ij",
    )
    x, y = (u - cx) / fx, (v - cy) / fy  # [N, H, W]
    dirs = torch.stack([x, y, torch.ones_like(x)], -1)
    return dirs / dirs.norm(dim=-1, keepdim=True)


@functools.lru_cache(maxsize=16)
def _pixel_directions(fx: float, fy: float, cx: float, cy: float, height: int, width: int,
                      dtype: torch.dtype, device: str) -> Tensor:  # fmt: skip
    """:func:`_directions` of one shared camera, ``[H * W, 3]``, made once per camera (a
    streaming session's every step asks for the same)."""
    K = torch.tensor([[fx, fy, cx, cy]], dtype=dtype, device=device)
    return _directions(K, height, width).reshape(-1, 3)


def fold_plucker(rays: Tensor, latent_height: int, latent_width: int) -> Tensor:
    """Fold rays ``[..., F, H, W, 6]`` into ``[..., 6 * bh * bw, F, h, w]`` (bh = H / h).

    Channel ``c * bh * bw + dy * bw + dx`` holds ray value ``c`` of pixel
    ``(y * bh + dy, x * bw + dx)``: the released ``(c c1 c2)`` order.
    """
    *lead, frames, height, width, six = rays.shape
    check_image_size(latent_height, latent_width)
    if six != 6 or height % latent_height or width % latent_width:
        raise ValueError(
            f"cannot fold rays of shape {list(rays.shape)} onto a "
            f"{latent_height}x{latent_width} latent grid (need [..., F, H, W, 6], H and W "
            "multiples of the latent size)"
        )
    bh, bw = height // latent_height, width // latent_width
    x = rays.reshape(*lead, frames, latent_height, bh, latent_width, bw, 6)
    n = len(lead)
    # (..., f, h, bh, w, bw, c) -> (..., c, bh, bw, f, h, w)
    x = x.permute(*range(n), n + 5, n + 2, n + 4, n, n + 1, n + 3)
    return x.reshape(*lead, 6 * bh * bw, frames, latent_height, latent_width)


def camera_embedding(
    c2w: Tensor,
    K: Tensor,
    height: int,
    width: int,
    latent_height: int,
    latent_width: int,
    framewise: bool = True,
) -> Tensor:
    """The DiT's camera input ``[6 * bh * bw, F, h, w]`` for one latent pose per frame.

    Poses ``c2w [F, 4, 4]`` are first made relative (to the previous frame when
    ``framewise``, else to the first) with normalised translation, as in the release.
    """
    rel = relative_poses(c2w, framewise=framewise, normalize_translation=True)
    return fold_plucker(plucker_rays(rel, K, height, width), latent_height, latent_width)
