"""Walk an action script through the geometry core: poses, the inverse labels, and the memory
frames a streaming world would retrieve at each segment. Backs `matrixgame trajectory`."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from matrixgame.geometry.frustum import Frusta, ViewVolume, overlap_exact, topk_overlap
from matrixgame.geometry.kinematics import (
    KinematicsConfig,
    Trajectory,
    infer_actions,
    integrate_actions,
    keyboard_accuracy,
)


@dataclass(frozen=True)
class Retrieval:
    """Memory retrieved for the camera at ``frame``: past frames and their overlaps."""

    frame: int
    frames: list[int]
    overlaps: list[float]
    exact_top1: float


@dataclass(frozen=True)
class PathReport:
    trajectory: Trajectory  # T + 1 poses
    c2w: torch.Tensor  # [T + 1, 4, 4], positions in metres
    keyboard_accuracy: float  # inverse kinematics against the script
    mouse_error: float  # max |inferred - scripted| mouse units
    retrievals: list[Retrieval]


def analyse_path(
    keyboard: torch.Tensor,
    mouse: torch.Tensor,
    config: KinematicsConfig,
    view: ViewVolume,
    past_frames: int = 16,
    memory: int = 5,
    every: int = 40,
    start: Trajectory | None = None,
) -> PathReport:
    """Integrate actions ``keyboard [T, 6]``, ``mouse [T, 2]`` from ``start``, label the poses
    back into actions, and retrieve memory every ``every`` frames among frames older than
    ``past_frames`` (those the past window already covers)."""
    if past_frames < 0 or memory < 1 or every < 1:
        raise ValueError("need past_frames >= 0, memory >= 1, every >= 1")
    traj = integrate_actions(keyboard, mouse, config, start)
    inferred_kb, inferred_mouse = infer_actions(traj, config)
    scripted = torch.where(mouse.abs() >= config.mouse_dead_zone, mouse, torch.zeros_like(mouse))
    err = (inferred_mouse - scripted).abs()
    if config.pitch_limit is not None:  # a clamped pitch cannot be recovered from poses
        err = err[:, 1:]
    mouse_error = float(err.max()) if err.numel() else 0.0
    c2w = traj.c2w(config.metres_per_unit)
    frusta = Frusta.from_poses(c2w, view)
    retrievals = []
    for frame in range(every, len(c2w), every):
        older = frame - past_frames
        if older < 1:
            continue
        k = min(memory, older)
        idx, score = topk_overlap(c2w[frame], frusta[:older], view, k)
        exact = overlap_exact(c2w[frame], c2w[int(idx[0])], view)
        retrievals.append(Retrieval(frame, idx.tolist(), score.tolist(), exact))
    accuracy = keyboard_accuracy(inferred_kb, keyboard)
    return PathReport(traj, c2w, accuracy, mouse_error, retrievals)


def format_report(report: PathReport, config_name: str) -> str:
    traj = report.trajectory
    length = float(report.c2w[:, :3, 3].diff(dim=0).norm(dim=-1).sum())
    lines = [
        f"{len(traj) - 1} actions -> {len(traj)} poses (preset {config_name})",
        f"path length {length:.2f} m, "
        f"end at ({', '.join(f'{v:.2f}' for v in report.c2w[-1, :3, 3].tolist())}) m, "
        f"yaw {float(traj.yaw[-1]):.1f} deg, pitch {float(traj.pitch[-1]):.1f} deg",
        f"inverse kinematics: keyboard accuracy {report.keyboard_accuracy:.4f}, "
        f"max mouse error {report.mouse_error:.2e}",
        "",
        "memory retrieval (sampled frustum overlap; exact value for the best frame):",
        f"{'frame':>6} {'position (m)':>22} {'yaw':>7}  retrieved frames (overlap)",
    ]
    for r in report.retrievals:
        pos = ", ".join(f"{v:6.2f}" for v in report.c2w[r.frame, :3, 3].tolist())
        mem = ", ".join(f"{f} ({o:.2f})" for f, o in zip(r.frames, r.overlaps, strict=True))
        lines.append(
            f"{r.frame:>6} {pos:>22} {float(traj.yaw[r.frame]):7.1f}  {mem}  "
            f"[exact {r.exact_top1:.2f}]"
        )
    return "\n".join(lines)


def report_json(report: PathReport, keyboard: torch.Tensor, mouse: torch.Tensor) -> str:
    """Poses and actions as JSON: c2w [T+1, 4, 4] (metres), keyboard [T, 6], mouse [T, 2]."""
    return json.dumps(
        {
            "convention": "c2w, OpenCV camera (x right, y down, z forward), world z up, metres",
            "c2w": report.c2w.tolist(),
            "keyboard": keyboard.tolist(),
            "mouse": mouse.tolist(),
            "retrievals": [r.__dict__ for r in report.retrievals],
        }
    )
