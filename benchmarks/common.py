"""Shared benchmark plumbing: timing, machine description, table and JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from matrixgame.io import atomic_write_text

RESULTS = Path(__file__).parent / "results"


def median_ms(fn: Callable[[], object], repeat: int = 20, warmup: int = 3, sync=None) -> float:
    """Median wall time of ``fn`` in milliseconds (``sync`` runs after each call, e.g. CUDA)."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def interleaved_median_ms(fns: dict[str, Callable[[], object]], repeat: int = 20,
                          warmup: int = 3) -> dict[str, float]:  # fmt: skip
    """Median wall time of each of ``fns`` in milliseconds, the calls taken in turn (one of
    each per round), so a machine whose speed drifts during the run slows all alike and
    their ratios hold."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from matrixgame.accel.capability import cpu_capability

    info = {"cpu": cpu, "capability": cpu_capability(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}  # fmt: skip
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name()
    return info


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).rjust(w) for c, w in zip(columns, widths, strict=True)))


def write_json(name: str, payload: dict) -> Path:
    path = RESULTS / f"{name}.json"
    atomic_write_text(path, json.dumps({"machine": machine(), **payload}, indent=2))
    return path
