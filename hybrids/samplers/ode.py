"""Probability-flow ODE sampler: integrate dx/dt = f - g^2 s / 2 from T (or any t_start) down to eps.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon and Poole, "Score-Based Generative Modeling through
Stochastic Differential Equations", ICLR 2021.

x_T ~ pi (the SDE's prior), or draws of p_(t_start) for t_start < T (the second half of NCML's
hybrid sampler), are mapped deterministically to x_eps with an adaptive torchdiffeq solver
(RK45/dopri5 as in score_sde); the number of score evaluations is returned with the samples.
EDM's fixed-step Heun sampler of the same ODE is ``hybrids.samplers.heun``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torchdiffeq import odeint

from hybrids.likelihood.ode import ADAPTIVE_METHODS, check_solver_time, solver_errors
from hybrids.models.base import as_score_fn
from hybrids.sdes import SDE
from hybrids.tensors import expand_as_batch
from hybrids.time_sampling import check_eps


@dataclass
class ODESample:
    """Samples ``[B, ...]`` (at time eps, or denoised) and ``nfe``, the number of score evaluations (ODE
    right-hand-side evaluations, plus one for a final denoising step)."""

    samples: Tensor
    nfe: int


def check_tolerances(rtol: float, atol: float) -> None:
    """Raise ``ValueError`` unless the adaptive solver's ``rtol`` and ``atol`` are finite numbers > 0."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} of the adaptive ODE solver must be a finite number > 0; got {value!r}.")


def ode_start(sde: SDE, caller: str, shape: Sequence[int] | None, x_init: Tensor | None, t_start: float | None,
              eps: float, generator: torch.Generator | None, dtype: torch.dtype,
              device: torch.device | str | None) -> tuple[Tensor, float]:
    """The checked start of a probability-flow ODE sampler: ``(x_init, t_start)``.

    ``t_start`` defaults to T and must lie in (eps, T]; without ``x_init`` the start is a draw of
    the SDE's prior of ``shape`` (on the generator's device, then moved), which is p_T only: below T
    the caller must give draws of p_(t_start).
    """
    check_eps(sde, eps)
    t_start = float(sde.T if t_start is None else t_start)
    if not eps < t_start <= sde.T:
        raise ValueError(f"t_start must lie in (eps = {eps}, T = {sde.T}]; got {t_start}.")
    if x_init is None:
        if t_start < sde.T:
            raise ValueError(f"{caller} starts from prior draws at T only; give x_init, draws of p_t at "
                             f"t_start = {t_start}.")
        if shape is None:
            raise ValueError("Give the sample shape [B, ...] or x_init.")
        gen_device = generator.device if generator is not None else device
        x_init = sde.prior_sample(shape, generator, dtype=dtype, device=gen_device).to(device)
    return x_init, t_start


def ode_sample(
    score_fn,
    sde: SDE,
    shape: Sequence[int] | None = None,
    *,
    x_init: Tensor | None = None,
    t_start: float | None = None,
    eps: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    denoise: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> ODESample:
    """Sample by solving the probability-flow ODE backwards from T (or ``t_start``) to ``eps``.

    Args:
        score_fn: s(x, t) with ``t`` ``[B]``, or a NoiseConditionalModel.
        sde: the forward SDE.
        shape: ``[B, ...]`` of the samples (ignored when ``x_init`` is given).
        x_init: samples at ``t_start`` to start from (default: prior draws at T, ``sde.prior_sample``).
        t_start: start time in (eps, T] (default T); below T, ``x_init`` must be given.
        eps: end time (score_sde: 1e-3 for VP/subVP, 1e-5 for VE).
        rtol, atol, method: torchdiffeq solver settings.
        denoise: finish with the Tweedie step x + sigma_eps^2 s(x, eps) / m_eps (one more NFE).
        generator: random source of x_T.
        dtype, device: of x_T when drawn here.

    Returns:
        :class:`ODESample`.

    Raises:
        ValueError: a bad ``eps``, ``t_start``, ``rtol`` or ``atol``, no shape, or no ``x_init``
            below T.
        FloatingPointError: the samples are NaN or infinite; the message names the solver
            settings and advises tighter tolerances or a fixed-step method with more steps, and
            checking the score.
    """
    x_init, t_start = ode_start(sde, "ode_sample", shape, x_init, t_start, eps, generator, dtype, device)
    check_tolerances(rtol, atol)
    fn = as_score_fn(score_fn)
    reverse = sde.reverse(fn, probability_flow=True)
    nfe = 0

    def rhs(t: Tensor, x: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        check_solver_time(t, "ode_sample", nfe)
        # The solver's initial-step probe may look outside [eps, t_start], where sigma_t may be undefined.
        return reverse.drift(x, t.to(x.dtype).clamp(eps, t_start).expand(x.shape[0]))

    times = torch.tensor([t_start, eps], dtype=x_init.dtype, device=x_init.device)
    options = {"step_t": times[1:]} if method in ADAPTIVE_METHODS else None
    with torch.no_grad(), solver_errors("ode_sample"):
        x = odeint(rhs, x_init, times, rtol=rtol, atol=atol, method=method, options=options)[-1]
        if denoise:
            t = torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device)
            coefs = sde.marginal_coefs(t)
            x = (x + expand_as_batch(coefs.std, x) ** 2 * fn(x, t)) / expand_as_batch(coefs.mean_coef, x)
            nfe += 1
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    if bool(bad.any()):
        raise FloatingPointError(
            f"ode_sample: the samples at t={eps:g} are NaN or infinite in {int(bad.sum())} of "
            f"{x.shape[0]} rows (method={method!r}, rtol={rtol:g}, atol={atol:g}, {nfe} score "
            f"evaluation(s){', with the denoising step' if denoise else ''}). Use tighter tolerances "
            "(smaller rtol/atol, i.e. smaller steps) or a fixed-step method with more steps, and "
            "check that the score is finite at these times and for these inputs."
        )
    return ODESample(samples=x, nfe=nfe)
