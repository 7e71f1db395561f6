"""Real-world video with camera poses, into the same clips as the game recordings.

Readers for two public formats:

- RealEstate10K camera files: a URL line, then one line per frame:
  ``timestamp_us fx fy cx cy 0 0 <3x4 world-to-camera, row-major>`` with intrinsics
  normalised by the image size and an OpenCV camera (x right, y down, z forward). Frames
  come from a folder of images named by timestamp (``<timestamp>.png|jpg``) or, failing
  that, sorted images one per line.
- nerfstudio / DL3DV ``transforms.json``: intrinsics ``fl_x, fl_y, cx, cy, w, h`` (global or
  per frame) and per-frame ``transform_matrix`` camera-to-world in the OpenGL convention
  (x right, y up, z backwards), images by ``file_path``.

Poses are then normalised (:func:`normalise_poses`): the world turned so that the cameras'
mean up direction is +z, the first camera moved to the origin, and the scale set so the
median step between frames is the kinematics preset's walking step. Actions are annotated
from the poses by the physics-based inverse kinematics, as the report does for its
real-world data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from matrixgame.data.shards import Clip
from matrixgame.geometry.cameras import check_c2w, se3_inverse
from matrixgame.geometry.kinematics import KinematicsConfig, Trajectory, get_preset, infer_actions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class PosedFrames:
    """Images with cameras: ``c2w [N, 4, 4]`` (OpenCV camera), ``K [N, 4]`` in pixels of each
    image's own size, the image paths, and per-frame times."""

    c2w: np.ndarray
    K: np.ndarray
    images: list[Path]
    times: np.ndarray
    source: str


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"frames folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_realestate10k(camera_file: str | Path, frames_dir: str | Path) -> PosedFrames:
    """Read a RealEstate10K camera file and its extracted frames."""
    camera_file, frames_dir = Path(camera_file), Path(frames_dir)
    try:
        lines = camera_file.read_text().splitlines()
    except OSError as err:
        raise ValueError(f"cannot read {camera_file}: {err.strerror or err}") from err
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        values = line.split()
        if len(values) != 19:
            raise ValueError(f"{camera_file}:{n}: expected 19 numbers, got {len(values)}")
        try:
            rows.append([float(v) for v in values])
        except ValueError as err:
            raise ValueError(f"{camera_file}:{n}: not a number ({err})") from err
    if len(rows) < 2:
        raise ValueError(f"{camera_file}: needs at least 2 camera lines after the URL line")
    table = np.array(rows)
    if not np.isfinite(table).all():
        raise ValueError(f"{camera_file}: contains NaN or infinite values")
    w2c = np.tile(np.eye(4), (len(table), 1, 1))
    w2c[:, :3, :4] = table[:, 7:19].reshape(-1, 3, 4)
    c2w = se3_inverse(torch.from_numpy(w2c)).numpy()
    images = _images_in(frames_dir)
    by_stamp = {p.stem: p for p in images}
    stamps = [str(int(t)) for t in table[:, 0]]
    if all(s in by_stamp for s in stamps):
        chosen = [by_stamp[s] for s in stamps]
    elif len(images) == len(table):
        chosen = images
    else:
        raise ValueError(
            f"{frames_dir}: {len(images)} images match neither the {len(table)} timestamps "
            "of the camera file by name nor by count"
        )
    sizes = np.array([_image_size(p) for p in chosen], dtype=np.float64)  # (w, h)
    K = table[:, 1:5] * np.concatenate([sizes, sizes], 1)  # normalised -> pixels
    return PosedFrames(c2w, K, chosen, table[:, 0] / 1e6, f"realestate10k:{camera_file.name}")


def read_nerfstudio(transforms: str | Path) -> PosedFrames:
    """Read a nerfstudio / DL3DV ``transforms.json`` (OpenGL poses) and its images."""
    transforms = Path(transforms)
    try:
        data = json.loads(transforms.read_text())
    except OSError as err:
        raise ValueError(f"cannot read {transforms}: {err.strerror or err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{transforms}: not valid JSON: {err}") from err
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or len(frames) < 2:
        raise ValueError(f"{transforms}: needs a 'frames' list of at least 2 entries")
    c2w, K, images = [], [], []
    root = transforms.parent.resolve()
    for i, fr in enumerate(frames):
        where = f"{transforms}: frames[{i}]"
        if not isinstance(fr, dict):
            raise ValueError(f"{where}: expected an object, got {type(fr).__name__}")

        def intr(key, fr=fr, where=where):
            value = fr.get(key, data.get(key))
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not math.isfinite(value):  # fmt: skip
                raise ValueError(f"{where}: intrinsic {key!r} must be a finite number, got "
                                 f"{value!r:.40}")  # fmt: skip
            return float(value)

        try:
            m = np.array(fr["transform_matrix"], dtype=np.float64)
            if not isinstance(fr["file_path"], str) or not fr["file_path"]:
                raise TypeError("file_path")
            path = transforms.parent / fr["file_path"]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: needs transform_matrix (4x4) and file_path") from err
        if root not in path.resolve().parents:
            raise ValueError(f"{where}: image {fr['file_path']!r} lies outside {root}")
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise ValueError(f"{where}: transform_matrix must be 4x4 finite numbers")
        if not path.suffix and not path.exists():
            path = next(
                (path.with_suffix(s) for s in IMAGE_SUFFIXES if path.with_suffix(s).exists()), path
            )
        if not path.exists():
            raise ValueError(f"{where}: image {path} does not exist")
        c2w.append(m @ OPENGL_TO_OPENCV)
        K.append([intr("fl_x"), intr("fl_y"), intr("cx"), intr("cy")])
        images.append(path)
    return PosedFrames(
        np.stack(c2w),
        np.array(K),
        images,
        np.arange(len(frames), dtype=np.float64),
        f"nerfstudio:{transforms.parent.name}",
    )


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def normalise_poses(c2w: np.ndarray, step: float) -> tuple[np.ndarray, float]:
    """Turn, move and scale poses ``[N, 4, 4]`` into our world: mean camera up is +z, the
    first camera at the origin, the median step between frames ``step`` units.
    Returns the poses and the scale applied."""
    check_c2w(torch.from_numpy(c2w), "c2w")
    up = -c2w[:, :3, 1].mean(0)  # camera y points down
    if np.linalg.norm(up) < 1e-6:
        raise ValueError("cannot find an up direction: the cameras' up vectors cancel out")
    up /= np.linalg.norm(up)
    rot = _rotation_onto(up, np.array([0.0, 0.0, 1.0]))
    out = c2w.copy()
    out[:, :3, :3] = rot @ c2w[:, :3, :3]
    out[:, :3, 3] = (c2w[:, :3, 3] - c2w[0, :3, 3]) @ rot.T
    steps = np.linalg.norm(np.diff(out[:, :3, 3], axis=0), axis=1)
    moving = steps[steps > 1e-9]
    scale = step / float(np.median(moving)) if len(moving) else 1.0
    out[:, :3, 3] *= scale
    return out, scale


def _rotation_onto(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector a to unit vector b (Rodrigues)."""
    v, c = np.cross(a, b), float(np.dot(a, b))
    if c < -1 + 1e-9:  # opposite: half a turn about any axis perpendicular to a
        axis = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def to_clip(
    posed: PosedFrames,
    width: int,
    height: int,
    kinematics: str | KinematicsConfig = "released",
) -> Clip:
    """Resize (centre crop to the aspect, then scale) the frames to ``width x height``,
    normalise the poses and annotate the actions. Intrinsics follow the crop and resize."""
    from PIL import Image

    kin = get_preset(kinematics) if isinstance(kinematics, str) else kinematics
    c2w, scale = normalise_poses(posed.c2w, kin.forward_speed)
    frames, Ks = [], []
    for path, K in zip(posed.images, posed.K, strict=True):
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            crop_w, crop_h = min(w, h * width / height), min(h, w * height / width)
            left, top = (w - crop_w) / 2, (h - crop_h) / 2
            im = im.resize(
                (width, height), Image.BICUBIC, box=(left, top, left + crop_w, top + crop_h)
            )
            frames.append(np.asarray(im))
        sx, sy = width / crop_w, height / crop_h
        Ks.append([K[0] * sx, K[1] * sy, (K[2] - left) * sx, (K[3] - top) * sy])
    Ks = np.array(Ks)
    keyboard, mouse = infer_actions(Trajectory.from_c2w(torch.from_numpy(c2w)), kin)
    # the last frame's action is unknown: repeat the one before it
    keyboard = torch.cat([keyboard, keyboard[-1:]]).numpy().astype(np.float32)
    mouse = torch.cat([mouse, mouse[-1:]]).numpy().astype(np.float32)
    spread = np.abs(Ks - Ks.mean(0)).max()
    if spread > 1e-3 * max(width, height):
        raise ValueError("the frames' intrinsics differ; clips need one camera (split the video)")
    meta = {
        "source": posed.source,
        "split": "train",
        "viewpoint": "first",
        "width": width,
        "height": height,
        "units": f"normalised: median step = {kin.forward_speed} units",
        "metres_per_unit": kin.metres_per_unit,
        "pose_scale": scale,
        "kinematics": {k: getattr(kin, k) for k in kin.__dataclass_fields__},
        "times": posed.times.tolist(),
    }
    tic = np.arange(len(frames), dtype=np.int64)
    return Clip(np.stack(frames), c2w, Ks.mean(0), keyboard, mouse, tic, None, meta)
