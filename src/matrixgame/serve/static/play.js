// matrixgame play: keys and pointer-lock mouse go up as state over a WebSocket; frames come
// back per segment and are drawn at the world's frame rate; the page measures its own FPS
// and the time from a key press to the first frame generated with it.
"use strict";

const KEYMAP = { KeyW: "W", KeyS: "S", KeyA: "A", KeyD: "D" };
const $ = (id) => document.getElementById(id);
const screen = $("screen");
const ctx = screen.getContext("2d");

const state = {
  ws: null, info: null, seq: 0, keys: new Set(), dx: 0, dy: 0, sentKeys: "",
  queue: [], nextDraw: 0, drawnTimes: [], frames: 0, segments: 0, dropped: 0,
  serverDropped: 0, press: null, latencies: [], trail: [], revisits: [], memory: [],
  splits: [], backlogs: [], lateness: [], keySeq: null, skipped: 0,
  recording: false, lastHeader: null, closed: null, errors: [], lastSent: 0,
};

// -- connection -------------------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (event) => {
    if (typeof event.data === "string") onText(JSON.parse(event.data));
    else onFrames(event.data);
  };
  ws.onclose = (event) => {
    state.closed = event.reason || `closed (${event.code})`;
    $("status").textContent = `disconnected: ${state.closed} — reload to play again`;
  };
  state.ws = ws;
}

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(message));
    state.lastSent = performance.now();
  }
}

function onText(msg) {
  if (msg.type === "hello") {
    state.info = msg;
    $("world-name").textContent = `— ${msg.world}`;
    $("target-fps").textContent = msg.fps.toFixed(1);
    screen.width = msg.width;
    screen.height = msg.height;
    const select = $("start");
    select.innerHTML = "";
    msg.starts.forEach((name, i) => select.add(new Option(`${i}: ${name}`, String(i))));
    $("status").textContent = `${msg.width}x${msg.height} at ${msg.fps} fps, ` +
      `${msg.frames_per_step} frames per step, ${msg.sampler_steps} sampler steps` +
      (msg.mode ? `; ${msg.mode}` : "");
  } else if (msg.type === "error") {
    state.errors.push(msg.message);
    $("status").textContent = `server: ${msg.message}`;
  } else if (msg.type === "busy" || msg.type === "closing") {
    $("status").textContent = msg.message || `closing: ${msg.reason}`;
    state.closed = msg.message || msg.reason;
  } else if (msg.type === "recording") {
    state.recording = msg.on;
    $("record").classList.toggle("on", msg.on);
    $("record").textContent = msg.on ? "■ Stop" : "● Record";
    if (!msg.on && msg.url) {
      const link = $("download");
      link.href = msg.url;
      link.download = `matrixgame-${Date.now()}.mp4`;
      link.textContent = `last recording (${msg.seconds} s)`;
      link.hidden = false;
      link.click();
    }
  }
}

function onFrames(buffer) {
  const view = new DataView(buffer);
  const n = view.getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
  let at = 4 + n;
  const [T, H, W] = header.shape;
  const images = [];
  for (let t = 0; t < T; t++, at += H * W * 3) images.push(toImage(buffer, at, W, H));
  const thumbs = header.thumbs.map(([h, w]) => {
    const image = toImage(buffer, at, w, h);
    at += h * w * 3;
    return image;
  });
  state.segments += 1;
  state.serverDropped = header.dropped || 0;
  const arrived = performance.now();
  keep(state.backlogs, state.queue.length);  // frames of older segments still to draw
  if (state.keySeq !== null && header.input_seq >= state.keySeq) {
    // the first segment made with the keys as they are now: the frames queued ahead of it
    // were made with the old ones; skip them (the server started this one early for it)
    state.skipped += state.queue.length;
    state.queue = [];
    state.nextDraw = arrived;  // its first frame at once, the rest at the world's rate
    state.keySeq = null;
  }
  if (header.reset) {  // a new start: show its last frame now, forget the old trail
    state.queue = [];
    state.trail = [];
    state.revisits = [];
    images.splice(0, images.length - 1);
  }
  images.forEach((image, t) => state.queue.push({ image, header, first: t === 0, thumbs, arrived }));
  const step = state.info ? state.info.frames_per_step : T;
  if (state.queue.length > 2 * step) {  // behind: skip ahead rather than lag
    const drop = state.queue.length - step;
    state.queue.splice(0, drop);
    state.dropped += drop;
  }
}

function toImage(buffer, at, w, h) {
  const rgb = new Uint8Array(buffer, at, w * h * 3);
  const image = new ImageData(w, h);
  const rgba = image.data;
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    rgba[j] = rgb[i]; rgba[j + 1] = rgb[i + 1]; rgba[j + 2] = rgb[i + 2]; rgba[j + 3] = 255;
  }
  return image;
}

// -- drawing ----------------------------------------------------------------------------------

function draw(now) {
  // more than a segment queued (jitter, or the start's frames): play a third faster until
  // caught up, so a steady backlog does not add its length to every key's latency
  const step = state.info ? state.info.frames_per_step : 4;
  const interval = (state.info ? 1000 / state.info.fps : 57) *
    (state.queue.length > step ? 0.75 : 1);
  if (state.queue.length && now >= state.nextDraw) {
    const item = state.queue.shift();
    ctx.putImageData(item.image, 0, 0);
    // drawn how late (ms) after its time, for a frame that was waiting when its time came
    if (item.arrived <= state.nextDraw) keep(state.lateness, now - state.nextDraw);
    state.frames += 1;
    state.drawnTimes.push(now);
    state.nextDraw = Math.max(state.nextDraw + interval, now - interval / 2);
    if (item.first) onSegmentShown(item, now);
  }
  while (state.drawnTimes.length && state.drawnTimes[0] < now - 2000) state.drawnTimes.shift();
  requestAnimationFrame(draw);
}

function onSegmentShown(item, now) {
  const h = item.header;
  if (state.press && h.input_seq >= state.press.seq) {
    keep(state.latencies, now - state.press.t);
    if (h.began_at !== undefined) {  // where the time went (server stamps: epoch ms)
      const epoch = (t) => performance.timeOrigin + t;
      keep(state.splits, {
        to_server: h.input_at - epoch(state.press.t), to_step: h.began_at - h.input_at,
        step: h.queued_at - h.began_at, to_page: epoch(item.arrived) - h.queued_at,
        in_page: now - item.arrived,
      });
    }
    state.press = null;
  }
  state.lastHeader = h;
  state.trail.push(h.pose);
  if (state.trail.length > 20000) state.trail.shift();
  if (h.revisit) state.revisits.push(h.pose);
  showMemory(h.memory, item.thumbs, h.from_memory);
  drawTrail();
  if (h.dit_ms !== undefined) $("segment-ms").textContent = `${h.dit_ms} + ${h.decode_ms} ms`;
}

function showMemory(memory, thumbs, fromMemory) {
  const box = $("memory");
  box.innerHTML = "";
  box.title = fromMemory ? "this segment was generated from its memory alone (a revisit)" : "";
  box.classList.toggle("from-memory", Boolean(fromMemory));
  let k = 0;
  memory.forEach((m) => {
    const figure = document.createElement("figure");
    if (m.thumb) {
      const image = thumbs[k++];
      const canvas = document.createElement("canvas");
      canvas.width = image.width;
      canvas.height = image.height;
      canvas.getContext("2d").putImageData(image, 0, 0);
      figure.appendChild(canvas);
    }
    const caption = document.createElement("figcaption");
    caption.textContent = `${m.age_s.toFixed(1)} s ago`;
    figure.appendChild(caption);
    box.appendChild(figure);
  });
  if (!memory.length) box.textContent = "none yet";
}

function drawTrail() {
  const canvas = $("trail");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const pts = state.trail;
  if (!pts.length) return;
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const [x, y] of pts) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  const span = Math.max(x1 - x0, y1 - y0, 4);
  const scale = (canvas.width - 20) / span;
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  const px = (x) => canvas.width / 2 + (x - cx) * scale;
  const py = (y) => canvas.height / 2 - (y - cy) * scale;  // +y up on the map
  g.strokeStyle = "#6a9";
  g.beginPath();
  pts.forEach(([x, y], i) => (i ? g.lineTo(px(x), py(y)) : g.moveTo(px(x), py(y))));
  g.stroke();
  g.fillStyle = "#ff5555";
  for (const [x, y] of state.revisits) { g.beginPath(); g.arc(px(x), py(y), 3, 0, 7); g.fill(); }
  const [x, y, yaw] = pts[pts.length - 1];
  const a = (yaw * Math.PI) / 180;
  g.fillStyle = "#fff";
  g.beginPath();
  g.moveTo(px(x) + 8 * Math.cos(a), py(y) - 8 * Math.sin(a));
  g.lineTo(px(x) + 4 * Math.cos(a + 2.4), py(y) - 4 * Math.sin(a + 2.4));
  g.lineTo(px(x) + 4 * Math.cos(a - 2.4), py(y) - 4 * Math.sin(a - 2.4));
  g.fill();
}

// -- input ------------------------------------------------------------------------------------

function sendInput() {
  state.seq += 1;
  send({ type: "input", seq: state.seq, keys: [...state.keys].sort(),
         mouse: [Math.round(state.dx), Math.round(state.dy)] });
  state.dx = 0;
  state.dy = 0;
  state.sentKeys = [...state.keys].sort().join("");
  $("keys").textContent = state.sentKeys || "–";
}

document.addEventListener("keydown", (e) => {
  const key = KEYMAP[e.code];
  if (!key) return;
  e.preventDefault();
  if (e.repeat || state.keys.has(key)) return;
  state.keys.add(key);
  sendInput();
  keysChanged();
  if (!state.press) state.press = { seq: state.seq, t: performance.now() };
});

document.addEventListener("keyup", (e) => {
  const key = KEYMAP[e.code];
  if (!key) return;
  if (!state.keys.delete(key)) return;
  sendInput();
  keysChanged();
});

window.addEventListener("blur", () => {
  const held = state.keys.size;
  state.keys.clear();
  sendInput();
  if (held) keysChanged();
});

function keysChanged() {  // where the server starts a step at once for new keys
  if (state.info && state.info.keys_first) state.keySeq = state.seq;
}

screen.addEventListener("click", () => screen.requestPointerLock());
document.addEventListener("pointerlockchange", () => {
  $("overlay").classList.toggle("hidden", document.pointerLockElement === screen);
});
document.addEventListener("mousemove", (e) => {
  if (document.pointerLockElement !== screen) return;
  state.dx += e.movementX;
  state.dy += e.movementY;
});

setInterval(() => {  // pointer motion at ~30 Hz; a heartbeat each second while visible
  const moved = state.dx !== 0 || state.dy !== 0;
  const stale = performance.now() - state.lastSent > 1000 && !document.hidden;
  if (moved || stale) sendInput();
}, 33);

$("restart").addEventListener("click", () => send({ type: "reset", start: Number($("start").value) }));
$("record").addEventListener("click", () => send({ type: "record", on: !state.recording }));

setInterval(() => {
  const fps = state.drawnTimes.length / 2;
  $("fps").textContent = fps.toFixed(1);
  const lat = state.latencies.slice(-50);  // the last 50 presses
  if (lat.length) {
    $("latency").textContent = lat[lat.length - 1].toFixed(0);
    $("latency-median").textContent = median(lat).toFixed(0);
  }
  $("dropped").textContent = String(state.dropped + state.serverDropped);
}, 250);

function keep(list, value, n = 200) {  // a rolling window of a figure
  list.push(value);
  if (list.length > n) list.shift();
}

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

// What the page measured, for tests and benchmarks (browser automation reads it).
window.matrixgame = {
  stats: () => ({
    fps: state.drawnTimes.length / 2, frames: state.frames, segments: state.segments,
    latencies: [...state.latencies], splits: state.splits.map((x) => ({ ...x })),
    backlogs: [...state.backlogs], lateness: [...state.lateness], skipped: state.skipped,
    dropped: state.dropped, serverDropped: state.serverDropped,
    queued: state.queue.length, trail: state.trail.map((p) => [...p]),
    revisits: state.revisits.length, memory: state.lastHeader ? state.lastHeader.memory : [],
    errors: [...state.errors], closed: state.closed, recording: state.recording,
    download: $("download").hidden ? null : $("download").getAttribute("href"),
    locked: document.pointerLockElement === screen, info: state.info,
  }),
  frame: () => Array.from(ctx.getImageData(0, 0, screen.width, screen.height).data),
};

connect();
requestAnimationFrame(draw);
