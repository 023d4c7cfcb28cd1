"""Denoising score matching with the original or the likelihood weighting.

    J(theta) = E_t E_x0 E_z [ lambda(t) || s_theta(x_t, t) + z / sigma_t ||^2 ] / 2,
    x_t = m(t) x_0 + sigma_t z,  t ~ U[eps, T],

with lambda(t) = sigma_t^2 ("original"; Song, Sohl-Dickstein, Kingma, Kumar, Ermon and Poole,
"Score-Based Generative Modeling through Stochastic Differential Equations", ICLR 2021) or
lambda(t) = g(t)^2 ("likelihood", which makes J a bound on the KL / -log p up to constants;
Song, Durkan, Murray and Ermon, "Maximum Likelihood Training of Score-Based Diffusion Models",
NeurIPS 2021, Theorem 1).

Importance sampling (same paper, section 5) draws t ~ q(t) proportional to g(t)^2 / sigma_t^2 and
weights each term by lambda(t) / q(t); with lambda = g^2 each term becomes Z || sigma_t s + z ||^2 / 2,
Z = int_eps^T g^2 / sigma^2 dt. The sampler and its closed forms are in ``hybrids.time_sampling``
(``importance_sample_t`` is re-exported here); the batch -> x_0 -> t -> x_t path is
``hybrids.objectives.perturb``.

Default eps: 1e-5 for every SDE (score_sde's training default; the NeurIPS 2021 paper's appendix
uses 1e-5 for VP/VE likelihoods and 1e-2 for subVP likelihoods, which a gin row may set).
"""
from __future__ import annotations

import gin
import torch
from torch import Tensor

from hybrids.objectives.perturb import (WEIGHTINGS, Weighting, likelihood_weighting, model_space_data,
                                        original_weighting, perturb, sample_times)
from hybrids.sdes import SDE
from hybrids.time_sampling import check_eps, importance_sample_t

__all__ = ["DSM", "WEIGHTINGS", "importance_sample_t", "likelihood_weighting", "original_weighting"]

DEFAULT_EPS = 1e-5


# --- the objective -------------------------------------------------------------------------------
@gin.configurable(module="hybrids.objectives")
class DSM:
    """Denoising score matching objective ``objective(model, batch) -> (loss, metrics)``.

    Per example: l_i = lambda(t_i) / sigma_{t_i}^2 * || sigma_{t_i} s(x_t, t_i) + z_i ||^2 / 2,
    summed over dimensions (mean with ``reduce_mean``); with importance sampling the factor is
    lambda(t) / q(t) / sigma_t^2 / (T - eps), so both samplers estimate the same
    J = E_{t ~ U[eps, T]}[...] (for lambda = g^2 the factor is Z / (T - eps)).

    Args:
        sde: the forward SDE.
        weighting: ``'original'`` (sigma^2), ``'likelihood'`` (g^2) or a callable
            ``weighting(sde, t) -> [B]``.
        importance_sampling: draw t from q(t) proportional to g^2 / sigma^2 instead of U[eps, T].
        eps: smallest time (None: 1e-5).
        num_levels: K of integer data (dequantized to [-1, 1]); None for continuous data.
        reduce_mean: average instead of sum over data dimensions (score_sde's ``reduce_mean``).

    Metrics: ``per_example_loss`` (``[B]`` tensor, detached; the Trainer logs its mean and the
    loss itself).
    """

    def __init__(
        self,
        sde: SDE = gin.REQUIRED,
        weighting: str | Weighting = "original",
        importance_sampling: bool = False,
        eps: float | None = None,
        num_levels: int | None = 256,
        reduce_mean: bool = False,
    ):
        if isinstance(weighting, str):
            if weighting not in WEIGHTINGS:
                raise ValueError(f"Unknown weighting {weighting!r}; choose one of {sorted(WEIGHTINGS)} or pass a callable.")
            weighting = WEIGHTINGS[weighting]
        elif not callable(weighting):
            raise TypeError(f"weighting must be a name or a callable weighting(sde, t); got {type(weighting)}.")
        self.sde = sde
        self.weighting = weighting
        self.importance_sampling = bool(importance_sampling)
        self.eps = DEFAULT_EPS if eps is None else float(eps)
        check_eps(sde, self.eps)
        self.num_levels = num_levels
        self.reduce_mean = bool(reduce_mean)

    def sample_t(self, batch_size: int, like: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Times ``[B]`` and the factor lambda(t) / (sigma_t^2 p(t) (T - eps)), ``[B]``."""
        t, factor = sample_times(self.sde, batch_size, self.eps, generator, like=like, weighting=self.weighting,
                                 importance_sampling=self.importance_sampling)
        return t, factor / self.sde.marginal_coefs(t).std ** 2

    def per_example_loss(self, model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """l_i for model-space data ``x0`` ``[B, ...]``; returns ``[B]``."""
        t, factor = self.sample_t(x0.shape[0], x0, generator)
        p = perturb(self.sde, x0, t, generator, weight=factor)
        residual = p.scaled_residual(model.score(p.x_t, p.t)).flatten(1).pow(2)
        sq = residual.mean(1) if self.reduce_mean else residual.sum(1)
        return 0.5 * p.weight * sq

    def __call__(self, model, batch, *, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        x0 = model_space_data(model, batch, self.num_levels, generator)
        losses = self.per_example_loss(model, x0, generator)
        loss = losses.mean()
        return loss, {"per_example_loss": losses.detach()}
