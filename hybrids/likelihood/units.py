"""Unit conversions for likelihoods: nats per example to bits per dimension.

Bits per dimension are reported in discrete pixel space: bpd = -log P(k) / (D ln 2). A continuous
density on dequantized data centred in [-1, 1] (x = 2 (k + u) / K - 1) has
log p_pixel(k + u) = log p_x(x) + D log(2 / K), so
bpd <= -log p_x(x) / (D ln 2) + log2(K / 2)   (the +7 of 8-bit data in [-1, 1]);
for data scaled to [0, 1] (x = (k + u) / K) the offset is log2(K)  (+8 for 8-bit data).
"""
from __future__ import annotations

import math
import numbers

from torch import Tensor


def _check_num_dims(num_dims: int) -> None:
    if isinstance(num_dims, bool) or not isinstance(num_dims, numbers.Integral) or num_dims <= 0:
        raise ValueError(
            f"num_dims must be a positive int (the number of dimensions per example, e.g. "
            f"x[0].numel()); got {num_dims!r}."
        )


def bits_per_dim(nll_nats: Tensor, num_dims: int, num_levels: int = 256, centered: bool = True) -> Tensor:
    """Convert a negative log-likelihood of dequantized data to bits per dimension of the pixels.

    Args:
        nll_nats: -log p_x(x) in nats of the continuous model-space density, ``[B]`` (or any shape).
        num_dims: D, the number of dimensions per example.
        num_levels: K, the number of integer levels per dimension (256 for 8-bit images).
        centered: True when model space is [-1, 1] (x = 2 y - 1), False for [0, 1].

    Returns:
        -log p_pixel / (D ln 2), shaped like ``nll_nats``: nll / (D ln 2) + log2(K/2) (centred)
        or + log2(K) ([0, 1] data).

    Raises:
        ValueError: ``num_dims`` is not a positive int, or ``num_levels`` not an int >= 2
            (continuous data without levels: use :func:`nats_to_bpd`).
    """
    _check_num_dims(num_dims)
    if isinstance(num_levels, bool) or not isinstance(num_levels, numbers.Integral) or num_levels < 2:
        raise ValueError(
            f"num_levels must be an int >= 2 (the number of integer levels per dimension, 256 for "
            f"8-bit images); got {num_levels!r}. For continuous data without levels use nats_to_bpd."
        )
    offset = math.log2(num_levels / 2) if centered else math.log2(num_levels)
    return nats_to_bpd(nll_nats, num_dims) + offset


def nats_to_bpd(nll_nats: Tensor | float, num_dims: int) -> Tensor | float:
    """-log P / (D ln 2): nats per example to bits per dimension, with no dequantization offset.

    The library's one conversion from nats to bits: use it for discrete likelihoods (-log P(k)
    of integer data) and for continuous data reported without an offset (2-D toys).
    """
    _check_num_dims(num_dims)
    return nll_nats / (num_dims * math.log(2))
