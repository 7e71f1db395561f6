"""Game process: ViZDoom on the Freedoom maps, headless, with the exact camera of every frame.

The report's UE5 and AAA games are replaced by Doom: ViZDoom's wheel ships Freedoom's 68
levels (``E1M1``..``E4M9`` in freedoom1, ``MAP01``..``MAP32`` in freedoom2). The wrapper has
the same ``reset()`` / ``step(action)`` interface as the world model, and each observation
carries the pose it was rendered from:

- pose: c2w from the game's camera position (map units) and angle (degrees counter-clockwise
  from +x, our yaw); pitch stays level because Doom's software renderer shears the image
  for pitch instead of rotating the camera, which no pinhole pose describes;
- intrinsics: fx = (W / 2) / tan(fov / 2) with the game's horizontal field of view (90
  degrees at 4:3), fy = 1.2 fx (Doom's tall pixels), principal point at the image centre;
- actions: W/S/A/D map to Doom's move buttons (walking by default), the mouse yaw to a
  per-tic turn of ``degrees_per_unit * m / frame_skip`` degrees, so
  :func:`~matrixgame.geometry.kinematics.doom_kinematics` predicts the motion (walls aside).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from matrixgame.geometry.cameras import intrinsics_from_fov
from matrixgame.geometry.kinematics import KEYBOARD_DIM, MOUSE_DIM, doom_kinematics

FREEDOOM1_MAPS = tuple(f"E{e}M{m}" for e in range(1, 5) for m in range(1, 10))
FREEDOOM2_MAPS = tuple(f"MAP{i:02d}" for i in range(1, 33))
ALL_MAPS = FREEDOOM1_MAPS + FREEDOOM2_MAPS
WARMUP_TICS = 12  # Doom ignores a player's input for the first tics of a level
DOOM_PIXEL_ASPECT = 1.2  # 320x200 shown at 4:3: the world is drawn 1.2x taller than wide
ANGLE_UNIT = 360 / 65536  # Doom turns by whole 1/65536ths of a circle per tic (floored)


def map_wad(name: str) -> str:
    """The Freedoom WAD (``freedoom1.wad`` / ``freedoom2.wad``) that holds a map."""
    if name in FREEDOOM1_MAPS:
        return "freedoom1.wad"
    if name in FREEDOOM2_MAPS:
        return "freedoom2.wad"
    raise ValueError(f"unknown map {name!r}: use E1M1..E4M9 or MAP01..MAP32")


@dataclass(frozen=True)
class GameConfig:
    """One game process. Resolutions must be 4:3 ones ViZDoom offers (160x120, 320x240, ...)."""

    map: str = "MAP01"
    width: int = 160
    height: int = 120
    frame_skip: int = 2  # game tics per recorded frame (35 tics/s: 17.5 frames/s)
    run: bool = False  # walking keeps the motion per frame small
    depth: bool = True
    monsters: bool = False  # a static world: only the player moves
    seed: int = 0
    viewpoint: str = "first"  # "first" | "third" (ZDoom's chase camera behind the player)
    labels: bool = False  # report objects' screen boxes (Observation.labels)

    def __post_init__(self) -> None:
        map_wad(self.map)
        if self.width * 3 != self.height * 4:
            raise ValueError(f"only 4:3 resolutions are supported, got {self.width}x{self.height}")
        if self.frame_skip < 1:
            raise ValueError(f"frame_skip must be positive, got {self.frame_skip}")
        if self.viewpoint not in ("first", "third"):
            raise ValueError(f"viewpoint must be 'first' or 'third', got {self.viewpoint!r}")


@dataclass
class Observation:
    """One rendered frame and the camera it was rendered from."""

    frame: np.ndarray  # [H, W, 3] uint8
    depth: np.ndarray | None  # [H, W] uint8, the game's depth buffer (about 7.4 units/level)
    c2w: np.ndarray  # [4, 4] float64, map units
    tic: int
    eye: np.ndarray | None = None  # [4, 4] the player's own eye (differs in third person)
    labels: list[tuple[str, int, int, int, int]] = field(default_factory=list)  # name, x, y, w, h


@dataclass(frozen=True)
class Line:
    """A map line (linedef) in map units; ``blocking`` lines cannot be crossed."""

    x1: float
    y1: float
    x2: float
    y2: float
    blocking: bool
    floor_step: float  # height difference of the floors on its two sides (0 if one-sided)
    gap: float  # opening between the higher floor and the lower ceiling
    two_sided: bool = True
    floor_top: float = 0.0  # the higher of its two floors
    ceiling_bottom: float = 0.0  # the lower of its two ceilings


# Solid decorations (Doom's thing radius, map units): the player cannot walk through them.
SOLID_THINGS = {
    "ExplosiveBarrel": 10,
    "BurningBarrel": 16,
    "Column": 16,
    "TechPillar": 16,
    "TechLamp": 16,
    "TechLamp2": 16,
    "Stalagtite": 16,
    "BigTree": 32,
    "TorchTree": 16,
    "RedTorch": 16,
    "BlueTorch": 16,
    "GreenTorch": 16,
    "ShortRedTorch": 16,
    "ShortBlueTorch": 16,
    "ShortGreenTorch": 16,
    "LiveStick": 16,
    "HeadOnAStick": 16,
    "HeadsOnAStick": 16,
    "HeadCandles": 16,
    "DeadStick": 16,
    "TallGreenColumn": 16,
    "ShortGreenColumn": 16,
    "TallRedColumn": 16,
    "ShortRedColumn": 16,
    "SkullColumn": 16,
    "HeartColumn": 16,
    "EvilEye": 16,
    "FloatingSkull": 16,
    "Candelabra": 16,
    "HangNoGuts": 16,
    "HangBNoBrain": 16,
    "HangTLookingDown": 16,
    "HangTSkull": 16,
    "HangTLookingUp": 16,
    "HangTNoBrain": 16,
    "Meat2": 16,
    "Meat3": 16,
    "Meat4": 16,
    "Meat5": 16,
    "BloodyTwitch": 16,
}


@dataclass(frozen=True)
class Level:
    """A level's static geometry: its lines and solid decorations ``(x, y, radius)``."""

    lines: list[Line]
    obstacles: list[tuple[float, float, float]]


def read_level(map_name: str) -> Level:
    """Read a level's geometry once from a short-lived game: lines with what blocks a walking
    player (doors count as open when their sector is) and solid decorations."""
    import vizdoom as vzd

    game = vzd.DoomGame()
    game.set_doom_game_path(os.path.join(os.path.dirname(vzd.__file__), map_wad(map_name)))
    game.set_doom_map(map_name)
    game.set_screen_resolution(vzd.ScreenResolution.RES_160X120)
    game.set_window_visible(False)
    game.set_sectors_info_enabled(True)
    game.set_objects_info_enabled(True)
    game.add_game_args("-nomonsters")
    game.init()
    try:
        state = game.get_state()
        sectors, objects = state.sectors, state.objects
    finally:
        game.close()
    # A two-sided line appears in both its sectors: combine their floors and ceilings.
    sides: dict[tuple, list] = {}
    for sec in sectors:
        for ln in sec.lines:
            a, b = (ln.x1, ln.y1), (ln.x2, ln.y2)
            key = (*a, *b) if a <= b else (*b, *a)
            sides.setdefault(key, []).append((sec.floor_height, sec.ceiling_height, ln.is_blocking))
    lines = []
    for (x1, y1, x2, y2), entries in sides.items():
        floors = [e[0] for e in entries]
        ceilings = [e[1] for e in entries]
        blocking = any(e[2] for e in entries) or len(entries) < 2
        step = max(floors) - min(floors)
        gap = min(ceilings) - max(floors)
        lines.append(
            Line(x1, y1, x2, y2, blocking, step, gap, len(entries) > 1, max(floors), min(ceilings))
        )
    obstacles = [
        (o.position_x, o.position_y, float(SOLID_THINGS[o.name]))
        for o in objects
        if o.name in SOLID_THINGS
    ]
    return Level(lines, obstacles)


class DoomGame:
    """ViZDoom behind ``reset()`` / ``step(keyboard, mouse)``; frames carry exact poses."""

    def __init__(self, config: GameConfig, level: Level | None = None) -> None:
        """``level``: the map's geometry when the caller has read it already (third person
        needs it for the chase camera; otherwise it is read here)."""
        import vizdoom as vzd  # optional dependency: only the data engine needs it

        self.config = config
        self.kinematics = doom_kinematics(config.frame_skip, config.run)
        self._vzd = vzd
        game = vzd.DoomGame()
        game.set_doom_game_path(os.path.join(os.path.dirname(vzd.__file__), map_wad(config.map)))
        game.set_doom_map(config.map)
        res = getattr(vzd.ScreenResolution, f"RES_{config.width}X{config.height}", None)
        if res is None:
            raise ValueError(f"ViZDoom has no {config.width}x{config.height} resolution")
        game.set_screen_resolution(res)
        game.set_screen_format(vzd.ScreenFormat.RGB24)
        game.set_depth_buffer_enabled(config.depth)
        game.set_labels_buffer_enabled(config.labels)
        for setting in ("hud", "crosshair", "weapon", "messages", "screen_flashes"):
            getattr(game, f"set_render_{setting}")(False)
        game.set_window_visible(False)
        game.set_mode(vzd.Mode.PLAYER)
        game.set_episode_timeout(0)
        game.add_game_args("+sv_cheats 1" + ("" if config.monsters else " -nomonsters"))
        variables = ["CAMERA_POSITION_X", "CAMERA_POSITION_Y", "CAMERA_POSITION_Z"]
        variables += ["CAMERA_ANGLE", "CAMERA_PITCH", "CAMERA_FOV", "POSITION_Z"]
        for name in variables:
            game.add_available_game_variable(getattr(vzd.GameVariable, name))
        buttons = ["MOVE_FORWARD", "MOVE_BACKWARD", "MOVE_LEFT", "MOVE_RIGHT"]
        buttons += ["TURN_LEFT_RIGHT_DELTA", "SPEED"]
        for name in buttons:
            game.add_available_button(getattr(vzd.Button, name))
        game.set_seed(config.seed)
        game.init()
        self._game = game
        self._fov = None
        self._chase = None
        if config.viewpoint == "third":
            self._chase = ChaseCamera((level or read_level(config.map)).lines)

    # -- episode ------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> Observation:
        """Start the level anew (god mode, input accepted) and return the first frame."""
        if seed is not None:
            self._game.set_seed(seed)
        self._game.new_episode()
        self._game.send_game_command("god")
        if self._chase is not None:
            self._game.send_game_command("chase")
        self._game.make_action([0.0] * 6, WARMUP_TICS)
        return self.observe()

    def step(self, keyboard, mouse) -> Observation:
        """Hold one action (``keyboard [6]``, ``mouse [2]``) for ``frame_skip`` tics."""
        keyboard = np.asarray(keyboard, dtype=np.float64).reshape(-1)
        mouse = np.asarray(mouse, dtype=np.float64).reshape(-1)
        if keyboard.shape != (KEYBOARD_DIM,) or mouse.shape != (MOUSE_DIM,):
            raise ValueError(f"need keyboard [{KEYBOARD_DIM}] and mouse [{MOUSE_DIM}]")
        if not (np.isfinite(keyboard).all() and np.isfinite(mouse).all()):
            raise ValueError("actions must be finite")
        if mouse[0] != 0:
            raise ValueError("Doom recordings keep the pitch level: mouse pitch must be 0")
        if self._game.is_episode_finished():
            raise RuntimeError("the episode has finished (exit reached); call reset()")
        keyboard, mouse = self.applied_action(keyboard, mouse)
        turn = self.kinematics.degrees_per_unit * mouse[1] / self.config.frame_skip
        # a quarter unit over the whole number, so Doom's floor lands on it
        turn = (round(turn / ANGLE_UNIT) + 0.25) * ANGLE_UNIT
        w, s, a, d = keyboard[:4]
        speed = float(self.config.run)
        self._game.make_action([w, s, a, d, turn, speed], self.config.frame_skip)
        return self.observe()

    def applied_action(self, keyboard, mouse) -> tuple[np.ndarray, np.ndarray]:
        """The action the game really performs: keys as 0/1, the mouse yaw through the dead
        zone and rounded to Doom's angle resolution (1/65536 of a turn per tic)."""
        kin = self.kinematics
        keys = (np.asarray(keyboard, dtype=np.float64) > 0.5).astype(np.float64)
        yaw = float(mouse[1]) if abs(mouse[1]) >= kin.mouse_dead_zone else 0.0
        per_tic = kin.degrees_per_unit * yaw / self.config.frame_skip
        per_tic = round(per_tic / ANGLE_UNIT) * ANGLE_UNIT
        applied = per_tic * self.config.frame_skip / kin.degrees_per_unit
        if abs(applied) < kin.mouse_dead_zone:
            applied = 0.0
        return keys, np.array([0.0, applied])

    @property
    def finished(self) -> bool:
        return self._game.is_episode_finished()

    def observe(self) -> Observation:
        state = self._game.get_state()
        if state is None:
            raise RuntimeError("no game state: the episode has finished; call reset()")
        x, y, z, angle, pitch, fov, feet = state.game_variables
        if pitch != 0:
            raise RuntimeError(f"camera pitch {pitch} is not level")
        self._fov = float(fov)
        eye = level_pose(x, y, z, angle)
        c2w = eye
        if self._chase is not None:  # the game reports the player's eye, not the chase camera
            c2w = level_pose(*self._chase.position(x, y, feet, angle), angle)
        depth = state.depth_buffer if self.config.depth else None
        labels = [(lb.object_name, lb.x, lb.y, lb.width, lb.height) for lb in state.labels or []]
        return Observation(state.screen_buffer, depth, c2w, int(state.tic), eye, labels)

    @property
    def intrinsics(self) -> torch.Tensor:
        """``[4] = (fx, fy, cx, cy)`` in pixels. fx from the game's horizontal field of view;
        fy = 1.2 fx, because Doom draws its world for 320x200 pixels shown at 4:3, stretched
        1.2 times vertically (checked against wall bottoms at known distances in the tests)."""
        fov = self._fov if self._fov is not None else 90.0
        K = intrinsics_from_fov(self.config.width, self.config.height, fov)
        K[1] = DOOM_PIXEL_ASPECT * K[0]
        return K

    def close(self) -> None:
        self._game.close()

    def __enter__(self) -> DoomGame:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ChaseCamera:
    """Where ZDoom's chase camera (``P_AimCamera``) puts the view: ``chase_dist`` = 90 units
    behind the player at ``height + chase_height`` = 56 - 8 units above its feet, pulled in
    to 5 units short of the first wall the ray meets (to the wall itself when that is within
    10 units). The view keeps the player's angle."""

    DIST, HEIGHT = 90.0, 48.0

    def __init__(self, lines: list[Line]) -> None:
        self.seg = np.array([[ln.x1, ln.y1, ln.x2, ln.y2] for ln in lines])
        self.two_sided = np.array([ln.two_sided for ln in lines])
        self.floor_top = np.array([ln.floor_top for ln in lines])
        self.ceiling_bottom = np.array([ln.ceiling_bottom for ln in lines])

    def cast(self, x: float, y: float, z: float, angle: float, reach: float) -> float:
        """Distance along the horizontal ray from (x, y) at height z and ``angle`` degrees to
        the first wall it meets (one-sided lines, or openings that do not span z);
        ``inf`` when none is within ``reach``."""
        d = np.array([math.cos(math.radians(angle)), math.sin(math.radians(angle))])
        # ray p + t d against segments a + u (b - a): solve for t in (0, reach], u in [0, 1]
        a, b = self.seg[:, :2], self.seg[:, 2:]
        e = b - a
        denom = -d[0] * e[:, 1] + d[1] * e[:, 0]
        rel = a - np.array([x, y])
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (-rel[:, 0] * e[:, 1] + rel[:, 1] * e[:, 0]) / denom
            u = (d[0] * rel[:, 1] - d[1] * rel[:, 0]) / denom
        solid = ~self.two_sided | (z <= self.floor_top) | (z >= self.ceiling_bottom)
        hit = solid & (np.abs(denom) > 1e-12) & (t > 0) & (t <= reach) & (u >= 0) & (u <= 1)
        return float(t[hit].min()) if hit.any() else math.inf

    def position(self, x: float, y: float, feet: float, angle: float) -> tuple[float, float, float]:
        """The chase camera's position for a player at (x, y, feet) facing ``angle``."""
        z = feet + self.HEIGHT
        hit = self.cast(x, y, z, angle + 180.0, self.DIST)
        dist = self.DIST if math.isinf(hit) else (hit - 5.0 if hit > 10.0 else hit)
        back = math.radians(angle + 180.0)
        return x + dist * math.cos(back), y + dist * math.sin(back), z


def level_pose(x: float, y: float, z: float, yaw_deg: float) -> np.ndarray:
    """c2w ``[4, 4]`` of a level camera: ``pose_from_angles`` with pitch = roll = 0, in numpy
    (called once per recorded frame)."""
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    # columns: right, down, forward (OpenCV camera axes), position
    return np.array([[s, 0.0, c, x], [-c, 0.0, s, y], [0.0, -1.0, 0.0, z], [0.0, 0.0, 0.0, 1.0]])
