"""Condition numbers of Gaussian M-densities (the GPS paper (Saremi et al., 2023), Section 4; docs/methods.md).

For data x ~ N(mu, Sigma) with eigenvalues lambda_1..lambda_D and y_m = x + sigma eps_m,
m = 1..M, the covariance of y = (y_1, ..., y_M) in R^{MD} (measurement-major order) is

    Cov(y) = 1_M 1_M^T kron Sigma + sigma^2 I_{MD},

with eigenvalues sigma^2 ((M - 1) D times) and M lambda_i + sigma^2. Hence

    kappa = 1 + M lambda_max / sigma^2                          (M >= 2),
    kappa = (lambda_max + sigma^2) / (lambda_min + sigma^2)     (M = 1).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def _check(sigma: float, M: int) -> None:
    if isinstance(M, bool) or not isinstance(M, int) or M < 1:
        raise ValueError(f"M must be an int >= 1, got {M!r}.")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}.")


def _eigvals(eigvals) -> Tensor:
    lam = torch.as_tensor(eigvals, dtype=torch.float64).flatten()
    if lam.numel() == 0:
        raise ValueError("eigvals is empty; pass the D eigenvalues of the data covariance.")
    if bool((lam < 0).any()):
        raise ValueError(
            f"eigvals must be >= 0 (a covariance spectrum); got min {float(lam.min()):.3g}. "
            "Clip round-off negatives with .clamp(min=0)."
        )
    return lam


def m_density_condition_number(eigvals: Tensor | Sequence[float], sigma: float, M: int) -> float:
    """Closed-form condition number of the M-density of N(mu, Sigma) data.

    Args:
        eigvals: eigenvalues lambda of the data covariance, ``[D]`` (>= 0).
        sigma: per-measurement noise std.
        M: number of measurements.

    Returns:
        kappa = 1 + M max(lambda)/sigma^2 for M >= 2, (max(lambda) + sigma^2)/(min(lambda) + sigma^2)
        for M = 1.
    """
    _check(sigma, M)
    lam = _eigvals(eigvals)
    s2 = float(sigma) ** 2
    if M == 1:
        return float((lam.max() + s2) / (lam.min() + s2))
    return float(1.0 + M * lam.max() / s2)


def m_density_covariance(eigvals_or_cov: Tensor, sigma: float, M: int) -> Tensor:
    """Explicit covariance of y = (y_1, ..., y_M): 1 1^T kron Sigma + sigma^2 I, ``[M D, M D]``.

    Args:
        eigvals_or_cov: data covariance ``[D, D]``, or its diagonal ``[D]`` (Sigma = diag).
        sigma: per-measurement noise std.
        M: number of measurements.

    Returns:
        float64 ``[M D, M D]`` covariance, index m * D + d for y_m[d].
    """
    _check(sigma, M)
    cov = torch.as_tensor(eigvals_or_cov, dtype=torch.float64)
    if cov.ndim == 1:
        cov = torch.diag(cov)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"pass eigenvalues [D] or a covariance [D, D]; got shape {tuple(cov.shape)}.")
    D = cov.shape[0]
    ones = torch.ones(M, M, dtype=torch.float64)
    return torch.kron(ones, cov) + float(sigma) ** 2 * torch.eye(M * D, dtype=torch.float64)


def empirical_condition_numbers(data_cov: Tensor, sigma: float | Sequence[float], Ms: Sequence[int]) -> list[float]:
    """kappa(M) for a data covariance (e.g. a dataset's empirical covariance).

    Args:
        data_cov: data covariance ``[D, D]`` (symmetrised; round-off negative eigenvalues clipped to 0).
        sigma: one noise std for all M, or one per M (e.g. sigma_eff sqrt(M) along a universality class).
        Ms: numbers of measurements.

    Returns:
        One kappa per entry of ``Ms``.
    """
    cov = torch.as_tensor(data_cov, dtype=torch.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"data_cov must be a square matrix [D, D]; got shape {tuple(cov.shape)}.")
    lam = torch.linalg.eigvalsh((cov + cov.T) / 2).clamp(min=0)
    sigmas = [float(sigma)] * len(Ms) if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if len(sigmas) != len(Ms):
        raise ValueError(f"got {len(sigmas)} sigmas for {len(Ms)} values of M; give one sigma or one per M.")
    return [m_density_condition_number(lam, s, M) for s, M in zip(sigmas, Ms)]
