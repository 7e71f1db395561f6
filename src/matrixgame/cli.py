"""The `matrixgame` command. Each subcommand parses its arguments and calls the library."""

from __future__ import annotations

import argparse
import sys

from matrixgame import __version__


def _add_trajectory(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "trajectory",
        help="integrate an action script into camera poses and show memory retrieval",
        description=(
            "Read an action script (JSON segments of W/S/A/D keys and mouse pitch/yaw deltas; "
            "see examples/out_and_back.json), integrate it into camera-to-world poses with a "
            "kinematics preset, label the poses back into actions (the physics-based "
            "annotation used for data without actions) and report its accuracy, and list "
            "the past frames a streaming world would retrieve as memory every N frames, by "
            "sampled frustum overlap, with the exact overlap of the best one beside it."
        ),
    )
    p.add_argument("script", help="action script (JSON)")
    p.add_argument(
        "--preset",
        help="kinematics preset (released | doom); default: the script's, else released",
    )
    p.add_argument("--fov", type=float, default=90.0, help="horizontal field of view, degrees")
    p.add_argument("--width", type=int, default=1280, help="image width in pixels")
    p.add_argument("--height", type=int, default=720, help="image height in pixels")
    p.add_argument("--near", type=float, default=0.1, help="view volume near plane, metres")
    p.add_argument("--far", type=float, default=30.0, help="view volume far plane, metres")
    p.add_argument(
        "--past", type=int, default=16, help="frames covered by the past window (not memory)"
    )
    p.add_argument("--memory", type=int, default=5, help="memory frames to retrieve")
    p.add_argument("--every", type=int, default=40, help="retrieve every N frames")
    p.add_argument("--out", help="write poses, actions and retrievals to this JSON file")
    p.set_defaults(run_command=_run_trajectory)


def _run_trajectory(args: argparse.Namespace) -> None:
    from matrixgame.data.action_script import load_action_script
    from matrixgame.geometry.frustum import ViewVolume
    from matrixgame.geometry.kinematics import get_preset
    from matrixgame.geometry.path_report import analyse_path, format_report, report_json
    from matrixgame.io import atomic_write_text

    script = load_action_script(args.script)
    preset = args.preset or script.preset or "released"
    config = get_preset(preset)
    view = ViewVolume.from_fov(args.width, args.height, args.fov, args.near, args.far)
    report = analyse_path(
        script.keyboard,
        script.mouse,
        config,
        view,
        args.past,
        args.memory,
        args.every,
        script.start,
    )
    print(format_report(report, preset))
    if args.out:
        atomic_write_text(args.out, report_json(report, script.keyboard, script.mouse))
        print(f"\nwrote {args.out}")


def _add_record(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "record",
        help="record a Doom dataset: frames with exact poses and actions",
        description=(
            "Record first-person ViZDoom play on Freedoom maps into a dataset folder of "
            "safetensors clips plus a checksummed manifest. An agent explores each map (a "
            "planner over the map's walkable space, smooth human-like turning) or walks "
            "scripted out-and-back loops that revisit views. Every frame carries the pose it "
            "was rendered from and the action that moved the camera to the next frame. "
            "Rerunning the same command resumes: finished clips are kept, damaged or "
            "missing ones are recorded again. Needs `pip install vizdoom`."
        ),
    )
    p.add_argument("--out", required=True, help="dataset folder")
    p.add_argument(
        "--maps",
        nargs="+",
        default=["E1M1"],
        help="maps to record (E1M1..E4M9, MAP01..MAP32, or 'all')",
    )
    p.add_argument("--frames", type=int, default=10_000, help="total frames to record")
    p.add_argument(
        "--hours",
        type=float,
        help="total game time to record instead of --frames (35 tics/s / frame skip)",
    )
    p.add_argument("--clip-frames", type=int, default=1024, help="frames per clip (shard)")
    p.add_argument("--workers", type=int, default=1, help="parallel game processes")
    p.add_argument("--width", type=int, default=160, help="frame width (4:3 with --height)")
    p.add_argument("--height", type=int, default=120, help="frame height")
    p.add_argument("--frame-skip", type=int, default=2, help="game tics per frame (35 tics/s)")
    p.add_argument("--run", action="store_true", help="run instead of walk (faster motion)")
    p.add_argument("--no-depth", action="store_true", help="do not store the depth buffer")
    p.add_argument(
        "--loop-fraction",
        type=float,
        default=0.2,
        help="share of clips that are scripted out-and-back loops (revisits)",
    )
    p.add_argument(
        "--heldout-maps",
        nargs="*",
        default=[],
        help="maps recorded only for evaluation (split 'heldout-map')",
    )
    p.add_argument(
        "--heldout-every",
        type=int,
        default=10,
        help="every n-th clip of a training map is a held-out trajectory (0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="base seed of the job plan")
    p.set_defaults(run_command=_run_record)


def _run_record(args: argparse.Namespace) -> None:
    from matrixgame.data.engine.game import ALL_MAPS
    from matrixgame.data.engine.recorder import RecordConfig, record_dataset

    maps = ALL_MAPS if args.maps == ["all"] else tuple(args.maps)
    cfg = RecordConfig(
        out=args.out,
        maps=maps,
        frames=args.frames,
        clip_frames=args.clip_frames,
        workers=args.workers,
        width=args.width,
        height=args.height,
        frame_skip=args.frame_skip,
        run=args.run,
        depth=not args.no_depth,
        loop_fraction=args.loop_fraction,
        heldout_maps=tuple(args.heldout_maps),
        heldout_every=args.heldout_every,
        seed=args.seed,
    )
    manifest = record_dataset(cfg)
    splits = sorted({e["split"] for e in manifest.shards.values()})
    summary = ", ".join(f"{s} {manifest.frames(s)}" for s in splits)
    print(f"{args.out}: {len(manifest.shards)} clips, {manifest.frames()} frames ({summary})")


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="convert real-world video with camera poses into a dataset clip",
        description=(
            "Convert RealEstate10K (camera file + extracted frames) or nerfstudio/DL3DV "
            "(transforms.json + images) data into a matrixgame clip in a dataset folder: "
            "frames centre-cropped and resized, poses turned to a z-up world and scaled so "
            "the median step is the kinematics preset's, and W/S/A/D and mouse actions "
            "annotated from the poses (physics-based inverse kinematics)."
        ),
    )
    p.add_argument("format", choices=["realestate10k", "nerfstudio"], help="input format")
    p.add_argument("source", help="RealEstate10K camera .txt file, or transforms.json")
    p.add_argument("--frames", help="RealEstate10K: folder of extracted frames")
    p.add_argument("--out", required=True, help="dataset folder (created or extended)")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--preset", default="released", help="kinematics preset for the actions")
    p.add_argument("--split", default="train", help="split recorded in the manifest")
    p.set_defaults(run_command=_run_import)


def _run_import(args: argparse.Namespace) -> None:
    from pathlib import Path

    from matrixgame.data.realworld import read_nerfstudio, read_realestate10k, to_clip
    from matrixgame.data.shards import Manifest, write_clip

    if args.format == "realestate10k":
        if not args.frames:
            raise ValueError("realestate10k needs --frames FOLDER of the extracted frames")
        posed = read_realestate10k(args.source, args.frames)
    else:
        posed = read_nerfstudio(args.source)
    clip = to_clip(posed, args.width, args.height, args.preset)
    clip.meta["split"] = args.split
    manifest = Manifest.load(args.out)
    name = f"{args.format}_{Path(args.source).stem}_{len(manifest.shards):05d}.safetensors"
    sha = write_clip(Path(args.out) / name, clip)
    manifest.shards[name] = {
        "source": posed.source,
        "split": args.split,
        "viewpoint": "first",
        "sha256": sha,
        "frames": len(clip),
    }
    manifest.save()
    print(f"{args.out}/{name}: {len(clip)} frames, pose scale {clip.meta['pose_scale']:.4g}")


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="check a dataset folder and summarise its clips",
        description=(
            "Verify every clip of a dataset folder against the manifest's checksums, then "
            "print one line per clip: map or source, split, agent, viewpoint, frames, why it "
            "ended, and how well physics-based annotation recovers its actions from its "
            "poses alone. With --sheet, also write a PNG contact sheet of frames."
        ),
    )
    p.add_argument("dataset", help="dataset folder (with manifest.json)")
    p.add_argument("--sheet", help="write a contact sheet PNG here")
    p.set_defaults(run_command=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> None:
    from matrixgame.data.inspect_dataset import contact_sheet, summarise

    rows = summarise(args.dataset)
    cols = ["clip", "source", "split", "agent", "view", "frames", "ended", "annotation"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    bad = [r["clip"] for r in rows if r["ended"] == "DAMAGED"]
    print(f"{len(rows)} clips, {sum(r['frames'] for r in rows)} frames, {len(bad)} damaged")
    if args.sheet:
        contact_sheet(args.dataset, args.sheet)
        print(f"wrote {args.sheet}")


def _add_train(sub: argparse._SubParsersAction) -> None:
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
    vae = what.add_parser("vae", help="the tiny VAE (reconstruction)", description=p.description)
    vae.add_argument("--data", required=True, help="dataset folder")
    vae.add_argument("--out", required=True, help="run folder (checkpoints, logs)")
    vae.add_argument("--preset", default="tiny", help="VAE preset (tiny)")
    vae.add_argument("--steps", type=int, default=2000)
    vae.add_argument("--batch-size", type=int, default=4)
    vae.add_argument("--frames", type=int, default=5, help="frames per sample (1 + 4k)")
    vae.add_argument("--height", type=int, default=96, help="training height (multiple of 16)")
    vae.add_argument("--width", type=int, default=128, help="training width (multiple of 16)")
    vae.add_argument("--lr", type=float, default=3e-4)
    vae.add_argument("--checkpoint-every", type=int, default=200)
    vae.add_argument(
        "--init",
        help="start from these weights (a .safetensors of the model's state dict)",
    )
    vae.add_argument("--seed", type=int, default=0)
    vae.set_defaults(run_command=_run_train_vae)

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
    dit.add_argument("--past", type=int, default=2, help="past latents per window")
    dit.add_argument("--current", type=int, default=4, help="current (generated) latents")
    dit.add_argument("--memory", type=int, default=2, help="memory latents")
    dit.add_argument("--sink", action="store_true", help="keep latent 0 as a persistent memory")
    dit.add_argument(
        "--error-buffer",
        type=float,
        default=1.0,
        metavar="GAMMA",
        help="scale of the banked residuals injected into past and memory latents "
        "(gamma_h = gamma_m; 0 trains without the error buffer, the ablation)",
    )
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


def _run_train_vae(args: argparse.Namespace) -> None:
    import torch

    from matrixgame.data.dataset import ClipDataset
    from matrixgame.models.vae import VAE_PRESETS, WanVAE
    from matrixgame.train.run_log import RunLog
    from matrixgame.train.trainer import TrainConfig, Trainer, init_distributed
    from matrixgame.train.vae_task import VAETask, reconstruction_strip

    if args.preset not in VAE_PRESETS or args.preset.startswith("wan2.2"):
        raise ValueError(f"train vae trains the small presets (tiny); got {args.preset!r}")
    if args.height % 16 or args.width % 16:
        raise ValueError("--height and --width must be multiples of 16 (the VAE's stride)")
    init_distributed()
    torch.manual_seed(args.seed)
    model = WanVAE(VAE_PRESETS[args.preset])
    if args.init:
        from safetensors.torch import load_file

        from matrixgame.models.loading import load_checked

        state = {k: v.float() for k, v in load_file(args.init).items()}
        load_checked(model, state, args.init)
    data = ClipDataset(args.data, frames=args.frames, split="train", stride=2)
    cfg = TrainConfig(
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
    )
    meta = {"model": "vae", "preset": args.preset, "height": args.height, "width": args.width}
    trainer = Trainer(model, VAETask(args.height, args.width), data, cfg, meta)
    run = RunLog(args.out)
    probe = data[0]["frames"][None]  # a fixed clip to reconstruct in the sample strips

    def log(step: int, logs: dict) -> None:
        run(step, logs)
        if step % args.checkpoint_every == 0 or step == args.steps:
            run.image(
                "reconstruction",
                step,
                reconstruction_strip(trainer.model, probe, args.height, args.width),
            )

    logs = trainer.fit(log)
    loss, quality = logs.get("loss", float("nan")), logs.get("psnr", 0.0)
    print(f"step {trainer.step}: loss {loss:.4f}, psnr {quality:.2f} dB")


def _run_train_latents(args: argparse.Namespace) -> None:
    from matrixgame.train.latents import cache_latents
    from matrixgame.train.runs import trained_vae

    vae, (height, width) = trained_vae(args.vae)
    cache = cache_latents(args.data, vae, args.out, height, width, args.vae)
    print(f"{args.out}: {len(cache.shards)} clips of latents")


def _run_train_dit(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    import torch

    from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT
    from matrixgame.train.dit_task import DiTTask
    from matrixgame.train.error_buffer import ErrorBuffer
    from matrixgame.train.latents import LatentClips
    from matrixgame.train.memory_sampling import WindowConfig, WindowDataset
    from matrixgame.train.run_log import RunLog
    from matrixgame.train.runs import vae_of
    from matrixgame.train.samples import generate_current, side_by_side, strip
    from matrixgame.train.trainer import TrainConfig, Trainer, _collate, init_distributed

    if args.preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {args.preset!r}; choose from {sorted(DIT_PRESETS)}")
    init_distributed()
    torch.manual_seed(args.seed)
    window = WindowConfig(args.past, args.current, args.memory, sink=args.sink)
    data = WindowDataset(LatentClips(args.latents), window)
    model = MatrixGameDiT(DIT_PRESETS[args.preset])
    model.gradient_checkpointing = args.grad_checkpointing
    cfg = TrainConfig(
        out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        checkpoint_every=args.checkpoint_every, seed=args.seed, fsdp=args.fsdp,
    )  # fmt: skip
    meta = {"model": "dit", "preset": args.preset, "latents": args.latents,
            "window": asdict(window), "error_buffer": args.error_buffer}  # fmt: skip
    if args.error_buffer < 0:
        raise ValueError("--error-buffer must be >= 0")
    buffer = ErrorBuffer(gamma_past=args.error_buffer, gamma_memory=args.error_buffer)
    trainer = Trainer(model, DiTTask(buffer=buffer), data, cfg, meta)
    run = RunLog(args.out)
    vae = vae_of(args.latents)
    probe = _collate([data[len(data) - 1]])  # a fixed window to generate in the sample strips

    def log(step: int, logs: dict) -> None:
        run(step, logs)
        if vae is not None and (step % args.checkpoint_every == 0 or step == args.steps):
            ema = MatrixGameDiT(model.config).eval()
            ema.load_state_dict({k: v.to(torch.float32) for k, v in trainer.ema.items()})
            generated = generate_current(ema, probe)
            run.image("rollout", step, strip(vae, probe["current"], generated))
            run.video("rollout", step, side_by_side(vae, probe["current"], generated))

    logs = trainer.fit(log)
    print(f"step {trainer.step}: loss {logs.get('loss', float('nan')):.4f}")


def _run_train_idm(args: argparse.Namespace) -> None:
    import torch

    from matrixgame.eval.idm import (
        IDMConfig,
        IDMDataset,
        IDMTask,
        InverseDynamics,
        heldout_accuracy,
        idm_meta,
        trained_idm,
    )
    from matrixgame.train.run_log import RunLog
    from matrixgame.train.trainer import TrainConfig, Trainer, init_distributed

    if args.height % 8 or args.width % 8:
        raise ValueError("--height and --width must be multiples of 8")
    init_distributed()
    torch.manual_seed(args.seed)
    config = IDMConfig(height=args.height, width=args.width)
    data = IDMDataset(args.data, config, "train", args.max_frames)
    cfg = TrainConfig(out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      checkpoint_every=args.checkpoint_every, seed=args.seed)  # fmt: skip
    trainer = Trainer(InverseDynamics(config), IDMTask(), data, cfg, idm_meta(config))
    logs = trainer.fit(RunLog(args.out))
    print(f"step {trainer.step}: loss {logs.get('loss', float('nan')):.4f}")
    scores = heldout_accuracy(trained_idm(args.out), args.data)
    if scores:
        print("held-out clips: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in scores.items()))  # fmt: skip


def _add_eval(sub: argparse._SubParsersAction) -> None:
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
                   help="`train dit` run folders (several: compared in one report, e.g. "
                        "error buffer off, or teacher vs student)")  # fmt: skip
    p.add_argument("--data", required=True, help="recorded dataset folder with held-out clips")
    p.add_argument("--out", required=True, help="report folder")
    splits = "heldout (maps and trajectories), heldout-map, heldout-traj, train, all"
    p.add_argument("--split", default="heldout", help=splits)
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
    p.add_argument("--idm", help="a `train idm` run (action accuracy, Fréchet distance)")
    p.add_argument("--lpips", help="local LPIPS (AlexNet) weights: .pth or .safetensors")
    p.add_argument("--fvd", help="local I3D (Kinetics-400) weights for FVD: .pt or .safetensors")
    p.add_argument("--fvd-size", type=int, default=224, help="I3D input size (224: standard)")
    p.set_defaults(run_command=_run_eval)


def _run_eval(args: argparse.Namespace) -> None:
    from matrixgame.eval.protocols import EvalConfig, evaluate
    from matrixgame.eval.report import write_report
    from matrixgame.train.runs import trained_world

    worlds = []
    for spec in args.worlds:
        name, _, run = spec.rpartition("=")
        worlds.append(trained_world(run, name or None))
    if len({w.name for w in worlds}) < len(worlds):
        raise ValueError("two worlds share a name: give them names, NAME=RUN")
    try:
        horizons = tuple(int(h) for h in args.horizons.split(","))
    except ValueError as err:
        raise ValueError(f"--horizons must be comma-separated integers: {err}") from err
    config = EvalConfig(context=args.context, horizons=horizons, seconds=args.seconds,
                        bucket_seconds=args.bucket_seconds, clips=args.clips, split=args.split,
                        steps=args.steps, shift=args.shift, seed=args.seed,
                        fvd_size=args.fvd_size)  # fmt: skip
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matrixgame",
        description="Matrix-Game 3.0, open and complete: an interactive world model.",
    )
    parser.add_argument("--version", action="version", version=f"matrixgame {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_trajectory(sub)
    _add_record(sub)
    _add_import(sub)
    _add_inspect(sub)
    _add_train(sub)
    _add_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run_command"):
        parser.print_help()
        return 2
    try:
        args.run_command(args)
    except ValueError as err:
        print(f"matrixgame: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
