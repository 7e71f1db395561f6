"""What this machine's CPU does fast. CPUs of the same kind differ (DESIGN.md): with AVX-512
BF16/VNNI or AMX, bf16 and int8 matmuls beat fp32; on a plain AVX2 CPU bf16 matmuls crawl
and int8 ``_int_mm`` is ~20x slower than fp32. Faster dtypes are chosen from this, and every
figure names it."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

FLAGS = ("avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx512f", "avx2")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The flags of :data:`FLAGS` that ``/proc/cpuinfo`` lists (empty where it is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    words = set(text.split())
    return frozenset(f for f in FLAGS if f in words)


def fast_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def fast_int8() -> bool:
    return bool({"avx512_vnni", "amx_int8"} & cpu_flags())


def cpu_capability() -> str:
    """PyTorch's CPU kernel level plus the flags that matter, e.g. ``AVX512 +bf16 +vnni``."""
    level = torch.backends.cpu.get_cpu_capability()
    extra = [name for name, fast in (("bf16", fast_bf16()), ("vnni", fast_int8())) if fast]
    return " ".join([level, *(f"+{e}" for e in extra)])
