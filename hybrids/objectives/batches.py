"""What every objective does with a batch: find the data tensor, check it, move it to model space.

Batches are a data tensor or a tuple/list whose first item is the data tensor (labels after it).
Integer data are levels k in {0..K-1}; continuous objectives dequantize them uniformly,
x = 2 (k + u) / K - 1 with u ~ U[0, 1) (METHODS.md section 1). Float data (2-D toys) are used as
they are, with ``num_levels=None``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hybrids.data import check_levels, dequantize


def batch_data(batch: Any) -> Tensor:
    """The data tensor of a batch: the batch itself or the first item of a tuple/list."""
    data = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(data, Tensor):
        raise TypeError(f"batch must be a Tensor or a tuple/list whose first item is one; got {type(data).__name__}.")
    if data.ndim < 2:
        raise ValueError(f"data must have a batch dimension first, [B, ...]; got shape {tuple(data.shape)}.")
    return data


def check_data(data: Tensor, num_levels: int | None) -> None:
    """Integer levels in {0..K-1} when ``num_levels`` is set, floating data when it is None."""
    if num_levels is None:
        if not data.is_floating_point():
            raise TypeError(
                f"num_levels=None means continuous data, but the batch has dtype {data.dtype}; "
                "set the objective's num_levels to the dataset's number of levels for integer data."
            )
    else:
        if data.is_floating_point():
            raise TypeError(
                f"num_levels={num_levels} expects integer levels, but the batch has dtype {data.dtype}; "
                "set num_levels=None for continuous data."
            )
        check_levels(data, num_levels)


def to_model_space(data: Tensor, num_levels: int | None, generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Integer levels -> uniformly dequantized x in [-1, 1]; float data returned as they are.

    Raises:
        TypeError: if integer data come with ``num_levels=None`` or float data with a K.
        ValueError: integer levels outside {0..K-1}.
    """
    check_data(data, num_levels)
    if data.is_floating_point():
        return data
    return dequantize(data, num_levels, generator, dtype=dtype)
