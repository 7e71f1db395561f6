"""Shared test inputs: random rigid poses and the golden reference tensors."""

from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from matrixgame.geometry import pose_from_angles

GOLDEN = Path(__file__).parent / "golden"


@torch.no_grad()
def off_init(model: torch.nn.Module, scale: float = 0.02) -> torch.nn.Module:
    """``model`` with every weight moved by ``scale`` x Gaussian noise (in place), so that
    layers a trained model has off their zero initialisation (actions, memory, timestep
    modulation) matter in a test."""
    for p in model.parameters():
        p.add_(scale * torch.randn_like(p))
    return model


def golden(name: str = "cam_utils_reference.safetensors") -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / name)


def random_poses(n: int, generator: torch.Generator, extent: float = 10.0) -> torch.Tensor:
    """``[n, 4, 4]`` float64 poses: positions in a cube of side ``extent``, any yaw, roll,
    pitch in [-60, 60] degrees."""
    pos = (torch.rand(n, 3, generator=generator, dtype=torch.float64) - 0.5) * extent
    yaw = torch.rand(n, generator=generator, dtype=torch.float64) * 360 - 180
    pitch = torch.rand(n, generator=generator, dtype=torch.float64) * 120 - 60
    roll = torch.rand(n, generator=generator, dtype=torch.float64) * 360 - 180
    return pose_from_angles(pos, yaw, pitch, roll)


def make_dataset(root: Path, clips: int = 2, frames: int = 24, height: int = 48, width: int = 64):
    """A small dataset folder of synthetic clips (smooth moving patterns), no game needed."""
    import numpy as np

    from matrixgame.data.shards import Clip, Manifest, write_clip

    manifest = Manifest(root)
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    for c in range(clips):
        phase = g.uniform(0, 6.28, size=3)
        video = np.stack(
            [
                np.stack(
                    [
                        127 + 100 * np.sin(xx / 7.0 + t * 0.3 + phase[k] + yy / 11.0)
                        for k in range(3)
                    ],
                    -1,
                )
                for t in range(frames)
            ]
        ).astype(np.uint8)
        c2w = np.tile(np.eye(4), (frames, 1, 1))
        c2w[:, 0, 3] = np.arange(frames)
        meta = {"width": width, "height": height, "metres_per_unit": 1.0, "split": "train"}
        clip = Clip(
            video,
            c2w,
            np.array([width / 2, width / 2, width / 2, height / 2]),
            np.zeros((frames, 6), np.float32),
            np.zeros((frames, 2), np.float32),
            np.arange(frames),
            None,
            meta,
        )
        name = f"synthetic_{c:03d}.safetensors"
        sha = write_clip(root / name, clip)
        manifest.shards[name] = {"sha256": sha, "frames": frames, "split": "train"}
    manifest.save()
    return root


def make_world_folder(root: Path, starts: int = 2, current: int = 1, fps: float = 17.5) -> Path:
    """A shipped-world folder of random tiny models (64x64 frames, 4x4x16 latents) with
    ``starts`` session starts along a short walk, as `world build` would ship one."""
    from matrixgame.data.windows import WindowConfig
    from matrixgame.inference.session import Start
    from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT
    from matrixgame.models.vae import VAE_PRESETS, WanVAE
    from matrixgame.worlds import shipped
    from matrixgame.worlds.recipe import WorldSpec

    torch.manual_seed(0)
    vae, dit = WanVAE(VAE_PRESETS["tiny"]), MatrixGameDiT(DIT_PRESETS["tiny"])
    shipped.save_component(root, "vae", vae.state_dict())
    shipped.save_component(root, "dit", dit.state_dict())
    window = WindowConfig(past=2, current=current, memory=2)
    meta = {"preset": "tiny", "latent_mean": [0.0] * 16, "latent_std": [1.0] * 16,
            "height": 64, "width": 64}  # fmt: skip
    dit_meta = {"preset": "tiny", "window": asdict(window)}
    config = shipped.world_config("tiny-test", meta, 1, dit_meta, 1, fps, "doom",
                                  {"name": "euler", "steps": 2, "shift": 3.0}, frame_skip=2,
                                  version=WorldSpec.version)  # fmt: skip
    shipped.write_config(root, config)
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(starts):
        latents = 3
        n = 1 + 4 * (latents - 1)
        pos = torch.zeros(n, 3, dtype=torch.float64)
        pos[:, 0] = torch.arange(n) * 4.0 + 100 * i
        pos[:, 2] = 41.0
        frame_c2w = pose_from_angles(pos, torch.zeros(n, dtype=torch.float64) + 30 * i)
        out.append(Start(torch.randn(16, latents, 4, 4, generator=g),
                         frame_c2w[[0, 4, 8]], frame_c2w, torch.zeros(n, 6), torch.zeros(n, 2),
                         torch.tensor([32.0, 32.0, 32.0, 32.0]), name=f"spawn {i}"))  # fmt: skip
    shipped.save_starts(root, out)
    return root


def add_light_decoder(folder: Path, rate: float = 0.75) -> Path:
    """Give a world folder (``make_world_folder``'s) a light decoder: its own decoder pruned
    by ``rate`` (not distilled), as `world build --only light` ships one."""
    from matrixgame.accel.light_vae import prune_decoder
    from matrixgame.worlds import shipped

    config = shipped.read_config(folder)
    vae = shipped.load_vae(folder)[0]
    light = prune_decoder(vae, rate)
    shipped.save_component(folder, "light", light.state_dict())
    shipped.write_config(folder, {**config, "light": {"pruning_rate": rate, "step": 0}})
    return folder


def make_world_and_latents(root: Path) -> Path:
    """``root/world`` (a tiny world, one latent per step) and ``root/latents``: its VAE's
    latent cache of two synthetic 41-frame clips (11 latents each)."""
    from matrixgame.train.latents import cache_latents
    from matrixgame.worlds.shipped import load_world

    world = make_world_folder(root / "world", current=1)
    data = make_dataset(root / "data", clips=2, frames=41, height=64, width=64)
    cache_latents(data, load_world(world).vae, root / "latents", 64, 64, progress=False)
    return root
