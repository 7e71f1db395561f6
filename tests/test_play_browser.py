"""The play page in a real browser: Debian's Chromium (headless, no network, no downloaded
browser) driven by Playwright against `matrixgame play`'s server on the shipped default world,
as it serves it on a CPU. It holds W, moves the mouse under pointer lock, sees the frames and
the pose respond, reads the page's FPS and key-to-frame latency, records a clip, and keeps a
screenshot."""

import argparse
import math
import os
from pathlib import Path

import pytest

from matrixgame.cli.play import resolve_mode
from matrixgame.serve.app import PlayServer, ServeConfig, start_in_thread
from matrixgame.worlds.shipped import load_starts, load_world, world_folder

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
ARTIFACTS = Path(os.environ.get("MATRIXGAME_ARTIFACTS", Path(__file__).parents[1] / "artifacts"))


@pytest.fixture(scope="module")
def url():
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: the browser test needs Debian's chromium "
        "(`make test` installs it: apt-get install chromium)"
    )
    # what `matrixgame play` serves on a CPU (its auto mode): the student in one step, with
    # the decoder a start-up measure picks (tests/test_decoder_budget.py): here the light one,
    # as on a CI machine's CPU, whatever this machine's speed
    args = argparse.Namespace(mode="auto", student=False, decoder="auto", steps=None)
    resolve_mode(args, world_folder("doom-e1m1"), cuda=False)
    assert args.decoder == "measure"
    world = load_world("doom-e1m1", student=args.student, light=True)
    server = PlayServer(world, load_starts("doom-e1m1"),
                        ServeConfig(max_sessions=1, steps=args.steps))  # fmt: skip
    address, stop = start_in_thread(server)
    yield address
    stop()


@pytest.fixture(scope="module")
def page(url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 1100, "height": 640},
                                      accept_downloads=True)  # fmt: skip
        page = context.new_page()
        page.goto(url)
        page.wait_for_function("window.matrixgame.stats().frames > 0", timeout=60_000)
        yield page
        browser.close()


def _stats(page) -> dict:
    return page.evaluate("window.matrixgame.stats()")


def _wait(page, condition: str, timeout_s: float = 30) -> None:
    page.wait_for_function(condition, timeout=timeout_s * 1000)


def test_walk_and_look_under_pointer_lock(page):
    page.click("#screen")
    _wait(page, "window.matrixgame.stats().locked")
    _wait(page, "window.matrixgame.stats().trail.length > 2")
    x0, y0, yaw0 = _stats(page)["trail"][-1]
    before = page.evaluate("window.matrixgame.frame()")
    page.keyboard.down("w")
    page.wait_for_timeout(3000)
    during = page.evaluate("window.matrixgame.frame()")
    page.keyboard.up("w")
    _wait(page, "window.matrixgame.stats().latencies.length > 0")
    x1, y1, _ = _stats(page)["trail"][-1]
    heading = math.radians(yaw0)
    forward = (x1 - x0) * math.cos(heading) + (y1 - y0) * math.sin(heading)
    assert forward > 2.0, f"holding W for 3 s moved {forward:.2f} m forward"
    assert sum(abs(a - b) for a, b in zip(before, during, strict=True)) > 0, "frames froze"

    for _ in range(10):  # pointer to the right: the view turns right (yaw decreases)
        page.mouse.move(700, 300)
        page.mouse.move(730, 300)
        page.wait_for_timeout(30)
    page.wait_for_timeout(1500)
    _, _, yaw1 = _stats(page)["trail"][-1]
    turned = (yaw1 - yaw0 + 180) % 360 - 180
    assert turned < -10, f"moving the mouse right turned the view by {turned:.1f} degrees"

    stats = _stats(page)
    assert stats["fps"] > 2 and 0 < stats["latencies"][-1] < 5000
    # each key's latency split where it went (benchmarks/play.py): the parts, from the page's
    # clock and the server's stamps, add up to it, and the step is a real part of it
    split = stats["splits"][-1]
    assert sum(split.values()) == pytest.approx(stats["latencies"][-1], abs=1.0)
    assert split["step"] > 0 and split["in_page"] >= 0
    assert float(page.inner_text("#fps")) > 0 and page.inner_text("#latency") != "–"
    assert stats["memory"], "the memory panel shows the retrieved latents"
    assert not stats["errors"] and stats["closed"] is None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "play.png"))
    print(f"page: {stats['fps']:.1f} FPS, key-to-frame {stats['latencies'][-1]:.0f} ms")


def test_record_downloads_an_mp4_and_restart_resets_the_trail(page, tmp_path):
    from matrixgame.media import read_video

    page.evaluate("document.exitPointerLock()")  # Esc: the pointer is free for the buttons
    _wait(page, "!window.matrixgame.stats().locked")
    page.click("#record")
    _wait(page, "window.matrixgame.stats().recording")
    page.wait_for_timeout(1500)
    with page.expect_download(timeout=30_000) as download:
        page.click("#record")
    path = tmp_path / "recording.mp4"
    download.value.save_as(path)
    video, fps = read_video(path)
    assert len(video) >= 8 and video.shape[1:] == (96, 128, 3) and fps == 17.5

    page.select_option("#start", "1")
    page.click("#restart")
    _wait(page, "window.matrixgame.stats().trail.length <= 2")
