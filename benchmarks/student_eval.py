"""The default world's student evaluated alone, as the recipe's evaluation evaluates it: the
student of the work folder's runs in its own steps and in one (`Recipe.student_worlds`), on the
recipe's held-out clips with its protocols (`Recipe.eval_config`) and its IDM, so that the
figures compare with ``<work>/report`` without rolling the world model out again (the recipe's
`--only eval` evaluates everything: half an hour on 2 cores).

    python benchmarks/student_eval.py --work runs/world2 --out runs/world2/report-student

``--student RUN``: another `matrixgame distill` run instead (a probe of another recipe), or a
world folder's student (e.g. the shipped one, as it ships), in its own steps and in one, on the
same clips, played as the recipe's student plays (its sampler with the recipe's revisit
margin): the baseline of a probe on this machine's clips (held-out recordings can differ
between CPUs). ``--exits 1 2``: the student exiting after these many of its steps besides its
own (default 1; each step's output is trained, so a prefix of its schedule is a sampler too).

Writes the report (report.json, report.md, strips) into ``--out``; prints the figures the
model card reads, and the goals each meets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True, help="the recipe's work folder")
    parser.add_argument("--out", type=Path, required=True, help="report folder")
    parser.add_argument("--world", default="doom-e1m1", help="the recipe's spec")
    parser.add_argument(
        "--student",
        type=Path,
        default=None,
        help="a `matrixgame distill` run, or a world folder with a student, to evaluate "
        "instead of the recipe's",
    )
    parser.add_argument(
        "--exits",
        type=int,
        nargs="*",
        default=[1],
        metavar="K",
        help="also evaluate the student exiting after its first K steps (default: 1)",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from matrixgame.eval.idm import trained_idm
    from matrixgame.eval.protocols import evaluate
    from matrixgame.eval.report import write_report
    from matrixgame.worlds.card import figures_of, goals, goals_met
    from matrixgame.worlds.recipe import Recipe, in_steps, spec_with

    recipe = Recipe(spec_with(args.world), args.work, progress=lambda _: None)
    idm = recipe.path("idm")
    if not (idm / "checkpoints").exists():
        raise SystemExit(f"{args.work}: no IDM run (`matrixgame world build --only idm`)")
    if args.student is not None:
        students, exits = [probe_student(recipe, args.student)], args.exits
    elif recipe.student_run() is None:
        raise SystemExit(f"{args.work}: no student run (`matrixgame world build --only student`)")
    else:  # the recipe's own: in its steps, in one, and its cold start alone where kept
        students, exits = recipe.student_worlds(recipe.world().vae), set(args.exits) - {1}
    student = students[0]
    try:
        students += [in_steps(student, k, f"{student.name}, {k} step{'s' * (k > 1)}")
                     for k in sorted(exits)]  # fmt: skip
    except ValueError as e:
        raise SystemExit(str(e)) from None
    results = evaluate(students, recipe.heldout, recipe.eval_config(), trained_idm(idm))
    write_report(results, args.out)
    report = json.loads((args.out / "report.json").read_text())
    for world in students:
        figures = figures_of(report, world.name)
        print(f"{world.name}: {goals_met(figures)} goals met; PSNR {figures['psnr']:.2f}, "
              f"sharpness {figures['sharpness']:.2f}, first / last 10 s "
              f"{figures['drift_first_psnr']:.2f} / {figures['drift_last_psnr']:.2f}")  # fmt: skip
        for goal, _, met in goals(figures):
            if met is False:
                print(f"  not met: {goal}")


def probe_student(recipe, path: Path):
    """The student of a distill run or of a world folder, played as the recipe plays its own."""
    from matrixgame.train.runs import trained_vae
    from matrixgame.worlds import shipped

    if (path / "checkpoints").exists():  # decoded by the world's VAE (no world model loaded)
        return recipe.student_world(trained_vae(recipe.vae_run())[0], path, path.name)
    if not (path / "student.safetensors").exists():
        raise SystemExit(f"{path}: neither a distill run (no checkpoints/) nor a world folder "
                         f"with a student (no student.safetensors)")  # fmt: skip
    student = shipped.load_world(path, student=True)
    student.name = f"{path.name} student"
    student.meta = {**student.meta, "sampler": recipe.played(student.meta["sampler"])}
    return student


if __name__ == "__main__":
    main()
