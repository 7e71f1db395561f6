"""The windows the memory-augmented DiT sees, assembled the same way for training and for
inference: memory + past + current latents of one sequence, with the actions and camera rays
the model takes.

For a window starting at latent s: past = latents s..s+P-1, current = the next C, and memory
= the M latents among 1..s-1 whose view volumes overlap the last current latent's most
(sampled frustum overlap), in time order, after the sequence's first latent when ``sink``
keeps it as a persistent "sink" for global scene statistics. With ``camera_rope`` a window
also carries each latent's RoPE grid offset (camera-aligned positions; not the release's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from matrixgame.geometry.cameras import axis_offsets, relative_poses
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
    frames_per_latent: int = 4  # the VAE's temporal compression (Wan2.2: 4)
    # camera-aligned RoPE: each latent's token grid moved to where its camera's axis lands in
    # the window's last camera (``rope_offset``), so shared content sits at near-equal
    # positions across a turn; off for the released model
    camera_rope: bool = False

    def __post_init__(self) -> None:
        if self.past < 0 or self.current < 1 or self.memory < 0 or self.stride < 1 \
                or self.frames_per_latent < 1:  # fmt: skip
            raise ValueError(f"a window needs past, memory >= 0 and current, stride, "
                             f"frames_per_latent >= 1, got {self}")  # fmt: skip

    def frames(self, latents: int) -> int:
        """Frames the first ``latents`` latents of a sequence decode to (1 + f (L - 1))."""
        return 1 + self.frames_per_latent * (latents - 1)

    def first_frame(self, j: int) -> int:
        """The sequence index of latent ``j``'s first frame (latent 0 is frame 0 alone)."""
        return self.frames_per_latent * (j - 1) + 1 if j else 0

    def last_frame(self, j: int) -> int:
        """The sequence index of latent ``j``'s last frame (its pose is the latent's)."""
        return self.frames_per_latent * j

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
    window's actions ``[f (P + C), .]`` (f frames per latent) and folded camera rays
    ``[6*256, M + P + C, h, w]``.

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
    frames = slice(cfg.first_frame(s), cfg.last_frame(window[-1]) + 1)
    return assemble_window(
        lat[:, chosen], c2w[chosen], chosen, lat[:, s : s + cfg.past],
        lat[:, s + cfg.past : window[-1] + 1], c2w[list(window)], clip["keyboard"][frames],
        clip["mouse"][frames], K, s, height, width, cfg.camera_rope,
    )  # fmt: skip


def assemble_window(memory: Tensor, memory_c2w: Tensor, memory_index: Tensor, past: Tensor,
                    current: Tensor, window_c2w: Tensor, keyboard: Tensor, mouse: Tensor,
                    K: Tensor, first_index: int, height: int, width: int,
                    camera_rope: bool = False) -> dict:  # fmt: skip
    """One window's model inputs from its parts: memory latents ``[z, M, h, w]`` with their
    poses ``[M, 4, 4]`` and sequence positions ``[M]``; past ``[z, P, h, w]`` and current
    (``[z, 0, h, w]`` when generating) latents; the poses of the window's P + C latents
    ``[P + C, 4, 4]`` and its frames' actions ``[f (P + C) or 1 + f (P + C - 1), .]``; the
    intrinsics at the frame size. Camera rays: memory relative to the window's first latent,
    the window's latents each relative to the one before (as the release). ``camera_rope``:
    also ``rope_offset [M + P + C, 2]``, each latent's grid shift in latent rows and columns
    (:func:`matrixgame.geometry.cameras.axis_offsets` against the window's last latent)."""
    h, w = past.shape[2:]
    window_c2w = window_c2w.double()
    rays = [
        relative_poses(torch.cat([window_c2w[:1], memory_c2w.double()]),
                       normalize_translation=True)[1:],
        relative_poses(window_c2w, framewise=True),
    ]  # fmt: skip
    plucker = torch.cat(
        [fold_plucker(plucker_rays(r, K.double(), height, width), h, w) for r in rays], 1
    )
    item = {
        "memory": memory,
        "past": past,
        "current": current,
        "memory_index": memory_index,
        "first_index": torch.tensor(first_index),
        "keyboard": keyboard.float(),
        "mouse": mouse.float(),
        "plucker": plucker.float(),
    }
    if camera_rope:
        cams = torch.cat([memory_c2w.double(), window_c2w])
        pixels = axis_offsets(cams, window_c2w[-1], K.double(), height, width)
        cell = torch.tensor([height / h, width / w], dtype=torch.float64)
        item["rope_offset"] = (pixels / cell).float()
    return item


def window_kwargs(batch: dict) -> dict:
    """The DiT's conditioning for a collated batch of windows (memory, its null actions and
    indices, the window's actions and camera rays); a window without memory latents gets
    none."""
    m = batch["memory"].shape[2]
    offset = {"rope_offset": batch["rope_offset"]} if "rope_offset" in batch else {}
    if m == 0:
        return {**{k: batch[k] for k in ("keyboard", "mouse", "plucker", "first_index")},
                **offset}  # fmt: skip
    keyboard_memory, mouse_memory = null_actions(batch["keyboard"], batch["mouse"], m)
    return {
        "keyboard": batch["keyboard"], "mouse": batch["mouse"], "plucker": batch["plucker"],
        "memory": batch["memory"], "memory_index": batch["memory_index"],
        "first_index": batch["first_index"],
        "keyboard_memory": keyboard_memory, "mouse_memory": mouse_memory, **offset,
    }  # fmt: skip


def null_actions(keyboard: Tensor, mouse: Tensor, frames: int | None = None
                 ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The null actions, keyboard -1 and mouse +1, with the batch, widths, dtype and device of
    ``keyboard [B, F, 6]`` and ``mouse [B, F, 2]``, over their F frames or ``frames``: what the
    DiT sees on its memory latents and where its training drops a window's actions
    (``DiTTask.drop_actions``, the null branch of classifier-free guidance)."""
    b, f = keyboard.shape[0], keyboard.shape[1] if frames is None else frames
    return (keyboard.new_full((b, f, keyboard.shape[-1]), -1.0),
            mouse.new_full((b, f, mouse.shape[-1]), 1.0))  # fmt: skip


def with_null_actions(batch: dict) -> dict:
    """A window with its actions replaced by the null actions (:func:`null_actions`), as the
    DiT's training drops them: its branch without actions, for classifier-free guidance on
    the actions."""
    keyboard, mouse = null_actions(batch["keyboard"], batch["mouse"])
    return {**batch, "keyboard": keyboard, "mouse": mouse}


def frame_conditions(batch: dict, keep) -> dict:
    """A collated window's per-frame conditioning (camera rays ``plucker`` and, with
    camera-aligned RoPE, ``rope_offset``; memory, past, current frames in order) for the
    frames ``keep`` (a slice or indices): what goes with the latents a mode drops."""
    out = {"plucker": batch["plucker"][:, :, keep]}
    if batch.get("rope_offset") is not None:
        out["rope_offset"] = batch["rope_offset"][:, keep]
    return out


def without_past(batch: dict, frames_per_latent: int) -> dict:
    """A collated window (of latents of ``frames_per_latent`` frames) with its past latents
    removed, their camera rays and actions too (its first latent is then its first current
    one), as the DiT's training drops them (``DiTTask.drop_past``): the window generated
    from its memory alone."""
    m, p = batch["memory"].shape[2], batch["past"].shape[2]
    frames = batch["keyboard"].shape[1] - frames_per_latent * p  # the current ones' stay
    latents = batch["plucker"].shape[2]  # memory + past + current (generated or not)
    return {**batch, "past": batch["past"][:, :, :0],
            "keyboard": batch["keyboard"][:, -frames:], "mouse": batch["mouse"][:, -frames:],
            "first_index": batch["first_index"] + p,
            **frame_conditions(batch, [*range(m), *range(m + p, latents)])}  # fmt: skip


def without_memory(batch: dict) -> dict:
    """A collated window with its memory latents removed (their camera rays too), as the
    DiT's training drops them (``DiTTask.drop_memory``)."""
    m = batch["memory"].shape[2]
    return {**batch, "memory": batch["memory"][:, :, :0],
            "memory_index": batch["memory_index"][:, :0],
            **frame_conditions(batch, slice(m, None))}  # fmt: skip
