"""DSM objective, weightings and importance sampling of t."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import integrate, stats

from hybrids.models.analytic import GaussianDataModel
from hybrids.objectives.dsm import DSM, importance_sample_t, likelihood_weighting, original_weighting
from hybrids.time_sampling import (closed_form_inverse_cdf, cumulative_importance, importance_normalizer,
                                   tabulated_inverse_cdf)
from hybrids.sdes import SubVPSDE, VESDE, VPSDE

SDES = [VESDE(), VPSDE(), SubVPSDE()]


def _density(sde, t: float) -> float:
    tt = torch.tensor([t], dtype=torch.float64)
    return float(sde.diffusion(tt) ** 2 / sde.marginal_coefs(tt).std ** 2)


def _quad(f, a: float, b: float) -> float:
    """Adaptive quadrature in s = log t (the integrands here behave like 1/t near 0)."""
    val, _ = integrate.quad(lambda s: math.exp(s) * f(math.exp(s)), math.log(a), math.log(b), limit=200,
                            epsabs=1e-12, epsrel=1e-10)
    return val


@pytest.mark.parametrize("sde,eps,z_methods", [(VPSDE(), 1e-5, 23.8645), (VPSDE(), 1e-3, 19.1654),
                                               (SubVPSDE(), 1e-5, 37.6789), (SubVPSDE(), 1e-3, 28.2809)])
def test_normaliser_matches_methods_and_quadrature(sde, eps, z_methods):
    z_quad = _quad(lambda t: _density(sde, t), eps, 1.0)
    assert importance_normalizer(sde, eps) == pytest.approx(z_quad, rel=1e-8)
    assert importance_normalizer(sde, eps, tabulated=True) == pytest.approx(z_quad, rel=1e-6)
    assert importance_normalizer(sde, eps) == pytest.approx(z_methods, abs=1e-4)


@pytest.mark.parametrize("sde", SDES)
def test_antiderivative_differentiates_to_density(sde):
    t = torch.tensor([1e-4, 1e-2, 0.3, 0.9], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(cumulative_importance(sde, t).sum(), t)
    expected = torch.tensor([_density(sde, float(v)) for v in t.detach()], dtype=torch.float64)
    torch.testing.assert_close(grad, expected, rtol=1e-8, atol=0)


@pytest.mark.parametrize("sde", SDES)
@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_tabulated_inverse_cdf_equals_closed_form(sde, eps):
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)
    torch.testing.assert_close(tabulated_inverse_cdf(sde, eps, u), closed_form_inverse_cdf(sde, eps, u),
                               rtol=1e-5, atol=1e-9)
    # and the closed forms invert their CDF
    t = closed_form_inverse_cdf(sde, eps, u)
    f = cumulative_importance(sde, torch.cat([torch.tensor([eps], dtype=torch.float64), t]))
    torch.testing.assert_close((f[1:] - f[0]) / (f[-1] - f[0]), u, rtol=0, atol=1e-9)


@pytest.mark.parametrize("sde", SDES)
@pytest.mark.parametrize("tabulated", [False, True])
def test_samples_follow_q_ks(sde, tabulated):
    eps = 1e-5
    g = torch.Generator().manual_seed(1)
    t, _ = importance_sample_t(sde, [4000], eps, g, dtype=torch.float64, tabulated=tabulated)
    assert bool(((t >= eps) & (t <= 1)).all())
    f_eps, f_end = cumulative_importance(sde, torch.tensor([eps, 1.0], dtype=torch.float64))

    def cdf(s):  # closed-form CDF; the antiderivative is checked against the density above
        return ((cumulative_importance(sde, torch.as_tensor(np.atleast_1d(s), dtype=torch.float64)) - f_eps)
                / (f_end - f_eps)).numpy()

    assert stats.kstest(t.numpy(), cdf).pvalue > 1e-3


@pytest.mark.parametrize("sde", SDES)
@settings(max_examples=5, deadline=None)
@given(t_max=st.floats(0.02, 1.0), seed=st.integers(0, 1000))
def test_truncated_importance_sampling_on_eps_to_t_max(sde, t_max, seed):
    """q restricted to [eps, t_max]: every draw lies there, the normaliser is the quadrature of
    g^2/sigma^2 over [eps, t_max] (closed form and table), both inverse CDFs agree, and the weights
    integrate h(t) = 1/g^2 to the interval's length, t_max - eps (the estimator's identity, to 5
    s.e.). Catches an upper end left at T in the draw (draws above t_max) or in the normaliser
    (weights too large by Z(T)/Z(t_max))."""
    eps = 1e-5
    z_quad = _quad(lambda t: _density(sde, t), eps, t_max)
    assert importance_normalizer(sde, eps, t_max=t_max) == pytest.approx(z_quad, rel=1e-8)
    assert importance_normalizer(sde, eps, t_max=t_max, tabulated=True) == pytest.approx(z_quad, rel=1e-6)
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(tabulated_inverse_cdf(sde, eps, u, t_max=t_max),
                               closed_form_inverse_cdf(sde, eps, u, t_max=t_max), rtol=1e-5, atol=1e-9)
    t, w = importance_sample_t(sde, [4000], eps, torch.Generator().manual_seed(seed), dtype=torch.float64,
                               t_max=t_max)
    assert bool(((t >= eps) & (t <= t_max)).all())
    values = w / sde.diffusion(t) ** 2
    assert abs(float(values.mean()) - (t_max - eps)) < 5 * float(values.std()) / math.sqrt(4000) + 1e-12


def test_truncated_importance_sampling_rejects_bad_ends():
    with pytest.raises(ValueError, match=r"t_max must lie in \(eps, T\]"):
        importance_sample_t(VPSDE(), [3], 1e-3, t_max=1e-4)
    with pytest.raises(ValueError, match=r"t_max must lie in \(eps, T\]"):
        importance_normalizer(VPSDE(), 1e-3, t_max=1.5)


@settings(max_examples=10, deadline=None)
@given(sde_i=st.integers(0, 2), eps=st.sampled_from([1e-5, 1e-3, 1e-2]), seed=st.integers(0, 1000))
def test_weight_identity(sde_i, eps, seed):
    """weight = g^2 / q(t) with q = (g^2/sigma^2) / Z, which equals Z sigma_t^2."""
    sde = SDES[sde_i]
    t, w = importance_sample_t(sde, [50], eps, torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = _quad(lambda r: _density(sde, r), eps, 1.0)
    g2 = sde.diffusion(t) ** 2
    q = g2 / sde.marginal_coefs(t).std ** 2 / z
    torch.testing.assert_close(w, g2 / q, rtol=1e-6, atol=0)
    torch.testing.assert_close(w, z * sde.marginal_coefs(t).std ** 2, rtol=1e-6, atol=0)


@pytest.mark.parametrize("sde", SDES)
def test_weighted_expectation_is_time_integral(sde):
    """E_q[weight * f(t) / g(t)^2] = int_eps^T f dt, Monte Carlo against quadrature."""
    eps = 1e-3
    f = lambda t: torch.cos(3 * t) + t**2
    t, w = importance_sample_t(sde, [200_000], eps, torch.Generator().manual_seed(0), dtype=torch.float64)
    vals = w * f(t) / sde.diffusion(t) ** 2
    est, se = float(vals.mean()), float(vals.std() / math.sqrt(vals.numel()))
    exact = integrate.quad(lambda s: math.cos(3 * s) + s**2, eps, 1.0)[0]
    assert abs(est - exact) < 4 * se + 1e-12


def _expected_dsm(sde, model, weighting, eps, reduce_mean=False):
    """J = 1/(T - eps) int lambda/sigma^2 * sum_d m^2 v_d / (m^2 v_d + sigma^2) / 2 dt, exact score."""
    v = model.var.flatten().double()

    def integrand(t):
        tt = torch.tensor([t], dtype=torch.float64)
        c = sde.marginal_coefs(tt)
        m2, s2 = float(c.mean_coef**2), float(c.std**2)
        lam = float(weighting(sde, tt))
        per_dim = m2 * v / (m2 * v + s2)
        return 0.5 * lam / s2 * float(per_dim.mean() if reduce_mean else per_dim.sum())

    return _quad(integrand, eps, 1.0) / (1.0 - eps)


@pytest.mark.parametrize("sde", SDES)
@pytest.mark.parametrize("weighting,is_", [("original", False), ("likelihood", False), ("likelihood", True)])
def test_dsm_loss_with_exact_score_matches_closed_form(sde, weighting, is_):
    mean = torch.tensor([0.2, -0.4, 0.1], dtype=torch.float64)
    var = torch.tensor([0.3, 0.05, 1.0], dtype=torch.float64)
    model = GaussianDataModel(mean, var, sde)
    eps = 1e-3
    obj = DSM(sde, weighting=weighting, importance_sampling=is_, eps=eps, num_levels=None)
    g = torch.Generator().manual_seed(0)
    x0 = model.sample(20_000, 0.0, generator=g) if not isinstance(sde, VESDE) else mean + var.sqrt() * torch.randn(20_000, 3, dtype=torch.float64, generator=g)
    losses = obj.per_example_loss(model, x0, generator=g)
    # VE: the analytic model's p_t has variance v + sigma(t)^2 for data N(mu, v) (sigma(0)-convention)
    est, se = float(losses.mean()), float(losses.std() / math.sqrt(losses.numel()))
    expected = _expected_dsm(sde, model, {"original": original_weighting, "likelihood": likelihood_weighting}[weighting], eps)
    assert abs(est - expected) < 4 * se, (est, expected, se)


def test_dsm_batches_and_gradients():
    sde = VPSDE()
    from hybrids.models.mlp import TimeMLP
    from hybrids.models.score_model import ScoreModel

    model = ScoreModel(TimeMLP(4, hidden=8), sde)
    k = torch.randint(0, 17, (6, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    obj = DSM(sde, weighting="likelihood", importance_sampling=True, num_levels=17)
    loss, metrics = obj(model, (k.reshape(6, 4), torch.zeros(6)), generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and metrics["per_example_loss"].shape == (6,)
    torch.testing.assert_close(loss.detach(), metrics["per_example_loss"].mean())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(TypeError, match="num_levels"):
        DSM(sde, num_levels=None)(model, k.reshape(6, 4))
    with pytest.raises(TypeError, match="num_levels=None"):
        DSM(sde, num_levels=17)(model, torch.randn(6, 4))
    with pytest.raises(ValueError, match="weighting"):
        DSM(sde, weighting="uniform")


def test_importance_sampling_reduces_variance_on_toy():
    """Likelihood-weighted DSM on a 2-D toy: batch-loss variance with IS << without (F test)."""
    from hybrids.data import sample_toy

    sde = VPSDE()
    data = sample_toy("8gaussians", 4096, torch.Generator().manual_seed(0)).double()
    model = GaussianDataModel(data.mean(0), data.var(0), sde)  # fixed analytic (misspecified) score
    g = torch.Generator().manual_seed(1)
    per_batch = {}
    for is_ in (False, True):
        obj = DSM(sde, weighting="likelihood", importance_sampling=is_, num_levels=None)
        vals = []
        for i in range(200):
            batch = data[torch.randint(0, 4096, (64,), generator=g)]
            vals.append(float(obj(model, batch, generator=g)[0]))
        per_batch[is_] = np.array(vals)
    ratio = per_batch[False].var(ddof=1) / per_batch[True].var(ddof=1)
    assert ratio > stats.f.ppf(0.999, 199, 199) * 5, ratio
    # and both estimate the same objective
    diff = per_batch[False].mean() - per_batch[True].mean()
    se = math.sqrt(per_batch[False].var(ddof=1) / 200 + per_batch[True].var(ddof=1) / 200)
    assert abs(diff) < 4 * se


def test_loss_variance_eval_both_estimators_hit_the_closed_form_and_is_has_less_variance():
    # Data N(0, s0^2 I_D), exact score: E||sigma s + z||^2 = D alpha^2 s0^2 / (alpha^2 s0^2 + sigma^2), so
    # J = 1/(T - eps) int g^2 / sigma^2 * D alpha^2 s0^2 / (2 (alpha^2 s0^2 + sigma^2)) dt.
    from hybrids.data import ArrayDataset
    from hybrids.hooks import dsm_loss_variance_eval

    sde, dim, s0, eps = VPSDE(), 2, 0.5, 1e-3
    model = GaussianDataModel(torch.zeros(dim, dtype=torch.float64), torch.full((dim,), s0**2, dtype=torch.float64), sde)
    x = s0 * torch.randn(4000, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    data = ArrayDataset("gaussian", x, None, None)

    def integrand(t: float) -> float:
        tt = torch.tensor([t], dtype=torch.float64)
        m = sde.marginal_coefs(tt)
        a2, s2 = float(m.mean_coef) ** 2, float(m.std) ** 2
        return _density(sde, t) * dim * a2 * s0**2 / (2 * (a2 * s0**2 + s2))

    expected = _quad(integrand, eps, sde.T) / (sde.T - eps)
    out = dsm_loss_variance_eval(model, data, device=torch.device("cpu"), generator=torch.Generator().manual_seed(1),
                                 num_examples=4000, batch_size=1000, eps=eps)
    for name in ("uniform", "is"):
        assert abs(out[name]["mean"] - expected) < 4 * out[name]["se"], (name, out[name], expected)
    # here (exact score, eps = 1e-3) IS divides the variance by about 4.5
    assert out["var_is"] < out["var_uniform"] / 2
    assert out["variance_ratio"] == pytest.approx(out["var_uniform"] / out["var_is"])
