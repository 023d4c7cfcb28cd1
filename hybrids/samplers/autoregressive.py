"""Ancestral (pixel-by-pixel) sampling of autoregressive logistic-mixture models.

The model is an :class:`hybrids.models.base.AncestralMixtureModel` (PixelCNN++: Salimans,
Karpathy, Chen and Kingma, "PixelCNN++", ICLR 2017; NCPN: "Noise-conditional Maximum Likelihood
Estimation with Score-based Sampling", NeurIPS 2022 Workshop on Score-Based Methods): it maps
``model(x, t) -> params [B, P, H, W]`` (x in model space, unsampled pixels hold a placeholder)
and the mixture parameters of pixel j depend on the pixels before j in raster order only. Pixels
are drawn in raster order; the channels of a pixel are drawn jointly by the mixture sampler
(channel coupling R -> G -> B).

* t None or 0: discrete levels k ~ P_theta(k | k_<j) (``sample_discretized_logistic_mixture``),
  fed back as level values c_k = 2k/(K-1) - 1 (``hybrids.data.level_values``, what
  ``discrete_log_prob`` conditions on);
* t > 0: continuous values x ~ p_theta(x | x_<j, t) (``sample_logistic_mixture``).

Random draws: the mixture samplers draw uniforms for the whole image in a fixed order
(``hybrids.distributions``). Both methods save the generator state once and restore it before
every pixel's draw on full-size params, keeping only that pixel; so the draw of pixel j uses the
same uniforms in both methods, and the generator ends one full-image draw past its start.

Methods:

* ``naive``: one full forward pass per pixel (D passes), the reference.
* ``fast``: the same draws, computing only what each pixel needs:
  (1) reuse: params computed for earlier pixels stay valid as long as no input they depend on
  changed; a sampled value equal to the placeholder it replaces (e.g. a background pixel at
  level 0 with placeholder c_0 = -1) changes nothing, so nothing is recomputed for the next
  pixel (exact for any autoregressive model; other models get a full pass whenever an earlier
  pixel changed);
  (2) incremental evaluation, for models whose ``incremental_cache()`` returns a cache
  (:class:`hybrids.models.base.IncrementalCache`). PixelCNN++/NCPN in eval mode return a row
  cache of every intermediate map of the network
  (``hybrids.models.pixelcnnpp_incremental.IncrementalPixelCNN``, activation caching in the
  spirit of Fast PixelCNN++: Ramachandran et al., "Fast Generation for Convolutional
  Autoregressive Models", ICLR 2017 workshop, at row granularity). Outputs in rows
  <= r depend on input rows <= r only, so after a pixel in row r changes, pixel (r, c + 1) needs
  only row r of the full-resolution maps of the down-right ("ul") stream recomputed (plus one
  row of its half- and quarter-resolution maps when r is even / divisible by 4); the
  down-shifted ("u") stream sees rows < r only and is recomputed once per image row. That is
  roughly 1/(2H) of a pass per pixel.
  The cached params equal the full pass up to the rounding of shape-dependent kernels (float64
  convolutions: ~1e-16); in float32 on CPU the band kernels are chosen so that they round like
  the full pass where it allows (in ``benchmarks/ar_sampling.py`` at 28x28: bitwise equal
  discrete samples, continuous ones equal or within 5e-7). Discrete samples agree exactly with
  ``naive`` (tests); continuous ones agree to rounding.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from hybrids.data import level_values
from hybrids.distributions import sample_discretized_logistic_mixture, sample_logistic_mixture
from hybrids.models.base import AncestralMixtureModel
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
    start_state = generator.get_state() if generator is not None else None
    cached = model.incremental_cache() if method == "fast" else None
    if cached is not None:
        cached.reset(x, t_vec)
    params = None
    stale = True  # x changed since params were computed (models without a cache)
    with parametrize.cached():  # weight-normalised weights: computed once, not per pixel
        for r in range(height):
            for col in range(width):
                if cached is not None:
                    params = cached.params(r)
                elif method == "naive" or stale:
                    params = model(x, t_vec)
                    stale = False
                if generator is not None:
                    generator.set_state(start_state)
                if discrete:
                    k = sample_discretized_logistic_mixture(params, num_levels, generator, num_channels=c)
                    k_pix = k[:, :, r, col]
                    new = level_values(k_pix, num_levels, dtype=dtype)
                    levels[:, :, r, col] = k_pix
                else:
                    new = sample_logistic_mixture(params, generator, num_channels=c)[:, :, r, col]
                if not torch.equal(new, x[:, :, r, col]):
                    x[:, :, r, col] = new
                    stale = True
                    if cached is not None:
                        cached.set_pixel(r, col, new)
    return levels if discrete else x
