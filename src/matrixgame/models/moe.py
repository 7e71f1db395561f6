"""Viewpoint mixture of experts (the report's 28B model): Wan2.2-style timestep routing,
with the high-noise stage split by viewpoint.

    t >= boundary: first-person or third-person high-noise expert (by each sample's label)
    t <  boundary: one shared low-noise expert

The high-noise experts learn layout and motion from action-accurate game data of their own
viewpoint; the shared low-noise expert refines detail and can learn from any video. Each
expert is a :class:`~matrixgame.models.dit.MatrixGameDiT` of the same code.
"""

from __future__ import annotations

import torch
from torch import nn

from matrixgame.models.dit import DiTConfig, MatrixGameDiT

Tensor = torch.Tensor
VIEWPOINTS = ("first", "third")


class ViewpointMoE(nn.Module):
    """Experts ``high_first``, ``high_third`` and ``low``; ``boundary`` in timestep units
    (0..1000, Wan2.2 uses 0.875 of the schedule for its high/low split)."""

    def __init__(self, config: DiTConfig, boundary: float = 875.0) -> None:
        super().__init__()
        self.boundary = boundary
        self.high_first = MatrixGameDiT(config)
        self.high_third = MatrixGameDiT(config)
        self.low = MatrixGameDiT(config)

    def expert(self, noise_level: float, viewpoint: str) -> MatrixGameDiT:
        """The expert for one sample at one noise level (timestep of its current latents)."""
        if viewpoint not in VIEWPOINTS:
            raise ValueError(f"viewpoint must be one of {VIEWPOINTS}, got {viewpoint!r}")
        if noise_level < self.boundary:
            return self.low
        return self.high_first if viewpoint == "first" else self.high_third

    def forward(self, x: Tensor, t: Tensor, *args, viewpoint: list[str] | str, **kwargs) -> Tensor:
        """Like :meth:`MatrixGameDiT.forward`, with ``viewpoint`` per sample (or one for all).
        A sample's noise level is the largest timestep among its tokens (its current
        latents); samples that share an expert run together."""
        b = x.shape[0]
        views = [viewpoint] * b if isinstance(viewpoint, str) else list(viewpoint)
        if len(views) != b:
            raise ValueError(f"need one viewpoint per sample ({b}), got {len(views)}")
        t = torch.as_tensor(t, device=x.device).float()
        level = t.reshape(b, -1).amax(1) if t.ndim else t.expand(b)
        groups: dict[int, list[int]] = {}
        experts = {}
        for i in range(b):
            e = self.expert(float(level[i]), views[i])
            groups.setdefault(id(e), []).append(i)
            experts[id(e)] = e
        out = None
        for key, idx in groups.items():
            sel = torch.tensor(idx, device=x.device)
            part = experts[key](
                x[sel],
                _pick(t, sel, b),
                *(_pick(a, sel, b) for a in args),
                **{k: _pick(v, sel, b) for k, v in kwargs.items()},
            )
            if out is None:
                out = x.new_empty(b, *part.shape[1:])
            out[sel] = part
        return out


def _pick(value, sel: Tensor, batch: int):
    """Select samples from batched tensors; pass everything else through."""
    if isinstance(value, Tensor) and value.ndim and value.shape[0] == batch:
        return value[sel]
    return value
