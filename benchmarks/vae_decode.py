"""VAE decode on the CPU by each route of its 3D convolutions, side by side in one run (same
weights, same latents; outputs equal to 1e-5): PyTorch's own choice, oneDNN's 3D kernel, and
time folded into the channels of 2D convolutions (`matrixgame.models.vae.CPU_CONV3D`).

PyTorch sends small-batch 3D convolutions with 3x3 kernels to its slow im2col kernel on the
CPU; oneDNN's 3D kernel is faster, and its 2D kernels faster again on these shapes.

    python benchmarks/vae_decode.py [--latents 8] [--sizes 96x128 192x256]
    python benchmarks/vae_decode.py --presets doom --sizes 96x128 --streaming

``--streaming`` also times the play path: one latent (its frames) per call with a kept cache,
by each route; ``--train`` a training step's forward and backward (encode and decode of a
batch of 2 clips of 1 + 4 f frames) by the routes that have gradients (frames, PyTorch's).
The CPU capability is in every row; an AVX2-only machine can be approximated on an AVX-512
one with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` (same clock and caches, so
only an approximation).
"""

from __future__ import annotations

import argparse

import torch

import matrixgame.models.vae as vae_module
from common import median_ms, print_table, write_json
from matrixgame.accel.capability import cpu_capability
from matrixgame.models.vae import VAE_PRESETS, FeatureCache, WanVAE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "wan2.2-light-75"])
    parser.add_argument("--sizes", nargs="+", default=["96x128", "192x256"])
    parser.add_argument("--latents", type=int, default=8, help="latents decoded per call")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--streaming", action="store_true",
                        help="also decode latent by latent with a kept cache (play)")  # fmt: skip
    parser.add_argument("--train", action="store_true",
                        help="also time a training step's forward and backward")  # fmt: skip
    args = parser.parse_args()
    torch.manual_seed(0)
    rows, default = [], vae_module.CPU_CONV3D
    for preset in args.presets:
        vae = WanVAE(VAE_PRESETS[preset]).eval()
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            f = vae.config.spatial_factor
            z = torch.randn(1, vae.config.z_dim, args.latents, h // f, w // f)
            t = vae.config.temporal_factor  # frames per latent after the first
            frames = 1 + t * (args.latents - 1)
            out, ms, stream = {}, {}, {}
            with torch.no_grad():
                for mode in vae_module.CPU_CONV3D_MODES:
                    vae_module.CPU_CONV3D = mode
                    out[mode] = vae.decode(z)
                    ms[mode] = median_ms(lambda v=vae, z=z: v.decode(z), args.repeat, warmup=1)
                    if args.streaming:
                        stream[mode] = streaming_fps(vae, z, args.repeat)
            vae_module.CPU_CONV3D = default
            row = {"preset": preset, "size": size, "capability": cpu_capability(),
                   "threads": torch.get_num_threads(), "frames": frames}  # fmt: skip
            for mode in vae_module.CPU_CONV3D_MODES:
                row[f"{mode}_fps"] = round(frames / ms[mode] * 1e3, 1)
                if args.streaming:
                    row[f"{mode}_streaming_fps"] = round(stream[mode], 1)
            row["max_abs_diff"] = max(float((out[m] - out["pytorch"]).abs().max()) for m in out)
            if args.train:
                for mode, ms in train_ms(vae, h, w, args.repeat).items():
                    row[f"{mode}_train_ms"] = round(ms)
                vae_module.CPU_CONV3D = default
            rows.append(row)
    print_table(rows, list(rows[0]))
    print(write_json("vae_decode", {"rows": rows, "latents": args.latents}))


def train_ms(vae: WanVAE, h: int, w: int, repeat: int) -> dict[str, float]:
    """Milliseconds of forward + backward through encode and decode of 2 clips, per route."""
    x = torch.rand(2, 3, 1 + 4 * vae.config.temporal_factor, h, w) * 2 - 1
    vae.train()

    def step():
        vae.zero_grad(set_to_none=True)
        vae.decode(vae.encode(x)).square().mean().backward()

    out = {}
    for mode in ("frames", "pytorch"):
        vae_module.CPU_CONV3D = mode
        out[mode] = median_ms(step, repeat, warmup=1)
    vae.eval()
    return out


@torch.no_grad()
def streaming_fps(vae: WanVAE, z: torch.Tensor, repeat: int) -> float:
    """Frames per second decoding one later latent (its temporal factor's frames) per call,
    cache kept: what a streaming session does every step."""
    cache = FeatureCache()
    vae.decode(z[:, :, :1], cache)  # the first latent (one frame) opens the stream
    latent = z[:, :, 1:2]
    for _ in range(2):
        vae.decode(latent, cache)
    frames = vae.config.temporal_factor
    return frames / median_ms(lambda: vae.decode(latent, cache), repeat * 10, warmup=2) * 1e3


if __name__ == "__main__":
    main()
