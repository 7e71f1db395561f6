"""`matrixgame eval` and `eval-vae`: measure trained world models, and autoencoders, on
held-out recordings."""

from __future__ import annotations

import argparse

from matrixgame.cli.options import add_guidance_arguments, guidance_of

SPLITS = "heldout (maps and trajectories), heldout-map, heldout-traj, train, all"


def add_eval(sub: argparse._SubParsersAction) -> None:
    from matrixgame.eval.protocols import PROTOCOLS

    p = sub.add_parser(
        "eval",
        help="measure trained world models on held-out recordings; write a report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Evaluate one or more `train dit` runs on the held-out clips of a recorded dataset
(the split stored in its manifest: held-out maps and held-out trajectories). Each
clip's first latents are given as context; the model then rolls out the rest with
the recorded actions and camera poses. Writes OUT/report.json, report.md,
report.html, plots/*.png and strips/*.png. Protocols (--protocols):

  fidelity  PSNR and SSIM of every generated frame against the real one, as curves
            over the horizon and at --horizons frames; beside it copy-last-frame, a
            blurred copy, and the VAE's own reconstruction (the ceiling); a sharpness
            ratio (blur scores low even where PSNR likes it), and with --idm a
            Fréchet distance on our IDM's Doom features (+ LPIPS / FVD if given).
  revisit   loop clips: frames that see again a view beyond the past window which
            the camera had left; PSNR / SSIM with memory on vs off.
  loop      loop clips, no ground truth: the generated return frame against the
            start frame; a near-static video scores 0 (the static gate).
  actions   with --idm: the inverse-dynamics model reads keys and turns back from
            the generated frames; accuracy against the commanded actions, with its
            accuracy on the real frames beside it.
  drift     the rollouts (up to --seconds) in --bucket-seconds buckets.
  speed     frames per second of the rollouts, DiT and decoder.

Record an evaluation set with loops, e.g.:
  matrixgame record --out runs/e1m1-eval --maps E1M1 --frames 8000 \\
      --loop-fraction 0.5 --heldout-every 1 --seed 1
""",
    )
    p.add_argument("worlds", nargs="+", metavar="[NAME=]RUN",
                   help="`train dit` or `distill` run folders, or shipped worlds "
                        "(worlds/doom-e1m1, or its name; doom-e1m1:student, its student); "
                        "several are compared in one report, e.g. error buffer off, or "
                        "teacher vs student")  # fmt: skip
    p.add_argument("--data", required=True, help="recorded dataset folder with held-out clips")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--split", default="heldout", help=SPLITS)
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated subset")
    p.add_argument("--clips", type=int, default=4, help="clips per protocol (longest first)")
    p.add_argument("--seconds", type=float, default=60.0, help="rollout length cap")
    p.add_argument("--bucket-seconds", type=float, default=10.0, help="drift bucket length")
    context = "context latents (0: past + memory + 1, one full first window)"
    p.add_argument("--context", type=int, default=0, help=context)
    p.add_argument("--horizons", default="1,4,16,32,64,128,256",
                   help="frames after the context reported in the fidelity table")  # fmt: skip
    p.add_argument("--steps", type=int, default=4, help="denoising steps per window")
    p.add_argument("--shift", type=float, default=3.0, help="flow-matching schedule shift")
    p.add_argument("--seed", type=int, default=0)
    add_guidance_arguments(p, "each world's own")
    p.add_argument("--revisit-margin", type=float, metavar="R",
                   help="generate a window from its memory alone where a memory latent sees "
                        "its view better than its last past latent by more than R (view "
                        "overlaps, in [-1, 1]; 1: never; default: each world's own, its "
                        "sampler's revisit_margin)")  # fmt: skip
    p.add_argument("--idm", help="a `train idm` run (action accuracy, Fréchet distance)")
    p.add_argument("--lpips", help="local LPIPS (AlexNet) weights: .pth or .safetensors")
    p.add_argument("--fvd", help="local I3D (Kinetics-400) weights for FVD: .pt or .safetensors")
    p.add_argument("--fvd-size", type=int, default=224, help="I3D input size (224: standard)")
    p.set_defaults(run_command=_run_eval)


def _run_eval(args: argparse.Namespace) -> None:
    from matrixgame.eval.protocols import EvalConfig, evaluate
    from matrixgame.eval.report import write_report
    from matrixgame.worlds.shipped import open_world

    worlds = []
    for spec in args.worlds:
        name, _, run = spec.rpartition("=")
        worlds.append(open_world(run, name or None))
    if len({w.name for w in worlds}) < len(worlds):
        raise ValueError("two worlds share a name: give them names, NAME=RUN")
    try:
        horizons = tuple(int(h) for h in args.horizons.split(","))
    except ValueError as err:
        raise ValueError(f"--horizons must be comma-separated integers: {err}") from err
    config = EvalConfig(context=args.context, horizons=horizons, seconds=args.seconds,
                        bucket_seconds=args.bucket_seconds, clips=args.clips, split=args.split,
                        steps=args.steps, shift=args.shift, seed=args.seed,
                        guidance=guidance_of(args), fvd_size=args.fvd_size,
                        revisit_margin=args.revisit_margin)  # fmt: skip
    idm = lpips = i3d = None
    if args.idm:
        from matrixgame.eval.idm import trained_idm

        idm = trained_idm(args.idm)
    if args.lpips or args.fvd:
        from matrixgame.eval.external import load_i3d, load_lpips

        lpips = load_lpips(args.lpips) if args.lpips else None
        i3d = load_i3d(args.fvd) if args.fvd else None
    protocols = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
    results = evaluate(worlds, args.data, config, idm, lpips, i3d, protocols)
    paths = write_report(results, args.out)
    print(f"report: {paths['html']} ({paths['markdown']}, {paths['json']})")


def add_eval_vae(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-vae",
        help="measure autoencoders' reconstructions of held-out recordings",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Encode and decode the first --frames frames of --clips held-out clips of a recorded
dataset with each autoencoder, at its training size, and print PSNR (dB, over each
clip), SSIM and the sharpness ratio (gradient energy of the decoded frames over the
real ones: near 1 when sharp, low when blurred), averaged over the clips. The world
recipe's early stopping scores the same PSNR. E.g.:
  matrixgame eval-vae doom-e1m1 doom-e1m1:light runs/world/vae \\
      --data runs/world/eval-data --json runs/vae-scores.json
""",
    )
    p.add_argument("autoencoders", nargs="+", metavar="[NAME=]RUN",
                   help="`train vae` or `train decoder` run folders, or shipped worlds (folder or "
                        "name; doom-e1m1:light, its light decoder)")  # fmt: skip
    p.add_argument("--data", required=True, help="recorded dataset folder with held-out clips")
    p.add_argument("--split", default="heldout", help=SPLITS)
    p.add_argument("--clips", type=int, default=4, help="clips, the first by name")
    p.add_argument("--frames", type=int, default=65, help="frames of each clip, from its start")
    p.add_argument("--json", help="also write the scores, per clip too, to this file")
    p.set_defaults(run_command=_run_eval_vae)


def _run_eval_vae(args: argparse.Namespace) -> None:
    import json

    from matrixgame.eval.autoencoder import heldout_names, open_autoencoder, reconstruction_scores
    from matrixgame.io import atomic_write_text

    specs = [(name or run, run) for name, _, run in (s.rpartition("=") for s in args.autoencoders)]
    if len({name for name, _ in specs}) < len(specs):
        raise ValueError("two autoencoders share a name: give them names, NAME=RUN")
    heldout_names(args.data, args.split, args.clips)  # a bad --data fails before any model
    results = []
    print(f"{'autoencoder':<40} {'PSNR':>7} {'SSIM':>6} {'sharpness':>9}")
    for name, run in specs:
        vae, (height, width) = open_autoencoder(run)
        scores = reconstruction_scores(vae, args.data, height, width, args.clips, args.frames,
                                       args.split)  # fmt: skip
        results.append({"name": name, "path": run, **scores})
        print(f"{name:<40} {scores['psnr']:7.2f} {scores['ssim']:6.3f} "
              f"{scores['sharpness']:9.3f}", flush=True)  # fmt: skip
    if args.json:
        report = {"data": str(args.data), "split": args.split, "results": results}
        atomic_write_text(args.json, json.dumps(report, indent=1))
