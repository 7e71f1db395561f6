"""The default world's presets (the `doom` VAE and DiT) and the adversarial decoder stage."""

import os

import pytest
import torch

from matrixgame.models.dit import DIT_PRESETS, MatrixGameDiT
from matrixgame.models.vae import VAE_PRESETS, FeatureCache, VAEConfig, WanVAE
from matrixgame.train.adversarial import DecoderGAN, DecoderTask, PatchDiscriminator


def _vae(seed: int = 0) -> WanVAE:
    torch.manual_seed(seed)
    return WanVAE(VAE_PRESETS["doom"]).eval()


def test_doom_vae_shapes_and_factors():
    cfg = VAE_PRESETS["doom"]
    assert (cfg.spatial_factor, cfg.temporal_factor, cfg.z_dim) == (8, 4, 32)
    vae = _vae()
    x = torch.rand(2, 3, 9, 32, 48) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (2, 32, 3, 4, 6)
        assert vae.decode(z).shape == x.shape


def test_doom_vae_streaming_equals_whole():
    """Encoding and decoding piece by piece with one cache equals the whole clip."""
    vae = _vae(1)
    x = torch.rand(1, 3, 13, 32, 48) * 2 - 1
    with torch.no_grad():
        whole = vae.encode(x)
        cache = FeatureCache()
        pieces = torch.cat([vae.encode(x[:, :, :5], cache), vae.encode(x[:, :, 5:], cache)], 2)
        torch.testing.assert_close(pieces, whole, atol=1e-5, rtol=1e-5)
        full = vae.decode(whole)
        cache = FeatureCache()
        parts = [vae.decode(whole[:, :, i : i + 1], cache) for i in range(whole.shape[2])]
        torch.testing.assert_close(torch.cat(parts, 2), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "preset, channels",
    [("doom-2x", 32), ("doom-2x-wide", 32), ("doom-2x-wide-encoder", 32), ("doom-2x-z64", 64)],
)
def test_doom_2x_presets_latents_and_streaming(preset, channels):
    """`doom-2x` and its probes (a wider decoder, a wider encoder, more latent channels):
    8x spatial, two frames per latent; decoding latent by latent equals the whole."""
    torch.manual_seed(0)
    vae = WanVAE(VAE_PRESETS[preset]).eval()
    x = torch.rand(1, 3, 7, 32, 48) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (1, channels, 4, 4, 6)
        whole = vae.decode(z)
        cache = FeatureCache()
        parts = [vae.decode(z[:, :, i : i + 1], cache) for i in range(z.shape[2])]
    assert whole.shape == x.shape
    torch.testing.assert_close(torch.cat(parts, 2), whole, atol=1e-5, rtol=1e-5)


def test_doom_vae_gradients_reach_every_parameter():
    vae = _vae(2).train()
    x = torch.rand(1, 3, 5, 32, 48) * 2 - 1
    recon, _ = vae(x)
    (recon - x).abs().mean().backward()
    missing = [n for n, p in vae.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, missing


def test_vae_stage_flags_are_validated():
    with pytest.raises(ValueError, match="last stage"):
        VAEConfig(dim_mult=(1, 2), temporal_downsample=(True,), spatial_downsample=(False, True))
    with pytest.raises(ValueError, match="spatial downsampling flags"):
        VAEConfig(spatial_downsample=(True, False))


def test_doom_dit_window_forward():
    """The world model on a play window of the doom VAE's latents: 2 memory + 2 past + 1
    current latents of 4x6 positions (32x48 frames), actions, camera rays, memory."""
    torch.manual_seed(0)
    dit = MatrixGameDiT(DIT_PRESETS["doom"]).eval()
    b, m, f = 2, 2, 3
    x = torch.randn(b, 32, f, 4, 6)
    out = dit(
        x,
        torch.rand(b, f) * 1000,
        keyboard=torch.zeros(b, 4 * f, 6),
        mouse=torch.zeros(b, 4 * f, 2),
        plucker=torch.randn(b, 6 * 64, m + f, 4, 6),
        memory=torch.randn(b, 32, m, 4, 6),
        memory_index=[1, 2],
        keyboard_memory=-torch.ones(b, m, 6),
        mouse_memory=torch.ones(b, m, 2),
        first_index=4,
    )
    assert out.shape == x.shape and torch.isfinite(out).all()


def _gan(seed: int = 0) -> DecoderGAN:
    torch.manual_seed(seed)
    return DecoderGAN(WanVAE(VAE_PRESETS["doom"]), PatchDiscriminator(width=16)).train()


def _grads(module) -> dict[str, float]:
    return {n: 0.0 if p.grad is None else float(p.grad.abs().sum())
            for n, p in module.named_parameters()}  # fmt: skip


def test_adversarial_term_reaches_the_decoder_only():
    model = _gan()
    x = torch.rand(2, 3, 5, 32, 48) * 2 - 1
    out = model(x, torch.full((2,), 0.1))
    (-out["g_logits"].mean()).backward()  # the generator's adversarial term alone
    grads = _grads(model)
    decoder = [v for n, v in grads.items() if n.startswith("vae.decoder.")]
    assert all(v == 0 for n, v in grads.items() if n.startswith(("vae.encoder.", "vae.conv1.")))
    assert all(v == 0 for n, v in grads.items() if n.startswith("disc."))
    assert sum(v > 0 for v in decoder) > 0.9 * len(decoder)


def test_r1_penalty_is_the_squared_input_gradient_and_reaches_the_discriminator_only():
    from matrixgame.train.adversarial import r1_penalty

    real = torch.randn(3, 4, requires_grad=True)  # 3 frames, D = 2 patch logits each
    w = torch.randn(4, 2)
    expected = float(w.mean(1).pow(2).sum())  # of the mean patch logit
    assert float(r1_penalty(real @ w, real)) == pytest.approx(expected, rel=1e-5)
    model = DecoderGAN(WanVAE(VAE_PRESETS["doom"]), PatchDiscriminator(width=16), r1=True)
    out = model.train()(torch.rand(1, 3, 5, 32, 48) * 2 - 1, torch.zeros(1))
    r1_penalty(out["d_real"], out["real"]).backward()
    grads = _grads(model)
    assert all(v == 0 for n, v in grads.items() if n.startswith("vae."))
    assert sum(v > 0 for n, v in grads.items() if n.startswith("disc.")) > 0
    logs = DecoderTask(height=32, width=48, r1=1.0).loss(
        model, {"frames": torch.randint(0, 255, (1, 5, 32, 48, 3), dtype=torch.uint8)}, 0
    )[1]
    assert logs["r1"] > 0


def test_discriminator_loss_reaches_the_discriminator_only():
    from matrixgame.train.adversarial import hinge_discriminator_loss

    model = _gan(1)
    out = model(torch.rand(1, 3, 5, 32, 48) * 2 - 1, torch.zeros(1))
    hinge_discriminator_loss(out["d_real"], out["d_fake"]).backward()
    grads = _grads(model)
    assert all(v == 0 for n, v in grads.items() if n.startswith("vae."))
    assert all(v > 0 for n, v in grads.items() if n.startswith("disc."))


def test_encoder_is_frozen_and_latent_noise_changes_the_decoder_input():
    model = _gan(2)
    assert not any(p.requires_grad for p in model.vae.encoder.parameters())
    x = torch.rand(1, 3, 5, 32, 48) * 2 - 1
    torch.manual_seed(0)
    clean = model(x, torch.zeros(1))["recon"]
    torch.manual_seed(0)
    noisy = model(x, torch.ones(1))["recon"]
    assert not torch.allclose(clean, noisy)
    with torch.no_grad():
        torch.testing.assert_close(clean, model.vae.decode(model.vae.encode(x)))


def test_decoder_task_weights_the_adversarial_term_adaptively():
    """VQGAN's adaptive weight: ||grad rec|| / ||grad adv|| at the decoder's last layer,
    scaled by ``adversarial``; 0 turns the term off."""
    model = _gan(3)
    batch = {"frames": torch.randint(0, 255, (2, 5, 32, 48, 3), dtype=torch.uint8)}
    task = DecoderTask(height=32, width=48, adversarial=0.5)
    torch.manual_seed(0)
    loss, logs = task.loss(model, batch, 0)
    assert torch.isfinite(loss) and logs["adv_weight"] > 0
    torch.manual_seed(0)
    _, off = DecoderTask(height=32, width=48, adversarial=0.0).loss(model, batch, 0)
    assert off["adv_weight"] == 0.0
    torch.manual_seed(0)
    _, double = DecoderTask(height=32, width=48, adversarial=1.0).loss(model, batch, 0)
    assert double["adv_weight"] == pytest.approx(2 * logs["adv_weight"], rel=1e-4)
    torch.manual_seed(0)  # the cap bounds the ratio before the weight scales it
    cap = logs["adv_weight"] / 0.5 / 4
    _, capped = DecoderTask(height=32, width=48, adversarial=2.0, adaptive_max=cap).loss(
        model, batch, 0)  # fmt: skip
    assert capped["adv_weight"] == pytest.approx(2.0 * cap, rel=1e-4)


def test_a_fresh_wider_decoder_keeps_the_encoder_and_its_latents():
    from matrixgame.models.vae import with_fresh_decoder

    torch.manual_seed(3)
    vae = WanVAE(VAE_PRESETS["doom-2x"]).eval()
    wide = with_fresh_decoder(vae, "doom-2x-wide").eval()
    assert wide.config.dec_dim == 2 * vae.config.dec_dim
    x = torch.rand(1, 3, 5, 32, 48) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(wide.encode(x), vae.encode(x), atol=0, rtol=0)
        assert wide.decode(vae.encode(x)).shape == x.shape
    width = {k: v.shape for k, v in wide.state_dict().items() if k.startswith("decoder.")}
    assert width["decoder.conv1.weight"][0] == 2 * vae.decoder.conv1.weight.shape[0]
    with pytest.raises(ValueError, match="another encoder"):
        with_fresh_decoder(vae, "tiny")
    with pytest.raises(ValueError, match="unknown VAE preset 'wider'"):
        with_fresh_decoder(vae, "wider")


def test_train_decoder_with_a_preset_trains_a_fresh_decoder_that_loads_as_that_preset(tmp_path):
    from helpers import make_dataset
    from matrixgame.models.vae import with_fresh_decoder
    from matrixgame.train.jobs import DecoderJob, VAEJob, train_decoder, train_vae
    from matrixgame.train.runs import trained_vae

    data = make_dataset(tmp_path / "data")
    train_vae(VAEJob(data=str(data), out=str(tmp_path / "vae"), preset="doom-2x", steps=2,
                     batch_size=1, frames=5, height=32, width=48, checkpoint_every=2))  # fmt: skip
    source, _ = trained_vae(tmp_path / "vae")
    train_decoder(DecoderJob(data=str(data), vae=str(tmp_path / "vae"), out=str(tmp_path / "dec"),
                             steps=2, batch_size=1, frames=5, checkpoint_every=2,
                             preset="doom-2x-wide"))  # fmt: skip
    wide, size = trained_vae(tmp_path / "dec")
    assert size == (32, 48) and wide.config.dec_dim == 64
    untrained = with_fresh_decoder(source, "doom-2x-wide")
    enc = [k for k in untrained.state_dict() if k.startswith(("encoder.", "conv1."))]
    assert all(torch.equal(wide.state_dict()[k], source.state_dict()[k]) for k in enc)
    assert not torch.equal(wide.decoder.conv1.weight, untrained.decoder.conv1.weight)  # trained


def test_train_decoder_starts_from_a_world_folder_and_checks_its_encoder(tmp_path):
    """`train decoder --init WORLD`: the world's decoder and discriminator are where the run
    starts (at learning rate 0 they are where it ends); a world with another encoder than the
    --vae run's (whose latents the decoder must learn) is refused by name."""
    from dataclasses import replace

    from helpers import make_dataset
    from matrixgame.train.jobs import DecoderJob, VAEJob, train_decoder, train_vae
    from matrixgame.train.runs import trained_vae
    from matrixgame.worlds.shipped import save_component

    data = make_dataset(tmp_path / "data")
    train_vae(VAEJob(data=str(data), out=str(tmp_path / "vae"), preset="doom-2x", steps=2,
                     batch_size=1, frames=5, height=32, width=48, checkpoint_every=2))  # fmt: skip
    source, _ = trained_vae(tmp_path / "vae")
    state = source.state_dict()
    world = {k: v + 0.01 if k.startswith("decoder.") else v for k, v in state.items()}
    save_component(tmp_path / "world", "vae", world)
    save_component(tmp_path / "world", "discriminator", PatchDiscriminator().state_dict())
    job = DecoderJob(data=str(data), vae=str(tmp_path / "vae"), out=str(tmp_path / "dec"),
                     steps=1, batch_size=1, frames=5, lr=0.0, checkpoint_every=1,
                     init=str(tmp_path / "world"))  # fmt: skip
    train_decoder(job)
    tuned = trained_vae(tmp_path / "dec")[0].state_dict()
    k = "decoder.conv1.weight"
    assert torch.equal(tuned[k], world[k].bfloat16().float())
    assert not torch.equal(tuned[k], state[k])

    other = {k: v + 0.01 if k.startswith("encoder.") else v for k, v in state.items()}
    save_component(tmp_path / "other", "vae", other)
    with pytest.raises(ValueError, match="its encoder is not the one of"):
        train_decoder(replace(job, init=str(tmp_path / "other"), out=str(tmp_path / "dec2")))
    with pytest.raises(ValueError, match="no vae.safetensors"):
        train_decoder(replace(job, init=str(tmp_path / "data"), out=str(tmp_path / "dec3")))


def test_saving_a_component_again_leaves_equal_weights_untouched(tmp_path):
    """The recipe re-exports a kept version's components on every call: a file that already
    holds the same weights is not rewritten (a rewrite changes its header's bytes, a new
    version in git), while changed weights are."""
    from matrixgame.worlds.shipped import component_weights, save_component

    state = {"a.weight": torch.randn(4, 3), "a.steps": torch.tensor([7])}
    path = save_component(tmp_path, "dit", state)
    os.utime(path, ns=(0, 0))  # a mark: a rewrite would change it
    save_component(tmp_path, "dit", {k: v.clone() for k, v in state.items()})
    assert path.stat().st_mtime_ns == 0
    changed = {**state, "a.weight": state["a.weight"] + 1}
    save_component(tmp_path, "dit", changed)
    assert path.stat().st_mtime_ns != 0
    assert torch.equal(component_weights(tmp_path, "dit")["a.weight"],
                       changed["a.weight"].bfloat16().float())  # fmt: skip
