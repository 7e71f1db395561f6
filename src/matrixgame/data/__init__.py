"""Data: action scripts now; the recording engine, real-world adapters and datasets next."""
