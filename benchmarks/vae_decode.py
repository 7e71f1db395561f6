"""Streaming VAE decode on the CPU: PyTorch's own convolution choice against oneDNN, side by
side in one run (same weights, same latents; outputs equal to 1e-5).

PyTorch sends small-batch 3D convolutions with 3x3 kernels to its slow im2col kernel on the
CPU; `CausalConv3d` calls oneDNN directly at inference (`matrixgame.models.vae.ONEDNN_CONV3D`).

    python benchmarks/vae_decode.py [--latents 8] [--sizes 96x128 192x256]
    python benchmarks/vae_decode.py --presets doom --sizes 96x128 --streaming

``--streaming`` also times the play path: one latent (4 frames) per call with a kept cache.
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
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for preset in args.presets:
        vae = WanVAE(VAE_PRESETS[preset]).eval()
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            f = vae.config.spatial_factor
            z = torch.randn(1, vae.config.z_dim, args.latents, h // f, w // f)
            t = vae.config.temporal_factor  # frames per latent after the first
            frames = 1 + t * (args.latents - 1)
            out, ms = {}, {}
            with torch.no_grad():
                for onednn in (False, True):
                    vae_module.ONEDNN_CONV3D = onednn
                    out[onednn] = vae.decode(z)
                    ms[onednn] = median_ms(lambda v=vae, z=z: v.decode(z), args.repeat, warmup=1)
            vae_module.ONEDNN_CONV3D = True
            row = {
                "preset": preset, "size": size, "capability": cpu_capability(),
                "threads": torch.get_num_threads(), "frames": frames,
                "native_fps": round(frames / ms[False] * 1e3, 1),
                "onednn_fps": round(frames / ms[True] * 1e3, 1),
                "speedup": round(ms[False] / ms[True], 2),
                "max_abs_diff": float((out[True] - out[False]).abs().max()),
            }  # fmt: skip
            if args.streaming:
                row["streaming_fps"] = round(streaming_fps(vae, z, args.repeat), 1)
            rows.append(row)
    print_table(rows, list(rows[0]))
    print(write_json("vae_decode", {"rows": rows, "latents": args.latents}))


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
