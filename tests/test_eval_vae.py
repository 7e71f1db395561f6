"""`matrixgame eval-vae`: reconstruction scores of autoencoders on held-out clips."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import make_dataset, make_world_folder
from matrixgame.cli import main
from matrixgame.data.shards import Manifest, read_clip
from matrixgame.eval.autoencoder import reconstruction_scores
from matrixgame.worlds.shipped import load_world


@pytest.fixture(scope="module")
def setup(module_tmp):
    root = module_tmp("eval-vae")
    data = make_dataset(root / "data", clips=3, frames=13, height=64, width=64)
    manifest = Manifest.load(data)
    for name in sorted(manifest.shards)[1:]:
        manifest.shards[name]["split"] = "heldout-traj"
    manifest.save()
    return make_world_folder(root / "world"), data


def test_the_scores_of_a_shipped_world_equal_its_reconstructions_scored_by_hand(setup, tmp_path,
                                                                               capsys):  # fmt: skip
    world, data = setup
    out = tmp_path / "scores.json"
    assert main(["eval-vae", f"w={world}", "--data", str(data), "--frames", "9", "--json",
                 str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert [c["clip"] for c in result["clips"]] == sorted(Manifest.load(data).shards)[1:]
    vae, psnrs = load_world(world).vae, []
    for clip in result["clips"]:
        frames = read_clip(data / clip["clip"]).frames[:9]
        x = torch.as_tensor(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        with torch.no_grad():
            y = vae(x)[0].clamp(-1, 1)
        mse = float((y - x).pow(2).mean())
        psnrs.append(10 * np.log10(4 / mse))
        assert clip["psnr"] == pytest.approx(psnrs[-1], abs=1e-3)
        assert clip["frames"] == 9
    assert result["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-3)
    assert 0 < result["ssim"] < 1 and result["sharpness"] > 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].split()[:2] == ["w", f"{result['psnr']:.2f}"]


def test_a_perfect_autoencoder_scores_one_and_a_blurring_one_loses_sharpness(setup):
    _, data = setup
    perfect = reconstruction_scores(lambda x: (x, None), data, 64, 64, frames=5)
    assert perfect["ssim"] == pytest.approx(1.0) and perfect["sharpness"] == pytest.approx(1.0)
    assert perfect["psnr"] > 90

    def blurring(x):  # [1, 3, T, H, W]: 8x8 block means, smoothly upsampled; no latents
        frames = x[0].transpose(0, 1)
        return F.interpolate(F.avg_pool2d(frames, 8), scale_factor=8, mode="bilinear").transpose(
            0, 1
        )[None], None

    blurred = reconstruction_scores(blurring, data, 64, 64, frames=5)
    assert blurred["sharpness"] < 0.8 and blurred["ssim"] < 0.95 and blurred["psnr"] < 60


def test_bad_arguments_are_clear_errors(setup, tmp_path, capsys):
    world, data = setup
    cases = [
        (["--split", "heldout-map"], "no clips in split 'heldout-map'"),
        (["--clips", "0"], "clips must be at least 1"),
        (["--frames", "0"], "frames must be at least 1"),
        (["--data", str(tmp_path)], "no recorded clips"),
    ]
    for extra, message in cases:
        assert main(["eval-vae", str(world), "--data", str(data), *extra]) == 2
        assert message in capsys.readouterr().err
    for spec, message in [(str(tmp_path / "nothing"), "no world"),
                          (f"{world}:light", "ships no light decoder"),
                          (f"a={world} a={world}", "share a name")]:  # fmt: skip
        assert main(["eval-vae", *spec.split(), "--data", str(data)]) == 2
        assert message in capsys.readouterr().err
