"""Latent cache: every clip encoded once by the VAE, so DiT training never runs the encoder.

A latent clip (``<name>.safetensors`` in the cache folder, listed in its manifest) holds:

    latents   [z, L, h, w]    L = 1 + (N - 1) // f latents of the clip's first 1 + f(L-1) frames
    c2w       [L, 4, 4]       the pose of each latent's last frame (frame fj; frame 0 for j = 0)
    frame_c2w [N', 4, 4]      every encoded frame's pose (N' = 1 + f(L-1))
    keyboard  [N', 6], mouse [N', 2], K [4] (at the training size)

(f: the VAE's frames per latent, 4 for Wan2.2's) and metadata: the source clip, the training
size and the VAE it came from. The cache's manifest config records the training size and f.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from matrixgame.data.shards import Clip, Manifest, read_clip
from matrixgame.io import atomic_path
from matrixgame.models.vae import WanVAE
from matrixgame.train.vae_task import frames_to_model

Tensor = torch.Tensor
LATENT_FORMAT = "matrixgame-latents/1"


@torch.no_grad()
def encode_clip(vae: WanVAE, frames, height: int, width: int, chunk: int = 8) -> Tensor:
    """uint8 frames ``[N, H, W, 3]`` -> latents ``[z, L, h, w]``, encoded in pieces of
    ``chunk`` latents with one streaming cache (equal to encoding the clip whole)."""
    from matrixgame.models.vae import FeatureCache

    f = vae.config.temporal_factor
    n = 1 + f * ((len(frames) - 1) // f)
    x = frames_to_model(torch.as_tensor(frames[:n])[None], height, width)  # [1, 3, n, h, w]
    cache, out, start = FeatureCache(), [], 0
    while start < n:
        size = 1 + f * (chunk - 1) if start == 0 else f * chunk
        out.append(vae.encode(x[:, :, start : start + size], cache))
        start += size
    return torch.cat(out, 2)[0]


def latent_clip(vae: WanVAE, clip: Clip, height: int, width: int,
                frames: int | None = None) -> dict[str, Tensor]:  # fmt: skip
    """A recorded clip's latent tensors (see the module docstring) at the training size,
    encoded from its first ``frames`` frames (all by default)."""
    video = clip.frames if frames is None else clip.frames[:frames]
    latents = encode_clip(vae, video, height, width)
    f = vae.config.temporal_factor
    n = 1 + f * (latents.shape[1] - 1)
    last = [f * j for j in range(latents.shape[1])]
    sx, sy = width / clip.frames.shape[2], height / clip.frames.shape[1]
    K = torch.as_tensor(clip.K, dtype=torch.float32) * torch.tensor([sx, sy, sx, sy])
    return {
        "latents": latents.contiguous(),
        "c2w": torch.as_tensor(clip.c2w[last], dtype=torch.float32),
        "frame_c2w": torch.as_tensor(clip.c2w[:n], dtype=torch.float32),
        "keyboard": torch.as_tensor(clip.keyboard[:n]),
        "mouse": torch.as_tensor(clip.mouse[:n]),
        "K": K,
    }


def cache_latents(data: str | Path, vae: WanVAE, out: str | Path, height: int, width: int,
                  vae_name: str = "", progress: bool = True) -> Manifest:  # fmt: skip
    """Encode every clip of a recorded dataset that is not cached yet (resumable)."""
    from tqdm import tqdm

    source = Manifest.load(data)
    cache = Manifest.load(out)
    cache.config = {"source": str(data), "height": height, "width": width, "vae": vae_name,
                    "frames_per_latent": vae.config.temporal_factor}  # fmt: skip
    for name, entry in tqdm(sorted(source.shards.items()), disable=not progress, desc="latents"):
        if name in cache.shards and (Path(out) / name).exists():
            continue
        clip = read_clip(Path(data) / name)
        tensors = latent_clip(vae, clip, height, width)
        latents = tensors["latents"]
        meta = {"format": LATENT_FORMAT, "meta": json.dumps({**clip.meta, "source_clip": name})}
        with atomic_path(Path(out) / name) as tmp:
            save_file(tensors, tmp, metadata=meta)
        cache.shards[name] = {"latents": latents.shape[1], "split": entry.get("split", "train")}
        cache.save()
    return cache


class LatentClips:
    """The clips of a latent cache, read whole (they are small) and kept in memory."""

    def __init__(self, root: str | Path, split: str | None = "train") -> None:
        self.root = Path(root)
        manifest = Manifest.load(root)
        if not manifest.shards:
            raise ValueError(f"{root}: no cached latents (run `matrixgame train latents` first)")
        self.height, self.width = manifest.config.get("height"), manifest.config.get("width")
        self.frames_per_latent = manifest.config.get("frames_per_latent", 4)  # older caches: 4
        if not isinstance(self.frames_per_latent, int) or self.frames_per_latent < 1:
            raise ValueError(f"{root}: frames_per_latent must be a positive integer, got "
                             f"{self.frames_per_latent!r}")  # fmt: skip
        self.clips: list[dict[str, Tensor]] = []
        self.meta: list[dict] = []
        for name, entry in sorted(manifest.shards.items()):
            if split is not None and entry.get("split") != split:
                continue
            with safe_open(str(Path(root) / name), framework="pt") as f:
                if (f.metadata() or {}).get("format") != LATENT_FORMAT:
                    raise ValueError(f"{root}/{name}: not a {LATENT_FORMAT} file")
                self.clips.append({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
                self.meta.append(json.loads(f.metadata()["meta"]))
        if not self.clips:
            raise ValueError(f"{root}: no cached clips in split {split!r}")

    def __len__(self) -> int:
        return len(self.clips)
