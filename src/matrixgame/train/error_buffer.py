"""Error buffer (Stable Video Infinity; Matrix-Game 3.0's error-aware base model).

The model's own mistakes are banked and replayed as context noise, so it learns to generate
from imperfect past and memory latents instead of collapsing when its rollouts drift:

    delta = x_hat - x                    residual of the predicted clean latent, per frame
    x~_past = x_past + gamma_h delta     injected into past latents
    m~      = m      + gamma_m delta     injected into memory latents

Residuals are kept per noise-level bin (the error of a prediction depends on how noisy its
input was), a fixed number per bin, newest replacing oldest.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


class ErrorBuffer:
    def __init__(
        self, bins: int = 10, capacity: int = 64, gamma_past: float = 1.0, gamma_memory: float = 1.0
    ):
        if bins < 1 or capacity < 1:
            raise ValueError("need bins >= 1 and capacity >= 1")
        self.bins, self.capacity = bins, capacity
        self.gamma_past, self.gamma_memory = gamma_past, gamma_memory
        self.store: list[list[Tensor]] = [[] for _ in range(bins)]
        self.next: list[int] = [0] * bins

    def __len__(self) -> int:
        return sum(len(b) for b in self.store)

    def bin_of(self, sigma: float) -> int:
        return min(self.bins - 1, max(0, int(sigma * self.bins)))

    @torch.no_grad()
    def add(self, predicted: Tensor, target: Tensor, sigma: Tensor) -> None:
        """Bank per-frame residuals ``predicted - target`` of ``[B, C, F, H, W]`` predictions
        made at noise levels ``sigma [B]`` (kept on the CPU, detached)."""
        delta = (predicted - target).detach().float().cpu()
        for b in range(delta.shape[0]):
            k = self.bin_of(float(sigma[b]))
            for f in range(delta.shape[2]):
                frame = delta[b, :, f].clone()  # [C, H, W]
                if len(self.store[k]) < self.capacity:
                    self.store[k].append(frame)
                else:
                    self.store[k][self.next[k]] = frame
                    self.next[k] = (self.next[k] + 1) % self.capacity

    def sample(self, frames: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``[frames, C, H, W]`` residuals drawn uniformly from all bins (zeros while empty),
        on the device and dtype of ``like [..., C, H, W]``."""
        pool = [r for b in self.store for r in b]
        if not pool:
            return (
                like.new_zeros(frames, *like.shape[-3:])
                if like.ndim >= 3
                else like.new_zeros(frames)
            )
        idx = torch.randint(len(pool), (frames,), generator=generator).tolist()
        return torch.stack([pool[i] for i in idx]).to(like)

    def inject(
        self, latents: Tensor, gamma: float, generator: torch.Generator | None = None
    ) -> Tensor:
        """``latents [B, C, F, H, W]`` + gamma x a banked residual per frame."""
        if gamma == 0 or latents.shape[2] == 0 or not len(self):
            return latents
        b, _, f = latents.shape[:3]
        noise = self.sample(b * f, latents[:, :, 0], generator)  # [B*F, C, H, W]
        return latents + gamma * noise.view(b, f, *noise.shape[1:]).transpose(1, 2)

    def state_dict(self) -> dict[str, Tensor]:
        """The banked residuals per bin ``[n, C, H, W]`` and the ring positions, so a resumed
        run replays what the unbroken one would have."""
        state = {f"bin{k}": torch.stack(b) for k, b in enumerate(self.store) if b}
        state["next"] = torch.tensor(self.next, dtype=torch.long)
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.store = [list(state[f"bin{k}"].unbind(0)) if f"bin{k}" in state else []
                      for k in range(self.bins)]  # fmt: skip
        self.next = [int(v) for v in state["next"]]

    def corrupt(
        self, past: Tensor, memory: Tensor | None, generator: torch.Generator | None = None
    ):
        """The training-time context: past and memory latents with their errors injected."""
        past = self.inject(past, self.gamma_past, generator)
        if memory is not None:
            memory = self.inject(memory, self.gamma_memory, generator)
        return past, memory
