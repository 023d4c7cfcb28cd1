"""Per-example denoising errors (AR-CSM single-step denoising, walk-jump jumps)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mse", "psnr"]


def _check_pair(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError("mse/psnr expect torch tensors")
    if x.shape != y.shape or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(
            f"x and y need the same shape [B, ...] with B >= 1; got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error per example: mean over all but the batch dimension of (x - y)^2.

    Args:
        x, y: ``[B, ...]``, same shape.

    Returns:
        ``[B]``.
    """
    _check_pair(x, y)
    return (x - y).pow(2).reshape(x.shape[0], -1).mean(dim=1)


def psnr(x: Tensor, y: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio per example, in dB: 10 log10(data_range^2 / mse(x, y)).

    Args:
        x, y: ``[B, ...]``, same shape.
        data_range: peak-to-peak range of the data (2 for the library's [-1, 1] space,
            255 for 8-bit levels).

    Returns:
        ``[B]`` (``inf`` where x and y are equal).
    """
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    return 10.0 * torch.log10(data_range**2 / mse(x, y))
