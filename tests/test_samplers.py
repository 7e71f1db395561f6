import math
from itertools import pairwise

import pytest
import torch

from matrixgame.diffusion.flow_matching import shift_sigma
from matrixgame.diffusion.samplers import (
    SAMPLERS,
    distilled_schedule,
    get_sampler,
    sample_euler,
    sample_renoise,
    sample_unipc,
    sigma_schedule,
)

# Data x_0 ~ N(mu, c^2) per coordinate: the ideal velocity is analytic, and the ODE carries the
# noise eps at sigma 1 to exactly mu + c eps (the flow keeps the standardised value).
MU = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
C = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64)


def gaussian_velocity(x, s):
    var = (1 - s) ** 2 * C**2 + s**2  # Var[x_s]
    x0 = MU + (1 - s) * C**2 * (x - (1 - s) * MU) / var  # E[x_0 | x_s]
    return (x - x0) / s


def gaussian_errors(sampler, steps, **kw):
    eps = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sampler(gaussian_velocity, eps, sigma_schedule(steps, shift=1.0), **kw)
    return (out - (MU + C * eps)).abs().max().item()


def test_euler_and_unipc_converge_to_the_exact_endpoint():
    euler = [gaussian_errors(sample_euler, n) for n in (20, 40, 80)]
    unipc = [gaussian_errors(sample_unipc, n) for n in (20, 40, 80)]
    assert euler[-1] < 0.07 and unipc[-1] < 1e-3
    for coarse, fine in pairwise(euler):
        assert 1.8 < coarse / fine < 2.2  # first order
    for coarse, fine in pairwise(unipc):
        assert coarse / fine > 3  # second order: the last step to 0 is first order in lambda
    assert math.isfinite(gaussian_errors(sample_unipc, 20, order=3))  # sigma = 1 is no history


def test_unipc_is_markedly_more_accurate_than_euler_at_few_steps():
    # Measured: 5 steps 0.91 vs 0.15, 10 steps 0.48 vs 0.018.
    assert gaussian_errors(sample_euler, 5) > 4 * gaussian_errors(sample_unipc, 5)
    assert gaussian_errors(sample_euler, 10) > 10 * gaussian_errors(sample_unipc, 10)


def test_unipc_first_order_predictor_is_euler():
    # DDIM in x_0 form, (t/s) x - alpha_t (e^-h - 1) x0, is x + (t - s) v for alpha = 1 - sigma.
    def velocity(x, s):
        return torch.tanh(3 * x) + s * x

    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for sigmas in (sigma_schedule(7, 5.0), torch.tensor([0.9, 0.6, 0.3, 0.1])):
        torch.testing.assert_close(
            sample_unipc(velocity, x, sigmas, order=1, corrector=False),
            sample_euler(velocity, x, sigmas),
            rtol=0,
            atol=1e-12,
        )
    # With two steps to 0 the corrected point is never used: the final step lands on the data
    # prediction made at the uncorrected Euler point, so every order equals Euler.
    sigmas = torch.tensor([1.0, 0.4, 0.0])
    for order in (1, 2, 3):
        torch.testing.assert_close(
            sample_unipc(velocity, x, sigmas, order=order), sample_euler(velocity, x, sigmas)
        )


def test_unipc_is_exact_on_a_single_data_point():
    x0 = torch.tensor([0.3, -1.2], dtype=torch.float64)
    eps = torch.tensor([1.5, 0.7], dtype=torch.float64)
    for order in (1, 2, 3):
        out = sample_unipc(lambda x, s: (x - x0) / s, eps, sigma_schedule(4, 5.0), order=order)
        torch.testing.assert_close(out, x0)


def test_unipc_matches_hand_derived_steps():
    # sigmas 1/2, 1/3, 1/5, 1/9 have lambda = log((1 - s) / s) = 0, ln 2, 2 ln 2, 3 ln 2: every
    # step has h = ln 2, so e^-h - 1 = B(h) = -1/2. The model predicts x_0 = 0, 1, 3 there.
    table = {1 / 2: 0.0, 1 / 3: 1.0, 1 / 5: 3.0}
    calls = []

    def velocity(x, s):
        calls.append(x.item())
        return (x - table[min(table, key=lambda k: abs(k - s))]) / s

    out = sample_unipc(
        velocity,
        torch.tensor([1.0], dtype=torch.float64),
        1 / torch.tensor([2.0, 3.0, 5.0, 9.0], dtype=torch.float64),
    )
    # Step 0, UniP-1 (DDIM): x = (2/3) 1 - (2/3)(-1/2) 0 = 2/3.
    # Step 1, UniC-1 with rho = 1/2: x = 2/3 - (2/3)(-1/2)(1/2)(1 - 0) = 5/6.
    #   UniP-2, r = (0 - ln 2) / ln 2 = -1, D = (0 - 1) / -1 = 1, rho = 1/2:
    #   x = (3/5)(5/6) - (4/5)(-1/2) 1 - (4/5)(-1/2)(1/2) 1 = 11/10.
    # Step 2, UniC-2: rho solves [[1, 1], [-1, 1]] rho = (b1, b2), b_i = i! hh phi_{i+1}(hh) / B
    #   with hh = -ln 2: b1 = 2 - 1/ln2, b2 = 2 - 4/ln2 + 2/ln2^2; D = (1, 3 - 1):
    #   x = 1/2 + 2/5 + (2/5)(rho1 + 2 rho2) = 9/10 + (2/5)(3 b1 + b2) / 2.
    #   Last step, UniP-1 to 1/9: x = (5/9) x + (8/9)(1/2) 3.
    l2 = math.log(2)
    b1, b2 = 2 - 1 / l2, 2 - 4 / l2 + 2 / l2**2
    x2 = 9 / 10 + (2 / 5) * (3 * b1 + b2) / 2
    assert calls == pytest.approx([1.0, 2 / 3, 11 / 10], abs=1e-12)  # uncorrected points
    assert out.item() == pytest.approx(5 / 9 * x2 + 4 / 3, abs=1e-12)  # 2.0626525...


def test_distilled_schedule_reproduces_the_warped_timesteps():
    sigmas = distilled_schedule()
    timesteps = (sigmas * 1000).tolist()
    assert timesteps == pytest.approx([1000.0, 908.8, 714.0, 0.0], abs=0.1)
    # entry 1000 - t of the shifted 1000-step training schedule, exactly as Matrix-Game 2.0 indexes
    training = shift_sigma(torch.linspace(1.0, 0.0, 1001)[:-1], 5.0)
    torch.testing.assert_close(sigmas[:3], training[[0, 334, 667]])
    assert abs(sigma_schedule(3, 5.0)[1].item() * 1000 - 908.8) > 0.2  # 909.1: not the same


def test_registry_and_argument_errors():
    assert get_sampler("euler") is sample_euler and get_sampler("unipc") is sample_unipc
    assert set(SAMPLERS) == {"euler", "unipc", "renoise"}
    with pytest.raises(ValueError, match="euler, renoise, unipc"):
        get_sampler("heun")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        sigma_schedule(0)
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="order"):
        sample_unipc(lambda x, s: x, x, sigma_schedule(3), order=0)
    with pytest.raises(ValueError, match="fall strictly"):
        sample_unipc(lambda x, s: x, x, torch.tensor([1.0, 0.5, 0.5, 0.0]))


def test_renoise_sampling_lands_on_the_data_and_redraws_noise_between_levels():
    x0 = torch.tensor([0.3, -1.2, 2.0])
    exact = lambda x, s: (x - x0) / s  # noqa: E731 - a single data point's velocity
    eps = torch.randn(3, generator=torch.Generator().manual_seed(0))
    for levels in (sigma_schedule(1), distilled_schedule(), sigma_schedule(3, 5.0)):
        out = sample_renoise(exact, eps, levels, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(out, x0, atol=1e-6)
    seen = []

    def record(x, s):
        seen.append((s, x.clone()))
        return torch.zeros_like(x)  # predicts x_0 = x: the re-noised input shows the noise

    g = torch.Generator().manual_seed(2)
    sample_renoise(record, torch.zeros(1000), torch.tensor([1.0, 0.5, 0.0]), generator=g)
    (_, first), (s, second) = seen
    assert s == 0.5 and abs(float(second.std()) - 0.5) < 0.05  # (1 - s) 0 + s eps
    assert not torch.equal(first, second)
