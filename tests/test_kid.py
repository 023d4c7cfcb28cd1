"""Kernel inception distance (hybrids.metrics.kid): closed forms and unbiasedness."""
from __future__ import annotations

import math

import pytest
import torch

from hybrids.metrics.kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel

F64 = torch.float64


def _brute_force(x, y):
    """The U-statistic written out with loops (an independent computation)."""
    k = lambda a, b: (float(a @ b) / a.numel() + 1.0) ** 3
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_matches_the_written_out_u_statistic():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64) + 0.5
    assert mmd2_unbiased(x, y) == pytest.approx(_brute_force(x, y), rel=1e-12)
    assert polynomial_kernel(x, y).shape == (7, 5)


def _poly_moment_mmd2(m1, s1, m2, s2):
    """MMD^2 of N(m1, s1^2) and N(m2, s2^2) in d = 1 with k(a, b) = (ab + 1)^3: for independent a, b,
    E k = E[a^3] E[b^3] + 3 E[a^2] E[b^2] + 3 E[a] E[b] + 1."""
    def moments(mu, s):
        return mu, mu**2 + s**2, mu**3 + 3 * mu * s**2

    def ek(p, q):
        (a1, a2, a3), (b1, b2, b3) = moments(*p), moments(*q)
        return a3 * b3 + 3 * a2 * b2 + 3 * a1 * b1 + 1

    P, Q = (m1, s1), (m2, s2)
    return ek(P, P) + ek(Q, Q) - 2 * ek(P, Q)


def test_expectation_equals_the_closed_form_mmd2_of_two_gaussians():
    """Catches: a biased (V-statistic) estimate, a wrong kernel degree or scaling."""
    g = torch.Generator().manual_seed(1)
    expected = _poly_moment_mmd2(0.3, 1.0, -0.2, 0.8)
    vals = torch.tensor([mmd2_unbiased(0.3 + torch.randn(50, 1, generator=g, dtype=F64),
                                       -0.2 + 0.8 * torch.randn(40, 1, generator=g, dtype=F64)) for _ in range(2000)])
    se = float(vals.std() / math.sqrt(vals.numel()))
    assert abs(float(vals.mean()) - expected) < 4 * se, (float(vals.mean()), expected, se)


def test_unbiased_for_equal_distributions_where_the_plug_in_is_not():
    """Same law on both sides: the estimate averages to 0 at any sample size (the V-statistic,
    which keeps the diagonal, is positive by O(1/n))."""
    g = torch.Generator().manual_seed(2)
    vals, biased = [], []
    for _ in range(1000):
        x, y = torch.randn(10, 4, generator=g, dtype=F64), torch.randn(10, 4, generator=g, dtype=F64)
        vals.append(mmd2_unbiased(x, y))
        biased.append(float(polynomial_kernel(x, x).mean() + polynomial_kernel(y, y).mean()
                            - 2 * polynomial_kernel(x, y).mean()))
    vals, biased = torch.tensor(vals), torch.tensor(biased)
    se = float(vals.std() / math.sqrt(vals.numel()))
    assert abs(float(vals.mean())) < 4 * se
    assert float(biased.mean()) > 10 * se


def test_subsets_and_bad_inputs():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(60, 2, generator=g), torch.randn(80, 2, generator=g) + 1.0
    out = kernel_inception_distance(x, y, num_subsets=20, subset_size=30, generator=g)
    assert out["subset_size"] == 30 and out["num_subsets"] == 20 and out["kid"] > 0 and out["kid_subset_std"] > 0
    assert out["kid_full"] == pytest.approx(mmd2_unbiased(x, y))
    with pytest.raises(ValueError, match="at least 2"):
        mmd2_unbiased(x[:1], y)
    with pytest.raises(ValueError, match=r"\[m, d\]"):
        mmd2_unbiased(x, y[:, :1])


def test_jump_autocorrelation_of_an_ar1_chain_is_phi_to_the_lag():
    """x_(r+1) = phi x_r + sqrt(1 - phi^2) e: rho(k) = phi^k. Catches: a missing centring, the
    lag-0 normaliser taken per pair, lags off by one."""
    from hybrids.metrics.mixing import jump_autocorrelation

    g = torch.Generator().manual_seed(0)
    phi, chains, steps, dim = 0.7, 50, 2000, 3
    x = torch.zeros(chains, steps, dim, dtype=F64)
    x[:, 0] = torch.randn(chains, dim, generator=g, dtype=F64)
    for r in range(1, steps):
        x[:, r] = phi * x[:, r - 1] + math.sqrt(1 - phi**2) * torch.randn(chains, dim, generator=g, dtype=F64)
    rho = jump_autocorrelation(x, max_lag=3)
    assert rho == pytest.approx([phi, phi**2, phi**3], abs=0.02)
    with pytest.raises(ValueError, match="max_lag"):
        jump_autocorrelation(x[:, :3], max_lag=3)
