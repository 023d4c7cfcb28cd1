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


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of values, e.g. one result over trainings.

    Returns:
        ``(mean, sd)``; ``sd`` is None below 2 values, both are None for no value.
    """
    if not values:
        return None, None
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
    return mean, sd
