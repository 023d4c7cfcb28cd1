"""Small tensor helpers that every layer shares: a model's dtype and device, seeded draws.

Random draws follow one rule so that a seed gives the same numbers on every code path: values are
drawn on the generator's device (the CPU for a CPU generator) and then moved to ``device``. With
``generator=None`` they are drawn on ``device`` from torch's global generator.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def model_dtype(model: nn.Module, default: torch.dtype | None = None) -> torch.dtype:
    """The floating dtype of a model: that of its first floating parameter, else of its first
    floating buffer, else ``default`` (torch's default dtype when None)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return default if default is not None else torch.get_default_dtype()


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (the CPU for a model without any)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _draw(fn, shape: Sequence[int], generator: torch.Generator | None, dtype: torch.dtype | None,
          device: torch.device | str | None) -> Tensor:
    shape = tuple(int(s) for s in shape)
    source = generator.device if generator is not None else device
    out = fn(shape, generator=generator, dtype=dtype or torch.get_default_dtype(), device=source)
    return out if device is None else out.to(device)


def randn(shape: Sequence[int], generator: torch.Generator | None = None, *,
          dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Tensor:
    """Standard normal draws of ``shape`` (see the module docstring for the device rule)."""
    return _draw(torch.randn, shape, generator, dtype, device)


def rand(shape: Sequence[int], generator: torch.Generator | None = None, *,
         dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Tensor:
    """U[0, 1) draws of ``shape`` (see the module docstring for the device rule)."""
    return _draw(torch.rand, shape, generator, dtype, device)


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal draws shaped like ``x``, with its dtype, on its device."""
    return randn(x.shape, generator, dtype=x.dtype, device=x.device)


def rand_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """U[0, 1) draws shaped like ``x``, with its dtype, on its device."""
    return rand(x.shape, generator, dtype=x.dtype, device=x.device)


def expand_as_batch(v: Tensor, x: Tensor) -> Tensor:
    """Reshape per-example values ``[B]`` to ``[B, 1, ..., 1]`` so that they broadcast against x."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def map_in_batches(fn, x: Tensor, batch_size: int) -> Tensor:
    """``torch.cat([fn(chunk) for chunk in x.split(batch_size)])`` without autograd graphs.

    Args:
        fn: ``[b, ...] -> [b, ...]``.
        x: ``[N, ...]`` inputs.
        batch_size: chunk size b (>= 1).
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    with torch.no_grad():
        return torch.cat([fn(chunk) for chunk in x.split(int(batch_size))])
