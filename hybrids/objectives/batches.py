"""What every objective does with a batch: find the data tensor, check it, move it to model space.

Batches are a data tensor or a tuple/list whose first item is the data tensor (labels after it).
Integer data are levels k in {0..K-1}; continuous objectives dequantize them uniformly,
x = 2 (k + u) / K - 1 with u ~ U[0, 1) (``hybrids.data.transforms.to_model_space``). Float data
(2-D toys) are used as they are, with ``num_levels=None``. Objectives that perturb the data go on
through ``hybrids.objectives.perturb``.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from hybrids.data import check_levels, to_model_space

__all__ = ["batch_data", "check_data", "to_model_space"]


def batch_data(batch: Any) -> Tensor:
    """The data tensor of a batch: the batch itself or the first item of a tuple/list."""
    data = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(data, Tensor):
        raise TypeError(f"batch must be a Tensor or a tuple/list whose first item is one; got {type(data).__name__}.")
    if data.ndim < 2:
        raise ValueError(f"data must have a batch dimension first, [B, ...]; got shape {tuple(data.shape)}.")
    return data


def check_data(data: Tensor, num_levels: int | None) -> None:
    """Integer levels in {0..K-1} when ``num_levels`` is set, floating data when it is None.

    Raises:
        TypeError: integer data with ``num_levels=None`` or float data with a K.
        ValueError: integer levels outside {0..K-1}.
    """
    if num_levels is not None and not data.is_floating_point():
        check_levels(data, num_levels)
    else:
        to_model_space(data, num_levels)  # raises the dtype errors; returns float data unchanged
