"""The training jobs behind `matrixgame train ...` and the world recipe: each job is a frozen
dataclass of its options and a function that builds the model, data and task, trains with
the one trainer (resuming its run folder), logs samples, and returns the trainer.

``deadline`` (a ``time.monotonic()`` value) and ``stop(step)`` pass through to
:meth:`Trainer.fit`: a job ends at the deadline with a checkpoint, or when ``stop`` says so
after a checkpoint (early stopping), and the same call later continues it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from matrixgame.train.runs import latest_weights
from matrixgame.train.trainer import TrainConfig, Trainer, init_distributed

Stop = Callable[[int], bool] | None


def _init_from(model: torch.nn.Module, path: str | None) -> None:
    """Start ``model`` from a safetensors state dict (names and shapes checked)."""
    if not path:
        return
    from safetensors.torch import load_file

    from matrixgame.models.loading import load_checked

    load_checked(model, {k: v.float() for k, v in load_file(path).items()}, path)


# -- VAE: reconstruction --------------------------------------------------------------------


@dataclass(frozen=True)
class VAEJob:
    data: str
    out: str
    preset: str = "tiny"
    steps: int = 2000
    batch_size: int = 4
    frames: int = 5
    height: int = 96
    width: int = 128
    lr: float = 3e-4
    final_lr: float = 1.0  # cosine decay to this fraction of lr (1: constant)
    decay_steps: int = 0  # ... over the last this many steps only (0: all after warmup)
    checkpoint_every: int = 200
    init: str | None = None  # start from these weights (a state dict .safetensors)
    cpu_bf16: bool = False  # bf16 autocast on the CPU (fast where it has AVX-512 BF16)
    seed: int = 0


def train_vae(job: VAEJob, deadline: float | None = None, stop: Stop = None) -> Trainer:
    from matrixgame.data.dataset import ClipDataset
    from matrixgame.models.vae import VAE_PRESETS, WanVAE
    from matrixgame.train.run_log import RunLog
    from matrixgame.train.vae_task import VAETask, reconstruction_strip

    if job.preset not in VAE_PRESETS or job.preset.startswith("wan2.2"):
        small = sorted(p for p in VAE_PRESETS if not p.startswith("wan2.2"))
        raise ValueError(f"train vae trains the small presets ({', '.join(small)}); "
                         f"got {job.preset!r}")  # fmt: skip
    config = VAE_PRESETS[job.preset]
    if job.height % config.spatial_factor or job.width % config.spatial_factor:
        raise ValueError(f"--height and --width must be multiples of {config.spatial_factor} "
                         f"(the {job.preset} VAE's stride)")  # fmt: skip
    init_distributed()
    torch.manual_seed(job.seed)
    model = WanVAE(config)
    _init_from(model, job.init)
    data = ClipDataset(job.data, frames=job.frames, split="train", stride=2,
                       frames_per_latent=config.temporal_factor)  # fmt: skip
    meta = {"model": "vae", "preset": job.preset, "height": job.height, "width": job.width}
    trainer = Trainer(model, VAETask(job.height, job.width), data, train_config(job), meta)
    run = RunLog(job.out)
    probe = data[0]["frames"][None]  # a fixed clip to reconstruct in the sample strips

    def log(step: int, logs: dict) -> None:
        run(step, logs)
        if step % job.checkpoint_every == 0 or step == job.steps:
            strip = reconstruction_strip(trainer.model, probe, job.height, job.width)
            run.image("reconstruction", step, strip)

    trainer.fit(log, deadline=deadline, stop=stop)
    return trainer


def train_config(job, **extra) -> TrainConfig:
    """The trainer's config from a job's fields (out, steps, batch size, the learning-rate
    schedule, checkpoints, seed) and ``extra``."""
    return TrainConfig(out=job.out, steps=job.steps, batch_size=job.batch_size, lr=job.lr,
                       checkpoint_every=job.checkpoint_every, seed=job.seed,
                       cpu_bf16=getattr(job, "cpu_bf16", False),
                       final_lr=getattr(job, "final_lr", 1.0),
                       decay_steps=getattr(job, "decay_steps", 0), **extra)  # fmt: skip


# -- VAE decoder: adversarial fine-tuning on noisy latents -------------------------------------


@dataclass(frozen=True)
class DecoderJob:
    data: str
    vae: str  # the `train vae` run whose encoder stays frozen
    out: str
    steps: int = 2000
    batch_size: int = 4
    frames: int = 9
    lr: float = 1e-4
    final_lr: float = 1.0  # cosine decay to this fraction of lr (1: constant)
    decay_steps: int = 0  # ... over the last this many steps only (0: all after warmup)
    checkpoint_every: int = 200
    adversarial: float = 0.5
    feature_matching: float = 0.0
    latent_noise: float = 0.2
    r1: float = 1.0  # R1 penalty's gamma on the discriminator (0: off)
    adaptive_max: float = 1e4  # cap on VQGAN's adaptive weight (before `adversarial`)
    # where to start: a shipped world's folder (its VAE and discriminator) or a safetensors
    # of the decoder stage's whole state (``vae.*``, ``disc.*``)
    init: str | None = None
    start_step: int = 0  # the step count of the weights in init (shipped weights)
    cpu_bf16: bool = False  # bf16 autocast on the CPU (fast where it has AVX-512 BF16)
    seed: int = 0
    preset: str | None = None  # a fresh decoder of this VAE preset (e.g. wider), same encoder


def train_decoder(job: DecoderJob, deadline: float | None = None, stop: Stop = None) -> Trainer:
    from matrixgame.data.dataset import ClipDataset
    from matrixgame.models.vae import with_fresh_decoder
    from matrixgame.train.adversarial import DecoderGAN, DecoderTask
    from matrixgame.train.run_log import RunLog
    from matrixgame.train.runs import trained_vae
    from matrixgame.train.vae_task import reconstruction_strip

    init_distributed()
    torch.manual_seed(job.seed)
    vae, (height, width) = trained_vae(job.vae)
    if job.preset:
        vae = with_fresh_decoder(vae, job.preset)  # initialised after job.seed
    model = DecoderGAN(vae.train(), r1=job.r1 > 0)
    _init_decoder(model, job.init, job.vae)
    data = ClipDataset(job.data, frames=job.frames, split="train", stride=2,
                       frames_per_latent=vae.config.temporal_factor)  # fmt: skip
    task = DecoderTask(height, width, adversarial=job.adversarial,
                       feature_matching=job.feature_matching,
                       latent_noise=job.latent_noise, r1=job.r1,
                       adaptive_max=job.adaptive_max)  # fmt: skip
    meta = {"model": "vae", "stage": "decoder", "encoder_run": str(job.vae),
            "weights_prefix": "vae.", **_vae_meta(job.vae), "task": asdict(task)}  # fmt: skip
    if job.preset:
        meta["preset"] = job.preset
    # no joint gradient clipping: the discriminator's gradients (norm ~100) would scale the
    # decoder's down with them; Adam normalises each parameter's step anyway
    trainer = Trainer(model, task, data, train_config(job, grad_clip=float("inf")), meta)
    trainer.step = job.start_step  # a checkpoint in the run folder overrides it
    run = RunLog(job.out)
    probe = data[0]["frames"][None]

    def log(step: int, logs: dict) -> None:
        run(step, logs)
        if step % job.checkpoint_every == 0 or step == job.steps:
            strip = reconstruction_strip(trainer.model.vae, probe, height, width)
            run.image("reconstruction", step, strip)

    trainer.fit(log, deadline=deadline, stop=stop)
    return trainer


def _init_decoder(model: torch.nn.Module, init: str | None, vae_run: str) -> None:
    """Start a ``DecoderGAN`` from a world folder (its ``vae.safetensors``, and its
    ``discriminator.safetensors`` when it ships one, else the fresh discriminator) or from a
    state file of the whole model; its encoder must stay the one of ``vae_run`` (up to bf16
    rounding), whose latents the decoder learns."""
    if not init:
        return
    encoder = [v.clone() for v in _encoder_state(model.vae)]
    if not Path(init).is_dir():
        _init_from(model, init)
    else:
        from matrixgame.models.loading import load_checked
        from matrixgame.worlds.shipped import component_weights

        vae, disc = component_weights(init, "vae"), component_weights(init, "discriminator")
        if vae is None:
            raise ValueError(f"{init}: no vae.safetensors to start the decoder from")
        load_checked(model.vae, vae, f"{init}/vae.safetensors")
        if disc is not None:
            load_checked(model.disc, disc, f"{init}/discriminator.safetensors")
    if not all(torch.equal(now, v) or torch.equal(now, v.bfloat16().float())
               for now, v in zip(_encoder_state(model.vae), encoder, strict=True)):  # fmt: skip
        raise ValueError(f"{init}: its encoder is not the one of {vae_run} (the decoder must "
                         "learn that run's latents)")  # fmt: skip


def _encoder_state(vae) -> list[torch.Tensor]:
    """The tensors of the VAE's modules before its latents (``encoder``, ``conv1``)."""
    return [*vae.encoder.state_dict().values(), *vae.conv1.state_dict().values()]


def _vae_meta(run: str) -> dict:
    """The preset, size and latent statistics of a VAE run."""
    from matrixgame.train.runs import trained_vae

    vae, (height, width) = trained_vae(run)
    _, config = latest_weights(run, model="vae")
    meta = {"preset": config["preset"], "height": height, "width": width,
            "latent_mean": vae.latent_mean.flatten().tolist(),
            "latent_std": vae.latent_std.flatten().tolist()}  # fmt: skip
    if vae.config.pruning_rate:  # a light decoder run
        meta["pruning_rate"] = vae.config.pruning_rate
    return meta


# -- latent cache ------------------------------------------------------------------------------


def cache(data: str, vae_run: str, out: str):
    """Encode every clip of ``data`` with the VAE run's EMA encoder, normalised by its
    latent statistics (measured first when the run has none; resumable)."""
    from matrixgame.train.latents import cache_latents
    from matrixgame.train.runs import trained_vae

    if not (Path(vae_run) / "latent_stats.json").exists():
        _, config = latest_weights(vae_run, model="vae")
        if "latent_mean" not in config:  # a decoder stage carries its encoder's statistics
            latent_statistics(vae_run, data)
    vae, (height, width) = trained_vae(vae_run)
    return cache_latents(data, vae, out, height, width, vae_run)


# -- world model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTJob:
    latents: str
    out: str
    preset: str = "tiny"
    steps: int = 5000
    batch_size: int = 4
    lr: float = 2e-4
    final_lr: float = 1.0  # cosine decay to this fraction of lr (1: constant)
    decay_steps: int = 0  # ... over the last this many steps only (0: all after warmup)
    past: int = 2
    current: int = 4
    memory: int = 2
    sink: bool = False
    camera_rope: bool = False  # camera-aligned RoPE (data.windows.WindowConfig.camera_rope)
    error_buffer: float = 1.0
    past_noise: float = 0.0  # train.dit_task.DiTTask.past_noise
    checkpoint_every: int = 200
    fsdp: bool = False
    grad_checkpointing: bool = False
    init: str | None = None
    start_step: int = 0  # the step count of the weights in init (shipped weights)
    cpu_bf16: bool = False  # bf16 autocast on the CPU (fast where it has AVX-512 BF16)
    seed: int = 0


def train_dit(job: DiTJob, deadline: float | None = None, stop: Stop = None) -> Trainer:
    from matrixgame.data.windows import WindowConfig
    from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT
    from matrixgame.train.dit_task import DiTTask
    from matrixgame.train.error_buffer import ErrorBuffer
    from matrixgame.train.latents import LatentClips
    from matrixgame.train.memory_sampling import WindowDataset
    from matrixgame.train.run_log import RunLog
    from matrixgame.train.runs import vae_of
    from matrixgame.train.samples import generate_current, side_by_side, strip
    from matrixgame.train.trainer import _collate

    if job.preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {job.preset!r}; choose from {sorted(DIT_PRESETS)}")
    if job.error_buffer < 0:
        raise ValueError("--error-buffer must be >= 0")
    if not 0 <= job.past_noise < 1:
        raise ValueError(f"--past-noise is a noise level in [0, 1), got {job.past_noise}")
    init_distributed()
    torch.manual_seed(job.seed)
    clips = LatentClips(job.latents)
    config = DIT_PRESETS[job.preset]
    if config.action is not None and config.action.frames_per_latent != clips.frames_per_latent:
        raise ValueError(f"the {job.preset} DiT takes {config.action.frames_per_latent} frames "
                         f"per latent, the latents in {job.latents} hold "
                         f"{clips.frames_per_latent}")  # fmt: skip
    window = WindowConfig(job.past, job.current, job.memory, sink=job.sink,
                          frames_per_latent=clips.frames_per_latent,
                          camera_rope=job.camera_rope)  # fmt: skip
    data = WindowDataset(clips, window)
    model = MatrixGameDiT(config)
    _init_from(model, job.init)
    model.gradient_checkpointing = job.grad_checkpointing
    meta = {"model": "dit", "preset": job.preset, "latents": job.latents,
            "window": asdict(window), "error_buffer": job.error_buffer,
            "past_noise": job.past_noise}  # fmt: skip
    buffer = ErrorBuffer(gamma_past=job.error_buffer, gamma_memory=job.error_buffer)
    task = DiTTask(buffer=buffer, frames_per_latent=window.frames_per_latent,
                   past_noise=job.past_noise)  # fmt: skip
    trainer = Trainer(model, task, data, train_config(job, fsdp=job.fsdp), meta)
    trainer.step = job.start_step  # a checkpoint in the run folder overrides it
    run = RunLog(job.out)
    vae = vae_of(job.latents)
    probe = _collate([data[len(data) - 1]])  # a fixed window to generate in the sample strips

    def log(step: int, logs: dict) -> None:
        run(step, logs)
        if vae is not None and (step % job.checkpoint_every == 0 or step == job.steps):
            ema = MatrixGameDiT(model.config).eval()
            ema.load_state_dict({k: v.to(torch.float32) for k, v in trainer.ema.items()})
            generated = generate_current(ema, probe)
            run.image("rollout", step, strip(vae, probe["current"], generated))
            run.video("rollout", step, side_by_side(vae, probe["current"], generated))

    trainer.fit(log, deadline=deadline, stop=stop)
    return trainer


# -- inverse dynamics (for the evaluation) -----------------------------------------------------


@dataclass(frozen=True)
class IDMJob:
    data: str
    out: str
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    height: int = 96
    width: int = 128
    max_frames: int = 30_000
    checkpoint_every: int = 500
    seed: int = 0


def train_idm(job: IDMJob, deadline: float | None = None, stop: Stop = None) -> Trainer:
    from matrixgame.eval.idm import IDMConfig, IDMDataset, IDMTask, InverseDynamics, idm_meta
    from matrixgame.train.run_log import RunLog

    if job.height % 8 or job.width % 8:
        raise ValueError("--height and --width must be multiples of 8")
    init_distributed()
    torch.manual_seed(job.seed)
    config = IDMConfig(height=job.height, width=job.width)
    data = IDMDataset(job.data, config, "train", job.max_frames)
    trainer = Trainer(InverseDynamics(config), IDMTask(), data, train_config(job),
                      idm_meta(config))  # fmt: skip
    trainer.fit(RunLog(job.out), deadline=deadline, stop=stop)
    return trainer


# -- latent statistics -------------------------------------------------------------------------


@torch.no_grad()
def latent_statistics(vae_run: str, data: str, clips: int = 12, frames: int = 513) -> Path:
    """Per-channel mean and std of the VAE run's latents over the first ``frames`` frames of
    up to ``clips`` training clips, written to ``<run>/latent_stats.json``; from then on the
    run's VAE encodes normalised latents ((mu - mean) / std, as Wan2.2's), which the world
    model and the decoder stage use. Kept once written (the cache depends on it)."""
    from matrixgame.data.shards import Manifest, read_clip
    from matrixgame.train.latents import encode_clip
    from matrixgame.train.runs import trained_vae

    path = Path(vae_run) / "latent_stats.json"
    if path.exists():
        return path
    vae, (height, width) = trained_vae(vae_run)
    names = [n for n, e in sorted(Manifest.load(data).shards.items()) if e["split"] == "train"]
    if not names:
        raise ValueError(f"{data}: no training clips to measure latents on")
    step = max(1, len(names) // clips)
    z = torch.cat([encode_clip(vae, read_clip(Path(data) / n).frames[:frames], height, width)
                   .flatten(1) for n in names[::step][:clips]], 1)  # [z, N]  # fmt: skip
    stats = {"latent_mean": z.mean(1).tolist(), "latent_std": z.std(1).clamp(min=1e-3).tolist()}
    from matrixgame.io import atomic_write_text

    atomic_write_text(path, json.dumps(stats))
    return path
