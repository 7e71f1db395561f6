"""The play server under load on loopback: 8 players, a bounded flood of malformed,
oversized, binary and too-fast messages from 2 more connections, and clients beyond the cap,
for a fixed time; the server runs as `matrixgame play` in its own process, whose memory is
sampled throughout (peak resident set).

    python benchmarks/play_load.py [--world doom-e1m1] [--seconds 120] [--players 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import print_table, write_json
from matrixgame.serve.load import run_load


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="doom-e1m1")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--players", type=int, default=8)
    parser.add_argument("--flooders", type=int, default=2)
    parser.add_argument("--flood-rate", type=float, default=500.0, help="messages/s each")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cap = args.players + args.flooders
    server = subprocess.Popen(
        [sys.executable, "-m", "matrixgame.cli", "play", "--world", args.world, "--port",
         str(port), "--no-browser", "--max-sessions", str(cap)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        for line in server.stdout:
            if "(Ctrl-C to stop)" in line:
                break
        idle = rss_mb(server.pid)
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak.append(rss_mb(server.pid))
                time.sleep(0.5)

        threading.Thread(target=sample, daemon=True).start()
        result = asyncio.run(run_load(f"ws://127.0.0.1:{port}/ws", args.players,
                                      args.flooders, args.seconds, args.flood_rate))  # fmt: skip
        done.set()
        alive = server.poll() is None
        after = rss_mb(server.pid) if alive else 0.0
    finally:
        server.terminate()
        server.wait(20)
    summary = {**result.summary(), "server_alive": alive, "rss_idle_mb": round(idle, 1),
               "rss_peak_mb": round(max(peak), 1), "rss_after_mb": round(after, 1),
               "cpus": os.cpu_count()}  # fmt: skip
    print_table([summary], list(summary))
    print(write_json("play_load", {"world": args.world, **summary}))


if __name__ == "__main__":
    main()
