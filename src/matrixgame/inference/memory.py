"""The memory pool of a streaming world: every latent generated so far with its pose and its
view volume, precomputed once when it is added, so retrieval is one batched overlap call on
the pool's device (the report's GPU retrieval; its ablation without it drops 40 -> 6.6 FPS).

Retrieval scores all candidates at once (:func:`overlap_sampled`) and takes the top k, the
same selection the training windows make (:func:`matrixgame.data.windows.retrieve_memory`);
optional de-duplication skips a candidate that overlaps an already chosen one by more than
``dedup`` (near-identical views waste memory slots). Cap policy: beyond ``cap`` latents the
oldest are dropped, except the first (the scene's anchor, the report's sink); a dropped
latent can no longer be recalled.
"""

from __future__ import annotations

import torch

from matrixgame.geometry.frustum import Frusta, ViewVolume, overlap_sampled, topk_overlap

Tensor = torch.Tensor


class MemoryPool:
    def __init__(self, view: ViewVolume, cap: int | None = None, device=None) -> None:
        if cap is not None and cap < 2:
            raise ValueError(f"the memory cap must be >= 2 latents, got {cap}")
        self.view, self.cap = view, cap
        self.device = torch.device(device or "cpu")
        self.positions = torch.zeros(0, dtype=torch.long, device=self.device)  # [N]
        self.latents: Tensor | None = None  # [z, N, h, w]
        self.c2w = torch.zeros(0, 4, 4, dtype=torch.float64, device=self.device)
        f64 = {"dtype": torch.float64, "device": self.device}
        self.frusta = Frusta(torch.zeros(0, 6, 4, **f64), torch.zeros(0, 8, 3, **f64))

    def __len__(self) -> int:
        return len(self.positions)

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
        pos = torch.arange(first_position, first_position + n, device=self.device)
        latents = latents.to(self.device)
        self.latents = latents if self.latents is None else torch.cat([self.latents, latents], 1)
        self.positions = torch.cat([self.positions, pos])
        self.c2w = torch.cat([self.c2w, c2w])
        self.frusta = Frusta(torch.cat([self.frusta.planes, new.planes]),
                             torch.cat([self.frusta.corners, new.corners]))  # fmt: skip
        self._evict()

    def _evict(self) -> None:
        if self.cap is None or len(self) <= self.cap:
            return
        latest = torch.arange(len(self) - self.cap + 1, len(self))
        keep = torch.cat([torch.zeros(1, dtype=torch.long), latest]).to(self.device)
        self.positions, self.c2w = self.positions[keep], self.c2w[keep]
        self.latents = self.latents[:, keep]
        self.frusta = self.frusta[keep]

    def candidates(self, before: int) -> Tensor:
        """Pool rows of positions 1 .. before - 1 (memory never takes the first latent, the
        past window or later)."""
        return ((self.positions >= 1) & (self.positions < before)).nonzero()[:, 0]

    def retrieve(self, query: Tensor, before: int, k: int, dedup: float | None = None) -> Tensor:
        """Sequence positions (sorted) of the ``k`` latents before ``before`` whose view
        volumes overlap the query pose ``[4, 4]``'s most; fewer when fewer exist."""
        rows = self.candidates(before)
        k = min(k, len(rows))
        if k <= 0:
            return torch.zeros(0, dtype=torch.long)
        query = query.to(self.device, torch.float64)
        if dedup is None:
            idx, _ = topk_overlap(query, self.frusta[rows], self.view, k)
        else:
            idx = self._deduplicated(query, rows, k, dedup)
        return self.positions[rows[idx]].sort().values.cpu()

    def _deduplicated(self, query: Tensor, rows: Tensor, k: int, dedup: float) -> Tensor:
        """Greedy top-k: best first (ties to the recent), skipping candidates whose view
        overlaps a chosen one by more than ``dedup``."""
        score = overlap_sampled(query, self.frusta[rows], self.view)
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

    def latent(self, positions: Tensor) -> Tensor:
        """Latents ``[z, len(positions), h, w]`` at sequence positions still in the pool."""
        rows = torch.searchsorted(self.positions, positions.to(self.device))
        if (rows >= len(self)).any() or (self.positions[rows.clamp(max=len(self) - 1)]
                                         != positions.to(self.device)).any():  # fmt: skip
            raise ValueError(f"positions {positions.tolist()} are not all in the pool")
        return self.latents[:, rows]
