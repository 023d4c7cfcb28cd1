"""Maps between integer levels and the centred model space, and the pi-perturbation test.

docs/methods.md: integer data k in {0, ..., K-1}; uniform dequantization
x = 2 (k + u) / K - 1 with u ~ U[0, 1)^D, so x lies in [-1, 1). ``quantize`` inverts it.
docs/methods.md: ``perturb_lsb`` is the sanity-test perturbation p_pi of NCML.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_levels", "dequantize", "quantize", "bin_centers", "to_unit_interval", "perturb_lsb"]


def check_levels(k: Tensor, num_levels: int) -> None:
    """Check that ``k`` holds integer levels in {0, ..., num_levels - 1}.

    Raises:
        TypeError: ``k`` is not an integer tensor.
        ValueError: ``num_levels`` < 2, or a value lies outside the range (the message gives the
            range found and the range expected).
    """
    if not isinstance(k, Tensor):
        raise TypeError(f"expected a torch.Tensor of integer levels, got {type(k).__name__}")
    if k.dtype.is_floating_point or k.dtype.is_complex or k.dtype == torch.bool:
        raise TypeError(
            f"expected an integer tensor of levels, got dtype {k.dtype}; convert continuous data "
            "with quantize(x, num_levels) first"
        )
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels must be an int >= 2, got {num_levels!r}")
    if k.numel() == 0:
        return
    lo, hi = int(k.min()), int(k.max())
    if lo < 0 or hi > num_levels - 1:
        raise ValueError(
            f"levels out of range: found values in [{lo}, {hi}], expected [0, {num_levels - 1}] "
            f"for num_levels={num_levels}"
        )


def _uniform_like(k: Tensor, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    """u ~ U[0, 1) with k's shape on k's device, drawn on the generator's device."""
    device = k.device if generator is None else generator.device
    return torch.rand(k.shape, generator=generator, dtype=dtype, device=device).to(k.device)


def dequantize(
    k: Tensor,
    num_levels: int,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniform dequantization into the centred model space.

    x = 2 (k + u) / K - 1, u ~ U[0, 1)^D, so x lies in the bin [2k/K - 1, 2(k+1)/K - 1).

    Args:
        k: integer levels, any shape, values in {0, ..., K-1}.
        num_levels: K.
        generator: ``torch.Generator`` for u (None: global RNG).
        dtype: floating dtype of the result.

    Returns:
        x: like ``k``, dtype ``dtype``, values in [-1, 1).
    """
    check_levels(k, num_levels)
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    u = _uniform_like(k, generator, dtype)
    return 2.0 * (k.to(dtype) + u) / num_levels - 1.0


def quantize(x: Tensor, num_levels: int) -> Tensor:
    """Inverse of :func:`dequantize`: k = clamp(floor((x + 1) K / 2), 0, K - 1).

    Args:
        x: floating tensor, any shape (values outside [-1, 1] are clamped to the end levels).
        num_levels: K.

    Returns:
        int64 levels like ``x``.

    Raises:
        TypeError: ``x`` is not a floating tensor.
        ValueError: ``num_levels`` is not an int >= 2, or ``x`` holds NaN or infinite values
            (which have no level; casting them would give arbitrary integers).
    """
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"quantize expects a floating tensor, got {getattr(x, 'dtype', type(x))}")
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels must be an int >= 2, got {num_levels!r}")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        raise ValueError(
            f"quantize got {int((~finite).sum())} NaN or infinite values of {x.numel()}; they have no "
            "level. Find where they come from (a diverged sampler, a NaN in the model) first."
        )
    k = torch.floor((x + 1.0) * num_levels / 2.0)
    return k.clamp(0, num_levels - 1).to(torch.int64)


def bin_centers(k: Tensor, num_levels: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Deterministic centred values of levels: x = (2k + 1) / K - 1 (the middle of each bin)."""
    check_levels(k, num_levels)
    return (2.0 * k.to(dtype) + 1.0) / num_levels - 1.0


def level_values(k: Tensor, num_levels: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """The grid value of each level, c_k = 2 k / (K - 1) - 1 (from -1 at k = 0 to 1 at k = K - 1).

    This is where discretized logistic mixtures (PixelCNN++, MADE with a mixture head) put level k,
    and what an autoregressive model conditions on after drawing k (not the dequantization bin
    centre of :func:`bin_centers`).
    """
    if isinstance(num_levels, bool) or int(num_levels) != num_levels or num_levels < 2:
        raise ValueError(f"num_levels must be an int >= 2, got {num_levels!r}")
    return 2.0 * k.to(dtype) / (num_levels - 1) - 1.0


def to_model_space(data: Tensor, num_levels: int | None, generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Integer levels -> uniformly dequantized x in [-1, 1] (:func:`dequantize`); float data
    (2-D toys, ``num_levels=None``) are returned as they are.

    Raises:
        TypeError: if integer data come with ``num_levels=None`` or float data with a K.
        ValueError: integer levels outside {0..K-1}.
    """
    if num_levels is None:
        if not data.is_floating_point():
            raise TypeError(
                f"num_levels=None means continuous data, but the data have dtype {data.dtype}; "
                "set num_levels to the dataset's number of levels for integer data."
            )
        return data
    if data.is_floating_point():
        raise TypeError(
            f"num_levels={num_levels} expects integer levels, but the data have dtype {data.dtype}; "
            "set num_levels=None for continuous data."
        )
    return dequantize(data, num_levels, generator, dtype=dtype)


def to_unit_interval(x: Tensor) -> Tensor:
    """Map centred data [-1, 1] to [0, 1]: y = (x + 1) / 2."""
    return (x + 1.0) / 2.0


def perturb_lsb(
    k: Tensor,
    pi: float,
    num_levels: int = 256,
    generator: torch.Generator | None = None,
) -> Tensor:
    """NCML's sanity-test perturbation p_pi (docs/methods.md).

    Each dimension independently moves +1 (probability pi/2), -1 (probability pi/2) or stays
    (probability 1 - pi). At the ends the move is reflected (0 -> 1, K-1 -> K-2), so every
    moved value changes by exactly one level and stays in {0, ..., K-1}.

    Args:
        k: integer levels, any shape.
        pi: probability of moving, in [0, 1].
        num_levels: K (>= 2).
        generator: ``torch.Generator`` (None: global RNG).

    Returns:
        Perturbed levels, same shape and dtype as ``k``.
    """
    check_levels(k, num_levels)
    if isinstance(pi, Tensor):
        pi = float(pi)
    if isinstance(pi, bool) or not isinstance(pi, (int, float)) or not 0.0 <= pi <= 1.0:
        raise ValueError(f"pi must be a probability in [0, 1], got {pi!r}")
    r = _uniform_like(k, generator, torch.float64)
    step = torch.where(r < pi / 2.0, 1, torch.where(r < pi, -1, 0))
    moved = k.to(torch.int64) + step  # int64 so that unsigned dtypes cannot wrap around
    moved = torch.where(moved < 0, 1, moved)  # 0 - 1 reflects to 1
    moved = torch.where(moved > num_levels - 1, num_levels - 2, moved)  # K-1 + 1 -> K-2
    return moved.to(k.dtype)
