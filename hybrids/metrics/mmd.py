"""Sample quality of low-dimensional points: the unbiased squared MMD with Gaussian kernels.

Gretton, Borgwardt, Rasch, Schoelkopf and Smola, "A Kernel Two-Sample Test", JMLR 2012. For
samples x_i (m of them) and reference points y_j (n), and the kernel

    k(a, b) = (1 / L) sum_l exp(-||a - b||^2 / (2 h_l^2))      (bandwidths h_1, ..., h_L),

    MMD^2_u = 1/(m(m-1)) sum_{i != i'} k(x_i, x_i') + 1/(n(n-1)) sum_{j != j'} k(y_j, y_j')
              - 2/(mn) sum_{i, j} k(x_i, y_j),

an unbiased estimate of MMD^2(P, Q), which is 0 exactly when P = Q (the Gaussian kernel is
characteristic); the estimate can be negative. Its expectation does not depend on m and n, so
values at different sample sizes are comparable. The image metrics (FD, KID) need a feature
extractor; for 2-D toys the points themselves are the features and this is the library's
distance (``hybrids.hooks.sample_mmd_eval``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def gaussian_kernel(a: Tensor, b: Tensor, bandwidths: Sequence[float]) -> Tensor:
    """k(a_i, b_j) = mean_l exp(-||a_i - b_j||^2 / (2 h_l^2)) for ``a [m, d]``, ``b [n, d]``.

    Returns:
        ``[m, n]``.
    """
    sq = torch.cdist(a, b).pow(2)
    return torch.stack([torch.exp(-sq / (2.0 * h**2)) for h in bandwidths]).mean(0)


def gaussian_mmd2_unbiased(x: Tensor, y: Tensor, bandwidths: Sequence[float] = (0.1, 0.3, 1.0)) -> float:
    """The unbiased squared MMD (module docstring) of points ``x [m, d]`` and ``y [n, d]`` (float64).

    Raises:
        ValueError: for fewer than 2 points on a side, different dimensions, or a bandwidth <= 0.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"points must be [m, d] and [n, d]; got {tuple(x.shape)} and {tuple(y.shape)}.")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 points per side; got {m} and {n}.")
    bandwidths = [float(h) for h in bandwidths]
    if not bandwidths or min(bandwidths) <= 0:
        raise ValueError(f"the kernel bandwidths must be positive (and at least one); got {bandwidths}.")
    x, y = x.double(), y.double()
    kxx, kyy = gaussian_kernel(x, x, bandwidths), gaussian_kernel(y, y, bandwidths)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * gaussian_kernel(x, y, bandwidths).mean())
