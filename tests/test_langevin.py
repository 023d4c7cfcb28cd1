"""Langevin samplers: plain overdamped Langevin and the per-dimension AR-CSM sampler."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hybrids.models.base import ARConditionalScoreModel
from hybrids.models.made import MADEConditionalScore
from hybrids.samplers.langevin import ar_langevin_sample, langevin_sample

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
