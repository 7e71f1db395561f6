"""Reading finished training runs back: the latest checkpoint's EMA weights and the config
the trainer wrote beside them (``<run>/checkpoints/<step>/{weights.safetensors,
config.json}``, ``<run>/checkpoints/latest``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from matrixgame.data.shards import Manifest


def sub_state(state: dict, prefix: str) -> dict:
    """The entries of a state dict under ``prefix`` (``"ema."``, ``"student."``), renamed
    without it."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def latest_weights(run: str | Path, prefix: str = "ema.",
                   model: str | None = None) -> tuple[dict, dict]:  # fmt: skip
    """(state dict, config) of a training run's latest checkpoint; ``model`` ("vae", "dit",
    "idm") checks the run trained that kind of model."""
    from safetensors.torch import load_file

    root = Path(run) / "checkpoints"
    if not (root / "latest").exists():
        raise ValueError(f"{run}: no checkpoint (train it first)")
    folder = root / (root / "latest").read_text().strip()
    weights = load_file(folder / "weights.safetensors")
    config = json.loads((folder / "config.json").read_text())
    if model is not None and config.get("model") != model:
        raise ValueError(f"{run}: a {config.get('model')!r} run, expected a `train {model}` run")
    return sub_state(weights, prefix), config


def trained_vae(run: str | Path):
    """The EMA VAE of a `train vae` run (or of its adversarial or light decoder stage), with the
    training size (height, width); latents normalised by the run's statistics when it has
    them (``latent_stats.json``, or the decoder stage's config)."""
    from dataclasses import replace

    from matrixgame.models.vae import VAE_PRESETS, WanVAE

    state, config = latest_weights(run, model="vae")
    prefix = config.get("weights_prefix", "")
    state = sub_state(state, prefix)
    stats = Path(run) / "latent_stats.json"
    if "latent_mean" not in config and stats.exists():
        config = {**config, **json.loads(stats.read_text())}
    preset = VAE_PRESETS[config["preset"]]
    if "latent_mean" in config:
        preset = replace(preset, latent_mean=tuple(config["latent_mean"]),
                         latent_std=tuple(config["latent_std"]))  # fmt: skip
    if config.get("pruning_rate"):  # a light decoder (accel/light_vae.py): the full encoder
        preset = replace(preset, pruning_rate=config["pruning_rate"], prune_encoder=False)
    vae = WanVAE(preset).eval()
    vae.load_state_dict(state)
    return vae, (config["height"], config["width"])


def vae_of(latents: str | Path):
    """The VAE a latent cache was made with, or None when its run is gone."""
    run = Manifest.load(latents).config.get("vae")
    try:
        return trained_vae(run)[0]
    except (TypeError, ValueError, FileNotFoundError):
        return None


@dataclass
class World:
    """A trained world model: the DiT, the VAE its latents came from, its training windows
    and frame size."""

    name: str
    dit: object
    vae: object
    window: object
    height: int
    width: int
    step: int
    meta: dict = field(default_factory=dict)  # the run's config.json


def trained_world(run: str | Path, name: str | None = None) -> World:
    """The EMA DiT of a `train dit` run with its VAE (found through the run's latent cache),
    or the EMA student of a `matrixgame distill` run (its config names its few-step
    sampler)."""
    import torch

    from matrixgame.data.windows import WindowConfig
    from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT

    state, config = latest_weights(run)
    if config.get("model") == "dmd":
        state = sub_state(state, "student.")
    elif config.get("model") != "dit":
        raise ValueError(f"{run}: a {config.get('model')!r} run, expected a `train dit` or "
                         f"`distill` run")  # fmt: skip
    dit = MatrixGameDiT(DIT_PRESETS[config["preset"]]).eval()
    dit.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    window = WindowConfig(**config["window"])
    step = int((Path(run) / "checkpoints" / "latest").read_text())
    if config.get("model") == "dmd":  # the teacher's VAE and frame size
        from matrixgame.worlds.shipped import open_world

        teacher = open_world(config["teacher"])
        meta = {**(teacher.meta or {}), **config}
        return World(name or Path(run).name, dit, teacher.vae, window, teacher.height,
                     teacher.width, step, meta)  # fmt: skip
    cache = Manifest.load(config["latents"]).config
    if not cache.get("vae"):
        raise ValueError(f"{run}: its latent cache {config['latents']} names no VAE run")
    vae, (height, width) = trained_vae(cache["vae"])
    return World(name or Path(run).name, dit, vae, window, height, width, step, config)
