"""`matrixgame play`'s web app: a thin WebSocket shell over :class:`WorldSession` (FastAPI on
uvicorn). One session per connection, at most ``max_sessions`` at once (one more gets a
``busy`` message). Per connection three tasks: the receiver parses and validates messages
(errors answered, rate-limited, the connection kept), the producer steps the world in a
worker thread (the event loop stays free) no faster than real time and as late as it can
(so the keys read are fresh), the sender drains a bounded queue that drops the oldest
segment rather than lag. Idle connections are closed; a vanished client frees its slot.

Routes: ``/`` the page, ``/static/*`` its script and style, ``/api/world`` what the page
needs to know, ``/ws`` the protocol (:mod:`.protocol`), ``/recordings/{token}`` the MP4s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import secrets
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, WebSocket
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.websockets import WebSocketDisconnect

from matrixgame.inference.session import WorldSession
from matrixgame.serve.player import Player
from matrixgame.serve.protocol import Input, Record, Reset, pack_frames, parse_message

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("matrixgame.serve")
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")


@dataclass
class ServeConfig:
    max_sessions: int = 2
    idle_s: float = 120.0  # no message for this long: the connection is closed
    queue: int = 2  # segments waiting to be sent; beyond, the oldest is dropped
    rate: float = 120.0  # client messages per second (burst the same); beyond, refused
    errors_per_s: float = 20.0  # error answers per second at most (a flood is not echoed)
    degrees_per_pixel: float = 0.15
    pace: bool = True  # never generate ahead of real time
    # a change of the keys held starts the next step at once instead of at its pace point,
    # and the page skips the frames still queued ahead of it (generated with the old keys)
    keys_first: bool = True
    max_record_s: float = 600.0
    pool_cap: int | None = 10_000  # memory latents per session (~38 min at 17.5 fps)
    compile_retrieval: bool = False  # sessions' retrieval compiled (warm it first: cli.play)
    steps: int | None = None  # sampler steps (default: the world's)
    guidance: dict | None = None  # guidance weights overriding the world's (Guidance)

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.idle_s <= 0 or self.rate <= 0 or self.queue < 1:
            raise ValueError("idle_s and rate must be positive and queue >= 1")


class Bucket:
    """A token bucket: ``take()`` is False once more than ``rate`` per second arrive."""

    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.at = rate, rate, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


_TORCH_THREAD: ThreadPoolExecutor | None = None


def torch_thread() -> ThreadPoolExecutor:
    """The one thread that runs every torch call of the play server, loading included.
    torch work on two threads (the model loaded on the main thread, stepped on a worker)
    ran the DiT at half speed here (two OpenMP thread teams on 2 cores: 620 vs 270 ms a
    segment); on one thread it runs as fast as in-process. Sessions take turns on it, each
    step using all cores."""
    global _TORCH_THREAD
    if _TORCH_THREAD is None:
        _TORCH_THREAD = ThreadPoolExecutor(1, "matrixgame-torch")
    return _TORCH_THREAD


class PlayServer:
    """The app and what its connections share: the world, its starts, the torch thread,
    the session cap and the recordings."""

    def __init__(self, world, starts: list, config: ServeConfig | None = None,
                 info: dict | None = None,
                 record_dir: str | Path | None = None) -> None:  # fmt: skip
        if not starts:
            raise ValueError("the world has no starts to play from")
        self.world, self.starts = world, starts
        self.config = config or ServeConfig()
        self.active = 0
        self.executor = torch_thread()
        self._own_records = record_dir is None  # then a temporary folder, made at the first
        self.record_dir = Path(record_dir) if record_dir else None  # recording, removed at close
        self.recordings: dict[str, Path] = {}
        meta = getattr(world, "meta", {}) or {}
        self.fps = float(meta.get("fps", 17.5))
        self.pitch = meta.get("kinematics", "doom") != "doom"  # Doom recordings keep it level
        self.hello = self._hello(info or {})
        self.app = self._build()

    def _hello(self, info: dict) -> dict:
        """What a page is told when it connects (and what ``/api/world`` answers)."""
        session = WorldSession(self.world, steps=self.config.steps, guidance=self.config.guidance)
        return {
            "type": "hello", "world": getattr(self.world, "name", "world"), "fps": self.fps,
            "height": self.world.height, "width": self.world.width,
            "frames_per_step": session.frames_per_step, "sampler_steps": session.steps,
            "starts": [s.name for s in self.starts], "max_sessions": self.config.max_sessions,
            "pitch": self.pitch, "degrees_per_pixel": self.config.degrees_per_pixel,
            "idle_s": self.config.idle_s, "keys_first": self.config.keys_first, **info,
        }  # fmt: skip

    def _build(self):
        @contextlib.asynccontextmanager
        async def lifespan(app):
            yield
            self.close()

        app = FastAPI(title="matrixgame play", lifespan=lifespan, docs_url=None,
                      redoc_url=None, openapi_url=None)  # fmt: skip
        page = (STATIC / "index.html").read_text()
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", response_class=HTMLResponse)
        async def index() -> str:
            return page

        @app.get("/api/world")
        async def world() -> dict:
            return {**self.hello, "active": self.active}

        @app.get("/recordings/{token}")
        async def recording(token: str):
            path = self.recordings.get(token) if TOKEN.fullmatch(token) else None
            if path is None or not path.exists():
                raise HTTPException(404, "no such recording")
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
            return FileResponse(path, media_type="video/mp4",
                                filename=f"matrixgame-{stamp}.mp4")  # fmt: skip

        @app.websocket("/ws")
        async def play(ws: WebSocket) -> None:
            await self.serve(ws)

        return app

    async def serve(self, ws) -> None:
        if not _same_origin(ws.headers.get("origin"), ws.headers.get("host")):
            await ws.close(code=1008, reason="cross-origin connections are refused")
            return
        await ws.accept()
        if self.active >= self.config.max_sessions:
            message = (f"busy: {self.active} of {self.config.max_sessions} sessions are "
                       f"playing; try again later")  # fmt: skip
            await ws.send_json({"type": "busy", "message": message})
            await ws.close(code=1013, reason="busy")
            return
        self.active += 1
        try:
            await Connection(self, ws).run()
        finally:
            self.active -= 1

    def new_recording(self) -> tuple[str, Path]:
        token = secrets.token_urlsafe(18)
        if self.record_dir is None:
            self.record_dir = Path(tempfile.mkdtemp(prefix="matrixgame-recordings-"))
        return token, self.record_dir / f"{token}.mp4"

    def close(self) -> None:
        if self._own_records and self.record_dir is not None:
            shutil.rmtree(self.record_dir, ignore_errors=True)


def _same_origin(origin: str | None, host: str | None) -> bool:
    """Browsers send Origin: a page elsewhere must not drive a local world (nor fill the
    disk with recordings); clients without Origin (scripts) are allowed."""
    if origin is None:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


class Connection:
    """One player's WebSocket: receiver, producer and sender tasks around a :class:`Player`."""

    def __init__(self, server: PlayServer, ws) -> None:
        self.server, self.ws, self.config = server, ws, server.config
        session = WorldSession(server.world, steps=self.config.steps,
                               pool_cap=self.config.pool_cap, guidance=self.config.guidance,
                               compile_retrieval=self.config.compile_retrieval)  # fmt: skip
        self.player = Player(session, server.starts, server.fps,
                             self.config.degrees_per_pixel, server.pitch,
                             max_record_s=self.config.max_record_s)  # fmt: skip
        self.keys: frozenset[str] = frozenset()
        self.keys_changed = False  # since the producer last read them
        self.pixels = [0.0, 0.0]
        self.seq = -1
        self.seq_at = 0.0  # when (epoch s) the input of ``seq`` arrived
        self.commands: collections.deque = collections.deque(maxlen=16)
        self.frames: collections.deque = collections.deque(maxlen=self.config.queue)
        self.texts: collections.deque = collections.deque(maxlen=32)
        self.ready = asyncio.Event()  # something to send
        self.wake = asyncio.Event()  # a command for the producer
        self.bucket = Bucket(self.config.rate)
        self.error_bucket = Bucket(self.config.errors_per_s)
        self.dropped = 0
        self.busy = None  # the step running in the worker thread
        self.recording_token: str | None = None

    async def run(self) -> None:
        self.say(self.server.hello)
        tasks = [asyncio.create_task(c) for c in (self.receive(), self.produce(), self.send())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None and not isinstance(error, WebSocketDisconnect | OSError):
                    log.error("a play session failed", exc_info=error)
                    with contextlib.suppress(Exception):
                        await self.ws.close(code=1011, reason="the world failed (server log)")
        finally:
            for task in tasks:
                task.cancel()
            if self.busy is None:
                self.player.close()
            else:  # the worker still steps the player: close it when that step is done
                self.busy.add_done_callback(lambda _: self.player.close())

    # -- receiving ------------------------------------------------------------------------------

    async def receive(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.config.idle_s):
                    message = await self.ws.receive()
            except TimeoutError:
                self.say({"type": "closing", "reason": f"idle for {self.config.idle_s:g} s"})
                await asyncio.sleep(0.2)  # let the sender pass it on
                await self.ws.close(code=1000, reason="idle")
                return
            except WebSocketDisconnect:
                return
            if message["type"] == "websocket.disconnect":
                return
            if not self.bucket.take():
                self.error(f"too many messages: at most {self.config.rate:g} per second")
                continue
            try:
                parsed = parse_message(message.get("text") if message.get("text") is not None
                                       else message.get("bytes") or b"")  # fmt: skip
                self.handle(parsed)
            except ValueError as err:
                self.error(str(err))

    def handle(self, message) -> None:
        if isinstance(message, Input):
            if message.keys != self.keys and self.config.keys_first:
                self.keys_changed = True
                self.wake.set()
            self.keys = message.keys
            self.pixels[0] += message.mouse[0]
            self.pixels[1] += message.mouse[1]
            if message.seq > self.seq:
                self.seq, self.seq_at = message.seq, time.time()
        elif isinstance(message, Reset):
            if message.start >= len(self.server.starts):
                raise ValueError(f"start {message.start} does not exist "
                                 f"(0..{len(self.server.starts) - 1})")  # fmt: skip
            self.commands.append(message)
            self.wake.set()
        elif isinstance(message, Record):
            self.commands.append(message)
            self.wake.set()

    # -- producing ------------------------------------------------------------------------------

    async def produce(self) -> None:
        loop = asyncio.get_running_loop()
        duration = self.player.session.frames_per_step / self.server.fps
        estimate = duration
        await self.work(self.player.reset, 0)
        sent = loop.time()
        while True:
            while self.commands:
                await self.command(self.commands.popleft())
                sent = loop.time()
            # start so the segment lands as the last one ends (or at once for new keys: a key
            # waits on average half a segment for the next step to start, more than the
            # page's skip of the frames queued ahead of it costs; benchmarks/play.py)
            if self.config.pace and not self.keys_changed:
                wait = sent + duration - estimate - loop.time()
                if wait > 0:
                    self.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self.wake.wait()
                    if self.commands:
                        continue
            keys, pixels, seq = self.keys, tuple(self.pixels), self.seq
            self.keys_changed = False
            self.pixels = [0.0, 0.0]
            began = loop.time()
            # wall-clock times (epoch ms) the page can set beside its own: where a key's
            # latency goes (to the server, waiting for the step, the step, back to the page)
            times = {
                "input_at": round(self.seq_at * 1e3, 1),
                "began_at": round(time.time() * 1e3, 1),
            }
            await self.work(self.player.step, keys, pixels, seq, times=times)
            sent = loop.time()
            estimate = 0.7 * estimate + 0.3 * (sent - began)
            if self.player.recording_full:
                await self.command(Record(False))

    async def work(self, fn, *args, times: dict | None = None) -> None:
        """Run a player call in a worker thread; queue its frames (dropping the oldest).
        ``times``: wall-clock stamps for the header, which gains the time it was queued."""
        loop = asyncio.get_running_loop()
        self.busy = loop.run_in_executor(self.server.executor, fn, *args)
        header, frames, thumbs = await asyncio.shield(self.busy)
        self.busy = None
        if len(self.frames) == self.frames.maxlen:
            self.dropped += 1
        header["dropped"] = self.dropped
        if times is not None:
            header.update(times, queued_at=round(time.time() * 1e3, 1))
        self.frames.append(pack_frames(header, frames, thumbs))
        self.ready.set()

    async def command(self, message) -> None:
        if isinstance(message, Reset):
            await self.work(self.player.reset, message.start)
            return
        loop = asyncio.get_running_loop()
        if message.on:
            token, path = self.server.new_recording()
            await loop.run_in_executor(self.server.executor, self.player.start_recording, path)
            self.recording_token = token
            self.say({"type": "recording", "on": True})
            return
        result = await loop.run_in_executor(self.server.executor, self.player.stop_recording)
        token, self.recording_token = self.recording_token, None
        if result is None or token is None:
            self.say({"type": "recording", "on": False, "url": None, "frames": 0})
            return
        path, frames = result
        self.server.recordings[token] = path
        self.say({"type": "recording", "on": False, "url": f"/recordings/{token}",
                  "frames": frames, "seconds": round(frames / self.server.fps, 2)})  # fmt: skip

    # -- sending --------------------------------------------------------------------------------

    def say(self, message: dict) -> None:
        self.texts.append(message)
        self.ready.set()

    def error(self, text: str) -> None:
        if self.error_bucket.take():
            self.say({"type": "error", "message": text[:500]})

    async def send(self) -> None:
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.texts or self.frames:
                try:
                    if self.texts:
                        await self.ws.send_json(self.texts.popleft())
                    else:
                        await self.ws.send_bytes(self.frames.popleft())
                except RuntimeError:  # the socket closed under us (idle close, shutdown)
                    return


def _uvicorn(server: PlayServer, host: str, port: int):
    """The uvicorn server both ways of serving use: protocol-level frames over 1 MB close the
    connection (1009; messages over 4 KB get an error from the app), pings find dead peers."""
    import uvicorn

    config = uvicorn.Config(server.app, host=host, port=port, log_level="warning",
                            ws_max_size=1 << 20, timeout_graceful_shutdown=3,
                            ws_ping_interval=20, ws_ping_timeout=20)  # fmt: skip
    return uvicorn.Server(config)


def run(server: PlayServer, host: str = "127.0.0.1", port: int = 8000,
        open_browser: bool = True, on_ready=None) -> None:  # fmt: skip
    """Serve until Ctrl-C (uvicorn); opens the page in the user's browser once listening."""
    import socket
    import threading
    import webbrowser

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ValueError(f"cannot listen on {host}:{port} ({err.strerror}); is another "
                             f"server running? pass --port") from None  # fmt: skip
    web = _uvicorn(server, host, port)
    url = f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}/"

    def announce() -> None:
        while not web.started and not web.should_exit:
            time.sleep(0.05)
        if web.started:
            print(f"matrixgame play: {url}  (Ctrl-C to stop)", flush=True)
            if on_ready is not None:
                on_ready(url)
            if open_browser:
                webbrowser.open(url)

    threading.Thread(target=announce, daemon=True).start()
    try:
        web.run()
    except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the Ctrl-C
        pass
    finally:
        server.close()
    print("matrixgame play: stopped", flush=True)


def start_in_thread(server: PlayServer, host: str = "127.0.0.1", port: int = 0):
    """Serve from a background thread (tests, benchmarks): returns the page's URL and a
    function that stops the server. Port 0 picks a free one."""
    import threading

    web = _uvicorn(server, host, port)
    thread = threading.Thread(target=web.run, name="matrixgame-play", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not web.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the play server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = web.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        web.should_exit = True
        thread.join(10)

    return f"http://{host}:{bound}/", stop
