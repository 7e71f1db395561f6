"""Shipped worlds: the weights of a trained world in one folder of the repository.

``worlds/<name>/`` holds ``vae.safetensors`` (encoder and decoder), ``dit.safetensors`` (the
teacher's EMA weights), optionally ``discriminator.safetensors`` (to continue the decoder's
adversarial training), all bf16, and ``config.json``: the presets, latent statistics, frame
size and rate, training window, sampler settings, kinematics preset, and per component the
training step it was taken at. Nothing but safetensors and JSON is read.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from matrixgame.io import atomic_path, atomic_write_text

WORLD_FORMAT = "matrixgame-world/1"
# critic: kept, not shipped; light: the VAE with its decoder pruned (encoder unchanged)
COMPONENTS = ("vae", "dit", "discriminator", "student", "critic", "light")
START_KEYS = ("latents", "c2w", "frame_c2w", "keyboard", "mouse", "K")
# the runs whose held-out checks (step, score and other figures) config.json keeps as
# ``curves``: the autoencoder's and the decoder's PSNR (dB), the world model's minus its
# flow-matching loss
CURVES = ("vae", "decoder", "dit")


def worlds_root() -> Path:
    """Where shipped worlds live: ``$MATRIXGAME_WORLDS``, else ``worlds/`` of this checkout."""
    env = os.environ.get("MATRIXGAME_WORLDS")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "worlds"


def world_folder(name_or_path: str | Path) -> Path:
    """A shipped world's folder from its name (``doom-e1m1``) or a path to it."""
    path = Path(name_or_path)
    if not (path / "config.json").exists():
        path = worlds_root() / str(name_or_path)
    if not (path / "config.json").exists():
        known = sorted(p.name for p in worlds_root().glob("*") if (p / "config.json").exists())
        raise ValueError(f"no world {str(name_or_path)!r} (shipped worlds: {known or 'none'}; "
                         f"a folder with config.json also works)")  # fmt: skip
    return path


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable world config ({err})") from err
    if not isinstance(config, dict) or config.get("format") != WORLD_FORMAT:
        raise ValueError(f"{path}: not a {WORLD_FORMAT} config")
    for key in ("vae", "dit", "height", "width", "fps", "window", "sampler"):
        if key not in config:
            raise ValueError(f"{path}: missing {key!r}")
    _check_config(config, path)
    return config


def _check_config(config: dict, path: Path) -> None:
    """Types and ranges of every field a world is built from (a clear error, not a KeyError
    from deep inside the model constructors)."""
    import math

    from matrixgame.data.windows import WindowConfig
    from matrixgame.diffusion.samplers import SAMPLERS
    from matrixgame.inference.rollout import Guidance
    from matrixgame.models.dit import DIT_PRESETS
    from matrixgame.models.vae import VAE_PRESETS

    def fail(message: str) -> ValueError:
        return ValueError(f"{path}: {message}")

    def number(value, name: str, low: float = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value) or value <= low:  # fmt: skip
            raise fail(f"{name} must be a finite number above {low:g}, got {value!r:.40}")
        return value

    vae, dit = config["vae"], config["dit"]
    if not isinstance(vae, dict) or vae.get("preset") not in VAE_PRESETS:
        raise fail(f"vae.preset must be one of {sorted(VAE_PRESETS)}")
    if not isinstance(dit, dict) or dit.get("preset") not in DIT_PRESETS:
        raise fail(f"dit.preset must be one of {sorted(DIT_PRESETS)}")
    z = VAE_PRESETS[vae["preset"]].z_dim
    for key in ("latent_mean", "latent_std"):
        stats = vae.get(key)
        if not isinstance(stats, list) or len(stats) != z:
            raise fail(f"vae.{key} must list {z} numbers")
        for v in stats:
            number(v, f"vae.{key}", -math.inf if key == "latent_mean" else 0.0)
    for key in ("height", "width"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 4096:
            raise fail(f"{key} must be an integer in 1..4096, got {value!r:.40}")
    version = config.get("version")  # the recipe's (worlds/recipe.py); absent before it was
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or version < 1):  # fmt: skip
        raise fail(f"version must be an integer from 1 up, got {version!r:.40}")
    number(config["fps"], "fps")
    window, sampler = config["window"], config["sampler"]
    try:
        w = WindowConfig(**window)
    except (TypeError, ValueError) as err:
        raise fail(f"window must hold WindowConfig fields ({err})") from None
    for key, low in (("past", 0), ("current", 1), ("memory", 0), ("stride", 1),
                     ("frames_per_latent", 1)):  # fmt: skip
        value = getattr(w, key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 64:
            raise fail(f"window.{key} must be an integer in {low}..64, got {value!r:.40}")
    if w.frames_per_latent != VAE_PRESETS[vae["preset"]].temporal_factor:
        raise fail(
            f"window.frames_per_latent is {w.frames_per_latent}, the {vae['preset']} "
            f"VAE's temporal factor {VAE_PRESETS[vae['preset']].temporal_factor}"
        )
    action = DIT_PRESETS[dit["preset"]].action
    if action is not None and action.frames_per_latent != w.frames_per_latent:
        raise fail(
            f"the {dit['preset']} DiT takes {action.frames_per_latent} frames per latent, "
            f"the window {w.frames_per_latent}"
        )
    number(w.near_m, "window.near_m")
    if number(w.far_m, "window.far_m") <= w.near_m or not isinstance(w.sink, bool):
        raise fail("window.far_m must exceed near_m, and window.sink be true or false")
    if not isinstance(sampler, dict) or sampler.get("name", "euler") not in SAMPLERS:
        raise fail(f"sampler.name must be one of {sorted(SAMPLERS)}")
    steps = sampler.get("steps", 4)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
        raise fail(f"sampler.steps must be an integer in 1..1000, got {steps!r:.40}")
    number(sampler.get("shift", 3.0), "sampler.shift")
    _check_past_noise(sampler, "sampler", fail)
    try:
        Guidance.from_meta(sampler.get("guidance"))
    except (TypeError, ValueError) as err:
        raise fail(f"sampler.guidance: {err}") from None
    if not isinstance(config.get("kinematics", "doom"), str | None):
        raise fail("kinematics must be a preset name")
    if "student" in config:
        _check_sampler(config["student"].get("sampler") if isinstance(config["student"], dict)
                       else None, "student.sampler", fail, number)  # fmt: skip
    _check_log(config.get("training_log", []), fail)
    _check_curves(config.get("curves", {}), fail)
    if "light" in config:
        light = config["light"]
        rate = light.get("pruning_rate") if isinstance(light, dict) else None
        if rate not in (0.5, 0.75) and not (
            isinstance(rate, list)
            and rate
            and all(type(r) in (int, float) and 0 < r < 1 for r in rate)
        ):
            raise fail("light.pruning_rate must be 0.5 or 0.75 (MG-LightVAE's), or a list of "
                       "rates in (0, 1), one per decoder stage")  # fmt: skip


# a training-log row's fields, their types and how an error names them (the recipe's rows;
# the model card prints them)
LOG_FIELDS = {"date": (str, "a string"), "device": (str, "a string"),
              "threads": (int, "an integer"), "seconds": (int | float, "a number"),
              "trained": (dict, "an object"), "steps": (dict, "an object")}  # fmt: skip


def _check_log(log, fail) -> None:
    """The training log (a row per recipe call), which a fresh work folder continues."""
    if not isinstance(log, list):
        raise fail("training_log must be a list of rows")
    for i, row in enumerate(log):
        if not isinstance(row, dict):
            raise fail(f"training_log[{i}] must be an object")
        for key, (kind, says) in LOG_FIELDS.items():
            value = row.get(key)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise fail(f"training_log[{i}].{key} must be {says}, got {value!r:.40}")
        figures = row.get("figures") or {}
        numbers = isinstance(figures, dict) and all(
            isinstance(figures.get(k, 0.0), int | float) for k in ("psnr", "ssim"))  # fmt: skip
        if not numbers:
            raise fail(f"training_log[{i}].figures must be an object with numbers")


def _check_curves(curves, fail) -> None:
    """Each run's held-out checks: objects with an integer step and number figures."""
    if not isinstance(curves, dict) or not set(curves) <= set(CURVES):
        raise fail(f"curves must be an object with some of the keys {list(CURVES)}")
    for stage, curve in curves.items():
        if not isinstance(curve, list):
            raise fail(f"curves.{stage} must be a list of checks")
        for i, check in enumerate(curve):
            ok = isinstance(check, dict) and isinstance(check.get("step"), int) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in check.values()
            ) and "score" in check  # fmt: skip
            if not ok:
                raise fail(f"curves.{stage}[{i}] must be an object of numbers with an integer "
                           f"step and a score, got {check!r:.60}")  # fmt: skip


def _check_past_noise(sampler: dict, name: str, fail) -> None:
    """The noise level a sampler puts on the past (``DiTTask.past_noise``): in [0, 1)."""
    level = sampler.get("past_noise", 0.0)
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0 <= level < 1:
        raise fail(f"{name}.past_noise must be a noise level in [0, 1), got {level!r:.40}")


def _check_sampler(sampler, name: str, fail, number) -> None:
    """A distilled student's sampler: a known name, and its sigmas from 1 down to 0."""
    import math

    from matrixgame.diffusion.samplers import SAMPLERS

    if not isinstance(sampler, dict) or sampler.get("name") not in SAMPLERS:
        raise fail(f"{name}.name must be one of {sorted(SAMPLERS)}")
    number(sampler.get("shift", 3.0), f"{name}.shift")
    _check_past_noise(sampler, name, fail)
    sigmas = sampler.get("sigmas")
    ok = isinstance(sigmas, list) and 2 <= len(sigmas) <= 1001 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in sigmas)  # fmt: skip
    if not ok or not all(a > b for a, b in zip(sigmas[:-1], sigmas[1:], strict=True)) or \
            not 0 <= sigmas[-1] < sigmas[0] <= 1:  # fmt: skip
        raise fail(f"{name}.sigmas must be 2..1001 numbers falling from <= 1 to >= 0")


def component_weights(folder: str | Path, component: str) -> dict[str, torch.Tensor] | None:
    """A component's state dict in fp32, or None when the world does not ship it."""
    path = Path(folder) / f"{component}.safetensors"
    if not path.exists():
        return None
    return {k: v.float() for k, v in load_file(path).items()}


def save_component(folder: str | Path, component: str, state: dict[str, torch.Tensor]) -> Path:
    """Write one component as bf16 safetensors (floating tensors; others unchanged)."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; choose from {COMPONENTS}")
    tensors = {
        k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous().cpu()
        for k, v in state.items()
    }
    path = Path(folder) / f"{component}.safetensors"
    return _write(path, tensors, {"format": WORLD_FORMAT, "component": component})


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a world's safetensors file, unless it already holds the same tensors and
    metadata: the recipe re-exports a kept version on every call, and a rewrite of equal
    tensors changes the header's order (git would see a new version)."""
    if not _holds(path, tensors, metadata):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=metadata)
    return path


def _holds(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    """Whether the safetensors file ``path`` exists and holds exactly ``tensors`` and
    ``metadata``."""
    if not path.exists():
        return False
    try:
        with safe_open(path, "pt") as f:
            if f.metadata() != metadata:
                return False
        stored = load_file(path)
    except Exception:  # unreadable or truncated: rewrite it
        return False
    return stored.keys() == tensors.keys() and all(
        stored[k].dtype == v.dtype and torch.equal(stored[k], v) for k, v in tensors.items()
    )


def write_config(folder: str | Path, config: dict) -> Path:
    path = Path(folder) / "config.json"
    atomic_write_text(path, json.dumps({"format": WORLD_FORMAT, **config}, indent=1) + "\n")
    return path


def build_vae(config: dict, light: bool = False):
    """The world's VAE (fp32, eval mode) with its latent statistics, weights not loaded;
    ``light``: with its light (pruned) decoder."""
    from matrixgame.models.vae import VAE_PRESETS, WanVAE

    spec = config["vae"]
    if light:
        spec = {**spec, "pruning_rate": config["light"]["pruning_rate"]}
    preset = replace(VAE_PRESETS[spec["preset"]], latent_mean=tuple(spec["latent_mean"]),
                     latent_std=tuple(spec["latent_std"]))  # fmt: skip
    if spec.get("pruning_rate"):  # a light decoder beside the full encoder
        preset = replace(preset, pruning_rate=spec["pruning_rate"], prune_encoder=False)
    return WanVAE(preset).eval()


def build_dit(config: dict):
    from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT

    return MatrixGameDiT(DIT_PRESETS[config["dit"]["preset"]]).eval()


def has_student(name_or_path: str | Path) -> bool:
    """Whether a shipped world ships a distilled few-step student beside its world model."""
    folder = world_folder(name_or_path)
    return (folder / "student.safetensors").exists() and "student" in read_config(folder)


def has_light(name_or_path: str | Path) -> bool:
    """Whether a shipped world ships a light (pruned) decoder beside its full one."""
    folder = world_folder(name_or_path)
    return (folder / "light.safetensors").exists() and "light" in read_config(folder)


def load_world(name_or_path: str | Path, student: bool = False, light: bool = False):
    """The ready world (:class:`matrixgame.train.runs.World`) of a shipped folder: DiT and VAE
    in fp32 on the CPU, the training window, frame size; ``meta`` is its config.json.
    ``student``: the distilled few-step student in place of the world model (``meta``'s
    sampler is then the student's); ``light``: the light decoder in place of the full one."""
    from matrixgame.data.windows import WindowConfig
    from matrixgame.train.runs import World

    folder = world_folder(name_or_path)
    config = read_config(folder)
    if student and "student" not in config:
        raise ValueError(f"{folder}: this world ships no student (config.json has none)")
    vae, dit = _vae_of(folder, config, light), build_dit(config)
    _load_component(folder, "student" if student else "dit", dit)
    window = WindowConfig(**config["window"])
    name, step = config.get("name", folder.name), int(config["dit"].get("step", 0))
    if student:
        config = {**config, "sampler": config["student"]["sampler"]}
        name, step = f"{name} student", int(config["student"].get("step", 0))
    return World(name, dit, vae, window, config["height"], config["width"], step, config)


def load_vae(name_or_path: str | Path, light: bool = False):
    """(VAE, config) of a shipped world, in fp32 on the CPU; ``light``: its light decoder."""
    folder = world_folder(name_or_path)
    config = read_config(folder)
    return _vae_of(folder, config, light).eval(), config


def _vae_of(folder: Path, config: dict, light: bool):
    """The world's VAE with its weights (the light decoder's where ``light``)."""
    if light and "light" not in config:
        raise ValueError(f"{folder}: this world ships no light decoder (config.json has none)")
    vae = build_vae(config, light)
    _load_component(folder, "light" if light else "vae", vae)
    return vae


def _load_component(folder: Path, component: str, model) -> None:
    from matrixgame.models.loading import load_checked

    state = component_weights(folder, component)
    if state is None:
        raise ValueError(f"{folder}: {component}.safetensors is missing")
    load_checked(model, state, str(folder / f"{component}.safetensors"))


def world_config(name: str, vae_meta: dict, vae_step: int, dit_meta: dict, dit_step: int,
                 fps: float, kinematics: str, sampler: dict, **extra) -> dict:  # fmt: skip
    """The config.json of a world assembled from its VAE and DiT runs' configs."""
    return {
        "name": name,
        "vae": {"preset": vae_meta["preset"], "latent_mean": vae_meta["latent_mean"],
                "latent_std": vae_meta["latent_std"], "step": vae_step,
                **({"pruning_rate": vae_meta["pruning_rate"]} if "pruning_rate" in vae_meta
                   else {})},
        "dit": {"preset": dit_meta["preset"], "step": dit_step,
                "error_buffer": dit_meta.get("error_buffer", 1.0)},
        "height": vae_meta["height"], "width": vae_meta["width"], "fps": fps,
        "window": dit_meta["window"], "sampler": sampler, "kinematics": kinematics,
        **extra,
    }  # fmt: skip


def open_world(path: str | Path, name: str | None = None):
    """A world from a `train dit` or `distill` run folder, or a shipped world (folder or
    name); ``doom-e1m1:student`` is a shipped world's distilled student (its own sampler)."""
    from matrixgame.train.runs import trained_world

    if (Path(path) / "checkpoints").exists():
        return trained_world(path, name)
    folder, student = world_part(path, "student")
    world = load_world(folder, student=student)
    world.name = name or world.name
    return world


def world_part(spec: str | Path, part: str) -> tuple[str, bool]:
    """``WORLD:part`` names a part of a shipped world (``doom-e1m1:student``): (the world,
    whether ``spec`` named ``part``); a path that exists as written is a world itself."""
    folder, colon, suffix = str(spec).rpartition(":")
    named = bool(colon) and suffix == part and not Path(spec).exists()
    return (folder if named else str(spec)), named


def save_starts(folder: str | Path, starts: list) -> Path:
    """``starts.safetensors``: session starts (:class:`matrixgame.inference.session.Start`),
    the context latents and poses of held-out trajectories, so a fresh clone can play."""
    tensors, names = {}, []
    for i, start in enumerate(starts):
        for key in START_KEYS:
            value = getattr(start, key)
            tensors[f"{i}.{key}"] = (value.to(torch.bfloat16) if key == "latents"
                                     else value.float()).contiguous()  # fmt: skip
        names.append(start.name)
    metadata = {"format": WORLD_FORMAT, "names": json.dumps(names)}
    return _write(Path(folder) / "starts.safetensors", tensors, metadata)


def load_starts(folder: str | Path) -> list:
    """The shipped starts of a world (an empty list when it ships none)."""
    from matrixgame.inference.session import Start

    path = world_folder(folder) / "starts.safetensors"
    if not path.exists():
        return []
    window = read_config(world_folder(folder))["window"]
    frames_per_latent = window.get("frames_per_latent", 4)
    with safe_open(str(path), framework="pt") as f:
        names = json.loads((f.metadata() or {}).get("names", "[]"))
        starts = []
        for i, name in enumerate(names):
            try:
                parts = {k: f.get_tensor(f"{i}.{k}") for k in START_KEYS}
            except Exception as err:  # a missing or renamed key: say which file
                raise ValueError(f"{path}: start {i} is incomplete ({err})") from err
            parts = {k: v.float() if k in ("latents", "keyboard", "mouse", "K") else v.double()
                     for k, v in parts.items()}  # fmt: skip
            starts.append(Start(**parts, name=name, frames_per_latent=frames_per_latent))
    return starts


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def choose_start(starts: list, spec: str | int | None, world=None):
    """One session start: a shipped start by index or name (default: the first), or an image
    file (``world`` needed to encode it), placed at the first shipped start's last pose and
    intrinsics (the map's spawn), or at the origin with a 90-degree view."""
    from matrixgame.inference.session import Start

    names = [s.name for s in starts]
    if spec is None or (isinstance(spec, int) and not isinstance(spec, bool)):
        index = 0 if spec is None else spec
        if not starts:
            raise ValueError("this world ships no starts; start from an image file instead")
        if not 0 <= index < len(starts):
            raise ValueError(f"start {index} does not exist; this world has starts 0.."
                             f"{len(starts) - 1}")  # fmt: skip
        return starts[index]
    spec = str(spec)
    if spec.isdigit():
        return choose_start(starts, int(spec), world)
    if spec in names:
        return starts[names.index(spec)]
    path = Path(spec)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"no start {spec!r}: give an index 0..{len(starts) - 1}, a name "
                         f"({names}) or an image file ({', '.join(IMAGE_SUFFIXES)})")  # fmt: skip
    if world is None:
        raise ValueError("a start from an image needs the world (to encode it)")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from err
    if starts:
        K, c2w = starts[0].K, starts[0].frame_c2w[-1]
    else:
        K, c2w = torch.tensor([world.width / 2, world.width / 2, world.width / 2,
                               world.height / 2]), None  # fmt: skip
    return Start.from_image(world.vae, pixels, K, world.height, world.width, c2w, name=path.name)
