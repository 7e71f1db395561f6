"""Models: the Wan2.2 video VAE and (next) the Matrix-Game 3.0 DiT."""
