"""Light decoders: pruned shapes, lossless pruning of silent channels, the pruned start
against a fresh light decoder, distillation, the job and the CLI."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from helpers import make_dataset
from matrixgame.accel.light_vae import (
    LightDecoderTask,
    LightDistill,
    feature_channels,
    prune_decoder,
)
from matrixgame.cli import main
from matrixgame.models.vae import VAE_PRESETS, WanVAE

CASES = [(preset, rate) for preset in ("doom", "tiny") for rate in (0.5, 0.75)]
# one rate per decoder stage (latents to pixels): a wider full-resolution stage, or a narrower
PER_STAGE = [("doom", (0.875, 0.875, 0.875, 0.5)), ("tiny", (0.75, 0.75, 0.75, 0.75, 0.625))]


@pytest.mark.parametrize("preset, rate", CASES + PER_STAGE)
def test_pruned_shapes_are_the_light_configs_and_the_encoder_is_the_teachers(preset, rate):
    torch.manual_seed(0)
    teacher = WanVAE(VAE_PRESETS[preset])
    student = prune_decoder(teacher, rate)
    light = WanVAE(replace(VAE_PRESETS[preset], pruning_rate=rate, prune_encoder=False))
    assert light.decoder.conv1.out_channels == light.config.decoder_dims()[0]
    light = light.state_dict()
    own, full = student.state_dict(), teacher.state_dict()
    assert own.keys() == light.keys() == full.keys()
    for key, value in own.items():
        if key.startswith("decoder."):
            assert value.shape == light[key].shape, key
        else:  # encoder, conv1, conv2: the teacher's values, in tensors of the student's own
            assert torch.equal(value, full[key]) and value.data_ptr() != full[key].data_ptr()
    assert student.config.pruning_rate == rate and not student.config.prune_encoder


def _silence_tail(vae: WanVAE, rate) -> None:
    """Zero, in every decoder layer but the pixel head, the output filters (and biases) past
    the light decoder's width of that layer; q, k, v of an attention and the two frames of a
    temporal upsampler each on their own. Those channels are then zero everywhere, whatever
    the input."""
    with torch.device("meta"):
        light = dict(WanVAE(replace(vae.config, pruning_rate=rate, prune_encoder=False))
                     .decoder.named_modules())  # fmt: skip
    with torch.no_grad():
        for name, m in vae.decoder.named_modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d) and name != "head.2":
                parts = 3 if name.endswith("to_qkv") else 2 if name.endswith("time_conv") else 1
                w, b = m.weight.view(parts, -1, *m.weight.shape[1:]), m.bias.view(parts, -1)
                kept = light[name].weight.shape[0] // parts
                w[:, kept:] = 0
                b[:, kept:] = 0


@pytest.mark.parametrize("preset, rate", CASES + PER_STAGE)
@torch.no_grad()
def test_pruning_exactly_the_silent_channels_is_lossless(preset, rate):
    torch.manual_seed(0)
    teacher = WanVAE(VAE_PRESETS[preset]).eval()
    z = torch.randn(1, teacher.config.z_dim, 3, 4, 4)
    dense = (prune_decoder(teacher, rate).decode(z) - teacher.decode(z)).abs().max()
    _silence_tail(teacher, rate)
    for kept in feature_channels(teacher, rate).values():  # the silent ones, and only they, go
        assert torch.equal(kept, torch.arange(len(kept)))
    ref = teacher.decode(z)
    for calibration in (None, z):  # gains assumed (silent channels) or measured
        err = (prune_decoder(teacher, rate, calibration).decode(z) - ref).abs().max()
        # not bit-exact: RMS_norm's eps (1e-6) weighs less against the kept channels' larger
        # mean square (measured 4e-5 .. 3.5e-4, on outputs of mean magnitude 0.2 .. 0.3)
        assert err < 2e-3, err
    assert dense > 1.0  # pruning the same teacher before its tail was silenced: 1.5 .. 2.0


def _clips(n: int, g: torch.Generator, size: int = 32) -> torch.Tensor:
    """``[n, 3, 5, size, size]`` in [-1, 1]: drifting sinusoid gratings."""
    yy, xx = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    out = []
    for _ in range(n):
        phase, period = torch.rand(3, generator=g) * 6.28, 3 + 5 * torch.rand(2, generator=g)
        frames = [torch.stack([torch.sin(xx / period[0] + yy / period[1] + 0.4 * t + phase[c])
                               for c in range(3)]) for t in range(5)]  # fmt: skip
        out.append(torch.stack(frames, 1))
    return torch.stack(out)


@pytest.fixture(scope="module")
def teacher():
    """The doom VAE after 30 steps on gratings, and held-out latents ``[2, 32, 2, 4, 4]``."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    vae = WanVAE(VAE_PRESETS["doom"])
    opt = torch.optim.Adam(vae.parameters(), 2e-3)
    for _ in range(30):
        x = _clips(2, g)
        recon, _ = vae(x)
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return vae.eval(), vae.encode(_clips(2, g)), g


def _error(student: WanVAE, teacher: WanVAE, z: torch.Tensor) -> float:
    """MSE of the student's frames against the teacher's, relative to their power."""
    with torch.no_grad():
        ref = teacher.decode(z)
        return float((student.decode(z) - ref).pow(2).mean() / ref.pow(2).mean())


@pytest.mark.parametrize("rate", [0.5, 0.75])
def test_the_pruned_decoder_starts_far_closer_than_a_fresh_one(teacher, rate):
    vae, z, _ = teacher
    fresh = WanVAE(replace(vae.config, pruning_rate=rate, prune_encoder=False)).eval()
    pruned = _error(prune_decoder(vae, rate, z), vae, z)
    # measured: 0.66 vs 1.27 at 50%, 0.91 vs 1.53 at 75%
    assert pruned < 0.7 * _error(fresh, vae, z)


@pytest.mark.parametrize("rate, features", [(0.5, 0.0), (0.75, 1.0)])
def test_distillation_steps_bring_the_student_to_the_teacher(teacher, rate, features):
    vae, z, g = teacher
    student = prune_decoder(vae, rate, z).train()
    model = LightDistill(student, vae, feature_channels(vae, rate))
    task = LightDecoderTask(32, 32, features=features)
    params = [p for p in model.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert not any(p.requires_grad for p in student.encoder.parameters())
    opt = torch.optim.Adam(params, 1e-3)
    encoder = {k: v.clone() for k, v in student.encoder.state_dict().items()}
    before = _error(student, vae, z)
    for step in range(10):
        frames = ((_clips(2, g) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1)
        loss, logs = task.loss(model, {"frames": frames}, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (logs["feature"] > 0) == (features > 0)
    # on held-out latents; measured 0.66 -> 0.06 (50%), 0.91 -> 0.48 (75%, features on)
    assert _error(student, vae, z) < 0.75 * before
    assert all(torch.equal(v, encoder[k]) for k, v in student.encoder.state_dict().items())


def test_a_share_of_the_frame_loss_fits_the_real_frames(teacher):
    from matrixgame.train.vae_task import frames_to_model, reconstruction_loss

    vae, z, g = teacher
    model = LightDistill(prune_decoder(vae, 0.75, z), vae, feature_channels(vae, 0.75))
    frames = ((_clips(2, g) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1)
    x = frames_to_model(frames, 32, 32)
    with torch.no_grad():
        out = model(x)
        to_teacher, to_real = (reconstruction_loss(out["student"] - t, 1.0, 1.0)
                               for t in (out["teacher"], x))  # fmt: skip
        losses = {w: LightDecoderTask(32, 32, real=w).loss(model, {"frames": frames}, 0)[0]
                  for w in (0.0, 0.25, 1.0)}  # fmt: skip
    assert float((to_teacher - to_real).abs()) > 1e-3  # the two targets differ here
    torch.testing.assert_close(losses[0.0], to_teacher)
    torch.testing.assert_close(losses[1.0], to_real)
    torch.testing.assert_close(losses[0.25], 0.75 * to_teacher + 0.25 * to_real)


def test_the_job_writes_a_light_vae_run(tmp_path, capsys):
    from matrixgame.train.runs import latest_weights, trained_vae

    data = make_dataset(tmp_path / "data", clips=2, frames=12, height=32, width=32)
    base = ["train", "vae", "--data", str(data), "--out", str(tmp_path / "vae"), "--preset",
            "doom", "--steps", "2", "--batch-size", "2", "--frames", "5", "--height", "32",
            "--width", "32"]  # fmt: skip
    assert main(base) == 0
    light = ["train", "light-vae", "--data", str(data), "--vae", str(tmp_path / "vae"), "--out",
             str(tmp_path / "light"), "--rate", "0.875,0.875,0.875,0.5", "--steps", "2",
             "--batch-size", "2",
             "--frames", "5", "--features", "1", "--final-lr", "0.1"]  # fmt: skip
    assert main(light) == 0
    assert "against the teacher" in capsys.readouterr().out
    weights, config = latest_weights(tmp_path / "light", prefix="")
    assert all(k.startswith(("model.vae.", "ema.vae.")) for k in weights)  # no teacher inside
    rate = (0.875, 0.875, 0.875, 0.5)  # per stage: the full-resolution one wider
    assert config["stage"] == "light" and config["pruning_rate"] == list(rate)
    assert config["train"]["final_lr"] == 0.1  # the schedule a resumed run follows
    vae, size = trained_vae(tmp_path / "light")
    full, _ = trained_vae(tmp_path / "vae")
    assert size == (32, 32) and vae.config.pruning_rate == rate
    assert vae.config.decoder_dims() == [8, 8, 8, 16]
    light_config = replace(VAE_PRESETS["doom"], pruning_rate=rate, prune_encoder=False)
    assert sum(p.numel() for p in vae.decoder.parameters()) == sum(
        p.numel() for p in WanVAE(light_config).decoder.parameters()
    )
    for k, v in full.encoder.state_dict().items():  # the EMA of a frozen encoder
        torch.testing.assert_close(vae.encoder.state_dict()[k], v, atol=1e-6, rtol=0)
    torch.testing.assert_close(vae.latent_std, full.latent_std)


def test_cli_help_and_a_bad_rate(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "light-vae", "--help"])
    assert info.value.code == 0
    assert "MG-LightVAE" in capsys.readouterr().out
    args = ["train", "light-vae", "--data", str(tmp_path), "--vae", str(tmp_path / "none"),
            "--out", str(tmp_path / "out"), "--rate", "0.3"]  # fmt: skip
    assert main(args) == 2
    assert "--rate must be one of 0.5, 0.75" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        prune_decoder(WanVAE(VAE_PRESETS["doom"]), 1.0)
    args[-1] = "0.75,x"
    with pytest.raises(SystemExit):
        main(args)
    assert "not a number or comma-separated numbers: '0.75,x'" in capsys.readouterr().err
    args[-1] = "0.75"
    assert main([*args, "--real", "1.5"]) == 2
    assert "--real is a share of the frame loss, from 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_per_stage_rates_that_would_change_the_decoder_are_refused():
    teacher = WanVAE(VAE_PRESETS["doom"])  # stage widths 64, 64, 64, 32
    # the first three stages share a residual stream: it cannot take two widths
    with pytest.raises(ValueError, match="change the decoder's structure"):
        prune_decoder(teacher, (0.75, 0.5, 0.75, 0.75))
    # 16 -> 16 channels would lose the last block's 1x1 shortcut (64 -> 32 in the teacher)
    with pytest.raises(ValueError, match="change the decoder's structure"):
        prune_decoder(teacher, (0.75, 0.75, 0.75, 0.5))
    with pytest.raises(ValueError, match="one rate for each of its 4 stages"):
        prune_decoder(teacher, (0.75, 0.75, 0.5))


def test_a_world_ships_a_per_stage_light_decoder_and_refuses_bad_rates(tmp_path):
    import json

    from helpers import add_light_decoder, make_world_folder
    from matrixgame.worlds import shipped

    rate = PER_STAGE[1][1]  # the tiny world's VAE
    folder = add_light_decoder(make_world_folder(tmp_path / "world"), rate)
    vae = shipped.load_vae(folder, light=True)[0]
    assert vae.config.pruning_rate == rate  # a JSON list in config.json, a tuple again
    assert vae.config.decoder_dims() == [24, 24, 24, 12, 9]
    z = torch.randn(1, vae.config.z_dim, 2, 2, 2)
    assert vae.decode(z).shape[:3] == (1, 3, 5)
    config = json.loads((folder / "config.json").read_text())
    for bad in ([0.75, 1.5], "0.75", []):
        (folder / "config.json").write_text(json.dumps({**config, "light": {"pruning_rate": bad}}))
        with pytest.raises(ValueError, match="light.pruning_rate must be 0.5 or 0.75"):
            shipped.read_config(folder)


def test_the_model_card_names_a_per_stage_rate():
    from matrixgame.worlds.card import _light_line

    per_stage = "pruned by 87.5/87.5/87.5/50% by stage"
    for rate, says in ((0.75, "pruned by 75% (MG-LightVAE)"), ([0.875] * 3 + [0.5], per_stage)):
        line = _light_line({"light": {"pruning_rate": rate, "step": 5, "decoder_step": 2}})
        assert says in line[0] and "distilled 5 steps" in line[0]
