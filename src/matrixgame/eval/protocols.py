"""The evaluation protocols: what a world model does on held-out recordings it never saw.

Every protocol replays a recorded trajectory: the model gets the clip's first ``context``
latents and then the recorded actions and camera poses, and rolls out the rest on its own
(:func:`matrixgame.inference.rollout.rollout`). One set of rollouts serves them all:

- *fidelity* (MIND's ground-truth-anchored rollouts): PSNR / SSIM per frame after the
  context, against the real frames, as curves and at fixed horizons; beside it the copy-last
  and blurred-copy baselines, the VAE's own reconstruction (the ceiling a latent model can
  reach), a sharpness ratio and a Fréchet distance on our IDM's Doom features;
- *revisit* (WorldMem's beyond-context revisits): on loop clips, the frames whose view was
  seen before the model's past window, then left, then seen again; memory on vs off;
- *loop* (WBench's loop closure): similarity of the generated return frame to the start
  frame without ground truth, set to 0 for a near-static video (which would win it
  trivially);
- *actions* (GameWorld Score): our inverse-dynamics model reads the actions back from the
  generated frames, against the commanded ones, with its accuracy on real frames beside it;
- *drift*: the explore rollouts (up to ``seconds`` long) in buckets of ``bucket_seconds``;
- *speed*: frames per second of the rollouts (DiT and decoder), on the device they ran on.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from matrixgame.data.shards import Clip, Manifest, read_clip
from matrixgame.eval import metrics
from matrixgame.geometry.frustum import ViewVolume, overlap_sampled
from matrixgame.inference.rollout import Guidance, decode_frames
from matrixgame.inference.session import Start, WorldSession, replay
from matrixgame.train.latents import latent_clip
from matrixgame.train.runs import World
from matrixgame.train.vae_task import frames_to_model, to_uint8

Tensor = torch.Tensor
PROTOCOLS = ("fidelity", "revisit", "loop", "actions", "drift", "speed")
COPY, BLUR = "copy last frame", "blurred copy"


@dataclass(frozen=True)
class EvalConfig:
    context: int = 0  # latents given to the model; 0: past + memory + 1 (a full first window)
    horizons: tuple[int, ...] = (1, 4, 16, 32, 64, 128, 256)  # frames after the context
    seconds: float = 60.0  # rollout length (a clip's own length caps it)
    bucket_seconds: float = 10.0
    clips: int = 4  # clips per protocol (explore clips, and loop clips)
    split: str = "heldout"  # heldout (-map and -traj), heldout-map, heldout-traj, train, all
    revisit_overlap: float = 0.5  # a frame is a revisit when it sees this much of a view ...
    away_overlap: float = 0.1  # ... that the camera had left (overlap below this) in between
    static_threshold: float = 0.005
    fvd_size: int = 224  # frames are resized to this square for the I3D (224: standard FVD)
    steps: int = 4
    shift: float = 3.0
    seed: int = 0
    # classifier-free guidance (inference.rollout.Guidance) or weights overriding each
    # world's own ({"actions": a}); None: each world's own
    guidance: Guidance | dict | None = None
    # revisits generated from memory alone (WorldSession.revisit_margin); None: each world's
    # own, 1: never (a difference of overlaps never exceeds it)
    revisit_margin: float | None = None


@dataclass
class EvalClip:
    name: str
    clip: Clip
    split: str
    agent: str
    fps: float

    @property
    def metres_per_unit(self) -> float:
        return self.clip.meta.get("metres_per_unit", 1.0)


# the splits a recording's manifest marks its clips with; "heldout" is both held-out kinds
SPLITS = {"heldout": ("heldout-map", "heldout-traj"), "all": None}


def clips_in_split(data: str | Path, split: str) -> list[tuple[str, dict]]:
    """(name, manifest entry) of each clip of ``data`` in ``split`` (a manifest split, or a
    key of :data:`SPLITS`), by name; a clear error where there are none."""
    manifest = Manifest.load(data)
    if not manifest.shards:
        raise ValueError(f"{data}: no recorded clips (manifest.json lists none)")
    wanted = SPLITS.get(split, (split,))
    entries = [(name, e) for name, e in sorted(manifest.shards.items())
               if wanted is None or e.get("split") in wanted]  # fmt: skip
    if not entries:
        splits = sorted({str(e.get("split")) for e in manifest.shards.values()})
        raise ValueError(f"{data}: no clips in split {split!r} (it has {splits})")
    return entries


def select_clips(data: str | Path, config: EvalConfig) -> tuple[list[EvalClip], list[EvalClip]]:
    """The held-out clips the protocols replay: (explore clips, loop clips), longest first,
    ``config.clips`` of each."""
    entries = clips_in_split(data, config.split)
    listed = dict(entries)
    chosen = {}
    for agent in ("explore", "loop"):
        pool = sorted((e["frames"], n) for n, e in entries if e.get("agent", "explore") == agent)
        chosen[agent] = [n for _, n in pool[::-1][: config.clips]]
    out = {}
    for agent, names in chosen.items():
        out[agent] = []
        for name in names:
            clip = read_clip(Path(data) / name)
            # Doom runs 35 tics a second; imported video (RealEstate10K, DL3DV) is 30 fps
            fps = 35.0 / clip.meta["frame_skip"] if "frame_skip" in clip.meta else 30.0
            out[agent].append(EvalClip(name, clip, listed[name].get("split", "?"),
                                       agent, fps))  # fmt: skip
    return out["explore"], out["loop"]


# -- one rollout ----------------------------------------------------------------------------


@dataclass
class Run:
    """One world model's rollout of one clip, decoded, beside the real frames."""

    clip: EvalClip
    real: np.ndarray  # [T, H, W, 3] uint8 at the world's size
    generated: np.ndarray  # [T, H, W, 3]
    reconstructed: np.ndarray  # the VAE's reconstruction of the real frames
    start: int  # index of the first generated frame
    view: ViewVolume  # the camera's view volume at the world's frame size (for overlaps)
    dit_seconds: float
    decode_seconds: float

    @property
    def new_frames(self) -> int:
        return len(self.generated) - self.start


def _resized(video: np.ndarray, height: int, width: int) -> np.ndarray:
    x = frames_to_model(torch.as_tensor(video)[None], height, width)[0]  # [3, T, h, w]
    return to_uint8(x.permute(1, 2, 3, 0)).numpy()


def context_latents(world: World, config: EvalConfig) -> int:
    w = world.window
    return config.context or (w.past + w.memory + 1)


def eval_session(world: World, config: EvalConfig, memory: bool,
                 metres_per_unit: float) -> WorldSession:  # fmt: skip
    """The session a rollout replays through: a distilled world keeps its own few-step
    sampler; any other runs ``config.steps`` Euler steps at ``config.shift``."""
    distilled = ((getattr(world, "meta", None) or {}).get("sampler") or {}).get("distilled")
    steps, shift = (None, None) if distilled else (config.steps, config.shift)
    return WorldSession(world, steps=steps, shift=shift, memory=memory, seed=config.seed,
                        decode=False, metres_per_unit=metres_per_unit,
                        guidance=config.guidance,
                        revisit_margin=config.revisit_margin)  # fmt: skip


def run_clip(world: World, clip: EvalClip, config: EvalConfig, memory: bool = True,
             cache: dict | None = None) -> Run:  # fmt: skip
    """Roll ``world`` out over ``clip`` (up to ``config.seconds``) and decode it. ``cache``
    keeps the clip's encoding and reconstruction for the next rollout with the same VAE."""
    ctx = context_latents(world, config)
    frames = min(len(clip.clip), int(round(config.seconds * clip.fps)) + 1)
    f = world.window.frames_per_latent
    total = 1 + (frames - 1) // f
    total -= (total - ctx) % world.window.current  # whole session steps
    if total <= ctx:
        raise ValueError(f"{clip.name}: {len(clip.clip)} frames leave nothing after the context")
    key = (id(world.vae), world.height, world.width, clip.name, total)
    cache = {} if cache is None else cache
    if key not in cache:
        lat = latent_clip(world.vae, clip.clip, world.height, world.width,
                          world.window.frames(total))  # fmt: skip
        cache[key] = (lat, decode_frames(world.vae, lat["latents"]))
    lat, reconstructed = cache[key]
    session = eval_session(world, config, memory, clip.metres_per_unit)
    timings: list[float] = []
    latents = replay(session, Start.from_clip(lat, ctx, frames_per_latent=f), lat, total, timings)
    start = time.perf_counter()
    generated = decode_frames(world.vae, latents)
    decode = time.perf_counter() - start
    real = _resized(clip.clip.frames[: len(generated)], world.height, world.width)
    w, mpu = world.window, clip.metres_per_unit
    view = ViewVolume(tuple(lat["K"].tolist()), world.width, world.height, w.near_m / mpu,
                      w.far_m / mpu)  # fmt: skip
    return Run(clip, real, generated, reconstructed, w.frames(ctx), view, sum(timings),
               decode)  # fmt: skip


# -- per-protocol scores ----------------------------------------------------------------------


def _baselines(run: Run) -> dict[str, np.ndarray]:
    """Frames after the context for the methods every table carries beside the model."""
    tail = run.real[run.start :]
    copy = metrics.copy_last(torch.as_tensor(run.real[: run.start]), len(tail)).numpy()
    return {COPY: copy, BLUR: metrics.blur(torch.as_tensor(copy)).numpy()}


def frame_scores(generated: np.ndarray, real: np.ndarray, lpips=None) -> dict[str, np.ndarray]:
    """Per-frame PSNR, SSIM, sharpness ratio (and LPIPS when its network is given) of
    ``generated`` against ``real`` (uint8 ``[T, H, W, 3]``)."""
    g, r = torch.as_tensor(generated), torch.as_tensor(real)
    out = {
        "psnr": metrics.psnr(g, r).numpy(),
        "ssim": metrics.ssim(g, r).numpy(),
        "sharpness": metrics.sharpness_ratio(g, r).numpy(),
    }
    if lpips is not None:
        from matrixgame.eval.external import lpips_distance

        out["lpips"] = lpips_distance(lpips, g, r).numpy()
    return out


def revisit_frames(c2w: np.ndarray, view: ViewVolume, gap: int, start: int,
                   config: EvalConfig) -> np.ndarray:  # fmt: skip
    """Indices t >= ``start`` of frames that see again (overlap >= ``revisit_overlap``) a
    view j <= t - ``gap`` (beyond the past window) which the camera had left in between (some
    frame between j and t overlaps t's view by <= ``away_overlap``)."""
    poses = torch.as_tensor(c2w, dtype=torch.float64)
    overlap = overlap_sampled(poses, poses, view)  # [T, T]
    out = []
    for t in range(start, len(poses)):
        if t - gap < 0:
            continue
        row = overlap[t, :t]
        # away[j] = min over frames strictly between j and t
        between = torch.cat([row[1:], row.new_ones(1)])
        away = between.flip(0).cummin(0).values.flip(0)
        hit = (row[: t - gap + 1] >= config.revisit_overlap) & (
            away[: t - gap + 1] <= config.away_overlap
        )
        if bool(hit.any()):
            out.append(t)
    return np.asarray(out, dtype=np.int64)


def loop_frames(c2w: np.ndarray, view: ViewVolume, start: int,
                config: EvalConfig) -> tuple[int, float, np.ndarray]:  # fmt: skip
    """For a loop clip: the frame of its second half (after ``start``) whose view overlaps the
    first frame's most, that overlap, and the frames after ``start`` that see none of the
    first view (overlap <= ``away_overlap``): the unrelated views loop closure is set against."""
    score = overlap_sampled(torch.as_tensor(c2w[0], dtype=torch.float64),
                            torch.as_tensor(c2w, dtype=torch.float64), view)  # fmt: skip
    first = max(start, len(c2w) // 2)
    ret = first + int(score[first:].argmax())
    away = np.nonzero(score[start:].numpy() <= config.away_overlap)[0] + start
    return ret, float(score[ret]), away


def loop_score(video: np.ndarray, ret: int, unrelated: np.ndarray, moving_from: int,
               threshold: float) -> dict:  # fmt: skip
    """Loop closure of a video whose frame ``ret`` shows frame 0's view again: its SSIM and
    PSNR against frame 0, and ``contrast``: that SSIM minus the mean SSIM of the ``unrelated``
    frames (views that do not see frame 0's) against frame 0, since a blurry video makes
    any two frames alike. ``gated`` is the contrast, or 0 when the video after
    ``moving_from`` is near-static (a frozen video returns "home" trivially)."""
    v = torch.as_tensor(video)
    static = metrics.is_static(v[moving_from:], threshold)
    first = v[:1]
    ssim = float(metrics.ssim(v[ret : ret + 1], first)[0])
    psnr = float(metrics.psnr(v[ret : ret + 1], first)[0])
    others = v[torch.as_tensor(unrelated, dtype=torch.long)]
    baseline = float(metrics.ssim(others, first.expand_as(others)).mean()) if len(others) else 0.0
    contrast = ssim - baseline
    return {"ssim": ssim, "psnr": psnr, "unrelated_ssim": baseline, "contrast": contrast,
            "static": static, "gated": 0.0 if static else contrast}  # fmt: skip


# -- aggregation ----------------------------------------------------------------------------


def _mean_curve(curves: list[np.ndarray]) -> np.ndarray:
    """Per-index mean of curves of different lengths (each index over the curves reaching it;
    an infinite PSNR, identical frames, stays infinite)."""
    grid = np.full((len(curves), max(len(c) for c in curves)), np.nan)
    for i, c in enumerate(curves):
        grid[i, : len(c)] = c
    return np.nanmean(grid, 0)


@dataclass
class Collector:
    """Per-method lists of per-clip per-frame scores, filled protocol by protocol."""

    curves: dict = field(default_factory=dict)  # method -> metric -> [per-clip arrays]

    def add(self, method: str, scores: dict[str, np.ndarray]) -> None:
        slot = self.curves.setdefault(method, {})
        for k, v in scores.items():
            slot.setdefault(k, []).append(np.asarray(v, dtype=np.float64))


def _summary(values: list[np.ndarray]) -> float:
    flat = np.concatenate(values) if values else np.zeros(0)
    return float(flat.mean()) if len(flat) else float("nan")


# -- the whole evaluation ---------------------------------------------------------------------


def evaluate(worlds: list[World], data: str | Path, config: EvalConfig = EvalConfig(),
             idm=None, lpips=None, i3d=None, protocols: tuple[str, ...] = PROTOCOLS,
             progress=print) -> dict:  # fmt: skip
    """Run the protocols for each world on the held-out clips of ``data``; returns the
    results (JSON-ready, see :func:`matrixgame.eval.report.write_report`) and, under
    ``"_strips"``, frames for the report's strips."""
    if not worlds:
        raise ValueError("give at least one world model")
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocols {sorted(unknown)}; choose from {PROTOCOLS}")
    explore, loops = select_clips(data, config)
    results: dict = {
        "config": asdict(config),
        "data": str(data),
        "protocols": list(protocols),
        "device": _device(),
        "worlds": {
            w.name: {
                "step": w.step,
                "window": asdict(w.window),
                "height": w.height,
                "width": w.width,
                "context_latents": context_latents(w, config),
                "error_buffer": w.meta.get("error_buffer", 1.0),
            }
            for w in worlds
        },  # fmt: skip
        "clips": [
            {"name": c.name, "split": c.split, "agent": c.agent, "frames": len(c.clip)}
            for c in explore + loops
        ],
        "notes": [],
        "_strips": {},
    }
    want = set(protocols)
    if want & {"fidelity", "actions", "drift", "speed"}:
        if explore:
            _explore_protocols(worlds, explore, config, idm, lpips, i3d, want, results, progress)
        else:
            results["notes"].append(
                "no held-out explore clips: fidelity, actions and drift skipped"
            )
    if want & {"revisit", "loop"}:
        if loops:
            _loop_protocols(worlds, loops, config, want, results, progress)
        else:
            results["notes"].append(
                "no held-out loop clips: revisit and loop closure skipped (record some with "
                "`matrixgame record --loop-fraction 1 --heldout-every 1`)"
            )
    if "actions" in want and idm is None:
        results["notes"].append(
            "no IDM given (--idm): action accuracy and Fréchet distance skipped"
        )
    return results


def _device() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": "cpu", "cpu": _cpu_name()}  # fmt: skip


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _explore_protocols(worlds, clips, config, idm, lpips, i3d, want, results, progress) -> None:
    from matrixgame.eval.idm import clip_features, pooled_accuracy, predict_actions

    scores, speed, cache = Collector(), {}, {}
    feats: dict[str, list[Tensor]] = {}  # method -> per-clip IDM features
    videos: dict[str, list[np.ndarray]] = {}  # method -> per-clip frames after the context
    actions: dict[str, list[tuple]] = {}  # method -> per-clip (keys, yaw, true keys, true yaw)
    strip: dict = {}
    for world in worlds:
        dit = decode = new = 0.0
        for clip in clips:
            progress(f"{world.name}: rolling out {clip.name}")
            run = run_clip(world, clip, config, cache=cache)
            dit, decode, new = (
                dit + run.dit_seconds,
                decode + run.decode_seconds,
                new + run.new_frames,
            )
            s = run.start
            cases = {world.name: run.generated, f"{world.name} autoencoder": run.reconstructed}
            if world is worlds[0]:
                cases["real frames"] = run.real
                cases.update(
                    {k: np.concatenate([run.real[:s], v]) for k, v in _baselines(run).items()}
                )
            for method, video in cases.items():
                if method != "real frames":
                    scores.add(method, frame_scores(video[s:], run.real[s:], lpips))
                videos.setdefault(method, []).append(video[s:])
                if idm is not None:
                    f, t = clip_features(idm, video)
                    feats.setdefault(method, []).append(f[t >= s])  # position i: frame s + i
                    keys, yaw, t = predict_actions(idm, video)
                    t_new = t[t >= s]
                    truth = clip.clip.keyboard[t_new.numpy()], clip.clip.mouse[t_new.numpy(), 1]
                    actions.setdefault(method, []).append((keys[t >= s], yaw[t >= s], *truth))
            if clip is clips[0]:
                strip.update(cases)
                strip["_start"] = s
        speed[world.name] = {"frames": int(new), "fps": new / max(dit + decode, 1e-9),
                             "dit_fps": new / max(dit, 1e-9), "decode_fps": new / max(decode, 1e-9),
                             "denoising_steps": config.steps}  # fmt: skip
    results["_strips"]["fidelity"] = strip
    fps = clips[0].fps
    if "fidelity" in want:
        results["fidelity"] = _fidelity_table(scores, feats, videos, i3d, config, fps)
    if "actions" in want and actions:
        results["actions"] = {m: pooled_accuracy(cases) for m, cases in actions.items()}
    if "drift" in want:
        results["drift"] = _drift_table(scores, feats, config, fps)
    if "speed" in want:
        results["speed"] = speed


FVD_FRAMES = 16  # FVD's usual clip length: each video is cut into pieces of this many frames


def _fidelity_table(scores: Collector, feats, videos, i3d, config, fps) -> dict:
    methods = {}
    for method, per_clip in scores.curves.items():
        entry = {k: _summary(v) for k, v in per_clip.items()}
        entry["curves"] = {k: _mean_curve(v).tolist() for k, v in per_clip.items()}
        entry["at"] = {
            str(h): {k: entry["curves"][k][h - 1] for k in ("psnr", "ssim", "sharpness")}
            for h in config.horizons
            if h <= len(entry["curves"]["psnr"])
        }
        if method in feats:
            entry["fd"] = metrics.frechet_distance(torch.cat(feats[method]),
                                                   torch.cat(feats["real frames"]))  # fmt: skip
        if i3d is not None:
            entry["fvd"] = _fvd(i3d, videos[method], videos["real frames"], config.fvd_size)
        methods[method] = entry
    return {"fps": fps, "methods": methods}


def _fvd(i3d, generated: list[np.ndarray], real: list[np.ndarray], size: int) -> float:
    from matrixgame.eval.external import fvd

    def pieces(videos):
        return [v[i : i + FVD_FRAMES] for v in videos
                for i in range(0, len(v) - FVD_FRAMES + 1, FVD_FRAMES)]  # fmt: skip

    g, r = pieces(generated), pieces(real)
    if len(g) < 2 or len(r) < 2:
        return float("nan")
    return fvd(i3d, g, r, size)


def _drift_table(scores: Collector, feats, config, fps) -> dict:
    out = {}
    for method, per_clip in scores.curves.items():
        length = max(len(c) for c in per_clip["psnr"])
        rows = []
        for b in range(int(np.ceil(length / fps / config.bucket_seconds))):
            lo, hi = b * config.bucket_seconds, (b + 1) * config.bucket_seconds
            pick = [slice(int(np.ceil(lo * fps)), int(np.ceil(hi * fps))) for _ in per_clip["psnr"]]
            row = {"start_s": lo, "end_s": hi}
            for k, v in per_clip.items():
                row[k] = _summary([c[sl] for c, sl in zip(v, pick, strict=True)])
            row["frames"] = sum(len(c[sl]) for c, sl in zip(per_clip["psnr"], pick, strict=True))
            if method in feats:
                g = torch.cat([f[sl] for f, sl in zip(feats[method], pick, strict=True)])
                r = torch.cat([f[sl] for f, sl in zip(feats["real frames"], pick, strict=True)])
                if len(g) >= 2 and len(r) >= 2:
                    row["fd"] = metrics.frechet_distance(g, r)
            rows.append(row)
        out[method] = rows
    return {"bucket_seconds": config.bucket_seconds, "methods": out}


def _loop_protocols(worlds, clips, config, want, results, progress) -> None:
    revisit, closure, counted, strip, cache = Collector(), {}, 0, {}, {}
    for clip in clips:
        for world in worlds:
            runs = {}
            for memory in (True, False):
                name = world.name if memory else f"{world.name} (memory off)"
                progress(f"{name}: rolling out loop {clip.name}")
                runs[name] = run_clip(world, clip, config, memory, cache)
            run = runs[world.name]
            s, w = run.start, world.window
            c2w = clip.clip.c2w[: len(run.real)]
            idx = revisit_frames(c2w, run.view, w.frames_per_latent * (w.past + w.current), s,
                                 config)  # fmt: skip
            ret, seen, away = loop_frames(c2w, run.view, s, config)
            cases = {name: r.generated for name, r in runs.items()}
            cases[f"{world.name} autoencoder"] = run.reconstructed
            if world is worlds[0]:
                for k, v in _baselines(run).items():
                    cases[k] = np.concatenate([run.real[:s], v])
                cases["real frames"] = run.real
                counted += len(idx)
            for method, video in cases.items():
                if len(idx) and method != "real frames":
                    revisit.add(method, frame_scores(video[idx], run.real[idx]))
                if seen >= config.revisit_overlap:
                    score = loop_score(video, ret, away, s, config.static_threshold)
                    closure.setdefault(method, []).append(score)
            if clip is clips[0]:
                strip.update(cases)
                strip.update(_start=s, _revisits=idx, _return=ret)
    results["_strips"]["revisit"] = strip
    if "revisit" in want:
        table = {m: {k: _summary(v) for k, v in sc.items()} for m, sc in revisit.curves.items()}
        results["revisit"] = {"frames": counted, "methods": table}
        if not counted:
            results["notes"].append("the loop clips have no revisit beyond the past window")
    if "loop" in want:
        keys = ("ssim", "psnr", "unrelated_ssim", "contrast", "static", "gated")
        results["loop"] = {
            "methods": {
                m: {**{k: float(np.mean([sc[k] for sc in v])) for k in keys}, "clips": len(v)}
                for m, v in closure.items()
            }
        }
        if not closure:
            results["notes"].append("no loop clip returns to its start view")
