"""Langevin samplers: plain overdamped Langevin, annealed Langevin (NCSN) and the per-dimension AR-CSM
sampler."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hybrids.models.analytic import GaussianDataModel
from hybrids.models.base import ARConditionalScoreModel
from hybrids.models.made import MADEConditionalScore
from hybrids.samplers.langevin import (annealed_langevin_sample, annealed_noise_levels, ar_langevin_sample,
                                       langevin_sample)
from hybrids.sdes import VESDE, VPSDE

D = 3
A = torch.tensor([[0.0, 0.0, 0.0], [0.7, 0.0, 0.0], [-0.4, 0.5, 0.0]], dtype=torch.float64)
MU = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
V = torch.tensor([1.0, 0.6, 0.8], dtype=torch.float64)


def _moments():
    """Mean and covariance of x = MU + A x + sqrt(V) eps: (I - A)^{-1} MU, L diag(V) L^T."""
    L = torch.linalg.inv(torch.eye(D, dtype=torch.float64) - A)
    return L @ MU, L @ torch.diag(V) @ L.T


class ExactARScore(ARConditionalScoreModel):
    """Exact univariate scores of the Gaussian AR target, with a context counter."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.context_calls = 0

    def context(self, x, t=None):
        self.context_calls += 1
        mean = MU + x @ A.T
        return torch.stack([mean, V.expand_as(mean)], dim=-1)

    def head(self, x_d, c, t=None):
        return -(x_d - c[..., 0]) / c[..., 1]


def _check_moments(x, mean, cov, n):
    emp_mean, emp_cov = x.mean(0), torch.cov(x.T)
    se_mean = (torch.diag(cov) / n).sqrt()
    assert torch.all((emp_mean - mean).abs() < 5 * se_mean), (emp_mean, mean)
    # se of a covariance entry: sqrt((S_ii S_jj + S_ij^2) / n); allow 5 se plus the ULA bias
    # (stationary variance v / (1 - eps / (2 v)) for a conditional of variance v, < 1% here).
    se_cov = ((torch.outer(torch.diag(cov), torch.diag(cov)) + cov**2) / n).sqrt()
    assert torch.all((emp_cov - cov).abs() < 5 * se_cov + 0.01 * cov.abs().max()), (emp_cov, cov)


def test_ar_langevin_with_exact_scores_reproduces_mean_and_covariance():
    n = 20_000
    model = ExactARScore()
    x = ar_langevin_sample(model, (n, D), n_steps=1500, step_size=0.01,
                           generator=torch.Generator().manual_seed(0))
    assert model.context_calls == D  # c_d computed once per dimension
    _check_moments(x, *_moments(), n)


def test_plain_langevin_reproduces_a_gaussian():
    n = 20_000
    mean, cov = _moments()
    prec = torch.linalg.inv(cov)
    x0 = torch.zeros(n, D, dtype=torch.float64)
    x = langevin_sample(lambda y: -(y - mean) @ prec, x0, n_steps=1500, step_size=0.01,
                        generator=torch.Generator().manual_seed(1))
    _check_moments(x, mean, cov, n)


def test_ar_sampler_runs_a_made_model_on_images_and_respects_init_and_generator():
    model = MADEConditionalScore(4, hidden=(8,), context_features=2, head_hidden=(4,))
    shape = (3, 1, 2, 2)
    a = ar_langevin_sample(model, shape, n_steps=3, step_size=0.01,
                           generator=torch.Generator().manual_seed(5))
    b = ar_langevin_sample(model, shape, n_steps=3, step_size=0.01,
                           generator=torch.Generator().manual_seed(5))
    assert a.shape == shape and torch.equal(a, b)
    init = torch.zeros(shape)
    c = ar_langevin_sample(model, shape, n_steps=1, step_size=1e-12, init=init,
                           generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(c, init, atol=1e-5, rtol=0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n_steps"):
        langevin_sample(lambda y: -y, torch.zeros(2, 2), n_steps=0, step_size=0.1)
    with pytest.raises(ValueError, match="step_size"):
        ar_langevin_sample(ExactARScore(), (2, D), n_steps=1, step_size=0.0)
    with pytest.raises(TypeError, match="needs an ARConditionalScoreModel.*got Linear"):
        ar_langevin_sample(nn.Linear(2, 2), (2, 2), n_steps=1, step_size=0.1)
    with pytest.raises(ValueError, match="init"):
        ar_langevin_sample(ExactARScore(), (2, D), n_steps=1, step_size=0.1, init=torch.zeros(3, D))


class ReversedExactARScore(ExactARScore):
    """The same AR target over the sequence s = reversed(x): the sampler must follow this order."""

    def to_sequence(self, x):
        return x.reshape(x.shape[0], -1).flip(1)

    def from_sequence(self, s, shape=None):
        return s.flip(1).reshape(s.shape[0], 1, D)


def test_ar_langevin_follows_the_models_variable_order():
    n = 20_000
    x = ar_langevin_sample(ReversedExactARScore(), (n, 1, D), n_steps=1500, step_size=0.01,
                           generator=torch.Generator().manual_seed(3))
    assert x.shape == (n, 1, D)
    _check_moments(x.reshape(n, D).flip(1), *_moments(), n)


class DuckTypedARScore(nn.Module):
    """context/head methods without the declared contract: no longer recognised by attributes."""

    def __init__(self):
        super().__init__()
        self.inner = ExactARScore()

    def context(self, x, t=None):
        return self.inner.context(x, t)

    def head(self, x_d, c, t=None):
        return self.inner.head(x_d, c, t)


def test_ar_langevin_rejects_models_without_the_declared_contract():
    with pytest.raises(TypeError, match="ARConditionalScoreModel.*DuckTypedARScore"):
        ar_langevin_sample(DuckTypedARScore(), (2, D), n_steps=1, step_size=0.1)


def test_ar_langevin_draws_are_those_of_the_generator_in_order():
    """Known answer with a zero head: x = init draws + sqrt(2 eps) (sum of the later draws), the
    N(0, 1) draws coming from the generator in the order init [B, D], then for each d the
    n_steps updates of column d."""

    class ZeroHead(ExactARScore):
        def head(self, x_d, c, t=None):
            return torch.zeros_like(x_d)

    n, steps, eps = 4, 3, 0.02
    x = ar_langevin_sample(ZeroHead(), (n, D), n_steps=steps, step_size=eps,
                           generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    expected = torch.randn(n, D, generator=g, dtype=torch.float64)
    for d in range(D):
        for _ in range(steps):
            expected[:, d : d + 1] = expected[:, d : d + 1] + math.sqrt(2 * eps) * torch.randn(
                n, 1, generator=g, dtype=torch.float64)
    assert torch.equal(x, expected)


# --- annealed Langevin (NCSN) ----------------------------------------------------------------------
F64 = torch.float64


def _gaussian_data(sde):
    mean, var = torch.tensor([1.5, -0.5], dtype=F64), torch.tensor([0.2, 0.5], dtype=F64)
    return mean, var, GaussianDataModel(mean, var, sde)


@pytest.mark.parametrize("sde", [VESDE(sigma_min=0.01, sigma_max=5.0), VPSDE()], ids=["VE", "VP"])
def test_annealed_langevin_with_exact_scores_reproduces_the_data(sde):
    """From prior draws, 10 levels x 200 updates (NCSN's step_lr = 2e-5) with the exact scores of
    N(mean, var) data end at p_{t_L}: mean within 5 standard errors, variance within 8 % (off by
    1-2 % here). Catches: a sign flip of the score (the chains run away), steps not proportional to
    sigma_i^2 (constant a_i = step_lr leaves the prior's spread; a_i proportional to sigma_i
    under-mixes the noisy levels: variance off by 26 % (VP) to 400 % (VE)), NCSN's paper noise
    sqrt(a_i) with the step a_i (half the variance), the levels in increasing order."""
    mean, var, model = _gaussian_data(sde)
    n = 4000
    x_init = sde.prior_sample((n, 2), torch.Generator().manual_seed(0), dtype=F64)
    x = annealed_langevin_sample(model, sde, x_init, generator=torch.Generator().manual_seed(1), num_steps=2000,
                                 step_lr=2e-5)
    sigmas, times = annealed_noise_levels(sde)
    target_mean, target_var = model.marginal_params(times[-1:].to(F64), torch.zeros(1, 2, dtype=F64))
    assert torch.all((x.mean(0) - target_mean[0]).abs() < 5 * (target_var[0] / n).sqrt()), x.mean(0)
    torch.testing.assert_close(x.var(0), target_var[0], rtol=0.08, atol=0)


def test_annealed_langevin_levels_steps_and_step_sizes():
    """Known answer with a recording zero score: the levels are geometric from the SDE's std at T to
    its std at the sampling eps, visited in decreasing order, num_steps = 31 split 11/10/10, and the
    noise of level i has variance 2 a_i = 2 step_lr sigma_i^2 / sigma_L^2. Catches: a dropped
    remainder of num_steps // L, levels in the wrong order, times not at the stds' times."""
    sde = VPSDE()
    seen = []

    def zero_score(x, t):
        seen.append(float(t[0]))
        return torch.zeros_like(x)

    x = annealed_langevin_sample(zero_score, sde, torch.zeros(20_000, 1, dtype=F64),
                                 generator=torch.Generator().manual_seed(0), num_steps=31, num_scales=3, step_lr=1e-3)
    levels = sorted(set(seen), reverse=True)
    assert [seen.count(t) for t in levels] == [11, 10, 10] and seen == sorted(seen, reverse=True)
    stds = sde.marginal_coefs(torch.tensor(levels, dtype=F64)).std
    ends = sde.marginal_coefs(torch.tensor([1.0, 1e-3], dtype=F64)).std
    torch.testing.assert_close(stds, torch.exp(torch.linspace(ends[0].log(), ends[1].log(), 3, dtype=F64)))
    a = 1e-3 * stds**2 / stds[-1] ** 2
    expected_var = float(2 * (torch.tensor([11, 10, 10], dtype=F64) * a).sum())
    assert abs(float(x.var()) / expected_var - 1) < 5 * math.sqrt(2 / 20_000)


@pytest.mark.parametrize("sde", [VESDE(sigma_min=0.01, sigma_max=5.0), VPSDE()], ids=["VE", "VP"])
def test_annealed_langevin_denoises_with_tweedie(sde):
    """denoise=True returns E[x_0 | x_{t_L}] = (x + sigma_L^2 s) / m(t_L) of the chain's last state
    (same draws). Catches: the mean coefficient dropped for VP, the wrong level's sigma."""
    _, _, model = _gaussian_data(sde)
    kwargs = dict(num_steps=20, num_scales=4, step_lr=1e-3)
    x_init = sde.prior_sample((50, 2), torch.Generator().manual_seed(0), dtype=F64)
    last = annealed_langevin_sample(model, sde, x_init, generator=torch.Generator().manual_seed(1), **kwargs)
    den = annealed_langevin_sample(model, sde, x_init, generator=torch.Generator().manual_seed(1), denoise=True,
                                   **kwargs)
    _, times = annealed_noise_levels(sde, num_scales=4)
    torch.testing.assert_close(den, model.posterior_mean(last, times[-1].to(F64)), rtol=1e-12, atol=1e-12)


def test_annealed_langevin_hook_takes_its_sizes_from_the_budget_and_gin():
    """The hook samples the model's score from prior draws; the Budget's num_steps is the total
    number of updates unless the hook's own binding wins."""
    import gin

    from hybrids.data import ArrayDataset
    from hybrids.hooks import annealed_langevin_sampler

    class Counting(GaussianDataModel):
        calls = 0

        def score(self, x, t, **kw):
            Counting.calls += 1
            return super().score(x, t)

    sde = VESDE(sigma_min=0.01, sigma_max=5.0)
    model = Counting(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.1), sde)
    data = ArrayDataset("digits", torch.zeros(3, 1, 2, 2, dtype=torch.int64), None, 17)
    gin.parse_config(["Budget.num_steps = 12", "Budget.num_samples = 5", "annealed_langevin_sampler.num_scales = 4"])
    out = annealed_langevin_sampler(model, data, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    assert out["samples"].shape == (5, 1, 2, 2) and out["samples"].dtype == torch.int64 and Counting.calls == 12
    gin.parse_config(["annealed_langevin_sampler.num_steps = 8"])
    annealed_langevin_sampler(model, data, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    assert Counting.calls == 20


def test_annealed_langevin_bad_settings():
    sde = VPSDE()
    x = torch.zeros(2, 2)
    score = lambda y, t: -y  # noqa: E731
    with pytest.raises(ValueError, match="strictly decreasing noise levels"):
        annealed_langevin_sample(score, sde, x, times=[0.1, 0.5])
    with pytest.raises(ValueError, match="sigma_max > sigma_min > 0"):
        annealed_langevin_sample(score, sde, x, sigma_max=0.1, sigma_min=0.5)
    with pytest.raises(ValueError, match="num_steps >= L = 10"):
        annealed_langevin_sample(score, sde, x, num_steps=5)
    with pytest.raises(ValueError, match="num_scales .* integer >= 1; got 0"):
        annealed_langevin_sample(score, sde, x, num_scales=0)
    with pytest.raises(ValueError, match="step_lr must be positive"):
        annealed_langevin_sample(score, sde, x, step_lr=0.0)
    with pytest.raises(ValueError, match="either the noise levels' times or sigma_max"):
        annealed_langevin_sample(score, sde, x, times=[0.5, 0.1], sigma_max=1.0)
    with pytest.raises(ValueError, match="num_scales = 3 but 2 times"):
        annealed_langevin_sample(score, sde, x, times=[0.5, 0.1], num_scales=3)
    with pytest.raises(ValueError, match="marginal stds lie in"):
        annealed_langevin_sample(score, VESDE(), x, sigma_max=100.0)
    with pytest.raises(FloatingPointError, match="NaN or infinite in 2 of 2 chains.*smaller step_lr"):
        annealed_langevin_sample(lambda y, t: 10 * y, sde, x + 1, num_steps=100, step_lr=1.0)
