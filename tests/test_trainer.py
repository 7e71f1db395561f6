"""The training loop: exact resume after SIGKILL, DDP replicas, the non-finite guard."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_dataset
from matrixgame.data.dataset import ClipDataset
from matrixgame.models.vae import VAE_PRESETS, WanVAE
from matrixgame.train.trainer import TrainConfig, Trainer
from matrixgame.train.vae_task import VAETask


def train_command(data, out, steps=8):
    return [sys.executable, "-m", "matrixgame.cli", "train", "vae", "--data", str(data),
            "--out", str(out), "--steps", str(steps), "--batch-size", "2", "--frames", "5",
            "--height", "48", "--width", "64", "--checkpoint-every", "2"]  # fmt: skip


def final_weights(out):
    latest = (out / "checkpoints" / "latest").read_text().strip()
    return load_file(out / "checkpoints" / latest / "weights.safetensors")


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(tmp_path):
    data = make_dataset(tmp_path / "data")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight = tmp_path / "straight"
    subprocess.run(train_command(data, straight), check=True, capture_output=True, env=env)
    broken = tmp_path / "broken"
    proc = subprocess.Popen(train_command(data, broken), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    latest = broken / "checkpoints" / "latest"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if latest.exists() and int(latest.read_text()) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert int(latest.read_text()) < 8  # it was stopped part-way
    subprocess.run(train_command(data, broken), check=True, capture_output=True, env=env)
    a, b = final_weights(straight), final_weights(broken)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_checkpoints_the_step_in_flight_and_resumes(tmp_path, signum):
    """A signal ends the fit at the step in flight with a checkpoint there (not the last
    interval's), exit code 130; the same command then continues to the same weights."""
    data = make_dataset(tmp_path / "data")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    subprocess.run(train_command(data, straight, 30), check=True, capture_output=True, env=env)
    command = [*train_command(data, broken, 30)[:-1], "30"]  # no checkpoint before the end
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)  # fmt: skip
    log, deadline = broken / "log.jsonl", time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if log.exists() and log.read_text().strip():  # training: 10 steps logged
            proc.send_signal(signum)
            break
        time.sleep(0.01)
    out, _ = proc.communicate(timeout=120)
    step = int((broken / "checkpoints" / "latest").read_text())
    assert proc.returncode == 130, out
    assert 10 <= step < 30, step  # where it was, not at an interval's end
    assert f"interrupted at step {step} (checkpointed)" in out
    subprocess.run(command, check=True, capture_output=True, env=env)
    a, b = final_weights(straight), final_weights(broken)
    assert all(torch.equal(a[k], b[k]) for k in a)


class NaNAfter:
    """A VAE task whose loss turns NaN at one step."""

    def __init__(self, step):
        self.step, self.task = step, VAETask(48, 64)

    def loss(self, model, batch, step):
        loss, logs = self.task.loss(model, batch, step)
        return (loss * float("nan"), logs) if step == self.step else (loss, logs)


def test_non_finite_losses_skip_the_update(tmp_path):
    torch.manual_seed(0)
    data = ClipDataset(make_dataset(tmp_path / "data"), frames=5, stride=4)
    model = WanVAE(VAE_PRESETS["tiny"])
    cfg = TrainConfig(out=str(tmp_path / "run"), steps=3, batch_size=2, checkpoint_every=1,
                      keep_checkpoints=2)  # fmt: skip
    trainer = Trainer(model, NaNAfter(1), data, cfg)
    snapshots = []
    original = trainer.save

    def save():
        snapshots.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return original()

    trainer.save = save
    trainer.fit(progress=False)
    assert trainer.skipped == 1
    assert all(
        torch.equal(snapshots[0][k], snapshots[1][k]) for k in snapshots[0]
    )  # step 2: no update
    assert not all(torch.equal(snapshots[1][k], snapshots[2][k]) for k in snapshots[0])
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["00000002", "00000003", "latest"]
    assert (
        json.loads((tmp_path / "run/checkpoints/00000003/config.json").read_text())["train"][
            "steps"
        ]
        == 3
    )


def _ddp_worker(rank, world, init, data, out, result):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)  # identical initial weights on every rank
    model = WanVAE(VAE_PRESETS["tiny"])
    cfg = TrainConfig(out=out, steps=3, batch_size=1, checkpoint_every=10)
    trainer = Trainer(model, VAETask(48, 64), ClipDataset(data, frames=5, stride=4), cfg)
    trainer.fit(progress=False)
    flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    torch.save(flat, f"{result}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_replicas_stay_identical(tmp_path):
    import torch.multiprocessing as mp

    data = make_dataset(tmp_path / "data")
    init = f"file://{tmp_path / 'rendezvous'}"
    result = str(tmp_path / "params")
    mp.spawn(_ddp_worker, args=(2, init, str(data), str(tmp_path / "run"), result), nprocs=2)
    a, b = torch.load(f"{result}.0"), torch.load(f"{result}.1")
    torch.manual_seed(0)
    start = torch.cat([p.flatten() for p in WanVAE(VAE_PRESETS["tiny"]).parameters()])
    assert torch.equal(a, b) and not torch.equal(a, start)


class RandomWindows(torch.utils.data.Dataset):
    """Fixed random world-model windows (no recording needed)."""

    def __init__(self, n=4):
        g = torch.Generator().manual_seed(5)
        self.items = [
            {
                "memory": torch.randn(16, 1, 4, 4, generator=g),
                "past": torch.randn(16, 1, 4, 4, generator=g),
                "current": torch.randn(16, 2, 4, 4, generator=g),
                "memory_index": torch.tensor([0]),
                "first_index": torch.tensor(2),
                "keyboard": torch.zeros(12, 6),
                "mouse": torch.zeros(12, 2),
                "plucker": torch.randn(1536, 4, 4, 4, generator=g),
            }  # fmt: skip
            for _ in range(n)
        ]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _sharded_worker(rank, world, init, out, fsdp, steps, result):
    import torch.distributed as dist

    from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT
    from matrixgame.train.dit_task import DiTTask

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = MatrixGameDiT(DIT_PRESETS["tiny"])
    cfg = TrainConfig(out=out, steps=steps, batch_size=1, checkpoint_every=2, fsdp=fsdp)
    task = DiTTask(image_only=0.0, drop_memory=0.0, drop_past=0.0, drop_actions=0.0)
    Trainer(model, task, RandomWindows(), cfg).fit(progress=False)
    dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_trains_like_ddp_and_resumes(tmp_path):
    import torch.multiprocessing as mp

    def run(name, fsdp, steps):
        init = f"file://{tmp_path / (name + str(steps))}"
        mp.spawn(_sharded_worker, args=(2, init, str(tmp_path / name), fsdp, steps, None), nprocs=2)
        return final_weights(tmp_path / name)

    ddp = run("ddp", False, 3)
    run("fsdp", True, 2)  # stop after a checkpoint, then resume to step 3 in new processes
    fsdp = run("fsdp", True, 3)
    assert ddp.keys() == fsdp.keys()
    for k in ddp:
        torch.testing.assert_close(fsdp[k], ddp[k], atol=1e-5, rtol=1e-4)


def _tiny_trainer(tmp_path, out: str, steps: int = 4, **config) -> Trainer:
    torch.manual_seed(0)
    data = ClipDataset(make_dataset(tmp_path / "data"), frames=5, stride=4)
    cfg = TrainConfig(out=str(tmp_path / out), steps=steps, batch_size=2, checkpoint_every=2,
                      **config)  # fmt: skip
    return Trainer(WanVAE(VAE_PRESETS["tiny"]), VAETask(48, 64), data, cfg)


def test_a_deadline_checkpoints_and_the_next_call_continues_bit_for_bit(tmp_path):
    straight = _tiny_trainer(tmp_path, "straight")
    straight.fit(progress=False)
    first = _tiny_trainer(tmp_path, "broken")
    first.fit(progress=False, deadline=time.monotonic())  # already due: one step, then stop
    assert (first.step, first.stopped) == (1, "deadline")
    assert (tmp_path / "broken/checkpoints/latest").read_text() == "00000001"
    second = _tiny_trainer(tmp_path, "broken")
    second.fit(progress=False)
    assert second.step == 4 and second.stopped is None
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "broken")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stop_ends_training_after_a_checkpoint(tmp_path):
    asked = []
    trainer = _tiny_trainer(tmp_path, "run", steps=6)
    trainer.fit(progress=False, stop=lambda step: asked.append(step) or step >= 4)
    assert asked == [2, 4] and trainer.step == 4 and trainer.stopped == "stop"
    assert (tmp_path / "run/checkpoints/latest").read_text() == "00000004"
    # asked at the last checkpoint too (its figure ends the held-out curve): nothing to end
    asked.clear()
    last = _tiny_trainer(tmp_path, "last", steps=4)
    last.fit(progress=False, stop=lambda step: asked.append(step) or True)
    assert asked == [2] and last.stopped == "stop"
    more = _tiny_trainer(tmp_path, "more", steps=4)
    more.fit(progress=False, stop=lambda step: asked.append(step) or step > 2)
    assert asked == [2, 2, 4] and more.step == 4 and more.stopped is None


def test_a_continued_run_trains_at_its_own_learning_rate(tmp_path):
    """The checkpoint brings back the optimizer's moments, not the rate it ran at: a run
    continued with a new --lr trains at that one."""
    first = _tiny_trainer(tmp_path, "run", steps=2)
    first.fit(progress=False)
    more = _tiny_trainer(tmp_path, "run", steps=4, warmup=1, lr=3e-5)
    rates = []
    more.fit(lambda step, logs: rates.append(logs["lr"]), progress=False)
    assert more.step == 4 and rates[-1] == pytest.approx(3e-5) != first.cfg.lr


def test_the_learning_rate_warms_up_then_decays_on_a_cosine_to_its_final_fraction(tmp_path):
    cfg = TrainConfig(out=str(tmp_path), steps=110, warmup=10, final_lr=0.1)
    assert cfg.lr_scale(0) == pytest.approx(0.1) and cfg.lr_scale(9) == pytest.approx(1.0)
    assert cfg.lr_scale(60) == pytest.approx(0.55)  # half way down the cosine
    assert cfg.lr_scale(110) == pytest.approx(0.1) and cfg.lr_scale(500) == pytest.approx(0.1)
    assert TrainConfig(out=str(tmp_path), warmup=10).lr_scale(500) == 1.0  # constant by default
    with pytest.raises(ValueError, match="final_lr is a fraction"):
        TrainConfig(out=str(tmp_path), final_lr=1.5)
    # warmup-stable-decay: constant until the last decay_steps, then the same cosine there;
    # a larger target moves the cooldown to its new end
    wsd = TrainConfig(out=str(tmp_path), steps=1000, warmup=10, final_lr=0.1, decay_steps=100)
    assert wsd.lr_scale(9) == wsd.lr_scale(900) == pytest.approx(1.0)
    assert wsd.lr_scale(950) == pytest.approx(0.55) and wsd.lr_scale(1000) == pytest.approx(0.1)
    longer = TrainConfig(out=str(tmp_path), steps=2000, warmup=10, final_lr=0.1, decay_steps=100)
    assert longer.lr_scale(1000) == pytest.approx(1.0) and longer.lr_scale(1950) == pytest.approx(
        0.55
    )
    with pytest.raises(ValueError, match="decay_steps must be >= 0"):
        TrainConfig(out=str(tmp_path), decay_steps=-1)
    trainer = _tiny_trainer(tmp_path, "run", steps=4)
    trainer.cfg = TrainConfig(out=str(tmp_path / "run"), steps=4, batch_size=2, warmup=1,
                              checkpoint_every=2, final_lr=0.2)  # fmt: skip
    rates = []
    trainer.fit(lambda step, logs: rates.append(logs["lr"]), progress=False)
    # the last step (index 3) is 2/3 down the cosine after one warmup step: 0.2 + 0.8 / 4
    assert rates[-1] == pytest.approx(0.4 * trainer.cfg.lr)
