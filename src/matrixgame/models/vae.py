"""The Wan2.2 causal video VAE (the one Matrix-Game 3.0 uses), with the release's parameter
names so that ``Wan2.2_VAE.pth`` loads unchanged.

Frames ``[B, 3, T, H, W]`` in [-1, 1] with T = 1 + 4k become latents ``[B, z, 1 + k, H/16,
W/16]``: a 2x2 patchify (12 channels), three spatial and two temporal halvings, the first
frame on its own and then 4 frames per latent. The small presets change the patch size and
which stages halve space or time (``doom``: 4x4 patches, one spatial and two temporal
halvings, so 8x spatial, 4x temporal with most of the work at low resolution).

Every convolution is causal in time and works chunk by chunk: a :class:`FeatureCache`
keeps, for each layer, the last two frames of its input from the previous chunk, so
encoding or decoding a clip in pieces gives exactly the same result as in one go. Encoder
and decoder have shortcut paths that average (``AvgDown3D``) or repeat (``DupUp3D``)
channels across the resampling, as in Wan2.2.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor
CACHE_T = 2  # frames of history a causal 3x3x3 convolution needs

# Per-channel latent statistics of the released Wan2.2 VAE (z = 48): latents are stored
# normalised, (mu - mean) / std.
WAN22_LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip


@dataclass(frozen=True)
class VAEConfig:
    dim: int = 160  # encoder base width
    dec_dim: int = 256  # decoder base width
    z_dim: int = 48
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    # per encoder stage; None: every stage but the last halves space (Wan2.2)
    spatial_downsample: tuple[bool, ...] | None = None
    patch_size: int = 2  # pixels folded into channels at both ends (3 p^2 channels)
    # MG-LightVAE: decoder (and encoder) widths scaled by 1 - rate; a tuple gives each decoder
    # stage its own rate (the decoder alone), from the latents to the pixels: its middle, then
    # each up block (decoder_dims)
    pruning_rate: float | tuple[float, ...] = 0.0
    prune_encoder: bool = True  # False: only the decoder is pruned (accel/light_vae.py)
    latent_mean: tuple[float, ...] | None = field(default=WAN22_LATENT_MEAN, repr=False)
    latent_std: tuple[float, ...] | None = field(default=WAN22_LATENT_STD, repr=False)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def down_spatial(self) -> tuple[bool, ...]:
        stages = len(self.dim_mult)
        return self.spatial_downsample or tuple(i != stages - 1 for i in range(stages))

    @property
    def spatial_factor(self) -> int:
        return self.patch_size * 2 ** sum(self.down_spatial)  # the patchify, then halvings

    def decoder_dims(self) -> list[int]:
        """The decoder's stage widths, from the latents to the pixels (its middle, then each
        up block): ``dec_dim`` scaled by 1 - the stage's pruning rate, times its multiplier."""
        mults = (self.dim_mult[-1], *self.dim_mult[::-1])
        rates = self.pruning_rate
        if not isinstance(rates, tuple):
            rates = (rates,) * len(mults)
        return [
            max(1, round(self.dec_dim * (1.0 - r))) * m for r, m in zip(rates, mults, strict=True)
        ]

    def __post_init__(self) -> None:
        if isinstance(self.pruning_rate, list):  # as JSON gives it
            object.__setattr__(self, "pruning_rate", tuple(self.pruning_rate))
        rates = self.pruning_rate
        if isinstance(rates, tuple) and (len(rates) != len(self.dim_mult) + 1
                                         or self.prune_encoder):  # fmt: skip
            raise ValueError(f"per-stage pruning rates prune the decoder alone "
                             f"(prune_encoder=False), one rate for each of its "
                             f"{len(self.dim_mult) + 1} stages; got {rates}")  # fmt: skip
        if not all(isinstance(r, int | float) and 0.0 <= r < 1.0
                   for r in (rates if isinstance(rates, tuple) else (rates,))):  # fmt: skip
            raise ValueError(f"pruning rates lie in [0, 1), got {rates}")
        stages = len(self.dim_mult)
        if len(self.temporal_downsample) > stages or len(self.down_spatial) != stages:
            raise ValueError(f"a VAE of {stages} stages takes at most {stages} temporal and "
                             f"exactly {stages} spatial downsampling flags")  # fmt: skip
        if self.down_spatial[-1] or stages == len(self.temporal_downsample) and \
                self.temporal_downsample[-1]:  # fmt: skip
            raise ValueError("the last stage of the VAE cannot resample (the decoder mirrors it)")


VAE_PRESETS: dict[str, VAEConfig] = {
    "wan2.2": VAEConfig(),
    "wan2.2-light-50": VAEConfig(pruning_rate=0.5),
    "wan2.2-light-75": VAEConfig(pruning_rate=0.75),
    # The same code at CPU size: 16x spatial, 4x temporal, 16 latent channels.
    "tiny": VAEConfig(dim=16, dec_dim=24, z_dim=16, latent_mean=None, latent_std=None),
    # The default world's autoencoder: 8x spatial (4x4 patches, one halving), 4x temporal,
    # 32 channels (24x compression, Wan2.1's is 48x); the decoder's full-resolution stage
    # is its thinnest, so it decodes fast on a CPU (benchmarks/vae_decode.py).
    "doom": VAEConfig(
        dim=32,
        dec_dim=32,
        z_dim=32,
        dim_mult=(1, 2, 2),
        num_res_blocks=1,
        temporal_downsample=(True, True),
        spatial_downsample=(True, False, False),
        patch_size=4,
        latent_mean=None,
        latent_std=None,
    ),  # fmt: skip
}
# The default world's second autoencoder: the same widths at 2x temporal (two frames per
# latent; the first stage halves space only, the second time only). At 17.5 frames/s Doom
# moves several pixels a frame, and four frames per latent blurred every reconstruction:
# held-out PSNR after 600 steps 24.5 dB here against 23.7 dB at best for `doom` (2,500
# steps), and 25.2 dB with no temporal compression at twice the decoding cost.
VAE_PRESETS["doom-2x"] = replace(VAE_PRESETS["doom"], temporal_downsample=(False, True))
# Its decoder at twice the width (the same encoder and latents): a probe of whether the
# autoencoder's held-out PSNR is bound by the decoder's capacity (`train decoder --preset`).
VAE_PRESETS["doom-2x-wide"] = replace(VAE_PRESETS["doom-2x"], dec_dim=64)
# Its encoder at twice the width (the same decoder and latent shape, so the same world-model
# preset; the encoder's cost is paid in training and at a session's start, never per frame):
# a probe of whether the encoder holds the autoencoder near 28 dB (BENCHMARKS.md).
VAE_PRESETS["doom-2x-wide-encoder"] = replace(VAE_PRESETS["doom-2x"], dim=64)
# Its latents with twice the channels (64 at 8x spatial, two frames each: 6x compression): a
# probe of whether the latents' size holds it (a world model on them needs 64 input channels).
VAE_PRESETS["doom-2x-z64"] = replace(VAE_PRESETS["doom-2x"], z_dim=64)


class FeatureCache:
    """Streaming state: per cached layer, the tail of its input from the previous chunk.

    Layers take slots in call order; ``start_chunk`` rewinds the slot counter, so the same
    layer finds its own tail at every chunk. ``first`` marks the clip's first chunk (the
    decoder's temporal upsamplers drop a frame there).
    """

    def __init__(self) -> None:
        self.slots: list[Tensor | None] = []
        self.index = 0
        self.first = True

    def copy(self) -> FeatureCache:
        """Another cache at the same point of the stream (the slots' tensors are shared:
        layers replace them, never write into them), for a step that may fail or be
        retried while this one stays as it was."""
        out = FeatureCache()
        out.slots, out.first = list(self.slots), self.first
        return out

    def start_chunk(self) -> None:
        self.index = 0

    def end_chunk(self) -> None:
        self.first = False

    def take(self) -> int:
        if self.index == len(self.slots):
            self.slots.append(None)
        self.index += 1
        return self.index - 1


class CausalConv3d(nn.Conv3d):
    """3D convolution padded only towards the past in time; ``history`` (earlier frames of
    the input) replaces that many frames of the zero padding."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        pt, ph, pw = self.padding
        self._pad = (pw, pw, ph, ph, 2 * pt, 0)
        self.padding = (0, 0, 0)

    def forward(self, x: Tensor, history: Tensor | None = None) -> Tensor:
        pad = list(self._pad)
        if history is not None and pad[4] > 0:
            x = torch.cat([history.to(x), x], dim=2)
            pad[4] -= history.shape[2]
        mode = _cpu_conv(x, self)
        if mode == "onednn":
            # PyTorch's CPU heuristic sends small-batch 3D convolutions with 3x3 kernels to
            # its slow im2col path; oneDNN computes the same thing 3-6x faster, and pads the
            # height and width itself (the same numbers, no padded copy of the input). In
            # channels-last layout (the output keeps it, so a decoder converts once): the
            # same sums, 1.2-2.4x faster at the light decoder's 8-16 channels on AVX2
            if pad[4]:
                x = F.pad(x, (0, 0, 0, 0, pad[4], 0))
            x = x.contiguous(memory_format=torch.channels_last_3d)
            return torch.mkldnn_convolution(x, self.weight, self.bias,
                                            (0, pad[2], pad[0]), self.stride, self.dilation,
                                            self.groups)  # fmt: skip
        x = F.pad(x, pad)
        if mode == "frames":
            return frames_conv3d(x, self.weight, self.bias, self.stride, self.groups)
        return super().forward(x)


def frames_conv3d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, ...],
                  groups: int = 1) -> Tensor:  # fmt: skip
    """``F.conv3d(x, weight, bias, stride, groups=groups)`` (no padding, no dilation) as one 2D
    convolution: each output frame's window of ``kt`` input frames is stacked along the
    channels (channel-major, as the weight's ``[Cout, Cin, kt, kh, kw]``), so the kernel's
    time axis folds into its input channels. The same sums in another order, by oneDNN's 2D
    kernels and with autograd (:data:`CPU_CONV3D` says when it runs)."""
    b, c, _, h, w = x.shape
    kt = weight.shape[2]
    windows = x.unfold(2, kt, stride[0])  # [B, C, T', H, W, kt]
    t = windows.shape[2]
    frames = windows.permute(0, 2, 1, 5, 3, 4).reshape(b * t, c * kt, h, w)
    y = F.conv2d(frames, weight.flatten(1, 2), bias, stride[1:], 0, 1, groups)
    return y.view(b, t, *y.shape[1:]).transpose(1, 2)


def _cpu_conv(x: Tensor, conv: nn.Conv3d) -> str:
    """How a CPU fp32 convolution runs (:data:`CPU_CONV3D`): "frames", "onednn" (inference
    only: no autograd) or "pytorch" (``nn.Conv3d``'s own choice; also every other device)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or conv.dilation != (1, 1, 1):
        return "pytorch"
    if CPU_CONV3D == "frames":
        return "frames"
    onednn = (
        CPU_CONV3D == "onednn"
        and not torch.compiler.is_compiling()  # a compiled decoder lowers convolutions itself
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.is_available()
    )
    return "onednn" if onednn else "pytorch"


# how CPU fp32 3D convolutions run: "onednn" (oneDNN's 3D kernel at inference; training
# takes PyTorch's), "frames" (time folded into channels: 2D convolutions, with autograd) or
# "pytorch". On AVX2 (benchmarks/vae_decode.py, 2026-12-03) "frames" decoded no faster than
# "onednn" (streaming doom-2x: 82 vs 80 FPS; whole clips 74 vs 87) and trained 10% slower
# than PyTorch's route, so "onednn" is the default; the benchmark compares all three
CPU_CONV3D = "onednn"
CPU_CONV3D_MODES = ("frames", "onednn", "pytorch")


def cached_conv(conv: CausalConv3d, x: Tensor, cache: FeatureCache | None) -> Tensor:
    """Run a causal conv on one chunk, feeding it the previous chunk's tail and keeping this
    chunk's last two frames (one from each of the last two chunks when a chunk is a single
    frame)."""
    if cache is None:
        return conv(x)
    slot = cache.take()
    previous = cache.slots[slot]
    tail = x[:, :, -CACHE_T:]
    if tail.shape[2] < CACHE_T and previous is not None:
        tail = torch.cat([previous[:, :, -1:].to(tail), tail], dim=2)
    out = conv(x, previous)
    cache.slots[slot] = tail.clone()
    return out


class RMS_norm(nn.Module):  # noqa: N801 (the release's name, kept for its state dict)
    """x / rms(x) * gamma over the channel axis (dim 1)."""

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: Tensor) -> Tensor:
        return x / (x.pow(2).mean(1, keepdim=True) + 1e-6).sqrt() * self.gamma


def _frames_to_images(x: Tensor) -> tuple[Tensor, int]:
    b, c, t, h, w = x.shape  # [B, C, T, H, W] -> [B*T, C, H, W]
    return x.transpose(1, 2).reshape(b * t, c, h, w), t


def _images_to_frames(x: Tensor, t: int) -> Tensor:
    bt, c, h, w = x.shape
    return x.reshape(bt // t, t, c, h, w).transpose(1, 2)


class Resample(nn.Module):
    """2x spatial up/down sampling per frame (``*2d``), with a 2x temporal step (``*3d``), or
    the temporal step alone (``*1d``)."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode.endswith("1d"):
            self.resample = nn.Identity()
        elif mode.startswith("upsample"):
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                nn.Conv2d(dim, dim, 3, padding=1),
            )
        else:
            self.resample = nn.Sequential(
                nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2))
            )
        if mode in ("upsample3d", "upsample1d"):  # each frame becomes two (2*dim channels)
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode in ("downsample3d", "downsample1d"):
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:
        up_t, down_t = self.mode in ("upsample3d", "upsample1d"), self.mode[-2:] != "2d"
        if up_t and cache is not None:
            x = cached_conv(self.time_conv, x, cache)
            b, c2, t, h, w = x.shape
            x = x.reshape(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5)
            x = x.reshape(b, c2 // 2, 2 * t, h, w)
            if cache.first:  # the first frame stands alone: keep one of its two copies
                x = x[:, :, 1:]
        if not self.mode.endswith("1d"):
            images, t = _frames_to_images(x)
            x = _images_to_frames(self.resample(images).to(x.dtype), t)
        if down_t and not up_t and cache is not None:
            slot = cache.take()
            previous = cache.slots[slot]
            if previous is None:  # the first chunk (one frame) passes through unchanged
                cache.slots[slot] = x.clone()
            else:
                cache.slots[slot] = x[:, :, -1:].clone()
                x = self.time_conv(torch.cat([previous[:, :, -1:].to(x), x], 2))
        return x


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False),
            nn.SiLU(),
            nn.Dropout(0.0),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = cached_conv(layer, x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMS_norm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:
        images, t = _frames_to_images(x)
        n, c, h, w = images.shape
        qkv = self.to_qkv(self.norm(images)).reshape(n, 1, c * 3, h * w).transpose(2, 3)
        q, k, v = qkv.contiguous().chunk(3, dim=-1)  # each [N, 1, HW, C]
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.squeeze(1).transpose(1, 2).reshape(n, c, h, w)
        return x + _images_to_frames(self.proj(y), t)


class AvgDown3D(nn.Module):
    """Shortcut across a downsampling: fold time/space blocks into channels, average groups."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.out_dim, self.factor_t, self.factor_s = out_dim, factor_t, factor_s
        folded = in_dim * factor_t * factor_s * factor_s
        # a stage that widens more than it folds (not in Wan2.2) repeats channels first
        self.repeats = max(1, out_dim // folded)
        self.group = folded * self.repeats // out_dim

    def forward(self, x: Tensor) -> Tensor:
        ft, fs = self.factor_t, self.factor_s
        if self.repeats > 1:
            x = x.repeat_interleave(self.repeats, dim=1)
        x = F.pad(x, (0, 0, 0, 0, (ft - x.shape[2] % ft) % ft, 0))
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(
            b, self.out_dim, self.group, t // ft, h // fs, w // fs
        )
        return x.mean(dim=2)


class DupUp3D(nn.Module):
    """Shortcut across an upsampling: repeat channels, unfold them into time/space blocks."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        self.out_dim, self.factor_t, self.factor_s = out_dim, factor_t, factor_s
        self.repeats = out_dim * factor_t * factor_s * factor_s // in_dim

    def forward(self, x: Tensor, first: bool = False) -> Tensor:
        ft, fs = self.factor_t, self.factor_s
        x = x.repeat_interleave(self.repeats, dim=1)
        b, _, t, h, w = x.shape
        x = x.view(b, self.out_dim, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, self.out_dim, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1 :] if first else x


class Down_ResidualBlock(nn.Module):  # noqa: N801
    def __init__(self, in_dim: int, out_dim: int, mult: int, down_t: bool, down_s: bool) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if down_t else 1, 2 if down_s else 1)
        blocks: list[nn.Module] = []
        for _ in range(mult):
            blocks.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if down_s or down_t:
            blocks.append(Resample(out_dim, "downsample" + _resample_kind(down_t, down_s)))
        self.downsamples = nn.Sequential(*blocks)

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:
        shortcut = self.avg_shortcut(x)
        for block in self.downsamples:
            x = block(x, cache)
        return x + shortcut


def _resample_kind(time: bool, space: bool) -> str:
    return "3d" if time and space else "2d" if space else "1d"


class Up_ResidualBlock(nn.Module):  # noqa: N801
    def __init__(self, in_dim: int, out_dim: int, mult: int, up_t: bool, up_s: bool) -> None:
        super().__init__()
        self.avg_shortcut = (
            DupUp3D(in_dim, out_dim, 2 if up_t else 1, 2 if up_s else 1) if up_s or up_t else None
        )
        blocks: list[nn.Module] = []
        for _ in range(mult):
            blocks.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if up_s or up_t:
            blocks.append(Resample(out_dim, "upsample" + _resample_kind(up_t, up_s)))
        self.upsamples = nn.Sequential(*blocks)

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:
        shortcut = x
        for block in self.upsamples:
            x = block(x, cache)
        if self.avg_shortcut is None:
            return x
        return x + self.avg_shortcut(shortcut, first=cache is not None and cache.first)


def _head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        RMS_norm(dim, images=False), nn.SiLU(), CausalConv3d(dim, out, 3, padding=1)
    )


def _run(layers: nn.Sequential, x: Tensor, cache: FeatureCache | None) -> Tensor:
    for layer in layers:
        if isinstance(layer, CausalConv3d):
            x = cached_conv(layer, x, cache)
        elif isinstance(
            layer, ResidualBlock | AttentionBlock | Down_ResidualBlock | Up_ResidualBlock
        ):
            x = layer(x, cache)
        else:
            x = layer(x)
    return x


class Encoder3d(nn.Module):
    def __init__(self, dim: int, z2: int, dim_mult, num_res_blocks: int, down_t, down_s,
                 in_channels: int = 12) -> None:  # fmt: skip
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]
        self.conv1 = CausalConv3d(in_channels, dims[0], 3, padding=1)
        self.downsamples = nn.Sequential(
            *(
                Down_ResidualBlock(
                    i_d, o_d, num_res_blocks, i < len(down_t) and down_t[i], down_s[i]
                )
                for i, (i_d, o_d) in enumerate(zip(dims[:-1], dims[1:], strict=True))
            )
        )
        out = dims[-1]
        self.middle = nn.Sequential(
            ResidualBlock(out, out), AttentionBlock(out), ResidualBlock(out, out)
        )
        self.head = _head(out, z2)

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:
        x = cached_conv(self.conv1, x, cache)
        x = _run(self.downsamples, x, cache)
        x = _run(self.middle, x, cache)
        return _run(self.head, x, cache)


class Decoder3d(nn.Module):
    def __init__(self, dims: list[int], z_dim: int, num_res_blocks: int, up_t, up_s,
                 out_channels: int = 12) -> None:  # fmt: skip
        """``dims``: the stage widths, the middle's, then each up block's (decoder_dims)."""
        super().__init__()
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        d0 = dims[0]
        self.middle = nn.Sequential(
            ResidualBlock(d0, d0), AttentionBlock(d0), ResidualBlock(d0, d0)
        )
        self.upsamples = nn.Sequential(
            *(
                Up_ResidualBlock(i_d, o_d, num_res_blocks + 1, i < len(up_t) and up_t[i], up_s[i])
                for i, (i_d, o_d) in enumerate(zip(dims[:-1], dims[1:], strict=True))
            )
        )
        self.head = _head(dims[-1], out_channels)

    def forward(self, x: Tensor, cache: FeatureCache | None = None) -> Tensor:
        x = cached_conv(self.conv1, x, cache)
        x = _run(self.middle, x, cache)
        x = _run(self.upsamples, x, cache)
        return _run(self.head, x, cache)


def patchify(x: Tensor, p: int = 2) -> Tensor:
    """``[B, C, T, pH, pW] -> [B, p^2 C, T, H, W]``, channel order (c, dx, dy) as Wan2.2."""
    b, c, t, h, w = x.shape
    x = x.view(b, c, t, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: Tensor, p: int = 2) -> Tensor:
    """Inverse of :func:`patchify`."""
    b, cp, t, h, w = x.shape
    x = x.view(b, cp // (p * p), p, p, t, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, cp // (p * p), t, h * p, w * p)


class WanVAE(nn.Module):
    """Encoder, decoder and the 1x1 latent convolutions of the Wan2.2 VAE (release names:
    ``encoder.*``, ``conv1.*``, ``conv2.*``, ``decoder.*``)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        if config.prune_encoder:  # a single rate (per-stage rates prune the decoder alone)
            dim = max(1, round(config.dim * (1.0 - config.pruning_rate)))
        else:
            dim = config.dim
        z = config.z_dim
        down_t, down_s = config.temporal_downsample, config.down_spatial
        pixels = 3 * config.patch_size**2
        blocks = config.num_res_blocks
        self.encoder = Encoder3d(dim, z * 2, config.dim_mult, blocks, down_t, down_s, pixels)
        self.conv1 = CausalConv3d(z * 2, z * 2, 1)
        self.conv2 = CausalConv3d(z, z, 1)
        # the decoder's stages mirror the encoder's: its first undoes the encoder's last
        up_t = tuple(down_t) + (False,) * (len(down_s) - len(down_t))
        self.decoder = Decoder3d(config.decoder_dims(), z, blocks, up_t[::-1][1:],
                                 down_s[::-1][1:] + (False,), pixels)  # fmt: skip
        mean = config.latent_mean or (0.0,) * z
        std = config.latent_std or (1.0,) * z
        if len(mean) != z or len(std) != z:
            raise ValueError(f"latent mean/std need {z} values")
        self.register_buffer(
            "latent_mean", torch.tensor(mean).view(1, z, 1, 1, 1), persistent=False
        )
        self.register_buffer("latent_std", torch.tensor(std).view(1, z, 1, 1, 1), persistent=False)

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Autoencode ``[B, 3, T, H, W]``: (reconstruction, normalised latents)."""
        latents = self.encode(frames)
        return self.decode(latents), latents

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, frames: Tensor, cache: FeatureCache | None = None) -> Tensor:
        """Normalised latent means ``[B, z, 1 + (T-1)/f, H/s, W/s]`` of frames
        ``[B, 3, T, H, W]`` in [-1, 1] (f, s: the temporal and spatial factors; Wan2.2: 4, 16).
        Give ``cache`` (and consecutive pieces of a clip, the first of 1 + fa frames, later
        ones of fb) to encode a clip in pieces."""
        if self.encoder is None:
            raise ValueError("this VAE has no encoder (a light decoder): encode with Wan2.2's")
        t = frames.shape[2]
        cache = cache or FeatureCache()
        f = self.config.temporal_factor
        if cache.first and (t - 1) % f or not cache.first and t % f:
            raise ValueError(
                f"a clip's first piece needs 1 + {f}k frames and later pieces {f}k, got {t}"
            )
        x = patchify(frames, self.config.patch_size)
        out = []
        start = 0
        while start < t:
            n = 1 if cache.first else f  # the first frame alone, then f frames per latent
            cache.start_chunk()
            out.append(self.encoder(x[:, :, start : start + n], cache))
            cache.end_chunk()
            start += n
        mu, _ = self.conv1(torch.cat(out, 2)).chunk(2, dim=1)
        return ((mu - self.latent_mean.to(mu)) / self.latent_std.to(mu)).contiguous()

    # -- decoding -----------------------------------------------------------------------------

    def decode(self, latents: Tensor, cache: FeatureCache | None = None,
               decoder=None, chunk: int = 1) -> Tensor:  # fmt: skip
        """Frames ``[B, 3, T, H, W]`` (unclamped) of normalised latents ``[B, z, L, h, w]``:
        T = 1 + f(L-1) for a clip's first piece, fL for later pieces decoded with the same
        ``cache``. ``decoder(chunk, cache)`` replaces ``self.decoder`` per chunk (a compiled
        one: ``accel/compile.py``). ``chunk``: latents per decoder call (the clip's first
        latent always stands alone); 1 as the release, more for fewer and larger calls (the
        causal caches make it the same computation; the light decoder streams a 2-latent
        segment 1.6x faster so) at the memory of ``chunk`` latents' activations."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 latent, got {chunk}")
        cache = cache or FeatureCache()
        z = latents * self.latent_std.to(latents) + self.latent_mean.to(latents)
        x = self.conv2(z)
        out, i = [], 0
        while i < x.shape[2]:
            n = 1 if cache.first else chunk
            cache.start_chunk()
            out.append((decoder or self.decoder)(x[:, :, i : i + n], cache))
            cache.end_chunk()
            i += n
        return unpatchify(torch.cat(out, 2), self.config.patch_size).contiguous()


def with_fresh_decoder(vae: WanVAE, preset: str) -> WanVAE:
    """A VAE of ``preset`` with ``vae``'s encoder (weights and latent statistics) and a
    freshly initialised decoder (e.g. a wider one): the encoder's latents stay valid. The
    preset must share the encoder's shape; its decoder may differ."""
    if preset not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {preset!r} (known: {', '.join(VAE_PRESETS)})")
    config = replace(VAE_PRESETS[preset], latent_mean=vae.config.latent_mean,
                     latent_std=vae.config.latent_std)  # fmt: skip
    fresh = WanVAE(config)
    try:  # strict: every layer of the encoder, of the same shape
        fresh.encoder.load_state_dict(vae.encoder.state_dict())
        fresh.conv1.load_state_dict(vae.conv1.state_dict())
    except RuntimeError as e:
        raise ValueError(f"preset {preset!r} has another encoder than the VAE's") from e
    return fresh
