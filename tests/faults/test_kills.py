"""The fault suite: long jobs killed with SIGKILL at random moments (seeded), again and
again, then resumed. At the end no shard or checkpoint is corrupt, finished work was not
redone, and the result equals an uninterrupted run, bit for bit where the job is
deterministic. A full disk and a read-only output folder end in a clear error and leave the
previous state intact."""

import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_world_and_latents
from matrixgame.data.shards import Manifest

pytestmark = pytest.mark.slow
ENV = dict(os.environ, OMP_NUM_THREADS="1")
CLI = [sys.executable, "-m", "matrixgame.cli"]


def kill_repeatedly(cmd: list[str], targets: list[int], rng: random.Random, progress,
                    jitter: float) -> int:  # fmt: skip
    """Start ``cmd`` and SIGKILL its process group once ``progress()`` (the work it has
    saved so far: checkpoints, shards, stages) reaches the next of ``targets``, after a
    further random wait of up to ``jitter`` s, cut short when the job saves one more unit;
    again for each target; then run it to the end. The kills follow the job's progress,
    not the clock, so each lands at a random moment on a fast machine as on a slow one.
    Returns the kills that landed (a job that finished first leaves the rest unlanded)."""
    landed = 0
    for target in targets:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=ENV, start_new_session=True)  # fmt: skip
        while proc.poll() is None and progress() < target:
            time.sleep(0.02)
        deadline = time.monotonic() + rng.uniform(0.0, jitter)
        while proc.poll() is None and time.monotonic() < deadline and progress() <= target:
            time.sleep(0.02)
        if proc.poll() is not None:  # finished before the kill: that run was complete
            assert proc.returncode == 0
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        landed += 1
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    return landed


def saved_steps(run: Path, every: int):
    """Progress of a training run: its latest checkpoint's step, in checkpoints."""

    def progress() -> int:
        try:
            return int((run / "checkpoints" / "latest").read_text()) // every
        except (OSError, ValueError):
            return 0

    return progress


def kill_points(rng: random.Random, kills: int, units: int) -> list[int]:
    """``kills`` ascending targets in [0, units): the first may fall before anything is
    saved (a kill during start-up), the rest at distinct saved units, leaving work after."""
    return [0, *sorted(rng.sample(range(1, units), kills - 1))]


def checkpoints(run: Path) -> list[Path]:
    root = run / "checkpoints"
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def assert_checkpoints_whole(run: Path) -> dict:
    """Every kept checkpoint reads back; ``latest`` names one; returns the latest weights."""
    for folder in checkpoints(run):
        load_file(folder / "weights.safetensors")
        torch.load(folder / "state.pt", weights_only=True)
        json.loads((folder / "config.json").read_text())
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(run / "checkpoints" / latest / "weights.safetensors")


@pytest.fixture(scope="module")
def latents(module_tmp):
    return make_world_and_latents(module_tmp("faults"))


def _dit(latents: Path, out: Path, steps: int = 24) -> list[str]:
    return [*CLI, "train", "dit", "--latents", str(latents / "latents"), "--out", str(out),
            "--steps", str(steps), "--batch-size", "2", "--checkpoint-every", "2", "--past",
            "2", "--current", "1", "--memory", "2"]  # fmt: skip


def test_train_dit_killed_six_times_equals_the_unbroken_run(latents, tmp_path):
    rng = random.Random(1)
    subprocess.run(_dit(latents, tmp_path / "straight"), check=True, capture_output=True,
                   env=ENV)  # fmt: skip
    broken = tmp_path / "broken"
    latest = broken / "checkpoints" / "latest"
    targets = kill_points(rng, 6, 10)  # of 12 checkpoints
    landed = kill_repeatedly(_dit(latents, broken), targets, rng, saved_steps(broken, 2), 1.0)
    assert landed == 6
    a, b = assert_checkpoints_whole(tmp_path / "straight"), assert_checkpoints_whole(broken)
    assert int(latest.read_text()) == 24
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_recording_killed_eight_times_keeps_every_finished_shard(tmp_path):
    rng = random.Random(2)
    out = tmp_path / "ds"
    cmd = [*CLI, "record", "--out", str(out), "--maps", "MAP01", "--frames", "3600",
           "--clip-frames", "150", "--loop-fraction", "0", "--workers", "1"]  # fmt: skip
    seen: dict[str, int] = {}

    def progress() -> int:  # the finished shards; notes each one's file when first seen
        if (out / "manifest.json").exists():
            for name in Manifest.load(out).shards:
                seen.setdefault(name, (out / name).stat().st_mtime_ns)
        return len(seen)

    landed = kill_repeatedly(cmd, kill_points(rng, 8, 20), rng, progress, 1.0)  # of 24
    assert landed == 8
    final = Manifest.load(out)
    assert len(final.shards) == 24 and all(final.verified(n) for n in final.shards)
    assert all((out / n).stat().st_mtime_ns == t for n, t in seen.items())  # not redone
    assert not list(out.glob(".*.tmp")), "a killed write's temporary file was left behind"
    straight = tmp_path / "straight"
    subprocess.run([*cmd[:5], str(straight), *cmd[6:]], check=True, capture_output=True,
                   env=ENV)  # fmt: skip
    again = Manifest.load(straight)
    assert again.shards.keys() == final.shards.keys()
    for name in final.shards:  # the same seed: the same clips, killed or not, tensor by tensor
        assert _contents(out / name) == _contents(straight / name), name


def _contents(path: Path) -> tuple:
    """A clip file's metadata and tensors as bytes (safetensors orders its header as it
    likes, so two equal files may differ byte for byte)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}  # noqa: SIM118


def test_distill_killed_four_times_equals_the_unbroken_run(latents, tmp_path):
    rng = random.Random(3)

    def cmd(out):
        return [*CLI, "distill", "--teacher", str(latents / "world"), "--latents",
                str(latents / "latents"), "--out", str(out), "--steps", "12", "--batch-size",
                "1", "--history", "3", "--sampler-steps", "2", "--checkpoint-every", "2",
                "--stage", "multi", "--segments", "2", "--student-every", "2"]  # fmt: skip

    subprocess.run(cmd(tmp_path / "straight"), check=True, capture_output=True, env=ENV)
    broken = tmp_path / "broken"
    landed = kill_repeatedly(cmd(broken), kill_points(rng, 4, 5), rng, saved_steps(broken, 2), 2.0)
    assert landed == 4
    a = assert_checkpoints_whole(tmp_path / "straight")
    b = assert_checkpoints_whole(tmp_path / "broken")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_world_recipe_killed_four_times_finishes_without_redoing_stages(tmp_path):
    rng = random.Random(4)
    work, ship = tmp_path / "work", tmp_path / "shipped"
    cmd = [*CLI, "world", "build", "--world", "tiny", "--work", str(work), "--ship-to",
           str(ship), "--workers", "1", "--threads", "1"]  # fmt: skip
    finished: dict[str, dict[str, int]] = {}
    done: set[str] = set()

    def progress() -> int:  # the stages marked done; notes their files when first seen done
        state = work / "recipe.json"
        if state.exists():
            stages = json.loads(state.read_text())["stages"]
            for name, entry in stages.items():
                run = work / name
                if entry.get("done") and name not in done:
                    done.add(name)
                    if run.is_dir():
                        finished[name] = {str(p): p.stat().st_mtime_ns
                                          for p in run.rglob("*.safetensors")}  # fmt: skip
        return len(done)

    landed = kill_repeatedly(cmd, kill_points(rng, 4, 7), rng, progress, 10.0)  # of 9
    assert landed == 4
    stages = json.loads((work / "recipe.json").read_text())["stages"]
    assert all(stages[s]["done"] for s in ("record", "vae", "latents", "dit", "idm", "eval"))
    assert (ship / "config.json").exists() and (ship / "dit.safetensors").exists()
    for name, files in finished.items():
        for path, mtime in files.items():
            if Path(path).exists():
                assert Path(path).stat().st_mtime_ns == mtime, f"{name} redone: {path}"


def _limited(size: int):
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def test_a_full_disk_is_a_clear_error_and_keeps_the_last_checkpoint(latents, tmp_path):
    run = tmp_path / "run"
    subprocess.run(_dit(latents, run, steps=4), check=True, capture_output=True, env=ENV)
    before = assert_checkpoints_whole(run)
    full = subprocess.run(_dit(latents, run, steps=8), capture_output=True, text=True, env=ENV,
                          preexec_fn=_limited(64 * 1024))  # fmt: skip
    assert full.returncode != 0
    assert "matrixgame: error:" in full.stderr and "Traceback" not in full.stderr
    assert "File too large" in full.stderr or "No space" in full.stderr
    after = assert_checkpoints_whole(run)  # still the step-4 checkpoint, whole
    assert (run / "checkpoints" / "latest").read_text().strip() == "00000004"
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not list((run / "checkpoints").glob(".*.tmp"))


@contextlib.contextmanager
def read_only(folder: Path):
    """The folder made read-only for the jobs this test starts: by permissions, or for root
    (whom permissions do not stop) by a read-only bind mount of it onto itself."""
    if os.getuid() != 0:
        dirs = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
        for d in dirs:
            d.chmod(0o555)
        try:
            yield
        finally:
            for d in dirs:
                d.chmod(0o755)
        return
    mount = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip("root without mount privileges cannot make a folder read-only here")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_output_folder_is_a_clear_error(latents, tmp_path):
    run = tmp_path / "run"
    subprocess.run(_dit(latents, run, steps=2), check=True, capture_output=True, env=ENV)
    before = assert_checkpoints_whole(run)
    with read_only(run):
        denied = subprocess.run(_dit(latents, run, steps=4), capture_output=True, text=True,
                                env=ENV)  # fmt: skip
    assert denied.returncode != 0
    assert "matrixgame: error:" in denied.stderr and "Traceback" not in denied.stderr
    assert "ermission denied" in denied.stderr or "Read-only" in denied.stderr
    after = assert_checkpoints_whole(run)
    assert all(torch.equal(before[k], after[k]) for k in before)
