"""Frustum overlap: how much of camera A's view volume camera B also sees.

overlap(A, B) = vol(F_A ∩ F_B) / vol(F_A), where F is the pinhole view volume between the
near and far planes. Two ways to compute it:

- :func:`overlap_exact`: clip the convex polyhedron F_A by the six half-spaces of F_B and
  take volumes (float64, one pair at a time). The reference.
- :func:`overlap_sampled`: fixed points spread uniformly by volume inside F_A, tested against
  the half-spaces of thousands of candidate cameras in one batched matrix product (CPU or
  CUDA). This is the report's "sampling-based frustum overlap approximation" that makes
  memory retrieval fast enough for real time.

Memory retrieval picks the past frames whose frustums overlap the query most
(:func:`topk_overlap`), or one frame per reference camera as the released code does
(:func:`select_memory_reference`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from matrixgame.geometry.cameras import check_c2w, check_image_size, intrinsics_from_fov

Tensor = torch.Tensor


@dataclass(frozen=True)
class ViewVolume:
    """A pinhole camera's view volume: intrinsics (fx, fy, cx, cy) in pixels, image size, depths."""

    K: tuple[float, float, float, float]
    width: int
    height: int
    near: float
    far: float

    def __post_init__(self) -> None:
        check_image_size(self.height, self.width)
        K = tuple(float(k) for k in self.K)
        if len(K) != 4 or not all(math.isfinite(k) for k in K) or K[0] <= 0 or K[1] <= 0:
            raise ValueError(f"K must be 4 finite numbers (fx, fy, cx, cy), fx, fy > 0: {K}")
        object.__setattr__(self, "K", K)
        if not (math.isfinite(self.near) and math.isfinite(self.far)):
            raise ValueError(f"near and far must be finite, got {self.near}, {self.far}")
        if not 0 <= self.near < self.far:
            raise ValueError(f"need 0 <= near < far, got near={self.near}, far={self.far}")

    @classmethod
    def from_fov(
        cls,
        width: int,
        height: int,
        fov_x_deg: float,
        near: float,
        far: float,
        fov_y_deg: float | None = None,
    ) -> ViewVolume:
        K = intrinsics_from_fov(width, height, fov_x_deg, fov_y_deg)
        return cls(tuple(K.tolist()), width, height, near, far)

    @classmethod
    def released(cls) -> ViewVolume:
        """The released code's retrieval camera: 1280x720, 90 degrees on both axes, 0.1..30 m."""
        return cls.from_fov(1280, 720, 90.0, near=0.1, far=30.0, fov_y_deg=90.0)

    def planes(self) -> np.ndarray:
        """Inward half-spaces ``[6, 4]`` (unit normal n, offset d; inside where n.p + d >= 0)
        in the camera frame: left, right, top, bottom, near, far."""
        fx, fy, cx, cy = self.K
        w, h = self.width, self.height
        planes = np.array(
            [
                [fx, 0.0, cx, 0.0],  # u >= 0
                [-fx, 0.0, w - cx, 0.0],  # u <= W
                [0.0, fy, cy, 0.0],  # v >= 0
                [0.0, -fy, h - cy, 0.0],  # v <= H
                [0.0, 0.0, 1.0, -self.near],
                [0.0, 0.0, -1.0, self.far],
            ]
        )
        return planes / np.linalg.norm(planes[:, :3], axis=1, keepdims=True)

    def corners(self) -> np.ndarray:
        """Camera-frame corners ``[8, 3]``: near plane (4, image corners in order), then far."""
        fx, fy, cx, cy = self.K
        uv = [(0, 0), (self.width, 0), (self.width, self.height), (0, self.height)]
        rays = np.array([[(u - cx) / fx, (v - cy) / fy, 1.0] for u, v in uv])
        return np.concatenate([rays * self.near, rays * self.far])

    def volume(self) -> float:
        """Analytic volume: area W H / (fx fy) at depth 1, growing as z^2."""
        fx, fy, _, _ = self.K
        return self.width * self.height / (fx * fy) * (self.far**3 - self.near**3) / 3


# ---------------------------------------------------------------------------------------------
# Exact reference: convex polyhedron clipping.


def _frustum_faces(corners: np.ndarray) -> list[np.ndarray]:
    n, f = corners[:4], corners[4:]
    sides = [np.array([n[i], n[(i + 1) % 4], f[(i + 1) % 4], f[i]]) for i in range(4)]
    return [n, f[::-1], *sides]


def _clip(faces: list[np.ndarray], plane: np.ndarray, eps: float) -> list[np.ndarray]:
    """Keep the part of a convex polyhedron (list of convex faces) where n.p + d >= 0."""
    normal, offset = plane[:3], plane[3]
    kept, face_on_plane = [], False
    for face in faces:
        dist = face @ normal + offset
        if (dist >= -eps).all():
            kept.append(face)
            face_on_plane |= bool((np.abs(dist) <= eps).all())
            continue
        out = []
        for i in range(len(face)):
            p, q, dp, dq = face[i], face[(i + 1) % len(face)], dist[i], dist[(i + 1) % len(face)]
            if dp >= -eps:
                out.append(p)
            if (dp > eps and dq < -eps) or (dp < -eps and dq > eps):
                out.append(p + (q - p) * (dp / (dp - dq)))
        if len(out) >= 3:
            kept.append(np.array(out))
    if not kept or face_on_plane:
        return kept
    # Close the cut with a cap face: the kept vertices lying on the plane, ordered by angle.
    pts = np.concatenate(kept)
    pts = pts[np.abs(pts @ normal + offset) <= eps]
    if len(pts) >= 3:
        pts = np.unique(np.round(pts / eps) * eps, axis=0)
    if len(pts) >= 3:
        centre = pts.mean(0)
        a = np.cross(normal, [1.0, 0.0, 0.0] if abs(normal[0]) < 0.9 else [0.0, 1.0, 0.0])
        a /= np.linalg.norm(a)
        b = np.cross(normal, a)
        rel = pts - centre
        kept.append(pts[np.argsort(np.arctan2(rel @ b, rel @ a))])
    return kept


def _volume(faces: list[np.ndarray]) -> float:
    if not faces:
        return 0.0
    centre = np.concatenate(faces).mean(0)
    vol = 0.0
    for face in faces:
        rel = face - centre
        for i in range(1, len(face) - 1):
            vol += abs(np.linalg.det(np.stack([rel[0], rel[i], rel[i + 1]]))) / 6.0
    return vol


def _world_planes(c2w: np.ndarray, view: ViewVolume) -> np.ndarray:
    """Camera-frame half-spaces moved to the world: n_w = R n_c, d_w = d_c - n_w . t."""
    planes = view.planes()
    normals = planes[:, :3] @ c2w[:3, :3].T
    return np.concatenate([normals, (planes[:, 3] - normals @ c2w[:3, 3])[:, None]], 1)


def overlap_exact(
    c2w_a: Tensor | np.ndarray,
    c2w_b: Tensor | np.ndarray,
    view: ViewVolume,
    view_b: ViewVolume | None = None,
) -> float:
    """Exact fraction of A's view volume (``c2w_a [4, 4]``) inside B's (``c2w_b [4, 4]``)."""
    a, b = (torch.as_tensor(x, dtype=torch.float64) for x in (c2w_a, c2w_b))
    for name, m in (("c2w_a", a), ("c2w_b", b)):
        check_c2w(m, name)
        if m.shape != (4, 4):
            raise ValueError(f"{name} must be one pose [4, 4], got {list(m.shape)}")
    a, b = a.numpy(), b.numpy()
    corners = view.corners() @ a[:3, :3].T + a[:3, 3]
    faces = _frustum_faces(corners)
    scale = max(view.far, float(np.abs(corners).max()))
    for plane in _world_planes(b, view_b or view):
        faces = _clip(faces, plane, eps=1e-10 * scale)
        if not faces:
            return 0.0
    return min(1.0, _volume(faces) / view.volume())


# ---------------------------------------------------------------------------------------------
# Fast estimator: fixed samples inside A, batched half-space tests against many B.


def frustum_samples(
    view: ViewVolume, count: int = 128, pattern: str = "volume", seed: int = 0
) -> Tensor:
    """Camera-frame points ``[S, 3]`` inside the view volume (float64).

    ``"volume"``: a scrambled Sobol sequence mapped so points are uniform by volume (depth
    density grows as z^2), so the fraction inside another frustum estimates the volume ratio.
    ``"grid"``: the released code's grid, ``n`` evenly spaced depths from near to far times
    an ``n x n`` image grid (S = n^3, so ``count`` is rounded to a cube); denser near the
    camera, so it weighs near space more than the volume does.
    """
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    fx, fy, cx, cy = view.K
    if pattern == "volume":
        u = torch.quasirandom.SobolEngine(3, scramble=True, seed=seed).draw(
            count, dtype=torch.float64
        )
        z = (view.near**3 + u[:, 2] * (view.far**3 - view.near**3)) ** (1 / 3)
        s, t = u[:, 0], u[:, 1]
    elif pattern == "grid":
        n = max(2, round(count ** (1 / 3)))
        lin = torch.linspace(0, 1, n, dtype=torch.float64)
        s, t, d = (g.reshape(-1) for g in torch.meshgrid(lin, lin, lin, indexing="ij"))
        z = view.near + d * (view.far - view.near)
    else:
        raise ValueError(f"pattern must be 'volume' or 'grid', got {pattern!r}")
    x = (s * view.width - cx) / fx * z
    y = (t * view.height - cy) / fy * z
    return torch.stack([x, y, z], -1)


@dataclass(frozen=True)
class Frusta:
    """World-frame view volumes of N cameras: half-spaces ``planes [N, 6, 4]`` (inside where
    n.p + d >= 0) and ``corners [N, 8, 3]``. A memory pool builds these once per stored frame;
    a query against them is then one matrix product."""

    planes: Tensor
    corners: Tensor

    @classmethod
    def from_poses(cls, c2w: Tensor, view: ViewVolume) -> Frusta:
        """Frusta of cameras ``c2w [N, 4, 4]`` sharing one view volume."""
        check_c2w(c2w)
        if c2w.ndim != 3:
            raise ValueError(f"c2w must have shape [N, 4, 4], got {list(c2w.shape)}")
        rot, trans = c2w[:, :3, :3], c2w[:, :3, 3]
        planes = torch.as_tensor(view.planes(), dtype=c2w.dtype, device=c2w.device)
        normals = planes[:, :3] @ rot.transpose(-1, -2)  # [N, 6, 3]
        offsets = planes[:, 3] - (normals @ trans[..., None]).squeeze(-1)  # [N, 6]
        corners = torch.as_tensor(view.corners(), dtype=c2w.dtype, device=c2w.device)
        corners = corners @ rot.transpose(-1, -2) + trans[:, None]  # [N, 8, 3]
        return cls(torch.cat([normals, offsets[..., None]], -1), corners)

    def __len__(self) -> int:
        return self.planes.shape[0]

    def __getitem__(self, index) -> Frusta:
        return Frusta(self.planes[index], self.corners[index])

    def to(self, *args, **kwargs) -> Frusta:
        return Frusta(self.planes.to(*args, **kwargs), self.corners.to(*args, **kwargs))


@functools.lru_cache(maxsize=32)
def _default_samples(view: ViewVolume) -> Tensor:
    """:func:`frustum_samples`'s default points of a view volume, made once per volume."""
    return frustum_samples(view)


def _separated(a: Frusta, b: Frusta) -> Tensor:
    """``[Qa, Nb]`` True where a face plane of one frustum has all corners of the other
    outside: proof of an empty intersection (the converse need not hold)."""

    def outside(planes: Tensor, corners: Tensor) -> Tensor:  # planes [P, 6, 4], corners [C, 8, 3]
        flat = planes.reshape(-1, 4)
        dist = torch.addmm(flat[:, 3:], flat[:, :3], corners.reshape(-1, 3).T)
        return (dist.view(len(planes), 6, len(corners), 8).amax(-1) < 0).any(1)  # [P, C]

    return outside(b.planes, a.corners).T | outside(a.planes, b.corners)


def moved_planes(planes: Tensor, origin: Tensor) -> Tensor:
    """Float32 half-spaces ``[C, 6, 4]`` of ``planes [C, 6, 4]`` with the offsets moved to
    ``origin [3]`` (d' = d + n.o in the planes' precision), for tests of points relative to
    ``origin``: a map's absolute coordinates would cost float32 its precision, distances
    within view of the origin keep it."""
    offsets = (planes[..., 3] + planes[..., 0] * origin[0] + planes[..., 1] * origin[1]
               + planes[..., 2] * origin[2])  # fmt: skip
    return torch.cat([planes[..., :3], offsets[..., None]], -1).float()


def sample_hits(planes: Tensor, points: Tensor, queries: int) -> Tensor:
    """``[C, Q]``: how many of each query's sample points lie inside each candidate's view
    volume. ``planes [C, 6, 4]`` (float32, inside where n.p + d >= 0 for all six);
    ``points [3, Q*S]`` (float32, query-major, in the planes' frame: see
    :func:`moved_planes`). Every plane at once (eager: few large operations; the caller
    chunks the candidates so the ``[c, 6, Q*S]`` distances stay in cache)."""
    normals = planes[..., :3, None]  # [C, 6, 3, 1]
    dist = (planes[..., 3, None] + normals[:, :, 0] * points[0] + normals[:, :, 1] * points[1]
            + normals[:, :, 2] * points[2])  # fmt: skip
    return (dist.amin(1) >= 0).view(len(planes), queries, -1).sum(-1)


def fused_hits(planes: Tensor, origin: Tensor, points: Tensor,
               queries: int) -> tuple[Tensor, Tensor]:  # fmt: skip
    """:func:`sample_hits` of :func:`moved_planes` written plane by plane: one chain of
    elementwise tests and a single sum, which :func:`torch.compile` makes one loop that
    writes no distances out; the counts summed as float32 (exact up to 2^24), whose vector
    sum is cheaper than int64's. About 2x faster than compiling :func:`sample_hits`, whose
    minimum over planes becomes a second loop (BENCHMARKS.md; eagerly 2.4x slower). The
    same distances in the same order: the same counts. Returns (hits, the moved planes): as
    an output they are computed once, where the compiled loop would recompute each
    candidate's coefficients for every 8 samples."""
    moved = moved_planes(planes, origin)
    inside = None
    for i in range(moved.shape[1]):
        dist = (moved[:, i, 3, None] + moved[:, i, 0, None] * points[0]
                + moved[:, i, 1, None] * points[1] + moved[:, i, 2, None] * points[2])  # fmt: skip
        inside = dist >= 0 if inside is None else inside & (dist >= 0)
    return inside.float().view(len(planes), queries, -1).sum(-1), moved


@functools.cache
def _compiled_hits():
    """:func:`fused_hits` through ``torch.compile`` (shapes dynamic: one graph for any pool
    size), made on first use."""
    return torch.compile(fused_hits, dynamic=True)


def overlap_sampled(
    c2w_query: Tensor,
    candidates: Tensor | Frusta,
    view: ViewVolume,
    samples: Tensor | None = None,
    chunk: int | None = None,
    compiled: bool = False,
) -> Tensor:
    """Estimated overlap ``[Q, N]`` (or ``[N]`` for one query ``[4, 4]``) of each query camera's
    view volume with each candidate's.

    ``candidates``: poses ``[N, 4, 4]`` or their precomputed :class:`Frusta`.
    ``samples [S, 3]``: camera-frame points from :func:`frustum_samples` (default 128 by
    volume). Runs on the device and dtype of the query. Eager, pairs whose frustums a face
    plane separates score 0 without sampling, and the others are counted in blocks of
    ``chunk`` candidates (default: about 16k distances per plane, which stay in a CPU's
    cache). ``compiled``: every pair counted in one fused loop (:func:`sample_hits` through
    ``torch.compile``; the first call compiles, seconds); the same scores.
    """
    check_c2w(c2w_query, "c2w_query")
    single = c2w_query.ndim == 2
    query = c2w_query[None] if single else c2w_query
    if not isinstance(candidates, Frusta):
        candidates = Frusta.from_poses(candidates.to(query), view)
    candidates = candidates.to(query)
    if samples is None:
        samples = _default_samples(view)
    samples = samples.to(query)
    # the half-space tests in float32, in coordinates centred on the queries: a map's
    # absolute coordinates would cost float32 its precision, distances within view of the
    # query keep it
    origin = query[:, :3, 3].mean(0)
    points = samples @ query[:, :3, :3].transpose(-1, -2) + (query[:, None, :3, 3] - origin)
    points = points.reshape(-1, 3).T.float().contiguous()  # [3, Q*S]
    if compiled:
        # detached: a view of the pool's buffer would be guarded on its base's size (a
        # recompile whenever the pool grows); one graph per number of queries
        hits, _ = _compiled_hits()(candidates.planes.detach(), origin, points, len(query))
        score = hits.T.to(query.dtype) / len(samples)
        return score[0] if single else score
    score = query.new_zeros(len(query), len(candidates))
    live = (~_separated(Frusta.from_poses(query, view), candidates)).any(0).nonzero()[:, 0]
    if len(live):
        planes = moved_planes(candidates.planes[live], origin)
        chunk = chunk or max(1, 2**14 // points.shape[1])
        hits = torch.cat([sample_hits(planes[i : i + chunk], points, len(query))
                          for i in range(0, len(planes), chunk)])  # fmt: skip
        score[:, live] = hits.T.to(query.dtype) / len(samples)
    return score[0] if single else score


def topk_overlap(
    c2w_query: Tensor,
    candidates: Tensor | Frusta,
    view: ViewVolume,
    k: int,
    samples: Tensor | None = None,
    compiled: bool = False,
) -> tuple[Tensor, Tensor]:
    """The ``k`` candidates (poses ``[N, 4, 4]`` or Frusta) overlapping one query ``[4, 4]`` most.

    Returns (indices ``[k]``, overlaps ``[k]``), best first; ties go to the later candidate
    (the more recent memory). ``compiled``: as :func:`overlap_sampled`.
    """
    if not 1 <= k <= len(candidates):
        raise ValueError(f"k must lie in [1, {len(candidates)}], got {k}")
    score = overlap_sampled(c2w_query, candidates, view, samples, compiled=compiled)
    flipped = score.flip(0)  # topk keeps the first of equal values: prefer recent ones
    values, idx = flipped.topk(k)
    return len(score) - 1 - idx, values


def select_memory_reference(
    c2w: Tensor,
    reference_indices: list[int],
    candidate_indices: list[int] | Tensor,
    view: ViewVolume | None = None,
    samples: Tensor | None = None,
) -> tuple[list[int], list[float]]:
    """The released code's memory scheme: for each reference frame, the candidate frame whose
    view volume the reference's overlaps most (duplicates allowed).

    ``c2w [T, 4, 4]`` holds every frame's pose. With the defaults (``ViewVolume.released()``
    and its 10x10x10 grid) this reproduces the released ``select_memory_idx_fov``.
    Returns (chosen frame indices, their overlaps), one per reference.
    """
    check_c2w(c2w)
    view = view or ViewVolume.released()
    if samples is None:
        samples = frustum_samples(view, 1000, "grid")
    cands = torch.as_tensor(candidate_indices, dtype=torch.long, device=c2w.device)
    if cands.numel() == 0:
        return [], []
    refs = torch.as_tensor(reference_indices, dtype=torch.long, device=c2w.device)
    for name, idx in (("reference", refs), ("candidate", cands)):
        if idx.numel() and (idx.min() < 0 or idx.max() >= len(c2w)):
            raise ValueError(f"{name} indices must lie in [0, {len(c2w)})")
    score = overlap_sampled(c2w[refs], c2w[cands], view, samples)  # [R, C]
    best = score.argmax(1)  # first maximum: the earliest frame, as the release
    return cands[best].tolist(), score.gather(1, best[:, None])[:, 0].tolist()
