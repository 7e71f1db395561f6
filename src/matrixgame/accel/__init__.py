"""Acceleration kept apart from the models: what the CPU can do fast (``capability``) and
INT8 attention/FFN projections swapped into the DiT (``int8``)."""
