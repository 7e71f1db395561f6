"""Kinematics between keyboard/mouse actions and camera poses, in both directions.

Action space (the released Matrix-Game-3.0 layout), one row per frame; action t moves the
camera from pose t to pose t+1:

- keyboard ``[T, 6]`` multi-hot: W, S, A, D, then two spare slots (kept zero);
- mouse ``[T, 2]``: (pitch, yaw) deltas in mouse units; positive pitch looks down and
  positive yaw turns right (image directions, as the release), ``degrees_per_unit`` each.

Forward model: a point mass with momentum, stepped ``ticks_per_frame`` times per frame with
the frame's action held (Doom's game tics under frame skip; one step for the release):

    yaw_i = yaw + (i / k) * dyaw                     dyaw = -s * m_yaw (dead zone on m)
    m_i = friction * m_{i-1} + R(heading_i) [forward_speed * (W - S), strafe_speed * (D - A)]
    p_i = p_{i-1} + m_i                               (i = 1..k; diagonal_speed if set)

``heading_i`` is yaw_i (Doom turns, then thrusts) or the midpoint of the step's rotation
(the release averages old and new yaw). The inverse, "physics-based" annotation for data
with poses but no actions, is exact for this model: per frame the displacement is linear in
the unknown local thrust a, ``D = F m_0 + M a`` with a 2x2 M from the tic headings, so a is
solved for, thresholded with hysteresis into keys, and the momentum m_0 carried forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from matrixgame.geometry.cameras import angles_from_pose, check_c2w, pose_from_angles

Tensor = torch.Tensor

KEYS = ("W", "S", "A", "D")
KEYBOARD_DIM = 6
MOUSE_DIM = 2


@dataclass(frozen=True)
class KinematicsConfig:
    """Speeds in world units per tic (a frame has ``ticks_per_frame`` tics), angles in degrees
    per frame."""

    forward_speed: float
    strafe_speed: float
    diagonal_speed: float | None  # per-axis speed when moving diagonally; None: no slow-down
    degrees_per_unit: float
    mouse_dead_zone: float
    friction: float = 0.0  # fraction of the last step's velocity kept
    ticks_per_frame: int = 1  # simulation steps per frame, the action held
    heading: str = "average"  # "average" | "new"
    pitch_limit: float | None = None  # clamp |pitch| (degrees)
    metres_per_unit: float = 1.0  # world units to metres, for view volumes given in metres
    press_threshold: float = 0.5  # key pressed when thrust component > this * its speed
    release_threshold: float = 0.3  # ... and held while above this (hysteresis)
    hold_threshold: float = 0.35  # thrust this far from every key pattern: keep the keys

    def __post_init__(self) -> None:
        if self.heading not in ("average", "new"):
            raise ValueError(f"heading must be 'average' or 'new', got {self.heading!r}")
        if isinstance(self.ticks_per_frame, bool) or not (
            isinstance(self.ticks_per_frame, int) and self.ticks_per_frame >= 1
        ):
            raise ValueError(f"ticks_per_frame must be a positive integer: {self.ticks_per_frame}")
        if not 0 <= self.friction < 1:
            raise ValueError(f"friction must lie in [0, 1), got {self.friction}")
        speeds = [self.forward_speed, self.strafe_speed, self.degrees_per_unit]
        if self.diagonal_speed is not None:
            speeds.append(self.diagonal_speed)
        if min(speeds) <= 0 or self.metres_per_unit <= 0:
            raise ValueError("speeds, degrees_per_unit and metres_per_unit must be positive")
        if not 0 < self.release_threshold <= self.press_threshold < 1:
            raise ValueError("need 0 < release_threshold <= press_threshold < 1")


def doom_kinematics(frame_skip: int = 2, run: bool = False) -> KinematicsConfig:
    """Doom's player physics per recorded frame of ``frame_skip`` game tics.

    Vanilla Doom's thrust per tic (forward 25 or, running, 50 * 2048 / 65536; sideways 24 or
    40 * 2048 / 65536) and friction 0xE800 / 0x10000, measured to the bit in ViZDoom
    (tests/test_doom_engine.py). Doom turns before it thrusts; our recordings keep the
    pitch level (its renderer shears the image rather than rotating the camera).
    """
    scale = 2048 / 65536
    return KinematicsConfig(
        forward_speed=(50 if run else 25) * scale,
        strafe_speed=(40 if run else 24) * scale,
        diagonal_speed=None,
        degrees_per_unit=15.0,
        mouse_dead_zone=0.02,
        friction=0xE800 / 0x10000,
        ticks_per_frame=frame_skip,
        heading="new",
        pitch_limit=45.0,
        metres_per_unit=1 / 32,  # the player is 56 units tall
    )


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
    # ViZDoom with Freedoom as our recorder runs it: walking, 2 game tics per frame.
    "doom": doom_kinematics(),
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


def _speeds(forward: float, right: float, config: KinematicsConfig) -> tuple[float, float]:
    """Local thrust (forward, right) per tic for key axes in {-1, 0, 1}."""
    fs, rs = config.forward_speed, config.strafe_speed
    if config.diagonal_speed is not None and forward and right:
        fs = rs = config.diagonal_speed
    return forward * fs, right * rs


def _nearest_unit(x: float) -> float:
    """The nearest of -1, 0, 1."""
    return float(max(-1, min(1, round(x))))


def _tic_headings(yaw: float, dyaw: float, config: KinematicsConfig) -> list[float]:
    """Headings (radians) of the frame's tics, from its start yaw and rotation (degrees)."""
    k = config.ticks_per_frame
    offset = 0.0 if config.heading == "new" else 0.5
    return [math.radians(yaw + dyaw * (i - offset) / k) for i in range(1, k + 1)]


def _frame_response(headings: list[float], friction: float) -> tuple[list[list[float]], float]:
    """For one frame: M (2x2, local thrust -> displacement) and F (momentum -> displacement).

    With m_i = f m_{i-1} + R_i a over k tics, the frame displacement is
    sum_i m_i = F m_0 + M a, F = sum_i f^i, M = sum_j (sum_{i>=j} f^(i-j)) R_j.
    """
    k = len(headings)
    M = [[0.0, 0.0], [0.0, 0.0]]
    for j, h in enumerate(headings, start=1):
        c = sum(friction ** (i - j) for i in range(j, k + 1))
        cos, sin = math.cos(h), math.sin(h)
        # R = [forward | right] = [[cos, sin], [sin, -cos]]
        M[0][0] += c * cos
        M[0][1] += c * sin
        M[1][0] += c * sin
        M[1][1] -= c * cos
    return M, sum(friction**i for i in range(1, k + 1))


def _momentum_after(
    disp: tuple[float, float],
    headings: list[float],
    a: tuple[float, float],
    M: list[list[float]],
    F: float,
    friction: float,
) -> list[float]:
    """The last tic's displacement at a frame's end, from the frame's observed displacement
    and its (decided) local thrust a: m_0 = (D - M a) / F, then
    m_k = f^k m_0 + sum_j f^(k-j) R_j a. Reading m_0 off the observation, rather than
    carrying the model's own estimate, keeps errors (collisions with walls) from piling up.
    """
    k = len(headings)
    mx = my = 0.0
    if friction > 0:
        ox = disp[0] - (M[0][0] * a[0] + M[0][1] * a[1])
        oy = disp[1] - (M[1][0] * a[0] + M[1][1] * a[1])
        mx, my = friction**k * ox / F, friction**k * oy / F
    for j, h in enumerate(headings, start=1):
        w = friction ** (k - j)
        cos, sin = math.cos(h), math.sin(h)
        mx += w * (cos * a[0] + sin * a[1])
        my += w * (sin * a[0] - cos * a[1])
    return [mx, my]


def integrate_actions(
    keyboard: Tensor,
    mouse: Tensor,
    config: KinematicsConfig,
    start: Trajectory | None = None,
    velocity: Tensor | None = None,
    return_velocity: bool = False,
) -> Trajectory | tuple[Trajectory, Tensor]:
    """Poses after each of T actions: a Trajectory of T + 1 poses (the start pose first).

    ``keyboard [T, 6]``, ``mouse [T, 2]``; ``start`` is a one-pose Trajectory (origin, yaw 0
    by default) and ``velocity [2 or 3]`` the last tic's displacement before the first
    action (zero). Height stays at the start's. With ``return_velocity`` also the last tic's
    displacement ``[2]`` after the last action, to continue from (a streaming session).
    """
    check_actions(keyboard, mouse)
    start = start or Trajectory.start()
    if len(start) != 1:
        raise ValueError("start must hold exactly one pose")
    forward, right = _key_axes(keyboard)
    m = torch.where(mouse.abs() >= config.mouse_dead_zone, mouse, torch.zeros_like(mouse))
    step = (-config.degrees_per_unit * m.double()).tolist()  # (pitch, yaw) degrees per frame
    x, y, z = start.position[0].tolist()
    yaw, pitch = float(start.yaw[0]), float(start.pitch[0])
    mom = [0.0, 0.0] if velocity is None else [float(v) for v in velocity[:2]]
    f = config.friction
    out = [(x, y, yaw, pitch)]
    for (dpitch, dyaw), fwd, rgt in zip(step, forward.tolist(), right.tolist(), strict=True):
        a = _speeds(fwd, rgt, config)
        for h in _tic_headings(yaw, dyaw, config):
            cos, sin = math.cos(h), math.sin(h)
            mom = [f * mom[0] + cos * a[0] + sin * a[1], f * mom[1] + sin * a[0] - cos * a[1]]
            x, y = x + mom[0], y + mom[1]
        yaw += dyaw  # unwrapped, so headings interpolate across +-180
        pitch += dpitch
        if config.pitch_limit is not None:
            pitch = min(max(pitch, -config.pitch_limit), config.pitch_limit)
        out.append((x, y, yaw, pitch))
    t = torch.tensor(out, dtype=torch.float64)
    position = torch.stack([t[:, 0], t[:, 1], torch.full_like(t[:, 0], z)], -1)
    trajectory = Trajectory(position, _wrap(t[:, 2]), t[:, 3])
    if return_velocity:
        return trajectory, torch.tensor(mom, dtype=torch.float64)
    return trajectory


def infer_actions(
    trajectory: Trajectory,
    config: KinematicsConfig,
    velocity: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Physics-based labels for the T - 1 steps of a trajectory of T poses.

    Returns keyboard ``[T-1, 6]`` (0/1) and mouse ``[T-1, 2]``. ``velocity`` is the last
    tic's displacement before the first step (zero). Exact on noise-free paths made by
    :func:`integrate_actions` with the same config; under noise the thresholds (a key needs
    ``press_threshold`` of its speed, keeps it above ``release_threshold``) keep labels
    stable. Height changes (stairs) are ignored.
    """
    yaw = trajectory.yaw.double()
    dyaw = _wrap(yaw.diff())
    dpitch = trajectory.pitch.double().diff()
    mouse = -torch.stack([dpitch, dyaw], -1) / config.degrees_per_unit
    mouse = torch.where(mouse.abs() >= config.mouse_dead_zone, mouse, torch.zeros_like(mouse))

    disp = trajectory.position.double().diff(dim=0)[:, :2].tolist()
    mom = [0.0, 0.0] if velocity is None else [float(v) for v in velocity[:2]]
    slow = min(config.forward_speed, config.strafe_speed, config.diagonal_speed or math.inf)
    on, off = config.press_threshold * slow, config.release_threshold * slow
    keyboard = torch.zeros(len(disp), KEYBOARD_DIM, dtype=torch.float64)
    pressed = [False] * 4  # W, S, A, D, with hysteresis
    yaw0 = float(yaw[0])
    for t, ((dx, dy), turn) in enumerate(zip(disp, dyaw.tolist(), strict=True)):
        headings = _tic_headings(yaw0, turn, config)
        M, F = _frame_response(headings, config.friction)
        rx, ry = dx - F * mom[0], dy - F * mom[1]
        det = M[0][0] * M[1][1] - M[0][1] * M[1][0]
        along = (M[1][1] * rx - M[0][1] * ry) / det
        across = (M[0][0] * ry - M[1][0] * rx) / det
        # Motion no key pattern explains (a wall stopped it, or the player is in the air,
        # where Doom has neither friction nor thrust): keep the keys, coast.
        quantised = _speeds(
            _nearest_unit(along / config.forward_speed),
            _nearest_unit(across / config.strafe_speed),
            config,
        )
        unexplained = math.hypot(along - quantised[0], across - quantised[1])
        if t > 0 and unexplained > config.hold_threshold * slow:
            keyboard[t, :4] = keyboard[t - 1, :4]
            k = config.ticks_per_frame
            mom = [dx / k, dy / k]
            yaw0 += turn
            continue
        for key, value in enumerate((along, -along, -across, across)):
            pressed[key] = value > (off if pressed[key] else on)
        keyboard[t, :4] = torch.tensor(pressed, dtype=torch.float64)
        # decision feedback: carry the momentum of the thrust the decided keys produce
        forward = float(pressed[0]) - float(pressed[1])
        right = float(pressed[3]) - float(pressed[2])
        a = _speeds(forward, right, config)
        mom = _momentum_after((dx, dy), headings, a, M, F, config.friction)
        yaw0 += turn
    return keyboard, mouse


def keyboard_accuracy(predicted: Tensor, target: Tensor) -> float:
    """Fraction of frames whose W, S, A, D state is entirely right (opposite keys cancel)."""
    pf, pr = _key_axes(predicted)
    tf, tr = _key_axes(target)
    return float(((pf == tf) & (pr == tr)).double().mean())
