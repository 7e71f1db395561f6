"""One player's session: keys and pointer motion become the step's actions, revisits are
marked only after walking away and back, memory thumbnails match what was shown, and a
recording stops at its cap."""

import numpy as np
import pytest

from helpers import make_world_folder
from matrixgame.inference.session import WorldSession
from matrixgame.media import read_video
from matrixgame.serve.player import Player
from matrixgame.worlds.shipped import load_starts, load_world


@pytest.fixture(scope="module")
def world(module_tmp):
    root = make_world_folder(module_tmp("world"))
    return load_world(root), load_starts(root)


def _player(world, **kw):
    w, starts = world
    return Player(WorldSession(w, steps=1, decode=True), starts, 17.5, **kw)


def test_walking_away_and_back_marks_a_revisit_standing_still_does_not(world):
    player = _player(world, revisit_after_s=1.0, revisit_metres=2.0)
    header, frames, _ = player.reset(0)
    assert header["reset"] and not header["revisit"] and len(frames) == 9
    still = [player.step(frozenset(), (0, 0), i)[0]["revisit"] for i in range(8)]
    assert not any(still)  # old memory, but no walking: not a revisit
    out = [player.step(frozenset("W"), (0, 0), i)[0] for i in range(8)]
    back = [player.step(frozenset("S"), (0, 0), i)[0] for i in range(10)]
    assert not any(h["revisit"] for h in out)  # straight on: old memory, but no detour
    assert out[-1]["pose"][0] > header["pose"][0] + 10  # walked out more than 10 m
    revisits = [h for h in back if h["revisit"]]
    assert len(revisits) >= 5  # walking back: the outward trip's memory is recalled
    assert all(max(m["age_s"] for m in h["memory"]) >= 1.0 for h in revisits)


def test_pointer_motion_turns_and_pitch_is_ignored_in_doom(world):
    player = _player(world, degrees_per_pixel=0.5)
    player.reset(0)
    header = player.step(frozenset(), (40, 300), 0)[0]  # 40 px right = 20 degrees
    header = player.step(frozenset(), (0, 0), 1)[0]
    assert header["pose"][2] == pytest.approx(-20, abs=1.5)
    assert header["input_seq"] == 1
    with pytest.raises(ValueError, match="start 5"):
        player.reset(5)


def test_thumbnails_are_the_frames_shown(world):
    player = _player(world)
    _, first, _ = player.reset(0)
    assert np.array_equal(player.thumbs[0], first[0, ::2, ::2])
    assert np.array_equal(player.thumbs[2], first[8, ::2, ::2])
    for i in range(3):
        header, frames, thumbs = player.step(frozenset(), (0, 0), i)
        assert np.array_equal(player.thumbs[3 + i], frames[3, ::2, ::2])
    assert len(thumbs) == len(header["memory"]) == 2
    for m, t in zip(header["memory"], thumbs, strict=True):
        assert m["thumb"] and np.array_equal(t, player.thumbs[m["position"]])


def test_a_recording_holds_what_was_shown_up_to_its_cap(world, tmp_path):
    player = _player(world, max_record_s=1.0)  # 17 frames
    player.reset(0)
    player.start_recording(tmp_path / "r.mp4")
    for i in range(6):
        player.step(frozenset("W"), (0, 0), i)
    assert player.recording_full
    path, frames = player.stop_recording()
    assert frames == 17 and read_video(path)[0].shape == (17, 64, 64, 3)
    assert player.stop_recording() is None


def test_a_segment_generated_from_memory_alone_is_marked(world):
    """The page is told which segments the session generated from memory alone (revisits,
    the world's revisit margin): every one with memory at margin -1, none without a margin."""
    w, starts = world
    for margin, want in ((-1.0, True), (None, False)):
        session = WorldSession(w, steps=1, decode=True, revisit_margin=margin)
        player = Player(session, starts, 17.5)
        player.reset(0)
        headers = [player.step(frozenset("W"), (0, 0), i)[0] for i in range(4)]
        assert all(h["from_memory"] == (want and bool(h["memory"])) for h in headers)
        assert any(h["memory"] for h in headers)
