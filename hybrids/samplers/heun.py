"""Heun's second-order sampler of the probability-flow ODE, as EDM's deterministic sampler.

Karras, Aittala, Aila and Laine, "Elucidating the Design Space of Diffusion-Based Generative
Models", NeurIPS 2022 (EDM), Algorithm 1, with EDM's time steps; for any SDE with
p_0t(x_t | x_0) = N(m(t) x_0, std(t)^2 I) and any score s(x, t).

Variables. The scaled state y = x / m(t) and the noise level sigma(t) = std(t) / m(t) (increasing
in t) turn the probability-flow ODE dx/dt = f(x, t) - g(t)^2 s(x, t) / 2 into EDM's ODE with
s(t) = 1, sigma(t) = t:

    dy/dsigma = F(y, sigma) = -sigma m(t) s(m(t) y, t),   t = t(sigma),

since f = (m'/m) x and d(sigma^2)/dt = g^2 / m^2. (For VE, m = 1 and sigma = std; for Gaussian
data N(mu, v) the solution is y - mu proportional to sqrt(v + sigma^2) for every SDE.)

Time steps (EDM eq. 5, rho = 7): sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) -
sigma_max^(1/rho)))^rho for i = 0..N-1 with sigma_max = sigma(t_start), sigma_min = sigma(eps),
and sigma_N = 0; t_i = sigma^-1(sigma_i) by bisection.

Steps i = 0..N-2 are Heun's: d = F(y_i, sigma_i), y' = y_i + (sigma_(i+1) - sigma_i) d,
y_(i+1) = y_i + (sigma_(i+1) - sigma_i) (d + F(y', sigma_(i+1))) / 2. The last step, to sigma = 0,
is Euler's, as in EDM: y_N = y + sigma^2 m s(x, t) = (x + std^2 s(x, t)) / m(t) at t = eps, which is
Tweedie's E[x_0 | x_eps] (the final denoising step). Score evaluations: 2 N - 1.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from hybrids.models.base import as_score_fn
from hybrids.samplers.ode import ODESample, ode_start
from hybrids.sdes import SDE

_BISECTION_STEPS = 100  # halvings of [eps, t_start] in float64: to the last bit


def noise_level(sde: SDE, t: Tensor) -> Tensor:
    """EDM's noise level sigma(t) = std(t) / m(t) of ``sde`` at times ``t`` (any shape)."""
    coefs = sde.marginal_coefs(t)
    return coefs.std / coefs.mean_coef


def edm_time_steps(sde: SDE, t_start: float, eps: float, num_steps: int, rho: float = 7.0) -> Tensor:
    """EDM's times t_0 = t_start > ... > t_(N-1) = eps of the N-step sampler, float64 ``[N]``.

    sigma(t_i) = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho with
    sigma_max = sigma(t_start), sigma_min = sigma(eps) (:func:`noise_level`); the step to
    sigma_N = 0 follows them. The t_i solve sigma(t_i) = sigma_i by bisection on [eps, t_start]
    (sigma is increasing); the ends are exact.
    """
    ends = noise_level(sde, torch.tensor([t_start, eps], dtype=torch.float64))
    i = torch.arange(num_steps, dtype=torch.float64) / (num_steps - 1)
    root_max, root_min = ends ** (1.0 / rho)
    sigmas = (root_max + i * (root_min - root_max)) ** rho
    lo = torch.full_like(sigmas, eps)
    hi = torch.full_like(sigmas, t_start)
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        above = noise_level(sde, mid) > sigmas
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    times = (lo + hi) / 2
    times[0], times[-1] = t_start, eps
    return times


def check_heun_settings(num_steps: int, rho: float) -> None:
    """Raise ``ValueError`` unless ``num_steps`` is an integer >= 2 and ``rho`` a finite number > 0."""
    whole = (isinstance(num_steps, (int, float)) and not isinstance(num_steps, bool) and math.isfinite(num_steps)
             and int(num_steps) == num_steps)
    if not whole or num_steps < 2:
        raise ValueError(f"Heun's sampler needs an integer num_steps >= 2 (N - 1 Heun steps from the start to eps, "
                         f"then the Euler step to sigma = 0: 2 N - 1 score evaluations); got {num_steps!r}.")
    if isinstance(rho, bool) or not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho of EDM's time steps must be a finite number > 0 (EDM: 7); got {rho!r}.")


def heun_sample(
    score_fn,
    sde: SDE,
    shape: Sequence[int] | None = None,
    *,
    x_init: Tensor | None = None,
    t_start: float | None = None,
    eps: float = 1e-3,
    num_steps: int = 18,
    rho: float = 7.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> ODESample:
    """Solve the probability-flow ODE from ``t_start`` to eps with EDM's Heun sampler, then denoise.

    Args:
        score_fn: s(x, t) with ``t`` ``[B]``, or a NoiseConditionalModel.
        sde: the forward SDE.
        shape: ``[B, ...]`` of the samples (ignored when ``x_init`` is given).
        x_init: ``[B, ...]`` draws of p_(t_start) (default: prior draws, ``sde.prior_sample``).
        t_start: start time in (eps, T] (default T).
        eps: the last time of the grid, in (0, T) (score_sde: 1e-3 for VP/subVP, 1e-5 for VE).
        num_steps: N >= 2 (EDM's count: N - 1 Heun steps, then the Euler step to sigma = 0).
        rho: EDM's time-step exponent (7).
        generator: random source of the prior draw.
        dtype, device: of the prior draw when drawn here.

    Returns:
        :class:`~hybrids.samplers.ode.ODESample`: the denoised samples E[x_0 | x_eps] ``[B, ...]``
        and ``nfe`` = 2 N - 1 score evaluations.

    Raises:
        ValueError: bad times, ``num_steps`` or ``rho``, or no shape.
        FloatingPointError: the samples are NaN or infinite.
    """
    check_heun_settings(num_steps, rho)
    x_init, t_start = ode_start(sde, "heun_sample", shape, x_init, t_start, eps, generator, dtype, device)
    fn = as_score_fn(score_fn)
    times = edm_time_steps(sde, t_start, float(eps), int(num_steps), float(rho))
    coefs = sde.marginal_coefs(times)
    means, sigmas = coefs.mean_coef.tolist(), (coefs.std / coefs.mean_coef).tolist() + [0.0]
    batch = x_init.shape[0]

    def slope(y: Tensor, i: int) -> Tensor:
        """F(y, sigma_i) = -sigma_i m_i s(m_i y, t_i)."""
        t = torch.full((batch,), float(times[i]), dtype=y.dtype, device=y.device)
        return -sigmas[i] * means[i] * fn(means[i] * y, t)

    with torch.no_grad():
        y = x_init / means[0]
        for i in range(int(num_steps)):
            h = sigmas[i + 1] - sigmas[i]
            d = slope(y, i)
            y_euler = y + h * d
            y = y_euler if i == num_steps - 1 else y + h * (d + slope(y_euler, i + 1)) / 2
    nfe = 2 * int(num_steps) - 1
    bad = ~torch.isfinite(y.reshape(batch, -1)).all(1)
    if bool(bad.any()):
        raise FloatingPointError(
            f"heun_sample: the samples are NaN or infinite in {int(bad.sum())} of {batch} rows (num_steps="
            f"{int(num_steps)}, rho={rho:g}, from t={t_start:g} to {eps:g}, {nfe} score evaluations). Use more "
            "steps, and check that the score is finite at these times and for these inputs.")
    return ODESample(samples=y, nfe=nfe)
