"""Where a world model loses the picture's detail: on held-out windows with their real past
(noised as the world plays it: its sampler's ``past_noise``) and memory, the world model's
one-step estimate of the current latents from each noise level (x0 = x_s - s v), and the
window sampled from noise by its sampler (Euler, several step counts), each decoded beside
the autoencoder's reconstruction of the real latents: PSNR and
sharpness ratio (gradient energy, 1 = as detailed as the reconstruction). Copying the last past
latent is the baseline. A sampled window far blurrier than the estimates from low noise says the
sampler's trajectory loses the detail; estimates blurry at every level say the denoiser does.
(Rollouts, where each window's past is generated: `matrixgame eval`, sharpness at each horizon.)

    python benchmarks/denoiser_detail.py --world worlds/doom-e1m1 \\
        --latents runs/world2/eval-latents [--windows 40] [--steps 4 16]

``--latents``: a latent cache of held-out clips encoded by the world's autoencoder (`matrixgame
world build` writes one to ``<work>/eval-latents``).
"""

from __future__ import annotations

import argparse

import torch

from common import print_table, write_json
from matrixgame.accel.capability import cpu_capability
from matrixgame.data.windows import window_kwargs
from matrixgame.diffusion.flow_matching import NUM_TIMESTEPS, add_noise
from matrixgame.eval.metrics import psnr, sharpness_ratio
from matrixgame.inference.rollout import denoise_window, noised_past
from matrixgame.train.latents import LatentClips
from matrixgame.train.memory_sampling import WindowDataset
from matrixgame.train.trainer import _collate
from matrixgame.worlds.shipped import open_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", required=True, help="a world folder or a `train dit` run")
    parser.add_argument("--latents", required=True, help="latent cache of held-out clips")
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--sigmas", type=float, nargs="+",
                        default=[0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.0])  # fmt: skip
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--shift", type=float, default=3.0)
    parser.add_argument("--past-noise", type=float, default=None,
                        help="noise level on the past (default: the world's sampler's, as it "
                             "plays)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = open_world(args.world)
    level = args.past_noise
    if level is None:
        level = float(((world.meta or {}).get("sampler") or {}).get("past_noise", 0.0))
    if not 0 <= level < 1:
        parser.error(f"--past-noise is a noise level in [0, 1), got {level}")
    data = WindowDataset(LatentClips(args.latents, split=None), world.window)
    if len(data) == 0:
        raise SystemExit(f"{args.latents}: no windows of {world.window}")
    every = max(1, len(data) // args.windows)
    chosen = list(range(0, len(data), every))[: args.windows]
    generator = torch.Generator().manual_seed(0)
    rows: dict[str, dict[str, float]] = {}

    def frames(past, current):  # the current latents' frames [T, H, W, 3], past decoded first
        video = world.vae.decode(torch.cat([past, current], 2))[0]
        f = world.window.frames_per_latent * current.shape[2]
        return video[:, -f:].permute(1, 2, 3, 0)

    def score(name: str, estimate, past, current, real) -> None:
        row = rows.setdefault(name, {"latent_mse": 0.0, "psnr": 0.0, "sharpness": 0.0})
        row["latent_mse"] += float((estimate - current).pow(2).mean()) / len(chosen)
        generated = frames(past, estimate)
        row["psnr"] += float(psnr(generated, real).mean()) / len(chosen)
        row["sharpness"] += float(sharpness_ratio(generated, real).mean()) / len(chosen)

    with torch.no_grad():
        for i in chosen:
            batch = _collate([data[i]])
            past, current = batch["past"], batch["current"]
            k, c = past.shape[2], current.shape[2]
            real = frames(past, current)  # decoded from the clean past
            seen = noised_past(batch, level, generator)  # the past as the model reads it
            score("copy the last past latent", past[:, :, -1:].expand_as(current), past,
                  current, real)  # fmt: skip
            for sigma in args.sigmas:
                s = torch.tensor([sigma])
                noisy = add_noise(current, s, torch.randn(current.shape, generator=generator))
                t = torch.cat([torch.full((1, k), NUM_TIMESTEPS * level),
                               torch.full((1, c), NUM_TIMESTEPS * sigma)], 1)  # fmt: skip
                v = world.dit(torch.cat([seen["past"], noisy], 2), t, None, **window_kwargs(seen))
                score(f"one step from noise {sigma:g}", noisy - sigma * v[:, :, k:], past,
                      current, real)  # fmt: skip
            for steps in args.steps:
                sampled = denoise_window(world.dit, batch, c, steps, args.shift, generator,
                                         past_noise=level)  # fmt: skip
                score(f"sampled, Euler {steps} steps", sampled, past, current, real)
    table = [{"estimate": name, **{k: round(v, 4) for k, v in row.items()}}
             for name, row in rows.items()]  # fmt: skip
    print(f"{args.world} (step {world.step}), {len(chosen)} held-out windows, past noise "
          f"{level:g}, {cpu_capability()}")  # fmt: skip
    print_table(table, ["estimate", "latent_mse", "psnr", "sharpness"])
    path = write_json("denoiser_detail", {"world": args.world, "step": world.step,
                                          "windows": len(chosen), "past_noise": level,
                                          "rows": table})  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
