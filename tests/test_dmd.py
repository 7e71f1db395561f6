"""DMD losses: the exact gradient they carry, what receives it, and a 2-D toy in which DMD,
against an exact Gaussian-mixture teacher, moves a one-step generator that starts on one mode
onto every mode of the mixture."""

import copy

import pytest
import torch
from torch import nn

from matrixgame.diffusion.flow_matching import add_noise, predicted_clean
from matrixgame.diffusion.samplers import sample_euler, sigma_schedule
from matrixgame.distill.dmd import (
    DMDConfig,
    critic_loss,
    dmd_loss,
    regression_loss,
    sample_dmd_sigma,
)

Tensor = torch.Tensor

# Four well-separated isotropic modes, equal weights.
MEANS = torch.tensor([[2.0, 2.0], [2.0, -2.0], [-2.0, 2.0], [-2.0, -2.0]])
STD = 0.3


def gmm_clean(x_s: Tensor, sigma: Tensor) -> Tensor:
    """Exact E[x0 | x_s] ``[B, 2]`` of the mixture under x_s = (1 - s) x0 + s eps.

    Given mode k, x_s ~ N((1 - s) mu_k, var I) with var = (1 - s)^2 std^2 + s^2, and
    E[x0 | x_s, k] = mu_k + (1 - s) std^2 / var (x_s - (1 - s) mu_k); the modes are weighted
    by their posterior responsibilities softmax_k(-|x_s - (1 - s) mu_k|^2 / (2 var)).
    """
    s = sigma.to(x_s)[:, None]  # [B, 1]
    a = 1 - s
    var = a**2 * STD**2 + s**2
    means = MEANS.to(x_s)
    diff = x_s[:, None, :] - a[:, :, None] * means  # [B, K, 2]
    resp = torch.softmax(-diff.pow(2).sum(-1) / (2 * var), dim=1)  # [B, K]
    posterior = means + (a * STD**2 / var)[:, :, None] * diff  # [B, K, 2]
    return (resp[:, :, None] * posterior).sum(1)


def gmm_velocity(x_s: Tensor, sigma: Tensor) -> Tensor:
    """The exact teacher: v = E[eps - x0 | x_s] = (x_s - E[x0 | x_s]) / s, since
    eps - x0 = (x_s - x0) / s on the noise path."""
    return (x_s - gmm_clean(x_s, sigma)) / sigma.to(x_s)[:, None]


def sample_gmm(n: int, g: torch.Generator) -> Tensor:
    """``[n, 2]`` samples, the modes in equal shares (stratified, for a steadier MMD)."""
    k = torch.arange(n) % len(MEANS)
    return MEANS[k] + STD * torch.randn(n, 2, generator=g)


def mmd(x: Tensor, y: Tensor, bandwidths=(0.2, 0.5, 1.0, 2.0)) -> float:
    """Squared maximum mean discrepancy (biased) with a sum of RBF kernels."""
    d2 = torch.cdist(torch.cat([x, y]), torch.cat([x, y])).pow(2)
    k = sum(torch.exp(-d2 / (2 * b**2)) for b in bandwidths)
    n = len(x)
    return float(k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean())


def mode_shares(x: Tensor) -> Tensor:
    """``[K]`` fraction of samples nearest each mode."""
    nearest = torch.cdist(x, MEANS).argmin(1)
    return torch.bincount(nearest, minlength=len(MEANS)).float() / len(x)


def mlp(inputs: int, hidden: int = 64) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.SiLU(),
        nn.Linear(hidden, hidden),
        nn.SiLU(),
        nn.Linear(hidden, hidden),
        nn.SiLU(),
        nn.Linear(hidden, 2),
    )


class VelocityMLP(nn.Module):
    """A 2-D velocity model ``(x_s [B, 2], sigma [B]) -> v [B, 2]`` (the critic)."""

    def __init__(self):
        super().__init__()
        self.net = mlp(3)

    def forward(self, x_s: Tensor, sigma: Tensor) -> Tensor:
        return self.net(torch.cat([x_s, sigma[:, None]], dim=1))


class OneStepGenerator(nn.Module):
    """``z [B, 2] -> x [B, 2]``: x = A z + b + mlp(z), starting as exactly mode 0 of the
    mixture (A = std I, b = mu_0, mlp zeroed). The linear path keeps the initial samples a
    full 2-D blob: from a point mass, a student first spreads along one line and can lose
    the modes off it."""

    def __init__(self):
        super().__init__()
        self.linear, self.net = nn.Linear(2, 2), mlp(2)
        with torch.no_grad():
            self.linear.weight.copy_(STD * torch.eye(2))
            self.linear.bias.copy_(MEANS[0])
            self.net[-1].weight.zero_()
            self.net[-1].bias.zero_()

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(z) + self.net(z)


class Affine(nn.Module):
    """v = W x_s + b sigma + shift: a velocity model with parameters, to see where gradients
    go; ``shift`` stands in for a condition."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(0.3 * torch.randn(dim, dim, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))

    def forward(self, x_s: Tensor, sigma: Tensor, shift: float = 0.0) -> Tensor:
        flat = x_s.flatten(1)  # [B, D]
        v = flat @ self.w.T + sigma[:, None] * self.b + shift
        return v.view_as(x_s)


def test_config_validation_and_update_ratio():
    cfg = DMDConfig()
    assert (cfg.min_sigma, cfg.max_sigma, cfg.guidance) == (0.02, 0.98, 1.0)
    assert [cfg.updates_student(i) for i in range(6)] == [True] + [False] * 4 + [True]
    bad = [
        {"shift": 0.0},
        {"min_sigma": 0.0},
        {"min_sigma": 0.5, "max_sigma": 0.5},
        {"max_sigma": 1.0},
        {"guidance": -1.0},
        {"guidance": float("nan")},
        {"student_every": 0},
        {"student_every": 2.0},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            DMDConfig(**kwargs)


def test_dmd_sigma_is_shifted_and_clamped():
    draws = sample_dmd_sigma(8192, DMDConfig(shift=5.0), torch.Generator().manual_seed(0))
    assert draws.shape == (8192,) and draws.min() >= 0.02 and draws.max() <= 0.98
    assert (draws == 0.98).any() and draws.mean() > 0.7  # shift 5 spends its draws near noise
    plain = sample_dmd_sigma(8192, DMDConfig(shift=1.0), torch.Generator().manual_seed(0))
    assert abs(float(plain.mean()) - 0.5) < 0.02
    again = sample_dmd_sigma(8192, DMDConfig(shift=5.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws, again)


def test_exact_gmm_velocity_matches_quadrature():
    # E[x0 | x_s] = int x0 p(x0) N(x_s; (1 - s) x0, s^2) dx0 / int p(x0) N(...) dx0 on a grid.
    g = torch.Generator().manual_seed(0)
    axis = torch.linspace(-4.5, 4.5, 451, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)  # [G, 2]
    prior = torch.exp(-torch.cdist(grid, MEANS.double()).pow(2) / (2 * STD**2)).sum(1)  # [G]
    for s in (0.2, 0.5, 0.9):
        sigma = torch.full((6,), s, dtype=torch.float64)
        x_s = add_noise(sample_gmm(6, g).double(), sigma, torch.randn(6, 2, generator=g).double())
        lik = torch.exp(-torch.cdist(x_s, (1 - s) * grid).pow(2) / (2 * s**2))  # [6, G]
        w = prior * lik
        x0_quad = (w @ grid) / w.sum(1, keepdim=True)
        torch.testing.assert_close(gmm_clean(x_s, sigma), x0_quad, atol=1e-6, rtol=0)
        torch.testing.assert_close(gmm_velocity(x_s, sigma), (x_s - x0_quad) / s, atol=1e-5, rtol=0)


def test_exact_gmm_velocity_transports_noise_onto_the_mixture():
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(1000, 2, generator=g)
    x = sample_euler(
        lambda x_s, s: gmm_velocity(x_s, torch.full((len(x_s),), s)), noise, sigma_schedule(100, 1)
    )
    assert mmd(x, sample_gmm(1000, g)) < 0.015
    nearest = torch.cdist(x, MEANS).argmin(1)
    for k, mean in enumerate(MEANS):
        mode = x[nearest == k]
        assert abs(len(mode) / len(x) - 0.25) < 0.04
        assert (mode.mean(0) - mean).abs().max() < 0.06
        assert (mode.std(0) - STD).abs().max() < 0.03


def test_dmd_gradient_is_the_normalised_x0_difference():
    g = torch.Generator().manual_seed(0)
    teacher, critic = Affine(12, seed=1), Affine(12, seed=2)
    x = torch.randn(3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(3, 4, 3, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    loss, logs = dmd_loss(x, teacher, critic, sigma, noise, {})
    loss.backward()

    with torch.no_grad():
        x_s = add_noise(x, sigma, noise)
        x0_teacher = predicted_clean(x_s, sigma, teacher(x_s, sigma))
        x0_critic = predicted_clean(x_s, sigma, critic(x_s, sigma))
        normaliser = (x - x0_teacher).abs().mean(dim=(1, 2), keepdim=True)
        grad = (x0_critic - x0_teacher) / normaliser
    torch.testing.assert_close(x.grad, grad / x.numel(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(loss, 0.5 * grad.pow(2).mean())
    assert logs["grad_norm"] == pytest.approx(float(grad.abs().mean()))
    assert logs["normaliser"] == pytest.approx(float(normaliser.mean()))
    for p in [*teacher.parameters(), *critic.parameters()]:
        assert p.grad is None


def test_teacher_guidance_one_is_off_and_three_extrapolates():
    g = torch.Generator().manual_seed(0)
    teacher, critic = Affine(6, seed=1), Affine(6, seed=2)
    x = torch.randn(2, 6, generator=g, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(2, 6, generator=g, dtype=torch.float64)
    sigma = torch.tensor([0.3, 0.7], dtype=torch.float64)
    cond, null = {"shift": 0.5}, {"shift": -0.5}

    def x_grad(**kwargs) -> Tensor:
        x.grad = None
        dmd_loss(x, teacher, critic, sigma, noise, cond, **kwargs)[0].backward()
        return x.grad.clone()

    torch.testing.assert_close(x_grad(null_cond=null, guidance=1.0), x_grad())

    # guidance 3: x0 = x0_uncond + 3 (x0_cond - x0_uncond), and the normaliser uses it too.
    with torch.no_grad():
        x_s = add_noise(x, sigma, noise)
        x0_c = predicted_clean(x_s, sigma, teacher(x_s, sigma, **cond))
        x0_u = predicted_clean(x_s, sigma, teacher(x_s, sigma, **null))
        x0_teacher = x0_u + 3.0 * (x0_c - x0_u)
        x0_critic = predicted_clean(x_s, sigma, critic(x_s, sigma, **cond))
        normaliser = (x - x0_teacher).abs().mean(dim=1, keepdim=True)
        expected = (x0_critic - x0_teacher) / normaliser / x.numel()
    torch.testing.assert_close(x_grad(null_cond=null, guidance=3.0), expected)
    with pytest.raises(ValueError, match="null_cond"):
        dmd_loss(x, teacher, critic, sigma, noise, cond, guidance=3.0)


def test_critic_loss_is_flow_matching_and_spares_the_student():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    student, critic = OneStepGenerator(), VelocityMLP()
    x = student(torch.randn(16, 2, generator=g))
    noise, sigma = torch.randn(16, 2, generator=g), torch.rand(16, generator=g)
    loss, logs = critic_loss(critic, x, sigma, noise, {})
    loss.backward()
    expected = (critic(add_noise(x, sigma, noise), sigma) - (noise - x)).pow(2).mean()
    torch.testing.assert_close(loss, expected)
    assert logs["loss"] == pytest.approx(float(loss.detach()))
    assert all(p.grad is None for p in student.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())


def train_dmd_toy(seed: int, steps: int = 2000) -> tuple[Tensor, Tensor, Tensor]:
    """Distil the exact mixture teacher into a one-step generator with DMD; returns
    (samples before, samples of the student's EMA after, true samples), each ``[1000, 2]``."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    batch, warmup = 256, 200
    # No timestep shift: a 2-D toy has no resolution to compensate for.
    cfg = DMDConfig(shift=1.0, student_every=2)
    student, critic = OneStepGenerator(), VelocityMLP()
    # Judged by its EMA (0.99, as Self-Forcing): that averages out the student-critic game's
    # oscillation, which otherwise leaves the modes' centres wandering by a few tenths.
    ema = copy.deepcopy(student)
    adam = {"lr": 2e-3, "betas": (0.0, 0.999)}  # Self-Forcing's betas
    student_opt = torch.optim.Adam(student.parameters(), **adam)
    critic_opt = torch.optim.Adam(critic.parameters(), **adam)

    def randn() -> Tensor:
        return torch.randn(batch, 2, generator=g)

    def critic_step():
        with torch.no_grad():
            x = student(randn())
        loss, _ = critic_loss(critic, x, sample_dmd_sigma(batch, cfg, g), randn(), {})
        critic_opt.zero_grad()
        loss.backward()
        critic_opt.step()

    def student_step():
        sigma = sample_dmd_sigma(batch, cfg, g)
        loss, _ = dmd_loss(student(randn()), gmm_velocity, critic, sigma, randn(), {})
        student_opt.zero_grad()
        loss.backward()
        student_opt.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), student.parameters(), strict=True):
                e.lerp_(p, 0.01)

    z_eval, real = torch.randn(1000, 2, generator=g), sample_gmm(1000, g)
    with torch.no_grad():
        before = student(z_eval)
    for _ in range(warmup):  # the critic starts as a flow model of the initial student
        critic_step()
    for step in range(steps):
        if cfg.updates_student(step):
            student_step()
        critic_step()
    with torch.no_grad():
        return before, ema(z_eval), real


def test_dmd_moves_a_one_mode_generator_onto_every_mode():
    before, after, real = train_dmd_toy(seed=0)
    mmd_before, mmd_after, shares = mmd(before, real), mmd(after, real), mode_shares(after)
    print(f"MMD {mmd_before:.4f} -> {mmd_after:.4f}, mode shares {shares.tolist()}")
    assert mode_shares(before)[0] > 0.99  # the student starts on mode 0 alone
    assert mmd_after < 0.08 and mmd_after < mmd_before / 20, (mmd_before, mmd_after)
    assert shares.min() >= 0.15, shares


def test_regression_gradient_is_the_distance_to_the_teacher_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    loss, logs = regression_loss(x, target)
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * (x - target).detach() / x.numel())
    assert target.grad is None and logs["loss"] == pytest.approx(float((x - target).pow(2).mean()))
    with pytest.raises(ValueError, match="regression"):
        DMDConfig(regression=-1.0)


def test_regression_alone_teaches_a_one_step_generator_the_teachers_ode_map():
    """DMD's regression term: a one-step generator that starts on one mode learns the exact
    teacher's noise-to-sample map (Euler on the probability-flow ODE) from the same noise,
    and with it every mode of the mixture."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sigmas = sigma_schedule(20, 1.0)

    def ode(z: Tensor) -> Tensor:
        return sample_euler(lambda x_s, s: gmm_velocity(x_s, torch.full((len(x_s),), s)), z, sigmas)

    generator = OneStepGenerator()
    opt = torch.optim.Adam(generator.parameters(), lr=3e-3)
    for _ in range(600):
        z = torch.randn(256, 2, generator=g)
        loss, _ = regression_loss(generator(z), ode(z))
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = torch.randn(2000, 2, generator=g)
    with torch.no_grad():
        x, target = generator(z), ode(z)
    error = (x - target).norm(dim=1)
    print(f"median distance {float(error.median()):.3f}, MMD {mmd(x, sample_gmm(2000, g)):.4f}")
    # the ODE map itself, not just its distribution (paired at random, samples lie ~4 apart)
    assert float(error.median()) < 0.15
    assert mmd(x, sample_gmm(2000, g)) < 0.02
    assert mode_shares(x).min() >= 0.2
