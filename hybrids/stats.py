"""Summary statistics of per-example values, as the tables report them."""
from __future__ import annotations

import math

from torch import Tensor


def mean_ci(values: Tensor) -> dict[str, float]:
    """Mean, standard error and the normal 95% interval mean +- 1.96 se of per-example values.

    Args:
        values: ``[N]`` (any shape; flattened) per-example values.

    Returns:
        ``{'mean', 'se', 'ci95_low', 'ci95_high', 'n'}``; ``se`` is NaN for N = 1.
    """
    values = values.detach().double().cpu().flatten()
    n = values.numel()
    mean = float(values.mean())
    se = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "se": se, "ci95_low": mean - 1.96 * se, "ci95_high": mean + 1.96 * se, "n": n}
