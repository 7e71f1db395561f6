"""matrixgame: an open, complete, tested implementation of the Matrix-Game 3.0 world model."""

__version__ = "0.1.0"
