"""The likelihood-evaluation tutorial's standard companions of a bits/dim number: the train/test gap
and multi-sample (importance-weighted) dequantization bounds.

Both follow the recommendations of the likelihood-evaluation tutorial this library is built from
(bits/dim in pixel space, multi-sample bounds as the standard evaluation of a continuous density on
discrete data, the gap between training and test likelihoods as the check for overfitting). The
codec baselines (PNG, WebP) need no model and are added to tables by ``experiments.references``.

* ``train_test_gap_eval``: NLL on the first N training and the first N test images, in bits/dim, and
  gap = test - train with its standard error (independent samples: se = sqrt(se_train^2 + se_test^2)).
  A model that memorised its N_train training images could reach log2(N_train) bits per image on
  them (log2(60000) / 784 = 0.020 bits/dim on MNIST) and nothing on new images; a gap far above the
  standard error is overfitting.
* ``multisample_dequant_eval``: for a continuous density p_x on [-1, 1]^D (a model's own density, or
  any model with a score through the probability-flow ODE or the DSM bound), the S-sample uniform-dequantization bounds

      log P(k) >= E log (1/S) sum_{s<S} p_pixel(k + u_s),   u_s ~ U[0, 1)^D,

  for each S in ``sizes`` from one shared set of draws (paired; S = 1 is the usual bound). For an exact
  log p_x their expectations increase with S towards log P(k). The ODE's Hutchinson divergence and
  the DSM bound's Monte-Carlo time integral are noisy estimates of log p_x; noise in the log domain
  raises a log-mean-exp (Jensen), so with them the S > 1 numbers can sit slightly below the true
  -log P(k): the hook reports the estimator it used (``divergence='exact'`` removes the ODE's part).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from hybrids.data import ArrayDataset, load_dataset
from hybrids.hooks.base import evaluator, model_space_examples
from hybrids.hooks.likelihood import image_levels
from hybrids.likelihood.bound import dsm_bound
from hybrids.likelihood.dequantize import dequantization_log_weights, multisample_bounds
from hybrids.likelihood.ode import ode_log_prob
from hybrids.likelihood.units import bits_per_dim, nats_to_bpd
from hybrids.sdes import SDE, sde_of
from hybrids.stats import mean_ci
from hybrids.tensors import model_dtype

LIKELIHOODS = ("discrete", "bound", "ode")


def _nll_bpd(model: nn.Module, data: ArrayDataset, *, likelihood: str, num_examples: int | None,
             batch_size: int, device: torch.device, generator: torch.Generator, sde: SDE | None,
             eps: float, n_times: int | None, rtol: float | None, atol: float | None) -> Tensor:
    """``[N]`` per-image NLL in bits/dim of the first ``num_examples`` images of ``data``: exact discrete
    (``'discrete'``), or the DSM bound / ODE of uniformly dequantized images (+log2(K/2) offset)."""
    k_all, num_levels = image_levels(data, "train_test_gap_eval")
    num_dims = k_all[0].numel()
    if likelihood == "discrete":
        k_all = k_all[:num_examples]
        with torch.no_grad():
            values = [nats_to_bpd(-model.discrete_log_prob(k_all[i:i + batch_size].to(device)).double().cpu(), num_dims)
                      for i in range(0, k_all.shape[0], batch_size)]
        return torch.cat(values)
    x_all = model_space_examples(model, data, num_examples, generator)
    values = []
    for i in range(0, x_all.shape[0], batch_size):
        x = x_all[i:i + batch_size].to(device)
        if likelihood == "bound":
            with torch.no_grad():
                nll = dsm_bound(model, sde, x, n_times=n_times, eps=eps, eps_correction=True, generator=generator)
        else:
            nll = -ode_log_prob(model, sde, x, eps=eps, rtol=rtol, atol=atol, generator=generator).log_prob
        values.append(bits_per_dim(nll.detach().double().cpu(), num_dims, num_levels))
    return torch.cat(values)


@evaluator
def train_test_gap_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    likelihood: str = "discrete",
    num_examples: int | None = None,
    batch_size: int | None = None,
    data_dir: str | None = None,
    eps: float = 1e-5,
    n_times: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    sde: SDE | None = None,
) -> dict[str, Any]:
    """Bits/dim on the first N training and N test images and the gap test - train.

    Args:
        model: a model with ``discrete_log_prob`` (``likelihood='discrete'``) or a score (``'bound'``:
            the eps-corrected DSM bound; ``'ode'``: the probability-flow ODE), on ``device``.
        data: the test split; the training split of ``data.name`` is read from ``data_dir`` (default:
            where ``data`` was read from).
        likelihood: 'discrete', 'bound' or 'ode'.
        num_examples, batch_size: images per split and per batch (None: the budget's).
        eps, n_times, rtol, atol, sde: the bound's / ODE's settings (see ``score_likelihood_eval``).

    Returns:
        ``{'train_bpd': {mean, se, ...}, 'test_bpd': {...}, 'gap_bpd': test - train, 'gap_se',
        'memorisation_bound_bpd': log2(N_train) / D, 'num_train_images', 'likelihood', 'num_examples'}``.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"train_test_gap_eval.likelihood must be one of {', '.join(LIKELIHOODS)}; got {likelihood!r}.")
    if likelihood != "discrete":
        sde = sde_of(model, sde, binding="train_test_gap_eval.sde")
    train = load_dataset(data.name, split="train", data_dir=data_dir or data.data_dir)
    settings = dict(likelihood=likelihood, num_examples=num_examples, batch_size=int(batch_size), device=device,
                    generator=generator, sde=sde, eps=eps, n_times=n_times, rtol=rtol, atol=atol)
    test = mean_ci(_nll_bpd(model, data, **settings))
    train_summary = mean_ci(_nll_bpd(model, train, **settings))
    num_dims = data.data[0].numel()
    return {
        "likelihood": likelihood,
        "train_bpd": train_summary,
        "test_bpd": test,
        "gap_bpd": test["mean"] - train_summary["mean"],
        "gap_se": math.hypot(test["se"], train_summary["se"]),
        "memorisation_bound_bpd": math.log2(train.data.shape[0]) / num_dims,
        "num_train_images": int(train.data.shape[0]),
        "num_examples": int(test["n"]),
    }


@evaluator
def multisample_dequant_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    sizes: Sequence[int] = (1, 16, 128),
    likelihood: str = "ode",
    num_examples: int | None = 16,
    batch_size: int | None = None,
    eps: float = 1e-5,
    divergence: str = "hutchinson",
    n_times: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    sde: SDE | None = None,
) -> dict[str, Any]:
    """Multi-sample uniform-dequantization bounds on -log P(k), in bits/dim, for S in ``sizes``.

    Costs max(sizes) likelihood evaluations per image (an ODE solve or a DSM bound each), so it
    runs on the first ``num_examples`` test images (default 16); the S draws of all images form one
    batch of S * N examples, evaluated ``batch_size`` at a time (one adaptive solve per batch).

    Args:
        model: a model with a score (density models through their autograd score), on ``device``.
        data: the test split (integer images).
        sizes: sample counts S (nested: one set of max(sizes) draws per image).
        likelihood: log p_x from ``'exact'`` (the model's own continuous density ``log_prob(x, 0)``
            of a density trained on dequantized data; a discrete model's continuous density, e.g. a MADE
            whose conditionals read bin centres, is another model), ``'ode'`` (probability-flow ODE) or ``'bound'``
            (eps-corrected DSM bound, a lower bound on log p_x, so the S-sample numbers stay bounds
            in expectation up to its Monte-Carlo noise).
        num_examples: images evaluated.
        batch_size: dequantized copies per likelihood call (None: the budget's).
        eps, divergence, n_times, rtol, atol, sde: the ODE's / bound's settings.

    Returns:
        ``{'bpd': {str(S): {mean, se, ...}}, 'gain_bpd': {str(S): mean of bpd(1) - bpd(S), paired},
        'likelihood', 'divergence', 'sizes', 'num_examples'}``.
    """
    if likelihood not in ("exact", "ode", "bound"):
        raise ValueError(f"multisample_dequant_eval.likelihood must be 'exact', 'ode' or 'bound'; got {likelihood!r}.")
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"multisample_dequant_eval.sizes must be positive sample counts; got {sizes}.")
    if likelihood != "exact":
        sde = sde_of(model, sde, binding="multisample_dequant_eval.sde")
    k_all, num_levels = image_levels(data, "multisample_dequant_eval")
    k_all = k_all[:num_examples]
    num_dims = k_all[0].numel()
    dtype = model_dtype(model)

    def log_px(x: Tensor) -> Tensor:
        if likelihood == "exact":
            with torch.no_grad():
                return model.log_prob(x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
        if likelihood == "bound":
            with torch.no_grad():
                return -dsm_bound(model, sde, x, n_times=n_times, eps=eps, eps_correction=True, generator=generator)
        return ode_log_prob(model, sde, x, eps=eps, divergence=divergence, rtol=rtol, atol=atol,
                            generator=generator).log_prob.detach()

    # all S draws of all images as one batch of S * N (draw-major), evaluated batch_size at a time
    k_rep = k_all.repeat(sizes[-1], *([1] * (k_all.ndim - 1)))
    log_w = torch.cat([dequantization_log_weights(log_px, k_rep[i:i + int(batch_size)].to(device), num_levels,
                                                  generator=generator, dtype=dtype)[0].double().cpu()
                       for i in range(0, k_rep.shape[0], int(batch_size))]).reshape(sizes[-1], k_all.shape[0])
    bpd = {s: nats_to_bpd(-lp, num_dims) for s, lp in multisample_bounds(log_w, sizes).items()}
    return {
        "likelihood": likelihood,
        "divergence": divergence if likelihood == "ode" else None,
        "sizes": sizes,
        "bpd": {str(s): mean_ci(v) for s, v in bpd.items()},
        "gain_bpd": {str(s): float((bpd[sizes[0]] - v).mean()) for s, v in bpd.items()},
        "num_examples": int(k_all.shape[0]),
    }
