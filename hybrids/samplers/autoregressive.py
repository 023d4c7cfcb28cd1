"""Ancestral (pixel-by-pixel) sampling of autoregressive logistic-mixture models.

The model is an :class:`hybrids.models.base.AncestralMixtureModel` (PixelCNN++: Salimans,
Karpathy, Chen and Kingma, "PixelCNN++", ICLR 2017; NCPN: "Noise-conditional Maximum Likelihood
Estimation with Score-based Sampling", NeurIPS 2022 Workshop on Score-Based Methods): it maps
``model(x, t) -> params [B, P, H, W]`` (x in model space, unsampled pixels hold a placeholder)
and the mixture parameters of pixel j depend on the pixels before j in raster order only. Pixels
are drawn in raster order; the channels of a pixel are drawn jointly by the mixture sampler
(channel coupling R -> G -> B).

* t None or 0: discrete levels k ~ P_theta(k | k_<j)
  (``sample_discretized_logistic_mixture_pixel``), fed back as level values c_k = 2k/(K-1) - 1
  (``hybrids.data.level_values``, what ``discrete_log_prob`` conditions on);
* t > 0: continuous values x ~ p_theta(x | x_<j, t) (``sample_logistic_mixture_pixel``).

Random draws: each pixel draws only its own randomness, from one stream: for pixel j (raster
order) the per-pixel mixture samplers (``sample_discretized_logistic_mixture_pixel``,
``sample_logistic_mixture_pixel`` in ``hybrids.distributions``) draw ``u_mix [B]`` then
``u_logistic [B, C]`` from the generator, on the params of pixel j only. Both methods make these
draws in the same order, so for the same generator they draw the same uniforms, and the generator
ends H W (B + B C) uniforms past its start.

Methods:

* ``naive``: one full forward pass per pixel (D passes), the reference.
* ``fast``: the same draws, computing only what each pixel needs:
  (1) incremental evaluation, for models whose ``incremental_cache()`` returns a cache
  (:class:`hybrids.models.base.IncrementalCache`). PixelCNN++/NCPN in eval mode return a
  per-pixel cache (``hybrids.models.pixelcnnpp_incremental.IncrementalPixelCNN``, activation
  caching in the style of Fast PixelCNN++: Ramachandran et al., "Fast Generation for
  Convolutional Autoregressive Models", ICLR 2017 workshop, a
  :class:`~hybrids.models.base.PixelIncrementalCache`): every layer keeps the activations its
  later outputs read, and pixel (r, c) computes one position of each full-resolution map of the
  down-right stream (of the half- and quarter-resolution maps when 2 resp. 4 divides r and c)
  and, once per image row, a row of the down-shifted stream. Caches that only offer rows
  (``params(r)``) are asked for row r;
  (2) reuse, for models without a cache: params computed for earlier pixels stay valid as long as
  no input they depend on changed; a sampled value equal to the placeholder it replaces (e.g. a
  background pixel at level 0 with placeholder c_0 = -1) changes nothing, so no pass is run for
  the next pixel (exact for any autoregressive model).
  The cached params equal the full pass up to rounding (float64: ~1e-15). In float32 the cache's
  GEMMs round differently from the full pass's oneDNN convolutions (~1e-6 on the params), so a
  draw that falls within that distance of a bin edge (or of a component boundary) can differ;
  discrete samples were bitwise equal in the tests and in ``benchmarks/ar_sampling.py``
  (docs/benchmarks.md), continuous ones agree to float32 rounding.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from hybrids.data import level_values
from hybrids.distributions import (
    sample_discretized_logistic_mixture_pixel,
    sample_logistic_mixture_pixel,
)
from hybrids.models.base import AncestralMixtureModel, PixelIncrementalCache
from hybrids.tensors import model_device, model_dtype

METHODS = ("fast", "naive")


def _check_args(model: nn.Module, shape: Sequence[int], t, num_levels, method) -> tuple:
    if not isinstance(model, AncestralMixtureModel):
        raise TypeError(
            "ancestral_sample needs an AncestralMixtureModel (hybrids.models.base): "
            "model(x [B, C, H, W], t [B]) -> logistic-mixture params [B, P, H, W], "
            "autoregressive in raster order, with num_levels and incremental_cache(); got "
            f"{type(model).__name__}. Subclass AncestralMixtureModel (PixelCNNpp and NCPN do)."
        )
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {list(METHODS)}.")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape must be [B, C, H, W] with positive sizes; got {shape}.")
    t = 0.0 if t is None else float(t)
    if t < 0:
        raise ValueError(f"t must be >= 0 (0: discrete levels); got {t}.")
    if t == 0.0:
        num_levels = model.num_levels if num_levels is None else num_levels
        if num_levels is None or int(num_levels) < 2:
            raise ValueError(
                "Discrete sampling (t None or 0) needs num_levels >= 2: pass num_levels or use a model "
                f"with a `num_levels` attribute; got {num_levels!r}."
            )
        num_levels = int(num_levels)
    return shape, t, num_levels


@torch.no_grad()
def ancestral_sample(
    model: AncestralMixtureModel,
    shape: Sequence[int],
    *,
    t: float | None = None,
    num_levels: int | None = None,
    generator: torch.Generator | None = None,
    method: str = "fast",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Draw images pixel by pixel in raster order from p_theta(. | t).

    Args:
        model: an :class:`~hybrids.models.base.AncestralMixtureModel`,
            ``model(x [B, C, H, W], t [B]) -> params [B, P, H, W]`` of a logistic mixture,
            autoregressive in raster order. Put it in eval mode first (dropout; ``'fast'`` uses
            ``model.incremental_cache()``, which PixelCNNpp / NCPN offer in eval mode only).
        shape: ``[B, C, H, W]``.
        t: noise level; None or 0 -> discrete levels, > 0 -> continuous values at that level.
        num_levels: K for discrete sampling (default ``model.num_levels``).
        generator: source of all randomness (see the module docstring).
        method: ``'fast'`` or ``'naive'`` (identical draws; see the module docstring).
        device, dtype: of the model input (default: those of the model's parameters).

    Returns:
        ``int64 [B, C, H, W]`` levels (t None or 0) or ``[B, C, H, W]`` values in ``dtype``.

    Raises:
        TypeError: if ``model`` is not an ``AncestralMixtureModel``.
        ValueError: for an unknown method, a shape that is not ``[B, C, H, W]``, t < 0, or
            discrete sampling without a number of levels.
    """
    shape, t, num_levels = _check_args(model, shape, t, num_levels, method)
    if device is None:
        device = model_device(model)
    if dtype is None:
        dtype = model_dtype(model)
    b, c, height, width = shape
    discrete = t == 0.0
    # Placeholder for unsampled pixels: the centre of level 0 (discrete), 0 (continuous).
    x = torch.full(shape, -1.0 if discrete else 0.0, dtype=dtype, device=device)
    levels = torch.zeros(shape, dtype=torch.int64, device=device) if discrete else None
    t_vec = torch.full((b,), t, dtype=dtype, device=device)
    cached = model.incremental_cache() if method == "fast" else None
    if cached is not None:
        cached.reset(x, t_vec)
    per_pixel = isinstance(cached, PixelIncrementalCache)
    full = None  # the last full pass, or the cache's rows (models without a per-pixel cache)
    stale = True  # x changed since the last full pass (models without a cache)
    x_pixels = x.view(b, c, height * width)  # pixel p = (r, col) is x_pixels[:, :, p]
    level_pixels = levels.view(b, c, height * width) if discrete else None
    with parametrize.cached():  # weight-normalised weights: computed once, not per pixel
        for p in range(height * width):
            r, col = divmod(p, width)
            if per_pixel:
                params = cached.pixel_params(r, col)
            else:
                if cached is not None:
                    full = cached.params(r)
                elif method == "naive" or stale:
                    full = model(x, t_vec)
                    stale = False
                params = full[:, :, r, col]
            if discrete:
                k = sample_discretized_logistic_mixture_pixel(params, num_levels, generator,
                                                              num_channels=c)
                new = level_values(k, num_levels, dtype=dtype)
                level_pixels.select(2, p).copy_(k)
            else:
                new = sample_logistic_mixture_pixel(params, generator, num_channels=c)
            old = x_pixels.select(2, p)
            if per_pixel:  # the pixel is final: set it (no need to know whether it changed)
                old.copy_(new)
                cached.set_pixel(r, col, new)
            elif not torch.equal(new, old):
                old.copy_(new)
                stale = True
                if cached is not None:
                    cached.set_pixel(r, col, new)
    return levels if discrete else x
