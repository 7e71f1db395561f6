"""`matrixgame distill`: a few-step student of a trained world model, by DMD in two stages.

Teacher (frozen), critic and student all start from one world model (a `train dit` run or
a shipped world); a second stage starts from the first stage's run (``init``). The cold
start rolls out one segment on the recorded past latents; the multi-segment stage rolls out
1..``segments`` segments on the student's own past and memory. Checkpoints are the
trainer's (resumable bit for bit; the student's EMA is what inference loads: a distill run
opens as a world, ``matrixgame.train.runs.trained_world``), logs are JSON lines and
TensorBoard, and sample strips compare the student's few-step sample with the teacher's.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from matrixgame.train.trainer import TrainConfig, Trainer, init_distributed

STAGES = ("cold", "multi")


@dataclass(frozen=True)
class DistillJob:
    teacher: str  # a `train dit` run or a shipped world
    latents: str  # the latent cache the episodes come from (the teacher's VAE)
    out: str
    stage: str = "cold"
    # a distill run to continue from (the cold start, for "multi"), or a world folder with a
    # student (and the critic a version in training keeps beside it)
    init: str | None = None
    start_step: int = 0  # the step count of a world folder's student (a run's checkpoint wins)
    steps: int = 600
    batch_size: int = 2
    student_lr: float = 5e-7
    critic_lr: float = 1e-7
    student_every: int = 5
    segments: int = 6  # the multi-segment stage's longest rollout
    mask: float = 0.2
    history: int = 8  # recorded latents before each episode's window (its first memory)
    sampler_steps: int = 3
    shift: float = 5.0  # of the student's schedule and of the DMD timesteps
    schedule: str = "shifted"  # or "distilled": the release's [1000, 666, 333]
    guidance: float = 1.0  # the teacher's CFG (1: off)
    # DMD's regression term: its weight (0: off) and the teacher's Euler steps for its target
    # (0: the teacher world's own sampler, as it plays; its shift too)
    regression: float = 0.0
    regression_steps: int = 0
    teacher_steps: int = 50  # the teacher's sampler in the sample strips
    # the noise level on the past latents (DistillTask.past_noise) for a teacher trained
    # with `train dit --past-noise`; the student's sampler plays with it
    past_noise: float = 0.0
    checkpoint_every: int = 100
    ema_decay: float = 0.99
    grad_clip: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; choose from {STAGES}")
        if self.schedule not in ("shifted", "distilled"):
            raise ValueError(f"unknown schedule {self.schedule!r}; shifted or distilled")
        if self.schedule == "distilled" and self.sampler_steps != 3:
            raise ValueError("the distilled schedule has 3 steps (--sampler-steps 3)")
        if not 1 <= self.sampler_steps <= 50 or self.segments < 1 or not 0 <= self.mask <= 1:
            raise ValueError("need 1 <= sampler_steps <= 50, segments >= 1, 0 <= mask <= 1")
        if min(self.student_lr, self.critic_lr) <= 0:
            raise ValueError("learning rates must be positive")
        if not self.regression >= 0 or not 0 <= self.regression_steps <= 100:
            raise ValueError("need regression >= 0 and 0 <= regression_steps <= 100")
        if not 0 <= self.past_noise < 1:
            raise ValueError(f"--past-noise is a noise level in [0, 1), got {self.past_noise}")


def student_sigmas(job: DistillJob) -> torch.Tensor:
    from matrixgame.diffusion.samplers import distilled_schedule, sigma_schedule

    if job.schedule == "distilled":
        return distilled_schedule(job.shift)
    return sigma_schedule(job.sampler_steps, job.shift)


def teacher_sigmas(job: DistillJob, world) -> torch.Tensor:
    """The levels of the regression term's target: the teacher world's Euler sampler (its
    steps unless ``job.regression_steps`` says otherwise, its shift)."""
    from matrixgame.diffusion.samplers import sigma_schedule
    from matrixgame.inference.session import DEFAULT_SHIFT, DEFAULT_STEPS

    sampler = (world.meta or {}).get("sampler") or {}
    steps = job.regression_steps or sampler.get("steps", DEFAULT_STEPS)
    return sigma_schedule(steps, sampler.get("shift", DEFAULT_SHIFT))


def train_distill(job: DistillJob, deadline: float | None = None) -> Trainer:
    from matrixgame.distill.dmd import DMDConfig
    from matrixgame.distill.task import DistillTask, StudentCritic
    from matrixgame.models.loading import load_checked
    from matrixgame.train.latents import LatentClips
    from matrixgame.train.memory_sampling import EpisodeDataset
    from matrixgame.train.run_log import RunLog
    from matrixgame.worlds.shipped import open_world

    init_distributed()
    torch.manual_seed(job.seed)
    world = open_world(job.teacher)
    teacher = world.dit.eval().requires_grad_(False)
    clips = LatentClips(job.latents)
    if clips.clips[0]["latents"].shape[0] != teacher.config.in_dim:
        raise ValueError(f"{job.latents}: latents of {clips.clips[0]['latents'].shape[0]} "
                         f"channels; the teacher takes {teacher.config.in_dim}")  # fmt: skip
    segments = job.segments if job.stage == "multi" else 1
    data = EpisodeDataset(clips, world.window, segments, job.history)
    pair = StudentCritic(copy.deepcopy(teacher).train().requires_grad_(True),
                         copy.deepcopy(teacher).train().requires_grad_(True),
                         job.student_lr, job.critic_lr)  # fmt: skip
    if job.init:
        load_checked(pair, _init_state(job.init, pair), job.init)
    sigmas = student_sigmas(job)
    dmd = DMDConfig(shift=job.shift, guidance=job.guidance, student_every=job.student_every,
                    regression=job.regression)  # fmt: skip
    task = DistillTask(teacher, world.window, world.height, world.width, sigmas, dmd,
                       segments, job.mask, job.seed, teacher_sigmas(job, world),
                       job.past_noise)  # fmt: skip
    meta = {
        "model": "dmd", "preset": _preset(teacher), "latents": job.latents,
        "window": asdict(world.window), "teacher": str(job.teacher), "stage": job.stage,
        "job": asdict(job), "height": world.height, "width": world.width,
        "vae": (world.meta or {}).get("vae"),
        "sampler": {"name": "renoise", "steps": len(sigmas) - 1, "shift": job.shift,
                    "sigmas": sigmas.tolist(), "distilled": True,
                    **({"past_noise": job.past_noise} if job.past_noise else {})},
    }  # fmt: skip
    config = TrainConfig(out=job.out, steps=job.steps, batch_size=job.batch_size,
                         lr=job.student_lr, grad_clip=job.grad_clip, ema_decay=job.ema_decay,
                         checkpoint_every=job.checkpoint_every, seed=job.seed, warmup=0,
                         log_every=1)  # fmt: skip
    trainer = Trainer(pair, task, data, config, meta)
    trainer.step = job.start_step  # a checkpoint in the run folder overrides it
    teacher.to(trainer.device)
    run = RunLog(job.out)

    def log(step: int, logs: dict) -> None:
        run(step, logs)
        if world.vae is not None and (step % job.checkpoint_every == 0 or step == job.steps):
            run.image("student_vs_teacher", step, _strip(world, trainer, data, sigmas, job))

    trainer.fit(log, deadline=deadline)
    return trainer


def _init_state(init: str, pair) -> dict:
    """The student and critic a run starts from: a distill run's latest weights, or a world
    folder's ``student.safetensors`` with its ``critic.safetensors`` (a version in training
    keeps both; where the critic is missing it stays the teacher's copy, as at the start)."""
    from safetensors.torch import load_file

    from matrixgame.train.runs import latest_weights

    folder = Path(init)
    if (folder / "config.json").exists() and not (folder / "checkpoints").exists():
        if not (folder / "student.safetensors").exists():
            raise ValueError(f"{init}: a world folder with no student (student.safetensors)")
        critic = folder / "critic.safetensors"
        parts = {
            "student": load_file(folder / "student.safetensors"),
            "critic": load_file(critic) if critic.exists() else pair.critic.state_dict(),
        }
        return {f"{part}.{k}": v.float() for part, state in parts.items()
                for k, v in state.items()}  # fmt: skip
    state, config = latest_weights(init, prefix="model.")
    if config.get("model") != "dmd":
        raise ValueError(f"{init}: not a `matrixgame distill` run")
    return state


def _preset(model) -> str:
    from matrixgame.models.dit import DIT_PRESETS

    for name, cfg in DIT_PRESETS.items():
        if cfg == model.config:
            return name
    raise ValueError("the teacher's configuration is not a named DiT preset")


@torch.no_grad()
def _strip(world, trainer: Trainer, data, sigmas: torch.Tensor, job: DistillJob):
    """Recorded | teacher at ``teacher_steps`` | student (EMA) at its few steps, one window."""
    import numpy as np

    from matrixgame.distill.rollout import episode_start
    from matrixgame.inference.rollout import denoise_window
    from matrixgame.inference.session import WorldSession
    from matrixgame.models.dit import MatrixGameDiT
    from matrixgame.train.runs import sub_state
    from matrixgame.train.samples import strip
    from matrixgame.train.trainer import _collate

    student = MatrixGameDiT(trainer.model.student.config).eval()
    student.load_state_dict({k: v.float() for k, v in sub_state(trainer.ema, "student.").items()})
    item = _collate([data[len(data) - 1]])
    session = WorldSession(world, decode=False, metres_per_unit=float(item["metres_per_unit"][0]))
    start = episode_start(item, 0, world.window.frames_per_latent)
    session.reset(start)
    n = session.frames_per_step
    f = start.frame_c2w.shape[0]
    window = session.prepare(item["keyboard"][0, f : f + n], item["mouse"][0, f : f + n],
                             item["frame_c2w"][0, f : f + n])  # fmt: skip
    c = world.window.current
    g = torch.Generator().manual_seed(0)
    teacher = denoise_window(world.dit, window.batch, c, job.teacher_steps, session.shift, g,
                             past_noise=job.past_noise)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    fast = denoise_window(student, window.batch, c, generator=g, sampler="renoise", sigmas=sigmas,
                          past_noise=job.past_noise)  # fmt: skip
    real = item["current"][:, :, :c]
    top = strip(world.vae, real, teacher)
    bottom = strip(world.vae, real, fast)
    return np.concatenate([top, bottom[bottom.shape[0] // 2 :]], 0)
