"""The Wan2.2 VAE: equality with the public reference, streaming, presets."""

from dataclasses import replace

import pytest
import torch

from helpers import golden
from matrixgame.models.vae import VAE_PRESETS, FeatureCache, VAEConfig, WanVAE


@pytest.fixture(scope="module")
def reference():
    g = golden("wan22_vae_tiny.safetensors")
    model = WanVAE(VAEConfig(dim=8, dec_dim=8)).eval()
    # the reference's state dict loads unchanged: same names, same shapes, nothing left over
    model.load_state_dict({k: v for k, v in g.items() if not k.startswith("golden.")})
    return model, g


@torch.no_grad()
def test_matches_the_reference(reference):
    model, g = reference
    latent = model.encode(g["golden.input"])
    torch.testing.assert_close(latent, g["golden.latent"], atol=1e-5, rtol=0)
    decoded = model.decode(g["golden.latent"])
    torch.testing.assert_close(decoded, g["golden.decoded"], atol=1e-4, rtol=0)


@torch.no_grad()
def test_streaming_equals_whole_clip(reference):
    model, g = reference
    frames, latent = g["golden.input"], g["golden.latent"]
    cache = FeatureCache()
    pieces = [model.encode(frames[:, :, :5], cache), model.encode(frames[:, :, 5:], cache)]
    torch.testing.assert_close(torch.cat(pieces, 2), model.encode(frames), atol=1e-5, rtol=0)
    cache = FeatureCache()
    pieces = [model.decode(latent[:, :, i : i + 1], cache) for i in range(latent.shape[2])]
    whole = model.decode(latent)
    assert [p.shape[2] for p in pieces] == [1, 4, 4]
    torch.testing.assert_close(torch.cat(pieces, 2), whole, atol=1e-5, rtol=0)
    # the release's streaming decoder (two calls sharing a cache, clamped)
    torch.testing.assert_close(whole.clamp(-1, 1), g["golden.decoded_stream"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("preset", ["reference", "doom-2x"])
@torch.no_grad()
def test_chunks_of_several_latents_decode_what_one_at_a_time_does(reference, preset):
    """The session streams a segment's latents in one decoder call (after the clip's first
    latent, which stands alone): the same frames as the release's one latent a call."""
    if preset == "reference":
        model = reference[0]
    else:
        torch.manual_seed(0)
        model = WanVAE(replace(VAE_PRESETS[preset], dim=8, dec_dim=8)).eval()
    z = torch.randn(1, model.config.z_dim, 7, 4, 6, generator=torch.Generator().manual_seed(1))
    one = model.decode(z)
    for chunk in (2, 3, 7):
        cache = FeatureCache()  # a first piece of 3 latents, then segments of 2
        spans = ((0, 3), (3, 5), (5, 7))
        pieces = [model.decode(z[:, :, a:b], cache, chunk=chunk) for a, b in spans]
        torch.testing.assert_close(torch.cat(pieces, 2), one, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        model.decode(z, chunk=0)


def test_tiny_preset_shapes_and_gradients():
    torch.manual_seed(0)
    model = WanVAE(VAE_PRESETS["tiny"])
    frames = torch.rand(2, 3, 5, 32, 48) * 2 - 1
    latent = model.encode(frames)
    assert latent.shape == (2, 16, 2, 2, 3)
    out = model.decode(latent)
    assert out.shape == frames.shape
    (out - frames).pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_release_sizes():
    counts = {}
    for name in ("wan2.2", "wan2.2-light-50", "wan2.2-light-75"):
        with torch.device("meta"):
            model = WanVAE(VAE_PRESETS[name])
        counts[name] = (
            sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.decoder.parameters()),
        )
    assert counts["wan2.2"][0] == 704_688_668  # the released Wan2.2 VAE: ~705M
    assert counts["wan2.2-light-50"][1] == 139_128_972  # MG-LightVAE decoders: 139M, 35M
    assert counts["wan2.2-light-75"][1] == 34_965_580


def test_bad_frame_counts_say_so():
    model = WanVAE(VAE_PRESETS["tiny"])
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        model.encode(torch.zeros(1, 3, 4, 32, 32))


def test_every_cpu_convolution_mode_decodes_and_trains_as_pytorch():
    """The fast CPU routes (time folded into 2D convolutions; oneDNN's 3D kernel) give
    PyTorch's own convolution's outputs, and the frames route its gradients too."""
    import matrixgame.models.vae as vae_module

    torch.manual_seed(0)
    vae = WanVAE(VAE_PRESETS["tiny"]).eval()
    z = torch.randn(1, 16, 3, 2, 3)
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    outs, grads, default = {}, {}, vae_module.CPU_CONV3D
    try:
        for mode in vae_module.CPU_CONV3D_MODES:
            vae_module.CPU_CONV3D = mode
            with torch.no_grad():
                outs[mode] = vae.decode(z)
            vae.zero_grad()
            vae.decode(vae.encode(x)).square().mean().backward()
            grads[mode] = torch.cat([p.grad.flatten() for p in vae.parameters()])
    finally:
        vae_module.CPU_CONV3D = default
    for mode in ("frames", "onednn"):
        torch.testing.assert_close(outs[mode], outs["pytorch"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grads[mode], grads["pytorch"], atol=1e-5, rtol=1e-4)


def test_frames_conv3d_equals_conv3d_with_strides_and_groups():
    from matrixgame.models.vae import frames_conv3d

    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 11, 10)
    for kt, stride, groups in ((3, (1, 1, 1), 1), (3, (2, 1, 1), 1), (1, (1, 2, 2), 1),
                               (3, (1, 2, 2), 2)):  # fmt: skip
        w = torch.randn(16, 8 // groups, kt, 3, 3)
        b = torch.randn(16)
        want = torch.nn.functional.conv3d(x, w, b, stride, groups=groups)
        torch.testing.assert_close(frames_conv3d(x, w, b, stride, groups), want,
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
