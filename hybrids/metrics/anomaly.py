"""Out-of-distribution detection: the AUROC of a detector and the OOD image sets it is tested on."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

__all__ = ["OOD_SETS", "auroc", "ood_levels"]

OOD_SETS = ("uniform_noise", "inverted", "flipped")


def ood_levels(name: str, k: Tensor, num_levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Out-of-distribution images made from in-distribution images ``k`` ``[N, C, H, W]``.

    Args:
        name: ``'uniform_noise'`` (i.i.d. uniform levels, drawn with ``generator``), ``'inverted'``
            (K - 1 - k) or ``'flipped'`` (upside down).
        k: int64 levels.
        num_levels: K.
        generator: random source of ``'uniform_noise'``.

    Returns:
        int64 levels shaped like ``k``.
    """
    if name == "uniform_noise":
        device = generator.device if generator is not None else k.device
        return torch.randint(0, num_levels, k.shape, generator=generator, device=device).to(k.device)
    if name == "inverted":
        return num_levels - 1 - k
    if name == "flipped":
        return torch.flip(k, dims=(-2,))
    raise ValueError(f"unknown OOD set {name!r}; choose from {OOD_SETS}")


def _as_scores(scores: np.ndarray | torch.Tensor | list[float], which: str) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{which} must be a non-empty 1-D array of scores, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{which} contains {int((~np.isfinite(arr)).sum())} non-finite scores")
    return arr


def auroc(scores_in, scores_out) -> float:
    """AUROC of separating out-of-distribution from in-distribution examples.

    Convention: a higher score means more anomalous (e.g. a negative log-likelihood or a score
    norm). Out-of-distribution examples are the positive class, so 1.0 means every OOD score
    exceeds every in-distribution score and 0.5 is chance.

    Args:
        scores_in: ``[N_in]`` scores of in-distribution examples.
        scores_out: ``[N_out]`` scores of out-of-distribution examples.

    Returns:
        AUROC in [0, 1] (= P(s_out > s_in) + P(s_out = s_in) / 2).
    """
    s_in = _as_scores(scores_in, "scores_in")
    s_out = _as_scores(scores_out, "scores_out")
    labels = np.concatenate([np.zeros(s_in.size), np.ones(s_out.size)])
    return float(roc_auc_score(labels, np.concatenate([s_in, s_out])))
