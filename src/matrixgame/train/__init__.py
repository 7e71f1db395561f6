"""Training: one trainer for every model (``trainer``), the tasks that supply its losses
(``vae_task``, ``adversarial``, ``dit_task`` with the ``error_buffer``), latent caches
(``latents``), training samples (``memory_sampling``), the jobs the CLI and the world
recipe run (``jobs``), run logs and sample strips, reading finished runs (``runs``), and
a world model carried onto another autoencoder's latents (``latent_map``)."""
