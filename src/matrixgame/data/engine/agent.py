"""Agent: a global planner over the map's walkable space and a local reactive policy.

- :class:`NavGrid` is our NavMesh: the level's impassable lines (solid walls, steps over 24
  units, openings under 56) rasterised onto a grid of cells, cells too close to a wall
  removed, and the walkable cells reachable from the start kept. Paths are breadth-first
  searches on it.
- :class:`Explorer` does frontier exploration: it heads for the nearest cell it has not yet
  been near (chosen at random among the closest few, for variety), steers with human-like
  mouse motion (rate-limited, smoothed turns, occasional look-arounds), mostly walks forward
  with some strafing, and recovers when stuck (backs off, turns, gives up on the target).
- :class:`LoopWalker` scripts evaluation trajectories that revisit views: walk out along a
  planned path, turn around, walk the same path back, face the start view again and turn a
  full circle.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from matrixgame.data.engine.game import Line

MAX_STEP = 24.0  # Doom's highest walkable step
PLAYER_HEIGHT = 56.0


@dataclass
class NavGrid:
    """Walkable cells of one level. ``walkable [ny, nx]``; cell (i, j) has its centre at
    ``origin + (j + 0.5, i + 0.5) * cell``."""

    walkable: np.ndarray
    origin: tuple[float, float]
    cell: float
    margin: np.ndarray | None = None  # [ny, nx] cells to the nearest wall cell

    @classmethod
    def build(
        cls,
        lines: list[Line],
        start: tuple[float, float],
        obstacles: list[tuple[float, float, float]] = (),
        cell: float = 16.0,
        clearance: int = 1,
    ) -> NavGrid:
        """Rasterise impassable lines and solid things ``(x, y, radius)``, keep cells
        ``clearance`` cells away from them, and flood-fill from ``start``."""
        walls = [
            ln for ln in lines if ln.blocking or ln.floor_step > MAX_STEP or ln.gap < PLAYER_HEIGHT
        ]
        xs = [v for ln in lines for v in (ln.x1, ln.x2)]
        ys = [v for ln in lines for v in (ln.y1, ln.y2)]
        x0, y0 = min(xs) - cell, min(ys) - cell
        nx = int(math.ceil((max(xs) - x0) / cell)) + 2
        ny = int(math.ceil((max(ys) - y0) / cell)) + 2
        blocked = np.zeros((ny, nx), dtype=bool)
        for ln in walls:
            n = max(2, int(math.hypot(ln.x2 - ln.x1, ln.y2 - ln.y1) / (cell / 4)) + 1)
            t = np.linspace(0.0, 1.0, n)
            j = ((ln.x1 + t * (ln.x2 - ln.x1) - x0) / cell).astype(int)
            i = ((ln.y1 + t * (ln.y2 - ln.y1) - y0) / cell).astype(int)
            blocked[i, j] = True
        for ox, oy, radius in obstacles:
            r = int(math.ceil(radius / cell))
            ci, cj = int((oy - y0) / cell), int((ox - x0) / cell)
            blocked[max(0, ci - r) : ci + r + 1, max(0, cj - r) : cj + r + 1] = True
        near_wall = blocked.copy()
        for _ in range(clearance):  # grow walls by one cell (8-neighbourhood) per round
            grown = near_wall.copy()
            grown[1:] |= near_wall[:-1]
            grown[:-1] |= near_wall[1:]
            grown[:, 1:] |= near_wall[:, :-1]
            grown[:, :-1] |= near_wall[:, 1:]
            near_wall = grown
        free = ~near_wall
        margin, _ = _bfs(np.ones_like(blocked), list(map(tuple, np.argwhere(blocked))))
        grid = cls(np.zeros_like(free), (x0, y0), cell, margin)
        si, sj = grid.cell_of(start)
        if not free[si, sj]:  # the start hugs a wall: search from the nearest free cell
            cand = np.argwhere(free)
            si, sj = cand[np.argmin(((cand - [si, sj]) ** 2).sum(1))]
        grid.walkable = _flood(free, (int(si), int(sj)))
        return grid

    def cell_of(self, xy) -> tuple[int, int]:
        j = int((xy[0] - self.origin[0]) / self.cell)
        i = int((xy[1] - self.origin[1]) / self.cell)
        ny, nx = self.walkable.shape
        return min(max(i, 0), ny - 1), min(max(j, 0), nx - 1)

    def centre(self, ij) -> np.ndarray:
        return np.array(
            [self.origin[0] + (ij[1] + 0.5) * self.cell, self.origin[1] + (ij[0] + 0.5) * self.cell]
        )

    def nearest_walkable(self, xy) -> tuple[int, int]:
        i, j = self.cell_of(xy)
        if self.walkable[i, j]:
            return i, j
        cand = np.argwhere(self.walkable)
        k = np.argmin(((cand - [i, j]) ** 2).sum(1))
        return int(cand[k, 0]), int(cand[k, 1])

    def clear(self, a: np.ndarray, b: np.ndarray, margin: int = 0) -> bool:
        """Whether the straight segment a -> b (map units) stays on walkable cells at least
        ``margin`` cells from any wall."""
        n = int(np.linalg.norm(b - a) / (self.cell / 2)) + 2
        pts = a[None] + np.linspace(0.0, 1.0, n)[:, None] * (b - a)[None]
        j = ((pts[:, 0] - self.origin[0]) / self.cell).astype(int)
        i = ((pts[:, 1] - self.origin[1]) / self.cell).astype(int)
        ny, nx = self.walkable.shape
        if (i < 0).any() or (j < 0).any() or (i >= ny).any() or (j >= nx).any():
            return False
        ok = self.walkable[i, j]
        if margin:
            ok = ok & (self.margin[i, j] >= margin)
        return bool(ok.all())

    def distances(self, source) -> tuple[np.ndarray, np.ndarray]:
        """Breadth-first path lengths (cells, -1 unreachable) and parents from ``source``."""
        return _bfs(self.walkable, source)

    def path(self, parents: np.ndarray, target) -> list[tuple[int, int]]:
        out, cur = [], tuple(target)
        while cur != (-1, -1):
            out.append(cur)
            cur = tuple(parents[cur])
        return out[::-1]


def _flood(free: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    dist, _ = _bfs(free, start)
    return dist >= 0


def _bfs(free: np.ndarray, start) -> tuple[np.ndarray, np.ndarray]:
    """Breadth-first distances (cells, -1 unreachable) and parents over ``free`` cells from
    one start cell ``(i, j)`` or a list of them (4-neighbourhood)."""
    ny, nx = free.shape
    ok = free.ravel().tolist()  # plain lists: far faster than numpy scalars in this loop
    dist = [-1] * (ny * nx)
    parent = [-1] * (ny * nx)
    starts = start if isinstance(start, list) else [tuple(start)]
    queue = deque()
    for i, j in starts:
        dist[int(i) * nx + int(j)] = 0
        queue.append(int(i) * nx + int(j))
    while queue:
        k = queue.popleft()
        d = dist[k] + 1
        col = k % nx
        for n, valid in (
            (k + nx, k + nx < ny * nx),
            (k - nx, k >= nx),
            (k + 1, col + 1 < nx),
            (k - 1, col > 0),
        ):
            if valid and ok[n] and dist[n] < 0:
                dist[n] = d
                parent[n] = k
                queue.append(n)
    dist_a = np.array(dist, dtype=np.int64).reshape(ny, nx)
    par = np.array(parent, dtype=np.int64)
    parents = np.stack([np.where(par >= 0, par // nx, -1), np.where(par >= 0, par % nx, -1)], -1)
    return dist_a, parents.reshape(ny, nx, 2)


def _wrap(deg: float) -> float:
    return (deg + 180.0) % 360.0 - 180.0


@dataclass
class ExplorerConfig:
    max_turn: float = 6.0  # degrees per frame: gentle turning, more walking
    smoothing: float = 0.5  # mouse low-pass: fraction of last frame's turn kept
    lookahead: float = 96.0  # map units ahead on the path to steer at
    walk_cone: float = 30.0  # walk forward only when the aim is this close to ahead (deg)
    reach: float = 48.0  # map units: a waypoint this close counts as reached
    seen_radius: float = 96.0  # map units around the path counted as explored
    choices: int = 5  # pick the target among this many nearest frontier cells
    strafe_prob: float = 0.03  # per frame, start a short strafe
    look_prob: float = 0.004  # per frame, start a look-around
    degrees_per_unit: float = 15.0


class Explorer:
    """Frontier exploration with a local reactive policy. ``act(c2w) -> (keyboard, mouse)``."""

    def __init__(
        self, grid: NavGrid, rng: np.random.Generator, config: ExplorerConfig | None = None
    ):
        self.grid = grid
        self.rng = rng
        self.cfg = config or ExplorerConfig()
        self.seen = np.zeros_like(grid.walkable)
        self.path: list[tuple[int, int]] = []
        self.turn = 0.0
        self.recent: deque = deque(maxlen=8)  # (position, pushed forward) of recent frames
        self.recover = 0  # frames left backing off
        self.strafe = (0, 0)  # (frames left, direction)
        self.look = 0.0  # degrees of look-around left to turn
        self.banned: set[tuple[int, int]] = set()
        self.history: deque = deque(maxlen=150)  # positions, to notice being trapped

    # -- global planner -----------------------------------------------------------------------

    def _mark_seen(self, xy: np.ndarray) -> None:
        r = int(self.cfg.seen_radius / self.grid.cell)
        i, j = self.grid.cell_of(xy)
        self.seen[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1] = True

    def _plan(self, xy: np.ndarray) -> None:
        src = self.grid.nearest_walkable(xy)
        dist, parents = self.grid.distances(src)
        frontier = (dist > 0) & ~self.seen
        for b in self.banned:
            frontier[b] = False
        if not frontier.any():  # everything explored: wander to a random reachable cell
            self.seen[:] = False
            frontier = dist > 4
        cells = np.argwhere(frontier)
        # stable: NumPy's default sort orders ties by whichever SIMD kernel the CPU runs
        # (AVX-512, AVX2, baseline differ), and the same seed recorded other trajectories
        # on other machines
        order = np.argsort(dist[frontier], kind="stable")[: self.cfg.choices]
        target = tuple(cells[self.rng.choice(order)])
        self.path = self.grid.path(parents, target)[1:]

    # -- local policy ---------------------------------------------------------------------------

    def act(self, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy = c2w[:2, 3]
        yaw = math.degrees(math.atan2(c2w[1, 2], c2w[0, 2]))
        self._mark_seen(xy)
        self.history.append(xy.copy())
        keyboard = np.zeros(6)
        if self.recover > 0:  # back off while turning away
            self.recover -= 1
            keyboard[1] = 1.0
            return keyboard, self._mouse(self.cfg.max_turn * self.recover_dir)
        if self._stuck():
            self.recover, self.recover_dir = 5, float(self.rng.choice([-1.0, 1.0]))
            if self.path:
                self.banned.add(self.path[-1])
            self.path = []
            self.recent.clear()
            return self.act(c2w)
        if self.look != 0.0:  # a look-around: turn in place
            step = math.copysign(min(abs(self.look), self.cfg.max_turn), self.look)
            self.look -= step
            return keyboard, self._mouse(step)
        if self.rng.random() < self.cfg.look_prob:
            self.look = float(self.rng.choice([-1.0, 1.0]) * self.rng.choice([90.0, 180.0, 360.0]))
        if not self._advance(xy):
            self._plan(xy)
            if not self.path:
                return keyboard, self._mouse(self.cfg.max_turn)
        keyboard, mouse = self._steer(xy, yaw)
        if keyboard[0] and self.strafe[0] > 0 and self._side_clear(xy, yaw, self.strafe[1]):
            keyboard[2 if self.strafe[1] < 0 else 3] = 1.0
            self.strafe = (self.strafe[0] - 1, self.strafe[1])
        elif self.rng.random() < self.cfg.strafe_prob:
            self.strafe = (int(self.rng.integers(3, 10)), int(self.rng.choice([-1, 1])))
        else:
            self.strafe = (0, 0)
        return keyboard, mouse

    def _side_clear(self, xy: np.ndarray, yaw: float, side: int) -> bool:
        """Room to strafe: no wall within 64 units to that side (1: right, -1: left)."""
        h = math.radians(yaw)
        right = np.array([math.sin(h), -math.cos(h)])
        return self.grid.clear(xy, xy + side * 64.0 * right, margin=3)

    def _advance(self, xy: np.ndarray) -> bool:
        """Drop waypoints reached (within ``reach``) or passed (the next one is nearer);
        False when the path is used up."""

        def dist(k):
            return float(np.linalg.norm(self.grid.centre(self.path[k]) - xy))

        while self.path and (
            dist(0) < self.cfg.reach or (len(self.path) > 1 and dist(1) < dist(0))
        ):
            self.path.pop(0)
        return bool(self.path)

    def _steer(self, xy: np.ndarray, yaw: float) -> tuple[np.ndarray, np.ndarray]:
        """Turn towards a waypoint a few cells ahead; walk when roughly facing it."""
        # string pulling: the farthest waypoint within reach that is in straight, clear sight
        ahead = min(int(self.cfg.lookahead / self.grid.cell), len(self.path) - 1)
        aim = self.grid.centre(self.path[0])
        for k in range(ahead, 0, -1):
            cand = self.grid.centre(self.path[k])
            if self.grid.clear(xy, cand, margin=3):  # keep a cell more from walls
                aim = cand
                break
        error = _wrap(math.degrees(math.atan2(aim[1] - xy[1], aim[0] - xy[0])) - yaw)
        keyboard = np.zeros(6)
        keyboard[0] = float(abs(error) < self.cfg.walk_cone)
        self.recent.append((xy.copy(), bool(keyboard[0])))
        return keyboard, self._mouse(max(-self.cfg.max_turn, min(self.cfg.max_turn, 0.5 * error)))

    def _mouse(self, turn_left_deg: float) -> np.ndarray:
        s = self.cfg.smoothing
        self.turn = s * self.turn + (1 - s) * turn_left_deg
        if abs(self.turn) < 0.5:
            self.turn = 0.0
        return np.array([0.0, -self.turn / self.cfg.degrees_per_unit])

    @property
    def trapped(self) -> bool:
        """Confined to a small area for the last 150 frames: somewhere the planner cannot
        lead out of (a pit it fell into). The recorder ends the clip there."""
        if len(self.history) < self.history.maxlen:
            return False
        pts = np.array(self.history)
        return float(np.linalg.norm(pts.max(0) - pts.min(0))) < 128.0

    def _stuck(self) -> bool:
        """Pushing forward for a while without getting anywhere."""
        if len(self.recent) < self.recent.maxlen or not all(p for _, p in self.recent):
            return False
        return float(np.linalg.norm(self.recent[-1][0] - self.recent[0][0])) < 8.0


class LoopWalker(Explorer):
    """Out-and-back: walk ``out_cells`` of path away, turn around, walk back, face the start
    view, then turn a full circle. ``done`` once finished."""

    def __init__(
        self,
        grid: NavGrid,
        rng: np.random.Generator,
        out_cells: int = 40,
        config: ExplorerConfig | None = None,
    ):
        super().__init__(grid, rng, config)
        self.out_cells = out_cells
        self.phase = "start"
        self.home: tuple[np.ndarray, float] | None = None
        self.route: list[tuple[int, int]] = []

    @property
    def done(self) -> bool:
        return self.phase == "done"

    def act(self, c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy = c2w[:2, 3]
        yaw = math.degrees(math.atan2(c2w[1, 2], c2w[0, 2]))
        keyboard = np.zeros(6)
        if self.phase == "start":
            self.home = (xy.copy(), yaw)
            src = self.grid.nearest_walkable(xy)
            dist, parents = self.grid.distances(src)
            far = np.argwhere(dist >= min(self.out_cells, int(dist.max())))
            target = tuple(far[self.rng.integers(len(far))])
            self.route = self.grid.path(parents, target)[: self.out_cells + 1]
            self.path, self.phase = list(self.route[1:]), "out"
        if self.phase in ("out", "back"):
            if self._advance(xy):
                return self._steer(xy, yaw)
            if self.phase == "out":
                self.path, self.phase = list(self.route[::-1][1:]), "back"
                return self.act(c2w)
            self.phase = "face"
        if self.phase == "face":
            error = _wrap(self.home[1] - yaw)
            if abs(error) > 1.0:
                return keyboard, self._mouse(max(-self.cfg.max_turn, min(self.cfg.max_turn, error)))
            self.phase, self.look = "spin", 360.0
        if self.phase == "spin":
            if self.look > 0:
                step = min(self.look, self.cfg.max_turn)
                self.look -= step
                return keyboard, self._mouse(step)
            self.phase = "done"
        return keyboard, self._mouse(0.0)
