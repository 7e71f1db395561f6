"""The memory pool of a streaming world: every latent generated so far with its pose and its
view volume, precomputed once when it is added, so retrieval is one batched overlap call on
the pool's device (the report's GPU retrieval; its ablation without it drops 40 -> 6.6 FPS).

Retrieval scores all candidates at once (:func:`overlap_sampled`) and takes the top k, the
same selection the training windows make (:func:`matrixgame.data.windows.retrieve_memory`),
or, as an option, the release's scheme: one latent per reference frame of the segment
(:meth:`MemoryPool.retrieve_by_reference`);
optional de-duplication skips a candidate that overlaps an already chosen one by more than
``dedup`` (near-identical views waste memory slots). Cap policy: beyond ``cap`` latents the
oldest are dropped, except the first (the scene's anchor, the report's sink), an eighth of
the cap at a time (so the pool holds 7/8 cap .. cap); a dropped latent can no longer be
recalled. The pool's buffers grow by doubling: a step costs the same at any pool size.
``compiled``: the overlap counted in one fused loop (``torch.compile``; see
:func:`overlap_sampled`), the same selections, several times faster on large pools.
"""

from __future__ import annotations

import torch

from matrixgame.geometry.cameras import pose_from_angles
from matrixgame.geometry.frustum import Frusta, ViewVolume, overlap_sampled, topk_overlap

Tensor = torch.Tensor


class MemoryPool:
    """Latents ``[z, N, h, w]`` with their sequence ``positions [N]``, poses ``c2w [N, 4, 4]``
    and ``frusta``, in buffers that grow by doubling, so adding a latent costs the same at
    any pool size (no copy of the whole pool per step)."""

    def __init__(self, view: ViewVolume, cap: int | None = None, device=None,
                 compiled: bool = False) -> None:  # fmt: skip
        if cap is not None and cap < 2:
            raise ValueError(f"the memory cap must be >= 2 latents, got {cap}")
        self.view, self.cap, self.compiled = view, cap, compiled
        self.device = torch.device(device or "cpu")
        self.n = 0
        self._buffers: dict[str, Tensor] = {}  # name -> [capacity, ...], rows 0..n-1 in use

    def __len__(self) -> int:
        return self.n

    def _view(self, name: str, shape: tuple, dtype) -> Tensor:
        if name not in self._buffers:
            return torch.zeros(0, *shape, dtype=dtype, device=self.device)
        return self._buffers[name][: self.n]

    @property
    def positions(self) -> Tensor:  # [N]
        return self._view("positions", (), torch.long)

    @property
    def c2w(self) -> Tensor:  # [N, 4, 4] float64
        return self._view("c2w", (4, 4), torch.float64)

    @property
    def frusta(self) -> Frusta:
        return Frusta(self._view("planes", (6, 4), torch.float64),
                      self._view("corners", (8, 3), torch.float64))  # fmt: skip

    @property
    def latents(self) -> Tensor | None:  # [z, N, h, w]
        return self._buffers["latents"][: self.n].movedim(0, 1) if self.n else None

    def add(self, latents: Tensor, c2w: Tensor, first_position: int) -> None:
        """Append latents ``[z, n, h, w]`` at sequence positions ``first_position ..`` with
        the poses of their last frames ``c2w [n, 4, 4]``."""
        n = latents.shape[1]
        if c2w.shape != (n, 4, 4):
            raise ValueError(f"{n} latents need poses [{n}, 4, 4], got {list(c2w.shape)}")
        if len(self) and first_position != int(self.positions[-1]) + 1:
            raise ValueError(f"position {first_position} does not follow {int(self.positions[-1])}")
        c2w = c2w.to(self.device, torch.float64)
        new = Frusta.from_poses(c2w, self.view)
        rows = {
            "positions": torch.arange(first_position, first_position + n, device=self.device),
            "latents": latents.to(self.device).movedim(1, 0),  # stored [N, z, h, w]
            "c2w": c2w, "planes": new.planes, "corners": new.corners,
        }  # fmt: skip
        for name, value in rows.items():
            self._append(name, value)
        self.n += n
        self._evict()

    def _append(self, name: str, rows: Tensor) -> None:
        buffer = self._buffers.get(name)
        need = self.n + len(rows)
        if buffer is None or len(buffer) < need:
            grown = torch.empty(max(need, 2 * (0 if buffer is None else len(buffer)), 16),
                                *rows.shape[1:], dtype=rows.dtype, device=self.device)  # fmt: skip
            if buffer is not None:
                grown[: self.n] = buffer[: self.n]
            self._buffers[name] = buffer = grown
        buffer[self.n : need] = rows

    def _evict(self) -> None:
        """Beyond the cap, keep the first latent and the latest ones: down to ``cap - cap //
        8`` at once, so the compaction (a copy of the pool) happens once per cap / 8 steps."""
        if self.cap is None or self.n <= self.cap:
            return
        keep = self.cap - self.cap // 8
        for buffer in self._buffers.values():
            buffer[1:keep] = buffer[self.n - keep + 1 : self.n].clone()
        self.n = keep

    def candidates(self, before: int) -> Tensor:
        """Pool rows of positions 1 .. before - 1 (memory never takes the first latent, the
        past window or later): a run of rows, the pool being in position order."""
        bounds = torch.tensor([1, before], device=self.device)
        first, end = torch.searchsorted(self.positions, bounds).tolist()
        return torch.arange(first, max(first, end), device=self.device)

    def overlap(self, query: Tensor, positions: Tensor) -> Tensor:
        """``[n]`` view-volume overlap of the query pose ``[4, 4]`` with the pool's latents at
        sequence ``positions [n]`` (each must be in the pool)."""
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.device)
        rows = torch.searchsorted(self.positions, positions).clamp(max=max(len(self) - 1, 0))
        if not len(self) or not torch.equal(self.positions[rows], positions):
            raise ValueError(f"positions {positions.tolist()} are not all in the pool")
        query = query.to(self.device, torch.float64)
        return overlap_sampled(query, self.frusta[rows], self.view, compiled=self.compiled)

    def retrieve(self, query: Tensor, before: int, k: int, dedup: float | None = None) -> Tensor:
        """Sequence positions (sorted) of the ``k`` latents before ``before`` whose view
        volumes overlap the query pose ``[4, 4]``'s most; fewer when fewer exist."""
        rows = self.candidates(before)  # a run of rows: the pool is in position order
        k = min(k, len(rows))
        if k <= 0:
            return torch.zeros(0, dtype=torch.long)
        query = query.to(self.device, torch.float64)
        if dedup is None:
            first = int(rows[0])
            frusta = self.frusta[first : first + len(rows)]  # views, not copies
            idx, _ = topk_overlap(query, frusta, self.view, k, compiled=self.compiled)
        else:
            idx = self._deduplicated(query, rows, k, dedup)
        return self.positions[rows[idx]].sort().values.cpu()

    def retrieve_by_reference(self, references: Tensor, before: int,
                              samples: Tensor | None = None) -> Tensor:  # fmt: skip
        """The release's scheme (``select_memory_reference``): for each reference pose
        ``[R, 4, 4]`` (frames of the segment being generated), the latent before ``before``
        its view overlaps most (the earliest of equal ones; duplicates allowed), scored in one
        batched call. Sequence positions ``[R]`` in reference order; none when no candidate."""
        rows = self.candidates(before)
        if len(rows) == 0:
            return torch.zeros(0, dtype=torch.long)
        refs = references.to(self.device, torch.float64)
        score = overlap_sampled(refs, self.frusta[rows], self.view, samples,
                                compiled=self.compiled)  # [R, N]  # fmt: skip
        return self.positions[rows[score.argmax(1)]].cpu()

    def _deduplicated(self, query: Tensor, rows: Tensor, k: int, dedup: float) -> Tensor:
        """Greedy top-k: best first (ties to the recent), skipping candidates whose view
        overlaps a chosen one by more than ``dedup``."""
        score = overlap_sampled(query, self.frusta[rows], self.view, compiled=self.compiled)
        order = (len(score) - 1 - score.flip(0).argsort(descending=True, stable=True)).tolist()
        chosen: list[int] = []
        for i in order:
            if len(chosen) == k or score[i] <= 0:
                break
            if chosen:
                overlap = overlap_sampled(self.c2w[rows[i]], self.frusta[rows[chosen]], self.view)
                if float(overlap.max()) > dedup:
                    continue
            chosen.append(i)
        chosen += [i for i in order if i not in chosen][: k - len(chosen)]  # always k, as trained
        return torch.tensor(chosen, dtype=torch.long, device=self.device)

    def _rows(self, positions: Tensor) -> Tensor:
        positions = positions.to(self.device)
        rows = torch.searchsorted(self.positions, positions)
        if (rows >= len(self)).any() or (self.positions[rows.clamp(max=len(self) - 1)]
                                         != positions).any():  # fmt: skip
            raise ValueError(f"positions {positions.tolist()} are not all in the pool")
        return rows

    def latent(self, positions: Tensor) -> Tensor:
        """Latents ``[z, len(positions), h, w]`` at sequence positions still in the pool."""
        return self._buffers["latents"][self._rows(positions)].movedim(0, 1)

    def pose(self, positions: Tensor) -> Tensor:
        """Poses ``[len(positions), 4, 4]`` (float64) of latents still in the pool."""
        return self.c2w[self._rows(positions)]


def warm_compiled_retrieval(view: ViewVolume, device=None) -> str | None:
    """Compile the fused overlap of a pool with ``compiled`` retrieval ahead of a session that
    uses it (seconds, once per process: one graph serves every pool size), so its first
    retrieval does not stall a step. Returns None when ready, else why it cannot compile here
    (no C++ compiler for inductor, say): use eager retrieval then, the same selections."""
    pool = MemoryPool(view, device=device, compiled=True)
    c2w = pose_from_angles(torch.zeros(4, 3, dtype=torch.float64), torch.arange(4.0) * 30.0)
    pool.add(torch.zeros(1, 4, 1, 1), c2w, 0)
    try:
        pool.retrieve(c2w[0], 4, 2)
    except Exception as err:  # inductor's failures are many kinds: any of them means eager
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
    return None
