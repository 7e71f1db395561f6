"""What real-time play's decoder choice buys and costs: the shipped world as `matrixgame
play` plays it on a CPU (its student in one step) with its full decoder and with its light
one, timed as play's start-up measure times a segment (`accel.budget.segment_ms`: the world
as it plays, the first segment left out), and evaluated on the recipe's held-out clips with
its protocols and IDM (the same rollouts: only the decoding differs).

    python benchmarks/decoder_choice.py --work runs/world2 --out runs/world2/report-decoders

``--work``: a recipe work folder with its held-out clips and IDM (`matrixgame world build
--until idm`). ``--timing-only``: the speed half alone (seconds, no work folder needed).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from common import machine, print_table, write_json


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", default="doom-e1m1", help="a shipped world (name or folder)")
    parser.add_argument("--work", type=Path, help="the recipe's work folder (held-out clips, IDM)")
    parser.add_argument("--out", type=Path, help="report folder")
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--segments", type=int, default=16, help="segments timed per decoder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.timing_only and (args.work is None or args.out is None):
        parser.error("--work and --out are needed unless --timing-only")
    torch.set_num_threads(args.threads)

    from matrixgame.accel.budget import SHARE, segment_ms
    from matrixgame.accel.capability import cpu_capability
    from matrixgame.accel.precision import cast_dit
    from matrixgame.inference.session import WorldSession
    from matrixgame.worlds.recipe import in_one_step
    from matrixgame.worlds.shipped import load_starts, load_vae, load_world, world_folder

    folder = world_folder(args.world)
    student = in_one_step(load_world(folder, student=True), "student, 1 step, full decoder")
    light = replace(student, name="student, 1 step, light decoder",
                    vae=load_vae(folder, light=True)[0])  # fmt: skip
    fps = float(student.meta.get("fps", 17.5))
    # timed as play times it: a DiT cast as play casts it (the evaluation keeps fp32)
    dit = load_world(folder, student=True).dit
    precision = cast_dit(dit, "auto")
    start = load_starts(folder)[0]
    rows = []
    for world in (student, light):
        session = WorldSession(replace(world, dit=dit), steps=1, seed=0)
        ms = segment_ms(session, start, args.segments)
        rows.append({"decoder": world.name, "DiT": precision.name, "ms / segment": round(ms, 1),
                     "share of the segment": round(ms / (1000 * session.frames_per_step / fps),
                                                   3)})  # fmt: skip
    print(f"{folder.name}: a segment of {student.window.current} latents at {fps:g} fps, "
          f"{args.threads} threads, {cpu_capability()}; play keeps the full decoder within "
          f"{SHARE:.0%} of a segment")  # fmt: skip
    print_table(rows, ["decoder", "DiT", "ms / segment", "share of the segment"])
    result = {"machine": machine(), "world": folder.name, "threads": args.threads,
              "timing": rows}  # fmt: skip
    if not args.timing_only:
        from matrixgame.eval.idm import trained_idm
        from matrixgame.eval.protocols import evaluate
        from matrixgame.eval.report import write_report
        from matrixgame.worlds.card import figures_of, goals_met
        from matrixgame.worlds.recipe import Recipe, spec_with

        recipe = Recipe(spec_with(folder.name), args.work, progress=lambda _: None)
        if not (recipe.path("idm") / "checkpoints").exists():
            raise SystemExit(f"{args.work}: no IDM run (`matrixgame world build --only idm`)")
        played = [student, light]  # the shipped sampler: its revisit margin included
        results = evaluate(played, recipe.heldout, recipe.eval_config(),
                           trained_idm(recipe.path("idm")))  # fmt: skip
        write_report(results, args.out)
        report = json.loads((args.out / "report.json").read_text())
        keys = ("psnr", "ssim", "sharpness", "fd", "psnr@1s", "psnr@4s", "psnr@16s")
        quality = []
        for world in played:
            f = figures_of(report, world.name)
            quality.append({"decoder": world.name, "goals": goals_met(f),
                            **{k: round(f[k], 3) for k in keys}})  # fmt: skip
        print_table(quality, ["decoder", "goals", *keys])
        result["quality"] = quality
    print(f"wrote {write_json('decoder_choice', result)}")


if __name__ == "__main__":
    main()
