"""`matrixgame world build | list`: train the default world (resumable), list shipped worlds."""

from __future__ import annotations

import argparse

from matrixgame.cli.train import INTERRUPTED
from matrixgame.worlds.recipe import STAGES


def add_world(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("world", help="train the default world, or list the shipped ones")
    what = p.add_subparsers(title="action", metavar="ACTION")
    build = what.add_parser(
        "build",
        help="the default world's recipe: record, train, evaluate, ship (resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"""\
Train a default world end to end, resuming wherever the last call stopped:

  record   the map's training trajectories and held-out ones with loops
  vae      the autoencoder (reconstruction), early-stopped on held-out PSNR
  latents  latent statistics, then every clip encoded once
  decoder  the decoder fine-tuned adversarially on noisy latents (encoder frozen)
  light    the decoder pruned by 75% and distilled against it (MG-LightVAE): the
           real-time decoder of `play --light`; one distilled from the shipped
           decoder ships beside it at once
  dit      the world model (error-aware, memory-augmented flow matching)
  student  its few-step student (DMD: cold start, then multi-segment rollouts),
           from the world model as trained when this stage runs (--only student
           starts it from a world model still training); once the world model has
           trained on by 1,000 steps, the finished student continues 300 steps
           against it
  idm      the inverse-dynamics model the evaluation reads actions with
  eval     `matrixgame eval` on the held-out trajectories -> WORK/report/
  ship     when it beats the shipped world (or none is shipped): the weights,
           config.json and model card into worlds/NAME/; a training-log row

Every stage checkpoints (at least every --checkpoint-every steps) and resumes;
--hours bounds this call: the running stage checkpoints at the deadline and the
next call continues it. Larger --dit-steps (etc.) continue a finished stage. A call
that trained keeps the version in training (not better than the shipped one yet)
as a world folder in worlds/NAME/next/ (commit it). On a fresh clone (no WORK
folder) the stages start from that kept version, else the shipped weights (--from
shipped: from the shipped weights, e.g. to distil a new student of the shipped world
model; the kept version is replaced once this call trains, git history keeps it). A
student of the shipped world model ships alone when it beats the shipped student on
the same clips. Runs on CUDA unchanged where a GPU is present. Stages: {", ".join(STAGES)}.""",
    )
    build.add_argument("--world", default="doom-e1m1", help="which world's recipe")
    build.add_argument("--work", default="runs/world", help="folder of the stages' runs")
    build.add_argument("--hours", type=float, help="stop this call after this long (resume later)")
    build.add_argument("--until", default="ship", choices=STAGES, help="last stage to run")
    build.add_argument("--only", choices=STAGES,
                       help="run just this stage (its inputs done): e.g. the decoder and the "
                            "world model side by side, one process each")  # fmt: skip
    build.add_argument("--vae-steps", type=int, help="autoencoder steps (target)")
    build.add_argument("--decoder-steps", type=int, help="decoder fine-tuning steps (target)")
    build.add_argument("--light-steps", type=int, help="light decoder steps (target)")
    build.add_argument("--dit-steps", type=int, help="world-model steps (target)")
    build.add_argument("--student-cold-steps", type=int,
                       help="the student's cold-start steps (target)")  # fmt: skip
    build.add_argument("--student-multi-steps", type=int,
                       help="the student's multi-segment steps (target, after its cold "
                            "start; 0: the cold start alone)")  # fmt: skip
    build.add_argument("--frames", type=int, help="training frames to record")
    build.add_argument("--eval-clips", type=int, help="held-out clips per evaluation protocol")
    build.add_argument("--workers", type=int, default=2, help="recording processes")
    build.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    build.add_argument("--ship-to", help="shipped world folder (default: worlds/NAME)")
    build.add_argument("--action-guidance", type=float, metavar="A",
                       help="the world model's classifier-free guidance on the actions, as it "
                            "ships in its sampler (default: the recipe's)")  # fmt: skip
    build.add_argument("--memory-guidance", type=float, metavar="M",
                       help="... on the retrieved memory (default: the recipe's)")  # fmt: skip
    build.add_argument("--from", dest="seed_from", choices=("kept", "shipped"), default="kept",
                       help="what a fresh work folder starts from: the kept version in "
                            "training (worlds/NAME/next/, else the shipped weights) or the "
                            "shipped weights")  # fmt: skip
    build.set_defaults(run_command=_run_build)

    ls = what.add_parser("list", help="the shipped worlds and their held-out figures")
    ls.set_defaults(run_command=_run_list)


def _run_build(args: argparse.Namespace) -> int:
    import torch

    from matrixgame.worlds.recipe import Recipe, spec_with

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.hours is not None and args.hours <= 0:
        raise ValueError("--hours must be positive")
    spec = spec_with(args.world, vae_steps=args.vae_steps, decoder_steps=args.decoder_steps,
                     light_steps=args.light_steps, dit_steps=args.dit_steps, frames=args.frames,
                     student_cold_steps=args.student_cold_steps,
                     student_multi_steps=args.student_multi_steps, eval_clips=args.eval_clips,
                     action_guidance=args.action_guidance,
                     memory_guidance=args.memory_guidance)  # fmt: skip
    recipe = Recipe(
        spec, args.work, args.hours, args.workers, args.ship_to, seed_from=args.seed_from
    )
    state = recipe.run(args.until, args.only)
    for stage, info in state["stages"].items():
        step = f" step {info['step']}" if "step" in info else ""
        print(f"{stage:8s} {'done' if info.get('done') else 'partial'}{step}")
    if recipe.interrupted:
        print("interrupted (checkpointed, the version in training kept): the same command "
              "continues it")  # fmt: skip
        return INTERRUPTED
    return 0


def _run_list(args: argparse.Namespace) -> None:
    from matrixgame.worlds.shipped import read_config, worlds_root

    found = False
    for folder in sorted(worlds_root().glob("*")):
        if not (folder / "config.json").exists():
            continue
        found = True
        config = read_config(folder)
        f = config.get("figures", {})
        psnr = f"PSNR {f['psnr']:.2f} dB" if "psnr" in f else "not evaluated"
        print(f"{folder.name}: {config['width']}x{config['height']} at {config['fps']:.1f} fps, "
              f"DiT step {config['dit']['step']}, {psnr}")  # fmt: skip
    if not found:
        print(f"no shipped worlds in {worlds_root()}")
