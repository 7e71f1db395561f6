"""Loading the released weights: the official Matrix-Game-3.0 directory layout.

    <root>/base_distilled_model/      (or base_model/) diffusers-style DiT folder:
        config.json                   WanModel constructor arguments
        diffusion_pytorch_model.safetensors, or shards + *.safetensors.index.json
    <root>/Wan2.2_VAE.pth             the Wan2.2 VAE
    <root>/MG-LightVAE.pth            50% pruned decoder (encoder: Wan2.2_VAE.pth)
    <root>/MG-LightVAE_v2.pth         75% pruned decoder
    <root>/models_t5_umt5-xxl-enc-bf16.pth, <root>/google/umt5-xxl/   text encoder, tokenizer

Safetensors are read as such; ``.pth`` files only with ``torch.load(weights_only=True)``.
Every load checks names and shapes and raises a ValueError that lists what is missing,
unexpected or mis-shaped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from matrixgame.models.actions import ActionConfig
from matrixgame.models.dit import DiTConfig, MatrixGameDiT
from matrixgame.models.text import T5_PRESETS, T5Config, T5Encoder, TextEncoder
from matrixgame.models.vae import VAEConfig, WanVAE

Tensor = torch.Tensor
VAE_FILES = {
    "wan2.2": "Wan2.2_VAE.pth",
    "light-50": "MG-LightVAE.pth",
    "light-75": "MG-LightVAE_v2.pth",
}
VAE_PRUNING = {"wan2.2": 0.0, "light-50": 0.5, "light-75": 0.75}

# config.json keys that carry no architecture (diffusers bookkeeping) or that we check
_IGNORED = {
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
    "model_type",
    "use_text_crossattn",
}


def dit_config_from_json(cfg: dict) -> DiTConfig:
    """The DiTConfig of a released ``config.json`` (WanModel's constructor arguments)."""
    cfg = dict(cfg)
    for key in _IGNORED:
        cfg.pop(key, None)
    if tuple(cfg.pop("window_size", (-1, -1))) != (-1, -1):
        raise ValueError("windowed attention (window_size != (-1, -1)) is not supported")
    action = cfg.pop("action_config", None) or None
    simple = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_len",
              "text_dim", "freq_dim", "eps", "qk_norm", "cross_attn_norm", "use_memory",
              "sigma_theta")  # fmt: skip
    kwargs = {k: cfg.pop(k) for k in simple if k in cfg}
    if "patch_size" in cfg:
        kwargs["patch_size"] = tuple(cfg.pop("patch_size"))
    if cfg:
        raise ValueError(f"config.json has settings this code does not know: {sorted(cfg)}")
    kwargs["action"] = _action_config(action, kwargs.get("dim", DiTConfig.dim)) if action else None
    return DiTConfig(**kwargs)


def _action_config(a: dict, dim: int) -> ActionConfig:
    a = dict(a)
    checks = {
        "img_hidden_size": dim,
        "enable_mouse": True,
        "enable_keyboard": True,
        "mouse_qk_dim_list": a.get("rope_dim_list", [8, 28, 28]),
    }
    for key, want in checks.items():
        if key in a and a.pop(key) != want:
            raise ValueError(f"action_config.{key} must be {want} for this implementation")
    a.pop("patch_size", None)
    a.pop("local_attn_size", None)  # unused by the released forward
    renames = {"heads_num": "heads", "vae_time_compression_ratio": "frames_per_latent"}
    kwargs = {renames.get(k, k): v for k, v in a.items()}
    for key in ("blocks", "rope_dim_list"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    unknown = set(kwargs) - set(ActionConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"action_config has settings this code does not know: {sorted(unknown)}")
    return ActionConfig(**kwargs)


def load_checked(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model`` after checking names and shapes; on a mismatch raise a
    ValueError naming the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: file {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:

        def show(name, items):
            more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
            return f"\n  {name} ({len(items)}): " + ", ".join(items[:10]) + more if items else ""

        raise ValueError(
            f"{source} does not fit the model:"
            + show("missing", missing)
            + show("unexpected", unexpected)
            + show("mis-shaped", shapes)
        )
    model.load_state_dict(state, assign=True)


def read_safetensors_dir(folder: str | Path) -> dict[str, Tensor]:
    """All tensors of a diffusers-style folder: one ``*.safetensors`` file, or the shards
    named by its ``*.safetensors.index.json``."""
    folder = Path(folder)
    index = sorted(folder.glob("*.safetensors.index.json"))
    if index:
        weight_map = json.loads(index[0].read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = [p.name for p in sorted(folder.glob("*.safetensors"))]
    if not files:
        raise ValueError(f"{folder}: no .safetensors weights")
    state: dict[str, Tensor] = {}
    for name in files:
        path = folder / name
        if not path.exists():
            raise ValueError(f"{folder}: shard {name} named by the index is missing")
        state.update(load_file(path))
    return state


def load_dit(folder: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> MatrixGameDiT:
    """The DiT of a released model folder (config.json + safetensors)."""
    folder = Path(folder)
    try:
        config = dit_config_from_json(json.loads((folder / "config.json").read_text()))
    except OSError as err:
        raise ValueError(f"{folder}: cannot read config.json ({err.strerror or err})") from err
    with torch.device("meta"):
        model = MatrixGameDiT(config)
    state = {k: v.to(dtype) for k, v in read_safetensors_dir(folder).items()}
    load_checked(model, state, str(folder))
    _rebuild_buffers(model)
    return model.to(device).eval()


def _rebuild_buffers(model: MatrixGameDiT) -> None:
    """RoPE rotations are not in a checkpoint: recompute them off the meta device."""
    from matrixgame.models.layers import rope_frequencies

    cfg = model.config
    sigma = cfg.sigma_theta if cfg.use_memory else 0.0
    model.freqs = rope_frequencies(cfg.head_dim, cfg.rope_positions, cfg.num_heads, sigma=sigma)


# -- VAE ---------------------------------------------------------------------------------------

_VAE_RENAMES = [  # MG-LightVAE's diffusers-style names -> Wan2.2 names (the release's rules)
    (r"^quant_conv\.", "conv1."),
    (r"^post_quant_conv\.", "conv2."),
    (r"^(encoder|decoder)\.conv_in\.", r"\1.conv1."),
    (r"\.mid_block\.resnets\.0\.", ".middle.0."),
    (r"\.mid_block\.attentions\.0\.", ".middle.1."),
    (r"\.mid_block\.resnets\.1\.", ".middle.2."),
    (r"\.norm_out\.", ".head.0."),
    (r"\.conv_out\.", ".head.2."),
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.downsamples.\1.downsamples.\2."),
    (r"^encoder\.down_blocks\.(\d+)\.downsampler\.", r"encoder.downsamples.\1.downsamples.2."),
    (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder.upsamples.\1.upsamples.\2."),
    (r"^decoder\.up_blocks\.(\d+)\.upsampler\.", r"decoder.upsamples.\1.upsamples.3."),
]
_RESNET = r"((?:down|up)samples\.\d+\.(?:down|up)samples\.\d+|middle\.[02])\."
_RESNET_TAILS = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3",
                 "conv2": "residual.6", "conv_shortcut": "shortcut"}  # fmt: skip


def normalise_vae_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map MG-LightVAE's diffusers-style names onto the Wan2.2 names; names already in Wan2.2
    form pass unchanged. Feature-projection heads (distillation only) are dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith("dynamic_feature_projection_heads."):
            continue
        for pattern, repl in _VAE_RENAMES:
            key = re.sub(pattern, repl, key)
        key = re.sub(
            _RESNET + r"(norm1|conv1|norm2|conv2|conv_shortcut)\.",
            lambda m: f"{m.group(1)}.{_RESNET_TAILS[m.group(2)]}.",
            key,
        )
        out[key] = value
    return out


def load_pth(path: str | Path, map_location="cpu"):
    """``torch.load(weights_only=True)``: tensors and plain containers only. A file that asks
    to import anything else (a pickle that would run code) is refused with the file's name
    and what it tried to import, and no advice to turn the guard off."""
    import pickle

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = found.group(1) if found else "an object that is not a tensor"
        raise ValueError(f"{path}: refused to load: the file asks to import {what}; only "
                         f"tensors and plain containers are read from .pth files. Convert "
                         f"trusted weights to safetensors instead.") from None  # fmt: skip
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: not a readable .pth file ({str(err)[:200]})") from None


def read_pth(path: str | Path) -> dict[str, Tensor]:
    """A foreign ``.pth`` state dict, read with ``weights_only=True`` (never unpickled
    freely, :func:`load_pth`), unwrapped from ``state_dict`` / ``gen_model`` / ``generator``
    as the release."""
    data = load_pth(path)
    for key in ("state_dict", "gen_model", "generator"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return data


def vae_config_from_state(state: dict[str, Tensor], pruning_rate: float = 0.0) -> VAEConfig:
    """Widths from the weights (the Wan2.2 layout: dim_mult 1, 2, 4, 4)."""
    z = state["conv2.weight"].shape[0]
    keep = 1.0 - pruning_rate
    dim = state["encoder.conv1.weight"].shape[0] if "encoder.conv1.weight" in state else None
    dec = state["decoder.conv1.weight"].shape[0] // 4
    full = VAEConfig()
    stats = {} if z == 48 else {"latent_mean": None, "latent_std": None}
    return VAEConfig(
        dim=round((dim or full.dim * keep) / keep),
        dec_dim=round(dec / keep),
        z_dim=z,
        pruning_rate=pruning_rate,
        **stats,
    )


def load_vae(path: str | Path, pruning_rate: float = 0.0, dtype=torch.float32) -> WanVAE:
    """A Wan2.2 VAE (or pruned MG-LightVAE) from its ``.pth``. A light checkpoint without an
    encoder loads its decoder only; encode with the full Wan2.2 VAE then (as the release)."""
    state = {k: v.to(dtype) for k, v in normalise_vae_keys(read_pth(path)).items()}
    config = vae_config_from_state(state, pruning_rate)
    with torch.device("meta"):
        model = WanVAE(config)
    if not any(k.startswith("encoder.") for k in state):
        model.encoder = None
        model.conv1 = None
    load_checked(model, state, str(path))
    model.latent_mean = torch.tensor(config.latent_mean or (0.0,) * config.z_dim).view(
        1, -1, 1, 1, 1
    )
    model.latent_std = torch.tensor(config.latent_std or (1.0,) * config.z_dim).view(1, -1, 1, 1, 1)
    return model.eval()


T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"


def load_t5(path: str | Path, config: T5Config | None = None, dtype=torch.float32) -> T5Encoder:
    """The umT5 encoder from its released ``.pth`` (names without prefix)."""
    state = {k: v.to(dtype) for k, v in read_pth(path).items()}
    with torch.device("meta"):
        model = T5Encoder(config or T5_PRESETS["umt5-xxl"])
    load_checked(model, state, str(path))
    return model.eval()


@dataclass
class Pretrained:
    dit: MatrixGameDiT
    vae: WanVAE  # decodes (full or light)
    encoder: WanVAE  # encodes (always the full Wan2.2 VAE)
    text: TextEncoder | None = None  # prompts -> contexts, when asked for


def from_pretrained(
    root: str | Path,
    model: str = "base_distilled_model",
    vae: str = "wan2.2",
    dtype: torch.dtype = torch.float32,
    device="cpu",
    text: bool = False,
) -> Pretrained:
    """The official Matrix-Game-3.0 directory: DiT ``<root>/<model>/``, a VAE (``wan2.2``,
    ``light-50`` or ``light-75``) and, with ``text``, the umT5 encoder and its tokenizer."""
    root = Path(root)
    if vae not in VAE_FILES:
        raise ValueError(f"vae must be one of {sorted(VAE_FILES)}, got {vae!r}")
    dit = load_dit(root / model, dtype, device)
    full = load_vae(root / VAE_FILES["wan2.2"], 0.0, dtype).to(device)
    decoder = (
        full
        if vae == "wan2.2"
        else load_vae(root / VAE_FILES[vae], VAE_PRUNING[vae], dtype).to(device)
    )
    prompts = None
    if text:
        t5 = load_t5(root / T5_FILE, dtype=dtype).to(device)
        prompts = TextEncoder(t5, str(root / TOKENIZER_DIR))
    return Pretrained(dit, decoder, full, prompts)
