"""One denoising step of the DiT: time, tokens/s and achieved FLOP/s against the measured
matmul peak of the same device and dtype.

The release's window: 5 memory + 4 past + 10 current latents (19) in one self-attention.
CPU: the ``tiny`` preset at 128x96 and 256x192 frames (16x VAE, 2x2 patches); CUDA (when
present): also ``mg3-5b`` at 704x1280 in bf16.

    python benchmarks/dit_step.py [--device cpu|cuda] [--dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import median_ms, print_table, write_json
from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048) -> float:
    """Measured GFLOP/s of an n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else None
    ms = median_ms(lambda: a @ a, repeat=10, sync=sync)
    return 2 * n**3 / ms / 1e6


def step_inputs(cfg, height: int, width: int, device, dtype, memory=5, past=4, current=10):
    lh, lw = height // 16, width // 16
    x = torch.randn(1, cfg.in_dim, past + current, lh, lw, device=device, dtype=dtype)
    t = torch.tensor([[0.0] * past + [700.0] * current], device=device)
    frames = 4 * (past + current)
    kwargs = dict(
        keyboard=torch.zeros(1, frames, 6, device=device, dtype=dtype),
        mouse=torch.zeros(1, frames, 2, device=device, dtype=dtype),
        plucker=torch.randn(
            1, cfg.plucker_channels, memory + past + current, lh, lw, device=device, dtype=dtype
        ),
        memory=torch.randn(1, cfg.in_dim, memory, lh, lw, device=device, dtype=dtype),
        keyboard_memory=-torch.ones(1, memory, 6, device=device, dtype=dtype),
        mouse_memory=torch.ones(1, memory, 2, device=device, dtype=dtype),
        memory_index=list(range(memory)),
        first_index=memory,
    )
    tokens = (memory + past + current) * (lh // 2) * (lw // 2)
    return x, t, kwargs, tokens


def bench(preset: str, height: int, width: int, device: str, dtype: torch.dtype) -> dict:
    cfg = DIT_PRESETS[preset]
    torch.manual_seed(0)
    model = MatrixGameDiT(cfg).to(device=device, dtype=dtype).eval()
    x, t, kwargs, tokens = step_inputs(cfg, height, width, device, dtype)
    sync = torch.cuda.synchronize if device == "cuda" else None
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            model(x, t, **kwargs)
        ms = median_ms(lambda: model(x, t, **kwargs), repeat=5, warmup=2, sync=sync)
    flops = counter.get_total_flops()
    peak = matmul_peak(device, dtype)
    achieved = flops / ms / 1e6
    return {
        "preset": preset,
        "frames": f"{width}x{height}",
        "dtype": str(dtype).replace("torch.", ""),
        "params": f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M",
        "tokens": tokens,
        "ms/step": f"{ms:.1f}",
        "tokens/s": f"{tokens / ms * 1e3:,.0f}",
        "GFLOP/step": f"{flops / 1e9:.1f}",
        "GFLOP/s": f"{achieved:,.0f}",
        "matmul peak GFLOP/s": f"{peak:,.0f}",
        "of peak": f"{achieved / peak:.0%}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    runs = [("tiny", 96, 128), ("tiny", 192, 256)]
    if args.device == "cuda":
        runs.append(("mg3-5b", 704, 1280))
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for preset, h, w in runs:
            if preset == "mg3-5b" and dtype != torch.bfloat16:
                continue
            rows.append(bench(preset, h, w, args.device, dtype))
    print(f"device: {args.device}; one step = 5 memory + 4 past + 10 current latents")
    cols = ["preset", "frames", "dtype", "params", "tokens", "ms/step", "tokens/s"]
    cols += ["GFLOP/step", "GFLOP/s", "matmul peak GFLOP/s", "of peak"]
    print_table(rows, cols)
    print(f"wrote {write_json(f'dit_step_{args.device}', {'rows': rows})}")


if __name__ == "__main__":
    main()
