"""Dataset output: clips in safetensors shards, a checksummed manifest, atomic writes.

A dataset is a folder:

    manifest.json            what is finished: one entry per shard, with its sha256
    <name>.safetensors       one clip each: a continuous recording of N frames

A clip's tensors (frame i is rendered from pose i; action i moves the camera from frame i
to frame i + 1, so the last action is the one taken after the clip's last frame):

    frames    [N, H, W, 3] uint8     depth  [N, H, W] uint8 (optional, the game's buffer)
    c2w       [N, 4, 4] float64      camera-to-world, OpenCV camera, world z up
    K         [4] float64            (fx, fy, cx, cy) in pixels
    keyboard  [N, 6] float32         W, S, A, D, two spare slots
    mouse     [N, 2] float32         (pitch, yaw) deltas, positive looks down / turns right
    tic       [N] int64              game time of each frame

and its header metadata holds ``{"format": "matrixgame-clip/1", "meta": <json>}`` with the
map, viewpoint, seed, split, units and the kinematics it was recorded with. Shards are written
to a temporary name and renamed; the manifest is rewritten the same way after each shard,
so a crash never leaves a listed shard half-written.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from matrixgame.io import atomic_path, atomic_write_text

CLIP_FORMAT = "matrixgame-clip/1"
MANIFEST_FORMAT = "matrixgame-dataset/1"
MANIFEST = "manifest.json"


@dataclass
class Clip:
    """One continuous recording (see the module docstring for layouts)."""

    frames: np.ndarray
    c2w: np.ndarray
    K: np.ndarray
    keyboard: np.ndarray
    mouse: np.ndarray
    tic: np.ndarray
    depth: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.frames)
        checks = [
            ("frames", self.frames, (n, None, None, 3), np.uint8),
            ("c2w", self.c2w, (n, 4, 4), None),
            ("K", self.K, (4,), None),
            ("keyboard", self.keyboard, (n, 6), None),
            ("mouse", self.mouse, (n, 2), None),
            ("tic", self.tic, (n,), None),
        ]
        if self.depth is not None:
            checks.append(("depth", self.depth, (n, *self.frames.shape[1:3]), np.uint8))
        for name, arr, shape, dtype in checks:
            ok = arr.ndim == len(shape) and all(
                s is None or a == s for a, s in zip(arr.shape, shape, strict=True)
            )
            if not ok:
                raise ValueError(f"clip {name} has shape {list(arr.shape)}, expected {shape}")
            if dtype is not None and arr.dtype != dtype:
                raise ValueError(f"clip {name} must be {np.dtype(dtype).name}, got {arr.dtype}")

    def __len__(self) -> int:
        return len(self.frames)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {
            "frames": torch.from_numpy(np.ascontiguousarray(self.frames)),
            "c2w": torch.from_numpy(np.asarray(self.c2w, dtype=np.float64)),
            "K": torch.from_numpy(np.asarray(self.K, dtype=np.float64)),
            "keyboard": torch.from_numpy(np.asarray(self.keyboard, dtype=np.float32)),
            "mouse": torch.from_numpy(np.asarray(self.mouse, dtype=np.float32)),
            "tic": torch.from_numpy(np.asarray(self.tic, dtype=np.int64)),
        }
        if self.depth is not None:
            out["depth"] = torch.from_numpy(np.ascontiguousarray(self.depth))
        return out


def write_clip(path: str | Path, clip: Clip) -> str:
    """Write a clip atomically (temporary file, fsync, rename); returns the file's sha256.
    The same clip always gives the same bytes (:func:`canonical_safetensors`)."""
    meta = {"format": CLIP_FORMAT, "meta": json.dumps(clip.meta, sort_keys=True)}
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(canonical_safetensors(save(clip.tensors(), metadata=meta)))
        return file_sha256(tmp)


def canonical_safetensors(data: bytes) -> bytes:
    """A safetensors file with its JSON header's keys sorted: the writer keeps its metadata
    in a hash map whose order changes from process to process, so two recordings of the
    same clip would otherwise differ in their bytes (and checksums)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":"),
                        ensure_ascii=False).encode()  # fmt: skip
    header += b" " * (-len(header) % 8)  # the format pads its header to 8 bytes
    return struct.pack("<Q", len(header)) + header + data[8 + n :]


def read_clip(path: str | Path, keys: list[str] | None = None) -> Clip:
    """Read a clip (all tensors, or only ``keys`` plus the small ones). Raises ValueError on a
    file that is not a matrixgame clip or is damaged."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != CLIP_FORMAT:
                raise ValueError(f"{path}: not a {CLIP_FORMAT} file")
            names = set(f.keys())
            wanted = (
                names
                if keys is None
                else (set(keys) | {"c2w", "K", "keyboard", "mouse", "tic"}) & names
            )
            missing = sorted({"c2w", "K", "keyboard", "mouse", "tic"} - names)
            if missing:
                raise ValueError(f"{path}: a clip without {', '.join(missing)}")
            t = {k: f.get_tensor(k).numpy() for k in wanted}
            meta = json.loads(header["meta"])
            if not isinstance(meta, dict):
                raise ValueError(f"{path}: its meta must be a JSON object")
    except ValueError:
        raise
    except Exception as err:  # safetensors raises its own errors for truncated files
        raise ValueError(f"{path}: unreadable clip ({err})") from err
    n = len(t["c2w"])
    frames = t.get("frames")
    if frames is None:  # a poses-only read: an empty frames placeholder keeps the shapes
        frames = np.zeros((n, 0, 0, 3), dtype=np.uint8)
    return Clip(frames, t["c2w"], t["K"], t["keyboard"], t["mouse"], t["tic"], t.get("depth"), meta)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Manifest:
    """What a dataset folder holds: the recording config and the finished shards."""

    root: Path
    config: dict = field(default_factory=dict)
    shards: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, root: str | Path) -> Manifest:
        root = Path(root)
        path = root / MANIFEST
        if not path.exists():
            return cls(root)
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: damaged manifest ({err})") from err
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path}: not a {MANIFEST_FORMAT} manifest")
        config, shards = data.get("config", {}), data.get("shards", {})
        if not isinstance(config, dict) or not isinstance(shards, dict):
            raise ValueError(f"{path}: 'config' and 'shards' must be objects")
        for name, entry in shards.items():
            # a shard is a file in this folder: no path may lead out of it
            if "/" in name or "\\" in name or name.startswith(".") or not name or \
                    not name.isprintable():  # fmt: skip
                raise ValueError(f"{path}: shard name {name!r:.80} is not a file name here")
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: shard {name!r:.80} must be an object")
        return cls(root, config, shards)

    def save(self) -> None:
        data = {"format": MANIFEST_FORMAT, "config": self.config, "shards": self.shards}
        atomic_write_text(self.root / MANIFEST, json.dumps(data, indent=1, sort_keys=True))

    def verified(self, name: str) -> bool:
        """Whether shard ``name`` is listed and its file's checksum matches."""
        entry = self.shards.get(name)
        path = self.root / name
        return bool(entry) and path.exists() and file_sha256(path) == entry["sha256"]

    def frames(self, split: str | None = None) -> int:
        return sum(e["frames"] for e in self.shards.values() if split in (None, e.get("split")))
