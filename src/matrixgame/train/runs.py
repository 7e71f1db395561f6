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

    folder = _latest_folder(run)
    try:
        weights = load_file(folder / "weights.safetensors")
    except Exception as err:  # missing, truncated: say which checkpoint
        raise ValueError(f"{folder}: unreadable checkpoint ({err})") from None
    config = _checkpoint_config(folder)
    if model is not None and config.get("model") != model:
        raise ValueError(f"{run}: a {config.get('model')!r} run, expected a `train {model}` run")
    return sub_state(weights, prefix), config


def latest_config(run: str | Path) -> dict:
    """The config of a run's latest checkpoint, without its weights."""
    return _checkpoint_config(_latest_folder(run))


def _latest_folder(run: str | Path) -> Path:
    root = Path(run) / "checkpoints"
    if not (root / "latest").exists():
        raise ValueError(f"{run}: no checkpoint (train it first)")
    name = (root / "latest").read_text(errors="replace").strip()
    if not name.isdigit():  # a step folder of this run, nothing else
        raise ValueError(f"{root / 'latest'} names {name!r:.40}, not a checkpoint step")
    return root / name


def _checkpoint_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except Exception as err:  # missing, truncated, not JSON: say which checkpoint
        raise ValueError(f"{folder}: unreadable checkpoint ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{folder}/config.json must hold an object")
    return config


def trained_vae(run: str | Path):
    """The EMA VAE of a `train vae` run (or of its adversarial or light decoder stage), with the
    training size (height, width); latents normalised by the run's statistics when it has
    them (``latent_stats.json``, or the decoder stage's config)."""
    from dataclasses import replace

    from matrixgame.models.vae import VAE_PRESETS, WanVAE

    state, config = latest_weights(run, model="vae")
    prefix = config.get("weights_prefix", "")
    state = sub_state(state, prefix)
    from matrixgame.models.loading import load_checked

    stats = Path(run) / "latent_stats.json"
    if "latent_mean" not in config and stats.exists():
        config = {**config, **json.loads(stats.read_text())}
    preset = VAE_PRESETS[_preset(config, VAE_PRESETS, run)]
    size = config.get("height"), config.get("width")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096 for v in size):
        raise ValueError(f"{run}: height and width must be integers in 1..4096, got {size}")
    if "latent_mean" in config:
        stats = [config.get("latent_mean"), config.get("latent_std")]
        if not all(isinstance(s, list) and all(_number(v) for v in s) for s in stats):
            raise ValueError(f"{run}: latent_mean and latent_std must be lists of numbers")
        preset = replace(preset, latent_mean=tuple(stats[0]), latent_std=tuple(stats[1]))
    rate = config.get("pruning_rate")
    if rate:  # a light decoder (accel/light_vae.py): the full encoder
        rates = rate if isinstance(rate, list) else [rate]
        if not all(_number(r) and 0 < r < 1 for r in rates):
            raise ValueError(f"{run}: pruning_rate must lie in (0, 1), one number or one per "
                             f"decoder stage, got {rate!r:.80}")  # fmt: skip
        # a list (JSON's) becomes VAEConfig's tuple there
        preset = replace(preset, pruning_rate=rate, prune_encoder=False)
    vae = WanVAE(preset).eval()
    load_checked(vae, state, f"{run}'s weights")
    return vae, size


def _preset(config: dict, presets: dict, run) -> str:
    name = config.get("preset")
    if not isinstance(name, str) or name not in presets:
        raise ValueError(f"{run}: preset {name!r:.40} is none of {sorted(presets)}")
    return name


def _number(value) -> bool:
    import math

    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
    from matrixgame.models.loading import load_checked

    dit = MatrixGameDiT(DIT_PRESETS[_preset(config, DIT_PRESETS, run)]).eval()
    load_checked(dit, {k: v.to(torch.float32) for k, v in state.items()}, f"{run}'s weights")
    try:
        window = WindowConfig(**config["window"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{run}: its window must hold WindowConfig fields ({err})") from None
    step = int((Path(run) / "checkpoints" / "latest").read_text())
    for key in ("teacher",) if config.get("model") == "dmd" else ("latents",):
        if not isinstance(config.get(key), str):
            raise ValueError(f"{run}: its config names no {key} (a folder)")
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
