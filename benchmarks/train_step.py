"""Training throughput: samples/s of one optimiser step (forward, backward, AdamW) of the
tiny presets on the CPU, for the VAE (5 frames at 128x96) and the world model (2 memory +
2 past + 4 current latents at 128x96 frames), batch 4.

    python benchmarks/train_step.py
"""

from __future__ import annotations

import torch

from common import median_ms, print_table, write_json
from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT
from matrixgame.models.vae import VAE_PRESETS, WanVAE
from matrixgame.train.dit_task import DiTTask
from matrixgame.train.vae_task import VAETask

BATCH = 4


def row(model: str, sample: str, ms: float, frames: int) -> dict:
    per_s = BATCH / ms * 1e3
    return {"model": model, "sample": sample, "ms/step": f"{ms:.0f}",
            "samples/s": f"{per_s:.1f}", "frames/s": f"{frames * per_s:.0f}"}  # fmt: skip


def step_fn(model, task, batch):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss, _ = task.loss(model, batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def vae_row() -> dict:
    torch.manual_seed(0)
    model = WanVAE(VAE_PRESETS["tiny"])
    batch = {"frames": torch.randint(0, 255, (BATCH, 5, 96, 128, 3), dtype=torch.uint8)}
    ms = median_ms(step_fn(model, VAETask(96, 128), batch), repeat=5, warmup=1)
    return row("vae tiny", "5 frames 128x96", ms, frames=5)


def dit_row(grad_checkpointing: bool) -> dict:
    torch.manual_seed(0)
    cfg = DIT_PRESETS["tiny"]
    model = MatrixGameDiT(cfg)
    model.gradient_checkpointing = grad_checkpointing
    h, w, m, p, c = 6, 8, 2, 2, 4
    batch = {
        "memory": torch.randn(BATCH, 16, m, h, w), "past": torch.randn(BATCH, 16, p, h, w),
        "current": torch.randn(BATCH, 16, c, h, w), "memory_index": torch.tensor([[1, 2]] * BATCH),
        "first_index": torch.tensor([4] * BATCH), "keyboard": torch.zeros(BATCH, 4 * (p + c), 6),
        "mouse": torch.zeros(BATCH, 4 * (p + c), 2),
        "plucker": torch.randn(BATCH, cfg.plucker_channels, m + p + c, h, w),
    }  # fmt: skip
    task = DiTTask(image_only=0.0, drop_memory=0.0, drop_actions=0.0)
    ms = median_ms(step_fn(model, task, batch), repeat=5, warmup=1)
    name = "dit tiny" + (" (grad checkpointing)" if grad_checkpointing else "")
    return row(name, f"{m}+{p}+{c} latents, 128x96", ms, frames=4 * c)


def main() -> None:
    rows = [vae_row(), dit_row(False), dit_row(True)]
    print(f"CPU, {torch.get_num_threads()} threads, fp32, batch {BATCH}, one AdamW step")
    print_table(rows, ["model", "sample", "ms/step", "samples/s", "frames/s"])
    print(f"wrote {write_json('train_step_cpu', {'rows': rows})}")


if __name__ == "__main__":
    main()
