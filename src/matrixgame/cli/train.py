"""`matrixgame train vae | decoder | light-vae | latents | dit | idm`: parse the options, run
the job (:mod:`matrixgame.train.jobs`; light-vae: :mod:`matrixgame.accel.light_vae`)."""

from __future__ import annotations

import argparse

FRAMES_HELP = "frames per sample (1 + f k, f the VAE's frames per latent)"


def add_lr_schedule(parser: argparse.ArgumentParser) -> None:
    """A training command's ``--final-lr`` and ``--decay-steps`` (``TrainConfig``'s)."""
    parser.add_argument("--final-lr", type=float, default=1.0, metavar="FRACTION",
                        help="cosine-decay the learning rate to this fraction of --lr by the "
                        "last step (1: constant)")  # fmt: skip
    parser.add_argument("--decay-steps", type=int, default=0, metavar="N",
                        help="with --final-lr: decay over the last N steps only, the rate "
                        "constant before (warmup-stable-decay: a run continued to more "
                        "--steps trains at full rate again until its own last N; 0: the "
                        "whole run)")  # fmt: skip


def _rates(text: str) -> float | tuple[float, ...]:
    """``--rate``: one number, or a comma-separated number per decoder stage."""
    from matrixgame.accel.light_vae import parse_rate

    try:
        return parse_rate(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on a recorded dataset",
        description=(
            "Train on a dataset folder recorded with `matrixgame record`. `train vae`: the "
            "small VAE presets, reconstruction loss (L1 + L2) on windows of frames resized "
            "to --height x --width. Checkpoints (weights, EMA and optimizer state) go to "
            "OUT/checkpoints/ atomically; rerunning the same command resumes exactly where "
            "it stopped. Under torchrun every process trains on its share of each batch "
            "order (DDP)."
        ),
    )
    what = p.add_subparsers(title="model", metavar="MODEL")
    vae = what.add_parser("vae", help="a small VAE (reconstruction)", description=p.description)
    vae.add_argument("--data", required=True, help="dataset folder")
    vae.add_argument("--out", required=True, help="run folder (checkpoints, logs)")
    vae.add_argument("--preset", default="tiny",
                     help="VAE preset (tiny | doom | doom-2x; its probes doom-2x-wide, "
                     "doom-2x-wide-encoder: decoder or encoder twice as wide, doom-2x-z64: "
                     "twice the latent channels)")  # fmt: skip
    vae.add_argument("--steps", type=int, default=2000)
    vae.add_argument("--batch-size", type=int, default=4)
    vae.add_argument("--frames", type=int, default=5, help=FRAMES_HELP)
    stride = "a multiple of the VAE's stride"
    vae.add_argument("--height", type=int, default=96, help=f"training height ({stride})")
    vae.add_argument("--width", type=int, default=128, help=f"training width ({stride})")
    vae.add_argument("--lr", type=float, default=3e-4)
    add_lr_schedule(vae)
    vae.add_argument("--checkpoint-every", type=int, default=200)
    vae.add_argument(
        "--init",
        help="start from these weights (a .safetensors of the model's state dict)",
    )
    vae.add_argument("--cpu-bf16", action="store_true",
                     help="bf16 autocast on the CPU (fast with AVX-512 BF16 or AMX)")  # fmt: skip
    vae.add_argument("--seed", type=int, default=0)
    vae.set_defaults(run_command=_run_train_vae)

    dec = what.add_parser(
        "decoder",
        help="fine-tune a trained VAE's decoder: adversarial + noisy latents",
        description=(
            "Fine-tune the decoder of a `train vae` run with its encoder frozen: "
            "reconstruction (L1 + L2) plus a hinge adversarial term from a patch "
            "discriminator trained alongside (weighted adaptively, as VQGAN), optional "
            "discriminator feature matching, and noise of a random scale added to the "
            "latents, so the decoder stays sharp and robust to the world model's imperfect "
            "latents. The result is a complete VAE run (`train latents` and the world "
            "model read it like any other); resumable like every run."
        ),
    )
    dec.add_argument("--data", required=True, help="dataset folder")
    dec.add_argument("--vae", required=True, help="the `train vae` run to fine-tune")
    dec.add_argument("--out", required=True, help="run folder (checkpoints, logs)")
    dec.add_argument("--steps", type=int, default=2000)
    dec.add_argument("--batch-size", type=int, default=4)
    dec.add_argument("--frames", type=int, default=9, help=FRAMES_HELP)
    dec.add_argument("--lr", type=float, default=1e-4)
    add_lr_schedule(dec)
    dec.add_argument("--adversarial", type=float, default=0.5,
                     help="adversarial weight (times the adaptive weight; 0: off)")  # fmt: skip
    dec.add_argument("--feature-matching", type=float, default=0.0,
                     help="weight of discriminator feature matching")  # fmt: skip
    dec.add_argument("--latent-noise", type=float, default=0.2,
                     help="max std of the noise added to the normalised latents")  # fmt: skip
    dec.add_argument("--r1", type=float, default=1.0, metavar="GAMMA",
                     help="R1 penalty on the discriminator (gamma; 0: off): keeps it from "
                     "winning outright, starving the decoder of adversarial signal")  # fmt: skip
    dec.add_argument("--adaptive-max", type=float, default=1e4, metavar="CAP",
                     help="cap on VQGAN's adaptive weight (before --adversarial): where the "
                     "discriminator weakens, the uncapped weight can run away (the decoder "
                     "then paints a grid)")  # fmt: skip
    dec.add_argument("--init", metavar="WORLD",
                     help="start from a shipped world's autoencoder and discriminator (its "
                     "folder, e.g. worlds/doom-e1m1) or a safetensors of this stage's state; "
                     "its encoder must be the --vae run's (the decoder learns its "
                     "latents)")  # fmt: skip
    dec.add_argument("--checkpoint-every", type=int, default=200)
    dec.add_argument("--cpu-bf16", action="store_true",
                     help="bf16 autocast on the CPU (fast with AVX-512 BF16 or AMX)")  # fmt: skip
    dec.add_argument("--seed", type=int, default=0)
    dec.add_argument("--preset",
                     help="train a fresh decoder of this VAE preset instead (it must share the "
                     "run's encoder, whose latents stay valid): e.g. doom-2x-wide, the "
                     "doom-2x decoder at twice the width")  # fmt: skip
    dec.set_defaults(run_command=_run_train_decoder)

    light = what.add_parser(
        "light-vae",
        help="a light decoder: a trained decoder pruned by 50%% or 75%%, then distilled",
        description=(
            "Prune the decoder of a VAE (a `train vae` / `train decoder` run, or a Wan2.2 "
            "VAE .pth) as MG-LightVAE: every layer keeps the teacher's channels of largest "
            "filter L1 norm (--rate 0.5 keeps half, 0.75 a quarter), consistently through "
            "residual and shortcut paths, and the student decoder is then distilled against "
            "the teacher's on the latents of the dataset's frames (L1 + L2, optionally "
            "stage features). The encoder stays the teacher's; the result is a VAE run "
            "like any other (`train latents` and the world model read it); resumable."
        ),
    )
    light.add_argument("--data", required=True, help="dataset folder")
    light.add_argument("--vae", required=True, help="the teacher: a VAE run, or a Wan2.2 .pth")
    light.add_argument("--out", required=True, help="run folder (checkpoints, logs)")
    light.add_argument("--rate", type=_rates, required=True, metavar="RATE[,RATE...]",
                       help="share of decoder channels pruned: 0.5 or 0.75; or one share per "
                       "decoder stage, from the latents to the pixels (its middle, then each "
                       "up block), e.g. 0.75,0.75,0.75,0.5 for a wider full-resolution "
                       "stage")  # fmt: skip
    light.add_argument("--steps", type=int, default=2000)
    light.add_argument("--batch-size", type=int, default=4)
    light.add_argument("--frames", type=int, default=9, help=FRAMES_HELP)
    light.add_argument("--height", type=int, help="frame height (default: the teacher run's)")
    light.add_argument("--width", type=int, help="frame width (default: the teacher run's)")
    light.add_argument("--lr", type=float, default=1e-4)
    add_lr_schedule(light)
    light.add_argument("--features", type=float, default=0.0,
                       help="weight of the stage-feature loss on the kept channels")  # fmt: skip
    light.add_argument("--real", type=float, default=0.0,
                       help="share of the frame loss fitted to the real frames instead of the "
                       "teacher's decoding of them (0: distillation alone; 1: the real "
                       "frames alone)")  # fmt: skip
    light.add_argument("--checkpoint-every", type=int, default=200)
    light.add_argument("--cpu-bf16", action="store_true",
                       help="bf16 autocast on the CPU (fast with AVX-512 BF16 or AMX)")  # fmt: skip
    light.add_argument("--seed", type=int, default=0)
    light.set_defaults(run_command=_run_train_light_vae)

    lat = what.add_parser(
        "latents",
        help="encode a dataset once with a trained VAE (the DiT's input)",
        description="Encode every clip of a dataset with a trained VAE run's EMA weights into a "
        "latent cache folder (resumable: cached clips are kept).",
    )
    lat.add_argument("--data", required=True, help="dataset folder")
    lat.add_argument("--vae", required=True, help="a `train vae` run folder")
    lat.add_argument("--out", required=True, help="latent cache folder")
    lat.set_defaults(run_command=_run_train_latents)

    dit = what.add_parser(
        "dit",
        help="the world model: error-aware, memory-augmented flow matching",
        description="Flow matching on the current latents of windows of memory + past + "
        "current latents, with actions, camera rays, the error buffer injected into past "
        "and memory, image-only mode and condition dropout (see matrixgame.train.dit_task).",
    )
    dit.add_argument("--latents", required=True, help="latent cache folder")
    dit.add_argument("--out", required=True, help="run folder (checkpoints, logs)")
    dit.add_argument("--preset", default="tiny", help="DiT preset (tiny)")
    dit.add_argument("--steps", type=int, default=5000)
    dit.add_argument("--batch-size", type=int, default=4)
    dit.add_argument("--lr", type=float, default=2e-4)
    add_lr_schedule(dit)
    dit.add_argument("--past", type=int, default=2, help="past latents per window")
    dit.add_argument("--current", type=int, default=4, help="current (generated) latents")
    dit.add_argument("--memory", type=int, default=2, help="memory latents")
    dit.add_argument("--sink", action="store_true", help="keep latent 0 as a persistent memory")
    dit.add_argument("--camera-rope", action="store_true",
                     help="camera-aligned RoPE: move each latent's token grid to where its "
                     "camera's axis lands in the window's last camera, so content seen across a "
                     "turn sits at near-equal positions (not the released model's)")  # fmt: skip
    dit.add_argument(
        "--error-buffer",
        type=float,
        default=1.0,
        metavar="GAMMA",
        help="scale of the banked residuals injected into past and memory latents "
        "(gamma_h = gamma_m; 0 trains without the error buffer, the ablation)",
    )
    dit.add_argument("--past-noise", type=float, default=0.0, metavar="LEVEL",
                     help="noise the past latents to a level drawn per window from [0, LEVEL] "
                     "and give the model that level as their timestep, so that generation "
                     "can noise its own past against drift (GameNGen's noise augmentation; "
                     "not in the report; 0: off)")  # fmt: skip
    dit.add_argument("--checkpoint-every", type=int, default=200)
    dit.add_argument(
        "--fsdp",
        action="store_true",
        help="under torchrun: shard parameters, gradients and optimizer state (FSDP2)",
    )
    dit.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="recompute block activations in the backward pass (less memory, more time)",
    )
    dit.add_argument("--cpu-bf16", action="store_true",
                     help="bf16 autocast on the CPU (fast with AVX-512 BF16 or AMX)")  # fmt: skip
    dit.add_argument("--seed", type=int, default=0)
    dit.set_defaults(run_command=_run_train_dit)

    idm = what.add_parser(
        "idm",
        help="the inverse-dynamics model of `matrixgame eval` (actions from frames)",
        description=(
            "Train the inverse-dynamics model that `matrixgame eval` uses to read actions "
            "back from generated frames (and whose features give the Fréchet distance): "
            "frames t-1, t, t+1 of the recorded clips -> the W/S/A/D keys and the yaw "
            "delta taken at t. Clips are resized to --height x --width once and held in "
            "memory (--max-frames caps them). At the end it reports its accuracy on the "
            "dataset's held-out clips, when there are any."
        ),
    )
    idm.add_argument("--data", required=True, help="dataset folder (train split)")
    idm.add_argument("--out", required=True, help="run folder (checkpoints, logs)")
    idm.add_argument("--steps", type=int, default=3000)
    idm.add_argument("--batch-size", type=int, default=32)
    idm.add_argument("--lr", type=float, default=1e-3)
    idm.add_argument("--height", type=int, default=96, help="input height (multiple of 8)")
    idm.add_argument("--width", type=int, default=128, help="input width (multiple of 8)")
    idm.add_argument("--max-frames", type=int, default=30_000, help="frames held in memory")
    idm.add_argument("--checkpoint-every", type=int, default=500)
    idm.add_argument("--seed", type=int, default=0)
    idm.set_defaults(run_command=_run_train_idm)


def _job(cls, args: argparse.Namespace, **renamed):
    """A job dataclass from the parsed options of the same names."""
    from dataclasses import fields

    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **renamed})


INTERRUPTED = 130  # the shell's exit code for a command ended by Ctrl-C


def finish(trainer) -> int:
    """A training command's exit code: 130 where Ctrl-C or SIGTERM ended the fit (at a
    checkpoint), else 0."""
    if trainer.stopped != "signal":
        return 0
    print(f"interrupted at step {trainer.step} (checkpointed): the same command continues it")
    return INTERRUPTED


def _run_train_vae(args: argparse.Namespace) -> int:
    from matrixgame.train.jobs import VAEJob, train_vae

    trainer = train_vae(_job(VAEJob, args))
    print(f"step {trainer.step}: psnr {trainer.last_logs.get('psnr', 0.0):.2f} dB")
    return finish(trainer)


def _run_train_decoder(args: argparse.Namespace) -> int:
    from matrixgame.train.jobs import DecoderJob, train_decoder

    trainer = train_decoder(_job(DecoderJob, args))
    print(f"step {trainer.step}: psnr {trainer.last_logs.get('psnr', 0.0):.2f} dB")
    return finish(trainer)


def _run_train_light_vae(args: argparse.Namespace) -> int:
    from matrixgame.accel.light_vae import LightVAEJob, train_light_vae

    trainer = train_light_vae(_job(LightVAEJob, args))
    logs = trainer.last_logs
    print(f"step {trainer.step}: psnr against the teacher {logs.get('psnr_teacher', 0.0):.2f} "
          f"dB, against the frames {logs.get('psnr', 0.0):.2f} dB")  # fmt: skip
    return finish(trainer)


def _run_train_latents(args: argparse.Namespace) -> None:
    from matrixgame.train.jobs import cache

    manifest = cache(args.data, args.vae, args.out)
    print(f"{args.out}: {len(manifest.shards)} clips of latents")


def _run_train_dit(args: argparse.Namespace) -> int:
    from matrixgame.train.jobs import DiTJob, train_dit

    trainer = train_dit(_job(DiTJob, args))
    print(f"step {trainer.step}: loss {trainer.last_logs.get('loss', float('nan')):.4f}")
    return finish(trainer)


def _run_train_idm(args: argparse.Namespace) -> int:
    from matrixgame.eval.idm import heldout_accuracy, trained_idm
    from matrixgame.train.jobs import IDMJob, train_idm

    trainer = train_idm(_job(IDMJob, args))
    print(f"step {trainer.step}: loss {trainer.last_logs.get('loss', float('nan')):.4f}")
    if trainer.stopped == "signal":
        return finish(trainer)
    scores = heldout_accuracy(trained_idm(args.out), args.data)
    if scores:
        print("held-out clips: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in scores.items()))  # fmt: skip
    return 0
