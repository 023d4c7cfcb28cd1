"""Denoising hooks for autoregressive score models: single-step denoising errors and pictures.

x = a dequantized test image (or a toy point), y = x + sigma z, xhat = y + sigma^2 s(y)
(``hybrids.metrics.denoising.single_step_denoise``). The model must have been trained at the same
sigma; sigma is in the library's [-1, 1] model space (AR-CSM's MNIST experiment denoises at
sigma = 0.6 "in the rescaled space", which the library reads as this space).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from hybrids.data import ArrayDataset, quantize
from hybrids.hooks.base import evaluator, model_space_examples, sampler
from hybrids.metrics.denoising import mse, psnr, single_step_denoise
from hybrids.tensors import randn_like


def _noisy_pair(model: nn.Module, data: ArrayDataset, num_examples: int | None, sigma: float,
                device: torch.device, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Clean x (model space, on ``device``) and y = x + sigma z."""
    x = model_space_examples(model, data, num_examples, generator).to(device)
    return x, x + sigma * randn_like(x, generator)


@evaluator
def denoise_eval(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    sigma: float = 0.6,
    num_examples: int | None = None,
    batch_size: int | None = None,
) -> dict[str, float]:
    """MSE and PSNR (data range 2, model space [-1, 1]) of noisy and denoised test inputs.

    Returns:
        ``mse_noisy``, ``mse_denoised``, ``psnr_noisy``, ``psnr_denoised`` (means over examples),
        ``sigma`` and ``num_examples``.
    """
    x, y = _noisy_pair(model, data, num_examples, sigma, device, generator)
    xhat = single_step_denoise(model, y, sigma, batch_size)
    return {
        "sigma": float(sigma),
        "num_examples": int(x.shape[0]),
        "mse_noisy": float(mse(y, x).mean()),
        "mse_denoised": float(mse(xhat, x).mean()),
        "psnr_noisy": float(psnr(y, x).mean()),
        "psnr_denoised": float(psnr(xhat, x).mean()),
    }


@sampler
def denoise_images(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    sigma: float = 0.6,
    num_samples: int | None = None,
) -> dict[str, Tensor]:
    """Clean, noisy and denoised test images (int64 levels): the first ``num_samples`` test images.

    Returns:
        ``{'clean': ..., 'noisy': ..., 'denoised': ...}``, each ``[N, C, H, W]``.
    """
    if data.num_levels is None:
        raise ValueError("denoise_images needs image data (integer levels)")
    x, y = _noisy_pair(model, data, num_samples, sigma, device, generator)
    xhat = single_step_denoise(model, y, sigma)
    return {name: quantize(v.float(), data.num_levels).cpu()
            for name, v in (("clean", x), ("noisy", y), ("denoised", xhat))}
