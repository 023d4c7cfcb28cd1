"""Probability-flow ODE sampler against the analytic Gaussian flow."""
from __future__ import annotations

import math

import pytest
import torch

from hybrids.models.analytic import GaussianDataModel
from hybrids.samplers.ode import ode_sample
from hybrids.sdes import SubVPSDE, VESDE, VPSDE

F64 = torch.float64
MEAN = torch.tensor([0.5, -1.0], dtype=F64)
VAR = torch.tensor([0.2, 0.05], dtype=F64)


def _flow_map(sde, x_T, t_end):
    """For Gaussian data the probability flow is affine per dimension:
    x_t = m_t mu + sqrt(V_t / V_T) (x_T - m_T mu),  V_t = m_t^2 v + sigma_t^2."""
    def params(t):
        c = sde.marginal_coefs(torch.tensor([t], dtype=F64))
        return c.mean_coef * MEAN, c.mean_coef**2 * VAR + c.std**2

    m_T, v_T = params(sde.T)
    m_t, v_t = params(t_end)
    return m_t + torch.sqrt(v_t / v_T) * (x_T - m_T)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_ode_sampler_follows_the_exact_flow(sde):
    model = GaussianDataModel(MEAN, VAR, sde)
    x_T = sde.prior_sample((64, 2), torch.Generator().manual_seed(0), dtype=F64)
    eps = 1e-3
    out = ode_sample(model, sde, x_init=x_T, eps=eps, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(out.samples, _flow_map(sde, x_T, eps), rtol=1e-5, atol=1e-5)
    assert out.nfe > 5


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE()], ids=["vp", "subvp"])
@pytest.mark.parametrize("denoise", [False, True])
def test_ode_samples_have_data_moments(sde, denoise):
    """Prior samples map to mean m_eps mu and variance V_eps = m^2 v + sigma^2 (prior mismatch
    ~e^-10 for VP); denoised samples E[x_0 | x_eps] have mean mu and variance v m^2 v / V_eps."""
    model = GaussianDataModel(MEAN, VAR, sde)
    eps = 0.2  # large enough that the variances differ visibly (the last assert)
    out = ode_sample(model, sde, (4000, 2), eps=eps, generator=torch.Generator().manual_seed(1), dtype=F64,
                     denoise=denoise)
    x, n = out.samples, out.samples.shape[0]
    c = sde.marginal_coefs(torch.tensor([eps], dtype=F64))
    v_eps = c.mean_coef**2 * VAR + c.std**2
    mean = MEAN if denoise else c.mean_coef * MEAN
    var = VAR**2 * c.mean_coef**2 / v_eps if denoise else v_eps
    assert torch.all((x.mean(0) - mean).abs() < 4 * torch.sqrt(var / n))
    assert torch.all((x.var(0) - var).abs() < 4 * var * math.sqrt(2 / (n - 1)))
    assert torch.all((x.var(0) - (v_eps if denoise else VAR**2 * c.mean_coef**2 / v_eps)).abs() > 4 * var * math.sqrt(2 / (n - 1)))


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
def test_ode_sampler_starts_at_any_time(sde):
    """From exact draws of p_t at t_start = 0.3 < T the sampler follows the exact flow from t_start
    (catches t_start ignored: the flow from T maps p_0.3 draws elsewhere)."""
    model = GaussianDataModel(MEAN, VAR, sde)
    x = model.sample(64, 0.3, generator=torch.Generator().manual_seed(0))
    out = ode_sample(model, sde, x_init=x, t_start=0.3, eps=1e-3, rtol=1e-8, atol=1e-8)
    c0 = sde.marginal_coefs(torch.tensor([0.3], dtype=F64))
    ce = sde.marginal_coefs(torch.tensor([1e-3], dtype=F64))
    v0, ve = c0.mean_coef**2 * VAR + c0.std**2, ce.mean_coef**2 * VAR + ce.std**2
    exact = ce.mean_coef * MEAN + torch.sqrt(ve / v0) * (x - c0.mean_coef * MEAN)
    torch.testing.assert_close(out.samples, exact, rtol=1e-5, atol=1e-5)


def test_ode_sampler_arguments():
    sde = VPSDE()
    model = GaussianDataModel(MEAN, VAR, sde)
    with pytest.raises(ValueError, match="eps"):
        ode_sample(model, sde, (2, 2), eps=0.0)
    with pytest.raises(ValueError, match="shape"):
        ode_sample(model, sde)
    with pytest.raises(ValueError, match="t_start"):
        ode_sample(model, sde, x_init=torch.zeros(2, 2), t_start=1.5)
    with pytest.raises(ValueError, match="t_start"):
        ode_sample(model, sde, x_init=torch.zeros(2, 2), t_start=1e-3, eps=1e-3)
    with pytest.raises(ValueError, match="give x_init"):
        ode_sample(model, sde, (2, 2), t_start=0.5)
    for tolerances in (dict(rtol=0.0), dict(atol=-1e-3), dict(rtol=float("nan")), dict(atol="1e-3")):
        with pytest.raises(ValueError, match="of the adaptive ODE solver must be a finite number > 0"):
            ode_sample(model, sde, (2, 2), **tolerances)
    out = ode_sample(model, sde, (3, 2), generator=torch.Generator().manual_seed(0), rtol=1e-3, atol=1e-3)
    assert out.samples.shape == (3, 2) and out.samples.dtype == torch.float32
