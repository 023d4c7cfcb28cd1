"""Overdamped Langevin samplers: plain, and per-dimension for AR-CSM.

The per-dimension sampler is that of Meng, Yu, Song, Song and Ermon, "Autoregressive Score
Matching", NeurIPS 2020, for models that implement
:class:`hybrids.models.base.ARConditionalScoreModel`.

Both use the unadjusted Langevin update with step size eps,

    x <- x + eps * s(x) + sqrt(2 eps) z,   z ~ N(0, I),

whose stationary law tends to the target as eps -> 0 (score_sde's convention; NCSN writes the same
update with alpha = 2 eps).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from hybrids.models.base import ARConditionalScoreModel
from hybrids.tensors import model_device, model_dtype, randn, randn_like


def _check_steps(n_steps: int, step_size: float) -> None:
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")


@torch.no_grad()
def langevin_sample(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    n_steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Overdamped Langevin dynamics x <- x + eps s(x) + sqrt(2 eps) z from ``x``.

    Args:
        score_fn: s(x) = grad log p(x), shaped like x (bind t beforehand if needed).
        x: ``[B, ...]`` initial state.
        n_steps: number of updates.
        step_size: eps.
        generator: random source of z (drawn on its device, then moved to x's).

    Returns:
        The final state, like x.
    """
    _check_steps(n_steps, step_size)
    noise_scale = math.sqrt(2.0 * step_size)
    for _ in range(int(n_steps)):
        x = x + step_size * score_fn(x) + noise_scale * randn_like(x, generator)
    return x


@torch.no_grad()
def ar_langevin_sample(
    model: ARConditionalScoreModel,
    shape: Sequence[int],
    *,
    n_steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
    init: Tensor | None = None,
    t: Tensor | None = None,
) -> Tensor:
    """Sample an AR-CSM one dimension at a time with Langevin dynamics on each conditional.

    For d = 1..D in the model's order (``model.to_sequence``/``from_sequence``, e.g. pixel-major
    RGB for PixelCNN++; raster order by default): the context c_d is computed ONCE from the
    current x (only x_<d matters), then ``n_steps`` Langevin updates move x_d with
    s_d = h(x_d, c_d); only the head runs in the inner loop.

    Args:
        model: an :class:`~hybrids.models.base.ARConditionalScoreModel`: it offers
            ``context(x, t) -> [B, D, F]`` (x ``[B, D]``), ``head(x_d, c, t) -> [B, K]``
            (x_d ``[B, K]``, c ``[B, K, F]``) and its variable order.
        shape: ``[B, D]`` or ``[B, C, H, W]`` (any shape ``to_sequence`` accepts) of the
            samples.
        n_steps: Langevin updates per dimension.
        step_size: eps of each update.
        generator: random source of the initial state and the noise.
        init: initial state shaped ``shape`` (default: N(0, I) draws); its x_d is where the
            chain for dimension d starts.
        t: ``[B]`` times for a noise-conditional model, else None.

    Returns:
        Samples shaped ``shape`` (``model.from_sequence(x_seq, shape)``) in the model's dtype.

    Raises:
        TypeError: if ``model`` is not an ``ARConditionalScoreModel``.
        ValueError: for ``n_steps < 1``, ``step_size <= 0`` or an ``init`` of the wrong shape.
    """
    _check_steps(n_steps, step_size)
    if not isinstance(model, ARConditionalScoreModel):
        raise TypeError(
            f"ar_langevin_sample needs an ARConditionalScoreModel (hybrids.models.base), with "
            f"context(x, t), head(x_d, c, t), to_sequence and from_sequence; got "
            f"{type(model).__name__}. Subclass ARConditionalScoreModel (MADEConditionalScore and "
            "PixelCNNConditionalScore do)."
        )
    shape = tuple(int(v) for v in shape)
    dtype, device = model_dtype(model), model_device(model)
    if init is None:
        x = randn(shape, generator, dtype=dtype, device=device)
    else:
        if tuple(init.shape) != shape:
            raise ValueError(f"init has shape {tuple(init.shape)}, expected {shape}")
        x = init.to(dtype=dtype, device=device).clone()
    x = model.to_sequence(x).clone()
    noise_scale = math.sqrt(2.0 * step_size)
    for d in range(x.shape[1]):
        c_d = model.context(x, t)[:, d : d + 1]
        x_d = x[:, d : d + 1]
        for _ in range(int(n_steps)):
            s_d = model.head(x_d, c_d, t)  # before the draw, as the head may use the global RNG
            x_d = x_d + step_size * s_d + noise_scale * randn_like(x_d, generator)
        x[:, d : d + 1] = x_d
    return model.from_sequence(x, shape)
