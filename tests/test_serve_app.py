"""The play server: a thin shell over the world session that answers bad input with an error
and keeps the connection, refuses one client more than its cap, frees a vanished client's
slot, closes idle connections, refuses cross-origin pages, and records MP4s."""

import json
import time

import numpy as np
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from helpers import make_world_folder
from matrixgame.media import read_video
from matrixgame.serve.app import PlayServer, ServeConfig
from matrixgame.serve.protocol import unpack_frames
from matrixgame.worlds.shipped import load_starts, load_world


@pytest.fixture(scope="module")
def world(module_tmp):
    root = make_world_folder(module_tmp("world"))
    return load_world(root), load_starts(root)


def _client(world, **config):
    config.setdefault("pace", False)
    return TestClient(PlayServer(*world, ServeConfig(**config)).app)


def _next(ws, kind="frames", limit=50):
    """The next message of a kind (frames: header, frames, thumbs; else the JSON)."""
    for _ in range(limit):
        message = ws.receive()
        if message.get("bytes") is not None:
            if kind == "frames":
                return unpack_frames(message["bytes"])
        elif message.get("text") is not None:
            obj = json.loads(message["text"])
            if obj["type"] == kind:
                return obj
        else:
            raise AssertionError(f"connection closed: {message}")
    raise AssertionError(f"no {kind} message in {limit}")


def test_hello_then_frames_and_keys_move_the_pose(world):
    with _client(world) as client, client.websocket_connect("/ws") as ws:
        hello = _next(ws, "hello")
        assert hello["starts"] == ["spawn 0", "spawn 1"] and hello["frames_per_step"] == 4
        header, frames, _ = _next(ws)
        assert header["reset"] and frames.shape == (9, 64, 64, 3) and frames.dtype == np.uint8
        x0 = header["pose"][0]
        ws.send_json({"type": "input", "seq": 1, "keys": ["W"], "mouse": [0, 0]})
        for _ in range(6):
            header, frames, _ = _next(ws)
        assert header["input_seq"] == 1 and frames.shape == (4, 64, 64, 3)
        assert header["pose"][0] > x0 + 1.0  # walked forward (+x at yaw 0), metres
        # wall-clock stamps (epoch ms) that split a key's latency: the input's arrival, the
        # step's start, its frames queued; the step spans the DiT and the decoder
        now = time.time() * 1e3
        assert now - 60e3 < header["input_at"] <= header["began_at"] <= header["queued_at"] <= now
        span = header["queued_at"] - header["began_at"]
        assert span >= header["dit_ms"] + header["decode_ms"] - 0.2
        ws.send_json({"type": "input", "seq": 2, "keys": [], "mouse": [200, 0]})
        for _ in range(3):
            header, _, _ = _next(ws)
        assert header["pose"][2] < -20  # the pointer moved right: turned right


@pytest.mark.parametrize("keys_first", [True, False])
def test_new_keys_start_the_next_step_at_once(world, monkeypatch, keys_first):
    # at 0.25 frames/s a segment lasts 16 s and the pace (its estimate of a step starts at a
    # segment's duration) waits ~5 s before the second step: new keys start it at once
    # (keys_first), pointer motion alone waits; without keys_first new keys wait too
    monkeypatch.setitem(world[0].meta, "fps", 0.25)
    client = _client(world, pace=True, keys_first=keys_first)
    with client, client.websocket_connect("/ws") as ws:
        assert _next(ws, "hello")["keys_first"] is keys_first
        _next(ws)  # the start
        _next(ws)  # the first step: now the pace runs from here
        began = time.monotonic()
        ws.send_json({"type": "input", "seq": 1, "keys": [], "mouse": [5, 0]})
        time.sleep(0.3)
        ws.send_json({"type": "input", "seq": 2, "keys": ["W"], "mouse": [0, 0]})
        header, _, _ = _next(ws)
        waited = time.monotonic() - began
    assert header["input_seq"] == 2
    assert (waited < 2.5) if keys_first else (waited > 3.5), f"{waited:.2f} s"


def test_bad_messages_get_an_error_and_the_connection_survives(world):
    with _client(world) as client, client.websocket_connect("/ws") as ws:
        _next(ws, "hello")
        bad = ["{", '{"type": "fly"}', json.dumps({"type": "input", "seq": 1, "keys": ["X"]}),
               "x" * 10_000, json.dumps({"type": "reset", "start": 9})]  # fmt: skip
        for text in bad:
            ws.send_text(text)
            assert _next(ws, "error")["message"]
        ws.send_bytes(b"\x00\x01")
        assert "binary" in _next(ws, "error")["message"]
        header, _, _ = _next(ws)  # still streaming
        assert header["segment"] >= 0


def test_a_flood_is_refused_with_bounded_errors_and_streaming_goes_on(world):
    with _client(world, rate=50) as client, client.websocket_connect("/ws") as ws:
        _next(ws, "hello")
        for i in range(400):
            ws.send_json({"type": "input", "seq": i, "keys": ["W"]})
        errors, frames = 0, 0
        deadline = time.monotonic() + 20
        while frames < 3 and time.monotonic() < deadline:
            message = ws.receive()
            if message.get("text"):
                obj = json.loads(message["text"])
                errors += obj["type"] == "error"
                assert obj["type"] != "error" or "too many messages" in obj["message"]
            else:
                frames += 1
        assert frames == 3 and 1 <= errors <= 40  # error answers are rate-limited too


def test_one_client_more_than_the_cap_is_told_busy(world):
    with _client(world, max_sessions=1) as client, client.websocket_connect("/ws") as ws:
        _next(ws, "hello")
        _next(ws)
        with client.websocket_connect("/ws") as second:
            busy = second.receive_json()
            assert busy["type"] == "busy" and "1 of 1" in busy["message"]
            with pytest.raises(WebSocketDisconnect) as closed:
                second.receive_json()
            assert closed.value.code == 1013
        _next(ws)  # the first keeps playing


def test_a_vanished_client_frees_its_slot(world):
    with _client(world, max_sessions=1) as client:
        with client.websocket_connect("/ws") as ws:
            _next(ws, "hello")
            ws.send_json({"type": "input", "seq": 1, "keys": ["W"]})
        # gone mid-segment; the next player gets the slot once the step finished
        for _ in range(50):
            if client.get("/api/world").json()["active"] == 0:
                break
            time.sleep(0.1)
        with client.websocket_connect("/ws") as ws:
            assert _next(ws, "hello")["type"] == "hello"
            _next(ws)


def test_idle_connections_are_closed(world):
    with _client(world, idle_s=0.5) as client, client.websocket_connect("/ws") as ws:
        closing = _next(ws, "closing")
        assert "idle" in closing["reason"]


def test_cross_origin_pages_are_refused(world):
    with _client(world) as client:
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            client.websocket_connect("/ws", headers={"origin": "http://evil.example"}) as ws,
        ):
            ws.receive()
        assert refused.value.code == 1008
        with client.websocket_connect("/ws", headers={"origin": "http://testserver"}) as ws:
            assert _next(ws, "hello")["type"] == "hello"


def test_reset_restarts_from_the_chosen_start(world):
    with _client(world) as client, client.websocket_connect("/ws") as ws:
        _next(ws, "hello")
        _next(ws)
        ws.send_json({"type": "reset", "start": 1})
        for _ in range(20):
            header, _, _ = _next(ws)
            if header.get("reset"):
                break
        assert header["start"] == 1 and header["segment"] == 0
        assert header["pose"][0] > 3  # start 1 lies 100 units (3.1 m) further along x


def test_recording_downloads_an_mp4_of_the_frames_shown(world, tmp_path):
    with _client(world) as client, client.websocket_connect("/ws") as ws:
        _next(ws, "hello")
        _next(ws)
        ws.send_json({"type": "record", "on": True})
        assert _next(ws, "recording")["on"] is True
        for _ in range(3):
            _next(ws)
        ws.send_json({"type": "record", "on": False})
        done = _next(ws, "recording")
        assert done["on"] is False and done["frames"] >= 12
        response = client.get(done["url"])
        assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
        (tmp_path / "r.mp4").write_bytes(response.content)
        video, fps = read_video(tmp_path / "r.mp4")
        assert video.shape == (done["frames"], 64, 64, 3) and fps == pytest.approx(17.5)
        assert client.get("/recordings/not-a-token").status_code == 404
        assert client.get("/recordings/" + "A" * 24).status_code == 404


def test_the_page_and_its_assets_are_served(world):
    with _client(world) as client:
        page = client.get("/")
        assert page.status_code == 200 and "play.js" in page.text
        assert client.get("/static/play.js").status_code == 200
        assert client.get("/static/../app.py").status_code == 404
