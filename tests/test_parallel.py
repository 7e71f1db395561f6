"""The N+1 layout on CPU with gloo: the DiT split over ranks by spatial position (Ulysses
attention, padded heads) equals the whole model, and 2 DiT ranks + 1 decoder rank generate
the same frames as one process; `matrixgame generate` runs it under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from helpers import make_world_folder

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
SCRIPT = {"segments": [{"frames": 6, "keys": "W"}, {"frames": 5, "mouse": [0.0, 1.0]}]}


@pytest.mark.slow
def test_two_dit_ranks_and_a_decoder_generate_the_frames_of_one_process(tmp_path):
    from matrixgame.data.action_script import load_action_script
    from matrixgame.inference.generate import generate
    from matrixgame.inference.session import WorldSession
    from matrixgame.worlds.shipped import load_starts, load_world

    folder = make_world_folder(tmp_path / "world", current=2)
    script = tmp_path / "walk.json"
    script.write_text(json.dumps(SCRIPT))
    worker = Path(__file__).parent / "parallel_worker.py"
    done = subprocess.run([*TORCHRUN, str(worker), str(folder), str(script), str(tmp_path)],
                          capture_output=True, text=True, env=ENV, timeout=600)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    parallel = load_file(str(tmp_path / "frames.safetensors"))["frames"]
    log = json.loads((tmp_path / "log.json").read_text())

    world = load_world(folder)
    frames = []
    reference = generate(WorldSession(world, steps=2, seed=3), load_starts(folder)[0],
                         load_action_script(script), frames.append)  # fmt: skip
    single = np.concatenate(frames)
    assert parallel.shape == single.shape == (9 + 11, 64, 64, 3)  # the start's 9, then 11
    diff = np.abs(parallel.astype(int) - single.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # float rounding of the split matmuls
    assert log["c2w"] == reference["c2w"] and log["frames"] == reference["frames"]
    assert [s["memory_latents"] for s in log["steps"]] == \
        [s["memory_latents"] for s in reference["steps"]]  # fmt: skip


@pytest.mark.slow
def test_generate_under_torchrun_writes_the_video_from_the_decoder_rank(tmp_path):
    from matrixgame.media import read_video

    folder = make_world_folder(tmp_path / "world", current=2)
    script = tmp_path / "walk.json"
    script.write_text(json.dumps(SCRIPT))
    video, poses = tmp_path / "walk.mp4", tmp_path / "poses.json"
    cmd = [*TORCHRUN, "-m", "matrixgame.cli", "generate", str(script), "--world", str(folder),
           "--out", str(video), "--poses", str(poses), "--steps", "2", "--int8", "off"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "2 DiT ranks (Ulysses)" in done.stdout
    frames, fps = read_video(video)
    assert frames.shape == (20, 64, 64, 3) and fps == pytest.approx(17.5)
    assert json.loads(poses.read_text())["frames"] == 20
