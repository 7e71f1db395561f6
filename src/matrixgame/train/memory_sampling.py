"""Training windows for the memory-augmented DiT: memory + past + current latents of one
clip, with the actions and camera rays the model takes.

For a window starting at latent s: past = latents s..s+P-1, current = the next C, and memory
= the M latents among 1..s-1 whose view volumes overlap the last current latent's most
(sampled frustum overlap), in time order, after the clip's first latent when ``sink`` keeps
it as a persistent "sink" for global scene statistics. Windows start at s >= M + 1, so
every sample has a full memory and actions for 4 (P + C) frames (the release's later-clip
layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from matrixgame.geometry.cameras import relative_poses
from matrixgame.geometry.frustum import ViewVolume, topk_overlap
from matrixgame.geometry.plucker import fold_plucker, plucker_rays
from matrixgame.train.latents import LatentClips

Tensor = torch.Tensor


@dataclass(frozen=True)
class WindowConfig:
    past: int = 2
    current: int = 4
    memory: int = 2
    stride: int = 2
    sink: bool = False  # also keep latent 0 as a persistent memory latent (the report's sink)
    near_m: float = 0.1
    far_m: float = 30.0


class WindowDataset(torch.utils.data.Dataset):
    def __init__(self, clips: LatentClips, config: WindowConfig = WindowConfig()) -> None:
        self.clips, self.cfg = clips, config
        span = config.past + config.current
        self.index = [
            (c, s)
            for c, clip in enumerate(clips.clips)
            for s in range(config.memory + 1, clip["latents"].shape[1] - span + 1, config.stride)
        ]
        if not self.index:
            raise ValueError(f"no clip is long enough for {config.memory + 1 + span} latents")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        c, s = self.index[i]
        meta = self.clips.meta[c]
        return window_inputs(self.clips.clips[c], s, self.cfg, self.clips.height,
                             self.clips.width, meta.get("metres_per_unit", 1.0))  # fmt: skip


def window_inputs(clip: dict, s: int, cfg: WindowConfig, height: int, width: int,
                  metres_per_unit: float = 1.0, current: int | None = None,
                  memory: bool = True) -> dict:  # fmt: skip
    """The window starting at latent ``s`` of ``clip`` (a latent clip's tensors, see
    :mod:`matrixgame.train.latents`; its ``latents`` need only reach the past, its poses and
    actions the whole window): memory ``[z, M, h, w]``, past, current, their indices, the
    window's actions ``[4 (P + C), .]`` and folded camera rays ``[6*256, M + P + C, h, w]``.

    ``current`` overrides ``cfg.current`` (a rollout's last, shorter window); memory takes
    the ``cfg.memory`` latents among 1..s-1 overlapping the window's last view most (fewer
    when fewer exist, none when ``memory`` is False).
    """
    current = cfg.current if current is None else current
    lat, c2w, K = clip["latents"], clip["c2w"].double(), clip["K"]
    window = range(s, s + cfg.past + current)
    k = min(cfg.memory, s - 1) if memory else 0
    chosen = torch.zeros(0, dtype=torch.long)
    if k > 0:
        view = ViewVolume(tuple(K.tolist()), width, height, cfg.near_m / metres_per_unit,
                          cfg.far_m / metres_per_unit)  # fmt: skip
        idx, _ = topk_overlap(c2w[window[-1]], c2w[1:s], view, k)
        chosen = (idx + 1).sort().values
    if cfg.sink and memory:
        chosen = torch.cat([torch.zeros(1, dtype=chosen.dtype), chosen])
    frames = slice(4 * s - 3, 4 * (window[-1]) + 1)
    h, w = lat.shape[2:]
    rays = [
        # memory: relative to the window's first latent; window: to the previous latent
        relative_poses(torch.cat([c2w[s : s + 1], c2w[chosen]]), normalize_translation=True)[1:],
        relative_poses(c2w[list(window)], framewise=True),
    ]
    plucker = torch.cat(
        [fold_plucker(plucker_rays(r, K.double(), height, width), h, w) for r in rays], 1
    )
    return {
        "memory": lat[:, chosen],
        "past": lat[:, s : s + cfg.past],
        "current": lat[:, s + cfg.past : window[-1] + 1],
        "memory_index": chosen,
        "first_index": torch.tensor(s),
        "keyboard": clip["keyboard"][frames].float(),
        "mouse": clip["mouse"][frames].float(),
        "plucker": plucker.float(),
    }


def window_kwargs(batch: dict) -> dict:
    """The DiT's conditioning for a collated batch of windows (memory, its null actions and
    indices, the window's actions and camera rays); a window without memory latents gets
    none."""
    b, m = batch["memory"].shape[0], batch["memory"].shape[2]
    device = batch["memory"].device
    if m == 0:
        return {k: batch[k] for k in ("keyboard", "mouse", "plucker", "first_index")}
    return {
        "keyboard": batch["keyboard"], "mouse": batch["mouse"], "plucker": batch["plucker"],
        "memory": batch["memory"], "memory_index": batch["memory_index"],
        "first_index": batch["first_index"],
        "keyboard_memory": -torch.ones(b, m, 6, device=device),
        "mouse_memory": torch.ones(b, m, 2, device=device),
    }  # fmt: skip
