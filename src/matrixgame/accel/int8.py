"""INT8 linear layers for the DiT's attention projections (and optionally its FFN), swapped in.

W8A8 as SmoothQuant runs it, without the smoothing (Xiao et al. 2023), with LLM.int8()-style
scales (Dettmers et al. 2022) and no outlier split: weights symmetric per output channel,
``s_w[n] = max_k |W[n, k]| / 127``; activations per token at run time, ``s_x[m] = max_k |X[m, k]|
/ 127``; ``Y = int32(round(X / s_x) @ round(W / s_w)^T) * s_x s_w^T + b``. This is the MG3
release's INT8 (DESIGN.md, "Inference facts"); the model file is never edited, modules are.

Int8 pays only where the hardware multiplies int8 fast: CUDA int8 tensor cores (sm >= 7.5) and
CPUs with AVX-512 VNNI or AMX. On a plain AVX2 CPU ``torch._int_mm`` was measured 20x slower
than fp32 (DESIGN.md, "The CPUs differ"), so ``backend="auto"`` leaves the model in float there
and its report says so.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from matrixgame.accel import capability
from matrixgame.accel.precision import model_dtype
from matrixgame.models.dit import Block, SelfAttention

Tensor = torch.Tensor

BACKENDS = ("auto", "int8", "reference", "torchao")
_EPS = 1e-8  # floor of an absmax, so an all-zero row or channel gets a finite scale


def quantize_per_channel(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``weight [N, K]`` -> int8 ``[N, K]`` and float32 scales ``[N]`` (symmetric, absmax/127)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(_EPS) / 127
    return (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x [M, K]`` -> int8 ``[M, K]`` and float32 scales ``[M, 1]``, computed per call."""
    x = x.float()
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min(_EPS) / 127
    return (x / scale).round().clamp(-127, 127).to(torch.int8), scale


def int8_mm(a: Tensor, b: Tensor) -> Tensor:
    """``a [M, K] int8 @ b [K, N] int8 -> [M, N] int32`` through ``torch._int_mm``.

    CPU (oneDNN) takes any shape. CUDA (cuBLASLt) takes only M > 16 and K, N multiples of 8,
    and a contiguous ``b`` (torchao notes silently wrong results otherwise): zero rows and
    columns are padded there and cut off. The DiT's K and N are multiples of 8; only short
    token counts pad, and only their activations.
    """
    if a.device.type != "cuda":
        return torch._int_mm(a, b)
    (m, k), n = a.shape, b.shape[1]
    pad_m, pad_k, pad_n = max(17 - m, 0), -k % 8, -n % 8
    if pad_m or pad_k:
        a = F.pad(a, (0, pad_k, 0, pad_m))
    if pad_k or pad_n:
        b = F.pad(b, (0, pad_n, 0, pad_k))
    return torch._int_mm(a.contiguous(), b.contiguous())[:m, :n]


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights and per-token dynamic int8 activations (inference only).

    Buffers: ``qweight [K, N]`` int8, transposed once so the GEMM reads it contiguous;
    ``weight_scale [N]`` and ``bias [N]`` in the compute dtype (they follow ``.to(dtype)``).
    ``reference=True`` runs the same rounding as fake quantisation in float32 (dequantise,
    then a float matmul): the int8 GEMM's reference, and an accuracy check on any CPU.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        reference: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.reference = in_features, out_features, reference
        qweight = torch.zeros(in_features, out_features, dtype=torch.int8, device=device)
        self.register_buffer("qweight", qweight)
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=dtype, device=device))
        b = torch.zeros(out_features, dtype=dtype, device=device) if bias else None
        self.register_buffer("bias", b)

    @classmethod
    def from_linear(cls, linear: nn.Linear, reference: bool = False) -> Int8Linear:
        w = linear.weight
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, reference,
                  device=w.device, dtype=w.dtype)  # fmt: skip
        q, scale = quantize_per_channel(w)
        mod.qweight.copy_(q.t())
        mod.weight_scale.copy_(scale)
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach())
        return mod

    @property
    def weight(self) -> Tensor:
        """A meta tensor ``[N, K]`` in the compute dtype, no values: the DiT reads
        ``.weight.dtype`` to cast its inputs (cross-attention, FFN). Values: :meth:`dequantize`."""
        shape = (self.out_features, self.in_features)
        return torch.empty(shape, dtype=self.weight_scale.dtype, device="meta")

    def dequantize(self) -> Tensor:
        """The weight ``[N, K]`` the int8 path multiplies by, in float32."""
        return self.qweight.t().float() * self.weight_scale.float()[:, None]

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., K]`` -> ``[..., N]`` in ``x``'s dtype."""
        q, x_scale = quantize_per_token(x.reshape(-1, self.in_features))  # [M, K], [M, 1]
        if self.reference:
            y = (q.float() * x_scale) @ self.dequantize().t()
        else:  # the int32 accumulator times the row x column scales
            y = int8_mm(q, self.qweight).float() * x_scale * self.weight_scale.float()
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kind = "reference (fake-quant)" if self.reference else "int8 GEMM"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}"


@dataclass(frozen=True)
class Int8Report:
    """What :func:`quantize_dit` did: ``backend`` is the one used, ``"none"`` where the model
    was left in float; ``reason`` says why; ``replaced`` lists the swapped modules' names."""

    backend: str
    reason: str
    replaced: tuple[str, ...]
    hardware: str

    @property
    def quantized(self) -> bool:
        return bool(self.replaced)


def target_names(model: nn.Module, ffn: bool = False) -> list[str]:
    """Names of the Linears to quantise: every q, k, v, o of self- and cross-attention, and
    with ``ffn`` the blocks' feed-forward layers. Action modules, camera layers, embeddings and
    the head stay in float."""
    wanted = set()
    for prefix, mod in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(mod, SelfAttention):  # CrossAttention included
            wanted |= {f"{dot}{c}" for c in "qkvo"}
        if ffn and isinstance(mod, Block):
            wanted |= {f"{dot}ffn.{i}" for i in range(len(mod.ffn))}
    return [n for n, m in model.named_modules() if n in wanted and isinstance(m, nn.Linear)]


def quantize_dit(model: nn.Module, ffn: bool = False, backend: str = "auto") -> Int8Report:
    """Swap the DiT's attention projections (and with ``ffn`` its FFN) for int8 ones, in place.

    ``model``: a :class:`~matrixgame.models.dit.MatrixGameDiT`, a ``Block`` or anything holding
    them, on its inference device and dtype. Backends: ``"auto"`` takes ``"int8"`` on CUDA
    (sm >= 7.5) and on CPUs with VNNI/AMX (for a float32 model: a CPU's bf16 one is as fast
    without, BENCHMARKS.md) and otherwise leaves the model as is; ``"int8"``
    forces :class:`Int8Linear`'s GEMM (slow on a plain AVX2 CPU); ``"reference"`` swaps in
    its float fake-quant twin; ``"torchao"`` calls torchao's ``quantize_`` with
    ``Int8DynamicActivationInt8WeightConfig`` on the same modules (``pip install torchao``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown int8 backend {backend!r}; choose one of {BACKENDS}")
    device = next(itertools.chain(model.parameters(), model.buffers())).device
    fast, hardware = _fast_int8_on(device)
    if backend == "auto":
        if not fast:
            return Int8Report("none", f"left in float: {hardware} has no fast int8", (), hardware)
        if device.type == "cpu" and model_dtype(model) == torch.bfloat16:
            return Int8Report("none", f"left in bf16: on {hardware} int8 on top of a bf16 "
                              "model was measured no faster", (), hardware)  # fmt: skip
        backend, reason = "int8", f"{hardware} multiplies int8 fast"
    elif backend == "int8":
        reason = "int8 asked for" + ("" if fast else f"; slow: {hardware} has no fast int8")
    elif backend == "reference":
        reason = "float fake-quantisation, the int8 path's rounding: accuracy, not speed"
    else:
        reason = "torchao Int8DynamicActivationInt8WeightConfig"
    names = target_names(model, ffn)
    if backend == "torchao":
        _torchao_quantize(model, set(names))
    else:
        for name in names:
            parent, _, child = name.rpartition(".")
            holder = model.get_submodule(parent)
            linear = getattr(holder, child)
            setattr(holder, child, Int8Linear.from_linear(linear, backend == "reference"))
    return Int8Report(backend, reason, tuple(names), hardware)


def _fast_int8_on(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` multiplies int8 fast, and its description for reports."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = f"CUDA {torch.cuda.get_device_name(device)} (sm {major}{minor})"
        return (major, minor) >= (7, 5), name
    if device.type == "cpu":
        return capability.fast_int8(), f"CPU {capability.cpu_capability()}"
    return False, device.type


def _torchao_quantize(model: nn.Module, names: set[str]) -> None:
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as err:
        raise ImportError("backend='torchao' needs torchao: pip install 'torchao>=0.18'") from err
    # set_inductor_config=False: quantising should not change torch.compile's global settings
    config = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    quantize_(model, config, filter_fn=lambda mod, fqn: fqn in names)
