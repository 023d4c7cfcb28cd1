"""Likelihood evaluators: discrete bits/dim under perturbation, probability-flow ODE and DSM-bound
likelihoods of any model with a score, the DSM loss variance, variational dequantization, and the
grid-normalised density of a 2-D autoregressive score model.

Units: integer data are uniformly dequantized once per example, x = 2 (k + u) / K - 1; a
continuous log-density of x gives bpd <= -log p_x(x) / (D ln 2) + log2(K / 2) through
``hybrids.likelihood.bits_per_dim``. Continuous data (2-D toys) are reported in bits per
dimension of the data without an offset (``hybrids.likelihood.nats_to_bpd``).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from hybrids.data import ArrayDataset, load_dataset, perturb_lsb
from hybrids.hooks.base import evaluator, model_space_examples
from hybrids.likelihood.bound import dsm_bound
from hybrids.likelihood.density_grid import conditional_density_grid
from hybrids.likelihood.dequantize import (VariationalDequantizer, dequantization_log_prob,
                                           train_variational_dequantizer)
from hybrids.likelihood.ode import ode_log_prob
from hybrids.likelihood.units import bits_per_dim, nats_to_bpd
from hybrids.objectives.dsm import DSM
from hybrids.objectives.ncml import default_t_max
from hybrids.objectives.perturb import perturb
from hybrids.sdes import SDE, sde_of
from hybrids.stats import mean_ci
from hybrids.tensors import model_dtype


def image_levels(data: ArrayDataset, hook: str) -> tuple[Tensor, int]:
    """``(levels [N, C, H, W], K)`` of an image dataset; a clear error for anything else."""
    k, num_levels = data.data, data.num_levels
    if num_levels is None or k.ndim != 4:
        raise ValueError(f"{hook} needs integer images [N, C, H, W] with num_levels; got {data.name} "
                         f"with shape {tuple(k.shape)} and num_levels={num_levels}.")
    return k, int(num_levels)


def _to_units(nll: Tensor, num_dims: int, num_levels: int | None) -> Tensor:
    return nats_to_bpd(nll, num_dims) if num_levels is None else bits_per_dim(nll, num_dims, num_levels)


@evaluator
def pi_perturbation_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    pis: Sequence[float] = (0.0, 0.5, 1.0),
    num_examples: int | None = None,
    batch_size: int | None = None,
    interior: bool = True,
) -> dict[str, Any]:
    """Discrete bits/dim at t = 0 on p_pi-perturbed test images: NCML's robustness test.

    Each level moves +-1 with probability pi (``hybrids.data.perturb_lsb``); a model whose
    likelihood is robust degrades little from pi = 0 to pi = 1. On MNIST most pixels are
    background at level 0, which pi = 1 moves to level 1, so the plain degradation mostly measures
    how smooth the model is at the background. With ``interior`` the test is repeated perturbing
    only the pixels whose level lies in 1..K-2 (the others keep their level; bpd is still over all
    pixels), which removes that confound; its draws come after the plain test's, which is
    unchanged by it.

    Args:
        model: model with ``discrete_log_prob`` (eval mode, on ``device``).
        data: test split (integer images).
        pis: perturbation probabilities.
        num_examples: first examples of the test split to use (None: the budget's).
        batch_size: examples per forward pass (None: the budget's).
        interior: also run the interior-pixels-only test.

    Returns:
        ``{'bpd': {str(pi): mean}, 'se': {str(pi): standard error}, 'degradation': bpd(1) - bpd(0)
        (when both 0 and 1 are in pis), 'num_examples': n}``, and with ``interior`` the same under
        ``'interior'`` plus ``'interior_fraction'`` (the mean fraction of interior pixels).
    """
    k_all, num_levels = image_levels(data, "pi_perturbation_eval")
    k_all = k_all[:num_examples]
    n, num_dims = k_all.shape[0], k_all[0].numel()

    def run(only_interior: bool) -> dict[str, Any]:
        bpd, se = {}, {}
        with torch.no_grad():
            for pi in pis:
                values = []
                for start in range(0, n, int(batch_size)):
                    k = k_all[start : start + int(batch_size)].to(device)
                    moved = perturb_lsb(k, float(pi), num_levels, generator)
                    if only_interior:
                        moved = torch.where((k > 0) & (k < num_levels - 1), moved, k)
                    values.append(nats_to_bpd(-model.discrete_log_prob(moved).double().cpu(), num_dims))
                summary = mean_ci(torch.cat(values))
                bpd[str(float(pi))] = summary["mean"]
                se[str(float(pi))] = summary["se"]
        out: dict[str, Any] = {"bpd": bpd, "se": se}
        if "0.0" in bpd and "1.0" in bpd:
            out["degradation"] = bpd["1.0"] - bpd["0.0"]
        return out

    out = {**run(False), "num_examples": n}
    if interior:
        out["interior"] = run(True)
        out["interior_fraction"] = float(((k_all > 0) & (k_all < num_levels - 1)).double().mean())
    return out


@evaluator
def score_likelihood_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_examples: int | None = None,
    batch_size: int | None = None,
    n_times: int | None = None,
    ode: bool = True,
    bound: bool = True,
    eps: float = 1e-5,
    divergence: str = "hutchinson",
    rtol: float | None = None,
    atol: float | None = None,
    eps_correction_bound: bool = True,
    eps_correction_ode: bool = False,
    importance_sampling: bool = True,
    ode_terminal: str = "prior",
    ode_t_end: float | None = None,
    ode_time_variable: str = "t",
    bound_terminal: str = "prior",
    bound_t_end: float | None = None,
    sde: SDE | None = None,
) -> dict[str, Any]:
    """Likelihoods of any model with a score: probability-flow ODE NLL and the DSM bound, in bpd.

    The ODE NLL is -log p_eps(x) = -[log pi(x_T) + int_eps^T div F(x_t, t) dt] with the SDE's prior
    pi (``ode_terminal='prior'``). A noise-conditional density model trained only up to some
    t_end < T (NCML: T_ncml) has an untrained score above it; ``ode_terminal='model'`` integrates to
    t_end and closes with the model's own density instead,
    -[log p_theta(x_t_end | t_end) + int_eps^t_end div F dt] (the closure consistency_eval uses).
    ``bound_terminal='model'`` closes the DSM bound the same way: its time integral runs over
    [eps, t_end] and E[-log p_theta(x_t_end | t_end)] replaces the prior term, a bound on the model
    that draws from p_theta(. | t_end) and runs the reverse SDE of its score (the continuous-time
    version of NCML's hybrid sampler).

    Args:
        model: a model with ``score`` (a score model, or a density model through its autograd
            score), on ``device``.
        data: the test split.
        num_examples, batch_size: examples evaluated and batch size (None: the budget's).
        n_times: time points per example of the DSM bound (None: the budget's; ScoreFlow: 1000).
        ode, bound: which likelihoods to compute.
        eps: start time (ScoreFlow: 1e-5; 1e-2 for subVP).
        divergence: ``'hutchinson'`` or ``'exact'`` for the ODE.
        rtol, atol: ODE tolerances (None: the budget's).
        eps_correction_bound, eps_correction_ode: use the eps-corrected forms (ScoreFlow applies
            the correction to the bound only).
        importance_sampling: importance-sample the bound's time integral.
        ode_terminal: what closes the ODE: ``'prior'`` (the SDE's prior at T) or ``'model'`` (the
            model's own ``log_prob(x, t_end)``; density models only).
        ode_t_end: end time of the ODE for ``'model'`` (None: the SDE's T_ncml,
            ``hybrids.objectives.ncml.default_t_max``); must be None for ``'prior'``.
        ode_time_variable: the variable the ODE solver steps in, ``'t'`` or ``'angle'``
            (``hybrids.likelihood.ode_log_prob``'s ``time_variable``).
        bound_terminal, bound_t_end: the same closure choices for the DSM bound.
        sde: overrides ``model.sde``.

    Returns:
        ``{'bound_bpd': {mean, se, ci95_low, ci95_high, n}, 'ode_bpd': {...}, 'ode_nfe_mean',
        'bound_minus_ode_bpd': {...} (paired per-example differences, with both), 'units',
        'num_examples', ...}``.
    """
    sde = sde_of(model, sde, binding="score_likelihood_eval.sde")
    t_end, terminal = _closure(model, sde, "ode", ode_terminal, ode_t_end) if ode else (None, None)
    bound_end, bound_closure = _closure(model, sde, "bound", bound_terminal, bound_t_end) if bound else (None, None)
    num_levels = data.num_levels
    x_all = model_space_examples(model, data, num_examples, generator)
    num_dims = x_all[0].numel()
    bounds, odes, nfes = [], [], []
    for start in range(0, x_all.shape[0], batch_size):
        x = x_all[start:start + batch_size].to(device)
        if bound:
            with torch.no_grad():
                nll = dsm_bound(model, sde, x, n_times=n_times, importance_sampling=importance_sampling, eps=eps,
                                eps_correction=eps_correction_bound, generator=generator, t_end=bound_end,
                                terminal_log_prob=bound_closure)
            bounds.append(_to_units(nll, num_dims, num_levels).cpu())
        if ode:
            res = ode_log_prob(model, sde, x, divergence=divergence, eps=eps, rtol=rtol, atol=atol,
                               generator=generator, eps_correction=eps_correction_ode, t_end=t_end,
                               terminal_log_prob=terminal, time_variable=ode_time_variable)
            odes.append(_to_units(-res.log_prob, num_dims, num_levels).cpu())
            nfes.append(res.nfe)
    units = ("bits/dim of the pixels, uniform dequantization, +log2(K/2) offset for [-1, 1] data"
             if num_levels is not None else "bits/dim of the continuous data (no dequantization)")
    out: dict[str, Any] = {"units": units, "num_examples": int(x_all.shape[0]), "eps": eps,
                           "eps_correction_bound": eps_correction_bound, "eps_correction_ode": eps_correction_ode}
    if bound:
        out["bound_bpd"] = mean_ci(torch.cat(bounds))
        out["n_times"] = n_times
        out["bound_terminal"], out["bound_t_end"] = bound_terminal, sde.T if bound_end is None else bound_end
    if ode:
        out["ode_bpd"] = mean_ci(torch.cat(odes))
        out["ode_nfe_mean"] = float(sum(nfes) / len(nfes))
        out["divergence"] = divergence
        out["ode_terminal"], out["ode_t_end"] = ode_terminal, sde.T if t_end is None else t_end
        out["ode_time_variable"] = ode_time_variable
    if bound and ode:  # paired over the same examples: tests NLL_ODE <= bound per example
        out["bound_minus_ode_bpd"] = mean_ci(torch.cat(bounds) - torch.cat(odes))
    return out


def _closure(model: nn.Module, sde: SDE, kind: str, terminal: str, t_end: float | None):
    """``(t_end, terminal_log_prob)`` for the ODE or the bound (``kind``: 'ode' or 'bound'): the
    prior at T, or the model's density at t_end."""
    name = f"score_likelihood_eval.{kind}"
    if terminal == "prior":
        if t_end is not None:
            raise ValueError(f"{name}_t_end = {t_end} needs {kind}_terminal = 'model' (the prior closes at T "
                             f"only); unbind {kind}_t_end or bind {kind}_terminal = 'model'.")
        return None, None
    if terminal != "model":
        raise ValueError(f"{name}_terminal must be 'prior' or 'model'; got {terminal!r}.")
    if not callable(getattr(model, "log_prob", None)):
        raise TypeError(f"{name}_terminal = 'model' needs a density model with log_prob(x, t); "
                        f"{type(model).__name__} has none. Use {kind}_terminal = 'prior'.")
    t_end = default_t_max(sde) if t_end is None else float(t_end)
    if not 0.0 < t_end <= sde.T:
        raise ValueError(f"{name}_t_end must lie in (0, T = {sde.T}]; got {t_end}.")

    return t_end, own_density_at(model, t_end)


def own_density_at(model: nn.Module, t: float):
    """``z [B, ...] -> log p_theta(z | t) [B]``: the model's own density at level ``t`` (an ODE closure)."""

    def log_prob(z: Tensor) -> Tensor:
        return model.log_prob(z, torch.full((z.shape[0],), t, dtype=z.dtype, device=z.device))

    return log_prob


@evaluator
def consistency_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_examples: int | None = None,
    batch_size: int | None = None,
    t0: float = 1e-3,
    t1: float | None = None,
    divergence: str = "hutchinson",
    rtol: float | None = None,
    atol: float | None = None,
    sde: SDE | None = None,
) -> dict[str, Any]:
    """Score/likelihood consistency of a noise-conditional density model, in bits per dimension.

    For x ~ p_0t0(. | data) (test examples perturbed to level t0), the model's own log-density
    log p_theta(x | t0) against the probability-flow ODE from t0 to t1 driven by the model's own
    (autograd) score and closed by its own log-density at t1 instead of the prior:

        gap(x) = log p_theta(x | t0) - [log p_theta(x_t1 | t1) + int_t0^t1 div F(x_t, t) dt].

    A model whose noise levels form one diffusion (p_theta(. | t) the marginals of the SDE started
    from p_theta(. | t0)) has gap 0 up to solver and probe error; an NCML or DSM-trained density
    model need not. Reported per dimension, gap / (D ln 2) (positive: the model's own density at t0
    is higher than the one its score and its t1 density imply).

    Args:
        model: a density model with ``log_prob(x, t)`` and ``score`` (e.g. NCPN), on ``device``.
        data: the test split.
        num_examples, batch_size: examples and batch size (None: the budget's).
        t0, t1: the two noise levels, 0 < t0 < t1 <= T; t1 None: the SDE's T_ncml
            (``hybrids.objectives.ncml.default_t_max``), the top of NCML's trained range.
        divergence: ``'hutchinson'`` (one probe per example) or ``'exact'``.
        rtol, atol: ODE tolerances (None: the budget's).
        sde: overrides ``model.sde``.

    Returns:
        ``{'gap_bpd': {mean, se, ci95_low, ci95_high, n}, 'abs_gap_bpd': {...} (of |gap|: gaps of
        either sign do not cancel), 'own_bpd': {...} (-log p_theta(x | t0)),
        'ode_bpd': {...} (the ODE's), 'ode_nfe_mean', 't0', 't1', 'num_examples'}``; bpd here are
        nats / (D ln 2) of the continuous x at t0, without a dequantization offset.

    Raises:
        TypeError: the model has no ``log_prob(x, t)``.
    """
    if not callable(getattr(model, "log_prob", None)):
        raise TypeError(f"consistency_eval needs a density model with log_prob(x, t) and a score; "
                        f"{type(model).__name__} has no log_prob. Score-only models have no own density to compare.")
    sde = sde_of(model, sde, binding="consistency_eval.sde")
    t1 = default_t_max(sde) if t1 is None else float(t1)
    if not 0.0 < t0 < t1 <= sde.T:
        raise ValueError(f"consistency_eval needs 0 < t0 < t1 <= T = {sde.T}; got t0 = {t0}, t1 = {t1}.")
    x_all = model_space_examples(model, data, num_examples, generator)
    num_dims = x_all[0].numel()
    gaps, owns, odes, nfes = [], [], [], []

    def level(value: float, like: Tensor) -> Tensor:
        return torch.full((like.shape[0],), value, dtype=like.dtype, device=like.device)

    for start in range(0, x_all.shape[0], batch_size):
        x0 = x_all[start:start + batch_size].to(device)
        x = perturb(sde, x0, level(t0, x0), generator).x_t
        with torch.no_grad():
            own = model.log_prob(x, level(t0, x))
            res = ode_log_prob(model, sde, x, divergence=divergence, eps=t0, t_end=t1, rtol=rtol, atol=atol,
                               generator=generator, terminal_log_prob=own_density_at(model, t1))
        gaps.append(nats_to_bpd(own - res.log_prob, num_dims).double().cpu())
        owns.append(nats_to_bpd(-own, num_dims).double().cpu())
        odes.append(nats_to_bpd(-res.log_prob, num_dims).double().cpu())
        nfes.append(res.nfe)
    gaps = torch.cat(gaps)
    return {"gap_bpd": mean_ci(gaps), "abs_gap_bpd": mean_ci(gaps.abs()), "own_bpd": mean_ci(torch.cat(owns)),
            "ode_bpd": mean_ci(torch.cat(odes)), "ode_nfe_mean": float(sum(nfes) / len(nfes)),
            "t0": t0, "t1": t1, "num_examples": int(x_all.shape[0])}


@evaluator
def dsm_loss_variance_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_examples: int | None = None,
    batch_size: int | None = None,
    eps: float = 1e-5,
    sde: SDE | None = None,
) -> dict[str, Any]:
    """Variance of the likelihood-weighted DSM loss with and without importance sampling of t.

    On the same model and test examples, the per-example loss
    l = lambda(t) / sigma_t^2 ||sigma_t s(x_t, t) + z||^2 / 2 with lambda = g^2 is drawn with
    t ~ U[eps, T] and with t ~ q(t) proportional to g^2 / sigma^2 (``hybrids.objectives.DSM``);
    both estimate the same objective, so their means agree and their variances compare the two
    estimators (Song et al. 2021b report 98.48 -> 0.068 on CIFAR-10).

    Returns:
        ``{'uniform': {mean, se, ci95, ...}, 'is': {...}, 'var_uniform', 'var_is',
        'variance_ratio' (uniform / IS), 'num_examples'}``; losses in nats per example (summed
        over dimensions).
    """
    sde = sde_of(model, sde, binding="dsm_loss_variance_eval.sde")
    x_all = model_space_examples(model, data, num_examples, generator)
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


@evaluator
def vardeq_likelihood_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    train_steps: int | None = None,
    train_batch_size: int = 32,
    train_n_times: int = 8,
    lr: float = 1e-3,
    num_couplings: int = 4,
    hidden: int = 64,
    num_examples: int | None = None,
    batch_size: int | None = None,
    n_times: int | None = None,
    ode: bool = True,
    eps: float = 1e-5,
    divergence: str = "hutchinson",
    rtol: float | None = None,
    atol: float | None = None,
    data_dir: str | None = None,
    sde: SDE | None = None,
) -> dict[str, Any]:
    """Variational dequantization of a frozen model with a score, then bpd (ScoreFlow section 5.2).

    A ``VariationalDequantizer`` q_phi(u | k) is trained on the TRAIN split of ``data.name``
    (loaded from ``data_dir``, by default the directory ``data`` was read from; the runner passes
    the test split) to maximise E_q[-bound(k + u) - log q(u | k)], with the eps-corrected DSM bound
    of the frozen model as the surrogate for -log p_x (``train_n_times`` time points per example).
    Then on the first ``num_examples`` test examples it reports
    bpd = -(log p_pixel(k + u) - log q(u | k)) / (D ln 2), u ~ q, with log p_x from the bound
    and (``ode``) from the probability-flow ODE.

    Returns:
        ``{'vardeq_bound_bpd': {...}, 'vardeq_ode_bpd': {...}, 'ode_nfe_mean', 'train_elbo_first',
        'train_elbo_last', 'train_steps', 'units'}``.
    """
    if data.num_levels is None:
        raise ValueError("Variational dequantization needs integer data (num_levels); this dataset is continuous.")
    sde = sde_of(model, sde, binding="vardeq_likelihood_eval.sde")
    dtype = model_dtype(model)
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
                bounds.append(nats_to_bpd(-lp, num_dims).cpu())
                if ode:
                    def ode_lp(x: Tensor) -> Tensor:
                        res = ode_log_prob(model, sde, x, divergence=divergence, eps=eps, rtol=rtol, atol=atol,
                                           generator=generator)
                        nfes.append(res.nfe)
                        return res.log_prob

                    lp = dequantization_log_prob(ode_lp, k, data.num_levels, dequantizer=deq, generator=generator)
                    odes.append(nats_to_bpd(-lp, num_dims).cpu())
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


@evaluator
def density_grid_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    lim: tuple[float, float] = (-4.0, 4.0),
    resolution: int = 400,
    num_examples: int = 2000,
) -> dict[str, float]:
    """Mean test log-likelihood (nats) of a 2-D AR score model under its grid-normalised density.

    Each test point takes the density of its nearest grid node (error O(grid spacing)); points
    outside the grid are counted, not scored (``hybrids.likelihood.density_grid``).

    Returns:
        ``test_log_likelihood`` (over points inside the grid), ``fraction_outside_grid``.
    """
    grid, dens = conditional_density_grid(model, lim, resolution, device)
    x = data.data[:num_examples].to(device=device, dtype=grid.dtype)
    inside = ((x >= lim[0]) & (x <= lim[1])).all(1)
    dx = float(grid[1] - grid[0])
    idx = torch.round((x[inside] - lim[0]) / dx).long().clamp(0, resolution - 1)
    log_p = torch.log(dens[idx[:, 0], idx[:, 1]].clamp_min(torch.finfo(dens.dtype).tiny))
    return {
        "test_log_likelihood": float(log_p.mean()),
        "fraction_outside_grid": float(1 - inside.double().mean()),
    }
