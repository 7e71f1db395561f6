"""The error-aware, memory-augmented flow-matching objective (Matrix-Game 3.0 base model).

Per step (one mode for the whole batch, drawn from the step's seeded randomness):
- with probability ``image_only``: the release's image-to-video mode, the last past latent
  as the only context, no memory;
- otherwise memory + past + current, the memory dropped with probability ``drop_memory``
  and the past latents with probability ``drop_past`` (condition dropout);
- actions replaced by the null actions (keyboard -1, mouse +1) with probability
  ``drop_actions`` (classifier-free guidance);
- past and memory latents corrupted by the error buffer (x~ = x + gamma_h delta,
  m~ = m + gamma_m delta), which is fed by the model's own residuals on the current latents;
- with ``past_noise`` > 0 (not in the report: GameNGen's noise augmentation of the context),
  the past latents then noised to a level drawn per window from [0, past_noise], given to the
  model as their timestep, so that generation can put a known noise level on its own past.
The loss is flow matching on the current latents only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from matrixgame.data.windows import frame_conditions, null_actions
from matrixgame.diffusion.flow_matching import (
    NUM_TIMESTEPS,
    add_noise,
    flow_matching_loss,
    predicted_clean,
    sample_sigma,
)
from matrixgame.train.error_buffer import ErrorBuffer

Tensor = torch.Tensor


@dataclass
class DiTTask:
    shift: float = 3.0
    image_only: float = 0.2
    drop_memory: float = 0.2
    drop_past: float = 0.2
    drop_actions: float = 0.1
    past_noise: float = 0.0  # the past's largest noise level (0: clean past, the report's)
    buffer: ErrorBuffer = field(default_factory=ErrorBuffer)
    frames_per_latent: int = 4  # the latents' (the window's actions are f per latent)

    def state_dict(self) -> dict[str, Tensor]:
        """What the task carries between steps (the error buffer), for checkpoints."""
        return {f"buffer.{k}": v for k, v in self.buffer.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.buffer.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("buffer.")})

    def loss(self, model, batch: dict, step: int) -> tuple[Tensor, dict]:
        past, current, memory = batch["past"], batch["current"], batch["memory"]
        b, p, c = current.shape[0], past.shape[2], current.shape[2]
        m = memory.shape[2]
        keyboard, mouse = batch["keyboard"], batch["mouse"]
        keep = list(range(m + p + c))  # the frames whose rays (and RoPE offsets) the model sees
        mode = "image" if torch.rand(()) < self.image_only else "memory"
        if mode == "image":  # one context latent, no memory
            past, memory = past[:, :, -1:], None
            f = self.frames_per_latent
            keyboard, mouse = keyboard[:, -f * (1 + c) :], mouse[:, -f * (1 + c) :]
            keep = keep[m + p - 1 :]
        else:
            if torch.rand(()) < self.drop_past:  # generate the window from memory alone
                mode = "no past"
                past = past[:, :, :0]
                f = self.frames_per_latent
                keyboard, mouse = keyboard[:, -f * c :], mouse[:, -f * c :]
                keep = keep[:m] + keep[m + p :]
            if torch.rand(()) < self.drop_memory:
                memory, keep = None, keep[m:]
        if torch.rand(()) < self.drop_actions:
            keyboard, mouse = null_actions(keyboard, mouse)
        past, memory = self.buffer.corrupt(past, memory)
        k = past.shape[2]
        past_sigma = torch.zeros(b, device=current.device)
        if self.past_noise > 0 and k > 0:
            past_sigma = self.past_noise * torch.rand(b, device=current.device)
            past = add_noise(past, past_sigma, torch.randn_like(past))
        sigma = sample_sigma(b, self.shift, device=current.device)
        noise = torch.randn_like(current)
        noisy = add_noise(current, sigma, noise)
        t = NUM_TIMESTEPS * torch.cat([past_sigma[:, None].expand(b, k),
                                       sigma[:, None].expand(b, c)], 1)  # fmt: skip
        first = batch["first_index"] + (p - k)  # [B]: each window's first kept latent
        frames = frame_conditions(batch, keep)
        plucker, extra = frames.pop("plucker"), frames  # extra: the RoPE offsets, if any
        if memory is not None:
            keyboard_memory, mouse_memory = null_actions(keyboard, mouse, m)
            extra.update(memory=memory, memory_index=batch["memory_index"],
                         keyboard_memory=keyboard_memory, mouse_memory=mouse_memory)  # fmt: skip
        velocity = model(torch.cat([past, noisy], 2), t, None, keyboard=keyboard, mouse=mouse,
                         plucker=plucker, first_index=first, **extra)  # fmt: skip
        target_noise = torch.cat([torch.zeros_like(past), noise], 2)
        target_clean = torch.cat([past, current], 2)
        loss, logs = flow_matching_loss(velocity, target_clean, target_noise, slice(k, None))
        self.buffer.add(predicted_clean(noisy, sigma, velocity[:, :, k:].detach()), current, sigma)
        logs.update(mode=mode, buffer=len(self.buffer), sigma=float(sigma.mean()))
        return loss, logs
