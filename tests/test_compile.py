"""The compiled streaming decoder: the same frames as the eager one, and in steady state no
new graphs (no recompiles) segment after segment."""

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from matrixgame.accel.compile import CompiledDecoder
from matrixgame.models.vae import VAE_PRESETS, FeatureCache, WanVAE


def _stream(vae, latents, decoder=None):
    cache, out = FeatureCache(), []
    with torch.no_grad():
        out.append(vae.decode(latents[:, :, :1], cache, decoder))
        for i in range(1, latents.shape[2]):
            out.append(vae.decode(latents[:, :, i : i + 1], cache, decoder))
    return out


@pytest.mark.parametrize("preset", ["tiny", "doom"])
def test_steady_state_has_one_graph_and_the_eager_frames(preset):
    torch._dynamo.reset()
    torch.manual_seed(0)
    vae = WanVAE(VAE_PRESETS[preset]).eval()
    z, f = vae.config.z_dim, vae.config.spatial_factor
    latents = torch.randn(1, z, 8, 96 // f, 128 // f)
    reference = _stream(vae, latents)
    compiled = CompiledDecoder(vae, backend="aot_eager")
    graphs = []
    cache, frames = FeatureCache(), []
    with torch.no_grad():
        for i in range(latents.shape[2]):
            frames.append(vae.decode(latents[:, :, i : i + 1], cache, compiled))
            graphs.append(counters["stats"]["unique_graphs"])
    assert compiled.calls["compiled"] >= 4 and compiled.calls["eager"] <= 3
    steady = graphs[compiled.calls["eager"] :]
    assert len(set(steady)) == 1, f"graphs per chunk {graphs}: a recompile in steady state"
    for a, b in zip(frames, reference, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_inductor_decodes_the_same_frames_in_a_session():
    from matrixgame.inference.session import WorldSession

    world, start = _tiny_world(WanVAE(VAE_PRESETS["tiny"]).eval())
    runs = []
    for compile in (None, "inductor"):
        session = WorldSession(world, steps=1, compile=compile)
        frames = [session.reset(start)]
        frames += [session.step(torch.zeros(4, 6), torch.zeros(4, 2)).frames for _ in range(4)]
        runs.append(np.concatenate(frames).astype(int))
    assert session.decoder.calls["compiled"] >= 2
    assert np.abs(runs[0] - runs[1]).max() <= 1  # uint8 rounding of float differences


def test_the_compiled_dit_steps_a_session_as_the_eager_one_without_recompiles():
    """The DiT compiled once the session's window stops growing (past and memory full):
    the same latents as eager, segment after segment, and one graph in steady state."""
    from matrixgame.inference.session import WorldSession

    world, start = _tiny_world(None)
    keys = torch.zeros(4, 6)
    keys[:, 0] = 1  # walk on: every segment a new pose, memory chosen anew
    runs, graphs = [], []
    for backend in (None, "aot_eager"):
        session = WorldSession(world, steps=2, compile_dit=backend)
        session.reset(start)
        latents = []
        for _ in range(8):
            latents.append(session.step(keys, torch.zeros(4, 2)).latents)
            graphs.append(counters["stats"]["unique_graphs"])
        runs.append(latents)
    calls = session.compiled_dit.calls  # segments
    assert calls["compiled"] >= 5 and calls["eager"] <= 3, calls
    first = 8 + calls["eager"]  # the first compiled segment: one new graph, then no more
    assert graphs[first] - graphs[first - 1] == 1 and graphs[-1] == graphs[first], graphs[8:]
    for a, b in zip(*runs, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def _tiny_world(vae):
    """A tiny world (DiT, ``vae`` or none, 2 past + 1 current + 2 memory) and a start of 3
    latents, compile caches reset."""
    from types import SimpleNamespace

    from matrixgame.data.windows import WindowConfig
    from matrixgame.inference.session import Start
    from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT

    torch._dynamo.reset()
    torch.manual_seed(0)
    world = SimpleNamespace(dit=MatrixGameDiT(DIT_PRESETS["tiny"]).eval(), vae=vae,
                            window=WindowConfig(past=2, current=1, memory=2), height=64,
                            width=64, meta={})  # fmt: skip
    n = 9
    eye = torch.eye(4, dtype=torch.float64)
    start = Start(torch.randn(16, 3, 4, 4), eye.repeat(3, 1, 1), eye.repeat(n, 1, 1),
                  torch.zeros(n, 6), torch.zeros(n, 2), torch.full((4,), 32.0))  # fmt: skip
    return world, start
