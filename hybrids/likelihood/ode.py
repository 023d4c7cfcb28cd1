"""Exact likelihood of a score model through the probability-flow ODE.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon and Poole, "Score-Based Generative Modeling through
Stochastic Differential Equations", ICLR 2021, and Song, Durkan, Murray and Ermon, "Maximum
Likelihood Training of Score-Based Diffusion Models", NeurIPS 2021.

dx/dt = F(x, t) = f(x, t) - g(t)^2 s(x, t) / 2 is integrated from eps to t_end (default T) with
torchdiffeq together with the divergence integral, and

    log p_eps(x) = log p_T(x_T) + int_eps^T div_x F(x_t, t) dt

(d/dt log p_t(x_t) = -div F along the flow). div F is computed exactly (D backward passes) or by
Skilling-Hutchinson, v^T (dF/dx) v with ONE probe v (Rademacher or Gaussian) fixed for the whole
solve. The prior term uses the SDE's prior pi = N(0, sigma_p^2 I) in place of p_T; with
``terminal_log_prob`` any log-density at t_end closes the integral instead (e.g. a model's own
log p_theta(. | t_end): the score/likelihood consistency of a noise-conditional density model,
zero for a model whose noise levels form one diffusion).

Error norm of the adaptive solver: ``'mixed'`` (default) is torchdiffeq's for tuple states, the
largest of the per-tensor RMS norms of [x] and [log-density]; ``'rms'`` is one root-mean-square
over the whole flattened state, as score_sde's scipy RK45 solve. Measured in
``benchmarks/ode_likelihood.py`` (docs/benchmarks.md): ``'rms'`` takes 0.76-0.93x the
evaluations of ``'mixed'`` at the same tolerances, with 1.1-1.5x its error on Gaussian data and
0.5-1.2x on a trained U-Net; neither is the reference's equal at half its evaluations.

Integration variable (``time_variable``): ``'t'`` (default) integrates [x, log-density] in the SDE's
time. ``'angle'`` integrates in phi = arctan(sigma_t / m_t), the angle whose sine and cosine are the
std and mean coefficient of the variance-preserving process with the same noise-to-signal ratio, with
the state z = x cos(phi) / m_t (that process's x; z = x for VP). Every SDE with these marginals has
the same flow up to this scaling, and with dt/dphi = 2 sigma_t^2 / (g^2 sin phi cos phi) (from
d ln(sigma_t / m_t)/dt = g^2 / (2 sigma_t^2)) and kappa = cos(phi) / m_t,

    dz/dphi = kappa F(z / kappa, t) dt/dphi - (tan phi + f(t) dt/dphi) z,
    d delta/dphi = div_x F(x, t) dt/dphi

(the second is the same integral as in t, by substitution). For Gaussian data the solution in
phi is analytic except near tan(phi) = +-i sqrt(variance), and the large-noise end, where t-steps resolve
a nearly constant x, shrinks to a short interval below pi/2. Measured in
``benchmarks/ode_likelihood.py`` (docs/benchmarks.md), both with the default ``'mixed'`` norm: on
Gaussian data (D = 64 and 784) it lands 1.9-2.1x closer to the exact answer than ``'t'`` at the
same tolerance with 0.76-1.0x the evaluations, and with the ``'rms'`` norm it beats score_sde's solve on both counts (0.73-0.91x
the evaluations, 0.73-0.92x the error); on a briefly trained digits U-Net, whose output is rough
in t (sinusoidal embedding of 1000 t), it takes 1.1-1.2x the evaluations for 0.7-0.8x the error
(with ``'rms'``: 1.1-1.2x the evaluations for 1.3-1.9x the error). So ``'t'`` stays the default.

Solver pair (``method``): dopri5 (the default, score_sde's RK45 pair) suits smooth flows. On a
briefly trained digits U-Net, rough in t, the lower-order ``'bosh3'`` reached a given error with
fewer evaluations down to about 3e-3 nats/dim (0.24-0.76x score_sde's evaluations at its
tolerances 1e-2 to 1e-4), but not on a MNIST U-Net trained 500 updates; ``'dopri8'`` paid on
Gaussian data only at errors below about 5e-6 nats/dim (the tolerance sweep of
``benchmarks/ode_likelihood.py``, docs/benchmarks.md).

With ``eps_correction=True`` the solve starts from x_eps ~ N(m_eps x, s_eps^2 I) and the result
is log p_eps(x_eps) + log r(x | x_eps) + H, a stochastic lower bound on log p_0(x) (the Tweedie
decoder of ``hybrids.likelihood.bound``); the reference code reports the uncorrected form.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor
from torchdiffeq import odeint

from hybrids.likelihood.bound import check_model_space, eps_correction_sample
from hybrids.models.base import as_score_fn
from hybrids.sdes import SDE
from hybrids.tensors import expand_as_batch, randn_like

DIVERGENCES = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")
NORMS = ("rms", "mixed")
TIME_VARIABLES = ("t", "angle")
# Adaptive torchdiffeq solvers accept ``step_t``: their steps then end exactly at the end time
# instead of overshooting it (t < 0 makes sigma_t NaN for VP/subVP in the reverse direction).
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


_SOLVER_ADVICE = (
    "The score returned NaN or infinite values, or the flow is too stiff for the solver: check "
    "that the score is finite for these inputs and times, and try tighter tolerances (smaller "
    "rtol/atol) or a fixed-step method with more steps."
)


def check_solver_time(t: Tensor, caller: str, nfe: int) -> None:
    """Raise ``FloatingPointError`` when the ODE solver hands the right-hand side a NaN time.

    An adaptive solver's time turns NaN after the right-hand side returned NaN or infinite
    values (its error estimate is then NaN); reporting it here names the likely cause instead of
    the SDE's time-range error.
    """
    if bool(torch.isnan(t).any()):
        raise FloatingPointError(f"{caller}: the ODE solver's time became NaN after {nfe - 1} "
                                 f"evaluation(s) of the flow. {_SOLVER_ADVICE}")


@contextlib.contextmanager
def solver_errors(caller: str) -> Iterator[None]:
    """Turn torchdiffeq's 'underflow in dt' and 'non-finite values in state' assertions into a
    ``FloatingPointError`` with advice."""
    try:
        yield
    except AssertionError as err:
        if "underflow in dt" in str(err):
            raise FloatingPointError(f"{caller}: the adaptive ODE solver's step size underflowed ({err}). "
                                     f"{_SOLVER_ADVICE}") from err
        if "non-finite values in state" in str(err):
            raise FloatingPointError(f"{caller}: the ODE state became NaN or infinite during the solve. "
                                     f"{_SOLVER_ADVICE}") from err
        raise


def rms_norm(state: tuple[Tensor, ...]) -> Tensor:
    """sqrt(mean of squares) over every entry of every tensor of ``state``: the error norm of
    scipy's ``solve_ivp`` on the flattened state (score_sde's likelihood solve)."""
    squares = sum(part.pow(2).sum() for part in state)
    return torch.sqrt(squares / sum(part.numel() for part in state))


@dataclass
class ODELikelihood:
    """Result of :func:`ode_log_prob` (nats; ``[B]`` tensors).

    Attributes:
        log_prob: log p(x) = prior_log_prob + delta_log_prob (plus the eps correction if used).
        nfe: number of evaluations of the ODE right-hand side (each one network call).
        prior_log_prob: log pi(x_T), or ``terminal_log_prob(x_{t_end})`` when one was given.
        delta_log_prob: int_eps^{t_end} div F dt.
        z: x_T, the end point of the flow, like x.
    """

    log_prob: Tensor
    nfe: int
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    z: Tensor


def make_probe(x: Tensor, probe: str, generator: torch.Generator | None = None) -> Tensor:
    """Hutchinson probe like ``x``: Rademacher (+-1) or standard Gaussian entries."""
    if probe not in PROBES:
        raise ValueError(f"Unknown probe {probe!r}; choose one of {PROBES}.")
    if probe == "gaussian":
        return randn_like(x, generator)
    device = generator.device if generator is not None else x.device  # drawn there, then moved
    bits = torch.randint(0, 2, x.shape, generator=generator, device=device).to(x.device)
    return (2 * bits - 1).to(x.dtype)


def flow_and_divergence(score_fn, sde: SDE, x: Tensor, t: Tensor, *, probe: Tensor | None,
                        create_graph: bool) -> tuple[Tensor, Tensor]:
    """F(x, t) and div_x F, ``(like x, [B])``; exact when ``probe`` is None, else v^T (dF/dx) v.

    ``x`` must require grad (the caller prepares it); ``create_graph`` keeps the graph of the
    divergence for gradients with respect to the parameters.
    """
    drift = sde.drift(x, t) - 0.5 * expand_as_batch(sde.diffusion(t) ** 2, x) * score_fn(x, t)
    if probe is not None:
        (vjp,) = torch.autograd.grad(drift, x, probe, create_graph=create_graph)
        return drift, (vjp * probe).flatten(1).sum(1)
    flat = drift.flatten(1)
    div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(flat.shape[1]):
        (row,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True, create_graph=create_graph)
        div = div + row.flatten(1)[:, i]
    return drift, div


def _ratio_and_kappa(sde: SDE, t: float) -> tuple[float, float]:
    """(r, kappa) at time ``t``, in float64: r = sigma_t / m_t = tan(phi(t)) and
    kappa = cos(phi) / m_t = 1 / sqrt(m_t^2 + sigma_t^2), the state's scale z = kappa x."""
    coefs = sde.marginal_coefs(torch.tensor(t, dtype=torch.float64))
    return float(coefs.std / coefs.mean_coef), float(torch.rsqrt(coefs.mean_coef**2 + coefs.std**2))


def _angle_coefs(sde: SDE, t: Tensor, ratio: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dt/dphi, kappa, d ln(kappa)/dphi) at the time ``t`` (``[1]``, float64) whose noise-to-signal
    ratio is ``ratio`` = tan(phi), each 0-dim float64, written without phi (whose rounding near pi/2
    would move them): sin(phi) cos(phi) = r / (1 + r^2), so dt/dphi = 2 sigma^2 (1 + r^2) / (g^2 r);
    kappa = cos(phi) / m = 1 / sqrt(m^2 + sigma^2); d ln(kappa)/dphi = -r - f(t) dt/dphi."""
    coefs = sde.marginal_coefs(t)
    dt_dphi = 2 * coefs.std**2 * (1 + ratio**2) / (sde.diffusion(t) ** 2 * ratio)
    kappa = torch.rsqrt(coefs.mean_coef**2 + coefs.std**2)
    linear = -ratio - sde.drift_coef(t) * dt_dphi
    return dt_dphi[0], kappa[0], linear[0]


def ode_log_prob(
    score_fn,
    sde: SDE,
    x: Tensor,
    *,
    divergence: str = "hutchinson",
    probe: str = "rademacher",
    eps: float = 1e-5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    generator: torch.Generator | None = None,
    t_end: float | None = None,
    enable_grad: bool = False,
    eps_correction: bool = False,
    entropy: str = "closed_form",
    norm: str = "mixed",
    terminal_log_prob: Callable[[Tensor], Tensor] | None = None,
    time_variable: str = "t",
) -> ODELikelihood:
    """log p_eps(x) of a score model by the probability-flow ODE (see the module docstring).

    Args:
        score_fn: s(x, t) with ``t`` ``[B]``, or a NoiseConditionalModel.
        sde: the forward SDE (its prior replaces p_T).
        x: data in model space, ``[B, ...]``.
        divergence: ``'hutchinson'`` or ``'exact'`` (D backward passes per evaluation).
        probe: Hutchinson probe, ``'rademacher'`` or ``'gaussian'``, drawn once per solve.
        eps: start time (the NeurIPS 2021 paper: 1e-5; 1e-2 for subVP likelihoods).
        rtol, atol: tolerances of the adaptive solver.
        method: a torchdiffeq method name (``'dopri5'`` = RK45 as in score_sde).
        generator: random source of the probe (and of x_eps).
        t_end: end time of the flow (default T).
        enable_grad: keep the autograd graph so that ``log_prob`` can be back-propagated to the
            score function's parameters (and to ``x``); otherwise the outputs are detached.
        eps_correction: return the corrected lower bound on log p_0(x) (see module docstring).
        entropy: entropy term of the correction (``'closed_form'`` or ``'sample'``).
        norm: error norm of the adaptive solver, ``'rms'`` or ``'mixed'`` (module docstring).
        terminal_log_prob: ``z [B, ...] -> [B]``, the log-density at ``t_end`` that closes the
            integral (default: the SDE's prior, right at t_end = T only).
        time_variable: ``'t'`` or ``'angle'`` (module docstring), the variable the solver steps in.

    Returns:
        :class:`ODELikelihood`.

    Raises:
        TypeError: ``x`` is not floating-point data (e.g. integer levels not yet dequantized).
        ValueError: bad settings, or rows of ``x`` with NaN or infinite values (named by index:
            one such row would make the adaptive solver fail for the whole batch).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {divergence!r}; choose one of {DIVERGENCES}.")
    if norm not in NORMS:
        raise ValueError(f"Unknown error norm {norm!r}; choose one of {NORMS}.")
    if time_variable not in TIME_VARIABLES:
        raise ValueError(f"Unknown time variable {time_variable!r}; choose one of {TIME_VARIABLES}.")
    check_model_space(x, "ode_log_prob")
    t_end = sde.T if t_end is None else float(t_end)
    if not 0 < eps < t_end <= sde.T:
        raise ValueError(f"Need 0 < eps < t_end <= T = {sde.T}; got eps={eps}, t_end={t_end}.")
    fn = as_score_fn(score_fn)
    correction = None
    if eps_correction:
        with torch.set_grad_enabled(enable_grad and torch.is_grad_enabled()):
            x, correction = eps_correction_sample(fn, sde, x, eps, generator, entropy)
    v = make_probe(x, probe, generator) if divergence == "hutchinson" else None
    nfe = 0
    keep_graph = enable_grad

    def flow(t: Tensor, xs: Tensor) -> tuple[Tensor, Tensor]:
        """F(x, t) and div F at the solver's scalar time ``t`` (clamped to [eps, t_end]: the
        initial-step probe may leave it)."""
        with torch.enable_grad():
            if not (keep_graph and xs.requires_grad):
                xs = xs.detach().requires_grad_(True)
            drift, div = flow_and_divergence(fn, sde, xs, t.clamp(eps, t_end).expand(xs.shape[0]), probe=v,
                                             create_graph=keep_graph)
        if not keep_graph:
            drift, div = drift.detach(), div.detach()
        return drift, div

    def rhs_t(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        check_solver_time(t, "ode_log_prob", nfe)
        return flow(t.to(x.dtype), state[0])

    def rhs_angle(phi: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        check_solver_time(phi, "ode_log_prob", nfe)
        # In float64 and clamped to the ends' ratios: in float32, tan of an angle one rounding step
        # from pi/2 can pass sigma(T)/m(T) (the initial-step probe may also leave the interval).
        ratio = torch.tan(phi.to(torch.float64)).clamp(*ratios).reshape(1)
        t = sde.t_for_noise_ratio(ratio).clamp(eps, t_end)
        dt_dphi, kappa, linear = (c.to(x.dtype) for c in _angle_coefs(sde, t, ratio))
        drift, div = flow(t.to(x.dtype), state[0] / kappa)
        return dt_dphi * kappa * drift + linear * state[0], dt_dphi * div

    delta0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    x0 = x if keep_graph else x.detach()
    if time_variable == "t":
        times, rhs, state0 = torch.tensor([eps, t_end], dtype=x.dtype, device=x.device), rhs_t, (x0, delta0)
    else:
        (ratio_eps, kappa_eps), (ratio_end, kappa_end) = (_ratio_and_kappa(sde, time) for time in (eps, t_end))
        ratios = (ratio_eps, ratio_end)
        times, rhs = torch.tensor([math.atan(r) for r in ratios], dtype=x.dtype, device=x.device), rhs_angle
        state0 = (x0 * kappa_eps, delta0)
    with torch.set_grad_enabled(keep_graph), solver_errors("ode_log_prob"):
        options = None
        if method in ADAPTIVE_METHODS:
            options = {"step_t": times[1:], **({"norm": rms_norm} if norm == "rms" else {})}
        xs, delta = odeint(rhs, state0, times, rtol=rtol, atol=atol, method=method, options=options)
    z, delta = xs[-1], delta[-1]
    if time_variable == "angle":
        z = z / kappa_end
    prior = sde.prior_log_prob(z) if terminal_log_prob is None else terminal_log_prob(z)
    log_prob = prior + delta
    if correction is not None:
        log_prob = log_prob + correction
    return ODELikelihood(log_prob=log_prob, nfe=nfe, prior_log_prob=prior, delta_log_prob=delta, z=z)
