"""Real-time play keeps the full decoder where this machine affords it: a short measure of the
world as it will play (`accel.budget`) decides, and `matrixgame play` loads the light decoder
only when the measure says so."""

from argparse import Namespace

import pytest

from helpers import add_light_decoder, make_world_folder
from matrixgame.accel import budget
from matrixgame.inference.session import WorldSession
from matrixgame.worlds.shipped import load_starts, load_world


@pytest.fixture(scope="module")
def world_folder(module_tmp):
    return add_light_decoder(make_world_folder(module_tmp("world")))


@pytest.fixture
def session(world_folder):
    return WorldSession(load_world(world_folder), seed=0)


def test_the_choice_follows_the_measure(world_folder, session):
    start = load_starts(world_folder)[0]
    roomy = budget.choose_decoder(session, start, fps=17.5, share=1e6, latency_ms=1e12)
    assert not roomy.light and roomy.segment_ms > 0
    assert roomy.budget_ms == pytest.approx(
        budget.segment_budget_ms(session.frames_per_step, 17.5, 1e6, 1e12)
    )
    assert "within" in roomy.reason and f"{roomy.segment_ms:.0f} ms" in roomy.reason
    tight = budget.choose_decoder(session, start, fps=17.5, share=0.0)
    assert tight.light and "over 0 ms" in tight.reason


def test_the_budget_is_the_frame_rate_s_or_the_latency_s():
    d = 4000 / 17.5  # 4 frames at 17.5 fps: a 229-ms segment, its share 137 ms
    assert budget.segment_budget_ms(4, 17.5, share=0.6, latency_ms=1e9) == pytest.approx(0.6 * d)
    g = budget.segment_budget_ms(4, 17.5, share=0.6, latency_ms=250)
    c = budget.CONTENTION * g  # the step in the server; a key waits for half of one by g / d
    assert c + c * c / (2 * d) + budget.OVERHEAD_MS == pytest.approx(250)
    assert 90 < g < 0.6 * d  # the latency binds: ~103 ms
    assert budget.segment_budget_ms(4, 17.5, latency_ms=budget.OVERHEAD_MS) == 0.0


def test_bad_measures_are_clear_errors(world_folder, session):
    start = load_starts(world_folder)[0]
    with pytest.raises(ValueError, match="first is warm-up"):
        budget.segment_ms(session, start, segments=1)
    with pytest.raises(ValueError, match="fps must be positive"):
        budget.choose_decoder(session, start, fps=0)
    with pytest.raises(ValueError, match="share must be non-negative"):
        budget.choose_decoder(session, start, fps=17.5, share=-1)


def _args(world, **flags):
    return Namespace(**{"world": str(world), "mode": "realtime", "student": False,
                        "decoder": "auto", "steps": None, "dtype": "float32", "int8": "off",
                        "threads": None, "seed": 0, "action_guidance": None,
                        "memory_guidance": None, **flags})  # fmt: skip


@pytest.mark.parametrize("share, light", [(1e6, False), (0.0, True)])
def test_play_loads_the_light_decoder_only_when_the_full_one_is_too_slow(
        world_folder, monkeypatch, share, light):  # fmt: skip
    from matrixgame.cli.play import _open

    monkeypatch.setattr(budget, "SHARE", share)
    monkeypatch.setattr(budget, "LATENCY_MS", 1e9)
    world, starts, info = _open(_args(world_folder))
    assert bool(world.vae.config.pruning_rate) == light
    assert f"{'light' if light else 'full'} (full decoder" in info["mode"]
    assert len(starts) == 2


def test_quality_mode_and_forced_decoders_skip_the_measure(world_folder, monkeypatch):
    from matrixgame.cli.play import _open

    def fail(*_, **__):
        raise AssertionError("measured")

    monkeypatch.setattr(budget, "choose_decoder", fail)
    world, _, info = _open(_args(world_folder, mode="quality"))
    assert not world.vae.config.pruning_rate and "full decoder" in info["mode"]
    world, _, info = _open(_args(world_folder, decoder="light"))
    assert world.vae.config.pruning_rate == 0.75 and "light decoder" in info["mode"]
    bare = make_world_folder(world_folder.parent / "bare")
    with pytest.raises(ValueError, match="ships no light decoder"):
        _open(_args(bare, decoder="light"))
    world, _, info = _open(_args(bare))  # realtime, nothing to choose: the full decoder
    assert "full decoder" in info["mode"]


def test_play_compiles_retrieval_or_says_why_not(world_folder, monkeypatch):
    from matrixgame.cli.play import _open
    from matrixgame.geometry import frustum

    _, _, info = _open(_args(world_folder, mode="quality"))
    assert info["retrieval"] == "compiled"  # warmed: sessions' first retrieval does not stall

    def no_compiler():
        raise RuntimeError("no C++ compiler\nmore")

    monkeypatch.setattr(frustum, "_compiled_hits", no_compiler)
    _, _, info = _open(_args(world_folder, mode="quality"))
    assert info["retrieval"] == "eager (RuntimeError: no C++ compiler)"
