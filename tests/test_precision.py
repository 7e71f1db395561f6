"""The DiT's inference dtype: chosen by what the hardware multiplies fast, and a bf16 world
model streams what the float32 one does (the sampler integrating in float32)."""

import numpy as np
import pytest
import torch

from matrixgame.accel import capability, precision
from matrixgame.accel.precision import cast_dit, choose_dtype, model_dtype
from matrixgame.inference.session import Start, WorldSession, replay
from test_int8 import tiny_dit
from test_session import _clip, _world


@pytest.mark.parametrize("fast", [True, False])
def test_auto_takes_bf16_only_where_the_cpu_multiplies_it_fast(monkeypatch, fast):
    monkeypatch.setattr(capability, "fast_bf16", lambda: fast)
    report = choose_dtype("auto", "cpu")
    assert report.dtype == (torch.bfloat16 if fast else torch.float32)
    assert ("fast" in report.reason) and (("no fast" in report.reason) != fast)
    asked = choose_dtype("bfloat16", "cpu")  # asked for: given, with a warning where slow
    assert asked.dtype == torch.bfloat16 and ("slow" in asked.reason) != fast
    assert choose_dtype("float32").dtype == torch.float32


def test_an_unknown_dtype_is_named():
    with pytest.raises(ValueError, match="one of .'auto'.*got 'float16'"):
        choose_dtype("float16")
    world = _world()
    with pytest.raises(ValueError, match="dtype must be one of"):
        cast_dit(world.dit, "fp8")
    assert model_dtype(world.dit) == torch.float32  # left as it was


def test_the_play_and_generate_commands_offer_exactly_the_dtypes_there_are():
    # the CLI spells the choices out so that `--help` does not import torch; they must not drift
    import argparse

    from matrixgame.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for verb in ("play", "generate"):
        dtype = next(a for a in sub.choices[verb]._actions if a.dest == "dtype")
        assert tuple(dtype.choices) == precision.CHOICES and dtype.default == "auto"


def test_a_bf16_world_model_streams_what_the_float32_one_does(monkeypatch):
    monkeypatch.setattr(precision.capability, "fast_bf16", lambda: True)
    clip, context, total = _clip(), 5, 11
    runs = {}
    for choice in ("float32", "auto"):
        world = _world()
        world.dit = tiny_dit()  # every layer random, so that every path reaches the output
        report = cast_dit(world.dit, choice)
        session = WorldSession(world, steps=2, shift=3.0, seed=3, metres_per_unit=1.0)
        frames = session.reset(Start.from_clip(clip, context))
        latents = replay(session, Start.from_clip(clip, context), clip, total)
        segment = session.step(torch.zeros(session.frames_per_step, 6),
                               torch.zeros(session.frames_per_step, 2))  # fmt: skip
        runs[report.name] = (latents, segment.frames, frames)
        assert model_dtype(world.dit) == report.dtype
        assert latents.dtype == torch.float32 and segment.latents.dtype == torch.float32
    (ref, ref_frames, start), (bf16, bf16_frames, start_bf16) = runs["float32"], runs["bfloat16"]
    assert np.array_equal(start, start_bf16)  # the decoder is not cast
    generated = slice(context, total)
    cos = torch.nn.functional.cosine_similarity(ref[:, generated].flatten(),
                                                bf16[:, generated].flatten(), 0)  # fmt: skip
    assert cos > 0.995, cos
    assert not torch.equal(ref[:, generated], bf16[:, generated])  # it did run in bf16
    error = np.abs(ref_frames.astype(int) - bf16_frames.astype(int)).mean()
    assert error < 4, error  # mean absolute difference of uint8 frames
