"""Acceleration kept apart from the models: what the CPU can do fast (``capability``)."""
