"""Options that several verbs share, spelled out here without importing torch (so that
``--help`` stays fast)."""

from __future__ import annotations

import argparse


def add_guidance_arguments(p: argparse.ArgumentParser, default: str) -> None:
    """``--action-guidance`` and ``--memory-guidance`` (see
    :class:`matrixgame.inference.rollout.Guidance`)."""
    p.add_argument("--action-guidance", type=float, metavar="A",
                   help="classifier-free guidance on the actions: v + (A - 1) (v - v with "
                        "null actions); 1 is off, other values cost one more DiT evaluation "
                        f"per step, batched (default: {default})")  # fmt: skip
    p.add_argument("--memory-guidance", type=float, metavar="M",
                   help="classifier-free guidance on the retrieved memory: v + (M - 1) (v - v "
                        "without memory); 1 is off, other values cost one more DiT "
                        f"evaluation per step (default: {default})")  # fmt: skip


def guidance_of(args: argparse.Namespace) -> dict:
    """The guidance weights given on the command line, ``{"actions": A, "memory": M}`` for
    those given (a session takes the world's own for the rest)."""
    given = {"actions": args.action_guidance, "memory": args.memory_guidance}
    return {name: value for name, value in given.items() if value is not None}
