"""Summaries of a recorded dataset: integrity, clip metadata, annotation quality, a contact
sheet of frames. Backs `matrixgame inspect`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from matrixgame.data.shards import Manifest, read_clip
from matrixgame.geometry.kinematics import (
    KinematicsConfig,
    Trajectory,
    infer_actions,
    keyboard_accuracy,
)


def summarise(root: str | Path) -> list[dict]:
    """One row per manifest entry; damaged clips are reported, not raised."""
    manifest = Manifest.load(root)
    if not manifest.shards:
        raise ValueError(f"{root}: no clips (missing or empty manifest.json)")
    rows = []
    for name, entry in sorted(manifest.shards.items()):
        row = {
            "clip": name,
            "source": entry.get("map") or entry.get("source", "?"),
            "split": entry.get("split", "?"),
            "agent": entry.get("agent", "-"),
            "view": entry.get("viewpoint", "?"),
            "frames": entry.get("frames", 0),
        }
        if not manifest.verified(name):
            rows.append({**row, "ended": "DAMAGED", "annotation": "-"})
            continue
        clip = read_clip(Path(root) / name, keys=[])
        kin = KinematicsConfig(**clip.meta["kinematics"])
        annotation = "-"
        if len(clip) > 1 and row["view"] == "first":
            kb, _ = infer_actions(Trajectory.from_c2w(torch.from_numpy(clip.c2w)), kin)
            truth = torch.from_numpy(clip.keyboard[:-1]).double()
            annotation = f"{keyboard_accuracy(kb, truth):.3f}"
        rows.append({**row, "ended": clip.meta.get("ended", "-"), "annotation": annotation})
    return rows


def contact_sheet(root: str | Path, out: str | Path, clips: int = 6, per_clip: int = 8) -> None:
    """A PNG grid: one row per clip (up to ``clips``), ``per_clip`` frames spread over it."""
    from PIL import Image

    manifest = Manifest.load(root)
    rows = []
    for name in sorted(manifest.shards)[:clips]:
        if not manifest.verified(name):
            continue
        frames = read_clip(Path(root) / name).frames
        idx = np.linspace(0, len(frames) - 1, per_clip).astype(int)
        rows.append(np.concatenate([frames[i] for i in idx], 1))
    if not rows:
        raise ValueError(f"{root}: no readable clips for a contact sheet")
    Image.fromarray(np.concatenate(rows, 0)).save(out)
