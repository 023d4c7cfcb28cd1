"""VAE hooks: an importance-sampling log-likelihood estimate and samples from the prior.

Test images (levels k) are binarised once per call with the hook's seeded generator,
b ~ Bernoulli(k / (K - 1)) (``hybrids.models.vae.binarize``), so the likelihoods are those of a
stochastically binarised test set, as in the VAE literature's MNIST; bits/dim are of these binary
images, -log p(b) / (D ln 2), and are not comparable with the 256-level tables.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from hybrids.data import ArrayDataset
from hybrids.hooks.base import evaluator, sampler
from hybrids.likelihood.units import nats_to_bpd
from hybrids.models.vae import PROPOSALS, VAE, binarize, importance_log_weights
from hybrids.stats import mean_ci
from hybrids.tensors import model_dtype, rand


def _check(model: nn.Module, data: ArrayDataset, hook: str) -> int:
    """The data's K, after checking that the model is a VAE and the data integer images."""
    if not isinstance(model, VAE):
        raise TypeError(f"{hook} needs a hybrids.models.vae.VAE; got {type(model).__name__}.")
    if data.num_levels is None or data.data.ndim != 4:
        raise ValueError(f"{hook} needs integer images [N, C, H, W] with num_levels; got {data.name} with shape "
                         f"{tuple(data.data.shape)} and num_levels={data.num_levels}.")
    return int(data.num_levels)


@evaluator
def vae_likelihood_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_importance_samples: int = 1000,
    proposal: str = "mixture",
    num_fit_samples: int = 128,
    inflation: float = 1.5,
    laplace_steps: int = 200,
    num_examples: int | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """-log p(x) of binarised test images by importance sampling with K samples, and with K/10.

    log p(x) ~= log (1/K) sum_k p(x | z_k) p(z_k) / r(z_k | x), z_k ~ r (``importance_log_weights``),
    with the proposal r of ``VAE.proposal``: ``'encoder'`` (the encoder's q(z | x) for a Gaussian
    encoder; for an implicit one a full-covariance Gaussian fitted to ``num_fit_samples`` fresh encoder
    draws per image, its scale times ``inflation``), ``'laplace'`` (the Laplace approximation of the
    posterior found by ``laplace_steps`` Adam steps from the encoder's mean, scale times
    ``inflation``) or ``'mixture'`` (the equal mixture of the two, robust to an encoder far from the
    posterior). The mean of p-hat is p(x) exactly for any such r, so -log p-hat is an upper bound on
    -log p(x) in expectation that decreases with K; the same draws' first K/10 give the estimate at
    K/10, and the paired difference (K/10 minus K, >= 0 in expectation) shows how far the estimate
    has converged. The effective sample size (sum w)^2 / sum w^2 over K is a proposal diagnostic.

    Args:
        num_importance_samples: K (>= 10).
        proposal: ``'mixture'``, ``'encoder'`` or ``'laplace'``.
        num_fit_samples: M encoder draws per image for the fitted Gaussian (implicit encoders; M > d).
        inflation: scale factor of the fitted and Laplace Gaussians.
        laplace_steps: Adam steps to the posterior mode.
        num_examples: test images (None: the budget's).
        batch_size: images per batch (None: the budget's).

    Returns:
        ``nll_nats``, ``nll_bpd``, ``nll_nats_k10`` and ``k10_minus_k_nats`` (each ``mean_ci``:
        mean, se, ci95, n over images), ``ess_fraction`` (mean ESS / K), ``num_importance_samples``,
        ``proposal`` and ``num_examples``.
    """
    num_levels = _check(model, data, "vae_likelihood_eval")
    if isinstance(num_importance_samples, bool) or int(num_importance_samples) < 10:
        raise ValueError(f"vae_likelihood_eval.num_importance_samples must be >= 10 (the K/10 estimate needs one "
                         f"sample); got {num_importance_samples!r}.")
    if proposal not in PROPOSALS:
        raise ValueError(f"unknown vae_likelihood_eval.proposal {proposal!r}; choose one of {list(PROPOSALS)}.")
    k_all, k10 = int(num_importance_samples), int(num_importance_samples) // 10
    x_all = binarize(data.data[:num_examples], num_levels, generator).to(model_dtype(model))
    nll, nll10, ess = [], [], []
    with torch.no_grad():
        for x in x_all.split(int(batch_size)):
            x = x.to(device)
            r = model.proposal(x, generator, kind=proposal, num_fit_samples=int(num_fit_samples),
                               inflation=float(inflation), laplace_steps=int(laplace_steps))
            log_w = importance_log_weights(lambda z: model.log_joint(x, z), r, k_all, generator).double().cpu()
            nll.append(math.log(k_all) - torch.logsumexp(log_w, 0))
            nll10.append(math.log(k10) - torch.logsumexp(log_w[:k10], 0))
            ess.append(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / k_all)
    nll_t, nll10_t = torch.cat(nll), torch.cat(nll10)
    encoder_name = (f"Gaussian fit to {int(num_fit_samples)} encoder draws, scale x {float(inflation):g}"
                    if model.implicit else "the encoder's q(z | x)")
    laplace_name = f"Laplace approximation of the posterior, scale x {float(inflation):g}"
    proposal_name = {"encoder": encoder_name, "laplace": laplace_name,
                     "mixture": f"equal mixture of ({encoder_name}) and ({laplace_name})"}[proposal]
    return {
        "nll_nats": mean_ci(nll_t),
        "nll_bpd": mean_ci(nats_to_bpd(nll_t, model.data_dim)),
        "nll_nats_k10": mean_ci(nll10_t),
        "k10_minus_k_nats": mean_ci(nll10_t - nll_t),
        "ess_fraction": float(torch.cat(ess).mean()),
        "num_importance_samples": k_all,
        "proposal": proposal_name,
        "num_examples": int(nll_t.numel()),
    }


@sampler
def vae_sampler(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_samples: int | None = None,
) -> dict[str, Tensor]:
    """Images decoded from z ~ N(0, I): the decoder means and binary draws, as levels.

    Returns:
        ``{'samples': round(p (K - 1)), 'bernoulli': b (K - 1)}`` with p = sigmoid(f(z)) and
        b ~ Bernoulli(p), each int64 ``[N, C, H, W]``. ``'samples'`` (the means, as the VAE
        literature shows MNIST samples) is what ``sample_fd_eval`` uses by default.
    """
    num_levels = _check(model, data, "vae_sampler")
    p = model.sample(int(num_samples), generator).cpu()
    if not bool(torch.isfinite(p).all()):
        raise FloatingPointError("vae_sampler: the decoder produced non-finite probabilities.")
    shape = (int(num_samples), *data.shape)
    binary = (rand(p.shape, generator, dtype=p.dtype, device=p.device) < p).long()
    return {"samples": torch.round(p * (num_levels - 1)).long().reshape(shape),
            "bernoulli": (binary * (num_levels - 1)).reshape(shape)}
