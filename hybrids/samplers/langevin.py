"""Overdamped Langevin samplers: plain, and per-dimension for AR-CSM (papers/001).

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


def _check_steps(n_steps: int, step_size: float) -> None:
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device)


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
        generator: random source of z.

    Returns:
        The final state, like x.
    """
    _check_steps(n_steps, step_size)
    noise_scale = math.sqrt(2.0 * step_size)
    for _ in range(int(n_steps)):
        x = x + step_size * score_fn(x) + noise_scale * _noise(x, generator)
    return x


@torch.no_grad()
def ar_langevin_sample(
    model,
    shape: Sequence[int],
    *,
    n_steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
    init: Tensor | None = None,
    t: Tensor | None = None,
) -> Tensor:
    """Sample an AR-CSM one dimension at a time with Langevin dynamics on each conditional.

    For d = 1..D in the model's order (``model.to_sequence``/``from_sequence`` where the model
    defines them, e.g. pixel-major RGB; else ``reshape``, raster order for one channel): the
    context c_d is computed ONCE from the current x (only x_<d matters), then ``n_steps``
    Langevin updates move x_d with s_d = h(x_d, c_d); only the head runs in the inner loop.

    Args:
        model: offers ``context(x, t) -> [B, D, F]`` (x ``[B, D]``) and
            ``head(x_d, c, t) -> [B, K]`` (x_d ``[B, K]``, c ``[B, K, F]``).
        shape: ``[B, D]`` or ``[B, C, H, W]`` of the samples.
        n_steps: Langevin updates per dimension.
        step_size: eps of each update.
        generator: random source of the initial state and the noise.
        init: initial state shaped ``shape`` (default: N(0, I) draws); its x_d is where the
            chain for dimension d starts.
        t: ``[B]`` times for a noise-conditional model, else None.

    Returns:
        Samples shaped ``shape`` in the model's dtype.
    """
    _check_steps(n_steps, step_size)
    if not (hasattr(model, "context") and hasattr(model, "head")):
        raise TypeError(
            f"{type(model).__name__} lacks the context(x, t) / head(x_d, c, t) split that "
            "ar_langevin_sample needs (MADEConditionalScore and PixelCNNConditionalScore offer it)"
        )
    shape = tuple(int(v) for v in shape)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else torch.device("cpu")
    if init is None:
        x = _noise(torch.empty(shape, dtype=dtype, device=device), generator)
    else:
        if tuple(init.shape) != shape:
            raise ValueError(f"init has shape {tuple(init.shape)}, expected {shape}")
        x = init.to(dtype=dtype, device=device).clone()
    to_seq = getattr(model, "to_sequence", lambda v: v.reshape(v.shape[0], -1))
    x = to_seq(x).clone()
    noise_scale = math.sqrt(2.0 * step_size)
    for d in range(x.shape[1]):
        c_d = model.context(x, t)[:, d : d + 1]
        x_d = x[:, d : d + 1]
        for _ in range(int(n_steps)):
            x_d = x_d + step_size * model.head(x_d, c_d, t) + noise_scale * _noise(x_d, generator)
        x[:, d : d + 1] = x_d
    if hasattr(model, "from_sequence") and len(shape) > 2:
        return model.from_sequence(x)
    return x.reshape(shape)
