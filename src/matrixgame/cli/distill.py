"""`matrixgame distill`: a few-step student of a trained world model (DMD, two stages)."""

from __future__ import annotations

import argparse

from matrixgame.cli.train import finish


def add_distill(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="distil a world model into a few-step student (DMD, multi-segment)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Distribution-matching distillation of a world model: teacher (frozen), critic and student
start from the same weights; the student rolls out segments of recorded episodes, the
critic learns its samples by flow matching, the student follows the teacher's and the
critic's x0 difference (DMD). Two stages, as the report:

  cold    one segment on the recorded past (report: 600 steps, student LR 5e-7,
          critic LR 1e-7, 5 critic updates per student update)
  multi   1..--segments segments on the student's own past and memory, masked with
          probability --mask (report: 2,400 steps, both LR 1e-7, ratio 3); --init the
          cold-start run

The run resumes from its checkpoints; torchrun runs it on many processes. The student's
EMA opens as a world (`matrixgame eval student=RUN ...`).""",
    )
    p.add_argument("--teacher", required=True, help="a `train dit` run or a shipped world")
    p.add_argument("--latents", required=True, help="the latent cache of the teacher's VAE")
    p.add_argument("--out", required=True, help="the run folder")
    p.add_argument("--stage", choices=("cold", "multi"), default="cold")
    p.add_argument(
        "--init",
        help="continue from this distill run (the cold start), or from a "
        "world folder's student (and its kept critic)",
    )
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--student-lr", type=float, default=5e-7)
    p.add_argument("--critic-lr", type=float, default=1e-7)
    p.add_argument("--student-every", type=int, default=5,
                   help="critic updates per student update (report: 5 cold, 3 multi)")  # fmt: skip
    p.add_argument("--segments", type=int, default=6, help="longest rollout (multi stage)")
    p.add_argument("--mask", type=float, default=0.2,
                   help="probability of masking the past, and the memory")  # fmt: skip
    p.add_argument("--history", type=int, default=8,
                   help="recorded latents before each episode's window (its memory)")  # fmt: skip
    p.add_argument("--sampler-steps", type=int, default=3, help="the student's steps")
    p.add_argument("--schedule", choices=("shifted", "distilled"), default="shifted",
                   help="shifted even levels, or the release's [1000, 666, 333]")  # fmt: skip
    p.add_argument("--shift", type=float, default=5.0)
    p.add_argument("--guidance", type=float, default=1.0,
                   help="the teacher's classifier-free guidance on the actions, v_null + g (v "
                        "- v_null), in the DMD term and the regression target (1: off; "
                        "`eval --action-guidance` measures it on the world model)")  # fmt: skip
    p.add_argument("--regression", type=float, default=0.0,
                   help="weight of DMD's regression term: the student's sample against the "
                        "teacher's ODE sample from the same noise (0: off, as DMD2)")  # fmt: skip
    p.add_argument(
        "--regression-steps",
        type=int,
        default=0,
        help="the teacher's Euler steps for that target (0: its own sampler's)",
    )
    p.add_argument("--past-noise", type=float, default=0.0, metavar="LEVEL",
                   help="noise the past latents to LEVEL in every model's window (a "
                        "teacher trained with `train dit --past-noise`, played with its "
                        "sampler's past_noise); the student's sampler then plays so (0: "
                        "clean past)")  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--hours", type=float, help="stop after this long (resume later)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run_command=_run)


def _run(args: argparse.Namespace) -> int:
    import time

    from matrixgame.distill.job import DistillJob, train_distill

    if args.stage == "multi" and not args.init:
        print("matrixgame distill: the multi stage usually continues a cold start (--init)")
    job = DistillJob(
        teacher=args.teacher, latents=args.latents, out=args.out, stage=args.stage,
        init=args.init, steps=args.steps, batch_size=args.batch_size,
        student_lr=args.student_lr, critic_lr=args.critic_lr,
        student_every=args.student_every, segments=args.segments, mask=args.mask,
        history=args.history, sampler_steps=args.sampler_steps, shift=args.shift,
        schedule=args.schedule, guidance=args.guidance, regression=args.regression,
        regression_steps=args.regression_steps, checkpoint_every=args.checkpoint_every,
        past_noise=args.past_noise, seed=args.seed,
    )  # fmt: skip
    deadline = time.monotonic() + 3600 * args.hours if args.hours else None
    trainer = train_distill(job, deadline)
    print(f"{args.out}: step {trainer.step} of {args.steps}"
          + (f" (stopped: {trainer.stopped})" if trainer.stopped else ""))  # fmt: skip
    return finish(trainer)
