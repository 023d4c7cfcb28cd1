"""The shared perturbation path of objectives (hybrids.objectives.perturb).

Closed forms: x_t has the SDE's marginal mean m(t) x_0 and std sigma(t); the time weights equal
their formulas (lambda(t) for uniform times, lambda / (q (T - eps)) with importance sampling); and
DSM, CSM, NCML and multimeasurement denoising give, for a fixed seed, the losses of an independent
hand computation that draws the same numbers in the same order with plain torch calls.
"""
from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate
from torch import nn

from hybrids.data import dequantize
from hybrids.models.analytic import GaussianDataModel
from hybrids.models.gps import GPSModel
from hybrids.objectives import CSM, DSM, NCML, MultimeasurementDenoising
from hybrids.objectives.perturb import (WEIGHTINGS, Perturbation, likelihood_weighting, model_space_data,
                                        original_weighting, perturb, perturb_gaussian, sample_times)
from hybrids.sdes import SubVPSDE, VESDE, VPSDE
from hybrids.time_sampling import importance_normalizer, importance_sample_t

F64 = torch.float64
SDES = [VESDE(), VPSDE(), SubVPSDE()]
MU = torch.tensor([0.3, -0.2], dtype=F64)
VAR = torch.tensor([0.2, 0.5], dtype=F64)


def G(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _closed_form_marginal(sde, t: float) -> tuple[float, float]:
    """m(t), sigma(t) from the SDE's parameters (not from the library's marginal_coefs)."""
    if isinstance(sde, VESDE):
        return 1.0, sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    b = sde.beta_min * t + 0.5 * t**2 * (sde.beta_max - sde.beta_min)
    m = math.exp(-0.5 * b)
    return m, (math.sqrt(1 - math.exp(-b)) if isinstance(sde, VPSDE) else 1 - math.exp(-b))


# --- the perturbation itself ------------------------------------------------------------------------
@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("t", [0.05, 0.4, 0.9])
def test_x_t_has_the_marginal_mean_and_std(sde, t):
    n = 100_000
    x0 = torch.tensor([[0.7, -0.4, 0.1]], dtype=F64).expand(n, 3)
    p = perturb(sde, x0, torch.full((n,), t, dtype=F64), G(0))
    m, s = _closed_form_marginal(sde, t)
    torch.testing.assert_close(p.mean_coef, torch.full((n,), m, dtype=F64), rtol=1e-12, atol=0)
    torch.testing.assert_close(p.std, torch.full((n,), s, dtype=F64), rtol=1e-12, atol=0)
    se_mean = s / math.sqrt(n)
    assert ((p.x_t.mean(0) - m * x0[0]).abs() < 5 * se_mean).all()
    assert ((p.x_t.std(0) / s - 1).abs() < 5 / math.sqrt(2 * n)).all()
    # x_t is exactly m x0 + sigma z with the returned z, and the weights default to ones
    assert torch.equal(p.x_t, p.mean_coef[:, None] * x0 + p.std[:, None] * p.noise)
    assert torch.equal(p.weight, torch.ones(n, dtype=F64)) and torch.equal(p.x0, x0)


def test_perturb_draws_z_like_torch_randn_and_accepts_given_noise():
    sde, x0 = VPSDE(), torch.randn(5, 2, 3, generator=G(1))
    t = torch.rand(5, generator=G(2))
    p = perturb(sde, x0, t, G(3))
    assert torch.equal(p.noise, torch.randn(x0.shape, generator=G(3)))
    z = torch.randn(x0.shape, generator=G(4))
    q = perturb(sde, x0, t, noise=z, weight=2 * torch.ones(5))
    assert q.noise is z and torch.equal(q.weight, 2 * torch.ones(5)) and torch.equal(q.t, t)
    assert q.std_b.shape == (5, 1, 1)
    torch.testing.assert_close(q.target_score(), -z / q.std_b)
    s = torch.randn(x0.shape, generator=G(5))
    torch.testing.assert_close(q.scaled_residual(s), q.std_b * (s - q.target_score()))


def test_perturb_gaussian_fixed_level_and_no_noise():
    x0 = torch.randn(6, 4, generator=G(6), dtype=F64)
    p = perturb_gaussian(x0, 0.3, G(7))
    assert torch.equal(p.x_t, x0 + 0.3 * torch.randn(x0.shape, generator=G(7), dtype=F64))
    assert p.t is None and torch.equal(p.std, torch.full((6,), 0.3, dtype=F64))
    g = G(8)
    state = g.get_state()
    q = perturb_gaussian(x0, None, g)
    assert q.x_t is x0 and torch.equal(g.get_state(), state)  # nothing drawn
    assert isinstance(q, Perturbation) and torch.equal(q.noise, torch.zeros_like(x0))


def test_model_space_data_dequantizes_in_the_model_dtype():
    k = torch.randint(0, 17, (4, 3), generator=G(9))
    model = nn.Linear(2, 2).to(F64)
    x = model_space_data(model, (k, torch.zeros(4)), 17, G(10))
    assert x.dtype == F64 and torch.equal(x, dequantize(k, 17, G(10), dtype=F64))
    xf = torch.randn(4, 3)
    assert model_space_data(model, xf, None) is xf
    with pytest.raises(TypeError, match="num_levels"):
        model_space_data(model, k, None)


# --- time weights ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_uniform_time_weights_are_lambda(sde, name):
    like = torch.empty(0, dtype=F64)
    t, w = sample_times(sde, 1000, 1e-3, G(11), like=like, weighting=WEIGHTINGS[name])
    assert torch.equal(t, 1e-3 + (sde.T - 1e-3) * torch.rand(1000, generator=G(11), dtype=F64))
    assert torch.equal(w, WEIGHTINGS[name](sde, t))
    t1, w1 = sample_times(sde, 10, 1e-3, G(11), like=like)
    assert torch.equal(w1, torch.ones(10, dtype=F64))


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_importance_time_weights_equal_lambda_over_q(sde):
    eps = 1e-3
    like = torch.empty(0, dtype=F64)
    t, w = sample_times(sde, 2000, eps, G(12), like=like, weighting=original_weighting, importance_sampling=True)
    t_ref, _ = importance_sample_t(sde, [2000], eps, G(12), dtype=F64)
    assert torch.equal(t, t_ref)
    z = importance_normalizer(sde, eps)
    q = sde.diffusion(t) ** 2 / sde.marginal_coefs(t).std ** 2 / z
    torch.testing.assert_close(w, original_weighting(sde, t) / (q * (sde.T - eps)), rtol=1e-10, atol=0)
    # both samplers estimate E_{t ~ U[eps, T]}[lambda(t)]
    _, w_is = sample_times(sde, 200_000, eps, G(13), like=like, weighting=likelihood_weighting,
                           importance_sampling=True)
    exact = integrate.quad(lambda s: float(likelihood_weighting(sde, torch.tensor([s], dtype=F64))), eps, sde.T,
                           limit=200)[0] / (sde.T - eps)
    se = float(w_is.std()) / math.sqrt(w_is.numel())
    assert abs(float(w_is.mean()) - exact) < 5 * se + 1e-12


# --- each objective against a hand computation -------------------------------------------------------
def _dsm_by_hand(sde, model, k, num_levels, eps, weighting, importance_sampling, seed):
    g = G(seed)
    x0 = dequantize(k, num_levels, g, dtype=F64)
    if importance_sampling:
        t, w = importance_sample_t(sde, [k.shape[0]], eps, g, dtype=F64)
        lam_over_p = w * weighting(sde, t) / sde.diffusion(t) ** 2 / (sde.T - eps)
    else:
        t = eps + (sde.T - eps) * torch.rand(k.shape[0], generator=g, dtype=F64)
        lam_over_p = weighting(sde, t)
    z = torch.randn(x0.shape, generator=g, dtype=F64)
    c = sde.marginal_coefs(t)
    m, s = c.mean_coef[:, None], c.std[:, None]
    x_t = m * x0 + s * z
    sq = ((s * model.score(x_t, t) + z) ** 2).sum(1)
    return (0.5 * lam_over_p / c.std**2 * sq).mean()


class _ScoreNet(nn.Module):
    """s(x, t) = -(x - a) / (b + sigma_t^2) with learnable a, b (float64)."""

    def __init__(self, sde, dim):
        super().__init__()
        self.sde = sde
        self.a = nn.Parameter(torch.linspace(-0.3, 0.3, dim, dtype=F64))
        self.b = nn.Parameter(torch.full((dim,), 0.4, dtype=F64))

    def score(self, x, t):
        return -(x - self.a) / (self.b + self.sde.marginal_coefs(t).std[:, None] ** 2)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("weighting,is_", [("original", False), ("likelihood", False), ("likelihood", True)])
def test_dsm_equals_hand_computation(sde, weighting, is_):
    k = torch.randint(0, 17, (7, 3), generator=G(14))
    model = _ScoreNet(sde, 3)
    obj = DSM(sde, weighting=weighting, importance_sampling=is_, eps=1e-3, num_levels=17)
    loss, _ = obj(model, (k, None), generator=G(15))
    expected = _dsm_by_hand(sde, model, k, 17, 1e-3, WEIGHTINGS[weighting], is_, 15)
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=0)


class _IndependentAR(nn.Module):
    """Conditional scores s_d = -(x_d - a_d) / v_d (independent dims), ds_d/dx_d = -1 / v_d."""

    def __init__(self, dim):
        super().__init__()
        self.a = nn.Parameter(torch.linspace(-0.2, 0.2, dim, dtype=F64))
        self.v = nn.Parameter(torch.full((dim,), 0.7, dtype=F64))

    def conditional_scores(self, x, t=None):
        return -(x - self.a) / self.v, (-1 / self.v).expand_as(x)


def _csm_terms(model, x):
    s, ds = model.conditional_scores(x)
    return (0.5 * s**2 + ds).sum(1) / x.shape[1]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_noise_conditional_csm_equals_hand_computation(sde):
    x0 = torch.randn(9, 4, generator=G(16), dtype=F64)
    model = _IndependentAR(4)
    loss, metrics = CSM(noise_conditional=True, sde=sde, num_levels=None, eps=1e-3)(model, x0, generator=G(17))
    g = G(17)
    t = 1e-3 + (sde.T - 1e-3) * torch.rand(9, generator=g, dtype=F64)
    z = torch.randn(x0.shape, generator=g, dtype=F64)
    c = sde.marginal_coefs(t)
    x_t = c.mean_coef[:, None] * x0 + c.std[:, None] * z
    expected = c.std**2 * _csm_terms(model, x_t)
    torch.testing.assert_close(metrics["per_example_loss"], expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(loss, expected.mean(), rtol=1e-13, atol=0)


def test_csm_with_fixed_sigma_equals_hand_computation():
    k = torch.randint(0, 17, (9, 4), generator=G(18))
    model = _IndependentAR(4)
    loss, _ = CSM(sigma=0.1, num_levels=17)(model, k, generator=G(19))
    g = G(19)
    x0 = dequantize(k, 17, g, dtype=F64)
    x = x0 + 0.1 * torch.randn(x0.shape, generator=g, dtype=F64)
    torch.testing.assert_close(loss, _csm_terms(model, x).mean(), rtol=1e-13, atol=0)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_ncml_equals_hand_computation(sde):
    model = GaussianDataModel(MU, VAR, sde)
    x = MU + VAR.sqrt() * torch.randn(16, 2, generator=G(20), dtype=F64)
    obj = NCML(sde, p_zero=0.4, num_levels=None)
    loss, metrics = obj(model, x, generator=G(21))
    g = G(21)
    zero = torch.rand(16, generator=g, dtype=F64) < 0.4
    t = torch.where(zero, 0.0, obj.t_max * (1.0 - torch.rand(16, generator=g, dtype=F64)))
    noisy = ~zero
    nll = torch.zeros(16, dtype=F64)
    nll[zero] = -model.log_prob(x[zero], torch.zeros(int(zero.sum()), dtype=F64))
    c = sde.marginal_coefs(t[noisy])
    z = torch.randn(x[noisy].shape, generator=g, dtype=F64)
    x_t = c.mean_coef[:, None] * x[noisy] + c.std[:, None] * z
    nll[noisy] = -model.log_prob(x_t, t[noisy])
    torch.testing.assert_close(loss, nll.mean() / (2 * math.log(2)), rtol=1e-13, atol=0)
    assert metrics["frac_t0"] == pytest.approx(float(zero.double().mean()))


class _LinearDenoiser(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.5, 0.9, dim, dtype=F64))

    def forward(self, u, t):
        return self.w * u + 0.01 * t[:, None]


@pytest.mark.parametrize("sample_measurements", [False, True])
def test_multimeasurement_equals_hand_computation(sample_measurements):
    k = torch.randint(0, 17, (8, 3), generator=G(22))
    model = GPSModel(_LinearDenoiser(3), sigma=1.0, M=4)
    obj = MultimeasurementDenoising(num_levels=17, sample_measurements=sample_measurements)
    loss, _ = obj(model, k, generator=G(23))
    g = G(23)
    x = dequantize(k, 17, g, dtype=F64)
    if sample_measurements:
        ybar = (x[:, None] + 1.0 * torch.randn(8, 4, 3, generator=g, dtype=F64)).mean(1)
    else:
        ybar = x + 0.5 * torch.randn(x.shape, generator=g, dtype=F64)
    expected = ((x - model.xhat_from_ybar(ybar)) ** 2).mean(1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-13, atol=0)


# --- a new objective in a few lines --------------------------------------------------------------------
def _sliced_score_matching(model, sde, batch, eps, generator):
    """Noise-conditional sliced score matching weighted by sigma_t^2, built on the shared path."""
    x0 = model_space_data(model, batch, None, generator)
    t, weight = sample_times(sde, x0.shape[0], eps, generator, like=x0, weighting=original_weighting)
    p = perturb(sde, x0, t, generator, weight=weight)
    x = p.x_t.detach().requires_grad_(True)
    v = torch.randint(0, 2, x.shape, generator=generator).to(x.dtype) * 2 - 1
    s = model.score(x, p.t)
    (jv,) = torch.autograd.grad((s * v).sum(), x, create_graph=True)
    return p.weight * ((v * jv).sum(1) + 0.5 * (v * s).sum(1) ** 2)


def test_sliced_score_matching_from_the_shared_path_matches_its_closed_form():
    """Exact score of Gaussian p_t: E_v[v' J v + (v' s)^2 / 2] = -sum_d 1/V_d(t) / 2 at every t."""
    sde, eps = VPSDE(), 1e-3
    model = GaussianDataModel(MU, VAR, sde)
    x = MU + VAR.sqrt() * torch.randn(20_000, 2, generator=G(24), dtype=F64)
    losses = _sliced_score_matching(model, sde, x, eps, G(25)).detach()

    def integrand(t):
        c = sde.marginal_coefs(torch.tensor([t], dtype=F64))
        V = c.mean_coef**2 * VAR + c.std**2
        return float(-0.5 * c.std**2 * (1 / V).sum())

    exact = integrate.quad(integrand, eps, sde.T, limit=200)[0] / (sde.T - eps)
    se = float(losses.std()) / math.sqrt(losses.numel())
    assert abs(float(losses.mean()) - exact) < 5 * se, (float(losses.mean()), exact, se)
