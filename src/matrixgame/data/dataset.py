"""Training dataset: windows of frames, poses and actions at the latent schedule, with the
clip's earlier frames that overlap the window most as memory candidates."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from matrixgame.data.shards import CLIP_FORMAT, Manifest, file_sha256
from matrixgame.geometry.frustum import Frusta, ViewVolume, overlap_sampled


@dataclass(frozen=True)
class _Clip:
    path: Path
    frames: int
    view: ViewVolume
    c2w: torch.Tensor  # [N, 4, 4] float32
    frusta: Frusta


class ClipDataset(torch.utils.data.Dataset):
    """Windows of ``frames`` = 1 + f k consecutive frames from a recorded dataset (f =
    ``frames_per_latent``, the VAE's temporal factor: its latent schedule).

    An item is a dict:

    - ``frames`` uint8 ``[T, H, W, 3]``, ``c2w`` float32 ``[T, 4, 4]``, ``K`` ``[4]``,
      ``keyboard`` ``[T, 6]``, ``mouse`` ``[T, 2]`` (action t follows frame t);
    - ``memory_frames`` uint8 ``[M, H, W, 3]``, ``memory_c2w`` ``[M, 4, 4]``,
      ``memory_index`` ``[M]`` (frame index in the clip), ``memory_overlap`` ``[M]`` and
      ``memory_valid`` ``[M]`` bool: the M frames of the same clip before the window (on the
      latent grid 1 + f j) whose view volumes overlap the window's last frame most;
    - ``clip`` (shard name) and ``start`` (first frame index).

    Shards that cannot be read, or (with ``verify``) whose checksum differs from the
    manifest, are skipped with a warning; ``skipped`` counts them.
    """

    def __init__(
        self,
        root: str | Path,
        frames: int = 17,
        split: str | None = "train",
        stride: int | None = None,
        memory: int = 0,
        verify: bool = False,
        near_m: float = 0.1,
        far_m: float = 30.0,
        frames_per_latent: int = 4,
    ) -> None:
        f = frames_per_latent
        if f < 1:
            raise ValueError(f"frames_per_latent must be >= 1, got {f}")
        if frames < 1 or (frames - 1) % f:
            raise ValueError(f"frames must be 1 + {f}k (the VAE's latent schedule), got {frames}")
        if memory < 0:
            raise ValueError("memory must be >= 0")
        manifest = Manifest.load(root)
        if not manifest.shards:
            raise ValueError(f"{root}: no recorded clips (missing or empty manifest.json)")
        self.window, self.memory, self.frames_per_latent = frames, memory, f
        self.stride = stride or frames
        self.skipped = 0
        self.clips: list[_Clip] = []
        problems = []
        for name, entry in sorted(manifest.shards.items()):
            if split is not None and entry.get("split") != split:
                continue
            path = Path(root) / name
            try:
                if verify and file_sha256(path) != entry["sha256"]:
                    raise ValueError("checksum differs from the manifest")
                self.clips.append(self._open(path, near_m, far_m))
            except (OSError, ValueError) as err:
                self.skipped += 1
                problems.append(f"{name}: {err}")
        if problems:
            warnings.warn(
                f"skipped {self.skipped} unreadable clip(s): " + "; ".join(problems), stacklevel=2
            )
        self.index = [
            (c, s)
            for c, clip in enumerate(self.clips)
            for s in range(0, clip.frames - frames + 1, self.stride)
        ]

    @staticmethod
    def _open(path: Path, near_m: float, far_m: float) -> _Clip:
        import json

        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                if header.get("format") != CLIP_FORMAT:
                    raise ValueError(f"not a {CLIP_FORMAT} file")
                meta = json.loads(header["meta"])
                c2w = f.get_tensor("c2w").float()
                K = f.get_tensor("K")
                n = f.get_slice("frames").get_shape()[0]
                f.get_slice("frames")[n - 1 : n]  # touches the end: fails on a truncated file
        except ValueError:
            raise
        except Exception as err:
            raise ValueError(f"unreadable ({type(err).__name__}: {err})") from err
        scale = meta.get("metres_per_unit", 1.0)
        view = ViewVolume(
            tuple(K.tolist()), meta["width"], meta["height"], near_m / scale, far_m / scale
        )
        return _Clip(path, n, view, c2w, Frusta.from_poses(c2w, view))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        c, start = self.index[i]
        clip = self.clips[c]
        end = start + self.window
        with safe_open(str(clip.path), framework="pt") as f:
            item = {
                "frames": f.get_slice("frames")[start:end],
                "keyboard": f.get_slice("keyboard")[start:end],
                "mouse": f.get_slice("mouse")[start:end],
                "K": f.get_tensor("K").float(),
            }
            item["c2w"] = clip.c2w[start:end]
            if self.memory:
                item.update(self._memory(f, clip, start, end - 1))
        item["clip"], item["start"] = clip.path.name, start
        return item

    def _memory(self, f, clip: _Clip, start: int, last: int) -> dict:
        cands = torch.arange(1, start, self.frames_per_latent)  # on the latent grid 1 + f j
        m = self.memory
        index = torch.zeros(m, dtype=torch.long)
        overlap = torch.zeros(m)
        valid = torch.zeros(m, dtype=torch.bool)
        if len(cands):
            score = overlap_sampled(clip.c2w[last], clip.frusta[cands], clip.view)
            k = min(m, len(cands))
            top = score.topk(k)
            index[:k], overlap[:k], valid[:k] = cands[top.indices], top.values, True
        frames = torch.stack([f.get_slice("frames")[j : j + 1][0] for j in index.tolist()])
        return {
            "memory_frames": frames,
            "memory_c2w": clip.c2w[index],
            "memory_index": index,
            "memory_overlap": overlap,
            "memory_valid": valid,
        }
