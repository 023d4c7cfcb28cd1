"""Walk-jump runner hooks (papers/004): samplers and evaluators of a trained GPS model.

Every hook has the runner signature ``hook(model, data, *, device, generator) -> dict``; sizes are
gin-bound keyword arguments with small CPU defaults. The model must be a
:class:`hybrids.models.gps.GPSModel`; ``M`` picks another member of its universality class
(``model.with_measurements(M)``, same network, sigma = sigma_eff sqrt(M)).

Units: integer data live in [-1, 1] (``hybrids.data.dequantize``); jumps are mapped back to levels
with ``hybrids.data.quantize``. 2-D toys are used as they are.
"""
from __future__ import annotations

import math
from typing import Any

import gin
import torch
from torch import Tensor, nn

from hybrids.data import dequantize, quantize
from hybrids.metrics.conditioning import empirical_condition_numbers
from hybrids.metrics.fid import classifier_predict, train_domain_classifier
from hybrids.models.gps import GPSModel
from hybrids.samplers.walk_jump import walk_jump


def _member(model: nn.Module, M: int | None) -> GPSModel:
    if not isinstance(model, GPSModel):
        raise TypeError(f"walk-jump hooks need a hybrids.models.gps.GPSModel, got {type(model).__name__}.")
    return model if M is None else model.with_measurements(int(M))


def _dtype(model: nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return param.dtype if param is not None and param.dtype.is_floating_point else torch.float32


def _run_chains(
    model: GPSModel,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_chains: int,
    n_steps: int,
    record_every: int | None,
    friction: float,
    step_size: float | None,
    method: str,
    reduced: bool,
) -> Tensor:
    """Jumps ``[num_chains, R, *event]`` (R recorded jumps per chain; R = 1 without recording)."""
    shape = (int(num_chains),) + tuple(data.shape)
    with torch.no_grad():
        out = walk_jump(
            model.ybar_score,
            model.sigma,
            model.M,
            shape,
            n_steps=int(n_steps),
            step_size=step_size,
            friction=friction,
            generator=generator,
            record_every=record_every,
            method=method,
            reduced=reduced,
            dtype=_dtype(model),
            device=device,
        )
    jumps = torch.stack(out, dim=1) if record_every is not None else out.unsqueeze(1)
    if jumps.shape[1] == 0:
        raise ValueError(f"record_every = {record_every} > n_steps = {n_steps}: no jump recorded.")
    return jumps


def _to_output(jumps: Tensor, num_levels: int | None) -> Tensor:
    return jumps.detach().cpu() if num_levels is None else quantize(jumps.detach().float().cpu(), num_levels)


@gin.configurable(module="hybrids.walkjump", denylist=["device", "generator"])
def walk_jump_sampler(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_chains: int = 16,
    n_steps: int = 200,
    record_every: int | None = None,
    friction: float = 1.0,
    step_size: float | None = None,
    M: int | None = None,
    method: str = "underdamped",
    reduced: bool = True,
) -> dict[str, Tensor]:
    """Walk-jump samples: one long chain per stream, x_0 = 0 (see ``hybrids.samplers.walk_jump``).

    Args:
        model: a ``GPSModel`` on ``device``.
        data: the test ``ArrayDataset`` (gives the event shape and the number of levels).
        num_chains: parallel chains.
        n_steps: walk steps per chain.
        record_every: also return every chain's jumps after every ``record_every`` steps.
        friction: effective friction gamma * delta.
        step_size: delta of the M x D chain (default sigma / 2).
        M: member of the universality class to sample (default: the model's M).
        method, reduced: see ``walk_jump``.

    Returns:
        ``{'samples': final jumps [num_chains, *event]}`` plus, with ``record_every``,
        ``{'chains': [num_chains * R, *event]}`` (each chain's R jumps in a row): int64 levels for
        image data, float points for 2-D toys.
    """
    member = _member(model, M)
    jumps = _run_chains(
        member, data, device=device, generator=generator, num_chains=num_chains, n_steps=n_steps,
        record_every=record_every, friction=friction, step_size=step_size, method=method, reduced=reduced,
    )
    out = {"samples": _to_output(jumps[:, -1], data.num_levels)}
    if record_every is not None:
        out["chains"] = _to_output(jumps.flatten(0, 1), data.num_levels)
    return out


@gin.configurable(module="hybrids.walkjump", denylist=["device", "generator"])
def walk_jump_class_eval(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_chains: int = 4,
    n_steps: int = 400,
    record_every: int = 10,
    friction: float = 1.0,
    step_size: float | None = None,
    M: int | None = None,
    classifier_steps: int = 500,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Count the classes that each chain's jumps visit (papers/004, Fig. 3: fast mixing).

    A small CNN (``hybrids.metrics.fid.train_domain_classifier`` on the dataset's train split,
    cached) labels every recorded jump. Needs a labelled image dataset (digits, MNIST).

    Returns:
        ``classes_visited`` per chain, their mean, ``switches`` (label changes between consecutive
        jumps) per chain, the pooled ``class_histogram``, the number of jumps per chain and the
        classifier's test accuracy.
    """
    if data.labels is None or data.num_levels is None:
        raise ValueError(f"walk_jump_class_eval needs a labelled image dataset; {data.name!r} is not one.")
    member = _member(model, M)
    jumps = _run_chains(
        member, data, device=device, generator=generator, num_chains=num_chains, n_steps=n_steps,
        record_every=record_every, friction=friction, step_size=step_size, method="underdamped", reduced=True,
    )
    levels = _to_output(jumps.flatten(0, 1), data.num_levels)
    classifier = train_domain_classifier(data.name, data_dir or data.data_dir, steps=classifier_steps, device=device)
    labels = classifier_predict(classifier, levels).reshape(jumps.shape[0], jumps.shape[1])
    num_classes = int(data.labels.max()) + 1
    visited = [int(torch.unique(row).numel()) for row in labels]
    switches = [int((row[1:] != row[:-1]).sum()) for row in labels]
    return {
        "classes_visited": visited,
        "mean_classes_visited": sum(visited) / len(visited),
        "switches": switches,
        "mean_switches": sum(switches) / len(switches),
        "class_histogram": torch.bincount(labels.flatten(), minlength=num_classes).tolist(),
        "jumps_per_chain": int(jumps.shape[1]),
        "classifier_test_accuracy": float(classifier.test_accuracy),
    }


@gin.configurable(module="hybrids.walkjump", denylist=["device", "generator"])
def conditioning_eval(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    Ms: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
    num_examples: int | None = 10_000,
) -> dict[str, Any]:
    """kappa(M) of the M-density of a Gaussian with the test data's covariance (papers/004, Sec. 4).

    Integer data are dequantized to [-1, 1] once. Two curves: along the model's universality class
    (sigma = sigma_eff sqrt(M)) and at the model's fixed sigma.

    Returns:
        ``M``, ``kappa_class``, ``kappa_fixed_sigma``, ``sigma_eff``, ``sigma``, the extreme
        eigenvalues ``lambda_max`` / ``lambda_min`` of the data covariance and ``num_examples``.
    """
    gps = _member(model, None)
    k = data.data if num_examples is None else data.data[: int(num_examples)]
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
