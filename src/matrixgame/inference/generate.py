"""An action script walked through a world session into a video: ``matrixgame generate``.

The video opens with the start's own frames (its context latents decoded), then one session
step per ``f C`` frames of the script (f frames per latent); the last step's frames beyond
the script are dropped.
Beside the video, a log per step: the frames' poses and the memory latents retrieved.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from matrixgame.data.action_script import ActionScript
from matrixgame.inference.controls import script_steps
from matrixgame.inference.session import MAX_MOUSE, Segment, Start, WorldSession
from matrixgame.io import atomic_write_text


def check_script(script: ActionScript, session: WorldSession, kinematics: str | None) -> None:
    """A script drives the world's own kinematics from the start's pose: refuse a script
    written for another preset or carrying its own start pose."""
    if script.preset is not None and script.preset != kinematics:
        raise ValueError(f"the script is written for the {script.preset!r} kinematics; "
                         f"this world moves with {kinematics!r} (drop 'preset' or match "
                         f"it)")  # fmt: skip
    if script.start is not None:
        raise ValueError("the script gives a start pose; in a world the start (--start) sets "
                         "the pose: drop the script's 'start'")  # fmt: skip
    if float(script.mouse.abs().max()) > MAX_MOUSE:
        raise ValueError(f"mouse deltas must lie within +-{MAX_MOUSE} units per frame")


def generate(session: WorldSession, start: Start, script: ActionScript,
             write: Callable[[np.ndarray], None],
             progress: Callable[[int], None] | None = None) -> dict:  # fmt: skip
    """Reset at ``start``, step through ``script`` and pass every frame batch
    ``[T, H, W, 3]`` uint8 to ``write``; returns the log (frame count, per-frame poses
    ``c2w``, per step the first frame, memory latent positions and their last frames)."""

    def started(frames: np.ndarray | None) -> None:
        if frames is None:
            raise ValueError("the session does not decode frames (decode=False)")
        write(frames)

    return drive(session, start, script, started,
                 lambda segment, keep: write(segment.frames[:keep]), progress)  # fmt: skip


def drive(session: WorldSession, start: Start, script: ActionScript,
          on_start: Callable[[np.ndarray | None], None], on_segment: Callable[[Segment, int], None],
          progress: Callable[[int], None] | None = None) -> dict:  # fmt: skip
    """The script's steps through ``session`` from ``start``: ``on_start(frames)`` after the
    reset (None when the session does not decode), ``on_segment(segment, keep)`` after each
    step (``keep``: its frames inside the script); returns the log of :func:`generate`."""
    on_start(session.reset(start))
    context = start.frame_c2w.shape[0]
    total = len(script)
    poses = [c2w.tolist() for c2w in start.frame_c2w]
    steps, done = [], 0
    for keyboard, mouse in script_steps(script.keyboard, script.mouse, session.frames_per_step):
        segment = session.step(keyboard, mouse)
        keep = min(len(segment.c2w), total - done)
        on_segment(segment, keep)
        poses += [c2w.tolist() for c2w in segment.c2w[:keep]]
        steps.append({
            "first_frame": context + done,
            "memory_latents": segment.memory_index,
            "memory_frames": [session.window.last_frame(p) for p in segment.memory_index],
            "dit_ms": round(segment.dit_seconds * 1e3, 2),
            **({"decode_ms": round(segment.decode_seconds * 1e3, 2)} if session.decode else {}),
        })  # fmt: skip
        done += keep
        if progress is not None:
            progress(keep)
    return {"frames": context + done, "context_frames": context, "start": start.name,
            "c2w": poses, "steps": steps}  # fmt: skip


def write_log(path: str | Path, log: dict, fps: float) -> Path:
    """The poses and memory log as JSON (atomically)."""
    path = Path(path)
    atomic_write_text(path, json.dumps({"fps": fps, **log}) + "\n")
    return path
