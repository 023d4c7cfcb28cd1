"""Condition numbers of Gaussian M-densities: closed form against the explicit covariance."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from hybrids.metrics.conditioning import (
    empirical_condition_numbers,
    m_density_condition_number,
    m_density_covariance,
)


def simulated_covariance(cov: torch.Tensor, sigma: float, M: int, n: int, seed: int) -> torch.Tensor:
    """Empirical covariance of y_m = x + sigma eps_m, x ~ N(0, cov), flattened measurement-major."""
    g = torch.Generator().manual_seed(seed)
    D = cov.shape[0]
    x = torch.randn(n, D, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    y = x[:, None, :] + sigma * torch.randn(n, M, D, generator=g, dtype=torch.float64)
    return torch.cov(y.reshape(n, M * D).T)


@settings(max_examples=25, deadline=None)
@given(
    D=st.integers(1, 5),
    M=st.integers(1, 6),
    sigma=st.floats(0.05, 3.0),
    seed=st.integers(0, 10_000),
)
def test_closed_form_equals_eigenvalue_ratio(D, M, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    lam = torch.rand(D, generator=g, dtype=torch.float64) * 4 + 1e-3
    ev = torch.linalg.eigvalsh(m_density_covariance(lam, sigma, M))
    assert math.isclose(m_density_condition_number(lam, sigma, M), float(ev.max() / ev.min()), rel_tol=1e-9)
    # A rotated (non-diagonal) covariance with the same spectrum has the same kappa.
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    cov = q @ torch.diag(lam) @ q.T
    ev = torch.linalg.eigvalsh(m_density_covariance(cov, sigma, M))
    assert math.isclose(m_density_condition_number(lam, sigma, M), float(ev.max() / ev.min()), rel_tol=1e-8)
    assert math.isclose(empirical_condition_numbers(cov, sigma, [M])[0], float(ev.max() / ev.min()), rel_tol=1e-8)


def test_covariance_matches_simulation():
    """Cov(y) = 1 1^T kron Sigma + sigma^2 I, checked against a Monte-Carlo estimate."""
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    sigma, M, n = 0.7, 3, 200_000
    exact = m_density_covariance(cov, sigma, M)
    emp = simulated_covariance(cov, sigma, M, n, seed=0)
    se = ((exact.diag()[:, None] * exact.diag()[None, :] + exact**2) / n).sqrt()
    assert bool(((emp - exact).abs() < 5 * se).all())


def test_class_and_sigma_dependence():
    """At fixed sigma kappa grows like M; along a class (sigma = s sqrt M, M >= 2) it is constant."""
    lam = torch.tensor([2.0, 0.5, 0.01])
    s_eff = 0.5
    ks = empirical_condition_numbers(torch.diag(lam), [s_eff * math.sqrt(M) for M in (1, 2, 4, 16)], [1, 2, 4, 16])
    assert math.isclose(ks[0], (2.0 + 0.25) / (0.01 + 0.25), rel_tol=1e-6)
    assert all(math.isclose(k, 1 + 2.0 / 0.25, rel_tol=1e-6) for k in ks[1:])
    fixed = empirical_condition_numbers(torch.diag(lam), 1.0, [2, 4, 8])
    assert [round(k, 6) for k in fixed] == [5.0, 9.0, 17.0]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=">= 0"):
        m_density_condition_number([1.0, -0.5], 1.0, 2)
    with pytest.raises(ValueError, match="M"):
        m_density_condition_number([1.0], 1.0, 0)
    with pytest.raises(ValueError, match="sigma"):
        m_density_covariance(torch.ones(2), 0.0, 2)
    with pytest.raises(ValueError, match="one per M"):
        empirical_condition_numbers(torch.eye(2), [1.0, 2.0], [1, 2, 3])
