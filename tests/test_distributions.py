"""Tests of hybrids.distributions against quadrature, mpmath, explicit factorisations and autograd."""
from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import integrate, stats

from hybrids.distributions import (
    FALLBACK_MASS,
    FALLBACK_MAX_HALF_WIDTH,
    LOG_SCALE_MIN,
    discretized_logistic_mixture_log_prob,
    infer_num_channels,
    logistic_mixture_log_prob,
    logistic_mixture_score,
    num_mixture_params,
    sample_discretized_logistic_mixture,
    sample_discretized_logistic_mixture_pixel,
    sample_logistic_mixture,
    sample_logistic_mixture_pixel,
    unpack_mixture_params,
)

D64 = torch.float64


def random_params(
    num_channels: int, nr_mix: int, seed: int, *, hw=(1, 1), log_scale_range=(-9.0, 6.0),
    mean_range=(-2.5, 2.5), batch: int = 1,
) -> torch.Tensor:
    """Random float64 params [batch, P, H, W] with means and log-scales in the given ranges."""
    g = torch.Generator().manual_seed(seed)
    c, n = num_channels, nr_mix
    shape = (batch,) + tuple(hw)
    logits = 3.0 * torch.randn((batch, n) + tuple(hw), generator=g, dtype=D64)
    lo, hi = mean_range
    means = lo + (hi - lo) * torch.rand((batch, c * n) + tuple(hw), generator=g, dtype=D64)
    lo, hi = log_scale_range
    log_s = lo + (hi - lo) * torch.rand((batch, c * n) + tuple(hw), generator=g, dtype=D64)
    coeffs = 2.0 * torch.randn((batch, n * c * (c - 1) // 2) + tuple(hw), generator=g, dtype=D64)
    del shape
    return torch.cat([logits, means, log_s, coeffs], dim=1)


def all_levels(num_channels: int, num_levels: int) -> torch.Tensor:
    """Every image of one pixel: int64 [K^C, C, 1, 1]."""
    grid = list(itertools.product(range(num_levels), repeat=num_channels))
    return torch.tensor(grid, dtype=torch.int64).reshape(-1, num_channels, 1, 1)


# ----------------------------------------------------------------------------------------------
# layout


def test_num_mixture_params_matches_pixelcnnpp():
    assert num_mixture_params(1, 10) == 30
    assert num_mixture_params(3, 10) == 100
    assert num_mixture_params(3, 1) == 10
    with pytest.raises(ValueError, match="nr_mix"):
        num_mixture_params(3, 0)


def test_unpack_layout_positions():
    n, c = 2, 3
    params = torch.arange(num_mixture_params(c, n), dtype=D64).reshape(1, -1, 1, 1)
    mix = unpack_mixture_params(params, c)
    # means of channel 1 are entries n + n .. n + 2n
    assert mix.means[0, 1, :, 0, 0].tolist() == [4.0, 5.0]
    # log-scales of channel 0 start at n + C n = 8 (clamped below at LOG_SCALE_MIN)
    assert mix.log_scales[0, 0, :, 0, 0].tolist() == [8.0, 9.0]
    # coupling (B|R) is pair index 1 -> entries n + 2 C n + n = 16, 17
    assert torch.allclose(mix.coeffs[0, 1, :, 0, 0], torch.tanh(torch.tensor([16.0, 17.0], dtype=D64)))
    low = torch.full_like(params, -50.0)
    assert torch.all(unpack_mixture_params(low, c).log_scales == LOG_SCALE_MIN)


def test_unpack_rejects_wrong_size_and_ambiguity():
    with pytest.raises(ValueError, match="multiple of 10"):
        unpack_mixture_params(torch.zeros(1, 31, 1, 1), 3)
    with pytest.raises(ValueError, match="num_channels"):
        infer_num_channels(30)
    assert infer_num_channels(100) == 3 and infer_num_channels(9) == 1


# ----------------------------------------------------------------------------------------------
# discretized masses


@settings(max_examples=25, deadline=None)
@given(
    setting=st.sampled_from([(1, 2), (1, 17), (1, 256), (3, 2), (3, 17)]),
    nr_mix=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    extreme=st.booleans(),
)
def test_masses_sum_to_one(setting, nr_mix, seed, extreme):
    c, k_levels = setting
    scale_range = (-12.0, 10.0) if extreme else (-4.0, 1.0)
    params = random_params(c, nr_mix, seed, log_scale_range=scale_range)
    k = all_levels(c, k_levels)
    log_p = discretized_logistic_mixture_log_prob(params.expand(k.shape[0], -1, -1, -1), k, k_levels)
    assert torch.isfinite(log_p).all()
    total = torch.logsumexp(log_p, dim=0).exp().item()
    assert abs(total - 1.0) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c,k_levels", [(1, 256), (3, 17)])
def test_discretized_gradients_are_finite_for_extreme_params(dtype, c, k_levels):
    """Training needs finite gradients even where torch.where discards a non-finite branch."""
    g = torch.Generator().manual_seed(0)
    params = random_params(c, 3, 1, hw=(4, 4), batch=64, log_scale_range=(-12.0, 25.0),
                           mean_range=(-30.0, 30.0)).to(dtype).requires_grad_(True)
    k = torch.randint(0, k_levels, (64, c, 4, 4), generator=g)
    k[:8] = k_levels // 2  # interior bins
    log_p = discretized_logistic_mixture_log_prob(params, k, k_levels)
    (grad,) = torch.autograd.grad(log_p.sum(), params)
    assert torch.isfinite(log_p).all() and torch.isfinite(grad).all()


def mixture_pdf_1d(params: torch.Tensor):
    """Independent scipy density of a one-channel, one-pixel mixture (LOG_SCALE_MIN applied)."""
    n = params.shape[1] // 3
    p = params[0, :, 0, 0].numpy()
    w = np.exp(p[:n] - np.logaddexp.reduce(p[:n]))
    mu, s = p[n : 2 * n], np.exp(np.maximum(p[2 * n :], LOG_SCALE_MIN))
    return (lambda x: float(np.sum(w * stats.logistic.pdf(x, loc=mu, scale=s)))), mu, s


def quad_mass(pdf, mu, s, lo, hi):
    """int_lo^hi pdf, split at the component means so quadrature sees every peak."""
    cuts = [lo] + sorted(m for m in mu if lo < m < hi) + [hi]
    total = 0.0
    for a, b in zip(cuts[:-1], cuts[1:]):
        total += integrate.quad(pdf, a, b, epsabs=1e-13, epsrel=1e-11, limit=200)[0]
    return total


@settings(max_examples=15, deadline=None)
@given(k_levels=st.sampled_from([2, 17, 256]), nr_mix=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_bin_mass_equals_integral_of_density(k_levels, nr_mix, seed):
    params = random_params(1, nr_mix, seed, log_scale_range=(-4.0, 0.5), mean_range=(-1.2, 1.2))
    pdf, mu, s = mixture_pdf_1d(params)
    delta = 1.0 / (k_levels - 1)
    g = np.random.default_rng(seed)
    levels = sorted({0, k_levels - 1, *g.integers(0, k_levels, size=4).tolist()})
    k = torch.tensor(levels).reshape(-1, 1, 1, 1)
    log_p = discretized_logistic_mixture_log_prob(params.expand(len(levels), -1, -1, -1), k, k_levels)
    for level, lp in zip(levels, log_p.tolist()):
        c = 2 * level * delta - 1
        lo = -np.inf if level == 0 else c - delta
        hi = np.inf if level == k_levels - 1 else c + delta
        if lo == -np.inf:
            ref = quad_mass(pdf, mu, s, min(mu.min(), c) - 60 * s.max(), hi)
        elif hi == np.inf:
            ref = quad_mass(pdf, mu, s, lo, max(mu.max(), c) + 60 * s.max())
        else:
            ref = quad_mass(pdf, mu, s, lo, hi)
        # components with interior mass < FALLBACK_MASS may use the midpoint rule, whose relative
        # error is below h^2 / 6 with h = delta / s < FALLBACK_MAX_HALF_WIDTH
        fallback_err = nr_mix * FALLBACK_MASS * FALLBACK_MAX_HALF_WIDTH**2 / 6
        assert abs(math.exp(lp) - ref) <= 1e-7 * ref + fallback_err


def test_small_mass_fallback_is_used_and_accurate_in_far_tail():
    k_levels = 256
    delta = 1.0 / (k_levels - 1)
    params = torch.tensor([0.0, -6.0, 0.0], dtype=D64).reshape(1, 3, 1, 1)  # mu = -6, s = 1
    k = torch.tensor([k_levels - 2]).reshape(1, 1, 1, 1)
    log_p = discretized_logistic_mixture_log_prob(params, k, k_levels).item()
    c = 2 * (k_levels - 2) * delta - 1
    midpoint = stats.logistic.logpdf(c, loc=-6.0) + math.log(2 * delta)
    exact = math.log(stats.logistic.cdf(c + delta, loc=-6.0) - stats.logistic.cdf(c - delta, loc=-6.0))
    assert math.exp(exact) < FALLBACK_MASS  # we are in the fallback region
    assert log_p == pytest.approx(midpoint, abs=1e-12)  # the fallback formula is what came out
    assert log_p == pytest.approx(exact, abs=1e-5)  # and it is accurate


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("log_s,mean", [(-7.0, -1.0), (-5.0, 0.9), (-3.0, -3.0), (4.0, 0.0)])
def test_tail_masses_match_mpmath(dtype, log_s, mean):
    """Far-tail masses (down to e^-1000) against 1200-digit arithmetic, in float32 and float64."""
    mpmath.mp.dps = 1200  # masses down to e^-2200 are differences of numbers near 1
    k_levels = 256
    delta = mpmath.mpf(1) / (k_levels - 1)
    params = torch.tensor([0.0, mean, log_s], dtype=dtype).reshape(1, 3, 1, 1)
    levels = [1, 2, 50, 127, 128, 200, 253, 254]
    k = torch.tensor(levels).reshape(-1, 1, 1, 1)
    log_p = discretized_logistic_mixture_log_prob(params.expand(len(levels), -1, -1, -1), k, k_levels)
    s = mpmath.exp(mpmath.mpf(log_s))
    sig = lambda z: 1 / (1 + mpmath.exp(-z))  # noqa: E731
    for level, lp in zip(levels, log_p.tolist()):
        c = 2 * level * delta - 1
        ref = mpmath.log(sig((c + delta - mean) / s) - sig((c - delta - mean) / s))
        tol = 1e-9 if dtype == torch.float64 else 2e-3 * max(1.0, abs(float(ref)) / 100)
        assert lp == pytest.approx(float(ref), abs=tol, rel=1e-5 if dtype == torch.float32 else 1e-9)


@settings(max_examples=15, deadline=None)
@given(k_levels=st.sampled_from([2, 17, 256]), nr_mix=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_rgb_coupling_factorises_per_component(k_levels, nr_mix, seed):
    """log P(k) = logsumexp_i [log pi_i + sum_c log m_ci], m_ci a 1-channel mass with a shifted mean."""
    n = nr_mix
    params = random_params(3, n, seed, log_scale_range=(-5.0, 0.0), hw=(2, 3), batch=2)
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, k_levels, (2, 3, 2, 3), generator=g)
    log_p = discretized_logistic_mixture_log_prob(params, k, k_levels)

    centres = 2.0 * k.to(D64) / (k_levels - 1) - 1.0
    logits = params[:, :n]
    mu = params[:, n : 4 * n].reshape(2, 3, n, 2, 3)
    log_s = params[:, 4 * n : 7 * n].reshape(2, 3, n, 2, 3)
    a = torch.tanh(params[:, 7 * n :]).reshape(2, 3, n, 2, 3)  # (G|R), (B|R), (B|G)
    shifted = torch.stack(
        [
            mu[:, 0],
            mu[:, 1] + a[:, 0] * centres[:, 0:1],
            mu[:, 2] + a[:, 1] * centres[:, 0:1] + a[:, 2] * centres[:, 1:2],
        ],
        dim=1,
    )
    per_component = torch.zeros(2, n, 2, 3, dtype=D64)
    for c in range(3):
        for i in range(n):
            one = torch.cat(
                [torch.zeros_like(logits[:, :1]), shifted[:, c, i : i + 1], log_s[:, c, i : i + 1]], dim=1
            )
            # per-pixel mass: evaluate each pixel as its own 1x1 image
            for h in range(2):
                for w in range(3):
                    per_component[:, i, h, w] += discretized_logistic_mixture_log_prob(
                        one[:, :, h : h + 1, w : w + 1], k[:, c : c + 1, h : h + 1, w : w + 1], k_levels
                    )
    ref = torch.logsumexp(torch.log_softmax(logits, dim=1) + per_component, dim=1).sum(dim=(1, 2))
    torch.testing.assert_close(log_p, ref, rtol=1e-10, atol=1e-10)


def test_discretized_rejects_bad_input():
    params = random_params(1, 2, 0)
    with pytest.raises(TypeError, match="integer"):
        discretized_logistic_mixture_log_prob(params, torch.zeros(1, 1, 1, 1), 17)
    with pytest.raises(ValueError, match="shape"):
        discretized_logistic_mixture_log_prob(params, torch.zeros(1, 1, 2, 1, dtype=torch.int64), 17)


# ----------------------------------------------------------------------------------------------
# continuous density and score


@settings(max_examples=10, deadline=None)
@given(nr_mix=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_continuous_density_matches_scipy_and_integrates_to_one(nr_mix, seed):
    params = random_params(1, nr_mix, seed, log_scale_range=(-3.0, 1.0))
    pdf, mu, s = mixture_pdf_1d(params)
    xs = torch.tensor([-5.0, -1.3, 0.0, 0.7, 4.0], dtype=D64).reshape(-1, 1, 1, 1)
    log_p = logistic_mixture_log_prob(params.expand(5, -1, -1, -1), xs)
    ref = [math.log(pdf(x)) for x in xs.flatten().tolist()]
    np.testing.assert_allclose(log_p.numpy(), ref, rtol=1e-10)
    total = quad_mass(pdf, mu, s, mu.min() - 80 * s.max(), mu.max() + 80 * s.max())
    assert total == pytest.approx(1.0, abs=1e-8)


def test_continuous_rgb_density_integrates_to_one():
    """Riemann sum on a 3-D grid (spectrally accurate for a smooth, fast-decaying density)."""
    params = random_params(3, 2, 7, log_scale_range=(-1.0, -0.3), mean_range=(-0.5, 0.5))
    axis = torch.linspace(-16.0, 16.0, 121, dtype=D64)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=0).reshape(3, -1)
    x = grid.T.reshape(-1, 3, 1, 1)
    log_p = logistic_mixture_log_prob(params.expand(x.shape[0], -1, -1, -1), x)
    total = log_p.exp().sum().item() * (axis[1] - axis[0]).item() ** 3
    assert total == pytest.approx(1.0, abs=1e-6)


@settings(max_examples=15, deadline=None)
@given(c=st.sampled_from([1, 2, 3]), nr_mix=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_score_equals_autograd_and_finite_differences(c, nr_mix, seed):
    params = random_params(c, nr_mix, seed, log_scale_range=(-2.0, 1.0), hw=(2, 2), batch=2)
    g = torch.Generator().manual_seed(seed + 1)
    x = 1.5 * torch.randn(2, c, 2, 2, generator=g, dtype=D64)
    score = logistic_mixture_score(params, x)
    x_req = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(logistic_mixture_log_prob(params, x_req).sum(), x_req)
    torch.testing.assert_close(score, auto, rtol=1e-8, atol=1e-8)
    eps = 1e-6
    fd = torch.zeros_like(x)
    for idx in itertools.product(*(range(s) for s in x.shape)):
        e = torch.zeros_like(x)
        e[idx] = eps
        fd[idx] = (
            logistic_mixture_log_prob(params, x + e)[idx[0]] - logistic_mixture_log_prob(params, x - e)[idx[0]]
        ) / (2 * eps)
    torch.testing.assert_close(score, fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_continuous_density_has_finite_second_derivatives_far_in_the_tails(dtype):
    """DSM through an autograd score back-propagates through the score, so the log-density needs
    finite second derivatives. Mixture params with the smallest scale put x hundreds of scales from
    every mean; the closed forms of the logistic log pdf are d/dz = -tanh(z/2) and
    d^2/dz^2 = -sech^2(z/2)/2. Catches logaddexp(-z, 0) in the log pdf: finite value and gradient,
    but a NaN double backward (inf / inf) once |z| > 88 in float32 (training diverged at update ~180
    on MNIST)."""
    params = random_params(1, 2, 0, log_scale_range=(LOG_SCALE_MIN, LOG_SCALE_MIN), hw=(2, 2), batch=1).to(dtype)
    mix = unpack_mixture_params(params, 1)
    x = torch.tensor([[[[-1.0, 1.0], [0.05, -0.3]]]], dtype=dtype, requires_grad=True)
    z = ((x.unsqueeze(2) - mix.means) * torch.exp(-mix.log_scales)).detach()
    assert z.abs().max() > 100  # the float32 overflow regime of the old form
    (score,) = torch.autograd.grad(logistic_mixture_log_prob(params, x).sum(), x, create_graph=True)
    (hess_diag,) = torch.autograd.grad(score.sum(), x)
    assert torch.isfinite(score).all() and torch.isfinite(hess_diag).all()
    # per pixel: sum_i w_i [-sech^2(z_i/2)/(2 s_i^2)] + Var_w(-tanh(z_i/2)/s_i); the mixture's exact Hessian
    inv_s = torch.exp(-mix.log_scales)
    w = torch.softmax(mix.log_pi - z.abs().sum(1) - 2 * torch.log1p(torch.exp(-z.abs())).sum(1)
                      - mix.log_scales.sum(1), dim=1)
    g = (-torch.tanh(z / 2) * inv_s)[:, 0]
    curv = (-0.5 / torch.cosh(z / 2) ** 2 * inv_s ** 2)[:, 0]
    expected = (w * curv).sum(1) + (w * g ** 2).sum(1) - (w * g).sum(1) ** 2
    torch.testing.assert_close(hess_diag[:, 0], expected, rtol=1e-4, atol=1e-2)


@settings(max_examples=10, deadline=None)
@given(z=st.floats(-500, 500, allow_nan=False), dtype=st.sampled_from([torch.float32, D64]))
def test_logistic_log_pdf_derivatives_match_closed_forms(z, dtype):
    """log pdf(z) = -z - 2 softplus(-z), its derivative -tanh(z/2) and second derivative
    -sech^2(z/2)/2 at any z (including 0 and |z| > 88, where exp(|z|) overflows float32)."""
    from hybrids.distributions import _logistic_log_pdf

    zt = torch.tensor([z], dtype=dtype, requires_grad=True)
    y = _logistic_log_pdf(zt, torch.zeros_like(zt))
    (d1,) = torch.autograd.grad(y.sum(), zt, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), zt)
    z64 = torch.tensor([z], dtype=D64)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y.double().detach(), -z64 - 2 * torch.logaddexp(-z64, torch.zeros_like(z64)), **tol)
    torch.testing.assert_close(d1.double(), -torch.tanh(z64 / 2), **tol)
    torch.testing.assert_close(d2.double(), -0.5 / torch.cosh(z64 / 2) ** 2, **tol)


def test_continuous_needs_matching_shapes():
    with pytest.raises(ValueError, match="shape"):
        logistic_mixture_log_prob(random_params(1, 2, 0), torch.zeros(1, 1, 3, 3, dtype=D64))


# ----------------------------------------------------------------------------------------------
# sampling


@pytest.mark.parametrize("c,k_levels,nr_mix,seed", [(1, 6, 3, 0), (1, 17, 2, 1), (3, 3, 2, 2)])
def test_discrete_sample_frequencies_match_masses(c, k_levels, nr_mix, seed):
    n_samples = 40_000
    params = random_params(c, nr_mix, seed, log_scale_range=(-2.0, -0.5), mean_range=(-0.8, 0.8))
    g = torch.Generator().manual_seed(123)
    draws = sample_discretized_logistic_mixture(
        params.expand(n_samples, -1, -1, -1), k_levels, g, num_channels=c
    )
    assert draws.dtype == torch.int64 and draws.shape == (n_samples, c, 1, 1)
    cells = all_levels(c, k_levels)
    probs = discretized_logistic_mixture_log_prob(
        params.expand(cells.shape[0], -1, -1, -1), cells, k_levels
    ).exp().numpy()
    code = torch.zeros(n_samples, dtype=torch.int64)
    for ch in range(c):
        code = code * k_levels + draws[:, ch, 0, 0]
    counts = np.bincount(code.numpy(), minlength=cells.shape[0])
    expected = probs * n_samples
    keep = expected > 5
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    p_value = stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue
    assert p_value > 1e-3
    # a wrong pmf is detected: compare against the masses shifted by one level
    wrong = np.roll(probs, 1) * n_samples
    assert stats.chisquare(counts + 1e-9, (wrong + 1e-3) * n_samples / (wrong + 1e-3).sum()).pvalue < 1e-6


def test_continuous_samples_follow_mixture_cdf():
    params = random_params(1, 3, 5, log_scale_range=(-2.0, 0.0))
    n = params.shape[1] // 3
    p = params[0, :, 0, 0].numpy()
    w = np.exp(p[:n] - np.logaddexp.reduce(p[:n]))
    mu, s = p[n : 2 * n], np.exp(p[2 * n :])
    x = sample_logistic_mixture(params.expand(20_000, -1, -1, -1), torch.Generator().manual_seed(0))
    cdf = lambda v: np.sum(w[None] * stats.logistic.cdf(v[:, None], loc=mu, scale=s), axis=1)  # noqa: E731
    assert stats.kstest(x.flatten().numpy(), cdf).pvalue > 1e-3


def test_continuous_rgb_samples_have_coupled_means():
    """One component, coupling a_GR: E[x_G | x_R] = mu_G + a_GR x_R (logistic noise mean 0)."""
    params = torch.zeros(1, 10, 1, 1, dtype=D64)
    params[0, 1:4, 0, 0] = torch.tensor([0.2, -0.1, 0.3])  # means
    params[0, 4:7] = math.log(0.3)
    params[0, 7] = 0.8  # (G|R)
    x = sample_logistic_mixture(params.expand(50_000, -1, -1, -1), torch.Generator().manual_seed(3))
    r, gch = x[:, 0, 0, 0].numpy(), x[:, 1, 0, 0].numpy()
    slope = np.polyfit(r, gch, 1)[0]
    assert slope == pytest.approx(math.tanh(0.8), abs=0.02)


def test_sampling_is_deterministic_and_pixelwise():
    params = random_params(3, 4, 9, hw=(3, 4), batch=2, log_scale_range=(-3.0, 0.0))
    draw = lambda p, seed: sample_discretized_logistic_mixture(  # noqa: E731
        p, 256, torch.Generator().manual_seed(seed)
    )
    a, b = draw(params, 11), draw(params, 11)
    assert torch.equal(a, b)
    assert not torch.equal(a, draw(params, 12))
    # changing the params of one pixel changes nothing at the other pixels
    other = params.clone()
    other[:, :, 1, 2] += 3.0
    c = draw(other, 11)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1, 2] = False
    assert torch.equal(a[:, :, mask], c[:, :, mask])
    x1 = sample_logistic_mixture(params, torch.Generator().manual_seed(4))
    x2 = sample_logistic_mixture(params, torch.Generator().manual_seed(4))
    assert torch.equal(x1, x2) and x1.dtype == D64


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, D64])
@pytest.mark.parametrize("k_levels", [None, 5, 256])
def test_pixel_samplers_equal_full_samplers_on_one_pixel(c, dtype, k_levels):
    """The per-pixel samplers (params [B, P]) are the full-image samplers on the 1 x 1 image:
    the same uniforms (u_mix [B], then u_logistic [B, C]) give bitwise the same values, and the
    generator advances by the same draws, so their law is the full samplers'. Catches a
    different component choice (cdf rounding), a missing coupling or clamp, other draws or
    another draw order."""
    for seed in range(20):
        params = random_params(c, 4, seed, batch=64, log_scale_range=(-8.0, 1.0)).to(dtype)
        g_pixel, g_full = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        if k_levels is None:
            pixel = sample_logistic_mixture_pixel(params[:, :, 0, 0], g_pixel, num_channels=c)
            full = sample_logistic_mixture(params, g_full, num_channels=c)
        else:
            pixel = sample_discretized_logistic_mixture_pixel(params[:, :, 0, 0], k_levels, g_pixel,
                                                              num_channels=c)
            full = sample_discretized_logistic_mixture(params, k_levels, g_full, num_channels=c)
        assert pixel.shape == (64, c) and pixel.dtype == full.dtype
        assert torch.equal(pixel, full[:, :, 0, 0])
        assert torch.equal(g_pixel.get_state(), g_full.get_state())


def test_pixel_samplers_follow_the_pmf():
    """Distribution check of the per-pixel discrete sampler against the pmf (chi-square)."""
    params = random_params(3, 3, 4, log_scale_range=(-2.0, -0.5), mean_range=(-0.8, 0.8))
    k_levels, n = 4, 40_000
    k = sample_discretized_logistic_mixture_pixel(params[:, :, 0, 0].expand(n, -1), k_levels,
                                                  torch.Generator().manual_seed(1), num_channels=3)
    codes = (k[:, 0] * k_levels + k[:, 1]) * k_levels + k[:, 2]
    counts = torch.bincount(codes, minlength=k_levels**3).double()
    grid = torch.tensor(list(itertools.product(range(k_levels), repeat=3)))[:, :, None, None]
    probs = discretized_logistic_mixture_log_prob(params.expand(len(grid), -1, -1, -1), grid,
                                                  k_levels).exp()
    keep = probs * n >= 5
    observed = torch.cat([counts[keep], counts[~keep].sum().view(1)])
    expected = torch.cat([probs[keep], probs[~keep].sum().view(1)]) * n
    assert stats.chisquare(observed.numpy(), expected.numpy() * n / float(expected.sum())).pvalue > 1e-4


def test_pixel_samplers_reject_bad_params():
    with pytest.raises(ValueError, match=r"\[B, P\]"):
        sample_logistic_mixture_pixel(torch.zeros(2, 3, 1, 1))
    with pytest.raises(ValueError, match="not a multiple"):
        sample_logistic_mixture_pixel(torch.zeros(2, 7), num_channels=1)
    with pytest.raises(ValueError, match="num_levels"):
        sample_discretized_logistic_mixture_pixel(torch.zeros(2, 3), 1)
