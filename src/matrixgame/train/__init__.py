"""Training: the error buffer now; the trainer, memory sampling and checkpoints next."""
