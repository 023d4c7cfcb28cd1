"""How well a sampler's chains mix between modes: the classes their successive samples visit."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def chain_class_statistics(labels: Tensor, num_classes: int) -> dict[str, Any]:
    """Classes visited and class switches of chains whose successive samples were labelled.

    Args:
        labels: int64 ``[num_chains, R]``, the class of each chain's R successive samples.
        num_classes: number of classes (for the histogram).

    Returns:
        ``classes_visited`` (distinct labels per chain) and their mean, ``switches`` (label changes
        between consecutive samples) per chain and their mean, the pooled ``class_histogram``
        ``[num_classes]`` and ``jumps_per_chain`` (R).
    """
    if labels.ndim != 2 or labels.shape[1] == 0:
        raise ValueError(f"labels must be [num_chains, R] with R >= 1; got {tuple(labels.shape)}.")
    visited = [int(torch.unique(row).numel()) for row in labels]
    switches = [int((row[1:] != row[:-1]).sum()) for row in labels]
    return {
        "classes_visited": visited,
        "mean_classes_visited": sum(visited) / len(visited),
        "switches": switches,
        "mean_switches": sum(switches) / len(switches),
        "class_histogram": torch.bincount(labels.flatten(), minlength=num_classes).tolist(),
        "jumps_per_chain": int(labels.shape[1]),
    }


def jump_autocorrelation(jumps: Tensor, max_lag: int = 5) -> list[float]:
    """Autocorrelation of successive samples along chains, averaged over chains.

    For a chain x_1 .. x_R (flattened to vectors) with mean m, the lag-k autocorrelation is
    rho(k) = sum_r <x_r - m, x_(r+k) - m> / sum_r ||x_r - m||^2 (the usual biased estimator,
    1 at lag 0, towards 0 for a fast-mixing chain).

    Args:
        jumps: ``[num_chains, R, ...]`` successive samples of each chain.
        max_lag: largest lag k (< R).

    Returns:
        ``[rho(1), ..., rho(max_lag)]``, each the mean over chains.
    """
    if jumps.ndim < 3 or jumps.shape[1] <= max_lag:
        raise ValueError(f"jumps must be [num_chains, R, ...] with R > max_lag = {max_lag}; got {tuple(jumps.shape)}.")
    x = jumps.flatten(2).double()
    x = x - x.mean(dim=1, keepdim=True)
    denom = x.pow(2).sum(dim=(1, 2))
    return [float(((x[:, :-k] * x[:, k:]).sum(dim=(1, 2)) / denom).mean()) for k in range(1, max_lag + 1)]
