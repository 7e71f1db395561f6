"""The decoder a real-time session can afford, measured on this machine.

A world that ships a light decoder (channels pruned, distilled: ``light_vae``) plays with it
only where the full one would miss the world's frame rate or the key-press latency of play.
The light decoder is the real-time lever of a plain AVX2 CPU (a segment 2.4-3.1x faster
inside the session), and costs the picture: -3.4 dB and a third of the sharpness on the
default world's held-out reconstructions. Where the CPU has the headroom (AVX-512 BF16: the
one-step student and the full decoder take 57-100 ms of a 229-ms segment on the two such
machines measured), the full decoder is kept.

A key's latency in play (``benchmarks/play.py`` splits it) is the step it waits for, the
step made with it, the socket and the page. The server starts a step at once for new keys
(``ServeConfig.keys_first``), so a key lands in a step with the chance g/d (a step of g ms
in a segment of d) and waits for half of it: g + g^2/(2d) on average, plus
:data:`OVERHEAD_MS`. The step in the server runs beside a browser on the same cores, up to
:data:`CONTENTION` times slower than measured alone. So the budget is the smaller of a
share of the segment's duration (the frame rate) and the step that keeps the average key
within :data:`LATENCY_MS`.

The measure is a short session as the player's: a few segments of the world as it will play
(its DiT's dtype, steps and guidance already chosen) with the full decoder, each step timed
whole (retrieval, the DiT, the decoder: what the server waits for), the first one dropped as
warm-up, the median of the rest against the budget.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch

# the share of a segment's duration that generating it may take with the full decoder: on a
# 2-core AVX2 CPU the light decoder held the world's 17.5 frames/s in the browser at 55-67%
# (126-154 ms of 229), where the full one takes 85-93% (BENCHMARKS.md)
SHARE = 0.6
# the key-press-to-frame latency play aims at (the default world's issue: ~250 ms); what a
# key spends outside the steps (the socket and the page: 20-25 ms on 2-core AVX2); how much
# slower the step runs in the server beside Chromium on the same cores than measured alone
# (2-core AVX2: 1.4-1.8x, 114 -> 161-207 ms with the full decoder; benchmarks/play.py)
LATENCY_MS = 250.0
OVERHEAD_MS = 25.0
CONTENTION = 1.6


@dataclass(frozen=True)
class DecoderChoice:
    """Whether to play with the light decoder, and the measure behind it."""

    light: bool
    segment_ms: float  # median time to generate and decode a segment with the full decoder
    budget_ms: float  # what a segment may take: the frame rate's and the latency's budget

    @property
    def reason(self) -> str:
        verdict = "over" if self.light else "within"
        return (f"full decoder {self.segment_ms:.0f} ms a segment, {verdict} "
                f"{self.budget_ms:.0f} ms")  # fmt: skip


def segment_ms(session, start, segments: int = 6) -> float:
    """The median milliseconds a ``session`` (a :class:`WorldSession`) takes a step from
    ``start``, walking forward (retrieve, generate and decode a segment); the first segment
    is left out (warm-up). The session is reset, so use one made for the measure."""
    if segments < 2:
        raise ValueError(f"segments must be at least 2 (the first is warm-up), got {segments}")
    session.reset(start)
    n = session.frames_per_step
    keyboard = torch.zeros(n, 6)
    keyboard[:, 0] = 1  # W held
    mouse = torch.zeros(n, 2)
    times = []
    for _ in range(segments):
        began = time.perf_counter()
        session.step(keyboard, mouse)
        times.append(1000 * (time.perf_counter() - began))
    return statistics.median(times[1:])


def segment_budget_ms(frames_per_step: int, fps: float, share: float | None = None,
                      latency_ms: float | None = None) -> float:  # fmt: skip
    """What a step (measured alone) may take: at most ``share`` of its segment's duration
    (default :data:`SHARE`), and at most the step g whose average key latency in play,
    ``c + c^2/(2d)`` for ``c = CONTENTION g`` in a segment of d ms, plus :data:`OVERHEAD_MS`,
    stays within ``latency_ms`` (default :data:`LATENCY_MS`)."""
    share = SHARE if share is None else share
    latency_ms = LATENCY_MS if latency_ms is None else latency_ms
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not share >= 0:
        raise ValueError(f"share must be non-negative, got {share}")
    d = 1000 * frames_per_step / fps
    room = max(0.0, latency_ms - OVERHEAD_MS)  # c + c^2/(2d) = room, solved for c
    step = d * (math.sqrt(1 + 2 * room / d) - 1) / CONTENTION
    return min(share * d, step)


def choose_decoder(session, start, fps: float, share: float | None = None,
                   latency_ms: float | None = None,
                   segments: int = 6) -> DecoderChoice:  # fmt: skip
    """Light decoder or full for a real-time session: ``session`` is a :class:`WorldSession`
    of the world with its full decoder, made as play will make its sessions; ``fps`` the
    world's frame rate. The full decoder is kept when a segment takes at most
    :func:`segment_budget_ms`."""
    budget = segment_budget_ms(session.frames_per_step, fps, share, latency_ms)
    measured = segment_ms(session, start, segments)
    return DecoderChoice(light=measured > budget, segment_ms=measured, budget_ms=budget)
