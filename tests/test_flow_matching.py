import torch

from matrixgame.diffusion.flow_matching import (
    add_noise,
    flow_matching_loss,
    predicted_clean,
    sample_sigma,
    shift_sigma,
)
from matrixgame.diffusion.samplers import sample_euler, sigma_schedule


def test_noise_path_and_inverse():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 2, 2, generator=g), torch.randn(2, 4, 3, 2, 2, generator=g)
    torch.testing.assert_close(add_noise(x0, torch.zeros(2), eps), x0)
    torch.testing.assert_close(add_noise(x0, torch.ones(2), eps), eps)
    sigma = torch.tensor([0.3, 0.8])
    x_s = add_noise(x0, sigma, eps)
    torch.testing.assert_close(predicted_clean(x_s, sigma, eps - x0), x0)


def test_time_shift():
    s = torch.linspace(0, 1, 11)
    torch.testing.assert_close(shift_sigma(s, 1.0), s)
    shifted = shift_sigma(s, 5.0)
    assert (shifted[1:-1] > s[1:-1]).all() and shifted[0] == 0 and shifted[-1] == 1
    draws = sample_sigma(4096, 3.0, torch.Generator().manual_seed(0))
    assert draws.min() > 0 and draws.max() < 1 and draws.mean() > 0.6  # biased to noise


def test_loss_counts_current_latents_only():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(1, 4, 5, 2, 2, generator=g), torch.randn(1, 4, 5, 2, 2, generator=g)
    perfect = eps - x0
    loss, logs = flow_matching_loss(perfect, x0, eps, slice(2, None))
    assert loss == 0 and logs["target_rms"] > 0
    wrong_past = perfect.clone()
    wrong_past[:, :, :2] += 10.0  # past latents are context: not scored
    assert flow_matching_loss(wrong_past, x0, eps, slice(2, None))[0] == 0
    wrong_now = perfect.clone()
    wrong_now[:, :, 2:] += 1.0
    assert abs(float(flow_matching_loss(wrong_now, x0, eps, slice(2, None))[0]) - 1.0) < 1e-6


def test_euler_follows_a_straight_flow_to_its_end():
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    sigmas = sigma_schedule(3, shift=5.0)
    assert sigmas[0] == 1 and sigmas[-1] == 0 and len(sigmas) == 4

    def velocity(x, s):  # the exact field of the straight path from eps to x0
        return (x - x0) / s

    torch.testing.assert_close(sample_euler(velocity, eps.clone(), sigmas), x0)
