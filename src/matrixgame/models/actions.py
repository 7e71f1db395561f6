"""Action modules of Matrix-Game (after GameFactory, arXiv 2501.08325), in the first blocks.

- Mouse: for every spatial position, the image token's features over time are concatenated
  with the mouse deltas of a window of ``windows_size`` latents x 4 frames ending at that
  latent, mixed by an MLP, and attended over time (self-attention, 1D RoPE over latents);
  the result is projected back and added to the image tokens.
- Keyboard: embedded keys of the same windows form keys/values that every image token
  attends to over time (cross-attention).

Memory latents take null actions (keyboard -1, mouse +1) repeated over a whole window and
get RoPE positions of their own (0..M-1), the rest 0..T-M-1, as in the release.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from matrixgame.models.layers import RMSNorm, apply_rope_real, attention, rope_1d_real

Tensor = torch.Tensor


@dataclass(frozen=True)
class ActionConfig:
    blocks: tuple[int, ...] = tuple(range(15))  # which DiT blocks carry an action module
    heads: int = 16
    hidden_size: int = 128  # keyboard embedding width
    keyboard_dim_in: int = 6
    mouse_dim_in: int = 2
    keyboard_hidden_dim: int = 1024
    mouse_hidden_dim: int = 1024
    frames_per_latent: int = 4  # the VAE's temporal compression
    windows_size: int = 3  # latents of action history each latent sees
    rope_dim_list: tuple[int, ...] = (8, 28, 28)
    rope_theta: float = 256.0
    qk_norm: bool = True
    qkv_bias: bool = False


class ActionModule(nn.Module):
    def __init__(self, config: ActionConfig, img_dim: int) -> None:
        super().__init__()
        c = config
        self.config = c
        window = c.frames_per_latent * c.windows_size
        self.keyboard_embed = nn.Sequential(
            nn.Linear(c.keyboard_dim_in, c.hidden_size),
            nn.SiLU(),
            nn.Linear(c.hidden_size, c.hidden_size),
        )
        m = c.mouse_hidden_dim
        self.mouse_mlp = nn.Sequential(
            nn.Linear(c.mouse_dim_in * window + img_dim, m),
            nn.GELU(approximate="tanh"),
            nn.Linear(m, m),
            nn.LayerNorm(m),
        )

        def norm(d: int) -> nn.Module:
            return RMSNorm(d, eps=1e-6) if c.qk_norm else nn.Identity()

        self.t_qkv = nn.Linear(m, m * 3, bias=c.qkv_bias)
        self.img_attn_q_norm = norm(m // c.heads)
        self.img_attn_k_norm = norm(m // c.heads)
        self.proj_mouse = nn.Linear(m, img_dim, bias=c.qkv_bias)
        k = c.keyboard_hidden_dim
        self.key_attn_q_norm = norm(k // c.heads)
        self.key_attn_k_norm = norm(k // c.heads)
        self.mouse_attn_q = nn.Linear(img_dim, k, bias=c.qkv_bias)
        self.keyboard_attn_kv = nn.Linear(c.hidden_size * window, k * 2, bias=c.qkv_bias)
        self.proj_keyboard = nn.Linear(k, img_dim, bias=c.qkv_bias)

    def _windows(self, per_frame: Tensor, latents: int) -> Tensor:
        """``[B, N, C]`` per-frame values -> ``[B, latents, window, C]``: for latent i, the
        frames of latents i-2..i (first frame repeated before the start)."""
        c = self.config
        ratio, pad = c.frames_per_latent, c.frames_per_latent * c.windows_size
        n = per_frame.shape[1]
        first = pad if (n - 1) % ratio == 0 else pad - ratio  # a clip's first latent is 1 frame
        x = torch.cat([per_frame[:, :1].expand(-1, first, -1), per_frame], dim=1)
        return torch.stack(
            [x[:, ratio * (i - c.windows_size) + pad : ratio * i + pad] for i in range(latents)], 1
        )

    def _rope(self, q: Tensor, k: Tensor, memory: int) -> tuple[Tensor, Tensor]:
        """1D RoPE over latents [B, T, H, D]; memory latents count from 0 on their own."""
        c = self.config
        t = q.shape[1]
        parts_q, parts_k = [], []
        for lo, hi in ((0, memory), (memory, t)) if memory else ((0, t),):
            cos, sin = rope_1d_real(list(c.rope_dim_list), hi - lo, c.rope_theta)
            cos, sin = cos.to(q.device), sin.to(q.device)
            parts_q.append(apply_rope_real(q[:, lo:hi], cos, sin))
            parts_k.append(apply_rope_real(k[:, lo:hi], cos, sin))
        return torch.cat(parts_q, 1), torch.cat(parts_k, 1)

    def forward(
        self,
        x: Tensor,
        frames: int,
        height: int,
        width: int,
        mouse: Tensor,
        keyboard: Tensor,
        mouse_memory: Tensor | None = None,
        keyboard_memory: Tensor | None = None,
    ) -> Tensor:
        """``x [B, T h w, C]`` image tokens (T latents incl. memory); ``mouse [B, N, 2]`` and
        ``keyboard [B, N, 6]`` per frame of the non-memory latents (N = 1 + 4k or 4k);
        ``*_memory [B, M, .]`` one null action per memory latent."""
        c = self.config
        b, _, dim = x.shape
        s = height * width
        memory = 0 if mouse_memory is None else mouse_memory.shape[1]
        window = c.frames_per_latent * c.windows_size
        n = keyboard.shape[1]
        latents = (
            (n - 1) // c.frames_per_latent + 1
            if (n - 1) % c.frames_per_latent == 0
            else n // c.frames_per_latent
        )

        # 1. mouse: self-attention over time at each spatial position
        group = self._windows(mouse, latents)  # [B, L, window, 2]
        if mouse_memory is not None:
            group = torch.cat([mouse_memory[:, :, None].expand(-1, -1, window, -1), group], 1)
        group = group.flatten(2)  # [B, T, window * 2]
        tokens = x.reshape(b, frames, s, dim).transpose(1, 2)  # [B, S, T, C]
        feats = torch.cat([tokens, group[:, None].expand(-1, s, -1, -1)], -1).flatten(0, 1)
        qkv = self.t_qkv(self.mouse_mlp(feats))  # [(B S), T, 3 m]
        q, k, v = qkv.unflatten(-1, (3, c.heads, -1)).unbind(2)  # each [(B S), T, H, d]
        q, k = self.img_attn_q_norm(q).to(v), self.img_attn_k_norm(k).to(v)
        q, k = self._rope(q, k, memory)
        attn = attention(q, k, v).flatten(2)  # [(B S), T, m]
        attn = attn.reshape(b, s, frames, -1).transpose(1, 2).reshape(b, frames * s, -1)
        x = x + self.proj_mouse(attn)

        # 2. keyboard: cross-attention from image tokens to windows of embedded keys
        keys = self._windows(
            self.keyboard_embed(keyboard.to(self.keyboard_embed[0].weight.dtype)), latents
        )
        if keyboard_memory is not None:
            mem = self.keyboard_embed(keyboard_memory.to(self.keyboard_embed[0].weight.dtype))
            keys = torch.cat([mem[:, :, None].expand(-1, -1, window, -1), keys], 1)
            memory = keyboard_memory.shape[1]
        kv = self.keyboard_attn_kv(keys.flatten(2))  # [B, T, 2 k]
        k_, v_ = kv.unflatten(-1, (2, c.heads, -1)).unbind(2)  # [B, T, H, d]
        q = self.mouse_attn_q(x).unflatten(-1, (c.heads, -1))  # [B, T S, H, d]
        q = q.reshape(b, frames, s, c.heads, -1).transpose(1, 2).flatten(0, 1)  # [(B S), T, H, d]
        q, k_ = self.key_attn_q_norm(q).to(v_), self.key_attn_k_norm(k_).to(v_)
        # positions: queries per spatial position, keys shared by all of them
        q, _ = self._rope(q, q, memory)
        _, k_ = self._rope(k_, k_, memory)
        k_ = k_.repeat_interleave(s, dim=0)
        v_ = v_.repeat_interleave(s, dim=0)
        attn = attention(q, k_, v_).flatten(2)  # [(B S), T, k]
        attn = attn.reshape(b, s, frames, -1).transpose(1, 2).reshape(b, frames * s, -1)
        return x + self.proj_keyboard(attn)
