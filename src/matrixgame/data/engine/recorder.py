"""Recording coordination: tick-synchronised capture, parallel workers, resumable output.

Each job records one clip in its own game process: observe frame t (rendered from pose t),
let the agent choose action t from that pose, record the action the game really performs,
step the game, repeat. A job's name and seed follow from the recording config alone, so a
rerun with the same config plans the same jobs and skips those whose shard is listed in the
manifest with a matching checksum. A job whose game process fails or dies is retried; the
manifest only ever lists shards that were written completely.

Scaling out: ``num_shards`` / ``shard_index`` record a deterministic share of the job plan
(every ``num_shards``-th job from ``shard_index``) into ``out/shard-IIIII-of-NNNNN/``, so
the members of a Slurm array or a Kubernetes indexed job each run the same command with
their own index; :func:`merge_shards` then moves the finished clips into ``out`` under one
manifest, the same dataset a single machine would have recorded. :func:`record_on_ray`
runs the shards as tasks on a Ray cluster and merges them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import signal
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field
from multiprocessing import connection
from pathlib import Path

import numpy as np

from matrixgame.data.shards import Clip, Manifest, file_sha256, write_clip

RETRIES = 2


@dataclass(frozen=True)
class RecordConfig:
    out: str
    maps: tuple[str, ...] = ("E1M1",)
    frames: int = 10_000  # total over all jobs
    clip_frames: int = 1024
    workers: int = 1
    width: int = 160
    height: int = 120
    frame_skip: int = 2
    run: bool = False
    depth: bool = True
    loop_fraction: float = 0.2  # share of clips that are scripted out-and-back loops
    third_person: float = 0.0  # share of clips seen through the chase camera
    heldout_maps: tuple[str, ...] = ()  # recorded with split "heldout-map"
    heldout_every: int = 10  # every n-th clip of a training map is a held-out trajectory
    seed: int = 0
    num_shards: int = 1  # split the job plan this many ways (a cluster's array of jobs)
    shard_index: int = 0  # which share this call records

    def __post_init__(self) -> None:
        from matrixgame.data.engine.game import map_wad

        for m in (*self.maps, *self.heldout_maps):
            map_wad(m)
        if self.frames < 1 or self.clip_frames < 2 or self.workers < 1:
            raise ValueError("need frames >= 1, clip_frames >= 2, workers >= 1")
        if not (0 <= self.loop_fraction <= 1 and 0 <= self.third_person <= 1):
            raise ValueError("loop_fraction and third_person must lie in [0, 1]")
        if self.heldout_every < 0:
            raise ValueError("heldout_every must be >= 0 (0: none)")
        if not 1 <= self.num_shards <= 99_999 or not 0 <= self.shard_index < self.num_shards:
            raise ValueError(f"need 1 <= num_shards <= 99999 and 0 <= shard_index < num_shards, "
                             f"got shard {self.shard_index} of {self.num_shards}")  # fmt: skip

    @property
    def folder(self) -> Path:
        """Where this call writes: ``out``, or its shard's folder under it."""
        if self.num_shards == 1:
            return Path(self.out)
        return Path(self.out) / shard_name(self.shard_index, self.num_shards)


# how a recording is split over processes and machines is not part of what the dataset is
HOW = ("out", "workers", "num_shards", "shard_index")


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}"


@dataclass(frozen=True)
class Job:
    name: str
    map: str
    seed: int
    frames: int
    agent: str  # "explore" | "loop"
    split: str  # "train" | "heldout-traj" | "heldout-map"
    viewpoint: str  # "first" | "third"
    config: RecordConfig = field(repr=False)


def _job_seed(base: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{base}:{name}".encode()).digest()[:4], "little")


def plan_jobs(cfg: RecordConfig) -> list[Job]:
    """The deterministic job list: clips spread evenly over the maps (all of it, whatever
    the shard; :func:`shard_jobs` takes a shard's share)."""
    maps = list(cfg.maps) + [m for m in cfg.heldout_maps if m not in cfg.maps]
    per_map = max(1, math.ceil(cfg.frames / (cfg.clip_frames * len(maps))))
    jobs = []
    for m in maps:
        for i in range(per_map):
            name = f"{m}_{i:05d}.safetensors"
            seed = _job_seed(cfg.seed, name)
            rng = np.random.default_rng(seed)
            agent = "loop" if rng.random() < cfg.loop_fraction else "explore"
            viewpoint = "third" if rng.random() < cfg.third_person else "first"
            if m in cfg.heldout_maps:
                split = "heldout-map"
            elif cfg.heldout_every and i % cfg.heldout_every == cfg.heldout_every - 1:
                split = "heldout-traj"
            else:
                split = "train"
            jobs.append(Job(name, m, seed, cfg.clip_frames, agent, split, viewpoint, cfg))
    return jobs


def shard_jobs(jobs: list[Job], count: int, index: int) -> list[Job]:
    """Shard ``index`` of ``count``: every ``count``-th job from ``index`` (maps and clip
    kinds interleave, so shards take similar work)."""
    return jobs[index::count]


_LEVELS: dict = {}  # per worker process: level geometry by map


def record_clip(job: Job) -> tuple[str, dict]:
    """Record one job's clip into its shard (in a worker process). Returns the manifest entry."""
    from matrixgame.data.engine.agent import Explorer, LoopWalker, NavGrid
    from matrixgame.data.engine.game import DoomGame, GameConfig, read_level

    cfg = job.config
    game_cfg = GameConfig(
        job.map,
        cfg.width,
        cfg.height,
        cfg.frame_skip,
        cfg.run,
        cfg.depth,
        seed=job.seed,
        viewpoint=job.viewpoint,
    )
    rng = np.random.default_rng(job.seed)
    if job.map not in _LEVELS:
        _LEVELS[job.map] = read_level(job.map)
    level = _LEVELS[job.map]
    with DoomGame(game_cfg, level) as game:
        obs = game.reset(job.seed)
        grid = NavGrid.build(level.lines, obs.eye[:2, 3], level.obstacles)
        agent = LoopWalker(grid, rng) if job.agent == "loop" else Explorer(grid, rng)
        n, h, w = job.frames, cfg.height, cfg.width
        frames = np.empty((n, h, w, 3), dtype=np.uint8)
        depth = np.empty((n, h, w), dtype=np.uint8) if cfg.depth else None
        poses, keys, mice = np.empty((n, 4, 4)), np.empty((n, 6)), np.empty((n, 2))
        tics = np.empty(n, dtype=np.int64)
        # Doom can move the player by more than physics allows (teleporters): end the clip
        # there, so every clip is one continuous camera path.
        jump = (
            4
            * game.config.frame_skip
            * game.kinematics.forward_speed
            / (1 - game.kinematics.friction)
        )
        t, ended = 0, "length"
        while t < n:
            eye = obs.eye
            keyboard, mouse = game.applied_action(*agent.act(eye))
            frames[t], poses[t], tics[t] = obs.frame, obs.c2w, obs.tic
            keys[t], mice[t] = keyboard, mouse
            if depth is not None:
                depth[t] = obs.depth
            t += 1
            obs = game.step(keyboard, mouse)
            if game.finished:
                ended = "exit"
            elif np.linalg.norm(obs.eye[:3, 3] - eye[:3, 3]) > jump:
                ended = "teleport"
            elif agent.trapped:
                ended = "trapped"
            elif job.agent == "loop" and agent.done:
                ended = "loop done"
            if ended != "length":
                break
        if ended == "trapped":  # drop the struggle: the frames spent confined
            t = max(2, t - agent.history.maxlen)
        K = game.intrinsics.numpy()
        kin = game.kinematics
    meta = {
        "map": job.map,
        "seed": job.seed,
        "split": job.split,
        "agent": job.agent,
        "viewpoint": job.viewpoint,
        "width": cfg.width,
        "height": cfg.height,
        "frame_skip": cfg.frame_skip,
        "run": cfg.run,
        "units": "doom map units",
        "metres_per_unit": kin.metres_per_unit,
        "kinematics": asdict(kin),
        "ended": ended,
    }
    clip = Clip(
        frames[:t],
        poses[:t],
        K,
        keys[:t].astype(np.float32),
        mice[:t].astype(np.float32),
        tics[:t],
        None if depth is None else depth[:t],
        meta,
    )
    sha = write_clip(cfg.folder / job.name, clip)
    entry = {k: meta[k] for k in ("map", "seed", "split", "agent", "viewpoint")}
    entry.update(sha256=sha, frames=len(clip))
    return job.name, entry


def record_dataset(cfg: RecordConfig, progress: bool = True) -> Manifest:
    """Record (or finish recording) the dataset described by ``cfg`` into ``cfg.out`` (its
    shard's share into the shard's folder, when ``cfg.num_shards`` > 1)."""
    from tqdm import tqdm

    root = cfg.folder
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".*.tmp"):  # leftovers of an interrupted write
        stale.unlink()
    manifest = Manifest.load(root)
    config = dataset_config(cfg)
    if manifest.config and dataset_config(manifest.config) != config:
        raise ValueError(
            f"{root} was recorded with another config; use a new folder or the same options"
        )
    manifest.config = config
    jobs = shard_jobs(plan_jobs(cfg), cfg.num_shards, cfg.shard_index)
    todo = [j for j in jobs if not manifest.verified(j.name)]
    for j in todo:
        manifest.shards.pop(j.name, None)
    manifest.save()
    bar = tqdm(total=sum(j.frames for j in jobs), unit="frame", disable=not progress, desc="record")
    bar.update(sum(manifest.shards[j.name]["frames"] for j in jobs if j.name in manifest.shards))
    attempts = dict.fromkeys((j.name for j in todo), 0)
    failures: list[str] = []
    queue = deque(todo)
    workers: list[_Worker] = []
    try:
        while queue or any(w.job for w in workers):
            workers = [w for w in workers if w.process.is_alive() or w.job]
            while len(workers) < min(cfg.workers, len(queue) + sum(bool(w.job) for w in workers)):
                workers.append(_Worker())
            for w in workers:
                if w.job is None and queue:
                    w.give(queue.popleft())
            busy = [w for w in workers if w.job]
            connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy], 1.0)
            for w in busy:
                outcome = w.collect()
                if outcome is None:
                    continue
                job, result = outcome
                if isinstance(result, tuple):
                    name, entry = result
                    manifest.shards[name] = entry
                    manifest.save()
                    bar.update(entry["frames"])
                elif _retry(job, attempts, failures, result):
                    queue.append(job)
    finally:
        for w in workers:
            w.stop()
    bar.close()
    if failures:
        raise RuntimeError("some clips could not be recorded:\n" + "\n".join(failures))
    return manifest


def dataset_config(cfg: RecordConfig | dict) -> dict:
    """What a recording is (its manifest's ``config``): the options, less how the work was
    split (:data:`HOW`), tuples as lists."""
    items = asdict(cfg).items() if isinstance(cfg, RecordConfig) else cfg.items()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in items if k not in HOW}


def merge_shards(out: str | Path, progress=print) -> Manifest:
    """Move the clips of every ``out/shard-*-of-N/`` folder into ``out`` under one manifest.

    Every shard must be complete (all its planned clips recorded and verified) and recorded
    with the same options. Resumable: a merge stopped half way is finished by the next one
    (clips already moved are found in ``out`` by their checksum); each emptied shard folder
    is removed."""
    import shutil

    root = Path(out)
    folders = sorted(p for p in root.glob("shard-*-of-*") if p.is_dir())
    if not folders:
        merged = Manifest.load(root)
        if merged.shards:
            return merged  # merged already
        raise ValueError(f"{root}: no shard-*-of-* folders to merge")
    counts = {p.name.rsplit("-of-", 1)[1] for p in folders}
    if len(counts) != 1 or not counts.pop().isdigit():
        raise ValueError(f"{root}: shard folders of different splits: "
                         f"{', '.join(p.name for p in folders)}")  # fmt: skip
    count = int(folders[0].name.rsplit("-of-", 1)[1])
    manifests = {p: Manifest.load(p) for p in folders}
    configs = {json.dumps(dataset_config(m.config), sort_keys=True) for m in manifests.values()}
    if len(configs) != 1:
        raise ValueError(f"{root}: the shards were recorded with different options")
    config = dataset_config(manifests[folders[0]].config)
    merged = Manifest.load(root)
    if merged.config and dataset_config(merged.config) != config:
        raise ValueError(f"{root} holds a dataset recorded with other options than its shards")
    cfg = RecordConfig(out=str(root), **{k: tuple(v) if isinstance(v, list) else v
                                         for k, v in config.items()})  # fmt: skip
    jobs = plan_jobs(cfg)

    def finished(name: str, manifest: Manifest | None) -> bool:  # in its shard or moved
        if name in merged.shards:
            return True
        entry = manifest.shards.get(name) if manifest else None
        moved = entry and (root / name).exists() and file_sha256(root / name) == entry["sha256"]
        return bool(moved) or (manifest is not None and manifest.verified(name))

    for index in range(count):  # every shard there and finished before anything moves
        folder = root / shard_name(index, count)
        missing = [j.name for j in shard_jobs(jobs, count, index)
                   if not finished(j.name, manifests.get(folder))]  # fmt: skip
        if missing:
            raise ValueError(f"{folder}: {len(missing)} clips not recorded yet (rerun `record "
                             f"--num-shards {count} --shard-index {index}` with the same "
                             f"options)")  # fmt: skip
    merged.config = config
    for folder, manifest in manifests.items():
        for name, entry in sorted(manifest.shards.items()):
            target = root / name
            if not (target.exists() and file_sha256(target) == entry["sha256"]):
                os.replace(folder / name, target)
            merged.shards[name] = entry
        merged.save()
        shutil.rmtree(folder)
        progress(f"merged {folder.name}: {len(manifest.shards)} clips")
    return merged


def _retry(job: Job, attempts: dict, failures: list, why: str) -> bool:
    """Count a failed attempt; True when the job should run again."""
    attempts[job.name] += 1
    if attempts[job.name] > RETRIES:
        failures.append(f"{job.name}: {why} ({RETRIES + 1} attempts)")
        return False
    return True


def _worker_loop(conn) -> None:
    """A worker process: record the jobs it is sent until it is sent None. It leads its own
    process group, so that the game engine processes it starts go with it if it dies."""
    os.setpgrp()
    try:
        while (job := conn.recv()) is not None:
            try:
                result = record_clip(job)
            except Exception as err:  # the reason goes back; the coordinator decides on retries
                result = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
            conn.send(result)
    except (EOFError, BrokenPipeError):  # the coordinator is gone: stop
        pass


class _Worker:
    """One game-recording process and the job it is on. A worker that dies (a crashed or
    killed game process) is noticed by its sentinel; its job is retried elsewhere."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_loop, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.job: Job | None = None

    def give(self, job: Job) -> None:
        self.job = job
        self.conn.send(job)

    def collect(self) -> tuple[Job, tuple | str] | None:
        """(job, result or failure reason) once the job has ended, else None."""
        job = self.job
        try:
            if self.conn.poll():
                self.job = None
                return job, self.conn.recv()
        except (EOFError, OSError):
            pass
        else:
            if self.process.is_alive():
                return None
        self.job = None
        self._kill_group()
        return job, "its worker process died"

    def stop(self) -> None:
        with contextlib.suppress(OSError):  # a dead worker's pipe is closed
            self.conn.send(None)
        self.process.join(timeout=5)
        self._kill_group()

    def _kill_group(self) -> None:
        """End the worker and anything it started (ViZDoom runs the game in a child)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.join(timeout=5)


def record_on_ray(cfg: RecordConfig, address: str, num_shards: int | None = None,
                  progress=print) -> Manifest:  # fmt: skip
    """Record ``cfg`` as ``num_shards`` Ray tasks (default: the cluster's CPUs over
    ``cfg.workers``; each task runs ``cfg.workers`` game processes) on the cluster at
    ``address`` ("local": a Ray instance started here), then merge them. Every node must see
    ``cfg.out`` (a shared filesystem) and have matrixgame installed. A task that fails is
    retried by Ray; a rerun records only the clips still missing."""
    from dataclasses import replace

    try:
        import ray
    except ImportError as err:
        raise ValueError("--ray needs Ray: pip install 'matrixgame[ray]'") from err
    out = Path(cfg.out).resolve()
    ray.init(address=None if address == "local" else address, log_to_driver=False,
             configure_logging=False)  # fmt: skip
    try:
        if num_shards is None:
            num_shards = max(1, int(ray.cluster_resources().get("CPU", 1)) // cfg.workers)
        task = ray.remote(num_cpus=cfg.workers, max_retries=RETRIES)(_record_shard)
        refs = {task.remote(replace(cfg, out=str(out), num_shards=num_shards, shard_index=i)): i
                for i in range(num_shards)}  # fmt: skip
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    frames = ray.get(ref)
                except ray.exceptions.RayError as err:
                    raise RuntimeError(f"shard {refs[ref]} of {num_shards} failed: {err}") from None
                progress(f"shard {refs[ref]} of {num_shards}: {frames} frames")
    finally:
        ray.shutdown()
    if num_shards == 1:
        return Manifest.load(out)
    return merge_shards(out, progress)


def _record_shard(cfg: RecordConfig) -> int:
    """One shard, in a Ray worker: its frames."""
    return record_dataset(cfg, progress=False).frames()
