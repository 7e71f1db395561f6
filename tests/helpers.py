"""Shared test inputs: random rigid poses and the golden reference tensors."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from matrixgame.geometry import pose_from_angles

GOLDEN = Path(__file__).parent / "golden"


def golden(name: str = "cam_utils_reference.safetensors") -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / name)


def random_poses(n: int, generator: torch.Generator, extent: float = 10.0) -> torch.Tensor:
    """``[n, 4, 4]`` float64 poses: positions in a cube of side ``extent``, any yaw, roll,
    pitch in [-60, 60] degrees."""
    pos = (torch.rand(n, 3, generator=generator, dtype=torch.float64) - 0.5) * extent
    yaw = torch.rand(n, generator=generator, dtype=torch.float64) * 360 - 180
    pitch = torch.rand(n, generator=generator, dtype=torch.float64) * 120 - 60
    roll = torch.rand(n, generator=generator, dtype=torch.float64) * 360 - 180
    return pose_from_angles(pos, yaw, pitch, roll)


def make_dataset(root: Path, clips: int = 2, frames: int = 24, height: int = 48, width: int = 64):
    """A small dataset folder of synthetic clips (smooth moving patterns), no game needed."""
    import numpy as np

    from matrixgame.data.shards import Clip, Manifest, write_clip

    manifest = Manifest(root)
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    for c in range(clips):
        phase = g.uniform(0, 6.28, size=3)
        video = np.stack(
            [
                np.stack(
                    [
                        127 + 100 * np.sin(xx / 7.0 + t * 0.3 + phase[k] + yy / 11.0)
                        for k in range(3)
                    ],
                    -1,
                )
                for t in range(frames)
            ]
        ).astype(np.uint8)
        c2w = np.tile(np.eye(4), (frames, 1, 1))
        c2w[:, 0, 3] = np.arange(frames)
        meta = {"width": width, "height": height, "metres_per_unit": 1.0, "split": "train"}
        clip = Clip(
            video,
            c2w,
            np.array([width / 2, width / 2, width / 2, height / 2]),
            np.zeros((frames, 6), np.float32),
            np.zeros((frames, 2), np.float32),
            np.arange(frames),
            None,
            meta,
        )
        name = f"synthetic_{c:03d}.safetensors"
        sha = write_clip(root / name, clip)
        manifest.shards[name] = {"sha256": sha, "frames": frames, "split": "train"}
    manifest.save()
    return root
