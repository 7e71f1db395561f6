"""Distillation into a few-step student: the DMD objective and its critic's loss (``dmd``),
multi-segment self rollouts through the world session (``rollout``), the trainer's step
(``task``) and the `matrixgame distill` job (``job``)."""
