"""`matrixgame generate`: an action script and a start into an H.264 MP4 that decodes to the
expected frames, with poses and memory per step; bad scripts and starts are refused by name."""

import json

import numpy as np
import pytest

from helpers import make_world_folder
from matrixgame.cli import main
from matrixgame.media import Mp4Writer, read_video


@pytest.fixture(scope="module")
def world(module_tmp):
    return make_world_folder(module_tmp("world"))


def _script(tmp_path, obj, name="walk.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_script_becomes_an_mp4_with_its_poses_and_memory(world, tmp_path, capsys, dtype):
    script = _script(tmp_path, {"segments": [{"frames": 6, "keys": "W"},
                                             {"frames": 5, "mouse": [0.0, 0.5]}]})  # fmt: skip
    out, poses = tmp_path / "walk.mp4", tmp_path / "poses.json"
    args = ["generate", script, "--out", str(out), "--world", str(world), "--poses", str(poses),
            "--dtype", dtype]  # fmt: skip
    assert main(args) == 0
    video, fps = read_video(out)
    assert video.shape == (9 + 11, 64, 64, 3) and fps == pytest.approx(17.5)  # start + script
    log = json.loads(poses.read_text())
    assert log["frames"] == 20 and len(log["c2w"]) == 20 and log["context_frames"] == 9
    assert [s["first_frame"] for s in log["steps"]] == [9, 13, 17]
    assert all(len(s["memory_latents"]) <= 2 for s in log["steps"])
    x = [c2w[0][3] for c2w in log["c2w"]]
    assert x[14] > x[9]  # W walked forward (+x at the start's heading)
    assert "20 frames" in capsys.readouterr().out


def test_a_start_from_an_image(world, tmp_path):
    from PIL import Image

    image = tmp_path / "room.png"
    Image.fromarray(np.full((48, 80, 3), 120, np.uint8)).save(image)
    script = _script(tmp_path, {"segments": [{"frames": 4}]})
    out = tmp_path / "image.mp4"
    assert main(["generate", script, "--out", str(out), "--world", str(world),
                 "--start", str(image)]) == 0  # fmt: skip
    video, _ = read_video(out)
    assert video.shape == (1 + 4, 64, 64, 3)


@pytest.mark.parametrize(
    ("obj", "extra", "says"),
    [
        ({"segments": [{"frames": 4, "keys": "Q"}]}, [], "segments[0].keys"),
        ({"segments": [{"frames": 0}]}, [], "segments[0].frames"),
        ({"segments": [{"frames": 4, "jump": 1}]}, [], "unknown field(s) ['jump']"),
        ({"preset": "released", "segments": [{"frames": 4}]}, [], "'released' kinematics"),
        ({"start": {"yaw": 0}, "segments": [{"frames": 4}]}, [], "drop the script's 'start'"),
        ({"segments": [{"frames": 4}]}, ["--start", "7"], "start 7 does not exist"),
        ({"segments": [{"frames": 4}]}, ["--start", "moon"], "no start 'moon'"),
        ({"segments": [{"frames": 4}]}, ["--steps", "0"], "--steps"),
    ],
)
def test_bad_scripts_and_starts_are_refused_by_name(world, tmp_path, capsys, obj, extra, says):
    script = _script(tmp_path, obj)
    out = tmp_path / "bad.mp4"
    assert main(["generate", script, "--out", str(out), "--world", str(world), *extra]) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()


def test_the_video_must_be_an_mp4(world, tmp_path, capsys):
    script = _script(tmp_path, {"segments": [{"frames": 4}]})
    assert main(["generate", script, "--out", str(tmp_path / "a.gif"), "--world", str(world)]) == 2
    assert "*.mp4" in capsys.readouterr().err


def test_mp4_round_trip_and_no_partial_file_on_error(tmp_path):
    yy, xx = np.mgrid[0:30, 0:41]  # odd size: padded by one; smooth, as 4:2:0 chroma wants
    base = np.stack([xx * 6, yy * 8, 255 - xx * 3], -1).astype(np.uint8)[None]
    frames = np.repeat(base, 6, 0)
    with Mp4Writer(tmp_path / "v.mp4", 10.0) as video:
        video.write(frames)
    back, fps = read_video(tmp_path / "v.mp4")
    assert back.shape == (6, 30, 42, 3) and fps == 10.0
    assert np.abs(back[:, :, :41].astype(int) - frames).mean() < 3  # H.264 at crf 18
    with pytest.raises(RuntimeError), Mp4Writer(tmp_path / "broken.mp4", 10.0) as video:
        video.write(frames)
        raise RuntimeError("the world failed")
    assert not (tmp_path / "broken.mp4").exists() and not list(tmp_path.glob(".broken*"))
    with pytest.raises(ValueError, match="uint8"):
        Mp4Writer(tmp_path / "x.mp4", 10.0).write(frames.astype(np.float32))
