"""The windows the memory-augmented DiT sees, assembled the same way for training and for
inference: memory + past + current latents of one sequence, with the actions and camera rays
the model takes.

For a window starting at latent s: past = latents s..s+P-1, current = the next C, and memory
= the M latents among 1..s-1 whose view volumes overlap the last current latent's most
(sampled frustum overlap), in time order, after the sequence's first latent when ``sink``
keeps it as a persistent "sink" for global scene statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from matrixgame.geometry.cameras import relative_poses
from matrixgame.geometry.frustum import Frusta, ViewVolume, topk_overlap
from matrixgame.geometry.plucker import fold_plucker, plucker_rays

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

    def view(self, K: Tensor, height: int, width: int, metres_per_unit: float = 1.0) -> ViewVolume:
        """The view volume memory is scored with: intrinsics ``K [4]`` at the latent clip's
        frame size, near/far planes in metres turned to world units."""
        return ViewVolume(tuple(K.tolist()), width, height, self.near_m / metres_per_unit,
                          self.far_m / metres_per_unit)  # fmt: skip


def retrieve_memory(c2w: Tensor, s: int, last: int, k: int, view: ViewVolume,
                    frusta: Frusta | None = None) -> Tensor:  # fmt: skip
    """Indices (sorted) of the ``k`` latents among 1..s-1 whose view volumes overlap latent
    ``last``'s most; ``c2w [>= last + 1, 4, 4]`` float64 latent poses, ``frusta`` their
    precomputed view volumes (a memory pool's), else built from ``c2w``."""
    k = min(k, s - 1)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    candidates = frusta[1:s] if frusta is not None else c2w[1:s]
    idx, _ = topk_overlap(c2w[last], candidates, view, k)
    return (idx + 1).sort().values


def window_inputs(clip: dict, s: int, cfg: WindowConfig, height: int, width: int,
                  metres_per_unit: float = 1.0, current: int | None = None,
                  memory: bool = True, chosen: Tensor | None = None) -> dict:  # fmt: skip
    """The window starting at latent ``s`` of ``clip`` (a latent clip's tensors, see
    :mod:`matrixgame.train.latents`; its ``latents`` need only reach the past, its poses and
    actions the whole window): memory ``[z, M, h, w]``, past, current, their indices, the
    window's actions ``[4 (P + C), .]`` and folded camera rays ``[6*256, M + P + C, h, w]``.

    ``current`` overrides ``cfg.current`` (a rollout's last, shorter window); memory takes
    the ``cfg.memory`` latents among 1..s-1 overlapping the window's last view most (fewer
    when fewer exist, none when ``memory`` is False), or ``chosen`` (indices a memory pool
    retrieved).
    """
    current = cfg.current if current is None else current
    lat, c2w, K = clip["latents"], clip["c2w"].double(), clip["K"]
    window = range(s, s + cfg.past + current)
    if chosen is None:
        chosen = torch.zeros(0, dtype=torch.long)
        if memory:
            view = cfg.view(K, height, width, metres_per_unit)
            chosen = retrieve_memory(c2w, s, window[-1], cfg.memory, view)
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
