"""Kinematics between keyboard/mouse actions and camera poses, in both directions.

Action space (the released Matrix-Game-3.0 layout), one row per frame; action t moves the
camera from pose t to pose t+1:

- keyboard ``[T, 6]`` multi-hot: W, S, A, D, then two spare slots (kept zero);
- mouse ``[T, 2]``: (pitch, yaw) deltas in mouse units; positive pitch looks down and
  positive yaw turns right (image directions, as the release), ``degrees_per_unit`` each.

Forward model, per frame (a point mass with optional momentum, Doom style):

    yaw' = yaw - s * m_yaw,  pitch' = clamp(pitch - s * m_pitch)          (dead zone on m)
    thrust = R(heading) [forward_speed * (W - S), strafe_speed * (D - A)]   (diagonal_speed)
    v' = friction * v + thrust,  p' = p + v'

``heading`` is the mean of the old and new yaw (the release) or the new yaw (Doom turns
before it thrusts). The inverse ("physics-based" annotation, for data with poses but no
actions) reads the mouse from angle deltas and the keys from the thrust
``v_t - friction * v_{t-1}`` projected onto the heading, with hysteresis thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from matrixgame.geometry.cameras import angles_from_pose, check_c2w, pose_from_angles

Tensor = torch.Tensor

KEYS = ("W", "S", "A", "D")
KEYBOARD_DIM = 6
MOUSE_DIM = 2


@dataclass(frozen=True)
class KinematicsConfig:
    """Speeds in world units per frame, angles in degrees."""

    forward_speed: float
    strafe_speed: float
    diagonal_speed: float | None  # per-axis speed when moving diagonally; None: no slow-down
    degrees_per_unit: float
    mouse_dead_zone: float
    friction: float = 0.0  # fraction of last frame's velocity kept
    heading: str = "average"  # "average" | "new"
    pitch_limit: float | None = None  # clamp |pitch| (degrees)
    metres_per_unit: float = 1.0  # world units to metres, for view volumes given in metres
    press_threshold: float = 0.5  # key pressed when thrust component > this * its speed
    release_threshold: float = 0.3  # ... and held while above this (hysteresis)

    def __post_init__(self) -> None:
        if self.heading not in ("average", "new"):
            raise ValueError(f"heading must be 'average' or 'new', got {self.heading!r}")
        if not 0 <= self.friction < 1:
            raise ValueError(f"friction must lie in [0, 1), got {self.friction}")
        speeds = [self.forward_speed, self.strafe_speed, self.degrees_per_unit]
        if self.diagonal_speed is not None:
            speeds.append(self.diagonal_speed)
        if min(speeds) <= 0 or self.metres_per_unit <= 0:
            raise ValueError("speeds, degrees_per_unit and metres_per_unit must be positive")
        if not 0 < self.release_threshold <= self.press_threshold < 1:
            raise ValueError("need 0 < release_threshold <= press_threshold < 1")


PRESETS: dict[str, KinematicsConfig] = {
    # The released inference code (utils/utils.py): 12.35 units per frame (UE centimetres),
    # 8.73 per axis on diagonals, 15 degrees per mouse unit, dead zone 0.02, no momentum.
    "released": KinematicsConfig(
        forward_speed=12.35,
        strafe_speed=12.35,
        diagonal_speed=8.73,
        degrees_per_unit=15.0,
        mouse_dead_zone=0.02,
        metres_per_unit=0.01,
    ),
    # Doom (map units, one frame = 4 game tics): running thrust 50 * 2048 / 65536 = 1.5625
    # forward and 40 * 2048 / 65536 = 1.25 sideways per tic, friction 0xE800 / 0x10000 per
    # tic. Per frame, a first-order approximation: thrust times sum_{i<4} f^i, velocity kept
    # f^4. Doom turns before it thrusts; pitch is clamped. The data engine refits these
    # constants on its own recordings.
    "doom": KinematicsConfig(
        forward_speed=1.5625 * sum(0.90625**i for i in range(4)),
        strafe_speed=1.25 * sum(0.90625**i for i in range(4)),
        diagonal_speed=None,
        degrees_per_unit=15.0,
        mouse_dead_zone=0.02,
        friction=0.90625**4,
        heading="new",
        pitch_limit=45.0,
        metres_per_unit=1 / 32,  # the player is 56 units tall
    ),
}


def get_preset(name: str) -> KinematicsConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown kinematics preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class Trajectory:
    """A camera path: ``position [T, 3]``, ``yaw [T]``, ``pitch [T]`` (degrees, see cameras)."""

    position: Tensor
    yaw: Tensor
    pitch: Tensor

    def __post_init__(self) -> None:
        t = self.position.shape[0] if self.position.ndim == 2 else -1
        if self.position.shape != (t, 3) or self.yaw.shape != (t,) or self.pitch.shape != (t,):
            raise ValueError(
                "Trajectory needs position [T, 3], yaw [T], pitch [T]; got "
                f"{list(self.position.shape)}, {list(self.yaw.shape)}, {list(self.pitch.shape)}"
            )
        for name in ("position", "yaw", "pitch"):
            if not torch.isfinite(getattr(self, name)).all():
                raise ValueError(f"trajectory {name} contains NaN or infinite values")

    def __len__(self) -> int:
        return self.position.shape[0]

    def c2w(self, scale: float = 1.0) -> Tensor:
        """Camera-to-world poses ``[T, 4, 4]``, positions multiplied by ``scale``."""
        return pose_from_angles(self.position * scale, self.yaw, self.pitch)

    @classmethod
    def from_c2w(cls, c2w: Tensor) -> Trajectory:
        """Positions and angles of poses ``[T, 4, 4]`` (roll is dropped)."""
        check_c2w(c2w)
        if c2w.ndim != 3:
            raise ValueError(f"c2w must have shape [T, 4, 4], got {list(c2w.shape)}")
        yaw, pitch, _ = angles_from_pose(c2w)
        return cls(c2w[:, :3, 3].clone(), yaw, pitch)

    @classmethod
    def start(cls, position=(0.0, 0.0, 0.0), yaw: float = 0.0, pitch: float = 0.0) -> Trajectory:
        """A one-pose trajectory."""

        def one(x):
            return torch.tensor([x], dtype=torch.float64)

        return cls(torch.tensor([list(position)], dtype=torch.float64), one(yaw), one(pitch))


def check_actions(keyboard: Tensor, mouse: Tensor) -> None:
    """Raise ValueError unless keyboard ``[T, 6]`` and mouse ``[T, 2]`` are finite and aligned."""
    for name, x, dim in (("keyboard", keyboard, KEYBOARD_DIM), ("mouse", mouse, MOUSE_DIM)):
        if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != dim:
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a tensor [T, {dim}], got {shape}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    if len(keyboard) != len(mouse):
        raise ValueError(f"keyboard has {len(keyboard)} frames but mouse has {len(mouse)}")


def _wrap(deg: Tensor) -> Tensor:
    """Angles to [-180, 180)."""
    return torch.remainder(deg + 180.0, 360.0) - 180.0


def _key_axes(keyboard: Tensor) -> tuple[Tensor, Tensor]:
    """(forward, right) in {-1, 0, 1} per frame; opposite keys cancel."""
    w, s, a, d = (keyboard[:, i] > 0.5 for i in range(4))
    forward = (w & ~s).double() - (s & ~w).double()
    right = (d & ~a).double() - (a & ~d).double()
    return forward, right


def _directions(heading_deg: Tensor) -> tuple[Tensor, Tensor]:
    h = torch.deg2rad(heading_deg)
    zero = torch.zeros_like(h)
    forward = torch.stack([h.cos(), h.sin(), zero], -1)
    right = torch.stack([h.sin(), -h.cos(), zero], -1)
    return forward, right


def _thrust(keyboard: Tensor, heading: Tensor, config: KinematicsConfig) -> Tensor:
    """World-frame thrust ``[T, 3]`` of the W/S/A/D keys along per-frame headings (degrees)."""
    forward, right = _key_axes(keyboard)
    fs = torch.full_like(forward, config.forward_speed)
    rs = torch.full_like(right, config.strafe_speed)
    if config.diagonal_speed is not None:
        diagonal = (forward != 0) & (right != 0)
        fs = torch.where(diagonal, config.diagonal_speed, fs)
        rs = torch.where(diagonal, config.diagonal_speed, rs)
    fwd_dir, right_dir = _directions(heading)
    return (forward * fs)[:, None] * fwd_dir + (right * rs)[:, None] * right_dir


def integrate_actions(
    keyboard: Tensor,
    mouse: Tensor,
    config: KinematicsConfig,
    start: Trajectory | None = None,
    velocity: Tensor | None = None,
) -> Trajectory:
    """Poses after each of T actions: a Trajectory of T + 1 poses (the start pose first).

    ``keyboard [T, 6]``, ``mouse [T, 2]``; ``start`` is a one-pose Trajectory (origin, yaw 0
    by default) and ``velocity [3]`` the initial velocity (zero).
    """
    check_actions(keyboard, mouse)
    start = start or Trajectory.start()
    if len(start) != 1:
        raise ValueError("start must hold exactly one pose")
    keyboard, mouse = keyboard.double(), mouse.double()
    m = torch.where(mouse.abs() >= config.mouse_dead_zone, mouse, torch.zeros_like(mouse))
    step = -config.degrees_per_unit * m  # [T, 2] (pitch, yaw) degree deltas
    # Yaw stays unwrapped until the end so that headings average correctly across +-180.
    yaw = start.yaw.double() + torch.cat([step.new_zeros(1), step[:, 1]]).cumsum(0)
    pitch = [float(start.pitch)]
    for delta in step[:, 0].tolist():
        p = pitch[-1] + delta
        if config.pitch_limit is not None:
            p = min(max(p, -config.pitch_limit), config.pitch_limit)
        pitch.append(p)
    heading = 0.5 * (yaw[:-1] + yaw[1:]) if config.heading == "average" else yaw[1:]
    thrust = _thrust(keyboard, heading, config)  # [T, 3]
    # v_t = friction * v_{t-1} + thrust_t, a linear recurrence run on floats for speed.
    v = [0.0, 0.0, 0.0] if velocity is None else [float(x) for x in velocity]
    disp = []
    for tx, ty, tz in thrust.tolist():
        v = [config.friction * v[0] + tx, config.friction * v[1] + ty, config.friction * v[2] + tz]
        disp.append(v)
    disp = torch.tensor(disp, dtype=torch.float64).reshape(-1, 3)
    position = start.position.double()[0] + torch.cat([disp.new_zeros(1, 3), disp]).cumsum(0)
    pitch = torch.tensor(pitch, dtype=torch.float64)
    return Trajectory(position, _wrap(yaw), pitch)


def _hysteresis(value: Tensor, on: float, off: float) -> Tensor:
    """Per-frame booleans: True once value > on, stays True while value > off."""
    pressed = torch.zeros_like(value, dtype=torch.bool)
    state = False
    for t, x in enumerate(value.tolist()):
        state = x > (off if state else on)
        pressed[t] = state
    return pressed


def infer_actions(
    trajectory: Trajectory,
    config: KinematicsConfig,
    velocity: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Physics-based labels for the T - 1 steps of a trajectory of T poses.

    Returns keyboard ``[T-1, 6]`` (0/1) and mouse ``[T-1, 2]``. ``velocity [3]`` is the
    velocity before the first step (zero). Exact on noise-free paths made by
    :func:`integrate_actions` with the same config; under position noise the thresholds
    (a key needs ``press_threshold`` of its speed, keeps it above ``release_threshold``)
    keep labels stable.
    """
    yaw = trajectory.yaw.double()
    dyaw = _wrap(yaw[1:] - yaw[:-1])
    yaw_unwrapped = torch.cat([yaw[:1], yaw[:1] + dyaw.cumsum(0)])
    dpitch = trajectory.pitch.double().diff()
    mouse = -torch.stack([dpitch, dyaw], -1) / config.degrees_per_unit
    mouse = torch.where(mouse.abs() >= config.mouse_dead_zone, mouse, torch.zeros_like(mouse))

    if config.heading == "average":
        heading = 0.5 * (yaw_unwrapped[:-1] + yaw_unwrapped[1:])
    else:
        heading = yaw_unwrapped[1:]
    disp = trajectory.position.double().diff(dim=0)  # [T-1, 3] velocities
    v0 = torch.zeros(1, 3, dtype=torch.float64) if velocity is None else velocity.double()[None]
    thrust = disp - config.friction * torch.cat([v0, disp[:-1]])
    fwd_dir, right_dir = _directions(heading)
    along = (thrust * fwd_dir).sum(-1)
    across = (thrust * right_dir).sum(-1)
    slow = min(config.forward_speed, config.strafe_speed, config.diagonal_speed or float("inf"))
    on, off = config.press_threshold * slow, config.release_threshold * slow
    keyboard = torch.zeros(len(disp), KEYBOARD_DIM, dtype=torch.float64)
    for column, component in enumerate((along, -along, -across, across)):  # W, S, A, D
        keyboard[:, column] = _hysteresis(component, on, off).double()
    return keyboard, mouse


def keyboard_accuracy(predicted: Tensor, target: Tensor) -> float:
    """Fraction of frames whose W, S, A, D state is entirely right (opposite keys cancel)."""
    pf, pr = _key_axes(predicted)
    tf, tr = _key_axes(target)
    return float(((pf == tf) & (pr == tr)).double().mean())


def with_overrides(config: KinematicsConfig, **changes) -> KinematicsConfig:
    """A copy of ``config`` with some fields changed (validated)."""
    return replace(config, **changes)
