"""The DiT's inference dtype, chosen by what the hardware multiplies fast.

The release runs its DiT in bf16 with the modulation, norms and RoPE in float32 (our model
does the same: :mod:`matrixgame.models.dit`); the sampler integrates in float32 either way
(:func:`matrixgame.inference.rollout.denoise_window`). bf16 pays where the hardware has it:
CUDA GPUs from Ampere on, and CPUs with AVX-512 BF16 or AMX (the default world's student
runs a step ~1.7x faster there: BENCHMARKS.md). On a plain AVX2 CPU bf16 matmuls crawl
(~1 GFLOP/s, DESIGN.md), so ``"auto"`` keeps float32 there and says so. The decoder is not
cast: the light decoder was measured slower in bf16 on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from matrixgame.accel import capability

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CHOICES = ("auto", *DTYPES)


@dataclass(frozen=True)
class PrecisionReport:
    """The dtype chosen for the DiT, and why."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def choose_dtype(choice: str = "auto", device: str | torch.device = "cpu") -> PrecisionReport:
    """The DiT's dtype for ``choice`` (``"auto"``, ``"float32"`` or ``"bfloat16"``) on
    ``device``: ``"auto"`` is bf16 where the hardware multiplies it fast, else float32."""
    if choice not in CHOICES:
        raise ValueError(f"dtype must be one of {CHOICES}, got {choice!r}")
    device = torch.device(device)
    if device.type == "cuda":
        fast = torch.cuda.is_bf16_supported()
        hardware = f"CUDA {torch.cuda.get_device_name(device)}"
    else:
        fast = capability.fast_bf16()
        hardware = f"CPU {capability.cpu_capability()}"
    if choice != "auto":
        slow = "" if fast or choice == "float32" else f"; slow: {hardware} has no fast bf16"
        return PrecisionReport(DTYPES[choice], f"{choice} asked for{slow}")
    if fast:
        return PrecisionReport(torch.bfloat16, f"{hardware} multiplies bf16 fast")
    return PrecisionReport(torch.float32, f"{hardware} has no fast bf16: float32")


def cast_dit(dit: nn.Module, choice: str = "auto") -> PrecisionReport:
    """Cast ``dit`` in place to the dtype :func:`choose_dtype` picks on its device; returns
    the report."""
    device = next(dit.parameters()).device
    report = choose_dtype(choice, device)
    dit.to(report.dtype)
    return report


def model_dtype(model) -> torch.dtype:
    """The dtype a model computes in (its first floating parameter's; float32 if none)."""
    parameters = model.parameters() if isinstance(model, nn.Module) else ()
    for p in parameters:
        if p.is_floating_point():
            return p.dtype
    return torch.float32
