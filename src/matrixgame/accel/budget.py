"""The decoder a real-time session can afford, measured on this machine.

A world that ships a light decoder (channels pruned, distilled: ``light_vae``) plays with it
only where the full one would not keep the world's frame rate. The light decoder is the
real-time lever of a plain AVX2 CPU (a segment 2.4-3.1x faster inside the session), and
costs the picture: -3.4 dB and a third of the sharpness on the default world's held-out
reconstructions. Where the CPU has the headroom (AVX-512 BF16: the one-step student and the
full decoder take 57-100 ms of a 229-ms segment on the two such machines measured), the full
decoder is kept.

The measure is a short session as the player's: a few segments of the world as it will play
(its DiT's dtype, steps and guidance already chosen) with the full decoder, the first one
dropped as warm-up, the median of the rest (DiT + decoder) against a share of the segment's
duration, the rest left to the server's own work, the page, and a browser that often shares
the cores.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

# the share of a segment's duration that generating it may take with the full decoder: on a
# 2-core AVX2 CPU the light decoder held the world's 17.5 frames/s in the browser at 55-67%
# (126-154 ms of 229), where the full one takes 85-93% (BENCHMARKS.md)
SHARE = 0.6


@dataclass(frozen=True)
class DecoderChoice:
    """Whether to play with the light decoder, and the measure behind it."""

    light: bool
    segment_ms: float  # median time to generate and decode a segment with the full decoder
    budget_ms: float  # the share of a segment's duration allowed to it

    @property
    def reason(self) -> str:
        verdict = "over" if self.light else "within"
        return (f"full decoder {self.segment_ms:.0f} ms a segment, {verdict} "
                f"{self.budget_ms:.0f} ms")  # fmt: skip


def segment_ms(session, start, segments: int = 6) -> float:
    """The median milliseconds a ``session`` (a :class:`WorldSession`) takes to generate and
    decode a segment from ``start``, walking forward; the first segment is left out (warm-up).
    The session is reset, so use one made for the measure."""
    if segments < 2:
        raise ValueError(f"segments must be at least 2 (the first is warm-up), got {segments}")
    session.reset(start)
    n = session.frames_per_step
    keyboard = torch.zeros(n, 6)
    keyboard[:, 0] = 1  # W held
    mouse = torch.zeros(n, 2)
    times = []
    for _ in range(segments):
        segment = session.step(keyboard, mouse)
        times.append(1000 * (segment.dit_seconds + segment.decode_seconds))
    return statistics.median(times[1:])


def choose_decoder(session, start, fps: float, share: float | None = None,
                   segments: int = 6) -> DecoderChoice:  # fmt: skip
    """Light decoder or full for a real-time session: ``session`` is a :class:`WorldSession`
    of the world with its full decoder, made as play will make its sessions; ``fps`` the
    world's frame rate. The full decoder is kept when a segment takes at most ``share`` of
    its duration (default :data:`SHARE`)."""
    share = SHARE if share is None else share
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not share >= 0:
        raise ValueError(f"share must be non-negative, got {share}")
    budget = 1000 * share * session.frames_per_step / fps
    measured = segment_ms(session, start, segments)
    return DecoderChoice(light=measured > budget, segment_ms=measured, budget_ms=budget)
