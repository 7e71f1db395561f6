import json
from pathlib import Path

import pytest
import torch

from matrixgame.cli import main

EXAMPLE = Path(__file__).parents[1] / "examples" / "out_and_back.json"


def test_trajectory_on_the_example(tmp_path, capsys):
    out = tmp_path / "poses.json"
    assert main(["trajectory", str(EXAMPLE), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "keyboard accuracy 1.0000" in text
    data = json.loads(out.read_text())
    c2w = torch.tensor(data["c2w"])
    assert c2w.shape == (len(data["keyboard"]) + 1, 4, 4)
    # the loop returns to its start facing the same way: memory finds frame 0
    assert c2w[-17, :3, 3].norm() < 1e-3
    last = data["retrievals"][-1]
    assert last["frames"][0] in (0, 1) and last["exact_top1"] > 0.99


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as info:
        main(["trajectory", "--help"])
    assert info.value.code == 0
    assert "frustum overlap" in capsys.readouterr().out


def test_bad_script_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"segments": [{"frames": 3, "keys": "Q"}]}))
    assert main(["trajectory", str(bad)]) == 2
    assert "segments[0].keys" in capsys.readouterr().err
