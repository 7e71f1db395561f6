"""LPIPS and FVD with user-supplied weights: key layouts, loading, and the metrics' basic
behaviour, all with seeded random networks (no real weights exist on the test machine)."""

import math

import pytest
import torch
from safetensors.torch import save_file

from matrixgame.eval.external import (
    I3D,
    LPIPS,
    fvd,
    fvd_features,
    load_i3d,
    load_lpips,
    lpips_distance,
)
from matrixgame.eval.metrics import frechet_distance

# lpips.LPIPS(net='alex').state_dict() layout, read from richzhang/PerceptualSimilarity
# lpips/lpips.py and lpips/pretrained_networks.py (HEAD 082bb24f84c091ea94de2867d34c4544f68e0963);
# the package's extra ModuleList aliases `lins.K.*` are folded into `linK.*` on load.
LPIPS_KEYS = [
    "scaling_layer.shift",
    "scaling_layer.scale",
    "net.slice1.0.weight",
    "net.slice1.0.bias",
    "net.slice2.3.weight",
    "net.slice2.3.bias",
    "net.slice3.6.weight",
    "net.slice3.6.bias",
    "net.slice4.8.weight",
    "net.slice4.8.bias",
    "net.slice5.10.weight",
    "net.slice5.10.bias",
    "lin0.model.1.weight",
    "lin1.model.1.weight",
    "lin2.model.1.weight",
    "lin3.model.1.weight",
    "lin4.model.1.weight",
]

# piergiaj/pytorch-i3d pytorch_i3d.py, as of commit eb3580bc5a9f3f7dd07d3162ed1d9674581ed3a5
# (the last to touch it; repository HEAD 05783d11f9632b25fe3d50395a9c9bb51f848d6d): 3 stem
# Unit3D + 9 Inception modules x 6 Unit3D = 57 conv+BN units of 6 tensors each (conv weight,
# BN weight, bias, running_mean, running_var, num_batches_tracked), plus the logits conv's
# weight and bias: 57 * 6 + 2 = 344.
I3D_TENSORS = 344


def _randomise(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded random values everywhere, BatchNorm statistics included, so that a load that
    silently kept defaults would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.is_floating_point() or name.startswith("scaling_layer"):
                continue
            if name.endswith(("running_var", "bn.weight")):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.startswith("lin"):
                # LPIPS's learned weights are non-negative, so distances are too.
                t.copy_(torch.rand(t.shape, generator=g) * 0.1)
            elif t.ndim > 1:  # conv weights, He-scaled so activations neither die nor blow up
                t.copy_(torch.randn(t.shape, generator=g) * (2 / t[0].numel()) ** 0.5)
            else:  # biases and running means
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return net.eval()


def _video(seed: int = 0, n: int = 0, t: int = 4, h: int = 64, w: int = 64) -> torch.Tensor:
    """A textured scene panning right, ``[T, H, W, 3]`` uint8 (``[n, T, H, W, 3]`` if n)."""
    g = torch.Generator().manual_seed(seed)
    count = max(n, 1)
    scene = torch.rand(count, 3, h // 8, (w + 2 * t) // 8, generator=g)
    scene = torch.nn.functional.interpolate(scene, scale_factor=8, mode="bilinear")
    scene = (scene * 255).to(torch.uint8).permute(0, 2, 3, 1)
    v = torch.stack([scene[:, :, 2 * i : 2 * i + w] for i in range(t)], dim=1)
    return v if n else v[0]


def _noisy(v: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (v.float() + torch.randn(v.shape, generator=g) * sigma).clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The inputs here are tiny, so threads only add synchronisation; on a busy 2-core
    machine OpenMP's barriers made each layer ~50x slower (2 s vs 0.04 s per I3D pass)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lpips_net() -> LPIPS:
    return _randomise(LPIPS(), seed=0)


@pytest.fixture(scope="module")
def i3d_net() -> I3D:
    return _randomise(I3D(), seed=0)


def _save(sd: dict[str, torch.Tensor], path) -> None:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)


# --- key layouts -------------------------------------------------------------------------


def test_lpips_keys_match_the_lpips_package():
    sd = LPIPS().state_dict()
    assert list(sd) == LPIPS_KEYS
    torch.testing.assert_close(
        sd["scaling_layer.shift"].flatten(), torch.tensor([-0.03, -0.088, -0.188])
    )
    torch.testing.assert_close(
        sd["scaling_layer.scale"].flatten(), torch.tensor([0.458, 0.448, 0.45])
    )
    assert sd["net.slice1.0.weight"].shape == (64, 3, 11, 11)
    assert sd["net.slice5.10.weight"].shape == (256, 256, 3, 3)
    assert [sd[f"lin{i}.model.1.weight"].shape[1] for i in range(5)] == [64, 192, 384, 256, 256]


def test_i3d_keys_match_pytorch_i3d(i3d_net):
    sd = i3d_net.state_dict()
    assert len(sd) == I3D_TENSORS
    for key in [
        "Conv3d_1a_7x7.conv3d.weight",
        "Conv3d_1a_7x7.bn.weight",
        "Conv3d_1a_7x7.bn.bias",
        "Conv3d_1a_7x7.bn.running_mean",
        "Conv3d_1a_7x7.bn.running_var",
        "Conv3d_1a_7x7.bn.num_batches_tracked",
        "Conv3d_2b_1x1.conv3d.weight",
        "Conv3d_2c_3x3.conv3d.weight",
        "Mixed_3b.b0.conv3d.weight",
        "Mixed_3b.b1a.conv3d.weight",
        "Mixed_3b.b1b.conv3d.weight",
        "Mixed_3b.b2a.conv3d.weight",
        "Mixed_3b.b2b.conv3d.weight",
        "Mixed_3b.b3b.conv3d.weight",
        "Mixed_5c.b3b.bn.running_var",
        "logits.conv3d.weight",
        "logits.conv3d.bias",
    ]:
        assert key in sd, key
    assert sd["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert sd["Mixed_4f.b1b.conv3d.weight"].shape == (320, 160, 3, 3, 3)
    assert sd["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)


# --- loading -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_lpips_round_trip(tmp_path, lpips_net, suffix):
    path = tmp_path / f"lpips{suffix}"
    _save(lpips_net.state_dict(), path)
    loaded = load_lpips(path)
    assert not loaded.training and all(p.dtype == torch.float32 for p in loaded.parameters())
    a, b = _video(0), _noisy(_video(0), 20)
    torch.testing.assert_close(lpips_distance(loaded, a, b), lpips_distance(lpips_net, a, b))


def test_lpips_loads_the_packages_own_state_dict_layout(tmp_path, lpips_net):
    # lpips >= 0.1.1 repeats each lin weight under lins.K (a ModuleList alias); files saved
    # from DataParallel carry a module. prefix.
    sd = lpips_net.state_dict()
    sd.update({f"lins.{i}.model.1.weight": sd[f"lin{i}.model.1.weight"] for i in range(5)})
    path = tmp_path / "lpips_package.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    a, b = _video(0), _noisy(_video(0), 20)
    torch.testing.assert_close(
        lpips_distance(load_lpips(path), a, b), lpips_distance(lpips_net, a, b)
    )


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_i3d_round_trip(tmp_path, i3d_net, suffix):
    path = tmp_path / f"i3d{suffix}"
    _save(i3d_net.state_dict(), path)
    loaded = load_i3d(path)
    assert not loaded.training
    video = _video(0, t=8, h=32, w=32)
    torch.testing.assert_close(
        fvd_features(loaded, video, size=32), fvd_features(i3d_net, video, size=32)
    )


def test_i3d_loads_a_file_from_before_num_batches_tracked(tmp_path, i3d_net):
    # rgb_imagenet.pt (2018) predates BatchNorm's num_batches_tracked buffer (PyTorch 0.4.1).
    sd = {k: v for k, v in i3d_net.state_dict().items() if "num_batches_tracked" not in k}
    assert len(sd) == I3D_TENSORS - 57
    path = tmp_path / "old.pt"
    torch.save(sd, path)
    video = _video(0, t=8, h=32, w=32)
    torch.testing.assert_close(
        fvd_features(load_i3d(path), video, size=32), fvd_features(i3d_net, video, size=32)
    )


def test_wrong_keys_raise_naming_them(tmp_path, lpips_net):
    sd = lpips_net.state_dict()
    sd["lin9.model.1.weight"] = sd.pop("lin4.model.1.weight")
    path = tmp_path / "wrong.safetensors"
    _save(sd, path)
    with pytest.raises(ValueError, match=r"missing keys: lin4\.model\.1\.weight") as err:
        load_lpips(path)
    assert str(path) in str(err.value) and "lin9.model.1.weight" in str(err.value)


def test_bad_files_raise_value_errors(tmp_path, lpips_net):
    with pytest.raises(ValueError, match="not found"):
        load_i3d(tmp_path / "absent.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="plain state dict"):
        load_lpips(tmp_path / "list.pt")
    sd = lpips_net.state_dict()
    sd["net.slice1.0.bias"] = torch.zeros(3)
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="shape.pt"):
        load_lpips(tmp_path / "shape.pt")


# --- the metrics -------------------------------------------------------------------------


def test_lpips_is_zero_for_identical_videos_and_grows_with_noise(lpips_net):
    v = _video(0)
    assert lpips_distance(lpips_net, v, v).abs().max() == 0
    mild, strong = (lpips_distance(lpips_net, _noisy(v, s), v) for s in (8, 40))
    assert mild.shape == (len(v),)
    assert (mild > 0).all() and (strong > mild).all()
    shifted = torch.roll(v, shifts=5, dims=2)
    assert (lpips_distance(lpips_net, shifted, v) > 0).all()
    # float input in [-1, 1] means the same as uint8
    as_float = v.float() / 127.5 - 1
    torch.testing.assert_close(
        lpips_distance(lpips_net, as_float, _noisy(v, 8)),
        lpips_distance(lpips_net, v, _noisy(v, 8)),
    )


def test_fvd_features_shape_and_input_forms(i3d_net):
    videos = _video(0, n=3, t=8, h=32, w=32)
    feats = fvd_features(i3d_net, videos, size=32, batch_size=2)
    assert feats.shape == (3, 400) and torch.isfinite(feats).all()
    from_list = fvd_features(i3d_net, [videos[0], videos[1:]], size=32)
    torch.testing.assert_close(from_list, feats, rtol=1e-4, atol=1e-5)


def test_fvd_end_to_end(i3d_net):
    real = _video(0, n=3, t=8, h=32, w=32)
    same = fvd_features(i3d_net, real, size=64)  # 32 -> 64: the resize path runs
    # ~0 up to the matrix square root's rounding on a rank-2 covariance (trace ~11 here)
    assert abs(frechet_distance(same, same)) < 1e-3
    brighter = (real.int() + 60).clamp(max=255).to(torch.uint8)
    d_bright = fvd(i3d_net, brighter, real, size=64)
    assert math.isfinite(d_bright) and d_bright >= 0
    assert d_bright > 1
