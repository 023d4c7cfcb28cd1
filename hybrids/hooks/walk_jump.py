"""Walk-jump hooks for GPS models (``hybrids.models.gps.GPSModel``): samples, chain mixing and the
condition numbers of M-densities.

``M`` picks another member of the model's universality class (``model.with_measurements(M)``: the
same network, sigma = sigma_eff sqrt(M)). Integer data live in [-1, 1]; jumps are mapped back to
levels with ``hybrids.data.quantize``; 2-D toys are used as they are.

Reference: Saremi, Srivastava and Bach, "Universal Smoothed Score Functions for Generative
Modeling", arXiv 2023.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from hybrids.data import ArrayDataset, dequantize
from hybrids.hooks.base import evaluator, sampler, samples_output
from hybrids.metrics.conditioning import empirical_condition_numbers
from hybrids.metrics.fid import classifier_predict, train_domain_classifier
from hybrids.metrics.mixing import chain_class_statistics, jump_autocorrelation
from hybrids.models.gps import GPSModel
from hybrids.samplers.walk_jump import INTEGRATORS, walk_jump
from hybrids.tensors import model_dtype


def _member(model: nn.Module, M: int | None) -> GPSModel:
    if not isinstance(model, GPSModel):
        raise TypeError(f"walk-jump hooks need a hybrids.models.gps.GPSModel, got {type(model).__name__}.")
    return model if M is None else model.with_measurements(int(M))


def _check_integrator(integrator: str, hook: str) -> None:
    """Refuse an unknown integrator by its gin binding, before any chain or classifier runs."""
    if integrator not in INTEGRATORS:
        raise ValueError(f"{hook}.integrator must be one of {', '.join(map(repr, INTEGRATORS))} "
                         f"(hybrids.samplers.walk_jump); got {integrator!r}.")


def run_chains(
    model: GPSModel,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_chains: int,
    n_steps: int,
    record_every: int | None,
    friction: float,
    step_size: float | None,
    method: str,
    integrator: str,
    reduced: bool,
) -> Tensor:
    """Walk-jump chains of a GPS model from x_0 = 0: jumps ``[num_chains, R, *event]`` (R recorded
    jumps per chain; R = 1, the final jump, without recording)."""
    shape = (int(num_chains),) + tuple(data.shape)
    with torch.no_grad():
        out = walk_jump(
            model.ybar_score, model.sigma, model.M, shape, n_steps=int(n_steps), step_size=step_size,
            friction=friction, generator=generator, record_every=record_every, method=method,
            integrator=integrator, reduced=reduced, dtype=model_dtype(model), device=device,
        )
    jumps = torch.stack(out, dim=1) if record_every is not None else out.unsqueeze(1)
    if jumps.shape[1] == 0:
        raise ValueError(f"record_every = {record_every} > n_steps = {n_steps}: no jump recorded.")
    return jumps


@sampler
def walk_jump_sampler(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_samples: int | None = None,
    num_steps: int | None = None,
    record_every: int | None = None,
    friction: float = 1.0,
    step_size: float | None = None,
    M: int | None = None,
    method: str = "underdamped",
    integrator: str = "aboba",
    reduced: bool = True,
) -> dict[str, Tensor]:
    """Walk-jump samples: one long chain per sample, x_0 = 0 (``hybrids.samplers.walk_jump``).

    Args:
        num_samples: parallel chains, one final jump each (None: the budget's).
        num_steps: walk steps per chain (None: the budget's).
        record_every: also return every chain's jumps after every ``record_every`` steps.
        friction: effective friction gamma * delta.
        step_size: delta of the M x D chain (default sigma / 2).
        M: member of the universality class to sample (default: the model's M).
        method, integrator, reduced: see ``walk_jump`` (integrator: 'aboba', 'cheng' or
            'randomized_midpoint'; the last calls the score twice per step).

    Returns:
        ``{'samples': final jumps [num_samples, *event]}`` plus, with ``record_every``,
        ``{'chains': [num_samples * R, *event]}`` (each chain's R jumps in a row).
    """
    _check_integrator(integrator, "walk_jump_sampler")
    jumps = run_chains(
        _member(model, M), data, device=device, generator=generator, num_chains=num_samples, n_steps=num_steps,
        record_every=record_every, friction=friction, step_size=step_size, method=method, integrator=integrator,
        reduced=reduced,
    )
    out = {"samples": samples_output(jumps[:, -1], data.num_levels, "walk_jump_sampler")}
    if record_every is not None:
        out["chains"] = samples_output(jumps.flatten(0, 1), data.num_levels, "walk_jump_sampler")
    return out


@evaluator
def walk_jump_class_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_chains: int = 4,
    num_steps: int | None = None,
    record_every: int = 10,
    friction: float = 1.0,
    step_size: float | None = None,
    M: int | None = None,
    integrator: str = "aboba",
    classifier_steps: int | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Count the classes that each walk-jump chain's jumps visit (fast mixing between modes).

    ``num_chains`` chains of ``num_steps`` walk steps (None: the budget's), a jump recorded every
    ``record_every`` steps, underdamped with ``integrator`` ('aboba', 'cheng' or
    'randomized_midpoint', ``hybrids.samplers.walk_jump``) on the reduced chain.

    A small CNN (``hybrids.metrics.fid.train_domain_classifier`` on the dataset's train split,
    cached) labels every recorded jump. Needs a labelled image dataset (digits, MNIST).

    Returns:
        ``hybrids.metrics.mixing.chain_class_statistics`` of the labels, the classifier's test
        accuracy, and ``jump_autocorrelation`` (lags 1 .. min(5, R - 1) of the recorded jumps in
        model space, ``hybrids.metrics.mixing.jump_autocorrelation``; empty for R < 2).
    """
    if data.labels is None or data.num_levels is None:
        raise ValueError(f"walk_jump_class_eval needs a labelled image dataset; {data.name!r} is not one.")
    _check_integrator(integrator, "walk_jump_class_eval")
    jumps = run_chains(
        _member(model, M), data, device=device, generator=generator, num_chains=num_chains, n_steps=num_steps,
        record_every=record_every, friction=friction, step_size=step_size, method="underdamped",
        integrator=integrator, reduced=True,
    )
    levels = samples_output(jumps.flatten(0, 1), data.num_levels, "walk_jump_class_eval")
    classifier = train_domain_classifier(data.name, data_dir or data.data_dir, steps=classifier_steps, device=device)
    labels = classifier_predict(classifier, levels).reshape(jumps.shape[0], jumps.shape[1])
    stats = chain_class_statistics(labels, int(data.labels.max()) + 1)
    max_lag = min(5, jumps.shape[1] - 1)
    rho = jump_autocorrelation(jumps.cpu(), max_lag) if max_lag >= 1 else []
    return {**stats, "classifier_test_accuracy": float(classifier.test_accuracy), "jump_autocorrelation": rho,
            **({"jump_autocorrelation_lag1": rho[0]} if rho else {})}


@evaluator
def conditioning_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    Ms: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
    num_examples: int | None = None,
) -> dict[str, Any]:
    """kappa(M) of the M-density of a Gaussian with the test data's covariance.

    Integer data are dequantized to [-1, 1] once. Two curves: along the model's universality class
    (sigma = sigma_eff sqrt(M)) and at the model's fixed sigma (``hybrids.metrics.conditioning``).

    Returns:
        ``M``, ``kappa_class``, ``kappa_fixed_sigma``, ``sigma_eff``, ``sigma``, the extreme
        eigenvalues ``lambda_max`` / ``lambda_min`` of the data covariance and ``num_examples``.
    """
    gps = _member(model, None)
    k = data.data[:num_examples]
    if data.num_levels is None:
        x = k.to(torch.float64)
    else:
        x = dequantize(k.to(generator.device), data.num_levels, generator, dtype=torch.float64).cpu()
    x = x.flatten(1)
    if x.shape[0] < 2:
        raise ValueError(f"conditioning_eval needs at least 2 examples, got {x.shape[0]}.")
    cov = torch.cov(x.T).reshape(x.shape[1], x.shape[1])
    lam = torch.linalg.eigvalsh(cov).clamp(min=0)
    Ms = [int(m) for m in Ms]
    return {
        "M": Ms,
        "kappa_class": empirical_condition_numbers(cov, [gps.sigma_eff * math.sqrt(m) for m in Ms], Ms),
        "kappa_fixed_sigma": empirical_condition_numbers(cov, gps.sigma, Ms),
        "sigma_eff": gps.sigma_eff,
        "sigma": gps.sigma,
        "lambda_max": float(lam.max()),
        "lambda_min": float(lam.min()),
        "num_examples": int(x.shape[0]),
    }
