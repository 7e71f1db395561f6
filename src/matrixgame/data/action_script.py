"""Action scripts: a readable JSON file of keyboard/mouse segments, validated strictly.

```json
{
  "preset": "released",
  "start": {"position": [0, 0, 0], "yaw": 0, "pitch": 0},
  "segments": [
    {"frames": 40, "keys": "W"},
    {"frames": 12, "mouse": [0.0, 1.0]},
    {"frames": 40, "keys": "WD", "mouse": [0.0, -0.1]}
  ]
}
```

``keys``: any of W, S, A, D (held for the whole segment; "" or absent: none).
``mouse``: (pitch, yaw) per frame in mouse units; positive looks down / turns right.
``preset`` (a kinematics preset) and ``start`` (the first camera pose) are optional.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from matrixgame.geometry.kinematics import KEYBOARD_DIM, KEYS, MOUSE_DIM, PRESETS, Trajectory

MAX_FRAMES = 1_000_000
MAX_MOUSE = 20.0  # mouse units per frame (300 degrees at the released sensitivity)


@dataclass(frozen=True)
class ActionScript:
    """Per-frame actions ``keyboard [T, 6]``, ``mouse [T, 2]``, an optional preset and start."""

    keyboard: torch.Tensor
    mouse: torch.Tensor
    preset: str | None = None
    start: Trajectory | None = None

    def __len__(self) -> int:
        return len(self.keyboard)


def _fail(source: str, where: str, message: str) -> ValueError:
    return ValueError(f"{source}: {where}: {message}")


def _number(value, source: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(source, where, f"expected a finite number, got {value!r}")
    return float(value)


def _check_fields(obj: dict, allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _fail(source, where, f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _parse_start(obj, source: str) -> Trajectory:
    if not isinstance(obj, dict):
        raise _fail(source, "start", "expected an object with position, yaw, pitch")
    _check_fields(obj, {"position", "yaw", "pitch"}, source, "start")
    position = obj.get("position", [0.0, 0.0, 0.0])
    if not isinstance(position, list) or len(position) != 3:
        raise _fail(source, "start.position", f"expected 3 numbers, got {position!r}")
    xyz = [_number(v, source, "start.position") for v in position]
    yaw = _number(obj.get("yaw", 0.0), source, "start.yaw")
    pitch = _number(obj.get("pitch", 0.0), source, "start.pitch")
    if abs(pitch) >= 90:
        raise _fail(source, "start.pitch", f"must lie in (-90, 90) degrees, got {pitch}")
    return Trajectory.start(xyz, yaw, pitch)


def _parse_segment(seg, index: int, source: str) -> tuple[int, list[float], list[float]]:
    where = f"segments[{index}]"
    if not isinstance(seg, dict):
        raise _fail(source, where, f"expected an object, got {type(seg).__name__}")
    _check_fields(seg, {"frames", "keys", "mouse"}, source, where)
    frames = seg.get("frames")
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES:
        raise _fail(source, f"{where}.frames", f"expected an integer in [1, {MAX_FRAMES}]")
    keys = seg.get("keys", "")
    if not isinstance(keys, str) or any(k not in KEYS for k in keys.upper()):
        raise _fail(source, f"{where}.keys", f"expected letters from {''.join(KEYS)}, got {keys!r}")
    keyboard = [0.0] * KEYBOARD_DIM
    for k in keys.upper():
        keyboard[KEYS.index(k)] = 1.0
    mouse = seg.get("mouse", [0.0, 0.0])
    if not isinstance(mouse, list) or len(mouse) != MOUSE_DIM:
        raise _fail(source, f"{where}.mouse", f"expected [pitch, yaw], got {mouse!r}")
    mouse = [_number(v, source, f"{where}.mouse") for v in mouse]
    if max(abs(v) for v in mouse) > MAX_MOUSE:
        raise _fail(source, f"{where}.mouse", f"values must lie in [-{MAX_MOUSE}, {MAX_MOUSE}]")
    return frames, keyboard, mouse


def parse_action_script(obj, source: str = "action script") -> ActionScript:
    """Validate a decoded JSON object and expand its segments into per-frame actions."""
    if not isinstance(obj, dict):
        raise _fail(source, "top level", "expected a JSON object with a 'segments' list")
    _check_fields(obj, {"preset", "start", "segments"}, source, "top level")
    preset = obj.get("preset")
    if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
        raise _fail(
            source, "preset", f"unknown preset {preset!r:.60}; choose from {sorted(PRESETS)}"
        )
    segments = obj.get("segments")
    if not isinstance(segments, list) or not segments:
        raise _fail(source, "segments", "expected a non-empty list of segments")
    keyboard, mouse = [], []
    for i, seg in enumerate(segments):
        frames, kb, ms = _parse_segment(seg, i, source)
        keyboard += [kb] * frames
        mouse += [ms] * frames
        if len(keyboard) > MAX_FRAMES:
            raise _fail(source, "segments", f"more than {MAX_FRAMES} frames in total")
    start = _parse_start(obj["start"], source) if "start" in obj else None
    return ActionScript(
        torch.tensor(keyboard, dtype=torch.float64),
        torch.tensor(mouse, dtype=torch.float64),
        preset,
        start,
    )


def load_action_script(path: str | Path) -> ActionScript:
    """Read and validate an action script file (see module docstring for the format)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"cannot read action script {path}: {err.strerror or err}") from err
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    return parse_action_script(obj, str(path))
