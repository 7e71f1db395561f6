"""Recording throughput: frames per second of one worker (one game process, one core),
agent, capture and shard writing included, at 160x120 and 320x240; then the whole recorder
with all cores. Goal: >= 1,000 frames/s per core at 160x120.

    python benchmarks/record.py [--frames 3000] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import print_table, write_json
from matrixgame.data.engine.recorder import RecordConfig, plan_jobs, record_clip, record_dataset


def one_worker(width: int, height: int, frames: int, depth: bool, out: Path) -> dict:
    cfg = RecordConfig(
        out=str(out),
        maps=("E1M1",),
        frames=frames,
        clip_frames=frames,
        width=width,
        height=height,
        depth=depth,
        loop_fraction=0.0,
    )
    job = plan_jobs(cfg)[0]
    record_clip(job)  # warm-up: level geometry, caches
    start = time.perf_counter()
    _, entry = record_clip(job)
    seconds = time.perf_counter() - start
    size = (out / job.name).stat().st_size
    return {
        "setup": f"1 worker, {width}x{height}" + (", depth" if depth else ""),
        "frames": entry["frames"],
        "frames/s": f"{entry['frames'] / seconds:.0f}",
        "MB/s written": f"{size / seconds / 1e6:.0f}",
    }


def all_workers(workers: int, frames: int, out: Path) -> dict:
    cfg = RecordConfig(
        out=str(out),
        maps=("E1M1", "MAP01"),
        frames=frames * workers,
        clip_frames=frames // 2,
        workers=workers,
        loop_fraction=0.0,
    )
    start = time.perf_counter()
    manifest = record_dataset(cfg, progress=False)
    seconds = time.perf_counter() - start
    return {
        "setup": f"record_dataset, {workers} workers, 160x120, depth (process start included)",
        "frames": manifest.frames(),
        "frames/s": f"{manifest.frames() / seconds:.0f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (w, h, depth) in enumerate([(160, 120, True), (160, 120, False), (320, 240, True)]):
            rows.append(one_worker(w, h, args.frames, depth, Path(tmp) / f"one{i}"))
        rows.append(all_workers(args.workers, args.frames, Path(tmp) / "all"))
    print_table(rows, ["setup", "frames", "frames/s", "MB/s written"])
    print(f"wrote {write_json('record', {'rows': rows})}")


if __name__ == "__main__":
    main()
