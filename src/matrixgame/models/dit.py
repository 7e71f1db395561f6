"""The Matrix-Game 3.0 DiT: Wan2.2-TI2V-5B blocks with memory, camera and action inputs.

Memory latents, past latents and the current noisy latents are one token sequence in one
self-attention (memory first, at timestep 0 like the past). Every token has its own
timestep (AdaLN modulation per token). RoPE positions are explicit: memory frames keep the
temporal indices they were generated at, and with ``sigma_theta`` > 0 each head rotates at
its own base frequency (head-wise perturbed RoPE). Camera geometry enters as Plücker rays,
embedded once and injected in every block as ``x = (1 + scale) x + shift`` right after the
self-attention residual. The first blocks carry keyboard/mouse action modules
(:mod:`matrixgame.models.actions`). Parameter names are the released checkpoint's.

Quirk of the release, reproduced: with memory on, the block replaces its residual stream
by ``norm3(x)`` before the text cross-attention residual (``x = norm3(x); x = x +
cross_attn(x)``), where Wan2.2 has ``x = x + cross_attn(norm3(x))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from matrixgame.models.actions import ActionConfig, ActionModule
from matrixgame.models.layers import (
    LayerNorm,
    RMSNorm,
    attention,
    rope_frequencies,
    rope_grid,
    rotate,
    timestep_embedding,
)

Tensor = torch.Tensor


@dataclass(frozen=True)
class DiTConfig:
    dim: int = 3072
    ffn_dim: int = 14336
    num_heads: int = 24
    num_layers: int = 30
    in_dim: int = 48
    out_dim: int = 48
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    use_memory: bool = True  # memory tokens, camera injection, explicit RoPE indices
    sigma_theta: float = 0.8  # head-wise RoPE perturbation
    rope_positions: int = 2048
    plucker_channels: int = 6 * 256  # per latent position: 6 ray values x (16 x 16) pixels
    action: ActionConfig | None = field(default_factory=ActionConfig)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


DIT_PRESETS: dict[str, DiTConfig] = {
    # The released Matrix-Game-3.0 DiT (Wan2.2-TI2V-5B + action modules in blocks 0-14).
    "mg3-5b": DiTConfig(),
    # The same code sized for two CPU cores: 16-channel latents of the tiny VAE, no text.
    "tiny": DiTConfig(
        dim=256,
        ffn_dim=768,
        num_heads=4,
        num_layers=6,
        in_dim=16,
        out_dim=16,
        text_dim=16,
        text_len=1,
        action=ActionConfig(
            blocks=(0, 1, 2),
            heads=4,
            hidden_size=32,
            keyboard_hidden_dim=128,
            mouse_hidden_dim=128,
            rope_dim_list=(8, 12, 12),
        ),
    ),
}
# The default world's DiT: the tiny blocks on the `doom` VAE's 32-channel latents (8x8 pixels
# per latent position: 6 x 64 folded ray values), so a 96x128 frame is 6x8 = 48 tokens.
DIT_PRESETS["doom"] = replace(DIT_PRESETS["tiny"], in_dim=32, out_dim=32, plucker_channels=6 * 64)
# ... and on the `doom-2x` VAE's latents of two frames each: every latent's actions reach as
# far back (12 frames = 6 latents of action history).
DIT_PRESETS["doom-2x"] = replace(
    DIT_PRESETS["doom"],
    action=replace(DIT_PRESETS["doom"].action, frames_per_latent=2, windows_size=6),
)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        # set by inference/parallel.py: this rank holds a shard of the tokens, and the
        # attention itself runs across the ranks (Ulysses)
        self.sequence_parallel = None

    def forward(self, x: Tensor, freqs: Tensor, t_index: Tensor, height: int, width: int,
                offset: Tensor | None = None, grid: Tensor | None = None) -> Tensor:  # fmt: skip
        """``x [B, L, C]``; ``t_index [F]`` temporal RoPE index of each of the L/(h w) frames;
        ``offset [B, F, 2]`` their grids' camera-aligned shifts in tokens (or None); ``grid``:
        the rotations these make (:func:`rope_grid`), when made once for all blocks."""
        q = self.norm_q(self.q(x)).unflatten(-1, (self.heads, -1))  # [B, L, H, d]
        k = self.norm_k(self.k(x)).unflatten(-1, (self.heads, -1))
        v = self.v(x).unflatten(-1, (self.heads, -1))
        if self.sequence_parallel is not None:
            if offset is not None:
                raise ValueError("camera-aligned RoPE does not run sequence-parallel")
            return self.o(self.sequence_parallel(q, k, v, freqs, t_index).flatten(2))
        if grid is not None:
            return self.o(attention(rotate(q, grid), rotate(k, grid), v).flatten(2))
        return self.o(rope_attention(q, k, v, freqs, t_index, height, width, offset).flatten(2))


def rope_attention(q: Tensor, k: Tensor, v: Tensor, freqs: Tensor, t_index: Tensor, height: int,
                   width: int, offset: Tensor | None = None) -> Tensor:  # fmt: skip
    """Attention over ``[B, L, H, d]`` tokens (frame-major, ``height x width`` per frame)
    after rotating queries and keys by their 3D RoPE positions (``offset``: see
    :func:`apply_rope_3d`)."""
    grid = rope_grid(freqs, t_index, height, width, offset, batch=q.shape[0])
    return attention(rotate(q, grid), rotate(k, grid), v)


class CrossAttention(SelfAttention):
    def forward(self, x: Tensor, context: Tensor) -> Tensor:  # type: ignore[override]
        dtype = self.q.weight.dtype  # the release casts both sides to its (bf16) weights
        if context.shape[1] == 1 and not torch.is_grad_enabled():
            # one key: softmax gives it weight 1 for every query, so each output is its value
            # (the same up to rounding): no queries, keys or attention to compute (a world
            # without text, text_len 1: a fifth of the default world's DiT on a CPU). With
            # grad the full path runs, so training's q and k get their (zero) gradients
            return self.o(self.v(context.to(dtype))).expand(-1, x.shape[1], -1)
        q = self.norm_q(self.q(x.to(dtype))).unflatten(-1, (self.heads, -1))
        k = self.norm_k(self.k(context.to(dtype))).unflatten(-1, (self.heads, -1))
        v = self.v(context.to(dtype)).unflatten(-1, (self.heads, -1))
        return self.o(attention(q, k, v).flatten(2))


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig, index: int) -> None:
        super().__init__()
        dim = cfg.dim
        self.use_memory = cfg.use_memory
        self.norm1 = LayerNorm(dim, cfg.eps)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.action_model = (
            ActionModule(cfg.action, dim) if cfg.action and index in cfg.action.blocks else None
        )
        self.norm3 = (
            LayerNorm(dim, cfg.eps, elementwise_affine=True)
            if cfg.cross_attn_norm
            else nn.Identity()
        )
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = LayerNorm(dim, cfg.eps)
        self.ffn = nn.Sequential(
            nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))
        if cfg.use_memory:
            self.cam_injector_layer1 = nn.Linear(dim, dim)
            self.cam_injector_layer2 = nn.Linear(dim, dim)
            self.cam_scale_layer = nn.Linear(dim, dim)
            self.cam_shift_layer = nn.Linear(dim, dim)

    def forward(self, x: Tensor, e: Tensor, ctx: dict) -> Tensor:
        """``x [B, L, C]``, ``e [B, L, 6, C]`` per-token modulation (float32)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation[None] + e).unbind(2)
        # 1. self-attention over memory + past + current tokens
        h = (self.norm1(x).float() * (1 + scale1) + shift1).to(x.dtype)
        y = self.self_attn(h, ctx["freqs"], ctx["t_index"], ctx["height"], ctx["width"],
                           ctx["rope_offset"], ctx["rope_grid"])  # fmt: skip
        x = x + (y * gate1).to(x.dtype)  # gates are float32; the stream keeps the model dtype
        # 2. camera injection
        if ctx["camera"] is not None:
            cam = ctx["camera"]
            cam = cam + self.cam_injector_layer2(F.silu(self.cam_injector_layer1(cam)))
            x = (1.0 + self.cam_scale_layer(cam)) * x + self.cam_shift_layer(cam)
        # 3. text cross-attention (the release's residual quirk with memory or actions on)
        if self.use_memory or ctx["mouse"] is not None:
            x = self.norm3(x)
            x = x + self.cross_attn(x, ctx["context"])
        else:
            x = x + self.cross_attn(self.norm3(x), ctx["context"])
        # 4. actions
        if self.action_model is not None and ctx["mouse"] is not None:
            x = self.action_model(
                x.to(self.ffn[0].weight.dtype),
                ctx["frames"],
                ctx["height"],
                ctx["width"],
                ctx["mouse"],
                ctx["keyboard"],
                ctx["mouse_memory"],
                ctx["keyboard_memory"],
            )
        # 5. feed-forward
        h = (self.norm2(x).float() * (1 + scale2) + shift2).to(self.ffn[0].weight.dtype)
        return x + (self.ffn(h) * gate2).to(x.dtype)


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch: tuple[int, int, int], eps: float) -> None:
        super().__init__()
        self.norm = LayerNorm(dim, eps)
        self.head = nn.Linear(dim, math.prod(patch) * out_dim)
        self.modulation = nn.Parameter(torch.zeros(1, 2, dim))

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        shift, scale = (self.modulation[None] + e[:, :, None]).unbind(2)
        return self.head((self.norm(x) * (1 + scale) + shift).to(self.head.weight.dtype))


class MatrixGameDiT(nn.Module):
    """``forward`` predicts the flow (velocity) of the current latents."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        cfg = self.config = config
        if cfg.dim % cfg.num_heads or cfg.head_dim % 2:
            raise ValueError("dim must split into heads of even size")
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, cfg.patch_size, stride=cfg.patch_size)
        if cfg.use_memory:
            self.patch_embedding_wancamctrl = nn.Linear(
                cfg.plucker_channels * math.prod(cfg.patch_size), dim
            )
            self.c2ws_hidden_states_layer1 = nn.Linear(dim, dim)
            self.c2ws_hidden_states_layer2 = nn.Linear(dim, dim)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(
            nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.head = Head(dim, cfg.out_dim, cfg.patch_size, cfg.eps)
        sigma = cfg.sigma_theta if cfg.use_memory else 0.0
        # complex rotations: a plain attribute, so that .to(dtype) never casts them to real
        self.freqs = rope_frequencies(cfg.head_dim, cfg.rope_positions, cfg.num_heads, sigma=sigma)
        self.gradient_checkpointing = False  # recompute blocks in backward (training only)
        self.init_weights()

    def init_weights(self) -> None:
        """The release's initialisation, all in one place: Xavier linears, small normal
        text/time embeddings, random modulation; zero output head, action projections and
        camera scale/shift, so a fresh model starts as an identity-like residual stack."""
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.xavier_uniform_(mod.weight)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for mod in seq:
                if isinstance(mod, nn.Linear):
                    nn.init.normal_(mod.weight, std=0.02)
        dim = self.config.dim
        nn.init.zeros_(self.head.head.weight)
        with torch.no_grad():
            self.head.modulation.copy_(torch.randn(1, 2, dim) / dim**0.5)
            for block in self.blocks:
                block.modulation.copy_(torch.randn(1, 6, dim) / dim**0.5)
        for block in self.blocks:
            zero = (
                [block.action_model.proj_mouse, block.action_model.proj_keyboard]
                if block.action_model
                else []
            )
            if self.config.use_memory:
                zero += [block.cam_scale_layer, block.cam_shift_layer]
            for mod in zero:
                nn.init.zeros_(mod.weight)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    # -- inputs -------------------------------------------------------------------------------

    def _tokens(self, latents: Tensor) -> Tensor:
        return self.patch_embedding(latents).flatten(2).transpose(1, 2)  # [B, F h w, C]

    def _camera(self, plucker: Tensor) -> Tensor:
        """``[B, 6 * 256, F, H, W]`` folded Plücker rays -> ``[B, F h w, C]``."""
        pt, ph, pw = self.config.patch_size
        b, c, f, h, w = plucker.shape
        x = plucker.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, (f // pt) * (h // ph) * (w // pw), -1)
        x = self.patch_embedding_wancamctrl(x)
        return x + self.c2ws_hidden_states_layer2(F.silu(self.c2ws_hidden_states_layer1(x)))

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        context: Tensor | None = None,
        *,
        keyboard: Tensor | None = None,
        mouse: Tensor | None = None,
        plucker: Tensor | None = None,
        memory: Tensor | None = None,
        memory_t: Tensor | None = None,
        keyboard_memory: Tensor | None = None,
        mouse_memory: Tensor | None = None,
        memory_index: Tensor | list[int] | None = None,
        first_index: int = 0,
        rope_offset: Tensor | None = None,
    ) -> Tensor:
        """Velocity ``[B, C, F, H, W]`` of latents ``x [B, C, F, H, W]`` (past then current).

        - ``t``: timesteps in [0, 1000], ``[B]``, per frame ``[B, F]`` or per token ``[B, L]``
          (past frames at 0, current ones at the noise level);
        - ``context [B, text_len, text_dim]`` (zeros when None);
        - ``keyboard [B, N, 6]``, ``mouse [B, N, 2]``: per video frame of x (N = 1 + 4(F-1)
          for a clip's first latents, else 4F); None runs without actions;
        - ``plucker [B, 6*256, M + F, H, W]``: camera rays of memory then x frames;
        - ``memory [B, C, M, H, W]`` with ``memory_t`` (default 0), null actions
          ``keyboard_memory [B, M, 6]`` (-1) / ``mouse_memory [B, M, 2]`` (+1) and their
          temporal indices ``memory_index`` ``[M]`` (or ``[B, M]``); x's frames are at
          ``first_index + i`` (``first_index`` an int or ``[B]``);
        - ``rope_offset [B, M + F, 2]``: camera-aligned RoPE, each frame's grid moved by
          these latent rows and columns (where its camera's axis lands in the window's last
          camera; :func:`matrixgame.geometry.cameras.axis_offsets`); None keeps the grids.
        """
        tokens, e, e0, ctx = self.prepare(x, t, context, keyboard=keyboard, mouse=mouse,
                                          plucker=plucker, memory=memory, memory_t=memory_t,
                                          keyboard_memory=keyboard_memory,
                                          mouse_memory=mouse_memory, memory_index=memory_index,
                                          first_index=first_index,
                                          rope_offset=rope_offset)  # fmt: skip
        return self.finish(self.head(self.run_blocks(tokens, e0, ctx), e), ctx)

    def prepare(self, x: Tensor, t: Tensor, context: Tensor | None = None, *,
                keyboard: Tensor | None = None, mouse: Tensor | None = None,
                plucker: Tensor | None = None, memory: Tensor | None = None,
                memory_t: Tensor | None = None, keyboard_memory: Tensor | None = None,
                mouse_memory: Tensor | None = None, memory_index: Tensor | list[int] | None = None,
                first_index: int = 0, rope_offset: Tensor | None = None,
                ) -> tuple[Tensor, Tensor, Tensor, dict]:  # fmt: skip
        """The blocks' inputs for :meth:`forward`'s arguments: tokens ``[B, L, C]`` (memory
        frames first), time embeddings ``e [B, L, C]`` and ``e0 [B, L, 6, C]``, and the
        context ``ctx`` every block reads (its ``frames``, ``height``, ``width`` give the
        token layout)."""
        cfg = self.config
        b, _, frames, height, width = x.shape
        pt, ph, pw = cfg.patch_size
        f, h, w = frames // pt, height // ph, width // pw
        # temporal RoPE positions, shared [1, .] or per sample [B, .]
        first = torch.as_tensor(first_index, device=x.device).long().reshape(-1, 1)
        t_index = first + torch.arange(f, device=x.device)
        m = 0
        if memory is not None:
            if not cfg.use_memory:
                raise ValueError("this model has no memory inputs (use_memory=False)")
            m = memory.shape[2] // pt
            mem = torch.arange(m) if memory_index is None else torch.as_tensor(memory_index)
            mem = mem.to(x.device).long().reshape(-1, m)
            rows = max(len(mem), len(t_index))
            t_index = torch.cat([mem.expand(rows, m), t_index.expand(rows, f)], 1)
            x = torch.cat([memory.to(x), x], dim=2)
        tokens = self._tokens(x)  # [B, L, C]
        seq = tokens.shape[1]
        t = self._per_token(t, b, f, h * w, seq - m * h * w)
        if m:
            mt = (
                torch.zeros(b, m * h * w, device=x.device)
                if memory_t is None
                else self._per_token(memory_t, b, m, h * w, m * h * w)
            )
            t = torch.cat([mt.to(t), t], dim=1)
        wdtype = self.time_embedding[0].weight.dtype
        e = self.time_embedding(timestep_embedding(cfg.freq_dim, t).to(wdtype)).float()  # [B, L, C]
        e0 = self.time_projection(e.to(wdtype)).unflatten(2, (6, cfg.dim)).float()
        if context is None:
            context = torch.zeros(
                b, cfg.text_len, cfg.text_dim, device=x.device, dtype=tokens.dtype
            )
        if context.shape[1] < cfg.text_len:  # padded with zeros to text_len, as Wan
            pad = context.new_zeros(b, cfg.text_len - context.shape[1], context.shape[2])
            context = torch.cat([context, pad], 1)
        ctx = {
            "freqs": self._freqs_on(x.device),
            "t_index": t_index,
            "frames": m + f,
            "height": h,
            "width": w,
            "context": self.text_embedding(context.to(tokens.dtype)),
            "camera": self._camera(plucker.to(tokens.dtype)) if plucker is not None else None,
            "mouse": mouse,
            "keyboard": keyboard,
            "mouse_memory": mouse_memory if m else None,
            "keyboard_memory": keyboard_memory if m else None,
        }
        if (mouse is None) != (keyboard is None):
            raise ValueError("give both keyboard and mouse, or neither")
        if ctx["camera"] is not None and ctx["camera"].shape[1] != seq:
            raise ValueError(f"plucker covers {ctx['camera'].shape[1]} tokens, the input {seq}")
        ctx["memory_frames"] = m
        ctx["rope_offset"] = None
        if rope_offset is not None:
            if rope_offset.shape[-2:] != (m + f, 2) or rope_offset.ndim not in (2, 3):
                raise ValueError(f"rope_offset must be [B, {m + f}, 2] (memory then x frames), "
                                 f"got {list(rope_offset.shape)}")  # fmt: skip
            cells = torch.tensor([ph, pw], dtype=torch.float64, device=rope_offset.device)
            ctx["rope_offset"] = rope_offset.reshape(-1, m + f, 2).double() / cells  # in tokens
        # the blocks' RoPE rotations, the same for all of them: made once per forward (not
        # where the blocks run sequence-parallel: each rank rotates its own heads there)
        ctx["rope_grid"] = None
        if all(block.self_attn.sequence_parallel is None for block in self.blocks):
            ctx["rope_grid"] = rope_grid(ctx["freqs"], t_index, h, w, ctx["rope_offset"],
                                         batch=b)  # fmt: skip
        return tokens, e, e0, ctx

    def run_blocks(self, tokens: Tensor, e0: Tensor, ctx: dict) -> Tensor:
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                tokens = torch.utils.checkpoint.checkpoint(
                    block, tokens, e0, ctx, use_reentrant=False
                )
            else:
                tokens = block(tokens, e0, ctx)
        return tokens

    def finish(self, out: Tensor, ctx: dict) -> Tensor:
        """The head's output ``[B, L, .]`` -> velocity ``[B, C, F, H, W]`` of x's frames."""
        m, h, w = ctx["memory_frames"], ctx["height"], ctx["width"]
        out = out[:, m * h * w :]  # current (and past) tokens only
        return self._unpatchify(out, ctx["frames"] - m, h, w)

    def _freqs_on(self, device: torch.device) -> Tensor:
        if self.freqs.device != device:
            self.freqs = self.freqs.to(device)
        return self.freqs

    @staticmethod
    def _per_token(t: Tensor, b: int, frames: int, hw: int, tokens: int) -> Tensor:
        t = torch.as_tensor(t).float()
        if t.ndim == 0:
            t = t.expand(b)
        if t.ndim == 1:
            return t[:, None].expand(b, tokens)
        if t.shape[1] == frames:
            return t.repeat_interleave(hw, dim=1)
        if t.shape[1] != tokens:
            raise ValueError(f"timesteps must be [B], [B, {frames}] or [B, {tokens}]")
        return t

    def _unpatchify(self, x: Tensor, f: int, h: int, w: int) -> Tensor:
        pt, ph, pw = self.config.patch_size
        b, c = x.shape[0], self.config.out_dim
        x = x.reshape(b, f, h, w, pt, ph, pw, c)
        return torch.einsum("bfhwpqrc->bcfphqwr", x).reshape(b, c, f * pt, h * ph, w * pw)
