"""EDM's Heun sampler of the probability-flow ODE (hybrids.samplers.heun) against closed forms.

Ground truth: data N(mu, diag(v)) (GaussianDataModel, exact scores). Per dimension, the
probability flow from t0 to eps is the affine map x -> m_e mu + sqrt(V_e / V_0) (x - m_0 mu) with
V_t = m_t^2 v + std_t^2, and the sampler's last (Euler, to sigma = 0) step is Tweedie's
E[x_0 | x_eps] = (x + std_e^2 s(x, eps)) / m_e, also affine: :func:`gaussian_denoised_flow` is
the exact output of a perfect solver. Heun's global error is O(h^2) (measured: about 4 times
smaller per doubling of N).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hybrids.models.analytic import GaussianDataModel
from hybrids.samplers.heun import edm_time_steps, heun_sample, noise_level
from hybrids.samplers.sde import CountedScore
from hybrids.sdes import SDE, SubVPSDE, VESDE, VPSDE

F64 = torch.float64
SDES = {"ve": VESDE(), "vp": VPSDE(), "subvp": SubVPSDE()}
EPS = {"ve": 1e-5, "vp": 1e-3, "subvp": 1e-3}


def gaussian_denoised_flow(sde: SDE, mean: torch.Tensor, var: torch.Tensor, x: torch.Tensor, t0: float,
                           eps: float) -> torch.Tensor:
    """The exact probability-flow map of N(mean, diag(var)) data from t0 to eps followed by Tweedie's
    denoising step at eps, applied to ``x [B, D]``."""
    c0, ce = (sde.marginal_coefs(torch.tensor([t], dtype=F64)) for t in (t0, eps))
    v0, ve = c0.mean_coef**2 * var + c0.std**2, ce.mean_coef**2 * var + ce.std**2
    x_eps = ce.mean_coef * mean + torch.sqrt(ve / v0) * (x - c0.mean_coef * mean)
    score = -(x_eps - ce.mean_coef * mean) / ve
    return (x_eps + ce.std**2 * score) / ce.mean_coef


def _gaussian(draw_seed: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(draw_seed)
    mean = 2 * torch.randn(dim, generator=g, dtype=F64)
    var = 0.05 + 0.95 * torch.rand(dim, generator=g, dtype=F64)
    return mean, var


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(sorted(SDES)), dim=st.integers(1, 5), frac=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**31 - 1))
def test_heun_is_the_exact_gaussian_flow_map(kind, dim, frac, seed):
    """40 Heun steps from any t0 in [eps + 0.05 (T_mid - eps), T_mid] (T_mid = 0.5 for VE, 0.1 for
    VP and subVP) end within 2e-3 (1 + |x|) of the exact map (measured worst: a few 1e-4).
    Catches (each checked by breaking heun.py once): the score's sign flipped, the drift dropped
    (y = x / m replaced by x), the corrector dropped (Euler: first order, off by ~1e-2)."""
    sde, eps = SDES[kind], EPS[kind]
    t_mid = 0.5 if kind == "ve" else 0.1
    t0 = eps + frac * (t_mid - eps)
    mean, var = _gaussian(seed, dim)
    model = GaussianDataModel(mean, var, sde)
    x = model.sample(64, t0, generator=torch.Generator().manual_seed(seed))
    out = heun_sample(model, sde, x_init=x, t_start=t0, eps=eps, num_steps=40)
    exact = gaussian_denoised_flow(sde, mean, var, x, t0, eps)
    assert torch.all((out.samples - exact).abs() <= 2e-3 * (1 + exact.abs())), (out.samples - exact).abs().max()
    assert out.nfe == 79


@pytest.mark.parametrize("kind", sorted(SDES))
def test_heun_ends_with_the_denoising_step(kind):
    """With eps = t0 / 2 (sigma(eps) = 0.08 VE, 0.17 VP, 0.03 subVP) the last step, Euler's to
    sigma = 0, is a large move (Tweedie's E[x_0 | x_eps]); the output must still be the exact map
    within 2e-3 (1 + |x|). Catches the last step taken as a Heun step (with F = 0 at sigma = 0
    that halves the denoising step: off by 4e-2 / 0.15 / 5e-3 (1 + |x|) here), which at
    eps = 1e-3 moves x by less than the flow-map test's tolerance."""
    sde = SDES[kind]
    t0 = 0.5 if kind == "ve" else 0.1
    mean, var = torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.3, 0.05], dtype=F64)
    model = GaussianDataModel(mean, var, sde)
    x = model.sample(256, t0, generator=torch.Generator().manual_seed(0))
    out = heun_sample(model, sde, x_init=x, t_start=t0, eps=t0 / 2, num_steps=40)
    exact = gaussian_denoised_flow(sde, mean, var, x, t0, t0 / 2)
    assert torch.all((out.samples - exact).abs() <= 2e-3 * (1 + exact.abs())), (out.samples - exact).abs().max()


@pytest.mark.parametrize("kind", sorted(SDES))
def test_heun_error_is_second_order(kind):
    """From the prior at T (sigma_max 50 to 150), doubling N from 10 to 20 and from 20 to 40 cuts the
    largest error about 4-fold (measured 4.4 to 5.3; asserted between 3 and 7). Catches: a first-order step (Euler: ratio
    2), a corrector slope taken at the wrong time."""
    sde, eps = SDES[kind], EPS[kind]
    mean, var = torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.3, 0.05], dtype=F64)
    model = GaussianDataModel(mean, var, sde)
    x = sde.prior_sample((256, 2), torch.Generator().manual_seed(0), dtype=F64)
    exact = gaussian_denoised_flow(sde, mean, var, x, sde.T, eps)
    errors = [float((heun_sample(model, sde, x_init=x, eps=eps, num_steps=n).samples - exact).abs().max())
              for n in (10, 20, 40)]
    assert 3 < errors[0] / errors[1] < 7 and 3 < errors[1] / errors[2] < 7, errors


@pytest.mark.parametrize("kind", sorted(SDES))
def test_heun_from_the_prior_has_the_data_moments(kind):
    """The standalone sampler (prior draws at T, 40 steps) gives the law of E[x_0 | x_eps]:
    mean mu and variance m_e^2 v^2 / V_e, within 5 standard errors over 20_000 samples, and no
    correlation between the dimensions. Catches a flipped score sign (variance explodes) and a
    dropped drift (VP/subVP: the prior's scale is kept, variance ~ 1)."""
    sde, eps = SDES[kind], EPS[kind]
    mean, var = torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.3, 0.05], dtype=F64)
    model = GaussianDataModel(mean, var, sde)
    n = 20_000
    x = heun_sample(model, sde, (n, 2), eps=eps, num_steps=40, generator=torch.Generator().manual_seed(1),
                    dtype=F64).samples
    c = sde.marginal_coefs(torch.tensor([eps], dtype=F64))
    target_var = c.mean_coef**2 * var**2 / (c.mean_coef**2 * var + c.std**2)
    cov = torch.cov(x.T)
    assert torch.all((x.mean(0) - mean).abs() < 5 * (target_var / n).sqrt()), (x.mean(0), mean)
    assert torch.all((cov.diagonal() - target_var).abs() < 5 * target_var * math.sqrt(2 / (n - 1))), cov
    assert abs(float(cov[0, 1])) < 5 * float((target_var.prod() / n).sqrt()), cov


def test_edm_time_steps_follow_the_rho_schedule():
    """sigma(t_i) = (sigma_max^(1/7) + i/(N-1) (sigma_min^(1/7) - sigma_max^(1/7)))^7, ends exact.
    Catches times spaced linearly in t (which the flow-map tests, at 40 steps, do not see)."""
    for sde in SDES.values():
        times = edm_time_steps(sde, 0.5, 1e-3, 6)
        sig = noise_level(sde, times)
        lo, hi = float(noise_level(sde, torch.tensor(1e-3, dtype=F64))), float(noise_level(sde, torch.tensor(0.5, dtype=F64)))
        expected = (hi ** (1 / 7) + torch.arange(6, dtype=F64) / 5 * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
        torch.testing.assert_close(sig, expected, rtol=1e-12, atol=0.0)
        assert float(times[0]) == 0.5 and float(times[-1]) == 1e-3 and bool((times.diff() < 0).all())


def test_nfe_is_counted_and_reported():
    """2 N - 1 score calls, as ``CountedScore`` sees them."""
    sde = VPSDE()
    model = GaussianDataModel(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64), sde)
    counted = CountedScore(model.score)
    out = heun_sample(counted, sde, (4, 3), num_steps=7, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert out.nfe == counted.nfe == 13 and out.samples.shape == (4, 3)


def test_bad_settings_are_value_errors():
    sde = VPSDE()
    model = GaussianDataModel(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64), sde)
    x = torch.zeros(3, 2, dtype=F64)
    for steps in (1, 2.5, True, "10", float("nan")):
        with pytest.raises(ValueError, match="num_steps >= 2"):
            heun_sample(model, sde, x_init=x, num_steps=steps)
    for rho in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="rho"):
            heun_sample(model, sde, x_init=x, rho=rho)
    with pytest.raises(ValueError, match="t_start"):
        heun_sample(model, sde, x_init=x, t_start=1.5)
    with pytest.raises(ValueError, match="t_start"):
        heun_sample(model, sde, x_init=x, t_start=1e-3, eps=1e-3)
    with pytest.raises(ValueError, match="eps"):
        heun_sample(model, sde, x_init=x, eps=0.0)
    with pytest.raises(ValueError, match="shape"):
        heun_sample(model, sde)


def test_non_finite_samples_raise():
    sde = VPSDE()
    with pytest.raises(FloatingPointError, match="heun_sample: the samples are NaN"):
        heun_sample(lambda x, t: torch.full_like(x, float("nan")), sde, (2, 2), num_steps=3)


def test_heun_below_T_needs_draws_of_p_t_start():
    """Without x_init the start is a prior draw, which is p_T only: heun_sample from t_start < T
    must refuse (it once drew from the prior and started at t_start, sampling the wrong law)."""
    from hybrids.samplers.heun import heun_sample
    from hybrids.sdes import VPSDE

    with pytest.raises(ValueError, match="heun_sample starts from prior draws at T only"):
        heun_sample(lambda x, t: -x, VPSDE(), (2, 3), t_start=0.5)
