import math

import torch

from matrixgame.eval.metrics import (
    blur,
    copy_last,
    is_static,
    psnr,
    sharpness_ratio,
    ssim,
)


def video(seed=0, t=6, h=32, w=40):
    """A textured scene panning right by 2 pixels a frame."""
    g = torch.Generator().manual_seed(seed)
    scene = (torch.rand(h, w + 2 * t, 3, generator=g) * 255).to(torch.uint8)
    return torch.stack([scene[:, 2 * i : 2 * i + w] for i in range(t)])


def test_identical_videos_score_perfectly():
    v = video()
    assert all(math.isinf(x) for x in psnr(v, v).tolist())
    torch.testing.assert_close(ssim(v, v), torch.ones(len(v)))
    torch.testing.assert_close(sharpness_ratio(v, v), torch.ones(len(v)))


def test_a_shifted_video_scores_lower():
    v = video()
    shifted = torch.roll(v, shifts=3, dims=2)
    assert (psnr(shifted, v) < 30).all() and (ssim(shifted, v) < 0.5).all()


def test_blur_is_caught_by_sharpness_not_by_psnr_alone():
    v = video()
    blurry = blur(v)
    assert (sharpness_ratio(blurry, v) < 0.3).all()
    # predicting frames 1.. from frame 0: a blurred copy beats copying on PSNR alone, the
    # sharpness ratio exposes it
    future, last = v[1:], copy_last(v[:1], len(v) - 1)
    assert psnr(blur(last), future).mean() > psnr(last, future).mean()
    assert sharpness_ratio(blur(last), future).mean() < 0.3 < sharpness_ratio(last, future).mean()


def test_static_gate():
    v = video()
    assert is_static(copy_last(v, 8)) and not is_static(v)


def test_ssim_matches_scikit_image():
    # skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    # use_sample_covariance=False, data_range=1.0, channel_axis=2) on these arrays gave
    # 0.9440482421883108 (scikit-image, computed once in a scratch environment)
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((32, 40, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    a, b = (torch.tensor(x).float()[None] * 2 - 1 for x in (a, b))
    assert abs(float(ssim(b, a)[0]) - 0.9440482421883108) < 1e-4


def test_frechet_distance_matches_scipy():
    import numpy as np
    from scipy import linalg

    from matrixgame.eval.metrics import frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 8, generator=g)
    b = torch.randn(150, 8, generator=g) * 1.5 + 0.3
    ca, cb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    mean = float(((a.mean(0) - b.mean(0)) ** 2).sum())
    ref = mean + np.trace(ca) + np.trace(cb) - 2 * np.trace(linalg.sqrtm(ca @ cb).real)
    assert abs(frechet_distance(a, b) - ref) < 1e-6
    assert abs(frechet_distance(a, a)) < 1e-9
