"""Cameras: the one convention every part of matrixgame speaks.

Poses are camera-to-world (c2w) 4x4 matrices. The camera frame is OpenCV's: x right, y down,
z forward (the viewing direction). The world is right-handed with z up. A camera with
yaw = pitch = roll = 0 looks along +x with its right side towards -y.

- yaw: heading of the view direction in the xy-plane, degrees counter-clockwise from +x
  (Doom's angle); positive turns left.
- pitch: elevation of the view direction, degrees, positive looks up.
- roll: rotation about the view direction, degrees, right-handed about it (positive lowers
  the camera's right side).

Intrinsics are pinhole, in pixels, as a tensor ``[..., 4] = (fx, fy, cx, cy)`` (the layout of
the released Matrix-Game-3.0 code); pixel (u, v) has its centre at (u + 0.5, v + 0.5).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

# Columns are the OpenCV camera axes (right, down, forward) in the world at zero angles.
_CAMERA_AXES = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def check_image_size(height: int, width: int) -> None:
    """Raise ValueError unless height and width are positive integers."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"image {name} must be a positive integer, got {value!r}")


def check_c2w(c2w: Tensor, name: str = "c2w", atol: float = 1e-3) -> None:
    """Raise ValueError unless ``c2w [..., 4, 4]`` is finite and rigid (rotation, det +1)."""
    if not isinstance(c2w, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(c2w).__name__}")
    if c2w.ndim < 2 or tuple(c2w.shape[-2:]) != (4, 4):
        raise ValueError(f"{name} must have shape [..., 4, 4], got {list(c2w.shape)}")
    if not c2w.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {c2w.dtype}")
    if not torch.isfinite(c2w).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if c2w.numel() == 0:  # an empty batch (a window without memory) is valid
        return
    m = c2w.double()
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=m.dtype, device=m.device)
    if (m[..., 3, :] - bottom).abs().max() > atol:
        raise ValueError(f"{name} must have last row [0, 0, 0, 1]")
    rot = m[..., :3, :3]
    eye = torch.eye(3, dtype=m.dtype, device=m.device)
    err = (rot.transpose(-1, -2) @ rot - eye).abs().amax(dim=(-1, -2))
    if err.numel() and err.max() > atol:
        bad = int(err.flatten().argmax())
        raise ValueError(
            f"{name} is not rigid: its rotation block is not orthonormal "
            f"(|R^T R - I| = {err.max():.3g} at pose {bad}); scale or shear is not allowed"
        )
    # the rows' triple product: det R, without a factorisation (a tenth of linalg.det's
    # time on a CPU, where a memory retrieval checks one pose per segment)
    det = (rot[..., 0, :] * torch.linalg.cross(rot[..., 1, :], rot[..., 2, :])).sum(-1)
    if det.numel() and det.min() < 0:
        bad = int(det.flatten().argmin())
        raise ValueError(
            f"{name} has a reflection (det R = -1 at pose {bad}): a left-handed pose; "
            "convert it to the right-handed OpenCV convention first"
        )


def check_intrinsics(K: Tensor, name: str = "K") -> None:
    """Raise ValueError unless ``K [..., 4]`` holds finite (fx, fy, cx, cy) with fx, fy > 0."""
    if not isinstance(K, Tensor) or K.ndim < 1 or K.shape[-1] != 4:
        shape = list(K.shape) if isinstance(K, Tensor) else type(K).__name__
        raise ValueError(f"{name} must be a tensor [..., 4] of (fx, fy, cx, cy), got {shape}")
    if not torch.isfinite(K).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if (K[..., :2] <= 0).any():
        raise ValueError(f"{name}: focal lengths fx, fy must be positive")


def intrinsics_from_fov(
    width: int, height: int, fov_x_deg: float, fov_y_deg: float | None = None
) -> Tensor:
    """Pinhole intrinsics ``[4] = (fx, fy, cx, cy)`` for an image and horizontal field of view.

    With ``fov_y_deg=None`` pixels are square. The released Matrix-Game-3.0 code uses a 90
    degree field of view on both axes (``fov_y_deg=90``), i.e. non-square pixels.
    """
    check_image_size(height, width)
    fovs = [fov_x_deg] if fov_y_deg is None else [fov_x_deg, fov_y_deg]
    if not all(math.isfinite(f) and 0 < f < 180 for f in fovs):
        raise ValueError(f"field of view must lie in (0, 180) degrees, got {fovs}")
    fx = width / (2 * math.tan(math.radians(fov_x_deg) / 2))
    fy = fx if fov_y_deg is None else height / (2 * math.tan(math.radians(fov_y_deg) / 2))
    return torch.tensor([fx, fy, width / 2, height / 2], dtype=torch.float64)


def _as_tensor(x: Tensor | float, like: Tensor | None = None) -> Tensor:
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float64
    device = like.device if like is not None else None
    return torch.as_tensor(x, dtype=dtype, device=device)


def rotation_from_angles(
    yaw_deg: Tensor | float, pitch_deg: Tensor | float, roll_deg: Tensor | float = 0.0
) -> Tensor:
    """Camera-to-world rotation ``[..., 3, 3]`` from yaw, pitch, roll in degrees (see module)."""
    yaw = torch.deg2rad(_as_tensor(yaw_deg))
    pitch, roll = torch.deg2rad(_as_tensor(pitch_deg)), torch.deg2rad(_as_tensor(roll_deg))
    yaw, pitch, roll = torch.broadcast_tensors(yaw, pitch, roll)
    cy, sy, cp, sp = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin()
    cr, sr = roll.cos(), roll.sin()
    zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
    # body = Rz(yaw) @ Ry(-pitch) @ Rx(roll): x forward, y left, z up.
    rz = torch.stack([cy, -sy, zero, sy, cy, zero, zero, zero, one], -1)
    ry = torch.stack([cp, zero, -sp, zero, one, zero, sp, zero, cp], -1)
    rx = torch.stack([one, zero, zero, zero, cr, -sr, zero, sr, cr], -1)
    shape = (*yaw.shape, 3, 3)
    body = rz.reshape(shape) @ ry.reshape(shape) @ rx.reshape(shape)
    return body @ _CAMERA_AXES.to(body)


def pose_from_angles(
    position: Tensor,
    yaw_deg: Tensor | float,
    pitch_deg: Tensor | float = 0.0,
    roll_deg: Tensor | float = 0.0,
) -> Tensor:
    """c2w ``[..., 4, 4]`` from a position ``[..., 3]`` and yaw/pitch/roll in degrees."""
    position = _as_tensor(position)
    if position.shape[-1:] != (3,) or not torch.isfinite(position).all():
        raise ValueError(f"position must be finite with shape [..., 3], got {list(position.shape)}")
    rot = rotation_from_angles(yaw_deg, pitch_deg, roll_deg).to(position)
    batch = torch.broadcast_shapes(rot.shape[:-2], position.shape[:-1])
    c2w = torch.zeros(*batch, 4, 4, dtype=position.dtype, device=position.device)
    c2w[..., :3, :3] = rot
    c2w[..., :3, 3] = position
    c2w[..., 3, 3] = 1.0
    return c2w


def angles_from_pose(c2w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(yaw, pitch, roll) in degrees, each ``[...]``, from c2w ``[..., 4, 4]`` (or 3x3 rotations).

    Inverse of :func:`rotation_from_angles` for pitch in (-90, 90); yaw in (-180, 180].
    """
    rot = c2w[..., :3, :3]
    forward, right = rot[..., :, 2], rot[..., :, 0]
    yaw = torch.atan2(forward[..., 1], forward[..., 0])
    pitch = torch.asin(forward[..., 2].clamp(-1.0, 1.0))
    left = -right
    level_left = torch.stack([-yaw.sin(), yaw.cos(), torch.zeros_like(yaw)], -1)
    level_up = torch.stack([-pitch.sin() * yaw.cos(), -pitch.sin() * yaw.sin(), pitch.cos()], -1)
    roll = torch.atan2((left * level_up).sum(-1), (left * level_left).sum(-1))
    return torch.rad2deg(yaw), torch.rad2deg(pitch), torch.rad2deg(roll)


def se3_inverse(T: Tensor) -> Tensor:
    """Inverse of rigid transforms ``[..., 4, 4]`` without a general matrix inverse."""
    rot_t = T[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ T[..., :3, 3:4]).squeeze(-1)
    out[..., 3, 3] = 1.0
    return out


def relative_poses(
    c2w: Tensor, framewise: bool = False, normalize_translation: bool = True
) -> Tensor:
    """Poses ``[F, 4, 4]`` expressed relative to the first camera, as the released model sees them.

    ``framewise=False``: pose i in the frame of camera 0 (pose 0 is the identity).
    ``framewise=True``: pose i (i >= 1) in the frame of camera i-1.
    ``normalize_translation``: divide all translations by the largest translation norm (when
    the camera moves at all), so the embedding is scale free.
    """
    check_c2w(c2w)
    if c2w.ndim != 3:
        raise ValueError(f"c2w must have shape [F, 4, 4], got {list(c2w.shape)}")
    rel = se3_inverse(c2w[:1]) @ c2w
    rel[0] = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
    if framewise and len(rel) > 1:
        rel = torch.cat([rel[:1], se3_inverse(rel[:-1]) @ rel[1:]])
    if normalize_translation:
        max_norm = rel[:, :3, 3].norm(dim=-1).max()
        if max_norm > 0:
            rel[:, :3, 3] = rel[:, :3, 3] / max_norm
    return rel


def axis_offsets(c2w: Tensor, ref: Tensor, K: Tensor, height: int, width: int) -> Tensor:
    """Where each camera's optical axis lands in the image of camera ``ref``, relative to
    ``ref``'s own axis: ``[N, 2]`` pixel offsets (down, right) for cameras ``c2w [N, 4, 4]``,
    intrinsics ``K [4]`` at ``height x width``. A pure-rotation estimate (translation is
    ignored): the axis direction d in ``ref``'s frame lands at (fy d_y / d_z, fx d_x / d_z).
    Content two cameras share sits near equal positions once each image is moved by its
    offset (camera-aligned RoPE). Axes beyond the view saturate at twice the image size,
    and an axis at or behind ``ref``'s image plane goes to that limit on its side."""
    check_c2w(c2w)
    check_c2w(ref, "ref")
    check_intrinsics(K)
    check_image_size(height, width)
    d = (ref[:3, :3].transpose(0, 1) @ c2w[:, :3, :3].to(ref))[:, :, 2]  # [N, 3]
    limit = torch.tensor([2.0 * height, 2.0 * width], dtype=d.dtype, device=d.device)
    focal = K.to(d)[[1, 0]]  # (fy, fx)
    ahead = d[:, 2:] > 1e-3
    lateral = d[:, [1, 0]]
    offset = torch.where(ahead, focal * lateral / d[:, 2:].clamp(min=1e-3),
                         lateral.sign() * limit)  # fmt: skip
    return torch.maximum(torch.minimum(offset, limit), -limit)


def _quat_from_rotation(rot: Tensor) -> Tensor:
    """Unit quaternions ``[..., 4] = (w, x, y, z)`` from rotations ``[..., 3, 3]``."""
    m = rot
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # Four candidate solutions; take the numerically largest (Shepperd's method).
    cands = torch.stack(
        [
            torch.stack(
                [
                    1 + trace,
                    m[..., 2, 1] - m[..., 1, 2],
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] - m[..., 0, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 2, 1] - m[..., 1, 2],
                    1 + 2 * m[..., 0, 0] - trace,
                    m[..., 0, 1] + m[..., 1, 0],
                    m[..., 0, 2] + m[..., 2, 0],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 0, 1] + m[..., 1, 0],
                    1 + 2 * m[..., 1, 1] - trace,
                    m[..., 1, 2] + m[..., 2, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 1, 0] - m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                    m[..., 1, 2] + m[..., 2, 1],
                    1 + 2 * m[..., 2, 2] - trace,
                ],
                -1,
            ),
        ],
        -2,
    )  # [..., 4 candidates, 4]
    diag = torch.stack([trace, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    best = diag.argmax(-1, keepdim=True)[..., None].expand(*diag.shape[:-1], 1, 4)
    q = cands.gather(-2, best).squeeze(-2)
    return q / q.norm(dim=-1, keepdim=True)


def _rotation_from_quat(q: Tensor) -> Tensor:
    """Rotations ``[..., 3, 3]`` from unit quaternions ``[..., 4] = (w, x, y, z)``."""
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z),
        2 * (x * y - w * z),
        2 * (x * z + w * y),
        2 * (x * y + w * z),
        1 - 2 * (x * x + z * z),
        2 * (y * z - w * x),
        2 * (x * z - w * y),
        2 * (y * z + w * x),
        1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, -1).reshape(*q.shape[:-1], 3, 3)


def interpolate_poses(c2w: Tensor, src_times: Tensor, tgt_times: Tensor) -> Tensor:
    """Poses at ``tgt_times [M]`` from poses ``c2w [N, 4, 4]`` at increasing ``src_times [N]``.

    Rotations by spherical linear interpolation (shortest arc), translations linearly;
    targets outside the source range extrapolate the translation and clamp the rotation.
    This is how the released model resamples 4 frame poses onto one latent.
    """
    check_c2w(c2w)
    src = _as_tensor(src_times, c2w).reshape(-1)
    tgt = _as_tensor(tgt_times, c2w).reshape(-1)
    if c2w.ndim != 3 or len(src) != len(c2w) or len(src) < 1:
        raise ValueError("need c2w [N, 4, 4] with one source time per pose")
    if len(src) > 1 and not (src[1:] > src[:-1]).all():
        raise ValueError("source times must be strictly increasing")
    if len(src) == 1:
        return c2w.expand(len(tgt), 4, 4).clone()
    seg = (torch.searchsorted(src, tgt, right=True) - 1).clamp(0, len(src) - 2)
    t0, t1 = src[seg], src[seg + 1]
    alpha = (tgt - t0) / (t1 - t0)
    trans = c2w[seg, :3, 3] + alpha[:, None] * (c2w[seg + 1, :3, 3] - c2w[seg, :3, 3])
    q = _quat_from_rotation(c2w[:, :3, :3])
    q0, q1 = q[seg], q[seg + 1]
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)  # shortest arc
    dot = dot.abs().clamp(max=1.0)
    a = alpha.clamp(0.0, 1.0)[:, None]
    theta = torch.acos(dot)
    sin_theta = theta.sin()
    small = sin_theta < 1e-6
    w0 = torch.where(small, 1 - a, torch.sin((1 - a) * theta) / sin_theta.clamp(min=1e-12))
    w1 = torch.where(small, a, torch.sin(a * theta) / sin_theta.clamp(min=1e-12))
    qt = w0 * q0 + w1 * q1
    out = torch.zeros(len(tgt), 4, 4, dtype=c2w.dtype, device=c2w.device)
    out[:, :3, :3] = _rotation_from_quat(qt / qt.norm(dim=-1, keepdim=True))
    out[:, :3, 3] = trans
    out[:, 3, 3] = 1.0
    return out
