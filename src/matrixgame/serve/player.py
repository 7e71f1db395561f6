"""One person's play: a :class:`WorldSession` driven by the keys they hold and the pointer
motion, and what the page shows beside the frames: the pose, the memory latents retrieved
(as thumbnails with their age), revisits, and an optional MP4 recording.

A revisit is a step whose memory reaches back at least ``revisit_after_s`` seconds to a
latent whose place the player left and came back to: the path walked since is at least
``revisit_metres`` longer than the straight line from there to here (walking straight on,
or standing still, recalls old memory too, and is not a revisit).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np

from matrixgame.geometry.kinematics import Trajectory
from matrixgame.inference.controls import Controls
from matrixgame.inference.session import MAX_MOUSE, Start, WorldSession
from matrixgame.media import Mp4Writer

MAX_THUMBNAILS = 20_000  # ~180 MB at 96x128 halved; beyond, the oldest go (not the first)


class Player:
    def __init__(self, session: WorldSession, starts: list[Start], fps: float,
                 degrees_per_pixel: float = 0.15, pitch: bool = True,
                 revisit_after_s: float = 10.0, revisit_metres: float = 3.0,
                 max_record_s: float = 600.0) -> None:  # fmt: skip
        if not starts:
            raise ValueError("a player needs at least one start")
        self.session, self.starts, self.fps = session, starts, fps
        self.units_per_pixel = degrees_per_pixel / session.kinematics.degrees_per_unit
        self.pitch = pitch
        self.revisit_after_s, self.revisit_metres = revisit_after_s, revisit_metres
        self.max_record_frames = int(max_record_s * fps)
        self.recording: Mp4Writer | None = None
        self.segment = 0
        self.thumbs: OrderedDict[int, np.ndarray] = OrderedDict()
        self.travelled: list[float] = []  # metres walked up to each latent
        self.places: list = []  # each latent's position, metres

    # -- driving --------------------------------------------------------------------------------

    def reset(self, index: int) -> tuple[dict, np.ndarray, list[np.ndarray]]:
        """Restart at start ``index``: its frames and a header (``reset: true``)."""
        if not 0 <= index < len(self.starts):
            raise ValueError(f"start {index} does not exist (0..{len(self.starts) - 1})")
        start = self.starts[index]
        frames = self.session.reset(start)
        self.segment, self.thumbs, self.travelled, self.places = 0, OrderedDict(), [], []
        # latent 0 is frame 0, latent j ends at frame f j: the start's frames [::f]
        f = self.session.window.frames_per_latent
        self._remember(list(range(start.latents.shape[1])), frames[::f])
        self._walked(start.c2w)
        self._record(frames)
        return self._header(start.c2w[-1], [], -1, reset=True, start=index), frames, []

    def step(self, keys: frozenset[str], pixels: tuple[float, float],
             input_seq: int) -> tuple[dict, np.ndarray, list[np.ndarray]]:  # fmt: skip
        """The next segment for the keys held and the pointer motion ``(dx, dy)`` in pixels
        since the last step."""
        dx, dy = pixels
        mouse = (dy * self.units_per_pixel if self.pitch else 0.0, dx * self.units_per_pixel)
        n = self.session.frames_per_step
        limit = MAX_MOUSE * n
        mouse = tuple(max(-limit, min(limit, m)) for m in mouse)
        keyboard, mouse_rows = Controls(frozenset(keys), mouse).actions(n, MAX_MOUSE)
        before = self.session.state.length
        seg = self.session.step(keyboard, mouse_rows)
        self.segment += 1
        new = list(range(before, before + seg.latents.shape[1]))
        f = self.session.window.frames_per_latent
        self._remember(new, seg.frames[f - 1 :: f])
        self._walked(seg.c2w[f - 1 :: f])  # each new latent's last frame
        self._record(seg.frames)
        thumbs = [self.thumbs[p] for p in seg.memory_index if p in self.thumbs]
        timing = {"dit_ms": round(seg.dit_seconds * 1e3, 1),
                  "decode_ms": round(seg.decode_seconds * 1e3, 1)}  # fmt: skip
        header = self._header(seg.c2w[-1], seg.memory_index, input_seq,
                              from_memory=seg.from_memory, **timing)  # fmt: skip
        return header, seg.frames, thumbs

    # -- what the page shows --------------------------------------------------------------------

    def _header(self, c2w, memory: list[int], input_seq: int, **extra) -> dict:
        pose = Trajectory.from_c2w(c2w[None].double())
        now = len(self.travelled) - 1
        seconds = 4 / self.fps  # one latent
        ages = [round((now - p) * seconds, 2) for p in memory]
        revisit = any(age >= self.revisit_after_s and self._detour(p, now) >= self.revisit_metres
                      for p, age in zip(memory, ages, strict=True))  # fmt: skip
        x, y = (float(v) for v in pose.position[0, :2])
        metres = self.session.metres_per_unit
        return {"segment": self.segment, "input_seq": input_seq,
                "pose": [round(x * metres, 3), round(y * metres, 3),
                         round(float(pose.yaw[0]), 2)],
                "memory": [{"position": p, "age_s": a, "thumb": p in self.thumbs}
                           for p, a in zip(memory, ages, strict=True)],
                "revisit": revisit, "recording": self.recording is not None,
                **extra}  # fmt: skip

    def _remember(self, positions: list[int], frames: np.ndarray) -> None:
        for p, frame in zip(positions, frames, strict=True):
            self.thumbs[p] = np.ascontiguousarray(frame[::2, ::2])
        while len(self.thumbs) > MAX_THUMBNAILS:
            oldest = next(k for k in self.thumbs if k != 0)
            del self.thumbs[oldest]

    def _walked(self, c2w) -> None:
        """Note each new latent's place (metres) and the path length walked up to it."""
        metres = self.session.metres_per_unit
        for pose in c2w:
            here = pose[:3, 3].double() * metres
            step = float((here - self.places[-1]).norm()) if self.places else 0.0
            self.travelled.append((self.travelled[-1] if self.travelled else 0.0) +
                                  (step if math.isfinite(step) else 0.0))  # fmt: skip
            self.places.append(here)

    def _detour(self, then: int, now: int) -> float:
        """Metres walked from latent ``then`` to ``now`` beyond the straight line between."""
        straight = float((self.places[now] - self.places[then]).norm())
        return self.travelled[now] - self.travelled[then] - straight

    # -- recording ------------------------------------------------------------------------------

    def start_recording(self, path: str | Path) -> None:
        if self.recording is not None:
            self.recording.abort()
        self.recording = Mp4Writer(path, self.fps)

    def stop_recording(self) -> tuple[Path, int] | None:
        """Finish the recording: its path and frame count (None when none was running)."""
        if self.recording is None:
            return None
        writer, self.recording = self.recording, None
        if writer.frames == 0:
            writer.abort()
            return None
        return writer.close(), writer.frames

    def close(self) -> None:
        if self.recording is not None:
            self.recording.abort()
            self.recording = None

    def _record(self, frames: np.ndarray) -> None:
        if self.recording is None:
            return
        room = self.max_record_frames - self.recording.frames
        self.recording.write(frames[: max(room, 0)])

    @property
    def recording_full(self) -> bool:
        return self.recording is not None and self.recording.frames >= self.max_record_frames
