"""SDEs against closed forms, simulations and the Fokker-Planck equation (docs/methods.md)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings, strategies as st
from scipy.integrate import solve_ivp

from hybrids.models.analytic import GaussianDataModel
from hybrids.sdes import SDE, SubVPSDE, VESDE, VPSDE, get_sde

ALL_SDES = [VESDE(), VPSDE(), SubVPSDE()]
IDS = ["ve", "vp", "subvp"]
f64 = torch.float64


def _t(v):
    return torch.tensor(v, dtype=f64)


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_marginal_coefficients_solve_the_moment_odes(sde):
    """Independent computation: m' = a m and Var' = 2 a Var + g^2 integrated by scipy from the
    SDE's drift and diffusion alone must reproduce marginal_coefs (VE starts at sigma_min^2)."""

    def rhs(t, y):
        tt = _t([t])
        a = sde.drift_coef(tt).item()
        g2 = sde.diffusion(tt).item() ** 2
        return [a * y[0], 2 * a * y[1] + g2]

    var0 = sde.marginal_coefs(_t([0.0])).std.item() ** 2
    ts = np.linspace(0.0, 1.0, 11)
    sol = solve_ivp(rhs, (0.0, 1.0), [1.0, var0], t_eval=ts, rtol=1e-10, atol=1e-12)
    coefs = sde.marginal_coefs(_t(ts))
    np.testing.assert_allclose(sol.y[0], coefs.mean_coef.numpy(), rtol=1e-6)
    np.testing.assert_allclose(sol.y[1], coefs.std.numpy() ** 2, rtol=1e-6, atol=1e-10)


def test_closed_form_table():
    """The table of docs/methods.md at a few times, written out independently."""
    t = _t([0.0, 0.3, 1.0])
    ve = VESDE()
    np.testing.assert_allclose(ve.marginal_coefs(t).std.numpy(), 0.01 * 5000 ** t.numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        ve.diffusion(t).numpy(), 0.01 * 5000 ** t.numpy() * math.sqrt(2 * math.log(5000)), rtol=1e-12
    )
    B = 0.1 * t.numpy() + t.numpy() ** 2 * 19.9 / 2
    alpha = np.exp(-B / 2)
    vp, sub = VPSDE(), SubVPSDE()
    np.testing.assert_allclose(vp.marginal_coefs(t).mean_coef.numpy(), alpha, rtol=1e-12)
    np.testing.assert_allclose(vp.marginal_coefs(t).std.numpy(), np.sqrt(1 - alpha**2), rtol=1e-12)
    np.testing.assert_allclose(sub.marginal_coefs(t).std.numpy(), 1 - alpha**2, rtol=1e-12)
    beta = 0.1 + t.numpy() * 19.9
    np.testing.assert_allclose(sub.diffusion(t).numpy(), np.sqrt(beta * (1 - np.exp(-2 * B))), rtol=1e-12)
    np.testing.assert_allclose(vp.likelihood_weighting(t).numpy(), beta, rtol=1e-12)
    assert ve.T == vp.T == sub.T == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_marginal_matches_euler_maruyama_simulation(sde):
    """Simulate dx = f dt + g dw from x0 (VE: x0 + sigma_min z, its convention) and compare
    the moments at t = 0.4 with marginal(); tolerance from the Monte-Carlo standard error."""
    gen = torch.Generator().manual_seed(0)
    n, steps, t_end = 20000, 800, 0.4
    x0 = torch.full((n, 1), 0.7, dtype=f64)
    x = x0 + sde.marginal_coefs(_t([0.0])).std.item() * torch.randn(n, 1, generator=gen, dtype=f64)
    dt = t_end / steps
    for i in range(steps):
        t = torch.full((n,), i * dt, dtype=f64)
        x = x + sde.drift(x, t) * dt + sde.diffusion(t)[:, None] * math.sqrt(dt) * torch.randn(
            n, 1, generator=gen, dtype=f64
        )
    mean, std = sde.marginal(x0[:1], _t([t_end]))
    se_mean = std.item() / math.sqrt(n)
    assert abs(x.mean().item() - mean.item()) < 5 * se_mean + 1e-3
    var, emp_var = std.item() ** 2, x.var().item()
    assert abs(emp_var - var) < 5 * var * math.sqrt(2 / n) + 2e-3 * var


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
@settings(max_examples=25, deadline=None)
@given(t=st.floats(0.0, 1.0))
def test_t_for_std_round_trip(sde, t):
    tt = _t([t])
    std = sde.marginal_coefs(tt).std
    if isinstance(sde, (VPSDE, SubVPSDE)) and t < 1e-4:
        return  # std -> 0 at t = 0 for VP/subVP: the inverse is exercised above 1e-4
    back = sde.t_for_std(std)
    assert back.item() == pytest.approx(t, abs=1e-9)


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
@settings(max_examples=25, deadline=None)
@given(t=st.floats(1e-5, 1.0))
def test_t_for_noise_ratio_round_trip_and_generic_bisection(sde, t):
    """t -> sigma(t)/m(t) -> t through the closed-form inverse and through the base class's
    bisection (used by SDEs without a closed form). Catches a closed form inverting sigma instead
    of sigma/m (VP, subVP) or a bisection that moves the wrong end."""
    coefs = sde.marginal_coefs(_t([t]))
    ratio = coefs.std / coefs.mean_coef
    assert sde.t_for_noise_ratio(ratio).item() == pytest.approx(t, rel=1e-9, abs=1e-12)
    assert SDE.t_for_noise_ratio(sde, ratio).item() == pytest.approx(t, rel=1e-9, abs=1e-12)


def test_t_for_noise_ratio_rejects_out_of_range():
    """Ratios outside [sigma(0)/m(0), sigma(T)/m(T)] are refused with the range, by the closed
    forms and the bisection alike."""
    with pytest.raises(ValueError, match=r"VESDE: noise-to-signal ratios .* lie in \[0.01, 50\]; got 0.001"):
        VESDE().t_for_noise_ratio(0.001)
    with pytest.raises(ValueError, match=r"VPSDE: noise-to-signal ratios .* lie in \[0, 152.\d*\]; got -1"):
        VPSDE().t_for_noise_ratio(-1.0)
    with pytest.raises(ValueError, match=r"SubVPSDE: .* got 10000"):
        SubVPSDE().t_for_noise_ratio(1e4)
    with pytest.raises(ValueError, match=r"lie in \[0.01, 50\]"):
        SDE.t_for_noise_ratio(VESDE(), 60.0)


def test_t_for_std_rejects_out_of_range():
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE().t_for_std(0.001)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        VPSDE().t_for_std(1.5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        SubVPSDE().t_for_std(0.0)


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_prior_log_prob_matches_scipy(sde):
    gen = torch.Generator().manual_seed(1)
    z = sde.prior_sample((5, 2, 3), generator=gen, dtype=f64)
    ref = scipy.stats.norm(0, sde.prior_std).logpdf(z.numpy()).reshape(5, -1).sum(1)
    np.testing.assert_allclose(sde.prior_log_prob(z).numpy(), ref, rtol=1e-12)
    # the prior is the marginal at T up to the (tiny, VP/subVP) mean and std mismatch
    assert sde.marginal_coefs(_t([1.0])).std.item() == pytest.approx(sde.prior_std, rel=1e-2)


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_perturb_returns_its_noise(sde):
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 3, dtype=f64, generator=gen)
    t = _t([0.1, 0.2, 0.5, 0.9])
    x_t, z = sde.perturb(x0, t, generator=gen)
    mean, std = sde.marginal(x0, t)
    torch.testing.assert_close(x_t, mean + std[:, None] * z)
    with pytest.raises(ValueError, match="noise has shape"):
        sde.perturb(x0, t, noise=torch.zeros(4, 2, dtype=f64))


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
@pytest.mark.parametrize("probability_flow", [False, True])
def test_reverse_drift_formula(sde, probability_flow):
    model = GaussianDataModel(torch.zeros(2, dtype=f64), torch.tensor([0.5, 2.0], dtype=f64), sde)
    rev = sde.reverse(model.score, probability_flow=probability_flow)
    x = torch.randn(3, 2, dtype=f64)
    t = _t([0.1, 0.5, 0.8])
    c = 0.5 if probability_flow else 1.0
    expected = sde.drift(x, t) - c * sde.diffusion(t)[:, None] ** 2 * model.score(x, t)
    torch.testing.assert_close(rev.drift(x, t), expected)
    g = rev.diffusion(t)
    assert torch.all(g == 0) if probability_flow else torch.allclose(g, sde.diffusion(t))


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_probability_flow_satisfies_the_continuity_equation(sde):
    """d/dt log p_t(x) = -div F(x, t) - F . grad log p_t for the probability-flow velocity F of the
    exact Gaussian marginals (time derivative by central differences): ties drift, diffusion,
    marginals and reverse() together."""
    var = torch.tensor([0.3, 1.7], dtype=f64)
    model = GaussianDataModel(torch.tensor([0.4, -0.2], dtype=f64), var, sde)
    rev = sde.reverse(model.score, probability_flow=True)
    x = torch.tensor([[0.3, -1.0], [1.2, 0.5]], dtype=f64)
    for t0 in (0.1, 0.4, 0.7):
        t = _t([t0, t0])
        h = 1e-5
        dlogp_dt = (model.log_prob(x, t + h) - model.log_prob(x, t - h)) / (2 * h)
        F = rev.drift(x, t)
        # divergence of F: F is affine in x for Gaussian marginals; its Jacobian is diagonal
        _, var_t = model.marginal_params(t, x)
        div_F = (sde.drift_coef(t)[:, None] + 0.5 * sde.diffusion(t)[:, None] ** 2 / var_t).sum(1)
        rhs = -div_F - (F * model.score(x, t)).sum(1)
        torch.testing.assert_close(dlogp_dt, rhs, rtol=1e-5, atol=1e-6)


def test_ve_discretize_increments_variance_exactly():
    ve = VESDE()
    x = torch.zeros(3, 2, dtype=f64)
    t = _t([0.5, 0.2, 0.001])
    f_d, G = ve.discretize(x, t, 0.01)
    assert torch.all(f_d == 0)
    prev = torch.where(t - 0.01 > 0, ve.sigma(t - 0.01), torch.zeros_like(t))
    torch.testing.assert_close(G**2, ve.sigma(t) ** 2 - prev**2)


def test_vp_discretize_is_ddpm_step():
    vp = VPSDE()
    x = torch.randn(2, 3, dtype=f64)
    t, dt = _t([0.5, 0.9]), 1e-3
    f_d, G = vp.discretize(x, t, dt)
    beta_i = (0.1 + t * 19.9) * dt
    torch.testing.assert_close(f_d, (torch.sqrt(1 - beta_i)[:, None] - 1) * x)
    torch.testing.assert_close(G, torch.sqrt(beta_i))
    torch.testing.assert_close(vp.langevin_alpha(t, dt), 1 - beta_i)


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_drift_divergence_equals_autograd(sde):
    x = torch.randn(3, 4, dtype=f64, requires_grad=True)
    t = _t([0.2, 0.5, 0.9])
    f = sde.drift(x, t)
    div = sum(torch.autograd.grad(f[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(4))
    torch.testing.assert_close(sde.drift_divergence(t, 4), div)


def test_get_sde_and_validation():
    assert isinstance(get_sde("VP"), VPSDE)
    with pytest.raises(ValueError, match="subvp"):
        get_sde("cosine")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        VPSDE(beta_min=5.0, beta_max=1.0)


@pytest.mark.parametrize("sde", ALL_SDES, ids=IDS)
def test_time_dtype_follows_x(sde):
    x = torch.randn(2, 3, dtype=torch.float32)
    mean, std = sde.marginal(x, torch.tensor([0.1, 0.2], dtype=f64))
    assert mean.dtype == torch.float32 and std.dtype == torch.float32
    mean, std = sde.marginal(x.double(), 0.3)
    assert mean.dtype == f64 and std.shape == (2,)
