"""Physics-based action annotation on Doom recordings: labels inferred from camera poses
alone against the buttons the agent really pressed. Goal: >= 98% per-frame keyboard accuracy.

    python benchmarks/annotation.py [--maps MAP10 E1M1 ...] [--frames 4000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import print_table, write_json
from matrixgame.data.engine.recorder import RecordConfig, plan_jobs, record_clip
from matrixgame.data.shards import read_clip
from matrixgame.geometry import Trajectory, infer_actions, keyboard_accuracy
from matrixgame.geometry.kinematics import doom_kinematics


def annotate(path: Path) -> dict:
    clip = read_clip(path, keys=[])
    kin = doom_kinematics(clip.meta["frame_skip"], clip.meta["run"])
    keyboard, mouse = infer_actions(Trajectory.from_c2w(torch.from_numpy(clip.c2w)), kin)
    truth_kb = torch.from_numpy(clip.keyboard[:-1]).double()
    truth_mouse = torch.from_numpy(clip.mouse[:-1]).double()
    dz = np.abs(np.diff(clip.c2w[:, 2, 3]))
    level = torch.from_numpy(dz < 2.0)  # frames without a step, a drop or a lift
    keys = ("W", "S", "A", "D")
    per_key = {
        k: float((keyboard[:, i] == truth_kb[:, i]).double().mean()) for i, k in enumerate(keys)
    }
    return {
        "map": clip.meta["map"],
        "frames": len(keyboard),
        "clip ended": clip.meta["ended"],
        "keyboard acc": f"{keyboard_accuracy(keyboard, truth_kb):.4f}",
        "acc, level frames": f"{keyboard_accuracy(keyboard[level], truth_kb[level]):.4f}",
        "level share": f"{float(level.double().mean()):.2f}",
        **{f"{k} acc": f"{v:.3f}" for k, v in per_key.items()},
        "mouse max err": f"{float((mouse - truth_mouse).abs().max()):.1e}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # the eight maps with the largest area walkable from the start (doors stay closed)
    default_maps = ["MAP10", "E1M8", "E1M6", "E4M6", "MAP19", "E2M1", "E4M1", "E1M1"]
    parser.add_argument("--maps", nargs="+", default=default_maps)
    parser.add_argument("--frames", type=int, default=4000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.maps:
            cfg = RecordConfig(
                out=tmp,
                maps=(m,),
                frames=args.frames,
                clip_frames=args.frames,
                loop_fraction=0.0,
                depth=False,
            )
            name, _ = record_clip(plan_jobs(cfg)[0])
            rows.append(annotate(Path(tmp) / name))
    cols = ["map", "frames", "clip ended", "keyboard acc", "acc, level frames", "level share"]
    cols += ["W acc", "S acc", "A acc", "D acc", "mouse max err"]
    total = sum(r["frames"] for r in rows)
    overall = sum(r["frames"] * float(r["keyboard acc"]) for r in rows) / total
    rows.append({"map": "all", "frames": total, "keyboard acc": f"{overall:.4f}"})
    print_table(rows, cols)
    print(f"wrote {write_json('annotation', {'rows': rows})}")


if __name__ == "__main__":
    main()
