"""The NoiseConditionalModel contract and the exact Gaussian model used as ground truth."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import integrate

from hybrids.models.analytic import GaussianDataModel
from hybrids.models.base import NoiseConditionalModel, check_time
from hybrids.sdes import SubVPSDE, VESDE, VPSDE

f64 = torch.float64
SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}


@settings(max_examples=20, deadline=None)
@given(
    sde_name=st.sampled_from(sorted(SDES)),
    dim=st.integers(1, 5),
    batch=st.integers(1, 4),
    t=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_score_equals_autograd_of_log_prob(sde_name, dim, batch, t, seed):
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(dim, generator=gen, dtype=f64)
    var = torch.rand(dim, generator=gen, dtype=f64) + 0.1
    model = GaussianDataModel(mean, var, SDES[sde_name])
    x = torch.randn(batch, dim, generator=gen, dtype=f64)
    tt = torch.full((batch,), t, dtype=f64)
    autograd_score = NoiseConditionalModel.score(model, x, tt)
    torch.testing.assert_close(model.score(x, tt), autograd_score.detach())


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("t", [0.0, 0.3, 0.9])
def test_log_prob_integrates_to_one_in_1d(sde_name, t):
    model = GaussianDataModel(torch.tensor([0.5], dtype=f64), torch.tensor([0.2], dtype=f64), SDES[sde_name])
    tt = torch.tensor([t], dtype=f64)

    def density(x):
        return math.exp(model.log_prob(torch.tensor([[x]], dtype=f64), tt).item())

    _, var = model.marginal_params(tt, torch.zeros(1, 1, dtype=f64))
    s = math.sqrt(var.item())
    total, _ = integrate.quad(density, -12 * s - 2, 12 * s + 2, limit=200)
    assert total == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_log_prob_integrates_to_one_in_2d(sde_name):
    model = GaussianDataModel(
        torch.tensor([0.5, -0.3], dtype=f64), torch.tensor([0.2, 0.05], dtype=f64), SDES[sde_name]
    )
    tt = torch.tensor([0.25], dtype=f64)
    _, var = model.marginal_params(tt, torch.zeros(1, 2, dtype=f64))
    lim = 10 * var.sqrt().max().item() + 1.0
    grid = torch.linspace(-lim, lim, 801, dtype=f64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    dens = model.log_prob(pts, tt.expand(pts.shape[0])).exp().reshape(801, 801).numpy()
    h = (grid[1] - grid[0]).item()
    total = integrate.simpson(integrate.simpson(dens, dx=h, axis=1), dx=h)
    assert total == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_samples_match_marginal_moments(sde_name):
    mean, var = torch.tensor([1.0, -2.0], dtype=f64), torch.tensor([0.5, 0.1], dtype=f64)
    model = GaussianDataModel(mean, var, SDES[sde_name])
    n, t = 50000, 0.2
    x = model.sample(n, t, generator=torch.Generator().manual_seed(0))
    coefs = SDES[sde_name].marginal_coefs(torch.tensor([t], dtype=f64))
    exp_mean = coefs.mean_coef * mean
    exp_var = coefs.mean_coef**2 * var + coefs.std**2
    assert torch.all((x.mean(0) - exp_mean).abs() < 5 * (exp_var / n).sqrt())
    assert torch.all((x.var(0) - exp_var).abs() < 5 * exp_var * math.sqrt(2 / n))


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_posterior_mean_by_regression(sde_name):
    """Tweedie's E[x0 | x_t] agrees with the linear regression of x0 on x_t over joint samples."""
    sde = SDES[sde_name]
    mean, var = torch.tensor([0.3], dtype=f64), torch.tensor([0.4], dtype=f64)
    model = GaussianDataModel(mean, var, sde)
    gen = torch.Generator().manual_seed(3)
    n = 200000
    x0 = mean + var.sqrt() * torch.randn(n, 1, generator=gen, dtype=f64)
    t = torch.full((n,), 0.3, dtype=f64)
    x_t, _ = sde.perturb(x0, t, generator=gen)
    slope, intercept = np.polyfit(x_t[:, 0].numpy(), x0[:, 0].numpy(), 1)
    probe = torch.tensor([[-1.0], [0.0], [1.0]], dtype=f64)
    tweedie = model.posterior_mean(probe, t[:3])
    np.testing.assert_allclose(tweedie[:, 0].numpy(), slope * probe[:, 0].numpy() + intercept, atol=1e-2)


def test_contract_errors_name_the_alternatives():
    class ScoreOnly(NoiseConditionalModel):
        pass

    m = ScoreOnly()
    x = torch.zeros(2, 3)
    with pytest.raises(NotImplementedError, match="ode_log_prob"):
        m.log_prob(x, torch.zeros(2))
    with pytest.raises(NotImplementedError, match="dequantize"):
        m.discrete_log_prob(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(NotImplementedError, match="MADEConditionalScore"):
        m.conditional_scores(x, None)
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        check_time(x, torch.zeros(3))
    model = GaussianDataModel(torch.zeros(3), torch.ones(3), VPSDE())
    with pytest.raises(ValueError, match=r"x must have shape \[B, 3\]"):
        model.log_prob(torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="positive"):
        GaussianDataModel(torch.zeros(2), torch.tensor([1.0, 0.0]), VPSDE())


def test_autograd_score_keeps_graph_only_in_grad_mode():
    """Training needs a score that back-propagates to parameters; inference does not."""

    class Learnable(NoiseConditionalModel):
        def __init__(self):
            super().__init__()
            self.mu = torch.nn.Parameter(torch.tensor([0.5], dtype=f64))

        def log_prob(self, x, t):
            return (-0.5 * (x - self.mu) ** 2).sum(1)

    m = Learnable()
    x = torch.randn(4, 1, dtype=f64)
    s = m.score(x, torch.zeros(4, dtype=f64))
    torch.testing.assert_close(s, -(x - 0.5))
    (g,) = torch.autograd.grad(s.sum(), m.mu)
    assert g.item() == pytest.approx(4.0)
    with torch.no_grad():
        s2 = m.score(x, torch.zeros(4, dtype=f64))
    assert not s2.requires_grad
    torch.testing.assert_close(s2, s.detach())
    fn = m.score_fn()
    torch.testing.assert_close(fn(x, torch.zeros(4, dtype=f64)).detach(), s.detach())
