"""GPS: the permutation-equivariant parametrisation of Gaussian M-density scores.

Saremi, Srivastava and Bach, "Universal Smoothed Score Functions for Generative Modeling", arXiv
2023. Multimeasurement noise model: y_m = x + sigma eps_m, m = 1..M, so the
empirical mean ybar = mean_m y_m = x + sigma_eff eps with sigma_eff = sigma / sqrt(M). Completing
the square in the factorial kernel gives

    log p(y) = -sum_m ||y_m - ybar||^2 / (2 sigma^2) + log p_{sigma_eff}(ybar)
               - (M - 1) D/2 log(2 pi sigma^2) - D/2 log M,
    grad_{y_m} log p(y) = (ybar - y_m) / sigma^2 + g(ybar) / M,   g = grad log p_{sigma_eff},
    xhat(y) = E[x | y] = ybar + (sigma^2 / M) g(ybar) = ybar + sigma_eff^2 g(ybar).

GPS (same paper, Definition 1) parametrises the one function g of ybar with a network; every
measurement score is then permutation equivariant by construction. Models with the same
sigma_eff form a universality class and share the network (``GPSModel.with_measurements``).

Network convention (this library's choice, following the authors' code): the wrapped raw network
``net(u, t)`` is a *denoiser*. It receives the scaled input u = ybar / sqrt(data_var + sigma_eff^2)
and the constant t = sigma_eff broadcast to ``[B]``, and returns xhat(ybar) directly; the score
follows as g(ybar) = (xhat - ybar) / sigma_eff^2. The authors' code scales the input by
1 / sqrt(0.225^2 + sigma^2) in [0, 1] units (data_var = 0.45^2 in the library's [-1, 1] units, the
default here); this module uses sigma_eff, the noise std actually present in ybar, so that u has
unit variance for data of variance ``data_var`` (the two agree for M = 1).
"""
from __future__ import annotations

import math
from typing import Callable

import gin
import torch
from torch import Tensor, nn

from hybrids.models.base import NoiseConditionalModel

#: Data variance used for the input scaling: 0.225^2 in [0, 1] units is 0.45^2 in [-1, 1] units.
DEFAULT_DATA_VAR = 0.45**2


def _check_sigma_m(sigma: float, M: int) -> None:
    if isinstance(M, bool) or not isinstance(M, int) or M < 1:
        raise ValueError(f"M (number of measurements) must be an int >= 1, got {M!r}.")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}.")


def _check_measurements(y: Tensor, M: int) -> None:
    if y.ndim < 3 or y.shape[1] != M:
        raise ValueError(
            f"y must have shape [B, M={M}, *event] (measurements on axis 1); got {tuple(y.shape)}. "
            "Stack the M measurements with torch.stack(ys, dim=1)."
        )


def measurement_score_from_ybar(y: Tensor, g_ybar: Tensor, sigma: float) -> Tensor:
    """M-density score from the score of the mean: (ybar - y_m)/sigma^2 + g(ybar)/M.

    Args:
        y: measurements ``[B, M, *event]``.
        g_ybar: grad log p_{sigma/sqrt M}(ybar) at ybar = y.mean(1), ``[B, *event]``.
        sigma: per-measurement noise std.

    Returns:
        grad_y log p(y), ``[B, M, *event]``.
    """
    M = y.shape[1]
    ybar = y.mean(dim=1, keepdim=True)
    return (ybar - y) / sigma**2 + g_ybar.unsqueeze(1) / M


def multimeasurement_log_prob(
    y: Tensor, log_p_ybar_fn: Callable[[Tensor], Tensor], sigma: float
) -> Tensor:
    """Exact log-density of the Gaussian M-density given log p_{sigma/sqrt M} of the mean.

    log p(y) = -sum_m ||y_m - ybar||^2 / (2 sigma^2) + log p_{sigma/sqrt M}(ybar)
               - (M - 1) D/2 log(2 pi sigma^2) - (D/2) log M

    Args:
        y: measurements ``[B, M, *event]``, D = prod(event).
        log_p_ybar_fn: ``ybar [B, *event] -> [B]`` log-density (nats) of ybar = x + sigma/sqrt(M) eps.
        sigma: per-measurement noise std.

    Returns:
        ``[B]`` log p(y) in nats.
    """
    if y.ndim < 3:
        raise ValueError(f"y must have shape [B, M, *event]; got {tuple(y.shape)}.")
    M = y.shape[1]
    D = math.prod(y.shape[2:])
    ybar = y.mean(dim=1)
    quad = ((y - ybar.unsqueeze(1)) ** 2).flatten(1).sum(1) / (2 * sigma**2)
    const = -(M - 1) * D / 2 * math.log(2 * math.pi * sigma**2) - D / 2 * math.log(M)
    return -quad + log_p_ybar_fn(ybar) + const


@gin.configurable(module="hybrids.models")
class GPSModel(NoiseConditionalModel):
    """Score of a Gaussian M-density through one network g(ybar) (GPS, Saremi et al. 2023).

    Args:
        net: raw network ``net(u: [B, *event], t: [B]) -> like u`` predicting the clean x from the
            scaled mean u = ybar / sqrt(data_var + sigma_eff^2) (see the module docstring).
        sigma: per-measurement noise std in model units (MNIST in [-1, 1]: 2.0).
        M: number of measurements (MNIST: 16, so sigma_eff = 0.5).
        data_var: data variance for the input scaling (default 0.45^2, [-1, 1] units).
    """

    def __init__(self, net: nn.Module, sigma: float = 2.0, M: int = 16, data_var: float = DEFAULT_DATA_VAR):
        super().__init__()
        _check_sigma_m(sigma, M)
        if not data_var >= 0:
            raise ValueError(f"data_var must be >= 0, got {data_var!r}.")
        self.net = net
        self.sigma = float(sigma)
        self.M = int(M)
        self.data_var = float(data_var)

    @property
    def sigma_eff(self) -> float:
        """Noise std of the mean, sigma / sqrt(M): the model's universality class."""
        return self.sigma / math.sqrt(self.M)

    def with_measurements(self, M_new: int) -> "GPSModel":
        """A member of the same universality class with ``M_new`` measurements.

        sigma is rescaled to sigma sqrt(M_new / M) so that sigma/sqrt(M) is unchanged; the returned
        model shares this model's network (the same parameter tensors), no retraining needed.
        """
        _check_sigma_m(self.sigma, M_new)
        return GPSModel(self.net, self.sigma * math.sqrt(M_new / self.M), M_new, self.data_var)

    def xhat_from_ybar(self, ybar: Tensor) -> Tensor:
        """Bayes estimator E[x | ybar] = ybar + sigma_eff^2 g(ybar): the network output.

        Args:
            ybar: measurement means ``[B, *event]``.

        Returns:
            xhat, ``[B, *event]``.
        """
        s2 = self.sigma_eff**2
        t = torch.full((ybar.shape[0],), self.sigma_eff, dtype=ybar.dtype, device=ybar.device)
        return self.net(ybar / math.sqrt(self.data_var + s2), t)

    def ybar_score(self, ybar: Tensor) -> Tensor:
        """g(ybar) = grad log p_{sigma_eff}(ybar) = (xhat(ybar) - ybar) / sigma_eff^2, ``[B, *event]``."""
        return (self.xhat_from_ybar(ybar) - ybar) / self.sigma_eff**2

    def measurement_score(self, y: Tensor) -> Tensor:
        """grad_{y_m} log p(y) = (ybar - y_m)/sigma^2 + g(ybar)/M for y ``[B, M, *event]``."""
        _check_measurements(y, self.M)
        return measurement_score_from_ybar(y, self.ybar_score(y.mean(dim=1)), self.sigma)

    def xhat(self, y: Tensor) -> Tensor:
        """Jump: xhat(y) = ybar + (sigma^2/M) g(ybar) for y ``[B, M, *event]``; returns ``[B, *event]``."""
        _check_measurements(y, self.M)
        return self.xhat_from_ybar(y.mean(dim=1))

    def denoise(self, y: Tensor) -> Tensor:
        """Alias of :meth:`xhat` (the multimeasurement Bayes estimator)."""
        return self.xhat(y)

    def score(self, x: Tensor, t: Tensor | None = None, *, create_graph: bool | None = None) -> Tensor:
        """The contract's score: g(x) = grad log p_{sigma_eff}(x) at the model's single noise level.

        The model has one noise level (sigma_eff); ``t`` is accepted for the
        ``NoiseConditionalModel`` contract and not used.
        """
        return self.ybar_score(x)
