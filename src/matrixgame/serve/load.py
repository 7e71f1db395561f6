"""Load on a play server over loopback: well-behaved players, a bounded flood of hostile
traffic, and clients beyond the cap, for a fixed time (``benchmarks/play_load.py``, and the
test of the same name).

A player sends its input state at 30 Hz and counts the segments it receives. A flooder
sends, as fast as the socket takes them but at most ``flood_rate`` per second, a cycle of
malformed JSON, unknown types, oversized and binary messages and valid-but-too-fast input,
and reads what comes back. Extra clients connect once the players are in and expect
``busy``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

FLOOD = [
    "{", '{"type": "fly"}', '{"type": "input", "seq": -1}', "[]",
    '{"type": "input", "seq": 1, "keys": ["Q"]}', "x" * 8000, b"\x00\x01\x02",
    '{"type": "reset", "start": 99}', '{"type": "input", "seq": 5, "keys": ["W"]}',
]  # fmt: skip


@dataclass
class PlayerStats:
    segments: int = 0
    errors: int = 0
    gaps: list[float] = field(default_factory=list)  # seconds between segments
    closed: str | None = None


@dataclass
class LoadResult:
    players: list[PlayerStats]
    flood_sent: int
    flood_errors: int
    flood_closed: list[str]
    refused: int
    extra: int
    seconds: float

    def summary(self) -> dict:
        gaps = sorted(g for p in self.players for g in p.gaps)
        return {
            "players": len(self.players),
            "segments_min": min(p.segments for p in self.players),
            "segments_total": sum(p.segments for p in self.players),
            "players_closed": sum(p.closed is not None for p in self.players),
            "longest_gap_s": round(gaps[-1], 2) if gaps else None,
            "flood_messages": self.flood_sent, "flood_error_answers": self.flood_errors,
            "flood_connections_closed": len(self.flood_closed),
            "extra_clients": self.extra, "refused_busy": self.refused,
            "seconds": round(self.seconds, 1),
        }  # fmt: skip


async def _player(url: str, seconds: float, stats: PlayerStats, seed: int) -> None:
    import websockets

    rng = random.Random(seed)
    try:
        async with websockets.connect(url, max_size=1 << 24) as ws:
            end, seq, last = time.monotonic() + seconds, 0, None

            async def send() -> None:
                nonlocal seq
                while time.monotonic() < end:
                    seq += 1
                    keys = rng.choice([[], ["W"], ["W", "A"], ["S"], ["D"]])
                    await ws.send(json.dumps({"type": "input", "seq": seq, "keys": keys,
                                              "mouse": [rng.randint(-20, 20), 0]}))  # fmt: skip
                    await asyncio.sleep(1 / 30)

            sender = asyncio.create_task(send())
            try:
                while time.monotonic() < end:
                    try:
                        message = await asyncio.wait_for(
                            ws.recv(), max(0.1, end - time.monotonic())
                        )
                    except TimeoutError:
                        break
                    if isinstance(message, bytes):
                        now = time.monotonic()
                        if last is not None:
                            stats.gaps.append(now - last)
                        last = now
                        stats.segments += 1
                    elif json.loads(message).get("type") == "error":
                        stats.errors += 1
            finally:
                sender.cancel()
    except Exception as err:  # a dropped player is what the load test counts
        stats.closed = f"{type(err).__name__}: {err}"[:200]


async def _flooder(url: str, seconds: float, rate: float, counts: dict) -> None:
    import websockets

    try:
        async with websockets.connect(url, max_size=1 << 24) as ws:
            end, i = time.monotonic() + seconds, 0

            async def read() -> None:
                async for message in ws:
                    if isinstance(message, str) and json.loads(message).get("type") == "error":
                        counts["errors"] += 1

            reader = asyncio.create_task(read())
            try:
                while time.monotonic() < end:
                    await ws.send(FLOOD[i % len(FLOOD)])
                    counts["sent"] += 1
                    i += 1
                    await asyncio.sleep(1 / rate)
            finally:
                reader.cancel()
    except Exception as err:
        counts["closed"].append(f"{type(err).__name__}: {err}"[:200])


async def _extra(url: str) -> bool:
    """Whether a client beyond the cap was told ``busy``."""
    import websockets

    try:
        async with websockets.connect(url) as ws:
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            return reply.get("type") == "busy"
    except Exception:
        return False


async def run_load(url: str, players: int = 8, flooders: int = 2, seconds: float = 60.0,
                   flood_rate: float = 500.0, extra: int = 2) -> LoadResult:  # fmt: skip
    """Drive a play server at ``url`` (``ws://host:port/ws``) for ``seconds``."""
    stats = [PlayerStats() for _ in range(players)]
    counts = {"sent": 0, "errors": 0, "closed": []}
    began = time.monotonic()
    tasks = [asyncio.create_task(_player(url, seconds, s, i)) for i, s in enumerate(stats)]
    tasks += [asyncio.create_task(_flooder(url, seconds, flood_rate, counts))
              for _ in range(flooders)]  # fmt: skip
    await asyncio.sleep(min(5.0, seconds / 4))  # everyone in: now the cap is reached
    refused = sum(await asyncio.gather(*(_extra(url) for _ in range(extra))))
    await asyncio.gather(*tasks)
    return LoadResult(stats, counts["sent"], counts["errors"], counts["closed"], refused,
                      extra, time.monotonic() - began)  # fmt: skip
