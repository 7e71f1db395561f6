"""Multi-segment DMD distillation on tiny models: each segment continues from the student's
own last latents, memory comes from its generated latents, the gradient reaches the student
only through the chosen exit step, runs resume bit for bit and replicas stay identical on
gloo, and a distill run opens as a world with its few-step sampler."""

import json

import pytest
import torch

from helpers import make_world_and_latents, off_init
from matrixgame.cli import main
from matrixgame.data.windows import WindowConfig
from matrixgame.diffusion.samplers import sample_euler, sigma_schedule
from matrixgame.distill.dmd import DMDConfig
from matrixgame.distill.job import DistillJob, train_distill
from matrixgame.distill.rollout import conditioned, mask_window, self_rollout
from matrixgame.distill.task import DistillTask, StudentCritic
from matrixgame.geometry import pose_from_angles
from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT
from matrixgame.train.memory_sampling import EpisodeDataset
from matrixgame.train.trainer import _collate
from matrixgame.worlds.shipped import load_world

H = W = 64
WINDOW = WindowConfig(past=2, current=1, memory=2)


class Clips:
    """A latent cache in memory: one clip whose camera walks straight on (the nearer a view
    behind, the more it overlaps: retrieval prefers the latest latents, generated ones)."""

    def __init__(self, latents=14, seed=0):
        g = torch.Generator().manual_seed(seed)
        n = 1 + 4 * (latents - 1)
        position = torch.zeros(n, 3, dtype=torch.float64)
        position[:, 0] = 0.3 * torch.arange(n)
        frame_c2w = pose_from_angles(position, torch.zeros(n, dtype=torch.float64))
        self.clips = [{
            "latents": torch.randn(16, latents, 4, 4, generator=g),
            "c2w": frame_c2w[[0] + [4 * j for j in range(1, latents)]].float(),
            "frame_c2w": frame_c2w.float(), "keyboard": torch.zeros(n, 6),
            "mouse": torch.zeros(n, 2), "K": torch.tensor([32.0, 32.0, 32.0, 32.0]),
        }]  # fmt: skip
        self.meta, self.height, self.width = [{"metres_per_unit": 1.0}], H, W
        self.root, self.frames_per_latent = "memory", 4


def _student():
    torch.manual_seed(0)
    return MatrixGameDiT(DIT_PRESETS["tiny"])


def test_each_segment_continues_from_the_students_own_latents_and_memory():
    data = EpisodeDataset(Clips(), WINDOW, segments=4, history=4)
    batch = _collate([data[0], data[1]])
    assert batch["latents"].shape == (2, 16, 6, 4, 4) and batch["c2w"].shape == (2, 10, 4, 4)
    roll = self_rollout(_student(), batch, WINDOW, 4, sigma_schedule(3, 5.0), 1, H, W, [1, 2])
    context = 6
    for i in range(2):
        windows, made = roll.windows[i], roll.generated[i]
        assert len(windows) == 4 and len(made) == 3
        for j in range(1, 4):  # past of segment j: the tail of the sequence so far
            past = windows[j]["past"][0]
            assert torch.equal(past[:, -1], made[j - 1][:, -1])
            if j >= 2:
                assert torch.equal(past[:, -2], made[j - 2][:, -1])
        memory, index = windows[3]["memory"][0], windows[3]["memory_index"][0]
        generated = [p for p in index.tolist() if p >= context]
        assert generated, f"memory {index.tolist()} took no generated latent"
        for slot, p in enumerate(index.tolist()):
            if p >= context:
                assert torch.equal(memory[:, slot], made[p - context][:, 0])
    assert torch.equal(roll.batch["past"], torch.cat([w[3]["past"] for w in roll.windows]))


def test_the_gradient_reaches_the_student_only_through_the_exit_step():
    student = _student()
    calls = []
    student.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    batch = _collate([EpisodeDataset(Clips(), WINDOW, segments=2, history=4)[0]])
    roll = self_rollout(student, batch, WINDOW, 2, sigma_schedule(3, 5.0), 2, H, W, [0])
    # segment 1: the full 3-step sampler without grad; segment 2: steps 0, 1 without, 2 with
    assert calls == [False] * 3 + [False, False, True]
    roll.x.square().mean().backward()
    grads = [p.grad for p in student.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(roll.batch[k].grad_fn is None for k in ("past", "memory"))


def test_masks_drop_the_past_and_the_memory_consistently():
    batch = _collate([EpisodeDataset(Clips(), WINDOW, segments=1, history=4)[0]])
    roll = self_rollout(_student(), batch, WINDOW, 1, sigma_schedule(2), 0, H, W, [0])
    full = roll.windows[0][0]
    m, p = full["memory"].shape[2], full["past"].shape[2]
    both = mask_window(full, drop_past=True, drop_memory=True)
    assert both["past"].shape[2] == 0 and both["memory"].shape[2] == 0
    assert both["plucker"].shape[2] == full["plucker"].shape[2] - m - p == 1
    assert (
        both["keyboard"].shape[1] == 4 and int(both["first_index"]) == int(full["first_index"]) + p
    )
    null = mask_window(full, drop_memory=True, null_actions=True)
    assert (null["keyboard"] == -1).all() and (null["mouse"] == 1).all()


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_the_regression_target_is_the_teachers_ode_sample_from_the_students_noise(
    monkeypatch, guidance
):
    """... of the teacher with the DMD term's guidance, where it has some."""
    import matrixgame.distill.task as task_module

    teacher = _student().requires_grad_(False)
    off_init(teacher, 0.05)  # a trained model's action and memory layers are not at zero init
    torch.manual_seed(1)
    pair = StudentCritic(MatrixGameDiT(DIT_PRESETS["tiny"]), MatrixGameDiT(DIT_PRESETS["tiny"]),
                         1e-4, 1e-4)  # fmt: skip
    levels = sigma_schedule(3, 3.0)
    batch = _collate([EpisodeDataset(Clips(), WINDOW, segments=2, history=4)[0]])
    seen = {}
    rollout, regression = task_module.self_rollout, task_module.regression_loss
    monkeypatch.setattr(task_module, "self_rollout",
                        lambda *a, **k: seen.setdefault("roll", rollout(*a, **k)))  # fmt: skip

    def spy(x, target):
        seen["target"] = target
        return regression(x, target)

    monkeypatch.setattr(task_module, "regression_loss", spy)

    probe = DistillTask(teacher, WINDOW, H, W, sigma_schedule(3, 5.0), DMDConfig(), segments=2)
    step = next(i for i in range(100) if probe.choices(i)["exit_step"] == 1)  # after re-noising

    def loss(weight):
        seen.clear()
        task = DistillTask(teacher, WINDOW, H, W, sigma_schedule(3, 5.0),
                           DMDConfig(student_every=1, regression=weight, guidance=guidance),
                           segments=2, teacher_sigmas=levels)  # fmt: skip
        torch.manual_seed(7)
        return task.loss(pair, batch, step)

    with_term, logs = loss(0.5)
    roll, target = seen["roll"], seen["target"]
    # the teacher's ODE from where the student's exit step starts (its re-noised sample)
    s = float(sigma_schedule(3, 5.0)[1])
    assert roll.exit_sigma == s and 1 > s > levels[1]  # 0.91: above the teacher's 0.86
    below = torch.cat([torch.tensor([s], dtype=levels.dtype), levels[1:]])
    v = conditioned(teacher, roll.batch, WINDOW.current, roll.null)

    def velocity(x, sigma):
        return v(x, sigma, null=True) + guidance * (v(x, sigma) - v(x, sigma, null=True))

    expected = sample_euler(velocity, roll.exit_x, below)
    torch.testing.assert_close(target, expected)
    student = conditioned(pair.student, roll.batch, WINDOW.current)
    torch.testing.assert_close(roll.x, roll.exit_x - s * student(roll.exit_x, s))
    without, _ = loss(0.0)
    assert "target" not in seen
    torch.testing.assert_close(with_term - without, torch.tensor(0.5 * logs["regression"]))
    with pytest.raises(ValueError, match="teacher's levels"):
        DistillTask(teacher, WINDOW, H, W, levels, DMDConfig(regression=1.0))


def test_a_noised_past_is_the_same_draw_for_every_model_at_its_level_as_in_play(monkeypatch):
    """Distilled from a teacher trained with noise on its past, the student sees the past as
    it plays: every segment's past noised to the level and given it as its timestep, and
    student, critic and teacher read one draw of it."""
    import matrixgame.distill.task as task_module
    from matrixgame.diffusion.flow_matching import NUM_TIMESTEPS

    level, k = 0.3, WINDOW.past
    models = [_student() for _ in range(3)]
    for model in models:
        off_init(model, 0.05)
    teacher = models[0].requires_grad_(False)
    pair = StudentCritic(models[1], models[2], 1e-4, 1e-4)
    seen = {name: [] for name in ("teacher", "student", "critic")}
    for name, model in zip(seen, models, strict=True):
        model.register_forward_pre_hook(
            lambda _, args, name=name: seen[name].append((args[0][:, :, :k], args[1][:, :k]))
        )
    rolls, rollout = [], task_module.self_rollout
    monkeypatch.setattr(task_module, "self_rollout",
                        lambda *a, **kw: rolls.append(rollout(*a, **kw)) or rolls[-1])  # fmt: skip
    task = DistillTask(teacher, WINDOW, H, W, sigma_schedule(3, 5.0),
                       DMDConfig(student_every=1), segments=2, past_noise=level)  # fmt: skip
    step = next(i for i in range(100) if task.choices(i)["segments"] == 2
                and not task.choices(i)["drop_past"])  # fmt: skip
    batch = _collate([EpisodeDataset(Clips(), WINDOW, segments=2, history=4)[0]])
    task.loss(pair, batch, step)
    assert seen["teacher"] and seen["critic"] and len(seen["student"]) > 3
    for calls in seen.values():  # the first segment (the session's sampler) and the last
        assert all(torch.equal(t, torch.full_like(t, NUM_TIMESTEPS * level)) for _, t in calls)
    noised, clean = rolls[0].batch["past"], rolls[0].windows[0][-1]["past"]
    assert rolls[0].past_level == level and noised.shape[2] == k
    for name in seen:  # the last segment's noised past, read by all three
        assert any(torch.equal(past, noised) for past, _ in seen[name]), name
    eps = (noised - (1 - level) * clean) / level  # x_s = (1 - s) x + s eps
    assert 0.8 < float(eps.std()) < 1.2 and abs(float(eps.mean())) < 0.2
    with pytest.raises(ValueError, match="past-noise"):
        DistillJob(teacher="t", latents="l", out="o", past_noise=1.0)


@pytest.fixture(scope="module")
def setup(module_tmp):
    root = make_world_and_latents(module_tmp("distill"))
    return root / "world", root / "latents"


def _job(setup, out, **kw):
    world, latents = setup
    args = dict(teacher=str(world), latents=str(latents), out=str(out), steps=4, batch_size=2,
                student_lr=1e-4, critic_lr=1e-4, student_every=2, history=3,
                sampler_steps=2, checkpoint_every=2, segments=2)  # fmt: skip
    return DistillJob(**{**args, **kw})


def _weights(run):
    from safetensors.torch import load_file

    root = run / "checkpoints"
    return load_file(root / (root / "latest").read_text().strip() / "weights.safetensors")


@pytest.mark.slow
def test_a_stopped_run_resumes_bit_for_bit_and_opens_as_a_world(setup, tmp_path):
    whole = train_distill(_job(setup, tmp_path / "whole", stage="multi"))
    train_distill(_job(setup, tmp_path / "parts", stage="multi", steps=2))
    train_distill(_job(setup, tmp_path / "parts", stage="multi"))
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "parts")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    teacher = load_world(setup[0]).dit.state_dict()
    assert not torch.equal(a["model.student.head.head.weight"], teacher["head.head.weight"])
    logs = [json.loads(line) for line in (tmp_path / "whole/log.jsonl").read_text().splitlines()]
    assert {"critic_loss", "segments", "exit_step"} <= logs[0].keys()
    assert any("dmd_loss" in entry for entry in logs)  # student steps (every 2nd)
    assert list((tmp_path / "whole/samples").glob("student_vs_teacher_*.png"))
    from matrixgame.inference.session import WorldSession
    from matrixgame.worlds.shipped import open_world

    world = open_world(tmp_path / "whole")
    session = WorldSession(world)
    assert session.sampler == "renoise" and len(session.sigmas) == 3
    assert torch.equal(world.dit.state_dict()["head.head.weight"],
                       a["ema.student.head.head.weight"].float())  # fmt: skip
    assert whole.step == 4


def test_the_distill_command_runs_the_cold_start_then_the_multi_segment_stage(setup, tmp_path,
                                                                               capsys):  # fmt: skip
    world, latents = setup
    common = ["--teacher", str(world), "--latents", str(latents), "--steps", "2",
              "--batch-size", "1", "--history", "3", "--sampler-steps", "2"]  # fmt: skip
    assert main(["distill", *common, "--out", str(tmp_path / "cold")]) == 0
    assert main(["distill", *common, "--out", str(tmp_path / "multi"), "--stage", "multi",
                 "--init", str(tmp_path / "cold"), "--segments", "2"]) == 0  # fmt: skip
    config = json.loads((tmp_path / "multi/checkpoints/00000002/config.json").read_text())
    assert config["stage"] == "multi" and config["sampler"]["steps"] == 2
    assert main(["distill", *common, "--out", str(tmp_path / "bad"), "--stage", "multi",
                 "--init", str(world)]) == 2  # fmt: skip
    assert "no student" in capsys.readouterr().err  # a world folder without one to continue


def test_a_world_folders_student_and_kept_critic_continue_at_their_step(setup, tmp_path):
    """A version in training keeps its student and critic in a world folder: a run started
    from it (a fresh clone) holds exactly those weights at their step; without a kept critic
    the critic starts as the teacher's copy."""
    import shutil

    from safetensors.torch import load_file

    from matrixgame.worlds.shipped import save_component

    world, _ = setup
    kept = tmp_path / "kept"
    shutil.copytree(world, kept)
    teacher = load_world(world).dit.state_dict()
    g = torch.Generator().manual_seed(1)
    student = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in teacher.items()}
    critic = {k: v - 0.01 * torch.randn(v.shape, generator=g) for k, v in teacher.items()}
    save_component(kept, "student", student)
    save_component(kept, "critic", critic)
    train_distill(_job(setup, tmp_path / "run", init=str(kept), start_step=7, steps=7))
    assert (tmp_path / "run/checkpoints/latest").read_text().strip() == "00000007"
    saved = _weights(tmp_path / "run")
    for part, name in (("student", "student"), ("critic", "critic")):
        want = load_file(kept / f"{name}.safetensors")
        assert all(torch.equal(saved[f"model.{part}.{k}"].float(), v.float())
                   for k, v in want.items())  # fmt: skip
    (kept / "critic.safetensors").unlink()
    train_distill(_job(setup, tmp_path / "fresh-critic", init=str(kept), start_step=1, steps=1))
    saved = _weights(tmp_path / "fresh-critic")
    assert torch.equal(saved["model.critic.head.head.weight"], teacher["head.head.weight"])


def _ddp_worker(rank, world_size, init, job, result):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    trainer = train_distill(job)
    flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    torch.save(flat, f"{result}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_replicas_stay_identical(setup, tmp_path):
    import torch.multiprocessing as mp

    job = _job(setup, tmp_path / "run", steps=2, batch_size=1)
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_ddp_worker, args=(2, init, job, str(tmp_path / "p")), nprocs=2)
    a, b = torch.load(f"{tmp_path}/p.0"), torch.load(f"{tmp_path}/p.1")
    assert torch.equal(a, b)
