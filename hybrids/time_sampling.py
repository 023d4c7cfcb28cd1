"""Draws of diffusion times: U[eps, T] and importance sampling of q(t) ~ g(t)^2 / sigma_t^2.

Every objective and likelihood tool that integrates over t draws its times here.

Importance sampling (Song, Durkan, Murray and Ermon, "Maximum Likelihood Training of Score-Based
Diffusion Models", NeurIPS 2021, section 5): draw t ~ q(t) proportional to g(t)^2 / sigma_t^2 on
[eps, T] and weight each term by lambda(t) / q(t). With lambda = g^2 the weight is
lambda / q = Z sigma_t^2, Z = int_eps^T g^2 / sigma^2 dt. Antiderivatives F(t) of g^2 / sigma^2:

* VP:    F(t) = log(exp(B(t)) - 1)                (g^2 = beta, sigma^2 = 1 - e^{-B});
* subVP: F(t) = 2 log(exp(B(t)) - 1) - B(t)      (g^2 = beta (1 - e^{-2B}), sigma = 1 - e^{-B});
* VE:    g^2 / sigma^2 = 2 log(sigma_max / sigma_min), a constant, so q is uniform.

Both closed forms are inverted exactly: VP gives B = softplus(F); subVP gives, with c = e^F,
(e^B - 1)^2 / e^B = c, a quadratic in w = e^B whose root w > 1 is e^B - 1 = (c + sqrt(c^2 + 4c)) / 2;
then t = B^{-1}(B) (``VPSDE.t_for_integral_beta``). Any other SDE uses a tabulated inverse CDF
(trapezoid rule on a geometric grid in t, linear interpolation), tested against both closed forms.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from hybrids.sdes import SDE, SubVPSDE, VESDE, VPSDE
from hybrids.tensors import rand

_TABLE_POINTS = 20_001


def check_eps(sde: SDE, eps: float) -> None:
    """Raise ``ValueError`` unless 0 < eps < T (the smallest time of an integral over t)."""
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T = {sde.T}); got {eps}.")


def uniform_times(
    batch_size: int,
    eps: float,
    t_max: float,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """t ~ U[eps, t_max], ``[B]``: t = eps + (t_max - eps) u with u drawn on the generator's device.

    Args:
        batch_size: B.
        eps: lower end.
        t_max: upper end (> eps).
        generator: random source of u.
        dtype, device: of the result.
    """
    if not t_max > eps:
        raise ValueError(f"the time interval [eps, t_max] = [{eps}, {t_max}] is empty.")
    u = rand((batch_size,), generator, dtype=dtype, device=device)
    return eps + (t_max - eps) * u


def importance_density(sde: SDE, t: Tensor) -> Tensor:
    """Unnormalised proposal density g(t)^2 / sigma_t^2, ``[B]``."""
    return sde.diffusion(t) ** 2 / sde.marginal_coefs(t).std ** 2


def _vp_cumulative(sde: VPSDE, t: Tensor) -> Tensor:
    return torch.log(torch.expm1(sde.integral_beta(t)))


def _vp_inverse(sde: VPSDE, f: Tensor) -> Tensor:
    return sde.t_for_integral_beta(torch.nn.functional.softplus(f))


def _subvp_cumulative(sde: SubVPSDE, t: Tensor) -> Tensor:
    b = sde.integral_beta(t)
    return 2 * torch.log(torch.expm1(b)) - b


def _subvp_inverse(sde: SubVPSDE, f: Tensor) -> Tensor:
    c = torch.exp(f)
    b = torch.log1p(0.5 * (c + torch.sqrt(c * (c + 4))))
    return sde.t_for_integral_beta(b)


def _ve_cumulative(sde: VESDE, t: Tensor) -> Tensor:
    return 2 * math.log(sde.sigma_max / sde.sigma_min) * t


def _ve_inverse(sde: VESDE, f: Tensor) -> Tensor:
    return f / (2 * math.log(sde.sigma_max / sde.sigma_min))


# Explicit lookup by exact type (a subclass with another schedule falls back to the table).
CLOSED_FORMS: dict[type, tuple[Callable, Callable]] = {
    VPSDE: (_vp_cumulative, _vp_inverse),
    SubVPSDE: (_subvp_cumulative, _subvp_inverse),
    VESDE: (_ve_cumulative, _ve_inverse),
}


def cumulative_importance(sde: SDE, t: Tensor) -> Tensor:
    """Closed-form antiderivative F(t) of g^2 / sigma^2 (VP, subVP, VE), ``[B]`` (float64 advised).

    Raises:
        ValueError: for an SDE type without a closed form (use ``tabulated_inverse_cdf``).
    """
    if type(sde) not in CLOSED_FORMS:
        raise ValueError(
            f"No closed-form antiderivative of g^2/sigma^2 for {type(sde).__name__}; those exist for "
            f"{[c.__name__ for c in CLOSED_FORMS]}. Use tabulated_inverse_cdf for other SDEs."
        )
    return CLOSED_FORMS[type(sde)][0](sde, t)


def _check_interval(sde: SDE, eps: float, t_max: float | None) -> float:
    """``t_max`` (default T) after checking 0 < eps < t_max <= T."""
    check_eps(sde, eps)
    t_max = sde.T if t_max is None else float(t_max)
    if not eps < t_max <= sde.T:
        raise ValueError(f"t_max must lie in (eps, T] = ({eps}, {sde.T}]; got {t_max}.")
    return t_max


def _table(sde: SDE, eps: float, num_points: int, t_max: float) -> tuple[Tensor, Tensor]:
    """Grid t_i (geometric on [eps, t_max]) and the cumulative integral C_i of g^2/sigma^2, float64.

    The integrand is written in s = log t, where t g^2 / sigma^2 is smooth (about 1 near t = 0
    for VP), and integrated with the trapezoid rule.
    """
    s = torch.linspace(math.log(eps), math.log(t_max), num_points, dtype=torch.float64)
    t = torch.exp(s)
    t[0], t[-1] = eps, t_max
    h = t * importance_density(sde, t)
    steps = 0.5 * (h[1:] + h[:-1]) * (s[1:] - s[:-1])
    return t, torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(steps, 0)])


def importance_normalizer(sde: SDE, eps: float, *, tabulated: bool = False, t_max: float | None = None) -> float:
    """Z = int_eps^t_max g(t)^2 / sigma_t^2 dt, t_max = T by default (closed form where known, else
    tabulated).

    docs/methods.md quotes Z_VP = 23.8645 (eps 1e-5), 19.1654 (1e-3); Z_subVP = 37.6789, 28.2809.
    """
    t_max = _check_interval(sde, eps, t_max)
    if not tabulated and type(sde) in CLOSED_FORMS:
        ends = torch.tensor([eps, t_max], dtype=torch.float64)
        f = cumulative_importance(sde, ends)
        return float(f[1] - f[0])
    return float(_table(sde, eps, _TABLE_POINTS, t_max)[1][-1])


def tabulated_inverse_cdf(sde: SDE, eps: float, u: Tensor, *, num_points: int = _TABLE_POINTS,
                          t_max: float | None = None) -> Tensor:
    """Inverse CDF of q(t) proportional to g^2/sigma^2 on [eps, t_max] (default T), from a fine table.

    Args:
        sde: any SDE.
        eps: lower end of the time interval.
        u: uniforms in [0, 1], any shape.
        num_points: grid size.
        t_max: upper end of the time interval (default T).

    Returns:
        t with the shape of ``u``, float64.
    """
    t_grid, cum = _table(sde, eps, num_points, _check_interval(sde, eps, t_max))
    target = u.to(torch.float64) * cum[-1]
    idx = torch.searchsorted(cum, target.reshape(-1)).clamp(1, num_points - 1)
    lo, hi = cum[idx - 1], cum[idx]
    frac = ((target.reshape(-1) - lo) / (hi - lo)).clamp(0, 1)
    # Interpolate in log t, the variable of the (smooth) table.
    log_t = torch.log(t_grid[idx - 1]) + frac * (torch.log(t_grid[idx]) - torch.log(t_grid[idx - 1]))
    return torch.exp(log_t).reshape(u.shape)


def closed_form_inverse_cdf(sde: SDE, eps: float, u: Tensor, *, t_max: float | None = None) -> Tensor:
    """Exact inverse CDF of q(t) on [eps, t_max] (default T) for VP, subVP and VE (see the module
    docstring), float64."""
    t_max = _check_interval(sde, eps, t_max)
    cumulative, inverse = CLOSED_FORMS[type(sde)]
    ends = cumulative(sde, torch.tensor([eps, t_max], dtype=torch.float64))
    f = ends[0] + u.to(torch.float64) * (ends[1] - ends[0])
    return inverse(sde, f).clamp(eps, t_max)


def importance_sample_t(
    sde: SDE,
    shape: Sequence[int] | int,
    eps: float,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    tabulated: bool = False,
    t_max: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw t ~ q(t) proportional to g(t)^2 / sigma_t^2 on [eps, t_max] (default T) with its weight lambda/q.

    Args:
        sde: the forward SDE.
        shape: shape of the draw (e.g. ``[B]``).
        eps: lower end of the time interval.
        generator: random source of the uniforms.
        dtype, device: of the outputs (default dtype: torch's default).
        tabulated: force the tabulated inverse CDF even where a closed form exists.
        t_max: upper end of the time interval (default T; e.g. a bound closed at t_max).

    Returns:
        ``(t, weight)``, each ``shape``, with weight = lambda(t) / q(t) = Z sigma_t^2 for
        lambda = g^2, so that E_q[weight * h(t)] = int_eps^t_max g(t)^2 h(t) dt exactly for any h
        (the likelihood-weighted time integral; divide by g^2 to integrate h itself).
    """
    t_max = _check_interval(sde, eps, t_max)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dtype = dtype or torch.get_default_dtype()
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=gen_device).cpu()
    if tabulated or type(sde) not in CLOSED_FORMS:
        t = tabulated_inverse_cdf(sde, eps, u, t_max=t_max)
    else:
        t = closed_form_inverse_cdf(sde, eps, u, t_max=t_max)
    z = importance_normalizer(sde, eps, tabulated=tabulated, t_max=t_max)
    weight = z * sde.marginal_coefs(t).std ** 2
    return t.to(dtype=dtype, device=device), weight.to(dtype=dtype, device=device)
