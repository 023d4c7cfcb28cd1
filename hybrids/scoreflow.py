"""ScoreFlow runner hooks (papers/002): likelihood evaluation and samplers of score models.

Every hook has the runner signature ``hook(model, data, *, device, generator) -> dict``; sizes are
gin-bound keyword arguments with small CPU defaults. The SDE is the model's ``sde`` attribute
(``ScoreModel`` has one) unless ``sde`` is bound.

Units (METHODS.md section 1): integer data are uniformly dequantized once per example,
x = 2 (k + u) / K - 1; an ODE log-density or a DSM bound of x gives
bpd <= -log p_x(x) / (D ln 2) + log2(K / 2) through ``hybrids.likelihood.bits_per_dim`` (the only
place where the conversion happens). Continuous data (2-D toys) are reported in nats and in
bits per dimension without an offset.
"""
from __future__ import annotations

import math
from typing import Any

import gin
import torch
from torch import Tensor, nn

from hybrids.data import dequantize, quantize
from hybrids.likelihood.bound import dsm_bound
from hybrids.likelihood.ode import ode_log_prob
from hybrids.likelihood.units import bits_per_dim
from hybrids.objectives.dsm import DSM
from hybrids.samplers.ode import ode_sample
from hybrids.sdes import SDE


def _sde_of(model: nn.Module, sde: SDE | None) -> SDE:
    sde = sde if sde is not None else getattr(model, "sde", None)
    if sde is None:
        raise ValueError(f"{type(model).__name__} has no `sde` attribute; bind the hook's `sde` argument in gin.")
    return sde


def mean_ci(values: Tensor) -> dict[str, float]:
    """Mean, standard error and the 95% interval mean +- 1.96 se over examples."""
    values = values.detach().double().cpu()
    n = values.numel()
    mean = float(values.mean())
    se = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "se": se, "ci95_low": mean - 1.96 * se, "ci95_high": mean + 1.96 * se, "n": n}


def _to_units(nll: Tensor, num_dims: int, num_levels: int | None) -> Tensor:
    if num_levels is None:
        return nll / (num_dims * math.log(2))
    return bits_per_dim(nll, num_dims, num_levels, centered=True)


@gin.configurable(module="hybrids.scoreflow", denylist=["device", "generator"])
def scoreflow_likelihood_eval(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_examples: int = 64,
    batch_size: int = 64,
    n_times: int = 100,
    ode: bool = True,
    bound: bool = True,
    eps: float = 1e-5,
    divergence: str = "hutchinson",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps_correction_bound: bool = True,
    eps_correction_ode: bool = False,
    importance_sampling: bool = True,
    sde: SDE | None = None,
) -> dict[str, Any]:
    """Bound bpd and ODE bpd (with mean NFE) of the first ``num_examples`` test examples.

    Args:
        model: a score model (``model.score``), on ``device``.
        data: the test ``ArrayDataset``.
        num_examples, batch_size: examples evaluated and batch size.
        n_times: time points per example of the DSM bound (papers/002: 1000).
        ode, bound: which likelihoods to compute.
        eps: start time (papers/002: 1e-5; 1e-2 for subVP).
        divergence: ``'hutchinson'`` or ``'exact'`` for the ODE.
        rtol, atol: ODE tolerances.
        eps_correction_bound, eps_correction_ode: use the eps-corrected forms (papers/002 applies
            the correction to the bound only).
        importance_sampling: importance-sample the bound's time integral.
        sde: overrides ``model.sde``.

    Returns:
        ``{'bound_bpd': {...mean, se, ci95...}, 'ode_bpd': {...}, 'ode_nfe_mean': float,
        'bound_minus_ode_bpd': {...} (per-example differences, with both), 'units': str,
        'num_examples': int, ...}``.
    """
    sde = _sde_of(model, sde)
    k = data.data[:num_examples]
    num_levels = data.num_levels
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    if k.is_floating_point():
        x_all = k.to(dtype)
    else:
        x_all = dequantize(k, num_levels, generator, dtype=dtype)
    num_dims = x_all[0].numel()
    bounds, odes, nfes = [], [], []
    for start in range(0, x_all.shape[0], batch_size):
        x = x_all[start:start + batch_size].to(device)
        if bound:
            with torch.no_grad():
                nll = dsm_bound(model, sde, x, n_times=n_times, importance_sampling=importance_sampling, eps=eps,
                                eps_correction=eps_correction_bound, generator=generator)
            bounds.append(_to_units(nll, num_dims, num_levels).cpu())
        if ode:
            res = ode_log_prob(model, sde, x, divergence=divergence, eps=eps, rtol=rtol, atol=atol,
                               generator=generator, eps_correction=eps_correction_ode)
            odes.append(_to_units(-res.log_prob, num_dims, num_levels).cpu())
            nfes.append(res.nfe)
    units = ("bits/dim of the pixels, uniform dequantization, +log2(K/2) offset for [-1, 1] data"
             if num_levels is not None else "bits/dim of the continuous data (no dequantization)")
    out: dict[str, Any] = {"units": units, "num_examples": int(x_all.shape[0]), "eps": eps,
                           "eps_correction_bound": eps_correction_bound, "eps_correction_ode": eps_correction_ode}
    if bound:
        out["bound_bpd"] = mean_ci(torch.cat(bounds))
        out["n_times"] = n_times
    if ode:
        out["ode_bpd"] = mean_ci(torch.cat(odes))
        out["ode_nfe_mean"] = float(sum(nfes) / len(nfes))
        out["divergence"] = divergence
    if bound and ode:  # paired over the same examples: tests NLL_ODE <= bound per example
        out["bound_minus_ode_bpd"] = mean_ci(torch.cat(bounds) - torch.cat(odes))
    return out


@gin.configurable(module="hybrids.scoreflow", denylist=["device", "generator"])
def dsm_loss_variance_eval(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_examples: int = 256,
    batch_size: int = 64,
    eps: float = 1e-5,
    sde: SDE | None = None,
) -> dict[str, Any]:
    """Variance of the likelihood-weighted DSM loss with and without importance sampling of t.

    On the same model and test examples, the per-example loss
    l = lambda(t) / sigma_t^2 ||sigma_t s(x_t, t) + z||^2 / 2 with lambda = g^2 is drawn with
    t ~ U[eps, T] and with t ~ q(t) proportional to g^2 / sigma^2 (``hybrids.objectives.dsm.DSM``);
    both estimate the same J (papers/002's loss; METHODS.md section 4), so their means agree and
    their variances compare the two estimators (papers/002 reports 98.48 -> 0.068 on CIFAR-10).

    Returns:
        ``{'uniform': {mean, se, ci95, ...}, 'is': {...}, 'var_uniform', 'var_is',
        'variance_ratio' (uniform / IS), 'num_examples'}``; losses in nats per example (summed
        over dimensions).
    """
    sde = _sde_of(model, sde)
    k = data.data[:num_examples]
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    x_all = k.to(dtype) if k.is_floating_point() else dequantize(k, data.num_levels, generator, dtype=dtype)
    out: dict[str, Any] = {"num_examples": int(x_all.shape[0]), "eps": eps}
    for name, importance in (("uniform", False), ("is", True)):
        objective = DSM(sde, weighting="likelihood", importance_sampling=importance, eps=eps, num_levels=None)
        with torch.no_grad():
            losses = [objective.per_example_loss(model, x.to(device), generator).cpu()
                      for x in x_all.split(batch_size)]
        losses = torch.cat(losses).double()
        out[name] = mean_ci(losses)
        out[f"var_{name}"] = float(losses.var())
    out["variance_ratio"] = out["var_uniform"] / out["var_is"]
    return out


def _levels(x: Tensor, num_levels: int | None) -> Tensor:
    """Images -> int64 levels; continuous data stay float."""
    return x if num_levels is None else quantize(x.clamp(-1, 1), num_levels)


@gin.configurable(module="hybrids.scoreflow", denylist=["device", "generator"])
def pc_sampler(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_samples: int = 16,
    num_steps: int = 100,
    predictor: str = "reverse_diffusion",
    corrector: str | None = "langevin",
    snr: float = 0.16,
    eps: float | None = None,
    sde: SDE | None = None,
) -> dict[str, Tensor]:
    """Predictor-corrector samples from the prior (``hybrids.samplers.sde.sample_from_prior``).

    Args:
        num_samples, num_steps, predictor, corrector, snr: sampler settings (score_sde: 1000
            steps, reverse diffusion + Langevin, snr 0.16).
        eps: final time (None: 1e-5 for VE, 1e-3 otherwise, as score_sde).

    Returns:
        ``{'pc': levels [N, C, H, W] int64}`` (float ``[N, D]`` for continuous data).
    """
    from hybrids.samplers.sde import sample_from_prior
    from hybrids.sdes import VESDE

    sde = _sde_of(model, sde)
    eps = (1e-5 if isinstance(sde, VESDE) else 1e-3) if eps is None else eps
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    shape = (num_samples,) + tuple(data.data.shape[1:])
    with torch.no_grad():
        x = sample_from_prior(model.score, sde, shape, eps=eps, num_steps=num_steps, predictor=predictor,
                              corrector=corrector, snr=snr, generator=generator, device=device, dtype=dtype)
    return {"pc": _levels(x, data.num_levels)}


@gin.configurable(module="hybrids.scoreflow", denylist=["device", "generator"])
def ode_sampler(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_samples: int = 16,
    eps: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    denoise: bool = False,
    sde: SDE | None = None,
) -> dict[str, Tensor]:
    """Probability-flow ODE samples (``hybrids.samplers.ode.ode_sample``).

    Returns:
        ``{'ode': levels [N, C, H, W] int64}`` (float ``[N, D]`` for continuous data).
    """
    sde = _sde_of(model, sde)
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    shape = (num_samples,) + tuple(data.data.shape[1:])
    x_init = sde.prior_sample(shape, generator, dtype=dtype, device=generator.device).to(device)
    out = ode_sample(model, sde, x_init=x_init, eps=eps, rtol=rtol, atol=atol, denoise=denoise)
    return {"ode": _levels(out.samples, data.num_levels)}


@gin.configurable(module="hybrids.scoreflow", denylist=["device", "generator"])
def scoreflow_vardeq_eval(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    train_steps: int = 200,
    train_batch_size: int = 32,
    train_n_times: int = 8,
    lr: float = 1e-3,
    num_couplings: int = 4,
    hidden: int = 64,
    num_examples: int = 64,
    batch_size: int = 64,
    n_times: int = 100,
    ode: bool = True,
    eps: float = 1e-5,
    divergence: str = "hutchinson",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    data_dir: str | None = None,
    sde: SDE | None = None,
) -> dict[str, Any]:
    """Variational dequantization (papers/002 section 5.2) of a frozen score model, then bpd.

    A ``VariationalDequantizer`` q_phi(u | k) is trained on the TRAIN split of ``data.name``
    (loaded here from ``data_dir``, by default the directory ``data`` was read from; the runner
    passes the test split) to maximise E_q[-bound(k + u) - log q(u | k)]
    with the eps-corrected DSM bound of the frozen model as the surrogate for -log p_x (as
    papers/002 App. B does), ``train_n_times`` time points per example. Then on the first
    ``num_examples`` test examples it reports bpd = -(log p_pixel(k + u) - log q(u | k)) / (D ln 2),
    u ~ q, with log p_x from the bound and (``ode``) the probability-flow ODE.

    Returns:
        ``{'vardeq_bound_bpd': {...}, 'vardeq_ode_bpd': {...}, 'ode_nfe_mean', 'train_elbo_first',
        'train_elbo_last', 'units'}``.
    """
    from hybrids.data import load_dataset
    from hybrids.likelihood.dequantize import (VariationalDequantizer, dequantization_log_prob,
                                               train_variational_dequantizer)
    from hybrids.likelihood.units import discrete_bits_per_dim

    if data.num_levels is None:
        raise ValueError("Variational dequantization needs integer data (num_levels); this dataset is continuous.")
    sde = _sde_of(model, sde)
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # the score model is frozen; only q_phi is trained
    try:
        train = load_dataset(data.name, split="train", data_dir=data_dir or data.data_dir)
        deq = VariationalDequantizer(data.data[0].numel(), data.num_levels, num_couplings, hidden).to(device, dtype)

        def surrogate(x: Tensor) -> Tensor:
            return -dsm_bound(model, sde, x, n_times=train_n_times, eps=eps, eps_correction=True, generator=generator,
                              time_chunk=train_n_times)

        history = train_variational_dequantizer(deq, surrogate, train.data.to(device), num_steps=train_steps,
                                                batch_size=train_batch_size, lr=lr, generator=generator)
        k_all = data.data[:num_examples].to(device)
        num_dims = k_all[0].numel()
        bounds, odes, nfes = [], [], []
        with torch.no_grad():
            for start in range(0, k_all.shape[0], batch_size):
                k = k_all[start:start + batch_size]
                lp = dequantization_log_prob(
                    lambda x: -dsm_bound(model, sde, x, n_times=n_times, eps=eps, eps_correction=True, generator=generator),
                    k, data.num_levels, dequantizer=deq, generator=generator)
                bounds.append(discrete_bits_per_dim(-lp, num_dims).cpu())
                if ode:
                    def ode_lp(x: Tensor) -> Tensor:
                        res = ode_log_prob(model, sde, x, divergence=divergence, eps=eps, rtol=rtol, atol=atol,
                                           generator=generator)
                        nfes.append(res.nfe)
                        return res.log_prob

                    lp = dequantization_log_prob(ode_lp, k, data.num_levels, dequantizer=deq, generator=generator)
                    odes.append(discrete_bits_per_dim(-lp, num_dims).cpu())
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    out: dict[str, Any] = {
        "units": "bits/dim of the pixels, variational dequantization (Flow++-style q(u|k))",
        "vardeq_bound_bpd": mean_ci(torch.cat(bounds)),
        "train_elbo_first": history[0] if history else None, "train_elbo_last": history[-1] if history else None,
        "train_steps": train_steps,
    }
    if ode:
        out["vardeq_ode_bpd"] = mean_ci(torch.cat(odes))
        out["ode_nfe_mean"] = float(sum(nfes) / len(nfes))
    return out
