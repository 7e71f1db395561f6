"""``torch.compile`` of the streaming decoder, once the stream is steady (the release compiles
only its VAE decoder, ``dynamic=False``, after the first clip).

The decoder runs one latent per call with its feature cache. The first chunks differ (the
clip's first frame, caches still filling); they run eagerly, and from the first chunk whose
cache is full every call has the same shapes and guards: one graph, no recompiles
(``tests/test_compile.py``). On the CPU measured here the compiled decoder was slower than
the eager oneDNN path (``benchmarks/realtime.py``), so it is off unless asked for.
"""

from __future__ import annotations

import torch

from matrixgame.models.vae import FeatureCache, WanVAE

Tensor = torch.Tensor


class CompiledDecoder:
    """``decoder(chunk, cache)`` for :meth:`WanVAE.decode`: eager while the cache fills,
    compiled (``backend``: "inductor", or "aot_eager" to check the graphs cheaply) after."""

    def __init__(self, vae: WanVAE, backend: str = "inductor") -> None:
        self.eager = vae.decoder
        self.compiled = torch.compile(vae.decoder, dynamic=False, backend=backend)
        self.calls = {"eager": 0, "compiled": 0}
        self._last: tuple | None = None  # the cache's shapes at the previous call

    def __call__(self, x: Tensor, cache: FeatureCache) -> Tensor:
        shapes = (cache.first, tuple(None if s is None else tuple(s.shape) for s in cache.slots))
        steady = not cache.first and shapes == self._last  # the cache stopped changing shape
        self._last = shapes
        self.calls["compiled" if steady else "eager"] += 1
        return (self.compiled if steady else self.eager)(x, cache)
