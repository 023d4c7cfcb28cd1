"""Ancestral (pixel-by-pixel) sampling of autoregressive logistic-mixture models (papers/000, 003).

The model maps ``model(x, t) -> params [B, P, H, W]`` (x in model space, unsampled pixels hold a
placeholder) and the mixture parameters of pixel j depend on the pixels before j in raster order
only. Pixels are drawn in raster order; the channels of a pixel are drawn jointly by the
mixture sampler (channel coupling R -> G -> B).

* t None or 0: discrete levels k ~ P_theta(k | k_<j) (``sample_discretized_logistic_mixture``),
  fed back as bin centres c_k = 2k/(K-1) - 1 (what ``discrete_log_prob`` conditions on);
* t > 0: continuous values x ~ p_theta(x | x_<j, t) (``sample_logistic_mixture``).

Random draws: the mixture samplers draw uniforms for the whole image in a fixed order
(``hybrids.distributions``). Both methods save the generator state once and restore it before
every pixel's draw on full-size params, keeping only that pixel; so the draw of pixel j uses the
same uniforms in both methods, and the generator ends one full-image draw past its start.

Methods:

* ``naive``: one full forward pass per pixel (D passes), the reference.
* ``fast``: the same draws, computing only what each pixel needs:
  (1) reuse: params computed in a pass stay valid for every later pixel as long as no earlier
  pixel's input changed since that pass; a sampled value equal to the placeholder it replaces
  (e.g. a background pixel at level 0 with placeholder c_0 = -1) changes nothing, so no pass is
  run for the next pixel (exact for any autoregressive model);
  (2) row prefix: for PixelCNN++/NCPN, outputs in rows <= r depend on input rows <= r only
  (down-shifted convolutions, causal downsampling, strictly causal attention), so pixel (r, c)
  is computed from the first r + 1 rows only. No padding to a multiple of 4 rows is needed: the
  U-Net's stride-2 stages align rows from the top and its upsampled maps are cropped to the
  matching up-pass sizes, so every prefix length gives the full pass's rows (tested for every
  prefix on odd and even sizes). The attention's position channels come from the full grid.
  Discrete samples agree exactly with ``naive`` (tests); continuous ones agree to rounding,
  because convolutions over fewer rows may sum in a different order.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from hybrids.distributions import sample_discretized_logistic_mixture, sample_logistic_mixture
from hybrids.models.layers import CausalAttention
from hybrids.models.pixelcnnpp import NCPN, PixelCNNpp

METHODS = ("fast", "naive")


@contextlib.contextmanager
def _full_grid_positions(model: nn.Module, height: int, width: int) -> Iterator[None]:
    """Make every CausalAttention of ``model`` use the position channels of the full H x W grid
    (cropped to the rows it is given), so that a row prefix sees the same coordinates."""
    patched = []
    for module in model.modules():
        if isinstance(module, CausalAttention):
            def positions(like: Tensor, _h=height, _w=width) -> Tensor:
                full = CausalAttention.positions(like.new_empty(like.shape[0], 1, _h, _w))
                return full[:, :, : like.shape[2], : like.shape[3]]

            module.positions = positions
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.positions


def _row_prefix_params(model: PixelCNNpp | NCPN, x_rows: Tensor, t: Tensor) -> Tensor:
    """Mixture params of the first rows ``x_rows [B, C, h, W]`` (h <= H) of PixelCNN++ / NCPN.

    Calls the U-Net directly (the models' ``forward`` insists on the full image shape), with the
    same conditioning as their ``forward``: none for PixelCNN++, the noise embedding for NCPN.
    """
    if isinstance(model, NCPN):
        return model.net(x_rows, model.embedding(t))
    return model.net(x_rows)


def _check_args(model: nn.Module, shape: Sequence[int], t, num_levels, method) -> tuple:
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {list(METHODS)}.")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape must be [B, C, H, W] with positive sizes; got {shape}.")
    t = 0.0 if t is None else float(t)
    if t < 0:
        raise ValueError(f"t must be >= 0 (0: discrete levels); got {t}.")
    if t == 0.0:
        num_levels = getattr(model, "num_levels", None) if num_levels is None else num_levels
        if num_levels is None or int(num_levels) < 2:
            raise ValueError(
                "Discrete sampling (t None or 0) needs num_levels >= 2: pass num_levels or use a model "
                f"with a `num_levels` attribute; got {num_levels!r}."
            )
        num_levels = int(num_levels)
    return shape, t, num_levels


@torch.no_grad()
def ancestral_sample(
    model: nn.Module,
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
        model: ``model(x [B, C, H, W], t [B]) -> params [B, P, H, W]`` of a logistic mixture,
            autoregressive in raster order. Put it in eval mode first (dropout).
        shape: ``[B, C, H, W]``.
        t: noise level; None or 0 -> discrete levels, > 0 -> continuous values at that level.
        num_levels: K for discrete sampling (default ``model.num_levels``).
        generator: source of all randomness (see the module docstring).
        method: ``'fast'`` or ``'naive'`` (identical draws; see the module docstring).
        device, dtype: of the model input (default: those of the model's parameters).

    Returns:
        ``int64 [B, C, H, W]`` levels (t None or 0) or ``[B, C, H, W]`` values in ``dtype``.
    """
    shape, t, num_levels = _check_args(model, shape, t, num_levels, method)
    param = next(model.parameters(), None)
    if device is None:
        device = param.device if param is not None else torch.device("cpu")
    if dtype is None:
        dtype = param.dtype if param is not None else torch.get_default_dtype()
    b, c, height, width = shape
    discrete = t == 0.0
    # Placeholder for unsampled pixels: the centre of level 0 (discrete), 0 (continuous).
    x = torch.full(shape, -1.0 if discrete else 0.0, dtype=dtype, device=device)
    levels = torch.zeros(shape, dtype=torch.int64, device=device) if discrete else None
    t_vec = torch.full((b,), t, dtype=dtype, device=device)
    start_state = generator.get_state() if generator is not None else None
    row_prefix = method == "fast" and isinstance(model, (PixelCNNpp, NCPN))
    params = None
    stale = True  # x changed since the last forward pass
    with _full_grid_positions(model, height, width) if row_prefix else contextlib.nullcontext():
        for r in range(height):
            rows = r + 1 if row_prefix else height
            for col in range(width):
                if method == "naive" or stale or params.shape[2] <= r:
                    params = _row_prefix_params(model, x[:, :, :rows], t_vec) if row_prefix else model(x, t_vec)
                    stale = False
                if generator is not None:
                    generator.set_state(start_state)
                full = params if params.shape[2] == height else _pad_rows(params, height)
                if discrete:
                    k = sample_discretized_logistic_mixture(full, num_levels, generator, num_channels=c)
                    k_pix = k[:, :, r, col]
                    new = 2.0 * k_pix.to(dtype) / (num_levels - 1) - 1.0
                    levels[:, :, r, col] = k_pix
                else:
                    new = sample_logistic_mixture(full, generator, num_channels=c)[:, :, r, col]
                if not torch.equal(new, x[:, :, r, col]):
                    x[:, :, r, col] = new
                    stale = True
    return levels if discrete else x


def _pad_rows(params: Tensor, height: int) -> Tensor:
    """Pad ``[B, P, h, W]`` params with zero rows to ``[B, P, height, W]`` (full-size draws)."""
    pad = params.new_zeros(params.shape[0], params.shape[1], height - params.shape[2], params.shape[3])
    return torch.cat([params, pad], dim=2)
