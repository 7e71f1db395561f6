"""Distillation objectives: the DMD distribution-matching loss and its critic's loss."""
