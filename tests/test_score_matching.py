"""Exact (SM), sliced (SSM) and variance-reduced sliced (SSM-VR) score matching objectives.

Ground truth: Gaussian scores. For s(x) = -P (x - b) (P symmetric), ds/dx = -P, so per example
SM = -tr P + ||s||^2 / 2 exactly; for data N(m, diag(w)) and the diagonal score s = -(x - mu) / v,
E[SM] = sum_i [-1/v_i + ((m_i - mu_i)^2 + w_i) / (2 v_i^2)]; with the exact score of p_t,
E_{p_t}[SM] = -sum_i 1 / (2 v_t,i).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import integrate
from torch import nn

from hybrids.models.analytic import GaussianDataModel
from hybrids.models.base import NoiseConditionalModel
from hybrids.models.mlp import TimeMLP
from hybrids.models.score_model import ScoreModel
from hybrids.objectives import SM, SSM
from hybrids.sdes import VESDE, VPSDE

F64 = torch.float64


class LinearScore(nn.Module):
    """s(x, t) = -(x - b) P^T for any t (P a full symmetric matrix: off-diagonal Jacobian terms)."""

    def __init__(self, P: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.P = nn.Parameter(P.clone())
        self.b = nn.Parameter(b.clone())

    def score(self, x, t):
        return -(x - self.b) @ self.P.T


class GaussianScore(nn.Module):
    """s(x, t) = -(x - mu) / exp(log_v): a score module with Gaussian parameters."""

    def __init__(self, mu: torch.Tensor, var: torch.Tensor):
        super().__init__()
        self.mu = nn.Parameter(mu.clone())
        self.log_v = nn.Parameter(var.log())

    def score(self, x, t):
        return -(x - self.mu) / self.log_v.exp()


class GaussianDensity(NoiseConditionalModel):
    """The same Gaussian as a density (log_prob): its score comes from autograd, so SM needs
    second derivatives through NoiseConditionalModel.score."""

    def __init__(self, mu: torch.Tensor, var: torch.Tensor):
        super().__init__()
        self.mu = nn.Parameter(mu.clone())
        self.log_v = nn.Parameter(var.log())

    def log_prob(self, x, t):
        v = self.log_v.exp()
        return (-0.5 * (x - self.mu) ** 2 / v - 0.5 * self.log_v).sum(1)


def _spd(d: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=g, dtype=F64)
    return a @ a.T / d + 0.5 * torch.eye(d, dtype=F64)


def _per_example(objective, model, x, seed=1):
    _, metrics = objective(model, x, generator=torch.Generator().manual_seed(seed))
    return metrics["per_example_loss"]


def _fixed(cls, **kw):
    """The objective at t = 0 of a VP SDE: x_t = x_0 exactly (sigma(0) = 0), float data."""
    return cls(sde=VPSDE(), t=0.0, num_levels=None, **kw)


# --- SM ---------------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_sm_is_minus_the_trace_plus_half_the_squared_norm_per_example(d, seed):
    """Exact per example for a full-matrix linear score. Catches: the trace taken as the sum of
    all Jacobian entries (grad of s.sum()), a missing or doubled 1/2, a sign flip of the trace."""
    g = torch.Generator().manual_seed(seed)
    model = LinearScore(_spd(d, g), torch.randn(d, generator=g, dtype=F64))
    x = torch.randn(64, d, generator=g, dtype=F64)
    s = model.score(x, None).detach()
    expected = -torch.trace(model.P.detach()) + 0.5 * s.pow(2).sum(1)
    torch.testing.assert_close(_per_example(_fixed(SM), model, x), expected, rtol=1e-10, atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_sm_expectation_is_the_gaussian_closed_form(d, seed):
    """E over data N(m, w) of SM for the score of N(mu, v) is sum_i [-1/v_i + ((m_i - mu_i)^2 + w_i)
    / (2 v_i^2)]; tolerance 5 Monte Carlo standard errors. Catches: the objective evaluated on
    anything but the batch (e.g. dequantized or re-perturbed data), a wrong weight at fixed t."""
    g = torch.Generator().manual_seed(seed)
    mu, m = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    v, w = 0.2 + torch.rand(d, generator=g, dtype=F64), 0.2 + torch.rand(d, generator=g, dtype=F64)
    model = GaussianDataModel(mu, v, VPSDE())
    n = 4000
    x = m + w.sqrt() * torch.randn(n, d, generator=g, dtype=F64)
    losses = _per_example(_fixed(SM), model, x)
    expected = (-1 / v + ((m - mu) ** 2 + w) / (2 * v**2)).sum()
    assert abs(float(losses.mean() - expected)) < 5 * float(losses.std()) / math.sqrt(n)


@pytest.mark.parametrize("module", [GaussianScore, GaussianDensity])
@pytest.mark.parametrize("objective", [_fixed(SM), _fixed(SSM, variance_reduction=True, n_particles=2)],
                         ids=["SM", "SSM-VR"])
def test_gradients_vanish_at_the_fitted_gaussian(module, objective):
    """The empirical SM objective of a Gaussian score is minimised at the sample mean and the
    (biased) sample variance, so the parameter gradients vanish there, and equal the closed form
    d/dmu = -(xbar - mu) / v^2 elsewhere. (SSM-VR with Rademacher projections equals SM exactly for
    a diagonal Jacobian.) Catches: the trace or projection terms computed without create_graph
    (their parameter gradients lost), the score detached from the parameters."""
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([0.5, -1.0, 2.0], dtype=F64) + torch.randn(500, 3, generator=g, dtype=F64) * torch.tensor(
        [0.5, 1.0, 1.5], dtype=F64)
    xbar, var = x.mean(0), x.var(0, unbiased=False)
    model = module(xbar, var)
    loss, _ = objective(model, x, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(loss, [model.mu, model.log_v])
    for grad in grads:
        torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-10)
    mu = xbar + 0.3
    model = module(mu, var)
    loss, _ = objective(model, x, generator=torch.Generator().manual_seed(1))
    (grad_mu,) = torch.autograd.grad(loss, [model.mu])
    torch.testing.assert_close(grad_mu, -(xbar - mu) / var**2, rtol=1e-8, atol=1e-12)


def test_sm_refuses_large_data_and_names_the_alternatives():
    x = torch.zeros(2, 3, 8, 8, dtype=F64)
    model = GaussianDataModel(torch.zeros(3, 8, 8, dtype=F64), torch.ones(3, 8, 8, dtype=F64), VPSDE())
    with pytest.raises(ValueError, match=r"D = 192 exceeds SM.max_dims = 100.*@SSM.*@DSM"):
        _fixed(SM, max_dims=100)(model, x)
    assert _fixed(SM, max_dims=192)(model, x)[0].isfinite()
    with pytest.raises(ValueError, match="D = 3072 exceeds SM.max_dims = 1024"):
        _fixed(SM)(GaussianDataModel(torch.zeros(3, 32, 32), torch.ones(3, 32, 32), VPSDE()),
                   torch.zeros(1, 3, 32, 32))


# --- SSM and SSM-VR -------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 5), seed=st.integers(0, 10_000), projection=st.sampled_from(["rademacher", "gaussian"]),
       variance_reduction=st.booleans(), n_particles=st.integers(1, 3))
def test_ssm_and_ssm_vr_have_the_expectation_of_sm(d, seed, projection, variance_reduction, n_particles):
    """E_v of SSM and SSM-VR is SM, checked on the paired differences SSM_i - SM_i (same data)
    within 5 standard errors, for a full-matrix linear score. Catches: projections without
    E[v v^T] = I (e.g. {0, 1} instead of +-1, uniform instead of normal), a missing 1/2 on
    (v^T s)^2, the Jacobian term not divided by the number of projections."""
    g = torch.Generator().manual_seed(seed)
    model = LinearScore(_spd(d, g), torch.randn(d, generator=g, dtype=F64))
    n = 3000
    x = torch.randn(n, d, generator=g, dtype=F64) * 1.5
    ssm = _per_example(_fixed(SSM, projection=projection, variance_reduction=variance_reduction,
                              n_particles=n_particles), model, x, seed=seed + 1)
    diff = ssm - _per_example(_fixed(SM), model, x)
    assert abs(float(diff.mean())) <= 5 * float(diff.std()) / math.sqrt(n) + 1e-10


def test_ssm_vr_has_a_lower_variance_than_ssm():
    """Var(SSM) = Var(SSM-VR) + E Var_v[(v^T s)^2 / 2] on the data of the model (N(b, P^-1)); here
    Var(SSM-VR) / Var(SSM) is about 0.42, asserted below 0.75 with n = 20 000. Catches: the variance_reduction flag
    ignored (both estimators the same)."""
    g = torch.Generator().manual_seed(3)
    d = 4
    P, b = _spd(d, g), torch.randn(d, generator=g, dtype=F64)
    model = LinearScore(P, b)
    x = b + torch.randn(20_000, d, generator=g, dtype=F64) @ torch.linalg.cholesky(torch.linalg.inv(P)).T
    var_ssm = _per_example(_fixed(SSM), model, x).var()
    var_vr = _per_example(_fixed(SSM, variance_reduction=True), model, x).var()
    assert var_vr < 0.75 * var_ssm


def test_projections_are_rademacher_or_gaussian_and_follow_the_generator():
    from hybrids.objectives.score_matching import sample_projections

    like = torch.zeros(500, 7, dtype=F64)
    v = sample_projections(like, 3, "rademacher", torch.Generator().manual_seed(0))
    assert v.shape == (3, 500, 7) and v.dtype == F64 and set(v.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(v, sample_projections(like, 3, "rademacher", torch.Generator().manual_seed(0)))
    v = sample_projections(like, 4, "gaussian", torch.Generator().manual_seed(0))
    assert abs(float(v.mean())) < 0.05 and abs(float(v.var()) - 1) < 0.05


# --- noise levels -----------------------------------------------------------------------------------
def _gaussian_at(sde):
    mu, v = torch.tensor([0.8, -0.5, 0.3], dtype=F64), torch.tensor([0.3, 0.1, 0.6], dtype=F64)
    return mu, v, GaussianDataModel(mu, v, sde)


@pytest.mark.parametrize("objective", [SM(t=0.3, num_levels=None), SSM(t=0.3, num_levels=None, n_particles=2)],
                         ids=["SM", "SSM"])
def test_a_fixed_level_matches_the_score_of_the_perturbed_data(objective):
    """With the exact score of p_t and data perturbed to t: E = -sum_i 1 / (2 v_t,i), within 5
    standard errors (the model's own sde is used). Catches: the clean data scored at t instead of
    x_t (then E differs: the data have mean mu, p_t has mean m(t) mu)."""
    sde = VPSDE()
    mu, v, model = _gaussian_at(sde)
    n = 20_000
    x0 = mu + v.sqrt() * torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    losses = _per_example(objective, model, x0)
    c = sde.marginal_coefs(torch.tensor(0.3, dtype=F64))
    expected = -(1 / (2 * (c.mean_coef**2 * v + c.std**2))).sum()
    assert abs(float(losses.mean() - expected)) < 5 * float(losses.std()) / math.sqrt(n)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=5.0)], ids=["VP", "VE"])
def test_the_noise_conditional_variant_weights_levels_by_sigma_squared(sde):
    """E = 1/(T - eps) int_eps^T sigma_t^2 (-sum_i 1 / (2 v_t,i)) dt (quadrature), within 5 standard
    errors. Catches: no weighting, the weighting g(t)^2 instead of sigma_t^2, t not drawn per example."""
    mu, v, model = _gaussian_at(sde)
    eps = 1e-3
    n = 20_000
    x0 = mu + v.sqrt() * torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    objective = SSM(noise_conditional=True, eps=eps, num_levels=None, variance_reduction=True)
    losses = _per_example(objective, model, x0)

    def integrand(t: float) -> float:
        c = sde.marginal_coefs(torch.tensor(t, dtype=F64))
        return float(c.std**2 * -(1 / (2 * (c.mean_coef**2 * v + c.std**2))).sum())

    expected = integrate.quad(integrand, eps, sde.T, limit=200)[0] / (sde.T - eps)
    assert abs(float(losses.mean()) - expected) < 5 * float(losses.std()) / math.sqrt(n)


# --- models, gin and bad settings -------------------------------------------------------------------
@pytest.mark.parametrize("objective", [SM(t=0.5, num_levels=17), SSM(noise_conditional=True, num_levels=17)],
                         ids=["SM", "SSM"])
def test_objectives_train_a_score_network_on_integer_images(objective):
    """Integer levels are dequantized; every parameter of a ScoreModel gets a finite gradient."""
    model = ScoreModel(TimeMLP(dim=16, hidden=16, num_layers=1, embed_dim=8), VPSDE())
    k = torch.randint(0, 17, (4, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    loss, metrics = objective(model, (k, torch.zeros(4)), generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert metrics["per_example_loss"].shape == (4,) and loss.isfinite()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_objectives_build_from_gin_and_run_on_the_row_model():
    """``experiment.objective = @SSM()`` on the VP ScoreFlow row under the CPU presets: the model's
    SDE is used, and a loss comes back for a digits batch."""
    from experiments.runner import parse_gin
    from hybrids.runs import experiment

    parse_gin(["scoreflow_vp_original.gin", "presets/cpu_small.gin", "presets/smoke.gin"],
              ["experiment.objective = @SSM()", "SSM.noise_conditional = True", "SSM.num_levels = %NUM_LEVELS",
               "SSM.n_particles = 2", "SSM.projection = 'gaussian'", "SSM.variance_reduction = True",
               "SM.t = 0.1", "SM.max_dims = 64"])
    exp = experiment()
    assert isinstance(exp.objective, SSM)
    assert (exp.objective.n_particles, exp.objective.projection, exp.objective.num_levels) == (2, "gaussian", 17)
    k = torch.randint(0, 17, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    loss, _ = exp.objective(exp.model, k, generator=torch.Generator().manual_seed(1))
    assert loss.isfinite()
    assert (SM().t, SM().max_dims) == (0.1, 64)


@pytest.mark.parametrize("make,match", [
    (lambda: SM(num_levels=None), "bind SM.t .* or SM.noise_conditional = True"),
    (lambda: SSM(t=0.1, noise_conditional=True), "either a fixed time t or noise_conditional"),
    (lambda: SSM(t=1.5, sde=VPSDE()), r"SSM.t must lie in \[0, T = 1.0\]; got 1.5"),
    (lambda: SSM(noise_conditional=True, sde=VPSDE(), eps=0.0), r"eps must lie in \(0, T"),
    (lambda: SSM(t=0.0, n_particles=0), "n_particles .* integer >= 1; got 0"),
    (lambda: SSM(t=0.0, n_particles=1.5), "n_particles .* integer >= 1; got 1.5"),
    (lambda: SSM(t=0.0, projection="sphere"),
     r"Unknown SSM.projection 'sphere'; choose one of \['rademacher', 'gaussian'\]"),
    (lambda: SM(t=0.0, max_dims=0), "SM.max_dims must be an integer >= 1; got 0"),
])
def test_bad_settings_are_value_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_model_without_an_sde_needs_the_binding():
    model = LinearScore(torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="SSM.sde"):
        SSM(t=0.0, num_levels=None)(model, torch.zeros(3, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"SSM.t must lie in \[0, T = 1.0\]; got 2.0"):
        SSM(t=2.0, num_levels=None)(GaussianDataModel(torch.zeros(2), torch.ones(2), VPSDE()), torch.zeros(3, 2))
