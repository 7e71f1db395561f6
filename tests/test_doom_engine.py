"""The data engine on the real game: physics, frame/pose alignment, replay, resume, dataset."""

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("vizdoom")

from matrixgame.data.dataset import ClipDataset  # noqa: E402
from matrixgame.data.engine.agent import NavGrid  # noqa: E402
from matrixgame.data.engine.game import DoomGame, GameConfig, Line  # noqa: E402
from matrixgame.data.engine.recorder import (  # noqa: E402
    RecordConfig,
    merge_shards,
    plan_jobs,
    record_clip,
    record_dataset,
)
from matrixgame.data.shards import Manifest, read_clip  # noqa: E402
from matrixgame.geometry import Trajectory, infer_actions, keyboard_accuracy  # noqa: E402
from matrixgame.geometry.kinematics import doom_kinematics  # noqa: E402


@pytest.mark.parametrize("run", [False, True])
def test_game_physics_matches_the_kinematics(run):
    cfg = doom_kinematics(1, run)
    with DoomGame(GameConfig("MAP01", frame_skip=1, run=run, depth=False)) as game:
        for key, (forward, right) in enumerate([(1, 0), (-1, 0), (0, -1), (0, 1)]):
            game.reset()
            keyboard = np.zeros(6)
            keyboard[key] = 1
            p0 = game.observe().c2w[:2, 3]
            p1 = game.step(keyboard, [0, 0]).c2w[:2, 3]
            p2 = game.step(keyboard, [0, 0]).c2w[:2, 3]
            want = np.array([forward * cfg.forward_speed, -right * cfg.strafe_speed])  # yaw 0
            np.testing.assert_allclose(p1 - p0, want, atol=1e-4)
            np.testing.assert_allclose(p2 - p1 - cfg.friction * (p1 - p0), want, atol=1e-4)


def _rotation_warp_error(src, dst, c2w_src, c2w_dst, K) -> float:
    """Mean absolute error of dst against src warped by the rotation-only homography."""
    fx, fy, cx, cy = K.tolist()
    h, w = dst.shape[:2]
    rot = c2w_src[:3, :3].T @ c2w_dst[:3, :3]
    v, u = np.mgrid[0:h, 0:w] + 0.5
    rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1) @ rot.T
    us, vs = rays[..., 0] / rays[..., 2] * fx + cx, rays[..., 1] / rays[..., 2] * fy + cy
    ok = (rays[..., 2] > 0) & (us >= 0) & (us < w) & (vs >= 0) & (vs < h)
    warped = src[vs[ok].astype(int), us[ok].astype(int)].astype(float)
    return float(np.abs(warped - dst[ok].astype(float)).mean())


def test_each_frame_is_rendered_from_its_own_pose():
    # Turning in place, frame t+1 is frame t seen through the rotation between their poses:
    # the true pose pairing explains it far better than the pose of a neighbouring frame,
    # and the intrinsics' focal length is the best fit.
    with DoomGame(GameConfig("MAP01", width=320, height=240, depth=False)) as game:
        obs = [game.reset()]
        for _ in range(5):
            obs.append(game.step(np.zeros(6), [0.0, 0.5]))  # 7.5 degrees right per frame
        K = game.intrinsics
    for t in range(1, 4):
        a, b = obs[t], obs[t + 1]
        true = _rotation_warp_error(a.frame, b.frame, a.c2w, b.c2w, K)
        for wrong in (obs[t - 1].c2w, obs[t + 2].c2w):
            assert true * 2 < _rotation_warp_error(a.frame, b.frame, a.c2w, wrong, K)
        for scale in (0.95, 1.05):
            K2 = K.clone()
            K2[:2] *= scale
            assert true < _rotation_warp_error(a.frame, b.frame, a.c2w, b.c2w, K2)


def test_replaying_recorded_actions_reproduces_frames_and_poses(tmp_path):
    cfg = RecordConfig(out=str(tmp_path), maps=("MAP01",), frames=80, clip_frames=80)
    job = plan_jobs(cfg)[0]
    name, entry = record_clip(job)
    clip = read_clip(tmp_path / name)
    assert entry["frames"] == len(clip) and len(clip) > 10
    with DoomGame(GameConfig("MAP01", seed=job.seed)) as game:
        obs = game.reset(job.seed)
        for t in range(len(clip)):
            np.testing.assert_array_equal(obs.frame, clip.frames[t])
            np.testing.assert_array_equal(obs.c2w, clip.c2w[t])
            obs = game.step(clip.keyboard[t], clip.mouse[t])


def test_nav_grid_paths_stay_in_walkable_space():
    # a 512 x 256 room split by a wall with a 96-unit doorway at its top
    lines = [
        Line(0, 0, 512, 0, True, 0, 128),
        Line(512, 0, 512, 256, True, 0, 128),
        Line(512, 256, 0, 256, True, 0, 128),
        Line(0, 256, 0, 0, True, 0, 128),
        Line(256, 0, 256, 160, True, 0, 128),
    ]
    grid = NavGrid.build(lines, (64, 64))
    assert grid.walkable[grid.cell_of((400, 64))]  # reachable through the doorway
    dist, parents = grid.distances(grid.cell_of((64, 64)))
    path = grid.path(parents, grid.cell_of((400, 64)))
    assert all(grid.walkable[c] for c in path)
    assert max(grid.centre(c)[1] for c in path) > 160  # it goes round through the doorway
    assert not grid.clear(np.array([64.0, 64.0]), np.array([400.0, 64.0]))  # wall between
    assert grid.clear(np.array([64.0, 64.0]), np.array([200.0, 200.0]))


_PLANS = """
import json, sys
import numpy as np
from matrixgame.data.engine.agent import Explorer, NavGrid
from matrixgame.data.engine.game import Line
walls = [Line(0, 0, 1024, 0, True, 0, 128), Line(1024, 0, 1024, 1024, True, 0, 128),
         Line(1024, 1024, 0, 1024, True, 0, 128), Line(0, 1024, 0, 0, True, 0, 128)]
grid = NavGrid.build(walls, (512, 512))
paths = []
for seed in range(8):  # an open room: every frontier cell ties with many at its distance
    explorer = Explorer(grid, np.random.default_rng(seed))
    explorer._plan(np.array([512.0, 512.0]))
    paths.append([list(map(int, c)) for c in explorer.path])
print(json.dumps(paths))
"""


def test_the_explorer_plans_alike_on_every_cpu():
    """NumPy sorts with whichever SIMD kernel the CPU has (AVX-512, AVX2, baseline), and its
    default sort orders ties differently by kernel: the explorer's choice among equally
    distant frontier cells must not depend on it, or one seed records other trajectories on
    other machines. Each run switches off more of the kernels this CPU has."""
    from numpy._core import _multiarray_umath as umath

    found = [f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f)]
    outputs = set()
    for off in range(len(found) + 1):
        env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(found[len(found) - off :])}
        run = subprocess.run([sys.executable, "-c", _PLANS], env=env, capture_output=True,
                             text=True, check=True)  # fmt: skip
        outputs.add(run.stdout)
    assert len(outputs) == 1 and len(found) > 0


def _small_dataset(root) -> RecordConfig:
    """Two maps, two clips each (one a held-out trajectory), 120 frames a clip."""
    return RecordConfig(
        out=str(root),
        maps=("MAP01", "E1M1"),
        frames=480,
        clip_frames=120,
        loop_fraction=0.0,
        heldout_every=2,
    )


@pytest.fixture(scope="module")
def dataset(module_tmp):
    root = module_tmp("doom")
    return root, record_dataset(_small_dataset(root), progress=False)


def test_recording_has_exact_labels_and_a_split(dataset):
    root, manifest = dataset
    assert len(manifest.shards) == 4
    assert {e["split"] for e in manifest.shards.values()} == {"train", "heldout-traj"}
    accuracy = []
    for name in manifest.shards:
        assert manifest.verified(name)
        clip = read_clip(root / name, keys=[])
        assert clip.meta["map"] in ("MAP01", "E1M1") and clip.tic.tolist() == sorted(clip.tic)
        # physics-based annotation from poses alone, against the buttons really pressed
        traj = Trajectory.from_c2w(torch.from_numpy(clip.c2w))
        kb, mouse = infer_actions(traj, doom_kinematics(2))
        truth = torch.from_numpy(clip.keyboard[:-1]).double()
        accuracy.append(keyboard_accuracy(kb, truth))
        torch.testing.assert_close(
            mouse, torch.from_numpy(clip.mouse[:-1]).double(), atol=1e-6, rtol=0
        )
    assert np.mean(accuracy) >= 0.93


def test_rerun_skips_finished_clips_and_redoes_damaged_ones(dataset):
    root, manifest = dataset
    names = sorted(manifest.shards)
    damaged, intact = root / names[0], root / names[1]
    damaged.write_bytes(damaged.read_bytes()[:1000])
    before = intact.stat().st_mtime_ns
    again = record_dataset(_small_dataset(root), progress=False)
    assert all(again.verified(n) for n in names)
    assert intact.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="another config"):
        record_dataset(RecordConfig(out=str(root), maps=("MAP01",)), progress=False)


def test_shards_recorded_apart_merge_into_the_dataset_one_machine_records(dataset, tmp_path):
    from dataclasses import replace

    root, whole = dataset
    out = tmp_path / "sharded"
    config = replace(_small_dataset(out), num_shards=3)
    for i in (0, 1):
        shard = record_dataset(replace(config, shard_index=i), progress=False)
        assert shard.root == out / f"shard-{i:05d}-of-00003"
    assert len(Manifest.load(out / "shard-00000-of-00003").shards) == 2  # jobs 0 and 3 of 4
    with pytest.raises(ValueError, match="shard-00002-of-00003: 1 clips not recorded yet"):
        merge_shards(out, progress=lambda _: None)
    assert len(list(out.glob("shard-*"))) == 2  # nothing moved
    record_dataset(replace(config, shard_index=2), progress=False)
    merged = merge_shards(out, progress=lambda _: None)
    assert not list(out.glob("shard-*"))
    assert merged.config == whole.config  # how it was split is not part of what it is
    assert merged.shards == whole.shards  # the same clips, bit for bit (their checksums)
    assert all(merged.verified(n) for n in merged.shards)
    assert merge_shards(out).shards == merged.shards  # merging again changes nothing
    with pytest.raises(ValueError, match="shard_index < num_shards"):
        replace(config, shard_index=3)


def test_dataset_windows_memory_and_damaged_shards(dataset, tmp_path):
    root, manifest = dataset
    ds = ClipDataset(root, frames=17, split=None, memory=3)
    item = ds[len(ds) - 1]
    assert item["frames"].shape == (17, 120, 160, 3) and item["frames"].dtype == torch.uint8
    assert item["c2w"].shape == (17, 4, 4) and item["keyboard"].shape == (17, 6)
    assert item["memory_frames"].shape == (3, 120, 160, 3)
    valid = item["memory_index"][item["memory_valid"]]
    assert (valid < item["start"]).all() and ((valid - 1) % 4 == 0).all()
    assert (item["memory_overlap"][:-1] >= item["memory_overlap"][1:]).all()
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        ClipDataset(root, frames=16)
    # a damaged copy: one shard truncated, one altered (only the checksum notices)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    names = sorted(manifest.shards)
    (copy / names[0]).write_bytes((copy / names[0]).read_bytes()[:5000])
    data = bytearray((copy / names[1]).read_bytes())
    data[-10] ^= 0xFF
    (copy / names[1]).write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checked = ClipDataset(copy, split=None, verify=True)
    assert checked.skipped == 2 and "skipped 2" in str(caught[0].message)
    assert len(checked.clips) == len(manifest.shards) - 2


def _record_command(out, frames: int, clip_frames: int, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "matrixgame.cli",
        "record",
        "--out",
        str(out),
        "--maps",
        "MAP01",
        "--frames",
        str(frames),
        "--clip-frames",
        str(clip_frames),
        "--loop-fraction",
        "0",
        "--workers",
        str(workers),
    ]


@pytest.mark.slow
def test_a_killed_recording_resumes(tmp_path):
    out = tmp_path / "ds"
    cmd = _record_command(out, frames=600, clip_frames=150)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )

    def finished_shards() -> int:
        return len(Manifest.load(out).shards) if (out / "manifest.json").exists() else 0

    deadline = time.time() + 120
    while finished_shards() < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = Manifest.load(out)
    assert 1 <= len(first.shards) < 4
    kept = {n: (out / n).stat().st_mtime_ns for n in first.shards}
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    final = Manifest.load(out)
    assert len(final.shards) == 4 and all(final.verified(n) for n in final.shards)
    assert all((out / n).stat().st_mtime_ns == t for n, t in kept.items())


def test_level_pose_is_the_convention():
    from matrixgame.data.engine.game import level_pose
    from matrixgame.geometry import pose_from_angles

    for yaw in (0.0, 37.5, -120.0, 179.9):
        want = pose_from_angles(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64), yaw)
        np.testing.assert_allclose(level_pose(1.0, -2.0, 3.0, yaw), want.numpy(), atol=1e-12)


def test_intrinsics_put_wall_bottoms_where_the_game_draws_them():
    # Facing a solid wall at distance D from an eye h above the floor, the wall meets the
    # floor on row cy + fy h / D: Doom's pixels are 1.2 times taller than wide.
    from matrixgame.data.engine.game import ChaseCamera, read_level

    walls = ChaseCamera(read_level("MAP01").lines)
    with DoomGame(GameConfig("MAP01", width=320, height=240)) as game:
        obs = game.reset()
        fx, fy, _, cy = game.intrinsics.tolist()
        assert fy == pytest.approx(1.2 * fx)
        rows, dists, eyes = [], [], []
        for _ in range(5):
            obs = game.step(np.zeros(6), [0.0, 1.0])  # 15 degrees right per frame
            x, y, eye = obs.c2w[:3, 3]
            yaw = np.degrees(np.arctan2(obs.c2w[1, 2], obs.c2w[0, 2]))
            dists.append(walls.cast(x, y, eye, yaw, reach=1000.0))  # the wall straight ahead
            column = obs.depth[:, 160].astype(int)
            row = 120
            while row + 1 < 240 and column[row + 1] == column[120]:
                row += 1
            rows.append(row + 1)
            eyes.append(eye)
    rows, dists, eyes = np.array(rows), np.array(dists), np.array(eyes)
    # (a lower step in front of a wall can hide its bottom: most views, not all, must match)
    assert (np.abs(rows - (cy + fy * eyes / dists)) <= 1.5).sum() >= 3
    assert (np.abs(rows - (cy + fx * eyes / dists)) <= 1.5).sum() <= 1  # square pixels: wrong


def test_third_person_camera_sits_where_the_game_renders_from():
    cfg = GameConfig("MAP01", width=320, height=240, viewpoint="third", depth=False, labels=True)
    with DoomGame(cfg) as game:
        obs = game.reset()
        _, fy, cx, cy = game.intrinsics.tolist()
        seen = 0
        for step in range(24):
            obs = game.step([1.0, 0, 0, 0, 0, 0] if step % 3 else np.zeros(6), [0.0, 0.6])
            boxes = [b for b in obs.labels if b[0] == "DoomPlayer"]
            dist = np.linalg.norm(obs.c2w[:2, 3] - obs.eye[:2, 3])
            bottom = cy + fy * 48.0 / dist  # the player's feet, 48 units below the camera
            if not boxes or bottom >= 239:
                continue
            _, bx, by, bw, bh = boxes[0]
            assert abs(bx + bw / 2 - cx) <= 6  # straight ahead (walking sprites sway)
            assert abs(by + bh - bottom) <= 6  # at the distance and height we compute
            seen += 1
        assert seen >= 5


def _children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    try:
        return [int(c) for c in open(path).read().split()]
    except OSError:
        return []


@pytest.mark.slow
def test_a_worker_that_dies_is_retried(tmp_path):
    out = tmp_path / "ds"
    cmd = _record_command(out, frames=1200, clip_frames=300, workers=1)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = False
    deadline = time.time() + 60
    while not killed and proc.poll() is None and time.time() < deadline:
        for child in _children(proc.pid):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                time.sleep(1.0)  # let it get into a recording
                os.kill(child, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert killed and proc.returncode == 0, err.decode()[-2000:]
    final = Manifest.load(out)
    assert len(final.shards) == 4 and all(final.verified(n) for n in final.shards)


def test_inspect_reports_clips_and_damage(dataset, tmp_path, capsys):
    import shutil

    from matrixgame.cli import main

    root, manifest = dataset
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    name = sorted(manifest.shards)[0]
    (copy / name).write_bytes(b"garbage")
    assert main(["inspect", str(copy), "--sheet", str(tmp_path / "sheet.png")]) == 0
    out = capsys.readouterr().out
    assert "4 clips" in out and "1 damaged" in out and "DAMAGED" in out
    assert (tmp_path / "sheet.png").stat().st_size > 1000


@pytest.mark.slow
def test_record_on_a_ray_cluster_runs_the_shards_as_tasks_and_merges_them(tmp_path):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a free port for the head node
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = [str(Path(sys.executable).parent / "ray")]
    head = [*ray, "start", "--head", f"--port={port}", "--num-cpus=2",
            "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    subprocess.run(head, check=True, capture_output=True, timeout=120)
    try:
        out = tmp_path / "ds"
        cmd = [*_record_command(out, frames=120, clip_frames=60), "--ray",
               f"127.0.0.1:{port}", "--num-shards", "2"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "shard 1 of 2: 60 frames" in done.stdout
    finally:
        subprocess.run([*ray, "stop", "--force"], capture_output=True, timeout=120)
    manifest = Manifest.load(out)
    assert sorted(manifest.shards) == ["MAP01_00000.safetensors", "MAP01_00001.safetensors"]
    assert all(manifest.verified(n) for n in manifest.shards) and not list(out.glob("shard-*"))
    assert "num_shards" not in manifest.config
