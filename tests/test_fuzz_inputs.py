"""Every parser of outside input, fuzzed: action scripts, RealEstate10K camera files,
nerfstudio transforms.json, dataset manifests, world configs (the WebSocket messages are in
test_serve_protocol.py). Each input is parsed or refused with a ValueError-family error
naming the problem; nothing else escapes (no KeyError, TypeError or AttributeError from
deep inside), and paths in the files cannot leave their folder."""

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matrixgame.data.action_script import parse_action_script
from matrixgame.data.realworld import read_nerfstudio, read_realestate10k
from matrixgame.data.shards import Manifest
from matrixgame.worlds.shipped import read_config

FUZZ = settings(max_examples=1500, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])  # fmt: skip

scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6))  # fmt: skip
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=5),
                      max_leaves=16)  # fmt: skip


def _refused_or_parsed(fn, *args):
    try:
        return fn(*args)
    except ValueError as err:  # includes json.JSONDecodeError and UnicodeDecodeError
        assert str(err)
        return None


def _dump(obj) -> str:
    return json.dumps(obj, allow_nan=True)


# -- action scripts -------------------------------------------------------------------------

segment = st.fixed_dictionaries({}, optional={
    "frames": values | st.integers(-5, 50), "keys": values | st.sampled_from(["W", "wd", "Q"]),
    "mouse": values | st.lists(st.floats(-30, 30), min_size=2, max_size=2), "x": values,
})  # fmt: skip
script = st.fixed_dictionaries({}, optional={
    "segments": values | st.lists(segment, max_size=4), "preset": values | st.just("doom"),
    "start": values | st.fixed_dictionaries({}, optional={"position": values, "yaw": values,
                                                           "pitch": values}),
})  # fmt: skip


@settings(max_examples=3500, deadline=None)
@given(st.one_of(script, values))
def test_action_scripts(obj):
    parsed = _refused_or_parsed(parse_action_script, obj)
    if parsed is not None:
        assert len(parsed) >= 1 and parsed.keyboard.shape == (len(parsed), 6)
        assert bool(parsed.mouse.isfinite().all())


# -- pose files -----------------------------------------------------------------------------

line = st.lists(st.sampled_from(["0", "1", "-1", "0.5", "1e9", "nan", "inf", "x", "2e-3"]),
                max_size=21).map(" ".join)  # fmt: skip


@FUZZ
@given(st.lists(line | st.text(max_size=20), max_size=6))
def test_realestate10k_camera_files(tmp_path, lines):
    path = tmp_path / "cameras.txt"
    path.write_text("\n".join(["https://example.com/video", *lines]))
    (tmp_path / "frames").mkdir(exist_ok=True)
    _refused_or_parsed(read_realestate10k, path, tmp_path / "frames")


frame = st.fixed_dictionaries({}, optional={
    "transform_matrix": values | st.lists(st.lists(st.floats(-2, 2), min_size=4, max_size=4),
                                          min_size=4, max_size=4),
    "file_path": values | st.sampled_from(["img.png", "../outside.png", "/etc/passwd", ""]),
    "fl_x": values, "fl_y": values, "cx": values, "cy": values,
})  # fmt: skip
transforms = st.fixed_dictionaries({}, optional={
    "frames": values | st.lists(frame, max_size=3), "fl_x": values | st.just(50.0),
    "fl_y": st.just(50.0), "cx": st.just(32.0), "cy": st.just(32.0),
})  # fmt: skip


@FUZZ
@given(st.one_of(transforms, values))
def test_nerfstudio_transforms(tmp_path, obj):
    root = tmp_path / "scene"
    root.mkdir(exist_ok=True)
    (root / "img.png").write_bytes(b"")
    (tmp_path / "outside.png").write_bytes(b"")
    (root / "transforms.json").write_text(_dump(obj))
    parsed = _refused_or_parsed(read_nerfstudio, root / "transforms.json")
    if parsed is not None:
        for image in parsed.images:  # nothing from outside the scene's folder
            assert root.resolve() in image.resolve().parents


def test_nerfstudio_paths_cannot_leave_the_folder(tmp_path):
    root = tmp_path / "scene"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"")
    frames = [{"transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
               "file_path": "../secret.png"}] * 2  # fmt: skip
    (root / "transforms.json").write_text(json.dumps({"frames": frames, "fl_x": 1, "fl_y": 1,
                                                      "cx": 1, "cy": 1}))  # fmt: skip
    with pytest.raises(ValueError, match="outside"):
        read_nerfstudio(root / "transforms.json")


# -- manifests and configs ------------------------------------------------------------------

manifest = st.fixed_dictionaries({"format": st.sampled_from(["matrixgame-dataset/1", "x"])},
                                 optional={"config": values, "shards": values | st.dictionaries(
                                     st.sampled_from(["a.safetensors", "../up.safetensors",
                                                      "/abs.safetensors", "sub/b.safetensors",
                                                      ".hidden"]),
                                     values | st.fixed_dictionaries({"frames": values,
                                                                     "sha256": values}),
                                     max_size=3)})  # fmt: skip


@FUZZ
@given(st.one_of(manifest, values))
def test_manifests(tmp_path, obj):
    from matrixgame.data.shards import MANIFEST, MANIFEST_FORMAT

    if isinstance(obj, dict) and obj.get("format") == "matrixgame-dataset/1":
        obj["format"] = MANIFEST_FORMAT
    (tmp_path / MANIFEST).write_text(_dump(obj))
    parsed = _refused_or_parsed(Manifest.load, tmp_path)
    if parsed is not None:
        assert isinstance(parsed.config, dict) and isinstance(parsed.shards, dict)
        for name, entry in parsed.shards.items():
            assert "/" not in name and ".." not in name and isinstance(entry, dict)
            assert (tmp_path / name).resolve().parent == tmp_path.resolve()


world_config = st.fixed_dictionaries({"format": st.just("matrixgame-world/1")}, optional={
    "vae": values | st.fixed_dictionaries({"preset": st.sampled_from(["doom", "tiny", "x"])},
                                          optional={"latent_mean": values,
                                                    "latent_std": values}),
    "dit": values | st.fixed_dictionaries({"preset": st.sampled_from(["doom", "tiny", "x"])}),
    "height": values | st.integers(-10, 200), "width": values | st.integers(-10, 200),
    "fps": values | st.floats(0, 60), "window": values, "sampler": values,
    "kinematics": values,
})  # fmt: skip


@FUZZ
@given(st.one_of(world_config, values))
def test_world_configs(tmp_path, obj):
    (tmp_path / "config.json").write_text(_dump(obj))
    parsed = _refused_or_parsed(read_config, tmp_path)
    if parsed is not None:
        assert parsed["height"] > 0 and parsed["width"] > 0 and math.isfinite(parsed["fps"])
