"""Denoising: AR-CSM's single-step denoiser and per-example errors (MSE, PSNR)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from hybrids.tensors import map_in_batches

__all__ = ["mse", "psnr", "single_step_denoise"]


def single_step_denoise(model: nn.Module, y: Tensor, sigma: float, batch_size: int = 64) -> Tensor:
    """xhat_d = y_d + sigma^2 s_d(y): single-step denoising with an autoregressive score model.

    Tweedie's formula E[x | y] = y + sigma^2 grad_y log p_sigma(y) needs the joint score of the
    noisy data; an AR conditional score model supplies only the diagonal terms
    s_d = d/dy_d log p_sigma(y_d | y_<d) (the terms d/dy_d log p_sigma(y_j | y_<j), j > d, are
    dropped), so this approximates Tweedie's formula and is exact when the noisy coordinates are
    independent (Meng, Yu, Song, Song and Ermon, "Autoregressive Score Matching", NeurIPS 2020).

    Args:
        model: AR conditional score model (``conditional_scores(x, None)``) trained on data
            perturbed with N(0, sigma^2).
        y: ``[B, ...]`` noisy inputs.
        sigma: the noise std (model space).
        batch_size: evaluation batch size.

    Returns:
        Denoised ``[B, ...]``.
    """
    return y + sigma**2 * map_in_batches(lambda chunk: model.conditional_scores(chunk, None)[0], y, batch_size)


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
