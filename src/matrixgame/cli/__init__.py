"""The `matrixgame` command: one module per verb group, each only parsing its arguments and
calling the library (data: trajectory, record, import, inspect; train; distill; evaluate:
eval, eval-vae; world: build, list; play: play, generate)."""

from __future__ import annotations

import argparse
import sys

from matrixgame import __version__
from matrixgame.cli import data, distill, evaluate, play, train, world


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="matrixgame",
        description="Matrix-Game 3.0, open and complete: an interactive world model.",
    )
    parser.add_argument("--version", action="version", version=f"matrixgame {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    data.add_trajectory(sub)
    data.add_record(sub)
    data.add_import(sub)
    data.add_inspect(sub)
    train.add_train(sub)
    distill.add_distill(sub)
    evaluate.add_eval(sub)
    evaluate.add_eval_vae(sub)
    world.add_world(sub)
    play.add_play(sub)
    play.add_generate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run_command"):
        parser.print_help()
        return 2
    try:
        code = args.run_command(args)  # a command may return its exit code (Ctrl-C: 130)
    except ValueError as err:
        print(f"matrixgame: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only folder: the state before is kept
        print(f"matrixgame: error: {err}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0
