import json

import pytest
import torch

from matrixgame.data.action_script import load_action_script, parse_action_script


def test_segments_expand_to_frames():
    script = parse_action_script(
        {
            "preset": "doom",
            "start": {"position": [1, 2, 3], "yaw": 90},
            "segments": [
                {"frames": 2, "keys": "wd"},
                {"frames": 3, "mouse": [0.5, -1]},
            ],
        }
    )
    assert len(script) == 5 and script.preset == "doom"
    assert script.keyboard[:2, :4].tolist() == [[1, 0, 0, 1]] * 2
    assert script.keyboard[2:].abs().sum() == 0
    assert script.mouse[2:].tolist() == [[0.5, -1.0]] * 3
    assert script.start.position.tolist() == [[1.0, 2.0, 3.0]] and float(script.start.yaw) == 90


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "expected a JSON object"),
        ({"segments": []}, "non-empty list"),
        ({"segments": [{"frames": 0}]}, r"segments\[0\]\.frames"),
        ({"segments": [{"frames": 1.5}]}, r"segments\[0\]\.frames"),
        ({"segments": [{"frames": 1}, {"frames": 2, "keys": "WX"}]}, r"segments\[1\]\.keys"),
        ({"segments": [{"frames": 1, "mouse": [0]}]}, r"\[pitch, yaw\]"),
        ({"segments": [{"frames": 1, "mouse": [0, float("nan")]}]}, "finite number"),
        ({"segments": [{"frames": 1, "mouse": [0, 100]}]}, "values must lie"),
        ({"segments": [{"frames": 1, "jump": True}]}, r"unknown field\(s\) \['jump'\]"),
        ({"segments": [{"frames": 1}], "preset": "ue5"}, "unknown preset"),
        ({"segments": [{"frames": 1}], "start": {"pitch": 95}}, r"start\.pitch"),
    ],
)
def test_bad_scripts_say_what_is_wrong(obj, message):
    with pytest.raises(ValueError, match=message):
        parse_action_script(obj)


def test_load_reports_file_problems(tmp_path):
    with pytest.raises(ValueError, match="cannot read action script"):
        load_action_script(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{segments: }")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_action_script(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"segments": [{"frames": 4, "keys": "S"}]}))
    assert torch.equal(load_action_script(good).keyboard[:, 1], torch.ones(4, dtype=torch.float64))
