"""``torch.compile`` of the streaming decoder and of the DiT, once the stream is steady (the
release compiles only its VAE decoder, ``dynamic=False``, after the first clip).

The decoder runs one latent per call with its feature cache. The first chunks differ (the
clip's first frame, caches still filling); they run eagerly, and from the first chunk whose
cache is full every call has the same shapes and guards: one graph, no recompiles
(``tests/test_compile.py``). On the CPUs measured the compiled decoder was slower than the
eager oneDNN path (``benchmarks/realtime.py``), so it is off unless asked for.

The DiT's window grows over a session's first segments (past and memory filling) and then
keeps its shapes: the same rule, eager until a call has the shapes of the one before, one
graph after. Its fused elementwise work paid 1.2-1.3x on a plain AVX2 CPU (BENCHMARKS.md),
after a compile of about two minutes there, so it is off unless asked for too.
"""

from __future__ import annotations

import torch

from matrixgame.models.vae import FeatureCache, WanVAE

Tensor = torch.Tensor


class _Steady:
    """Which of ``eager`` and ``compiled`` a call takes: compiled once its inputs have the
    shapes of the call before (counted in ``calls``)."""

    def __init__(self, eager, backend: str) -> None:
        self.eager = eager
        self.compiled = torch.compile(eager, dynamic=False, backend=backend)
        self.calls = {"eager": 0, "compiled": 0}
        self._last: tuple | None = None  # the previous call's shapes

    def _pick(self, shapes: tuple, ready: bool = True):
        steady = ready and shapes == self._last
        self._last = shapes
        self.calls["compiled" if steady else "eager"] += 1
        return self.compiled if steady else self.eager


class CompiledDecoder(_Steady):
    """``decoder(chunk, cache)`` for :meth:`WanVAE.decode`: eager while the cache fills,
    compiled (``backend``: "inductor", or "aot_eager" to check the graphs cheaply) after."""

    def __init__(self, vae: WanVAE, backend: str = "inductor") -> None:
        super().__init__(vae.decoder, backend)

    def __call__(self, x: Tensor, cache: FeatureCache) -> Tensor:
        shapes = (cache.first, tuple(None if s is None else tuple(s.shape) for s in cache.slots))
        # compiled once the cache stopped changing shape (never the clip's first chunk)
        decoder = self._pick(shapes, ready=not cache.first)
        if decoder is self.compiled:  # the graph's inputs in one layout, whichever route
            # made them (eager oneDNN convolutions leave channels-last tensors): one graph
            cache.slots = [None if s is None else s.contiguous() for s in cache.slots]
            x = x.contiguous()
        return decoder(x, cache)


class CompiledDiT(_Steady):
    """The DiT for a session's windows: :meth:`pick` gives the eager model while the
    window's shapes still change from one segment to the next, the compiled one (``backend``
    as for :class:`CompiledDecoder`) once a window has the shapes of the one before."""

    def __init__(self, dit: torch.nn.Module, backend: str = "inductor") -> None:
        super().__init__(dit, backend)  # calls: segments

    def pick(self, batch: dict) -> torch.nn.Module:
        return self._pick(tuple((k, tuple(v.shape)) for k, v in sorted(batch.items())
                                if isinstance(v, Tensor)))  # fmt: skip
