"""Area under the ROC curve for out-of-distribution detection (AR-CSM, papers/001)."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

__all__ = ["auroc"]


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
