"""Every parser of outside input, fuzzed: action scripts, RealEstate10K camera files,
nerfstudio transforms.json, dataset manifests, clip shard headers (and files cut anywhere),
world configs, training runs' checkpoint pointers and configs, `--start` values and the
options of `matrixgame generate` (the WebSocket messages: test_serve_protocol.py). Each
input is parsed or refused with a ValueError-family error naming the problem; nothing else
escapes (no KeyError, TypeError or AttributeError from deep inside), and paths in the files
cannot leave their folder."""

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
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
@example({"format": "matrixgame-dataset/1", "shards": {"\x00": {}}})  # found by the fuzzer
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


# -- clip shards: their safetensors header --------------------------------------------------


def _clip_bytes() -> bytes:
    import tempfile
    from pathlib import Path

    import numpy as np

    from matrixgame.data.shards import Clip, write_clip

    clip = Clip(np.zeros((2, 4, 4, 3), np.uint8), np.tile(np.eye(4), (2, 1, 1)),
                np.ones(4), np.zeros((2, 6), np.float32), np.zeros((2, 2), np.float32),
                np.arange(2), None, {"map": "E1M1"})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        write_clip(Path(tmp) / "c.safetensors", clip)
        return (Path(tmp) / "c.safetensors").read_bytes()


CLIP = _clip_bytes()
header = st.fixed_dictionaries({}, optional={
    "__metadata__": values | st.fixed_dictionaries({"format": st.just("matrixgame-clip/1")},
                                                   optional={"meta": values | st.text()}),
    **{k: values | st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "U8", "F64", "X"]),
                                          "shape": st.lists(st.integers(-2, 6), max_size=4),
                                          "data_offsets": st.lists(st.integers(-4, 400),
                                                                   max_size=3)})
       for k in ("frames", "c2w", "K", "keyboard", "mouse", "tic")},
})  # fmt: skip


@FUZZ
@given(st.one_of(header, values), st.integers(0, len(CLIP)))
def test_clip_shard_headers(tmp_path, obj, cut):
    """A shard whose header says anything (or whose file is cut anywhere) is read or
    refused with a ValueError naming the file."""
    import struct

    from matrixgame.data.shards import read_clip

    (n,) = struct.unpack("<Q", CLIP[:8])
    text = _dump(obj).encode()
    data = struct.pack("<Q", len(text)) + text + CLIP[8 + n :]
    for i, blob in enumerate((data, CLIP[:cut])):
        path = tmp_path / f"{i}.safetensors"
        path.write_bytes(blob)
        try:
            clip = read_clip(path)
        except ValueError as err:
            assert str(path) in str(err)
        else:
            assert len(clip.c2w) == len(clip.keyboard) == len(clip.mouse)


def test_a_clip_missing_a_tensor_or_with_bad_meta_is_refused(tmp_path):
    from safetensors.torch import save_file

    from matrixgame.data.shards import read_clip

    tensors = {"K": torch.ones(4), "keyboard": torch.zeros(2, 6), "mouse": torch.zeros(2, 2),
               "tic": torch.arange(2)}  # fmt: skip
    save_file(tensors, str(tmp_path / "a.safetensors"),
              metadata={"format": "matrixgame-clip/1", "meta": "{}"})  # fmt: skip
    with pytest.raises(ValueError, match="a.safetensors: a clip without c2w"):
        read_clip(tmp_path / "a.safetensors")
    save_file({**tensors, "c2w": torch.zeros(2, 4, 4)}, str(tmp_path / "b.safetensors"),
              metadata={"format": "matrixgame-clip/1", "meta": "[1]"})  # fmt: skip
    with pytest.raises(ValueError, match="b.safetensors: its meta must be a JSON object"):
        read_clip(tmp_path / "b.safetensors")


# -- a training run's checkpoint pointer and config ------------------------------------------

run_config = st.fixed_dictionaries({}, optional={
    "model": values | st.sampled_from(["vae", "dit", "dmd", "idm"]),
    "preset": values | st.sampled_from(["tiny", "doom", "nope"]), "height": values,
    "width": values, "window": values, "latents": values, "teacher": values,
})  # fmt: skip


@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.one_of(run_config, values), st.sampled_from(["00000002", "../../etc", "", ".x", "2"]))
def test_run_checkpoints(tmp_path, obj, latest):
    """`latest` may only name a checkpoint folder of the run; its config.json is checked
    before anything is built from it."""
    from safetensors.torch import save_file

    from matrixgame.train.runs import trained_vae, trained_world

    folder = tmp_path / "checkpoints" / "00000002"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"ema.x": torch.zeros(1)}, str(folder / "weights.safetensors"))
    (folder / "config.json").write_text(_dump(obj))
    (tmp_path / "checkpoints" / "latest").write_text(latest)
    for load in (trained_vae, trained_world):
        try:
            load(tmp_path)
        except ValueError as err:
            assert str(err)


# -- `--start` values ------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(max_size=12),
        st.integers(-5, 5),
        st.none(),
        st.booleans(),
        st.sampled_from(["0", "1", "07", "spawn 0", "x.png", "a.jpg", "../b.webp"]),
    )
)
def test_start_values(value):
    from types import SimpleNamespace

    from matrixgame.worlds.shipped import choose_start

    starts = [SimpleNamespace(name="spawn 0"), SimpleNamespace(name="spawn 1")]
    chosen = _refused_or_parsed(choose_start, starts, value, None)
    assert chosen is None or chosen in starts


# -- CLI values --------------------------------------------------------------------------------

cli_value = st.one_of(
    st.integers(-3, 200).map(str),
    st.text(max_size=8),
    st.sampled_from(["0", "1", "2", "nan", "-inf", "1e9", "spawn 0", "x.png"]),
)


@pytest.fixture(scope="module")
def tiny_world(module_tmp):
    from helpers import make_world_folder

    return make_world_folder(module_tmp("fuzz-world") / "world")


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.fixed_dictionaries({}, optional={"--steps": cli_value, "--start": cli_value,
                                           "--seed": cli_value, "--threads": cli_value}),
       st.one_of(script, values), st.sampled_from(["v.mp4", "v.txt", "sub/v.mp4"]))  # fmt: skip
def test_generate_command_values(tiny_world, tmp_path, capsys, options, obj, out):
    """`matrixgame generate` with any option values and script: a video, or exit status
    1 / 2 with a one-line reason; never a traceback."""
    from matrixgame.cli import main

    path = tmp_path / "s.json"
    path.write_text(_dump(obj))
    argv = ["generate", str(path), "--world", str(tiny_world), "--out", str(tmp_path / out),
            "--int8", "off", *[x for kv in options.items() for x in kv]]  # fmt: skip
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own refusal: usage and the reason, status 2
        code = exit.code
    err = capsys.readouterr().err
    assert code in (0, 1, 2), code
    assert "Traceback" not in err
    if code:
        assert "error:" in err
    else:
        assert (tmp_path / out).exists()
