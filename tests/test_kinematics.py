import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import golden
from matrixgame.geometry import (
    PRESETS,
    Trajectory,
    get_preset,
    infer_actions,
    integrate_actions,
    keyboard_accuracy,
    relative_poses,
)
from matrixgame.geometry.kinematics import KinematicsConfig


def random_actions(t: int, seed: int, dead_zone: float, hold: int = 1):
    """Random multi-hot keys (opposite keys included) and mouse values that are either 0 or
    outside the dead zone; each action is held for ``hold`` frames."""
    g = torch.Generator().manual_seed(seed)
    n = -(-t // hold)
    keyboard = torch.zeros(n, 6, dtype=torch.float64)
    keyboard[:, :4] = (torch.rand(n, 4, generator=g) < 0.35).double()
    mag = dead_zone + torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.5
    sign = torch.where(torch.rand(n, 2, generator=g) < 0.5, -1.0, 1.0).double()
    mouse = torch.where(torch.rand(n, 2, generator=g) < 0.4, 0.0, mag * sign)
    return keyboard.repeat_interleave(hold, 0)[:t], mouse.repeat_interleave(hold, 0)[:t]


def test_released_preset_matches_release():
    g = golden()
    keyboard, mouse, poses5 = g["kin.keyboard"], g["kin.mouse"], g["kin.poses5"]
    traj = integrate_actions(keyboard[:-1], mouse[:-1], get_preset("released"))
    # the release's world is left-handed (x forward, y right); ours is right-handed with
    # counter-clockwise yaw and pitch up, so y, yaw and pitch change sign
    mirror = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(traj.position, poses5[:, :3] * mirror, atol=1e-4, rtol=0)
    torch.testing.assert_close(traj.yaw, -poses5[:, 4], atol=1e-4, rtol=0)
    torch.testing.assert_close(traj.pitch, -poses5[:, 3], atol=1e-4, rtol=0)
    # the camera motion the model sees (relative poses) is identical, handedness aside
    ours = relative_poses(traj.c2w(get_preset("released").metres_per_unit))
    mirror4 = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
    theirs = relative_poses(mirror4 @ g["kin.c2w"])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), yaw=st.floats(-180, 180))
def test_round_trip_is_exact_without_noise(preset, seed, yaw):
    config = get_preset(preset)
    keyboard, mouse = random_actions(120, seed, config.mouse_dead_zone)
    traj = integrate_actions(keyboard, mouse, config, Trajectory.start((5.0, -3.0, 1.0), yaw))
    kb, ms = infer_actions(traj, config)
    assert keyboard_accuracy(kb, keyboard) == 1.0
    torch.testing.assert_close(ms[:, 1], mouse[:, 1], atol=1e-9, rtol=0)
    free = traj.pitch[1:].abs() < (config.pitch_limit or float("inf"))  # not clamped
    torch.testing.assert_close(ms[free, 0], mouse[free, 0], atol=1e-9, rtol=0)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_labels_survive_pose_noise(preset):
    config = get_preset(preset)
    keyboard, mouse = random_actions(3000, 7, config.mouse_dead_zone, hold=6)
    mouse = mouse * 0.3  # gentle turning
    traj = integrate_actions(keyboard, mouse, config)
    step = traj.position.diff(dim=0).norm(dim=-1)
    step = step[step > 0].mean()  # one walking step
    g = torch.Generator().manual_seed(0)
    noisy = Trajectory(
        traj.position + 0.01 * step * torch.randn(traj.position.shape, generator=g).double(),
        traj.yaw + 0.01 * config.degrees_per_unit * torch.randn(len(traj), generator=g).double(),
        traj.pitch,
    )
    kb, _ = infer_actions(noisy, config)
    assert keyboard_accuracy(kb, keyboard) >= 0.98


def test_momentum_carries_motion_after_release():
    config = get_preset("doom")
    keyboard = torch.zeros(10, 6, dtype=torch.float64)
    keyboard[:3, 0] = 1.0  # W for three frames, then nothing
    traj = integrate_actions(keyboard, torch.zeros(10, 2, dtype=torch.float64), config)
    steps = traj.position.diff(dim=0)[:, 0]
    assert (steps[3:] > 0).all() and (steps[4:] < steps[3:-1]).all()  # coasting, slowing
    kb, _ = infer_actions(traj, config)
    assert kb[:, 0].tolist() == keyboard[:, 0].tolist()  # coasting is not a key press


def test_config_and_input_validation():
    with pytest.raises(ValueError, match="unknown kinematics preset"):
        get_preset("ue6")
    with pytest.raises(ValueError, match="heading"):
        KinematicsConfig(1.0, 1.0, None, 15.0, 0.02, heading="sideways")
    good_kb, good_ms = torch.zeros(4, 6), torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"keyboard must be a tensor \[T, 6\]"):
        integrate_actions(torch.zeros(4, 4), good_ms, get_preset("released"))
    with pytest.raises(ValueError, match="mouse contains NaN"):
        integrate_actions(good_kb, torch.full((4, 2), float("nan")), get_preset("released"))
    with pytest.raises(ValueError, match="keyboard has 4 frames but mouse has 3"):
        integrate_actions(good_kb, torch.zeros(3, 2), get_preset("released"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        Trajectory(torch.full((2, 3), float("inf")), torch.zeros(2), torch.zeros(2))
