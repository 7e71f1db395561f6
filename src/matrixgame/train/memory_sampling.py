"""Training windows for the memory-augmented DiT: every window of every cached latent clip
(:mod:`matrixgame.data.windows` assembles each). Windows start at s >= M + 1, so every sample
has a full memory and actions for 4 (P + C) frames (the release's later-clip layout).
"""

from __future__ import annotations

import torch

from matrixgame.data.windows import WindowConfig, window_inputs
from matrixgame.train.latents import LatentClips


class WindowDataset(torch.utils.data.Dataset):
    def __init__(self, clips: LatentClips, config: WindowConfig | None = None) -> None:
        config = config or WindowConfig()
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
