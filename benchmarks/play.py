"""Play, measured from the browser: `matrixgame play`'s server on the shipped world, Debian's
Chromium (headless, Playwright) playing for a fixed time with a scripted player, and the
page's own figures: frames drawn per second, key press to the first frame generated with
that key, split where it went (to the server, waiting there for the next step, the step,
back to the page, in the page's queue: the server stamps its segments), frames dropped or
skipped (new keys skip the frames queued ahead of them), how many frames wait in the page's
queue (a growing queue would be growing lag), how late the page draws a waiting frame, and
the server's DiT and decode time per segment.

    python benchmarks/play.py [--seconds 300] [any option of `matrixgame play`'s world:
                              --world, --mode, --student, --decoder, --steps, --dtype, --int8]
                              [--no-keys-first]

The world is opened as `matrixgame play` opens it (its auto mode by default: on a CPU the
student in one step, with the light decoder where the full one measures too slow, bf16 where
the CPU has it).

The player holds W for 2 s, lets go for 1 s, turns with the mouse, and repeats; each key
press is a latency sample. FPS and queue are sampled every 5 s; the table compares the
first and the last minute.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import machine, print_table, write_json
from matrixgame.cli.play import _open, _world_arguments
from matrixgame.serve.app import PlayServer, ServeConfig, start_in_thread, torch_thread

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def play(page, seconds: float) -> list[dict]:
    """Drive the page for ``seconds``; samples of its stats every 5 s."""
    page.click("#screen")
    page.wait_for_function("window.matrixgame.stats().locked")
    samples, began, next_sample = [], time.monotonic(), 5.0
    while (elapsed := time.monotonic() - began) < seconds:
        page.keyboard.down("w")
        page.wait_for_timeout(2000)
        page.keyboard.up("w")
        for _ in range(5):
            page.mouse.move(600, 300)
            page.mouse.move(615, 300)
            page.wait_for_timeout(40)
        page.wait_for_timeout(800)
        if elapsed >= next_sample:
            stats = page.evaluate("window.matrixgame.stats()")
            samples.append({"t": round(elapsed, 1), "fps": stats["fps"], "queued": stats["queued"],
                            "frames": stats["frames"], "dropped": stats["dropped"],
                            "server_dropped": stats["serverDropped"]})  # fmt: skip
            next_sample += 5.0
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    # the world's options as `matrixgame play` takes them (--world, --mode, --student,
    # --decoder, --steps, --dtype, --int8, --threads, --seed), opened as it opens them
    _world_arguments(parser, "auto")
    parser.add_argument("--no-keys-first", dest="keys_first", action="store_false",
                        help="pace every step, new keys too (the server without "
                             "ServeConfig.keys_first)")  # fmt: skip
    args = parser.parse_args()
    world, starts, info = torch_thread().submit(_open, args).result()
    config = ServeConfig(max_sessions=1, steps=args.steps, keys_first=args.keys_first,
                         compile_retrieval=info["retrieval"] == "compiled")  # fmt: skip
    server = PlayServer(world, starts, config, info)
    url, stop = start_in_thread(server)
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            page.goto(url)
            page.wait_for_function("window.matrixgame.stats().frames > 0", timeout=120_000)
            samples = play(page, args.seconds)
            stats = page.evaluate("window.matrixgame.stats()")
            segment = page.inner_text("#segment-ms")
            browser.close()
    finally:
        stop()
    lat = sorted(stats["latencies"])
    minute = min(60.0, args.seconds / 3)
    first = [s for s in samples if s["t"] <= minute]
    last = [s for s in samples if s["t"] >= samples[-1]["t"] - minute]
    rows = [{"window": f"{name} {minute:.0f} s",
             "FPS": f"{statistics.median(s['fps'] for s in part):.1f}",
             "queued frames": max(s["queued"] for s in part)}
            for name, part in (("first", first), ("last", last))]  # fmt: skip
    print(f"{world.name}: {args.seconds:.0f} s in Chromium, world at {server.fps} fps, "
          f"{info['capability']}, mode {info['mode']}, int8 {info['int8']}, retrieval "
          f"{info['retrieval']}, "
          f"last segment {segment}")  # fmt: skip
    print_table(rows, ["window", "FPS", "queued frames"])
    p90 = lat[int(0.9 * (len(lat) - 1))] if lat else None
    print(f"key press -> frame: median {statistics.median(lat):.0f} ms (mean "
          f"{statistics.fmean(lat):.0f}), p90 {p90:.0f} ms, max {lat[-1]:.0f} ms over the last "
          f"{len(lat)} presses; frames drawn "
          f"{stats['frames']}, skipped {stats['skipped']} for new keys, dropped "
          f"{stats['dropped']} (page) + {stats['serverDropped']} segments (server)")  # fmt: skip
    # where a key's time goes (medians of each part over the presses; server stamps): to the
    # server, waiting there for the next step, the step, the socket back, the page's queue
    parts = ("to_server", "to_step", "step", "to_page", "in_page")
    split = {f"{k}_ms": round(statistics.median(x[k] for x in stats["splits"]), 1) for k in parts}
    backlog, late = stats["backlogs"], sorted(stats["lateness"])
    split |= {"backlog_frames_mean": round(statistics.fmean(backlog), 2),
              "late_draw_ms_median": round(statistics.median(late), 1),
              "late_draw_ms_p90": round(late[int(0.9 * (len(late) - 1))], 1)}  # fmt: skip
    print("of which (medians): " + ", ".join(f"{k} {split[k + '_ms']:.0f} ms" for k in parts))
    print(f"older frames still queued when a segment arrives: {split['backlog_frames_mean']} "
          f"on average; a waiting frame drawn {split['late_draw_ms_median']} ms late "
          f"(median, p90 {split['late_draw_ms_p90']})")  # fmt: skip
    write_json("play", {**split, "machine": machine(), "world": world.name, "steps": args.steps,
                        "decoder": args.decoder,
                        "seconds": args.seconds, "keys_first": args.keys_first,
                        "skipped_frames": stats["skipped"],
                        "world_fps": server.fps, "mode": info["mode"], "int8": info["int8"],
                        "dtype": info["dtype"], "samples": samples,
                        "latencies_ms": lat, "rows": rows, "frames": stats["frames"],
                        "dropped_frames": stats["dropped"],
                        "dropped_segments": stats["serverDropped"]})  # fmt: skip


if __name__ == "__main__":
    main()
