"""Training throughput: one optimiser step (forward, backward, AdamW) on the CPU, batch 4:
the VAE presets on 9-frame clips at 128x96 (tiny: 5 frames), the world-model presets on
windows of memory + past + current latents at 128x96 frames (tiny: 2 + 2 + 4, as its runs;
doom: 2 + 2 + 1, the default world's play window), fp32 and bf16 autocast side by side.

    python benchmarks/train_step.py [--presets tiny doom] [--no-bf16]
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from common import median_ms, print_table, write_json
from matrixgame.accel.capability import cpu_capability
from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT
from matrixgame.models.vae import VAE_PRESETS, WanVAE
from matrixgame.train.dit_task import DiTTask
from matrixgame.train.vae_task import VAETask

BATCH = 4
WINDOWS = {"tiny": (2, 2, 4), "doom": (2, 2, 1)}  # memory, past, current latents
VAE_FRAMES = {"tiny": 5, "doom": 9}


def row(model: str, sample: str, dtype: str, ms: float, frames: int) -> dict:
    per_s = BATCH / ms * 1e3
    return {"model": model, "sample": sample, "dtype": dtype, "ms/step": f"{ms:.0f}",
            "samples/s": f"{per_s:.1f}", "frames/s": f"{frames * per_s:.0f}"}  # fmt: skip


def step_fn(model, task, batch, bf16: bool):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        autocast = torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss, _ = task.loss(model, batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def vae_row(preset: str, bf16: bool) -> dict:
    torch.manual_seed(0)
    model, n = WanVAE(VAE_PRESETS[preset]), VAE_FRAMES[preset]
    batch = {"frames": torch.randint(0, 255, (BATCH, n, 96, 128, 3), dtype=torch.uint8)}
    ms = median_ms(step_fn(model, VAETask(96, 128), batch, bf16), repeat=5, warmup=1)
    return row(f"vae {preset}", f"{n} frames 128x96", "bf16" if bf16 else "fp32", ms, n)


def dit_row(preset: str, bf16: bool, grad_checkpointing: bool = False) -> dict:
    torch.manual_seed(0)
    cfg = DIT_PRESETS[preset]
    model = MatrixGameDiT(cfg)
    model.gradient_checkpointing = grad_checkpointing
    z = cfg.in_dim
    f = VAE_PRESETS[preset].spatial_factor  # the world's VAE of the same name
    h, w = 96 // f, 128 // f
    m, p, c = WINDOWS[preset]
    batch = {
        "memory": torch.randn(BATCH, z, m, h, w), "past": torch.randn(BATCH, z, p, h, w),
        "current": torch.randn(BATCH, z, c, h, w), "memory_index": torch.tensor([[1, 2]] * BATCH),
        "first_index": torch.tensor([4] * BATCH), "keyboard": torch.zeros(BATCH, 4 * (p + c), 6),
        "mouse": torch.zeros(BATCH, 4 * (p + c), 2),
        "plucker": torch.randn(BATCH, cfg.plucker_channels, m + p + c, h, w),
    }  # fmt: skip
    task = DiTTask(image_only=0.0, drop_memory=0.0, drop_actions=0.0, drop_past=0.0)
    ms = median_ms(step_fn(model, task, batch, bf16), repeat=5, warmup=1)
    name = f"dit {preset}" + (" (grad checkpointing)" if grad_checkpointing else "")
    return row(name, f"{m}+{p}+{c} latents, 128x96", "bf16" if bf16 else "fp32", ms, 4 * c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "doom"])
    parser.add_argument("--no-bf16", action="store_true", help="fp32 rows only")
    args = parser.parse_args()
    dtypes = (False,) if args.no_bf16 else (False, True)
    rows = []
    for preset in args.presets:
        rows += [vae_row(preset, bf16) for bf16 in dtypes]
        rows += [dit_row(preset, bf16) for bf16 in dtypes]
    rows.append(dit_row(args.presets[0], False, grad_checkpointing=True))
    print(f"CPU ({cpu_capability()}), {torch.get_num_threads()} threads, batch {BATCH}, "
          "one AdamW step")  # fmt: skip
    print_table(rows, list(rows[0]))
    print(f"wrote {write_json('train_step_cpu', {'rows': rows, 'capability': cpu_capability()})}")


if __name__ == "__main__":
    main()
