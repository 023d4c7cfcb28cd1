"""The perturbation path shared by objectives: batch -> x_0 -> t -> x_t -> per-example weight.

Every objective that trains on noisy data goes through the same four steps, each one function:

1. :func:`model_space_data`: the batch's data tensor in model space (integer levels dequantized to
   [-1, 1] in the model's dtype, float data as they are);
2. :func:`sample_times`: t ~ U[eps, T] (or t ~ q(t) proportional to g(t)^2 / sigma_t^2 with
   importance sampling) and the weight lambda(t) / (p(t) (T - eps)) that turns an average over the
   drawn t into an estimate of E_{t ~ U[eps, T]}[lambda(t) h(t)];
3. :func:`perturb` (at given times, through the SDE's transition kernel) or
   :func:`perturb_gaussian` (one fixed noise std): x_t = m(t) x_0 + sigma_t z, z ~ N(0, I);
4. the objective's own loss on the returned :class:`Perturbation`, scaled by its ``weight``.

Random draws happen in this order (t, then z) and follow ``hybrids.tensors``' rule (drawn on the
generator's device, then moved), so a seed gives the same losses on every code path.

A new noise-conditional objective is a few lines, e.g. sliced score matching at random times::

    x0 = model_space_data(model, batch, self.num_levels, generator)
    t, weight = sample_times(self.sde, x0.shape[0], self.eps, generator, like=x0)
    p = perturb(self.sde, x0, t, generator, weight=weight)
    # ... loss_i of model at (p.x_t, p.t), then (p.weight * loss_i).mean()

References: the weightings and importance sampling follow Song, Durkan, Murray and Ermon,
"Maximum Likelihood Training of Score-Based Diffusion Models", NeurIPS 2021; the transition kernels
Song, Sohl-Dickstein, Kingma, Kumar, Ermon and Poole, "Score-Based Generative Modeling through
Stochastic Differential Equations", ICLR 2021. The importance sampler itself lives in
``hybrids.time_sampling``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from hybrids.data.transforms import to_model_space
from hybrids.objectives.batches import batch_data
from hybrids.sdes import SDE
from hybrids.tensors import expand_as_batch, model_dtype, randn_like
from hybrids.time_sampling import importance_sample_t, uniform_times

__all__ = [
    "WEIGHTINGS",
    "Perturbation",
    "Weighting",
    "likelihood_weighting",
    "model_space_data",
    "original_weighting",
    "perturb",
    "perturb_gaussian",
    "sample_times",
]

Weighting = Callable[[SDE, Tensor], Tensor]


# --- weightings lambda(t): each one its own callable weighting(sde, t) -> [B] -------------------
def original_weighting(sde: SDE, t: Tensor) -> Tensor:
    """lambda(t) = sigma_t^2 (Song et al., ICLR 2021, all three SDEs), ``[B]``."""
    return sde.marginal_coefs(t).std ** 2


def likelihood_weighting(sde: SDE, t: Tensor) -> Tensor:
    """lambda(t) = g(t)^2, the weighting that turns DSM into a likelihood bound, ``[B]``."""
    return sde.diffusion(t) ** 2


WEIGHTINGS: dict[str, Weighting] = {"original": original_weighting, "likelihood": likelihood_weighting}


# --- the perturbed batch ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Perturbation:
    """Clean data, its perturbation x_t = mean_coef x_0 + std noise, and per-example weights.

    Attributes:
        x0: clean model-space data, ``[B, ...]``.
        x_t: perturbed data, like ``x0``.
        noise: the standard normal z of x_t, like ``x0`` (grad log p_0t(x_t | x_0) = -z / std).
        t: diffusion times ``[B]``, or None for a fixed noise level without time.
        mean_coef: m(t), ``[B]``.
        std: sigma_t, ``[B]``.
        weight: per-example factor of the loss, ``[B]`` (ones unless the objective sets one).
    """

    x0: Tensor
    x_t: Tensor
    noise: Tensor
    t: Tensor | None
    mean_coef: Tensor
    std: Tensor
    weight: Tensor

    @property
    def std_b(self) -> Tensor:
        """sigma_t reshaped to ``[B, 1, ..., 1]`` (broadcasts against ``x_t``)."""
        return expand_as_batch(self.std, self.x_t)

    def target_score(self) -> Tensor:
        """grad_{x_t} log p_0t(x_t | x_0) = -z / sigma_t, like ``x_t`` (the DSM regression target)."""
        return -self.noise / self.std_b

    def scaled_residual(self, score: Tensor) -> Tensor:
        """sigma_t s + z, like ``x_t``: the DSM residual sigma_t (s - target_score) without a division."""
        return self.std_b * score + self.noise


# --- step 1: data ----------------------------------------------------------------------------------
def model_space_data(model: nn.Module, batch: Any, num_levels: int | None,
                     generator: torch.Generator | None = None) -> Tensor:
    """The batch's data in model space: integer levels dequantized (x = 2 (k + u) / K - 1) in the
    model's dtype (:func:`hybrids.tensors.model_dtype`); float data (``num_levels=None``) as they are.

    Raises:
        TypeError, ValueError: as :func:`hybrids.objectives.batches.batch_data` and
            :func:`hybrids.data.transforms.to_model_space` (wrong container, dtype or levels).
    """
    return to_model_space(batch_data(batch), num_levels, generator, model_dtype(model))


# --- step 2: times ---------------------------------------------------------------------------------
def sample_times(
    sde: SDE,
    batch_size: int,
    eps: float,
    generator: torch.Generator | None = None,
    *,
    like: Tensor,
    weighting: Weighting | None = None,
    importance_sampling: bool = False,
) -> tuple[Tensor, Tensor]:
    """Draw t ``[B]`` on [eps, T] and the weight that makes averages over it estimate
    E_{t ~ U[eps, T]}[lambda(t) h(t)].

    * uniform: t = eps + (T - eps) u, u ~ U[0, 1); weight = lambda(t);
    * importance sampling: t ~ q(t) proportional to g^2 / sigma^2 (``importance_sample_t``, which
      returns w = g^2 / q); weight = w lambda(t) / g(t)^2 / (T - eps) = lambda(t) / (q(t) (T - eps)).

    Args:
        sde: the forward SDE.
        batch_size: B.
        eps: smallest time (0 < eps < T).
        generator: random source of t.
        like: a tensor whose dtype and device the times take.
        weighting: lambda(sde, t) -> ``[B]``; None means lambda = 1.
        importance_sampling: draw from q(t) instead of U[eps, T].

    Returns:
        ``(t, weight)``, each ``[B]``.
    """
    if importance_sampling:
        t, w = importance_sample_t(sde, [batch_size], eps, generator, dtype=like.dtype, device=like.device)
        lam = torch.ones_like(t) if weighting is None else weighting(sde, t)
        return t, w * lam / sde.diffusion(t) ** 2 / (sde.T - eps)
    t = uniform_times(batch_size, eps, sde.T, generator, dtype=like.dtype, device=like.device)
    return t, torch.ones_like(t) if weighting is None else weighting(sde, t)


# --- step 3: x_t -----------------------------------------------------------------------------------
def perturb(
    sde: SDE,
    x0: Tensor,
    t: Tensor,
    generator: torch.Generator | None = None,
    *,
    noise: Tensor | None = None,
    weight: Tensor | None = None,
) -> Perturbation:
    """x_t = m(t) x_0 + sigma_t z through the SDE's transition kernel p_0t.

    Args:
        sde: the forward SDE.
        x0: clean model-space data ``[B, ...]``.
        t: times ``[B]`` (dtype and device of ``x0``).
        generator: random source of z (drawn like ``x0`` with :func:`hybrids.tensors.randn_like`).
        noise: a given z instead of a draw.
        weight: per-example weights ``[B]`` to carry along (default ones).
    """
    if noise is None:
        noise = randn_like(x0, generator)
    x_t, noise = sde.perturb(x0, t, noise)
    coefs = sde.marginal_coefs(t)
    if weight is None:
        weight = torch.ones(x0.shape[0], dtype=x0.dtype, device=x0.device)
    return Perturbation(x0=x0, x_t=x_t, noise=noise, t=t, mean_coef=coefs.mean_coef, std=coefs.std, weight=weight)


def perturb_gaussian(
    x0: Tensor,
    std: float | None,
    generator: torch.Generator | None = None,
    *,
    noise: Tensor | None = None,
) -> Perturbation:
    """x = x_0 + std z at one fixed noise level (no time): ``t`` is None, weights are ones.

    ``std=None`` (or 0) leaves the data unperturbed and draws nothing (noise is then zeros).
    """
    ones = torch.ones(x0.shape[0], dtype=x0.dtype, device=x0.device)
    if not std:
        return Perturbation(x0=x0, x_t=x0, noise=torch.zeros_like(x0), t=None, mean_coef=ones,
                            std=torch.zeros_like(ones), weight=ones)
    if noise is None:
        noise = randn_like(x0, generator)
    return Perturbation(x0=x0, x_t=x0 + std * noise, noise=noise, t=None, mean_coef=ones, std=std * ones,
                        weight=ones)
