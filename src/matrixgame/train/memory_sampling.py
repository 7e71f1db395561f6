"""Training samples from cached latent clips: every window of every clip for the
memory-augmented DiT (:mod:`matrixgame.data.windows` assembles each; windows start at
s >= M + 1, so every sample has a full memory and actions for f (P + C) frames, the
release's later-clip layout), and episodes for multi-segment rollouts (distillation).
"""

from __future__ import annotations

import torch

from matrixgame.data.windows import WindowConfig, window_inputs
from matrixgame.train.latents import LatentClips


class WindowDataset(torch.utils.data.Dataset):
    def __init__(self, clips: LatentClips, config: WindowConfig | None = None) -> None:
        config = config or WindowConfig(frames_per_latent=clips.frames_per_latent)
        _check_frames_per_latent(clips, config)
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


class EpisodeDataset(torch.utils.data.Dataset):
    """Spans of cached latent clips for multi-segment rollouts (distillation): ``history``
    latents before a window's past latents, the ``past`` latents, then the poses and actions
    of ``segments`` segments of ``current`` latents each (their latents too, for reference).

    An item is a session start (``latents [z, H + P, h, w]``, its ``c2w``, ``frame_c2w``,
    ``keyboard``, ``mouse``, ``K``) whose poses and actions run on for the segments:
    ``c2w [H + P + S C, 4, 4]``, frames ``[1 + f (H + P + S C - 1), .]``; ``current``
    ``[z, S C, h, w]`` are the recorded latents of the segments; ``metres_per_unit`` [].
    """

    def __init__(self, clips: LatentClips, config: WindowConfig, segments: int = 1,
                 history: int = 8, stride: int | None = None) -> None:  # fmt: skip
        if segments < 1:
            raise ValueError(f"segments must be >= 1, got {segments}")
        if history < config.memory + 1:
            raise ValueError(f"history must be >= memory + 1 = {config.memory + 1} latents "
                             f"(memory never takes the first), got {history}")  # fmt: skip
        _check_frames_per_latent(clips, config)
        self.clips, self.cfg, self.segments, self.history = clips, config, segments, history
        span = history + config.past + segments * config.current
        step = stride or config.stride
        self.index = [(c, a) for c, clip in enumerate(clips.clips)
                      for a in range(0, clip["latents"].shape[1] - span + 1, step)]  # fmt: skip
        if not self.index:
            raise ValueError(f"no clip is long enough for {span} latents (history {history} + "
                             f"past {config.past} + {segments} x {config.current})")  # fmt: skip

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        c, a = self.index[i]
        clip = self.clips.clips[c]
        context = self.history + self.cfg.past
        end = context + self.segments * self.cfg.current  # latents a .. a + end - 1
        frames = slice(self.cfg.last_frame(a), self.cfg.last_frame(a + end - 1) + 1)
        mpu = self.clips.meta[c].get("metres_per_unit", 1.0)
        return {
            "latents": clip["latents"][:, a : a + context],
            "current": clip["latents"][:, a + context : a + end],
            "c2w": clip["c2w"][a : a + end].double(),
            "frame_c2w": clip["frame_c2w"][frames].double(),
            "keyboard": clip["keyboard"][frames].float(),
            "mouse": clip["mouse"][frames].float(),
            "K": clip["K"].float(),
            "metres_per_unit": torch.tensor(float(mpu)),
        }


def _check_frames_per_latent(clips: LatentClips, config: WindowConfig) -> None:
    if clips.frames_per_latent != config.frames_per_latent:
        raise ValueError(f"{clips.root}: the latents hold {clips.frames_per_latent} frames each, "
                         f"the window expects {config.frames_per_latent}")  # fmt: skip
