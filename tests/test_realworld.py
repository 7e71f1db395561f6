import json

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from matrixgame.cli import main  # noqa: E402
from matrixgame.data.dataset import ClipDataset  # noqa: E402
from matrixgame.data.realworld import read_nerfstudio, read_realestate10k, to_clip  # noqa: E402
from matrixgame.geometry import get_preset, integrate_actions, relative_poses  # noqa: E402
from matrixgame.geometry.kinematics import keyboard_accuracy  # noqa: E402

W, H = 64, 48  # source images; clips are made at 32x24


def scripted_path():
    """A level walk with every kind of key and turns, made by the released kinematics."""
    seq = [
        ("W", 0.0, 6),
        ("WA", 0.0, 4),
        ("", 0.5, 5),
        ("S", 0.0, 3),
        ("D", -0.3, 4),
        ("WD", 0.0, 5),
    ]
    keyboard, mouse = [], []
    for keys, yaw, n in seq:
        kb = [float(k in keys) for k in "WSAD"] + [0.0, 0.0]
        keyboard += [kb] * n
        mouse += [[0.0, yaw]] * n
    keyboard = torch.tensor(keyboard, dtype=torch.float64)
    mouse = torch.tensor(mouse, dtype=torch.float64)
    traj = integrate_actions(keyboard, mouse, get_preset("released"))
    return traj.c2w().numpy(), keyboard, mouse


def as_colmap_world(c2w):
    """Some other world: turned, moved and scaled, as a structure-from-motion run leaves it."""
    g = np.random.default_rng(0)
    q = g.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    out = c2w.copy()
    out[:, :3, :3] = rot @ c2w[:, :3, :3]
    out[:, :3, 3] = (c2w[:, :3, 3] * 0.0137) @ rot.T + np.array([3.0, -1.0, 2.0])
    return out


def write_images(folder, names):
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), i * 7 % 255, dtype=np.uint8)).save(folder / name)


def check_clip(clip, c2w, keyboard, mouse):
    assert clip.frames.shape == (len(c2w), 24, 32, 3)
    # the annotation recovers the scripted actions from the poses alone
    assert (
        keyboard_accuracy(torch.from_numpy(clip.keyboard[:-1]).double(), keyboard[: len(c2w) - 1])
        == 1.0
    )
    np.testing.assert_allclose(clip.mouse[:-1], mouse[: len(c2w) - 1].numpy(), atol=1e-5)
    # the normalised poses are the original ones (same relative motion, same scale)
    ours = relative_poses(torch.from_numpy(clip.c2w), normalize_translation=False)
    want = relative_poses(torch.from_numpy(c2w), normalize_translation=False)
    torch.testing.assert_close(ours, want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(clip.c2w[:, 2, 3], 0.0, atol=1e-9)  # level walk stays level
    # a 64x48 image with fx = 0.5 W, centred, resized to 32x24
    np.testing.assert_allclose(clip.K, [16.0, 16.0, 16.0, 12.0], atol=1e-9)


def test_realestate10k_round_trip(tmp_path):
    c2w, keyboard, mouse = scripted_path()
    world = as_colmap_world(c2w)
    w2c = np.linalg.inv(world)
    stamps = [1_000_000 + 33_366 * i for i in range(len(c2w))]
    lines = ["https://www.youtube.com/watch?v=example"]
    for t, m in zip(stamps, w2c, strict=True):
        values = [t, 0.5, 0.5 * W / H, 0.5, 0.5, 0, 0, *m[:3].reshape(-1)]
        lines.append(" ".join(repr(float(v)) if i else str(v) for i, v in enumerate(values)))
    (tmp_path / "cam.txt").write_text("\n".join(lines) + "\n")
    write_images(tmp_path / "frames", [f"{t}.png" for t in stamps])
    posed = read_realestate10k(tmp_path / "cam.txt", tmp_path / "frames")
    check_clip(to_clip(posed, 32, 24), c2w, keyboard, mouse)


def test_nerfstudio_round_trip_and_import(tmp_path):
    c2w, keyboard, mouse = scripted_path()
    world = as_colmap_world(c2w) @ np.diag([1.0, -1.0, -1.0, 1.0])  # OpenGL cameras
    names = [f"images/frame_{i:05d}.png" for i in range(len(c2w))]
    write_images(tmp_path, names)
    data = {
        "fl_x": 0.5 * W,
        "fl_y": 0.5 * W,
        "cx": W / 2,
        "cy": H / 2,
        "w": W,
        "h": H,
        "frames": [
            {"file_path": n, "transform_matrix": m.tolist()}
            for n, m in zip(names, world, strict=True)
        ],
    }
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    check_clip(to_clip(read_nerfstudio(tmp_path / "transforms.json"), 32, 24), c2w, keyboard, mouse)
    out = tmp_path / "ds"
    args = ["import", "nerfstudio", str(tmp_path / "transforms.json"), "--out", str(out)]
    assert main([*args, "--width", "32", "--height", "24"]) == 0
    ds = ClipDataset(out, frames=9, memory=2)
    assert len(ds) == len(c2w) // 9 and ds[1]["frames"].shape == (9, 24, 32, 3)


def test_bad_inputs_say_what_is_wrong(tmp_path):
    (tmp_path / "cam.txt").write_text("url\n1 0.5 0.5 0.5 0.5 0 0 1 0 0\n")
    with pytest.raises(ValueError, match=":2: expected 19 numbers"):
        read_realestate10k(tmp_path / "cam.txt", tmp_path)
    row = "1 0.5 0.5 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"
    (tmp_path / "cam.txt").write_text(f"url\n{row}\n{row.replace('1 ', '2 ', 1)}\n")
    write_images(tmp_path / "frames", ["a.png"])
    with pytest.raises(ValueError, match="match neither"):
        read_realestate10k(tmp_path / "cam.txt", tmp_path / "frames")
    (tmp_path / "t.json").write_text(json.dumps({"frames": [{"file_path": "x.png"}] * 2}))
    with pytest.raises(ValueError, match="transform_matrix"):
        read_nerfstudio(tmp_path / "t.json")
    assert (
        main(["import", "realestate10k", str(tmp_path / "cam.txt"), "--out", str(tmp_path / "o")])
        == 2
    )
