"""The light decoder against its full decoder, streaming as `matrixgame play` does: one
segment's latents per call with the cache kept, side by side in one run (same latents; the
two decoders' calls in turn, so a drifting machine slows both alike), per thread count, and
one latent a call (the release's way) for comparison.

    python benchmarks/light_decoder.py [--world doom-e1m1] [--threads 1 2] [--repeat 60]
                                       [--widths 16:1,1,1 ...] [--rates 0.875,0.875,0.875,0.5 ...]

``--widths`` times untrained decoders of the world's autoencoder at other stage widths in the
same turns (``DIM:MULTS``: the decoder's base width and its stages' multipliers; the shipped
75% decoder is 8:1,2,2): the speed of a pruning shape before one is distilled. ``--rates``
times the full decoder pruned by these per-stage rates (as `train light-vae --rate` takes
them, latents to pixels; not distilled): the shapes a light decoder can be distilled in.

The issue's goal: the 75% light decoder >= 4x faster than its full one (its PSNR cost is in
the world's model card). Rows name the CPU capability.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from common import interleaved_median_ms, print_table, write_json
from matrixgame.accel.capability import cpu_capability
from matrixgame.accel.light_vae import parse_rate, prune_decoder
from matrixgame.models.vae import FeatureCache, WanVAE
from matrixgame.worlds import load
from matrixgame.worlds.shipped import has_light


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="doom-e1m1")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--repeat", type=int, default=60, help="timed calls per figure (full and light in turn)"
    )
    parser.add_argument(
        "--widths",
        nargs="*",
        default=[],
        metavar="DIM:MULTS",
        help="also time untrained decoders of these widths, e.g. 16:1,1,1",
    )
    parser.add_argument(
        "--rates",
        nargs="*",
        default=[],
        metavar="R,R,...",
        help="also time the full decoder pruned by these per-stage rates (not distilled)",
    )
    args = parser.parse_args()
    if not has_light(args.world):
        raise SystemExit(f"{args.world} ships no light decoder")
    world = load(args.world)
    decoders = {"full": world.vae, "light": load(args.world, light=True).vae}
    for spec in args.widths:
        decoders[spec] = untrained(world.vae.config, spec)
    for spec in args.rates:
        decoders[spec] = pruned(world.vae, spec)
    f, current = world.vae.config.spatial_factor, world.window.current
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, world.dit.config.in_dim, 4 + current, world.height // f,
                    world.width // f, generator=g)  # fmt: skip
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for chunk, way in ((current, "a segment a call (play)"), (1, "a latent a call")):
            calls = {name: segment_call(vae, z, current, chunk)
                     for name, vae in decoders.items()}  # fmt: skip
            ms = interleaved_median_ms(calls, args.repeat)
            rows.append({"world": args.world, "capability": cpu_capability(),
                         "threads": threads, "calls": way, "latents": current,
                         "full_ms": round(ms["full"], 2), "light_ms": round(ms["light"], 2),
                         "speedup": round(ms["full"] / ms["light"], 2),
                         **{f"{w} ms / speed-up": f"{ms[w]:.2f} / {ms['full'] / ms[w]:.2f}x"
                            for w in [*args.widths, *args.rates]}})  # fmt: skip
    print_table(rows, list(rows[0]))
    print(write_json("light_decoder", {"rows": rows}))


def untrained(config, spec: str) -> WanVAE:
    """A decoder of ``config``'s autoencoder at the widths ``DIM:MULTS`` (random weights)."""
    try:
        dim, mults = spec.split(":")
        dim, mults = int(dim), tuple(int(m) for m in mults.split(","))
    except ValueError:
        raise SystemExit(f"--widths takes DIM:MULTS such as 16:1,1,1, got {spec!r}") from None
    if len(mults) != len(config.dim_mult):
        raise SystemExit(f"--widths {spec}: the decoder has {len(config.dim_mult)} stages")
    return WanVAE(replace(config, pruning_rate=0.0, dec_dim=dim, dim_mult=mults)).eval()


def pruned(vae: WanVAE, spec: str) -> WanVAE:
    """``vae`` with its decoder pruned by the per-stage rates ``R,R,...`` (not distilled)."""
    try:
        return prune_decoder(vae, parse_rate(spec)).eval()
    except ValueError as e:
        raise SystemExit(f"--rates {spec}: {e}") from None


def segment_call(vae, z: torch.Tensor, current: int, chunk: int):
    """A call that decodes one segment of ``current`` later latents, the stream opened by the
    latents before it (cache kept, copied per call as a session does)."""
    cache = FeatureCache()
    with torch.no_grad():
        vae.decode(z[:, :, :-current], cache, chunk=chunk)
    segment = z[:, :, -current:]

    @torch.no_grad()
    def call():
        return vae.decode(segment, cache.copy(), chunk=chunk)

    return call


if __name__ == "__main__":
    main()
