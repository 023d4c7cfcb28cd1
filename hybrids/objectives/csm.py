"""Composite score matching (CSM) for autoregressive conditional score models.

Meng, Yu, Song, Song and Ermon, "Autoregressive Score Matching", NeurIPS 2020. For univariate
conditional scores s_d(x) = d/dx_d log q(x_d | x_<d),

    L_CSM(q) = E_x sum_d [ s_d(x)^2 / 2 + d s_d(x) / d x_d ],

which equals sum_d E_{x_<d} F(p(. | x_<d), q(. | x_<d)) - sum_d E (s*_d)^2 / 2, the composite
Fisher divergence minus a constant (s*_d the data's conditional scores), by integrating by parts in
x_d. The integration by parts needs p(x_d | x_<d) to vanish at the ends of its support, which
dequantized pixels on [-1, 1] do not; integer data are therefore dequantized and perturbed with
Gaussian noise of std ``sigma`` (the paper trains on noise-perturbed data). The model must offer
``conditional_scores(x, t) -> (s, ds_dx)`` (one-backward diagonal, e.g.
:class:`hybrids.models.made.MADEConditionalScore`). Data and noise go through the shared path of
``hybrids.objectives.perturb``.
"""
from __future__ import annotations

import gin
import torch
from torch import Tensor

from hybrids.objectives.perturb import (Perturbation, model_space_data, original_weighting, perturb,
                                        perturb_gaussian, sample_times)
from hybrids.sdes import SDE


def csm_per_example(s: Tensor, ds_dx: Tensor) -> Tensor:
    """sum_d [s_d^2 / 2 + ds_d/dx_d] per example.

    Args:
        s, ds_dx: ``[B, ...]`` conditional scores and their diagonal derivatives.

    Returns:
        ``[B]``.
    """
    return (0.5 * s.pow(2) + ds_dx).flatten(1).sum(1)


@gin.configurable(module="hybrids.objectives")
class CSM:
    """Composite score matching objective ``objective(model, batch) -> (loss, metrics)``.

    Data: integer levels are dequantized to [-1, 1] (``num_levels`` = K); float data (2-D toys,
    ``num_levels=None``) are used as they are. Then:

    * ``noise_conditional=False``: x = x0 + sigma z (no noise if ``sigma`` is None, allowed for
      continuous data only) and the model is called with t = None;
    * ``noise_conditional=True``: t ~ U[eps, T] per example, x_t = sde.perturb(x0, t), and the
      per-example CSM at t is weighted by sigma(t)^2 (NCSN's weighting, which makes the terms of
      all noise levels O(1)).

    The loss is the batch mean of the per-example CSM divided by the number of dimensions D
    (reported per dimension); metrics: ``csm_per_dim`` (= the loss; the Trainer logs ``loss``
    itself) and ``per_example_loss`` (``[B]``, per dimension).

    Args:
        sigma: std of the Gaussian perturbation in model space (gin files state their choice;
            required for integer data unless noise_conditional).
        num_levels: K of integer data; None for continuous data.
        noise_conditional: sample a diffusion time per example (needs ``sde``).
        sde: the SDE giving the perturbation kernels of a noise-conditional model.
        eps: smallest diffusion time for the noise-conditional variant.
    """

    def __init__(
        self,
        sigma: float | None = None,
        num_levels: int | None = 256,
        noise_conditional: bool = False,
        sde: SDE | None = None,
        eps: float = 1e-5,
    ):
        if noise_conditional:
            if sde is None or sigma is not None:
                raise ValueError(
                    "CSM(noise_conditional=True) perturbs with sde.perturb at random times: pass "
                    "sde and leave sigma None"
                )
        else:
            if sde is not None:
                raise ValueError("sde is only used with noise_conditional=True")
            if sigma is not None and not sigma > 0:
                raise ValueError(f"sigma must be positive or None, got {sigma}")
            if sigma is None and num_levels is not None:
                raise ValueError(
                    "CSM on integer data needs Gaussian noise (sigma > 0): dequantized pixels live "
                    "on a bounded interval, which breaks the integration by parts behind CSM. Set "
                    "CSM.sigma (e.g. 0.1 in the [-1, 1] model space)."
                )
        self.sigma = sigma
        self.num_levels = num_levels
        self.noise_conditional = bool(noise_conditional)
        self.sde = sde
        self.eps = float(eps)

    def perturbation(self, x0: Tensor, generator: torch.Generator | None = None) -> Perturbation:
        """The perturbed batch: x0 + sigma z (t None), or x_t at t ~ U[eps, T] weighted by sigma_t^2."""
        if not self.noise_conditional:
            return perturb_gaussian(x0, self.sigma, generator)
        t, weight = sample_times(self.sde, x0.shape[0], self.eps, generator, like=x0, weighting=original_weighting)
        return perturb(self.sde, x0, t, generator, weight=weight)

    def perturb(
        self, x0: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Noisy inputs, times and per-example weights (see :meth:`perturbation`).

        Returns:
            ``(x, t, weight)``: x like x0, t ``[B]`` or None, weight ``[B]``.
        """
        p = self.perturbation(x0, generator)
        return p.x_t, p.t, p.weight

    def __call__(self, model, batch, *, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        x0 = model_space_data(model, batch, self.num_levels, generator)
        p = self.perturbation(x0, generator)
        s, ds_dx = model.conditional_scores(p.x_t, p.t)
        num_dims = p.x_t[0].numel()
        losses = p.weight * csm_per_example(s, ds_dx) / num_dims
        loss = losses.mean()
        return loss, {"csm_per_dim": float(loss.detach()), "per_example_loss": losses.detach()}
