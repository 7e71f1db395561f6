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
