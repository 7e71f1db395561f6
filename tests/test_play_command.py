"""`matrixgame play` as a user runs it: it serves the page and the WebSocket on 127.0.0.1,
stops cleanly on Ctrl-C with a client connected, and says so when its port is taken."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import make_world_folder
from matrixgame.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(module_tmp):
    return make_world_folder(module_tmp("world"))


def test_play_serves_and_stops_cleanly_on_ctrl_c(world):
    from websockets.sync.client import connect

    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "matrixgame.cli", "play", "--world", str(world), "--port",
         str(port), "--no-browser", "--int8", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "(Ctrl-C to stop)" in line or not line:
                break
        assert f"http://localhost:{port}/" in "".join(lines), "".join(lines)
        with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "hello"
            assert isinstance(ws.recv(timeout=30), bytes)  # the start's frames
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=20)
        rest = proc.stdout.read()
        assert code == 0, rest
        assert "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_taken_port_is_a_clear_error(world, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["play", "--world", str(world), "--port", str(port), "--no-browser",
                     "--int8", "off"])  # fmt: skip
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["play", "--world", str(world), "--port", "70000"]) == 2


def test_auto_mode_is_the_one_step_student_with_a_measured_decoder_on_a_cpu(world):
    from argparse import Namespace

    from matrixgame.cli.play import resolve_mode
    from matrixgame.worlds import world_folder

    def chosen(folder, mode, cuda=False, **flags):
        args = Namespace(**{"mode": mode, "student": False, "decoder": "auto", "steps": None,
                            **flags})  # fmt: skip
        resolve_mode(args, folder, cuda)
        return args.mode, args.student, args.decoder, args.steps

    shipped = world_folder("doom-e1m1")  # ships a student and a light decoder
    assert chosen(shipped, "auto") == ("realtime", True, "measure", 1)
    assert chosen(shipped, "auto", cuda=True) == ("quality", False, "full", None)
    assert chosen(shipped, "quality") == ("quality", False, "full", None)
    assert chosen(shipped, "realtime", steps=3) == ("realtime", True, "measure", 3)
    assert chosen(shipped, "realtime", decoder="full") == ("realtime", True, "full", 1)
    assert chosen(shipped, "quality", decoder="light") == ("quality", False, "light", None)
    assert chosen(world, "realtime") == ("realtime", False, "full", None)  # ships neither
