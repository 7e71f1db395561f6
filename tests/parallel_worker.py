"""Run by tests/test_parallel.py under ``torchrun --nproc-per-node 3`` (gloo, CPU).

1. Every rank: the DiT split over all 3 ranks by spatial position (4 heads padded to 6,
   16 token positions as 6 + 5 + 5) equals the whole model on each rank.
2. The N+1 layout (2 DiT ranks + 1 decoder) generates a tiny world's script; the decoder
   rank saves the frames to OUT/frames.safetensors, rank 0 the log to OUT/log.json.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from matrixgame.data.action_script import load_action_script
from matrixgame.inference.parallel import SequenceParallelDiT, generate_parallel
from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT
from matrixgame.worlds.shipped import load_starts, load_world


def check_split_forward() -> None:
    torch.manual_seed(0)
    model = MatrixGameDiT(DIT_PRESETS["tiny"]).eval()
    with torch.no_grad():  # a trained-looking model: nothing zero-initialised
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 3, 8, 8, generator=g)  # 4 x 4 tokens a frame
    kwargs = {
        "keyboard": (torch.rand(2, 12, 6, generator=g) > 0.5).float(),
        "mouse": torch.randn(2, 12, 2, generator=g),
        "plucker": torch.randn(2, 6 * 256, 5, 8, 8, generator=g),
        "memory": torch.randn(2, 16, 2, 8, 8, generator=g),
        "keyboard_memory": -torch.ones(2, 2, 6),
        "mouse_memory": torch.ones(2, 2, 2),
        "memory_index": torch.tensor([1, 3]),
        "first_index": 5,
    }
    t = torch.tensor([[0.0, 0.0, 700.0], [0.0, 0.0, 300.0]])
    with torch.no_grad():
        whole = model(x, t, None, **kwargs)
        split = SequenceParallelDiT(model)(x, t, None, **kwargs)
    error = (split - whole).abs().max().item()
    assert error < 1e-4, f"rank {dist.get_rank()}: split forward differs by {error}"
    for block in model.blocks:
        block.self_attn.sequence_parallel = None


def main(world_folder: str, script_path: str, out: str) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    check_split_forward()
    world = load_world(world_folder)
    start = load_starts(world_folder)[0]
    script = load_action_script(script_path)
    frames = []
    log = generate_parallel(world, start, script, frames.append, steps=2, seed=3)
    if frames:
        video = torch.from_numpy(np.concatenate(frames))
        save_file({"frames": video.contiguous()}, str(Path(out) / "frames.safetensors"))
    if log is not None:
        (Path(out) / "log.json").write_text(json.dumps(log))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
