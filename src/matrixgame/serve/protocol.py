"""The play page's WebSocket protocol: every client message parsed and validated here, and
the server's frame messages packed here (pure functions, so they are tested and fuzzed
without a server).

Client -> server, JSON text, at most :data:`MAX_MESSAGE` bytes:

- ``{"type": "input", "seq": 17, "keys": ["W", "A"], "mouse": [dx, dy]}``: the keys held
  now (a state: a lost message cannot leave a key stuck) and the pointer motion in pixels
  since the previous input message; ``seq`` increases, echoed in the frames it shaped.
- ``{"type": "reset", "start": 0}``: restart from a start (index into ``hello.starts``).
- ``{"type": "record", "on": true}``: start / stop recording; stopping answers with a
  ``recording`` message naming the MP4's URL.

Server -> client: JSON text (``hello``, ``error``, ``busy``, ``recording``, ``closing``)
and binary frame messages: a 4-byte big-endian header length, the JSON header
(``type: "frames"``, shapes, segment, input_seq, pose, memory, timings), then the frames
``[T, H, W, 3]`` uint8 and the memory thumbnails ``[h, w, 3]`` uint8, back to back.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

from matrixgame.geometry.kinematics import KEYS

MAX_MESSAGE = 4096  # bytes of one client message
MAX_PIXELS = 10_000  # pointer motion per message, pixels per axis
MAX_SEQ = 2**53  # what a JavaScript number holds exactly
MESSAGE_TYPES = ("input", "reset", "record")


@dataclass(frozen=True)
class Input:
    seq: int
    keys: frozenset[str]
    mouse: tuple[float, float]  # (dx, dy) pixels


@dataclass(frozen=True)
class Reset:
    start: int


@dataclass(frozen=True)
class Record:
    on: bool


Message = Input | Reset | Record


def parse_message(data: str | bytes) -> Message:
    """One client message; ValueError (a sentence for the client) when it is not valid."""
    if isinstance(data, bytes | bytearray):
        raise ValueError("binary messages are not accepted; send JSON text")
    if len(data) > MAX_MESSAGE:  # characters >= bytes / 4; checked again below in bytes
        raise ValueError(f"message too large (over {MAX_MESSAGE} bytes)")
    if len(data.encode("utf-8", "surrogatepass")) > MAX_MESSAGE:
        raise ValueError(f"message too large (over {MAX_MESSAGE} bytes)")
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise ValueError("a message must be a JSON object with a 'type'")
    kind = obj.get("type")
    if kind == "input":
        return _input(obj)
    if kind == "reset":
        _fields(obj, {"type", "start"})
        return Reset(_integer(obj.get("start"), "start", 0, 1_000_000))
    if kind == "record":
        _fields(obj, {"type", "on"})
        on = obj.get("on")
        if not isinstance(on, bool):
            raise ValueError("record: 'on' must be true or false")
        return Record(on)
    raise ValueError(f"unknown message type {kind!r}; expected one of {list(MESSAGE_TYPES)}")


def _input(obj: dict) -> Input:
    _fields(obj, {"type", "seq", "keys", "mouse"})
    seq = _integer(obj.get("seq"), "seq", 0, MAX_SEQ)
    keys = obj.get("keys", [])
    if not isinstance(keys, list) or len(keys) > len(KEYS):
        raise ValueError(f"input: 'keys' must be a list of held keys from {list(KEYS)}")
    for key in keys:
        if key not in KEYS:
            raise ValueError(f"input: unknown key {key!r}; keys are {list(KEYS)}")
    mouse = obj.get("mouse", [0, 0])
    if not isinstance(mouse, list) or len(mouse) != 2:
        raise ValueError("input: 'mouse' must be [dx, dy] in pixels")
    for value in mouse:
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value) or abs(value) > MAX_PIXELS:  # fmt: skip
            raise ValueError(f"input: mouse values must be finite numbers within "
                             f"+-{MAX_PIXELS} pixels, got {value!r}")  # fmt: skip
    return Input(seq, frozenset(keys), (float(mouse[0]), float(mouse[1])))


def _fields(obj: dict, allowed: set[str]) -> None:
    unknown = sorted(str(k) for k in set(obj) - allowed)
    if unknown:
        raise ValueError(f"{obj['type']}: unknown field(s) {unknown[:5]}; allowed: "
                         f"{sorted(allowed)}")  # fmt: skip


def _integer(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"'{name}' must be an integer in [{low}, {high}], got {value!r}"[:200])
    return value


def pack_frames(header: dict, frames: np.ndarray, thumbs: list[np.ndarray]) -> bytes:
    """One binary frame message (see the module docstring); the header gains the shapes."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    header = {**header, "type": "frames", "shape": list(frames.shape),
              "thumbs": [list(t.shape) for t in thumbs]}  # fmt: skip
    head = json.dumps(header, separators=(",", ":")).encode()
    parts = [struct.pack(">I", len(head)), head, frames.tobytes()]
    parts += [np.ascontiguousarray(t, dtype=np.uint8).tobytes() for t in thumbs]
    return b"".join(parts)


def unpack_frames(data: bytes) -> tuple[dict, np.ndarray, list[np.ndarray]]:
    """The inverse of :func:`pack_frames` (for tests and Python clients)."""
    (n,) = struct.unpack(">I", data[:4])
    header = json.loads(data[4 : 4 + n])
    at = 4 + n
    size = math.prod(header["shape"])
    frames = np.frombuffer(data, np.uint8, size, at).reshape(header["shape"])
    at += size
    thumbs = []
    for shape in header["thumbs"]:
        size = math.prod(shape)
        thumbs.append(np.frombuffer(data, np.uint8, size, at).reshape(shape))
        at += size
    if at != len(data):
        raise ValueError(f"frame message of {len(data)} bytes, header describes {at}")
    return header, frames, thumbs
