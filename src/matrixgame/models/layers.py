"""Building blocks shared by the DiT and its action modules: norms, timestep embeddings,
rotary position embeddings (3D, per-head perturbed), attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight over the last axis, computed in float32 (Wan)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = x.float()
        return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).to(
            x.dtype
        ) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, no affine parameters unless asked (Wan)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


def sinusoidal_embedding(dim: int, position: Tensor) -> Tensor:
    """``[N, dim]`` (cos, sin) embedding of positions ``[N]``, frequencies 10000^(-i/half)."""
    half = dim // 2
    position = position.double()
    angles = torch.outer(position, torch.pow(10000, -torch.arange(half).to(position).div(half)))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Complex rotary channels per head for (time, height, width): the 44/42/42 real split
    of a 128-dim head is (22, 21, 21) complex."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def rope_frequencies(
    head_dim: int, positions: int, num_heads: int, theta: float = 10000.0, sigma: float = 0.0
) -> Tensor:
    """Unit complex rotations ``[H, P, head_dim / 2]`` for positions 0..P-1, per head.

    Head-wise perturbed RoPE (Matrix-Game 3.0): head h uses theta_h = theta (1 + sigma eps_h)
    with eps evenly spaced over [-1, 1], so heads do not all repeat with the same periods.
    With sigma = 0 every head shares theta.
    """
    eps = torch.linspace(-1, 1, num_heads, dtype=torch.float64)
    theta_h = theta * (1 + sigma * eps)  # [H]
    pos = torch.arange(positions, dtype=torch.float64)
    parts = []
    for c in rope_split(head_dim):
        omega = 1.0 / torch.pow(theta_h[:, None], torch.arange(c, dtype=torch.float64)[None] / c)
        angles = pos[None, :, None] * omega[:, None, :]  # [H, P, c]
        parts.append(torch.polar(torch.ones_like(angles), angles))
    return torch.cat(parts, dim=2)


def apply_rope_3d(x: Tensor, freqs: Tensor, t_index: Tensor, height: int, width: int,
                  offset: Tensor | None = None) -> Tensor:  # fmt: skip
    """Rotate ``x [B, L, H, D]`` (L = F h w tokens, frame-major) by 3D RoPE.

    ``freqs [H, P, D/2]`` from :func:`rope_frequencies`; ``t_index`` the temporal position
    of each frame, ``[F]`` for the whole batch or ``[B, F]`` per sample (memory frames keep
    the positions they were generated at). ``offset [F, 2]`` or ``[B, F, 2]`` (tokens, may be
    fractional) moves each frame's grid to rows ``i + offset[0]``, columns ``j + offset[1]``
    (camera-aligned positions); None keeps the grid. Returns float32.
    """
    frames = t_index.shape[-1]
    if x.shape[1] != frames * height * width:
        raise ValueError(f"{x.shape[1]} tokens do not make {frames} frames of {height}x{width}")
    return rotate(x, rope_grid(freqs, t_index, height, width, offset, batch=x.shape[0]))


def rope_grid(freqs: Tensor, t_index: Tensor, height: int, width: int,
              offset: Tensor | None = None, batch: int | None = None) -> Tensor:  # fmt: skip
    """The rotations :func:`apply_rope_3d` applies, ``[n, L, H, D/2]`` complex (n: 1 when
    shared by the batch, else B), made once for every attention of a forward that shares
    the positions (:func:`rotate` applies them)."""
    heads = freqs.shape[0]
    t_index = t_index.long()
    if t_index.ndim == 1:
        t_index = t_index[None]
    frames = t_index.shape[1]
    ct, ch, cw = rope_split(2 * freqs.shape[2])
    ft, fh, fw = freqs.split([ct, ch, cw], dim=2)
    if offset is None:
        fh = fh[:, :height].permute(1, 0, 2)[None, None, :, None]  # [1, 1, h, 1, H, ch]
        fw = fw[:, :width].permute(1, 0, 2)[None, None, None, :]  # [1, 1, 1, w, H, cw]
    else:
        offset = offset.to(torch.float64).reshape(-1, frames, 2)
        if offset.shape[0] not in (1, batch or offset.shape[0]):
            raise ValueError(f"offset must be [F, 2] or [B, F, 2], got {list(offset.shape)}")
        fh, fw = (_shifted(f, size, offset[..., axis])
                  for f, size, axis in ((fh, height, 0), (fw, width, 1)))  # fmt: skip
        fh, fw = fh[:, :, :, None], fw[:, :, None]
    n = max(t_index.shape[0], fh.shape[0], fw.shape[0])  # 1 (shared) or B
    shape = (n, frames, height, width, heads)
    grid = torch.cat(
        [
            ft[:, t_index].permute(1, 2, 0, 3)[:, :, None, None].expand(*shape, ct),
            fh.expand(*shape, ch),
            fw.expand(*shape, cw),
        ],
        dim=-1,
    )
    return grid.reshape(n, frames * height * width, heads, ct + ch + cw)


def rotate(x: Tensor, grid: Tensor) -> Tensor:
    """``x [B, L, H, D]`` rotated by a :func:`rope_grid` ``[1 or B, L, H, D/2]``; float32."""
    b, seq, heads, dim = x.shape
    if grid.shape[1:] != (seq, heads, dim // 2) or grid.shape[0] not in (1, b):
        raise ValueError(f"a rotation grid {list(grid.shape)} does not fit x {list(x.shape)} "
                         f"(needs [1 or {b}, {seq}, {heads}, {dim // 2}])")  # fmt: skip
    xc = torch.view_as_complex(x.float().reshape(b, seq, heads, dim // 2, 2))
    return torch.view_as_real(xc * grid.to(xc.dtype)).flatten(3)


def _shifted(freqs: Tensor, size: int, offset: Tensor) -> Tensor:
    """One axis' rotations ``[n, F, size, H, c]`` at positions ``k + offset [n, F]``: the
    rotation of position 1 is exp(i omega), so any real position p rotates by exp(i p omega)."""
    omega = torch.angle(freqs[:, 1]).to(torch.float64)  # [H, c]; omega <= 1 rad
    pos = torch.arange(size, dtype=torch.float64, device=offset.device) + offset[..., None]
    angles = pos[..., None, None] * omega.to(pos.device)  # [n, F, size, H, c]
    return torch.polar(torch.ones_like(angles), angles).to(freqs.dtype)


def rope_1d_real(dims: list[int], positions: int, theta: float) -> tuple[Tensor, Tensor]:
    """(cos, sin) ``[P, sum(dims)]`` in the interleaved real layout of HunyuanVideo-style
    n-D RoPE, for positions along the first axis only (the other axes sit at position 0)."""
    cos, sin = [], []
    for axis, d in enumerate(dims):
        pos = torch.arange(positions, dtype=torch.float32) if axis == 0 else torch.zeros(positions)
        omega = 1.0 / theta ** (torch.arange(0, d, 2)[: d // 2].float() / d)
        angles = torch.outer(pos, omega)
        cos.append(angles.cos().repeat_interleave(2, dim=1))
        sin.append(angles.sin().repeat_interleave(2, dim=1))
    return torch.cat(cos, 1), torch.cat(sin, 1)


def apply_rope_real(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of ``x [B, T, H, D]`` by (cos, sin) ``[T, D]``."""
    y = x.float()
    pairs = y.reshape(*y.shape[:-1], -1, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(3)
    return (y * cos[None, :, None] + rotated * sin[None, :, None]).type_as(x)


_BACKEND = {"name": "sdpa"}


def set_attention_backend(name: str) -> None:
    """``"sdpa"`` (PyTorch's scaled_dot_product_attention, the default; it picks flash or
    memory-efficient kernels on CUDA itself) or ``"flash"`` (the flash-attn package, used
    for CUDA half-precision inputs when installed; anything else falls back to SDPA)."""
    if name not in ("sdpa", "flash"):
        raise ValueError(f"attention backend must be 'sdpa' or 'flash', got {name!r}")
    if name == "flash":
        try:
            import flash_attn  # noqa: F401
        except ImportError as err:
            raise ValueError("the 'flash' backend needs the flash-attn package") from err
    _BACKEND["name"] = name


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention on ``[B, L, H, D]`` tensors, scale 1/sqrt(D). Returns
    ``[B, Lq, H, D]`` in v's dtype."""
    q, k = q.to(v.dtype), k.to(v.dtype)
    if _BACKEND["name"] == "flash" and v.is_cuda and v.dtype in (torch.float16, torch.bfloat16):
        from flash_attn import flash_attn_func

        return flash_attn_func(q, k, v)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def timestep_embedding(freq_dim: int, t: Tensor) -> Tensor:
    """``[..., freq_dim]`` sinusoidal embedding of (per-token) timesteps ``[...]``."""
    return sinusoidal_embedding(freq_dim, t.flatten()).unflatten(0, t.shape).float()
