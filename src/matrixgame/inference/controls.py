"""What a player holds, turned into the per-frame action rows a session step takes.

A step generates ``4 C`` frames; the player holds keys (a state, not events) and moves the
mouse during it. :class:`Controls` is that state for one step: the keys held and the mouse
motion accumulated since the last step, spread evenly over the step's frames. Action
scripts (:mod:`matrixgame.data.action_script`) are cut into steps the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from matrixgame.geometry.kinematics import KEYBOARD_DIM, KEYS, MOUSE_DIM

Tensor = torch.Tensor


@dataclass(frozen=True)
class Controls:
    """Keys held (any of W, S, A, D) and the mouse motion ``(pitch, yaw)`` in mouse units
    over one whole step (positive looks down / turns right)."""

    keys: frozenset[str] = frozenset()
    mouse: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.keys) - set(KEYS))
        if unknown:
            raise ValueError(f"unknown keys {unknown}; a world takes {list(KEYS)}")

    def actions(self, frames: int, max_mouse: float) -> tuple[Tensor, Tensor]:
        """``keyboard [frames, 6]``, ``mouse [frames, 2]``: the keys on every frame, the
        motion split evenly, each frame's share clamped to ``max_mouse``."""
        row = torch.zeros(KEYBOARD_DIM)
        for key in self.keys:
            row[KEYS.index(key)] = 1.0
        mouse = torch.tensor(self.mouse, dtype=torch.float32) / frames
        mouse = mouse.clamp(-max_mouse, max_mouse)
        return row.expand(frames, KEYBOARD_DIM).clone(), mouse.expand(frames, MOUSE_DIM).clone()


def script_steps(keyboard: Tensor, mouse: Tensor, frames: int) -> Iterator[tuple[Tensor, Tensor]]:
    """A script's per-frame ``keyboard [T, 6]`` and ``mouse [T, 2]`` in steps of ``frames``
    rows; the last step is padded with rows of no action (its extra frames are dropped)."""
    total = len(keyboard)
    for first in range(0, total, frames):
        kb, ms = keyboard[first : first + frames].float(), mouse[first : first + frames].float()
        pad = frames - len(kb)
        if pad:
            kb = torch.cat([kb, torch.zeros(pad, KEYBOARD_DIM)])
            ms = torch.cat([ms, torch.zeros(pad, MOUSE_DIM)])
        yield kb, ms
