"""Memory retrieval cost: one query camera against 1k / 10k / 100k candidate frames.

Compares the exact polyhedron-clipping overlap (the reference) with the sampled estimator at
several sample counts, side by side on the same random poses, and reports the estimator's
mean absolute error against the exact value. Goal: 10k candidates under 5 ms on the CPU.

    python benchmarks/frustum_overlap.py [--sizes 1000 10000 100000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from common import median_ms, print_table, write_json
from matrixgame.geometry import (
    Frusta,
    ViewVolume,
    frustum_samples,
    overlap_exact,
    overlap_sampled,
    pose_from_angles,
)

VIEW = ViewVolume.from_fov(160, 120, 90.0, near=0.1, far=30.0)


def random_cameras(n: int, g: torch.Generator) -> torch.Tensor:
    """Cameras anywhere in a 40 m square, 3 m of height, any heading, pitch within 30 deg."""
    pos = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([40, 40, 3])
    yaw = torch.rand(n, generator=g, dtype=torch.float64) * 360
    pitch = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 60
    return pose_from_angles(pos, yaw, pitch)


def exact_row(query: torch.Tensor, cands: torch.Tensor, n: int, limit: int) -> tuple[dict, list]:
    """Time the exact method on up to ``limit`` candidates; project to ``n`` linearly."""
    m = min(n, limit)
    start = time.perf_counter()
    values = [overlap_exact(query, c, VIEW) for c in cands[:m]]
    per = (time.perf_counter() - start) / m * 1e3
    row = {"candidates": n, "method": "exact (clipping)", "ms": f"{per * n:.1f}"}
    row["note"] = "" if m == n else f"projected from {m}"
    return row, values


def sampled_rows(query, cands, exact, samples_list, device, sync) -> list[dict]:
    """Time the estimator at each sample count (and the release's grid) on one candidate set."""
    n = len(cands)
    frusta = Frusta.from_poses(cands.float().to(device), VIEW)
    q = query.float().to(device)
    rows = []
    for pattern, count in [("volume", s) for s in samples_list] + [("grid", 1000)]:
        samples = frustum_samples(VIEW, count, pattern).float().to(device)

        def run(samples=samples):
            return overlap_sampled(q, frusta, VIEW, samples)

        ms = median_ms(run, sync=sync)
        mae = (run().cpu().double()[: len(exact)] - exact).abs().mean().item()
        name = f"sampled {count}" + (" (release grid)" if pattern == "grid" else "")
        if pattern == "volume" and count == 128:
            name += " (default)"
        rows.append(
            {"candidates": n, "method": name, "ms": f"{ms:.2f}", "mae_vs_exact": f"{mae:.4f}"}
        )
    poses = cands.float().to(device)
    build = median_ms(lambda: Frusta.from_poses(poses, VIEW), sync=sync)
    rows.append({"candidates": n, "method": "build Frusta (once per frame)", "ms": f"{build:.2f}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--samples", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--exact-limit", type=int, default=1000, help="exact pairs to time")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    g = torch.Generator().manual_seed(0)
    query = pose_from_angles(torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64), 30.0, 5.0)
    rows = []
    for n in args.sizes:
        cands = random_cameras(n, g)
        row, exact = exact_row(query, cands, n, args.exact_limit)
        rows.append(row)
        rows += sampled_rows(query, cands, torch.tensor(exact), args.samples, device, sync)
    print(f"device: {device}; view 160x120, 90 deg, 0.1..30 m; one query, median of 20 runs")
    print_table(rows, ["candidates", "method", "ms", "mae_vs_exact", "note"])
    path = write_json(f"frustum_overlap_{device.type}", {"device": str(device), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
