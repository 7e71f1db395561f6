"""`matrixgame trajectory | record | import | inspect`: action scripts, recording, import and
checks of datasets."""

from __future__ import annotations

import argparse


def add_trajectory(sub: argparse._SubParsersAction) -> None:
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


def add_record(sub: argparse._SubParsersAction) -> None:
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
            "missing ones are recorded again. Needs `pip install vizdoom`.\n\n"
            "On a cluster: every member of a job array runs the same command with "
            "--num-shards N --shard-index i (a deterministic share of the maps and seeds, "
            "into OUT/shard-i-of-N/), then `record --out OUT --merge` joins them into the "
            "dataset one machine would have recorded. --ray ADDRESS runs the shards as Ray "
            "tasks on an existing cluster and merges them (pip install 'matrixgame[ray]'; "
            "OUT on a filesystem every node sees)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    scale = p.add_argument_group("scaling out")
    scale.add_argument("--num-shards", type=int, metavar="N",
                       help="split the clips N ways (default 1; with --ray: the cluster's "
                       "CPUs / --workers)")  # fmt: skip
    scale.add_argument("--shard-index", type=int, default=0, metavar="I",
                       help="record share I of N (0-based), e.g. $SLURM_ARRAY_TASK_ID")  # fmt: skip
    scale.add_argument("--merge", action="store_true",
                       help="join the finished OUT/shard-*-of-N/ into OUT, then exit")  # fmt: skip
    scale.add_argument("--ray", metavar="ADDRESS",
                       help="run the shards as tasks on this Ray cluster ('local': start one "
                       "here), then merge")  # fmt: skip
    p.set_defaults(run_command=_run_record)


def _run_record(args: argparse.Namespace) -> None:
    from matrixgame.data.engine.game import ALL_MAPS
    from matrixgame.data.engine.recorder import (
        RecordConfig,
        merge_shards,
        record_dataset,
        record_on_ray,
    )

    if args.merge:
        manifest = merge_shards(args.out)
        print(f"{args.out}: {len(manifest.shards)} clips, {manifest.frames()} frames")
        return
    if args.ray and args.shard_index:
        raise ValueError("--ray records every shard: drop --shard-index")
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
        num_shards=1 if args.ray else args.num_shards or 1,
        shard_index=args.shard_index,
    )
    manifest = record_on_ray(cfg, args.ray, args.num_shards) if args.ray else record_dataset(cfg)
    if cfg.num_shards > 1:
        print(f"{cfg.folder}: shard {cfg.shard_index} of {cfg.num_shards}, "
              f"{len(manifest.shards)} clips, {manifest.frames()} frames (`--merge` joins the "
              f"shards once all are done)")  # fmt: skip
        return
    splits = sorted({e["split"] for e in manifest.shards.values()})
    summary = ", ".join(f"{s} {manifest.frames(s)}" for s in splits)
    print(f"{args.out}: {len(manifest.shards)} clips, {manifest.frames()} frames ({summary})")


def add_import(sub: argparse._SubParsersAction) -> None:
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


def add_inspect(sub: argparse._SubParsersAction) -> None:
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
