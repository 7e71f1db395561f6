"""The default world shipped in the repository: its files exist, are within the size budget,
load (names and shapes checked), decode a frame and roll out a step on the CPU. This test
fails, never skips, when the files are missing or mis-shaped."""

import json

import numpy as np
import torch

from matrixgame.inference.session import WorldSession
from matrixgame.models.dit import DIT_PRESETS
from matrixgame.models.vae import VAE_PRESETS
from matrixgame.worlds import load, world_folder
from matrixgame.worlds.shipped import load_starts

NAME = "doom-e1m1"


def test_the_default_world_ships_within_budget():
    folder = world_folder(NAME)
    for name in ("vae.safetensors", "dit.safetensors", "config.json", "README.md",
                 "starts.safetensors"):  # fmt: skip
        assert (folder / name).exists(), f"{folder}/{name} is missing"
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert total <= 80 * 2**20, f"{folder} holds {total / 2**20:.1f} MB (budget 80 MB)"
    config = json.loads((folder / "config.json").read_text())
    assert config["vae"]["preset"] in VAE_PRESETS and config["dit"]["preset"] in DIT_PRESETS
    assert config["dit"]["step"] > 0 and "psnr" in config["figures"]


def test_the_default_world_decodes_and_steps_on_the_cpu():
    world = load(NAME)
    starts = load_starts(NAME)
    assert starts, "the world ships no starts"
    session = WorldSession(world, steps=2)
    context = session.reset(starts[0])
    assert context.shape[1:] == (world.height, world.width, 3) and context.dtype == np.uint8
    keys = torch.zeros(session.frames_per_step, 6)
    keys[:, 0] = 1  # walk forward
    seg = session.step(keys, torch.zeros(session.frames_per_step, 2))
    assert seg.frames.shape == (session.frames_per_step, world.height, world.width, 3)
    assert torch.isfinite(seg.latents).all()
    assert seg.frames.std() > 2  # an image, not a flat field


def test_the_default_worlds_light_decoder_decodes_a_start_close_to_the_full_one():
    from matrixgame.inference.session import decode_frames
    from matrixgame.models.vae import FeatureCache

    light, full = load(NAME, light=True), load(NAME)
    assert light.vae.config.pruning_rate == 0.75
    latents = load_starts(NAME)[0].latents
    frames = [decode_frames(w.vae, latents, FeatureCache()).astype(np.float64)
              for w in (light, full)]  # fmt: skip
    assert frames[0].shape == frames[1].shape
    mse = np.mean((frames[0] - frames[1]) ** 2)
    assert 10 * np.log10(255**2 / mse) > 28  # the same scene (32 dB at 600 steps)
