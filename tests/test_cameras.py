import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import golden, random_poses
from matrixgame.geometry import (
    angles_from_pose,
    check_c2w,
    interpolate_poses,
    intrinsics_from_fov,
    pose_from_angles,
    relative_poses,
    rotation_from_angles,
    se3_inverse,
)

angle = st.floats(-179.0, 179.0)
pitch = st.floats(-89.0, 89.0)
coord = st.floats(-1e3, 1e3)


def pose(x, y, z, yaw, p, roll=0.0):
    return pose_from_angles(torch.tensor([x, y, z], dtype=torch.float64), yaw, p, roll)


@settings(max_examples=50, deadline=None)
@given(coord, coord, coord, angle, pitch, angle)
def test_se3_inverse_is_the_inverse(x, y, z, yaw, p, roll):
    T = pose(x, y, z, yaw, p, roll)
    eye = torch.eye(4, dtype=torch.float64)
    assert torch.allclose(T @ se3_inverse(T), eye, atol=1e-9)
    assert torch.allclose(se3_inverse(T) @ T, eye, atol=1e-9)
    assert torch.allclose(se3_inverse(se3_inverse(T)), T, atol=1e-9)


@settings(max_examples=50, deadline=None)
@given(angle, pitch, angle)
def test_angles_round_trip(yaw, p, roll):
    got = angles_from_pose(rotation_from_angles(yaw, p, roll))
    for a, b in zip(got, (yaw, p, roll), strict=True):
        assert math.remainder(float(a) - b, 360.0) == pytest.approx(0.0, abs=1e-6)


def test_convention_axes():
    # yaw 0: looking along +x, right is -y, down is -z (OpenCV camera in a z-up world)
    R = rotation_from_angles(0.0, 0.0)
    assert torch.allclose(R[:, 2], torch.tensor([1.0, 0.0, 0.0], dtype=R.dtype))
    assert torch.allclose(R[:, 0], torch.tensor([0.0, -1.0, 0.0], dtype=R.dtype))
    assert torch.allclose(R[:, 1], torch.tensor([0.0, 0.0, -1.0], dtype=R.dtype))
    # yaw 90 looks along +y (counter-clockwise), pitch 30 looks up
    f = rotation_from_angles(90.0, 30.0)[:, 2]
    want = torch.tensor([0.0, math.cos(math.radians(30)), 0.5], dtype=f.dtype)
    assert torch.allclose(f, want, atol=1e-12)
    assert torch.linalg.det(R) == pytest.approx(1.0)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_relative_pose_identities(seed):
    c2w = random_poses(5, torch.Generator().manual_seed(seed))
    rel = relative_poses(c2w, normalize_translation=False)
    assert torch.allclose(rel[0], torch.eye(4, dtype=c2w.dtype))
    # composing back with the first pose restores the absolute poses
    assert torch.allclose(c2w[0] @ rel, c2w, atol=1e-9)
    # relative poses do not depend on where the world origin is
    shift = pose(3.0, -2.0, 1.0, 40.0, 10.0, 5.0)
    assert torch.allclose(relative_poses(shift @ c2w, normalize_translation=False), rel, atol=1e-9)
    # framewise poses chain to the first-relative ones
    fw = relative_poses(c2w, framewise=True, normalize_translation=False)
    chained = [fw[0]]
    for T in fw[1:]:
        chained.append(chained[-1] @ T)
    assert torch.allclose(torch.stack(chained), rel, atol=1e-9)
    norm = relative_poses(c2w)
    assert norm[:, :3, 3].norm(dim=-1).max() == pytest.approx(1.0)


def test_relative_poses_match_release():
    g = golden()
    c2w = g["plucker.c2w"]
    torch.testing.assert_close(relative_poses(c2w), g["plucker.relative_first"])
    torch.testing.assert_close(relative_poses(c2w, framewise=True), g["plucker.relative_framewise"])
    torch.testing.assert_close(
        relative_poses(c2w, normalize_translation=False), g["plucker.relative_raw"]
    )


def test_intrinsics_match_release():
    # the release: 90 degrees on both axes (non-square pixels)
    torch.testing.assert_close(intrinsics_from_fov(48, 32, 90.0, 90.0), golden()["plucker.K"])
    K = intrinsics_from_fov(160, 120, 90.0)
    assert K.tolist() == pytest.approx([80.0, 80.0, 80.0, 60.0])


def test_interpolate_poses_matches_scipy_slerp():
    from scipy.spatial.transform import Rotation, Slerp

    c2w = random_poses(6, torch.Generator().manual_seed(3))
    src = torch.arange(6, dtype=torch.float64) * 4
    tgt = torch.tensor([0.0, 1.5, 3.0, 7.25, 13.0, 20.0])
    got = interpolate_poses(c2w, src, tgt)
    rot = Rotation.from_matrix(c2w[:, :3, :3].numpy())
    want = torch.from_numpy(Slerp(src.numpy(), rot)(tgt.numpy()).as_matrix())
    torch.testing.assert_close(got[:, :3, :3], want, atol=1e-9, rtol=0)
    assert torch.allclose(got[0], c2w[0]) and torch.allclose(got[-1], c2w[-1], atol=1e-12)
    mid = 0.5 * (c2w[1, :3, 3] + c2w[2, :3, 3])
    torch.testing.assert_close(interpolate_poses(c2w, src, [6.0])[0, :3, 3], mid)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (torch.full((4, 4), float("nan")), "NaN"),
        (torch.eye(3), r"shape \[\.\.\., 4, 4\]"),
        (torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0])), "not rigid"),
        (torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0])), "reflection"),
        (torch.eye(4, dtype=torch.long), "floating-point"),
    ],
)
def test_bad_poses_raise_clear_errors(matrix, message):
    with pytest.raises(ValueError, match=message):
        check_c2w(matrix)


def test_bad_sizes_and_fovs_raise():
    with pytest.raises(ValueError, match="width must be a positive integer"):
        intrinsics_from_fov(0, 10, 90.0)
    with pytest.raises(ValueError, match="field of view"):
        intrinsics_from_fov(10, 10, 180.0)
    with pytest.raises(ValueError, match="position must be finite"):
        pose_from_angles(torch.tensor([0.0, float("inf"), 0.0]), 0.0)


def test_axis_offsets_place_each_cameras_axis_in_the_reference_image():
    """Camera-aligned RoPE's offsets: a camera turned left by 10 degrees has its axis
    fx tan(10) pixels left of the reference's; one looking up, fy tan above; an axis behind
    the reference saturates at twice the image size on its side."""
    from matrixgame.geometry import axis_offsets

    K = torch.tensor([50.0, 40.0, 64.0, 48.0], dtype=torch.float64)
    ref = pose(3.0, -2.0, 1.0, 30.0, 0.0)
    cams = torch.stack([pose(3.0, -2.0, 1.0, 30.0, 0.0), pose(9.0, 4.0, 1.0, 40.0, 0.0),
                        pose(3.0, -2.0, 1.0, 30.0, 12.0), pose(0.0, 0.0, 1.0, 30.0 - 179.0, 0.0),
                        pose(0.0, 0.0, 1.0, 30.0 - 60.0, 0.0)])  # fmt: skip
    off = axis_offsets(cams, ref, K, 96, 128)
    tan = math.tan
    expected = torch.tensor([[0.0, 0.0], [0.0, -50 * tan(math.radians(10))],
                             [-40 * tan(math.radians(12)), 0.0], [0.0, 256.0],
                             [0.0, 50 * tan(math.radians(60))]], dtype=torch.float64)  # fmt: skip
    assert torch.allclose(off, expected, atol=1e-6)
    with pytest.raises(ValueError, match="focal"):
        axis_offsets(cams, ref, torch.tensor([0.0, 40.0, 64.0, 48.0]), 96, 128)
