"""INT8 linear layers against fp32: time per call and output error, per DiT layer shape.

Rows: the DiT's attention projection (dim -> dim) and its FFN layers (dim -> ffn_dim -> dim)
at one step's token count (5 memory + 4 past + 10 current latents): the `doom` preset (the
default world, 96x128 frames: 48 tokens per latent) and with --large `mg3-5b` (704x1280:
880 tokens per latent). ``int8 ms`` includes the per-token activation quantisation. ``max rel
err`` is max |y_int8 - y_fp32| / max |y_fp32| over the output. Every row names the CPU
capability: int8 is fast only with VNNI/AMX (or on CUDA), so read a figure with its machine.

    python benchmarks/int8_linear.py [--device cpu|cuda] [--large] [--torchao]
    python benchmarks/int8_linear.py --tokens 64 --repeat 3   # a quick check that it runs
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from common import median_ms, print_table, write_json
from matrixgame.accel.capability import cpu_capability
from matrixgame.accel.int8 import Int8Linear
from matrixgame.models.dit import DIT_PRESETS

WINDOW = 5 + 4 + 10  # latent frames in one DiT call (DESIGN.md, the release's window)
TOKENS_PER_LATENT = {"doom": 48, "mg3-5b": 880}


def layer_shapes(preset: str) -> list[tuple[str, int, int]]:
    cfg = DIT_PRESETS[preset]
    return [("attn q/k/v/o", cfg.dim, cfg.dim), ("ffn up", cfg.dim, cfg.ffn_dim),
            ("ffn down", cfg.ffn_dim, cfg.dim)]  # fmt: skip


def torchao_linear(linear: nn.Linear) -> nn.Module:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    wrapped = nn.Sequential(copy.deepcopy(linear))
    quantize_(wrapped, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
    return wrapped


def max_rel_err(y: torch.Tensor, want: torch.Tensor) -> str:
    return f"{((y.float() - want.float()).abs().max() / want.float().abs().max()).item():.2e}"


@torch.no_grad()
def bench(layer: str, tokens: int, k: int, n: int, args) -> dict:
    device, dtype = args.device, getattr(torch, args.dtype)
    torch.manual_seed(0)
    linear = nn.Linear(k, n).to(device=device, dtype=dtype)
    x = torch.randn(tokens, k, device=device, dtype=dtype)
    int8 = Int8Linear.from_linear(linear)
    sync = torch.cuda.synchronize if device == "cuda" else None

    def time(mod: nn.Module) -> float:
        return median_ms(lambda: mod(x), repeat=args.repeat, warmup=2, sync=sync)

    fp32_ms, int8_ms = time(linear), time(int8)
    want = linear(x)
    row = {
        "layer": layer,
        "tokens": tokens,
        "in": k,
        "out": n,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name() if device == "cuda" else cpu_capability(),
        "float ms": f"{fp32_ms:.3f}",
        "int8 ms": f"{int8_ms:.3f}",
        "speedup": f"{fp32_ms / int8_ms:.2f}x",
        "max rel err": max_rel_err(int8(x), want),
    }
    if args.torchao:
        ao = torchao_linear(linear)
        row["torchao ms"] = f"{time(ao):.3f}"
        row["torchao err"] = max_rel_err(ao(x), want)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", help="the float baseline's dtype")
    parser.add_argument("--large", action="store_true", help="also mg3-5b's 3072-wide layers")
    parser.add_argument("--torchao", action="store_true", help="also torchao's int8 (installed)")
    parser.add_argument("--tokens", type=int, help="override the tokens per call (quick runs)")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    presets = ["doom", "mg3-5b"] if args.large else ["doom"]
    rows = []
    for preset in presets:
        tokens = args.tokens or WINDOW * TOKENS_PER_LATENT[preset]
        for layer, k, n in layer_shapes(preset):
            rows.append({"preset": preset, **bench(layer, tokens, k, n, args)})
    print(f"device: {args.device}; threads: {torch.get_num_threads()}")
    cols = ["preset", "layer", "tokens", "in", "out", "dtype", "device", "float ms", "int8 ms"]
    cols += ["speedup", "max rel err"] + (["torchao ms", "torchao err"] if args.torchao else [])
    print_table(rows, cols)
    print(f"wrote {write_json(f'int8_linear_{args.device}', {'rows': rows})}")


if __name__ == "__main__":
    main()
