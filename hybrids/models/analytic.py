"""Exact noise-conditional model for Gaussian data: the ground truth of hybrids' tests.

For data x_0 ~ N(mu, diag(v)) and an SDE with p_0t(x_t | x_0) = N(m(t) x_0, sigma(t)^2 I),
the marginal is p_t = N(m(t) mu, diag(m(t)^2 v + sigma(t)^2)), so log p_t, its score and the
posterior mean E[x_0 | x_t] (Tweedie) are closed forms.
"""
from __future__ import annotations

import math

import gin
import torch
from torch import Tensor

from hybrids.models.base import NoiseConditionalModel, check_time
from hybrids.sdes import SDE
from hybrids.tensors import expand_as_batch, randn_like


@gin.configurable(module="hybrids.models")
class GaussianDataModel(NoiseConditionalModel):
    """p_t for data N(mean, diag(var)) diffused by ``sde``; exact at every t in [0, T].

    At t = 0 the VE convention sigma(0) = sigma_min applies (see ``hybrids.sdes``); for VP and
    subVP sigma(0) = 0 and p_0 is the data distribution itself.

    Args:
        mean: data mean, shape of one example (e.g. ``[D]`` or ``[C, H, W]``).
        var: data variances (> 0), same shape as ``mean``.
        sde: the forward SDE.
    """

    def __init__(self, mean: Tensor, var: Tensor, sde: SDE):
        super().__init__()
        mean = torch.as_tensor(mean)
        var = torch.as_tensor(var, dtype=mean.dtype)
        if mean.shape != var.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and var {tuple(var.shape)} must have the same shape.")
        if bool((var <= 0).any()):
            raise ValueError("var must be positive everywhere.")
        self.register_buffer("mean", mean)
        self.register_buffer("var", var)
        self.sde = sde

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != tuple(self.mean.shape):
            raise ValueError(
                f"x must have shape [B, {', '.join(map(str, self.mean.shape))}]; got {tuple(x.shape)}."
            )

    def marginal_params(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of p_t, each ``[B, *event]``."""
        t = check_time(like, t)
        coefs = self.sde.marginal_coefs(t)
        m = expand_as_batch(coefs.mean_coef, like)
        s = expand_as_batch(coefs.std, like)
        mean = m * self.mean.to(like.dtype)
        var = m**2 * self.var.to(like.dtype) + s**2
        return mean, var

    def log_prob(self, x: Tensor, t: Tensor) -> Tensor:
        """log N(x; m(t) mu, m(t)^2 v + sigma(t)^2), summed over dimensions, ``[B]``."""
        self._check(x)
        mean, var = self.marginal_params(t, x)
        terms = -0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - mean) ** 2 / var)
        return terms.flatten(1).sum(1)

    def score(self, x: Tensor, t: Tensor, *, create_graph: bool | None = None) -> Tensor:
        """-(x - m(t) mu) / (m(t)^2 v + sigma(t)^2), shaped like ``x``."""
        self._check(x)
        mean, var = self.marginal_params(t, x)
        return -(x - mean) / var

    def posterior_mean(self, x: Tensor, t: Tensor) -> Tensor:
        """E[x_0 | x_t = x] = (x + sigma(t)^2 score(x, t)) / m(t) (Tweedie), shaped like ``x``."""
        t = check_time(x, t)
        coefs = self.sde.marginal_coefs(t)
        s2 = expand_as_batch(coefs.std, x) ** 2
        return (x + s2 * self.score(x, t)) / expand_as_batch(coefs.mean_coef, x)

    def sample(self, num: int, t: Tensor | float, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num`` samples of p_t, ``[num, *event]``."""
        like = torch.empty((num,) + tuple(self.mean.shape), dtype=self.mean.dtype, device=self.mean.device)
        mean, var = self.marginal_params(torch.as_tensor(t), like)
        z = randn_like(like, generator)
        return mean + var.sqrt() * z
