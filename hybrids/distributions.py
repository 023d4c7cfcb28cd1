"""Discretized and continuous logistic mixtures of PixelCNN++.

Salimans, Karpathy, Chen and Kingma, "PixelCNN++: Improving the PixelCNN with Discretized Logistic
Mixture Likelihood and Other Modifications", ICLR 2017.

Parameter layout
----------------
A mixture of ``n`` logistics over ``C`` channels at every pixel is a tensor
``params: [B, P, H, W]`` with ``P = num_mixture_params(C, n) = n (1 + 2 C + C (C - 1) / 2)``
(``3 n`` for grey images, ``10 n`` for RGB, as PixelCNN++). Along dimension 1, in this order:

==============================  =====================================================
slice of dimension 1            meaning
==============================  =====================================================
``[0, n)``                      mixture logits (log pi = log_softmax of these)
``[n + c n, n + (c + 1) n)``    means mu_{c, i} of channel c, i = 0..n-1
``[n + C n + c n, ... + n)``    log-scales of channel c (clamped below at ``LOG_SCALE_MIN``)
``[n + 2 C n + p n, ... + n)``  raw coupling coefficient p, squashed by tanh
==============================  =====================================================

Coupling coefficients are enumerated by pairs (j, i), i < j, in the order
(1, 0), (2, 0), (2, 1), (3, 0), ...: coefficient p = j (j - 1) / 2 + i couples channel j to the
value of channel i. For RGB this is PixelCNN++'s (G|R), (B|R), (B|G). Given the values x_i of the
earlier channels of the same pixel, channel j of mixture component i has the mean
``mu_{j,i} + sum_{l<j} tanh(a_{(j,l),i}) x_l``. All channels of a pixel share one component:
p(x_pixel) = sum_i pi_i prod_c Logistic(x_c; mu_{c,i}(x_<c), s_{c,i}).

Discrete data k in {0..K-1} sit at bin centres c_k = 2 k / (K - 1) - 1
(``hybrids.data.transforms.level_values``) with half width delta = 1 / (K - 1); the coupling uses
the observed bin centres. The continuous density uses the same parameters on all of R (no edge
bins, no clamping of x) with coupling on the continuous x.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hybrids.data.transforms import level_values
from hybrids.tensors import rand

__all__ = [
    "FALLBACK_MASS",
    "FALLBACK_MAX_HALF_WIDTH",
    "LOG_SCALE_MIN",
    "MixtureParams",
    "discretized_logistic_mixture_log_prob",
    "infer_num_channels",
    "logistic_mixture_log_prob",
    "logistic_mixture_score",
    "num_mixture_params",
    "sample_discretized_logistic_mixture",
    "sample_discretized_logistic_mixture_pixel",
    "sample_logistic_mixture",
    "sample_logistic_mixture_pixel",
    "unpack_mixture_params",
]

LOG_SCALE_MIN = -7.0
"""Lower clamp of the log-scales (PixelCNN++'s value)."""

FALLBACK_MASS = 1e-5
"""Interior bins with a mass below this may use the midpoint rule (see
``discretized_logistic_mixture_log_prob``)."""

FALLBACK_MAX_HALF_WIDTH = 0.05
"""The midpoint rule is used only where delta / s is below this (relative error < 5e-4)."""


def num_mixture_params(num_channels: int, nr_mix: int) -> int:
    """Number P of parameter channels of an ``nr_mix``-component mixture over ``num_channels``.

    Args:
        num_channels: C, channels per pixel (1 grey, 3 RGB).
        nr_mix: n, number of logistic components.

    Returns:
        P = n (1 + 2 C + C (C - 1) / 2).
    """
    if num_channels < 1 or nr_mix < 1:
        raise ValueError(
            f"num_channels and nr_mix must be >= 1; got num_channels={num_channels}, "
            f"nr_mix={nr_mix}."
        )
    return nr_mix * (1 + 2 * num_channels + num_channels * (num_channels - 1) // 2)


def infer_num_channels(num_params: int) -> int:
    """C from P when P fits exactly one C in {1, 3} (grey or RGB images).

    Raises:
        ValueError: if P fits neither or both (P = 30 is 10 grey or 3 RGB components).
    """
    fits = [c for c in (1, 3) if num_params % num_mixture_params(c, 1) == 0]
    if len(fits) != 1:
        raise ValueError(
            f"cannot tell the number of channels from P = {num_params} mixture parameters "
            f"(candidates C in {{1, 3}} that divide it: {fits}); pass num_channels explicitly."
        )
    return fits[0]


@dataclass(frozen=True)
class MixtureParams:
    """Unpacked mixture parameters of one image batch.

    Attributes:
        log_pi: log mixture weights, ``[B, n, H, W]``.
        means: uncoupled means, ``[B, C, n, H, W]``.
        log_scales: clamped log-scales, ``[B, C, n, H, W]``.
        coeffs: tanh-squashed coupling coefficients, ``[B, C (C - 1) / 2, n, H, W]``.
    """

    log_pi: Tensor
    means: Tensor
    log_scales: Tensor
    coeffs: Tensor

    def coupled_means(self, x: Tensor) -> Tensor:
        """Means of every channel given the values ``x: [B, C, H, W]`` of earlier channels.

        Returns:
            ``[B, C, n, H, W]``: mu_{j,i} + sum_{l<j} coeff_{(j,l),i} x_l.
        """
        num_channels = self.means.shape[1]
        means = [self.means[:, 0]]
        for j in range(1, num_channels):
            mean_j = self.means[:, j]
            for i in range(j):
                mean_j = mean_j + self.coeffs[:, _pair_index(j, i)] * x[:, i : i + 1]
            means.append(mean_j)
        return torch.stack(means, dim=1)


def _pair_index(j: int, i: int) -> int:
    """Index of the coefficient coupling channel j to channel i < j."""
    return j * (j - 1) // 2 + i


def unpack_mixture_params(params: Tensor, num_channels: int) -> MixtureParams:
    """Split ``params: [B, P, H, W]`` into its parts (layout in the module docstring).

    Raises:
        ValueError: if ``params`` is not 4-D or P does not fit ``num_channels``.
    """
    if params.ndim != 4:
        raise ValueError(
            f"params must have shape [B, P, H, W]; got shape {tuple(params.shape)}."
        )
    num_params = params.shape[1]
    per_mix = num_mixture_params(num_channels, 1)
    if num_params % per_mix != 0:
        raise ValueError(
            f"params has P = {num_params} channels, not a multiple of {per_mix} = "
            f"1 + 2C + C(C-1)/2 for C = {num_channels} channels; build it with "
            f"num_mixture_params(num_channels, nr_mix)."
        )
    n = num_params // per_mix
    b, _, h, w = params.shape
    c = num_channels
    logits = params[:, :n]
    means = params[:, n : n + c * n].reshape(b, c, n, h, w)
    log_scales = params[:, n + c * n : n + 2 * c * n].reshape(b, c, n, h, w)
    coeffs = torch.tanh(params[:, n + 2 * c * n :]).reshape(b, c * (c - 1) // 2, n, h, w)
    return MixtureParams(
        log_pi=torch.log_softmax(logits, dim=1),
        means=means,
        log_scales=log_scales.clamp(min=LOG_SCALE_MIN),
        coeffs=coeffs,
    )


def _check_data(params: Tensor, x: Tensor, what: str) -> None:
    if x.ndim != 4 or params.ndim != 4 or x.shape[0] != params.shape[0] or (
        x.shape[2:] != params.shape[2:]
    ):
        raise ValueError(
            f"{what} must have shape [B, C, H, W] matching params [B, P, H, W]; got {what} "
            f"{tuple(x.shape)} and params {tuple(params.shape)}."
        )


def _logistic_log_pdf(z: Tensor, log_scale: Tensor) -> Tensor:
    """log of the logistic density at x with z = (x - mu) / s: log sigma(z) + log sigma(-z) - log s.

    (= -z - log s - 2 softplus(-z).) ``F.logsigmoid`` is exact in every dtype (torch's ``F.softplus``
    returns y itself above y = 20, an error of e^-20 ~ 2e-9 that float64 sees), and its first and
    second derivatives, 1 - sigma and -sigma (1 - sigma), stay finite for every z. (logaddexp(-z, 0)
    has a finite value and gradient, but its double backward is inf / inf = NaN once |z| > 88 in
    float32, which DSM through an autograd score reaches.)
    """
    return F.logsigmoid(z) + F.logsigmoid(-z) - log_scale


def _log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(a)) for a < 0, stable on both sides of -log 2 (Maechler 2012)."""
    a = a.clamp(max=-torch.finfo(a.dtype).tiny)
    near_zero = a > -math.log(2.0)
    # each branch sees only inputs where it is finite, so gradients through where stay finite
    a_near = torch.where(near_zero, a, torch.full_like(a, -1.0))
    a_far = torch.where(near_zero, torch.full_like(a, -1.0), a)
    return torch.where(near_zero, torch.log(-torch.expm1(a_near)), torch.log1p(-torch.exp(a_far)))


def _log_bin_mass(z_lo: Tensor, z_hi: Tensor) -> Tensor:
    """log(S(z_hi) - S(z_lo)) for z_lo < z_hi, without cancellation.

    In the right tail the complement is used: S(b) - S(a) = S(-a) - S(-b). Then
    log(S(b) - S(a)) = log S(b) + log(1 - exp(log S(a) - log S(b))).
    """
    flip = (z_lo + z_hi) > 0
    lo = torch.where(flip, -z_hi, z_lo)
    hi = torch.where(flip, -z_lo, z_hi)
    log_s_hi = F.logsigmoid(hi)
    return log_s_hi + _log1mexp(F.logsigmoid(lo) - log_s_hi)


def discretized_logistic_mixture_log_prob(params: Tensor, k: Tensor, num_levels: int) -> Tensor:
    """log P(k) of integer images under the discretized logistic mixture, in nats.

    P(k_c | component i) = S((c_k + delta - mu)/s) - S((c_k - delta - mu)/s), S the sigmoid,
    c_k = 2k/(K-1) - 1, delta = 1/(K-1); bin 0 extends to -inf and bin K-1 to +inf, so the K
    masses sum to one. All channels of a pixel share the component; the means of later channels
    are coupled to the observed bin centres of earlier ones. Computed in log space. Interior bins
    with mass < ``FALLBACK_MASS`` whose half width in standard units delta/s is below
    ``FALLBACK_MAX_HALF_WIDTH`` use PixelCNN++'s fallback log pdf(c_k) + log(2 delta); its
    relative error is below (delta/s)^2 / 6 there. (PixelCNN++ uses it for every small mass; for
    small s that is off by a factor sinh(delta/s) / (delta/s), while the log-space difference
    used here is accurate in both float32 and float64, so the fallback is restricted.)

    Args:
        params: ``[B, P, H, W]`` mixture parameters (layout in the module docstring).
        k: ``[B, C, H, W]`` integer levels in {0..K-1}.
        num_levels: K >= 2.

    Returns:
        ``[B]`` log-probabilities summed over C, H, W.
    """
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2; got {num_levels}.")
    _check_data(params, k, "k")
    if k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
        raise TypeError(f"k must hold integer levels; got dtype {k.dtype}.")
    mix = unpack_mixture_params(params, k.shape[1])
    delta = 1.0 / (num_levels - 1)
    # c_k = 2 delta k - 1 is level_values' grid; this form rounds differently from level_values'
    # 2 k / (K - 1) - 1 in the last bit and is kept so that log-probabilities stay as they were.
    centres = (2.0 * delta * k.to(params.dtype) - 1.0)
    means = mix.coupled_means(centres)  # [B, C, n, H, W]
    x = centres.unsqueeze(2)
    inv_s = torch.exp(-mix.log_scales)
    z_lo = (x - delta - means) * inv_s
    z_hi = (x + delta - means) * inv_s
    log_mid = _log_bin_mass(z_lo, z_hi)
    z_c = (x - means) * inv_s
    log_fallback = _logistic_log_pdf(z_c, mix.log_scales) + math.log(2.0 * delta)
    use_fallback = (log_mid < math.log(FALLBACK_MASS)) & (delta * inv_s < FALLBACK_MAX_HALF_WIDTH)
    log_mid = torch.where(use_fallback, log_fallback, log_mid)
    kk = k.unsqueeze(2)
    log_mass = torch.where(
        kk == 0,
        F.logsigmoid(z_hi),
        torch.where(kk == num_levels - 1, F.logsigmoid(-z_lo), log_mid),
    )
    log_p = torch.logsumexp(mix.log_pi + log_mass.sum(dim=1), dim=1)  # [B, H, W]
    return log_p.flatten(1).sum(dim=1)


def _continuous_terms(params: Tensor, x: Tensor) -> tuple[MixtureParams, Tensor, Tensor]:
    """Unpacked params, z = (x - mu(x_<c)) / s ``[B, C, n, H, W]`` and per-component log joint."""
    _check_data(params, x, "x")
    mix = unpack_mixture_params(params, x.shape[1])
    z = (x.unsqueeze(2) - mix.coupled_means(x)) * torch.exp(-mix.log_scales)
    log_joint = mix.log_pi + _logistic_log_pdf(z, mix.log_scales).sum(dim=1)  # [B, n, H, W]
    return mix, z, log_joint


def logistic_mixture_log_prob(params: Tensor, x: Tensor) -> Tensor:
    """Continuous log-density of the logistic mixture on R^{C x H x W}, in nats.

    log p(x_pixel) = logsumexp_i [log pi_i + sum_c (-z_ci - log s_ci - 2 softplus(-z_ci))],
    z_ci = (x_c - mu_ci - sum_{l<c} coeff_{(c,l),i} x_l) / s_ci, summed over pixels.

    Args:
        params: ``[B, P, H, W]`` mixture parameters.
        x: ``[B, C, H, W]`` real values (not clamped).

    Returns:
        ``[B]`` log-densities.
    """
    _, _, log_joint = _continuous_terms(params, x)
    return torch.logsumexp(log_joint, dim=1).flatten(1).sum(dim=1)


def logistic_mixture_score(params: Tensor, x: Tensor) -> Tensor:
    """d/dx of ``logistic_mixture_log_prob(params, x)`` with ``params`` held fixed, closed form.

    With responsibilities w_i = softmax_i(log joint_i), g_ci = d/dz log pdf = -tanh(z_ci / 2) and
    dz_ji/dx_c = ([j = c] - [c < j] coeff_{(j,c),i}) / s_ji,
    d/dx_c log p = sum_i w_i [g_ci / s_ci - sum_{j>c} coeff_{(j,c),i} g_ji / s_ji].

    Args:
        params: ``[B, P, H, W]`` mixture parameters.
        x: ``[B, C, H, W]``.

    Returns:
        ``[B, C, H, W]`` score.
    """
    mix, z, log_joint = _continuous_terms(params, x)
    w = torch.softmax(log_joint, dim=1)  # [B, n, H, W]
    g = -torch.tanh(0.5 * z) * torch.exp(-mix.log_scales)  # [B, C, n, H, W]
    num_channels = x.shape[1]
    grads = []
    for c in range(num_channels):
        d_c = g[:, c]
        for j in range(c + 1, num_channels):
            d_c = d_c - mix.coeffs[:, _pair_index(j, c)] * g[:, j]
        grads.append((w * d_c).sum(dim=1))
    return torch.stack(grads, dim=1)


def _mixture_noise(
    params: Tensor, num_channels: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Uniforms for sampling, drawn for ALL pixels in one fixed order.

    First ``u_mix: [B, H, W]`` (component choice), then ``u_logistic: [B, C, H, W]`` (inverse
    CDF), both with ``torch.rand`` on ``generator`` in float64 on the params' device. The draws
    depend only on the generator state, B, C, H and W; the per-pixel samplers
    (``sample_logistic_mixture_pixel``, ...) draw those of a 1 x 1 image, ``[B]`` then
    ``[B, C]``. The uniforms are drawn on the generator's device (a CPU generator works with
    CUDA params) and moved to the params' device.
    """
    b, _, h, w = params.shape
    u_mix = rand((b, h, w), generator, dtype=torch.float64, device=params.device)
    u_logistic = rand((b, num_channels, h, w), generator, dtype=torch.float64, device=params.device)
    return u_mix.to(params.dtype), u_logistic


def _select(v: Tensor, idx: Tensor) -> Tensor:
    """Pick component ``idx: [B, H, W]`` from ``v: [B, n, H, W]`` -> ``[B, H, W]``."""
    return torch.gather(v, 1, idx.unsqueeze(1)).squeeze(1)


def _sample(
    params: Tensor, num_channels: int | None, num_levels: int | None, generator
) -> Tensor:
    """Shared sampler: continuous draw (num_levels None) or its bin, coupled channel by channel."""
    if params.ndim != 4:
        raise ValueError(f"params must have shape [B, P, H, W]; got {tuple(params.shape)}.")
    c_num = infer_num_channels(params.shape[1]) if num_channels is None else num_channels
    mix = unpack_mixture_params(params.detach(), c_num)
    u_mix, u_logistic = _mixture_noise(params, c_num, generator)
    cdf = torch.cumsum(torch.exp(mix.log_pi), dim=1)
    n = cdf.shape[1]
    idx = (cdf < u_mix.unsqueeze(1)).sum(dim=1).clamp(max=n - 1)
    eps = torch.finfo(torch.float64).eps
    u = u_logistic.clamp(eps, 1.0 - eps)
    logistic = (torch.log(u) - torch.log1p(-u)).to(params.dtype)
    values, levels = [], []
    for c in range(c_num):
        mean = _select(mix.means[:, c], idx)
        for i in range(c):
            mean = mean + _select(mix.coeffs[:, _pair_index(c, i)], idx) * values[i]
        x_c = mean + torch.exp(_select(mix.log_scales[:, c], idx)) * logistic[:, c]
        if num_levels is not None:
            k_c = torch.floor((x_c + 1.0) * (num_levels - 1) / 2.0 + 0.5)
            k_c = k_c.clamp(0, num_levels - 1)
            levels.append(k_c.to(torch.int64))
            x_c = level_values(k_c, num_levels, dtype=k_c.dtype)  # later channels couple on the centre
        values.append(x_c)
    return torch.stack(levels if num_levels is not None else values, dim=1)


def _sample_pixel(
    params: Tensor, num_channels: int | None, num_levels: int | None, generator
) -> Tensor:
    """``_sample`` of one pixel, params ``[B, P]`` -> ``[B, C]``, with the draws and the
    arithmetic of ``_sample`` on the 1 x 1 image ``params[:, :, None, None]`` (``u_mix [B]``,
    then ``u_logistic [B, C]``) and fewer ops: only the chosen component's parameters are
    unpacked (the elementwise clamp and tanh commute with the selection)."""
    if params.ndim != 2:
        raise ValueError(f"params must have shape [B, P] (one pixel); got {tuple(params.shape)}.")
    b, num_params = params.shape
    c_num = infer_num_channels(num_params) if num_channels is None else num_channels
    per_mix = num_mixture_params(c_num, 1)
    if num_params % per_mix != 0:
        raise ValueError(
            f"params has P = {num_params} channels, not a multiple of {per_mix} = "
            f"1 + 2C + C(C-1)/2 for C = {c_num} channels."
        )
    n = num_params // per_mix
    params = params.detach()
    u_mix = rand((b, 1), generator, dtype=torch.float64, device=params.device).to(params.dtype)
    u_logistic = rand((b, c_num), generator, dtype=torch.float64, device=params.device)
    # The component: log_softmax and cumsum on the 4-D layout, which round like _sample's.
    log_pi = torch.log_softmax(params.narrow(1, 0, n).view(b, n, 1, 1), dim=1)
    cdf = torch.cumsum(torch.exp(log_pi), dim=1).view(b, n)
    idx = (cdf < u_mix).sum(dim=1, keepdim=True).clamp_(max=n - 1)  # [B, 1]
    rows = per_mix - 1
    chosen = params.narrow(1, n, rows * n).reshape(b, rows, n)
    chosen = chosen.gather(2, idx.view(b, 1, 1).expand(b, rows, 1)).view(b, rows)
    means = chosen.narrow(1, 0, c_num)
    scales = torch.exp(chosen.narrow(1, c_num, c_num).clamp(min=LOG_SCALE_MIN))
    eps = torch.finfo(torch.float64).eps
    u = u_logistic.clamp(eps, 1.0 - eps)
    logistic = (torch.log(u) - torch.log1p(-u)).to(params.dtype)
    if c_num == 1:  # no coupling: every channel at once
        x = means + scales * logistic
        if num_levels is None:
            return x
        return _level(x, num_levels).to(torch.int64)
    coeffs = torch.tanh(chosen.narrow(1, 2 * c_num, rows - 2 * c_num))
    values, levels = [], []
    for c in range(c_num):
        mean = means.select(1, c)
        for i in range(c):
            mean = mean + coeffs.select(1, _pair_index(c, i)) * values[i]
        x_c = mean + scales.select(1, c) * logistic.select(1, c)
        if num_levels is not None:
            k_c = _level(x_c, num_levels)
            levels.append(k_c.to(torch.int64))
            x_c = level_values(k_c, num_levels, dtype=k_c.dtype)  # later channels couple on the centre
        values.append(x_c)
    return torch.stack(levels if num_levels is not None else values, dim=1)


def _level(x: Tensor, num_levels: int) -> Tensor:
    """The bin of value x, as ``_sample`` computes it (float)."""
    return torch.floor((x + 1.0) * (num_levels - 1) / 2.0 + 0.5).clamp_(0, num_levels - 1)


def sample_logistic_mixture(
    params: Tensor, generator: torch.Generator | None = None, *, num_channels: int | None = None
) -> Tensor:
    """Draw x ~ p(x) of the continuous mixture at every pixel (pixels independent given params).

    One component per pixel, shared by its channels (inverse CDF of the mixture weights), then
    channel c = mu_c(x_<c) + s_c log(u / (1 - u)), channels in order so that later ones couple on
    the sampled values. Noise is drawn as described in ``_mixture_noise`` (deterministic given
    the generator state and the shape).

    Args:
        params: ``[B, P, H, W]``.
        generator: source of the uniforms.
        num_channels: C; inferred from P when None (P = 30 is ambiguous and needs it).

    Returns:
        ``[B, C, H, W]`` samples in the dtype of ``params``.
    """
    return _sample(params, num_channels, None, generator)


def sample_discretized_logistic_mixture(
    params: Tensor,
    num_levels: int,
    generator: torch.Generator | None = None,
    *,
    num_channels: int | None = None,
) -> Tensor:
    """Draw integer levels k ~ P(k) of the discretized mixture at every pixel.

    As ``sample_logistic_mixture`` with each channel replaced by its bin
    k = clamp(floor((x + 1)(K - 1)/2 + 1/2), 0, K - 1) (nearest centre, edge bins unbounded);
    later channels couple on the centre of the sampled bin (what
    ``discretized_logistic_mixture_log_prob`` conditions on), so the draws follow that pmf
    exactly.

    Args:
        params: ``[B, P, H, W]``.
        num_levels: K >= 2.
        generator: source of the uniforms.
        num_channels: C; inferred from P when None (P = 30 is ambiguous and needs it).

    Returns:
        ``int64 [B, C, H, W]`` levels in {0..K-1}.
    """
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2; got {num_levels}.")
    return _sample(params, num_channels, num_levels, generator)


def sample_logistic_mixture_pixel(
    params: Tensor, generator: torch.Generator | None = None, *, num_channels: int | None = None
) -> Tensor:
    """Draw x ~ p(x) of the continuous mixture at ONE pixel: ``sample_logistic_mixture`` of the
    1 x 1 image ``params[:, :, None, None]`` (same law, same draws for the same generator
    state: ``u_mix [B]`` then ``u_logistic [B, C]``). What ancestral sampling draws per pixel.

    Args:
        params: ``[B, P]`` mixture parameters of the pixel.
        generator: source of the uniforms.
        num_channels: C; inferred from P when None.

    Returns:
        ``[B, C]`` values in the dtype of ``params``.
    """
    return _sample_pixel(params, num_channels, None, generator)


def sample_discretized_logistic_mixture_pixel(
    params: Tensor,
    num_levels: int,
    generator: torch.Generator | None = None,
    *,
    num_channels: int | None = None,
) -> Tensor:
    """Draw levels k ~ P(k) of the discretized mixture at ONE pixel:
    ``sample_discretized_logistic_mixture`` of the 1 x 1 image ``params[:, :, None, None]``
    (same law, same draws for the same generator state).

    Args:
        params: ``[B, P]`` mixture parameters of the pixel.
        num_levels: K >= 2.
        generator: source of the uniforms.
        num_channels: C; inferred from P when None.

    Returns:
        ``int64 [B, C]`` levels in {0..K-1}.
    """
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2; got {num_levels}.")
    return _sample_pixel(params, num_channels, num_levels, generator)
