"""How well an autoencoder reconstructs held-out recordings: PSNR, SSIM and the sharpness
ratio of its decoded frames (`matrixgame eval-vae`; the recipe's early-stopping score)."""

from __future__ import annotations

from pathlib import Path

import torch


def heldout_names(data: str | Path, split: str = "heldout", clips: int = 4) -> list[str]:
    """The first ``clips`` clips of ``split`` in ``data``'s manifest, by name."""
    from matrixgame.eval.protocols import clips_in_split

    if clips < 1:
        raise ValueError(f"clips must be at least 1, got {clips}")
    return [name for name, _ in clips_in_split(data, split)][:clips]


@torch.no_grad()
def reconstruction_scores(vae, data: str | Path, height: int, width: int, clips: int = 4,
                          frames: int = 65, split: str = "heldout") -> dict:  # fmt: skip
    """Encode and decode (``vae(frames)``: reconstruction and latents, as `WanVAE`) the first
    ``frames`` frames of ``clips`` clips of ``split`` at ``height`` x ``width``. PSNR (dB)
    over each whole clip, SSIM and the sharpness ratio per frame (`eval/metrics.py`) averaged
    over the clip's frames; each averaged over the clips, which are listed with their own
    scores."""
    from matrixgame.data.shards import read_clip
    from matrixgame.eval.metrics import sharpness_ratio, ssim
    from matrixgame.train.vae_task import frames_to_model, psnr

    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    per_clip = []
    for name in heldout_names(data, split, clips):
        video = torch.as_tensor(read_clip(Path(data) / name).frames[:frames])
        real = frames_to_model(video[None], height, width)
        decoded = vae(real)[0].clamp(-1, 1)
        a, b = _uint8(decoded), _uint8(real)
        per_clip.append({"clip": name, "frames": len(video), "psnr": psnr(decoded, real),
                         "ssim": float(ssim(a, b).mean()),
                         "sharpness": float(sharpness_ratio(a, b).mean())})  # fmt: skip
    mean = {k: sum(c[k] for c in per_clip) / len(per_clip) for k in ("psnr", "ssim", "sharpness")}
    return {**mean, "height": height, "width": width, "clips": per_clip}


def _uint8(video: torch.Tensor) -> torch.Tensor:
    """[1, 3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3], the frames the metrics compare."""
    return ((video[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def open_autoencoder(spec: str | Path) -> tuple:
    """(VAE, (height, width)) of a `train vae` run (or its decoder or light-decoder stage) or of
    a shipped world (folder or name; ``doom-e1m1:light``: its light decoder)."""
    from matrixgame.train.runs import trained_vae
    from matrixgame.worlds.shipped import load_vae, world_part

    if (Path(spec) / "checkpoints").exists():
        return trained_vae(spec)
    vae, config = load_vae(*world_part(spec, "light"))
    return vae, (config["height"], config["width"])
