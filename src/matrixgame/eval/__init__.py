"""Evaluation: the numbers the report never gave (metrics first; protocols and reports next)."""
