"""Denoising-score-matching upper bound on -log p of a score model.

Song, Durkan, Murray and Ermon, "Maximum Likelihood Training of Score-Based Diffusion Models",
NeurIPS 2021, Theorem 3: for data x (taken at time eps) and x_t = m(t) x + sigma_t z,

    -log p(x) <= E[-log pi(x_T)]
                 + 1/2 int_eps^T E_z[ g^2 ||s(x_t, t) + z/sigma_t||^2 - g^2 ||z||^2/sigma_t^2 - 2 div f ] dt,

div f = a(t) D (-beta(t) D / 2 for VP and subVP, 0 for VE). The integrand is evaluated in the
algebraically equal, cancellation-free form g^2 (||s||^2 + 2 s.z / sigma_t) - 2 div f, and
E[-log pi(x_T)] in closed form: D/2 log(2 pi sigma_p^2) + (m_T^2 ||x||^2 + D sigma_T^2) / (2 sigma_p^2).
The time integral is a Monte Carlo average over ``n_times`` draws of t per datapoint, each with
its own z, from U[eps, T] or from the importance sampler q(t) proportional to g^2/sigma^2 of
``hybrids.time_sampling`` (weight 1/q = Z sigma_t^2 / g^2).

Eps correction (the same paper's appendix B, as its reference code applies it). With the
transition kernel p_0t started at the data x, the integral above restricted to [eps, T] (call it bound_eps(x))
bounds E_{x_eps ~ p_0eps(.|x)}[-log p_eps(x_eps)], not -log p_eps(x): the path starts at x at
time 0 and reaches x_eps ~ N(m_eps x, s_eps^2 I) at eps (for exact scores it equals that
expectation). With the Tweedie decoder r(x | x_eps) = N((x_eps + s_eps^2 s(x_eps, eps)) / m_eps,
(s_eps / m_eps)^2 I) and the forward transition as variational posterior (Jensen),

    -log p(x) <= bound_eps(x) - E[log r(x | x_eps)] - H,   H = D/2 log(2 pi e s_eps^2).

So the integral is evaluated at x and only the decoder term at a draw x_eps. (The form
E[bound_eps(x_eps) - log r], which evaluates the kernel-from-0 integral at x_eps, would add the eps
noise twice, loosening the bound by about D m_eps^2 s_eps^2 / (2 Var) nats.)

Closure at t_end < T (``t_end``, ``terminal_log_prob``). The same argument with the horizon t_end
and any density p_end in place of pi bounds the model that draws x_t_end ~ p_end and runs the
reverse SDE of s from t_end to 0 (the continuous-time version of NCML's hybrid sampler, with
p_end the model's own p_theta(. | T_ncml)):

    -log p(x) <= E[-log p_end(x_t_end)] + 1/2 int_eps^t_end E_z[ ... ] dt,

the first term a Monte Carlo average over ``terminal_draws`` draws x_t_end = m x + sigma z per
datapoint, the time integral drawn on [eps, t_end] (importance sampler truncated there).

Gaussian draws follow ``hybrids.tensors``' rule (on the generator's device, then moved to x's).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from hybrids.models.base import as_score_fn
from hybrids.sdes import SDE
from hybrids.tensors import expand_as_batch, randn_like
from hybrids.time_sampling import check_eps, importance_sample_t, uniform_times

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def check_model_space(x: Tensor, caller: str) -> None:
    """Check that ``x`` is finite floating-point data ``[B, ...]`` in model space.

    Args:
        x: the data a likelihood tool was given.
        caller: the tool's name, for the messages.

    Raises:
        TypeError: ``x`` is not a floating-point tensor with a batch dimension (integer levels
            must be dequantized first; the message names the functions that do it).
        ValueError: some rows hold NaN or infinite values (the message lists their indices).
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        found = (f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor)
                 else type(x).__name__)
        raise TypeError(
            f"{caller}: x must be a floating-point tensor [B, ...] in model space, got {found}. "
            "Dequantize integer levels first: hybrids.data.dequantize(k, num_levels) or "
            "hybrids.data.to_model_space(k, num_levels) give x = 2 (k + u) / K - 1."
        )
    bad = ~torch.isfinite(x.detach().flatten(1)).all(1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        shown = ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
        raise ValueError(
            f"{caller}: x has NaN or infinite values in {len(rows)} of {x.shape[0]} rows (batch "
            f"indices {shown}); the likelihood of such a row is undefined and, in an ODE solve, "
            "stops the whole batch. Drop or repair these rows first."
        )


def _time(value: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(value), dtype=x.dtype, device=x.device)


ENTROPY_ESTIMATES = ("closed_form", "sample")


def eps_correction_sample(score_fn, sde: SDE, x: Tensor, eps: float,
                          generator: torch.Generator | None = None,
                          entropy: str = "closed_form") -> tuple[Tensor, Tensor]:
    """Draw x_eps ~ N(m_eps x, s_eps^2 I) and return ``(x_eps, log r(x | x_eps) + H)``.

    Then -log p(x) <= E[-log p_eps(x_eps) - (log r(x | x_eps) + H)] (see the module docstring).
    ``entropy='closed_form'`` uses H = D/2 log(2 pi e s_eps^2), the entropy of q(x_eps | x);
    ``'sample'`` uses its single-sample estimate -log q(x_eps | x), which has the same
    expectation and cancels the ||z||^2 / 2 fluctuation of log r (variance about D/2 lower).

    Args:
        score_fn: s(x, t) or a NoiseConditionalModel.
        sde: the forward SDE.
        x: data in model space, ``[B, ...]``.
        eps: the start time.
        generator: random source of x_eps.
        entropy: ``'closed_form'`` or ``'sample'`` (see above).

    Returns:
        ``x_eps`` like ``x`` and the correction ``[B]`` nats.
    """
    if entropy not in ENTROPY_ESTIMATES:
        raise ValueError(f"Unknown entropy estimate {entropy!r}; choose one of {ENTROPY_ESTIMATES}.")
    fn = as_score_fn(score_fn)
    t = _time(eps, x)
    coefs = sde.marginal_coefs(t)
    m, s = expand_as_batch(coefs.mean_coef, x), expand_as_batch(coefs.std, x)
    x_eps, z = sde.perturb(x, t, randn_like(x, generator))
    mean = (x_eps + s**2 * fn(x_eps, t)) / m
    r_std = s / m
    log_r = (-0.5 * ((x - mean) / r_std) ** 2 - torch.log(r_std) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    num_dims = x[0].numel()
    if entropy == "closed_form":
        neg_log_q = 0.5 * num_dims * (math.log(2 * math.pi * math.e) + 2 * torch.log(coefs.std))
    else:
        neg_log_q = 0.5 * z.flatten(1).pow(2).sum(1) + num_dims * (torch.log(coefs.std) + 0.5 * math.log(2 * math.pi))
    return x_eps, log_r + neg_log_q


def expected_prior_nll(sde: SDE, x: Tensor) -> Tensor:
    """E_z[-log pi(x_T)], x_T = m_T x + sigma_T z, in closed form, ``[B]``."""
    coefs = sde.marginal_coefs(_time(sde.T, x))
    num_dims = x[0].numel()
    var_p = sde.prior_std**2
    sq = x.flatten(1).pow(2).sum(1)
    return 0.5 * num_dims * math.log(2 * math.pi * var_p) + (coefs.mean_coef**2 * sq + num_dims * coefs.std**2) / (2 * var_p)


def dsm_bound(
    score_fn,
    sde: SDE,
    x: Tensor,
    *,
    n_times: int = 1000,
    importance_sampling: bool = True,
    eps: float = 1e-5,
    eps_correction: bool = True,
    generator: torch.Generator | None = None,
    time_chunk: int = 100,
    entropy: str = "closed_form",
    t_end: float | None = None,
    terminal_log_prob: Callable[[Tensor], Tensor] | None = None,
    terminal_draws: int = 1,
) -> Tensor:
    """Upper bound on -log p(x) in nats (Theorem 3, DSM form; see the module docstring).

    Args:
        score_fn: s(x, t) with ``t`` ``[B]``, or a NoiseConditionalModel.
        sde: the forward SDE.
        x: data in model space, ``[B, ...]``.
        n_times: Monte Carlo time points per datapoint (the NeurIPS 2021 paper: 1000).
        importance_sampling: t ~ q(t) proportional to g^2/sigma^2 instead of U[eps, T].
        eps: start time of the integral.
        eps_correction: bound -log p_0(x) through x_eps and the Tweedie decoder (True) or
            return the bound on -log p_eps evaluated at x (False).
        generator: random source of t, z and x_eps.
        time_chunk: time points evaluated per network call (memory control).
        entropy: entropy term of the eps correction, ``'closed_form'`` or
            ``'sample'`` (same expectation, lower variance); see :func:`eps_correction_sample`.
        t_end: end of the time integral (default T).
        terminal_log_prob: ``z [B, ...] -> [B]``, the log-density at ``t_end`` that closes the bound
            (default: the SDE's prior, in closed form, right at t_end = T only).
        terminal_draws: draws of x_t_end per datapoint averaged in E[-log p_end(x_t_end)].

    Returns:
        ``[B]`` upper bounds on -log p(x), nats (in expectation over the randomness).

    Raises:
        TypeError: ``x`` is not floating-point data (e.g. integer levels not yet dequantized).
        ValueError: bad sizes, ``eps`` or ``t_end``, ``t_end`` < T without ``terminal_log_prob``, or
            rows of ``x`` with NaN or infinite values.
    """
    check_model_space(x, "dsm_bound")
    if n_times < 1 or time_chunk < 1 or terminal_draws < 1:
        raise ValueError(f"n_times, time_chunk and terminal_draws must be >= 1; got {n_times}, {time_chunk}, "
                         f"{terminal_draws}.")
    check_eps(sde, eps)
    t_end = sde.T if t_end is None else float(t_end)
    if not eps < t_end <= sde.T:
        raise ValueError(f"Need eps < t_end <= T = {sde.T}; got eps={eps}, t_end={t_end}.")
    if terminal_log_prob is None and t_end != sde.T:
        raise ValueError(f"dsm_bound: the prior closes the bound at T = {sde.T} only; got t_end = {t_end}. "
                         "Pass terminal_log_prob (e.g. the model's own log p(. | t_end)) or leave t_end at T.")
    fn = as_score_fn(score_fn)
    correction = None
    if eps_correction:
        # The integral below, with x_t = m_t x + sigma_t z drawn from the kernel started at the data,
        # bounds E_{x_eps ~ p_0eps(.|x)}[-log p_eps(x_eps)]; only the decoder terms use x_eps.
        _, correction = eps_correction_sample(fn, sde, x, eps, generator, entropy)
    batch, num_dims = x.shape[0], x[0].numel()
    total = torch.zeros(batch, dtype=x.dtype, device=x.device)
    done = 0
    while done < n_times:
        n = min(time_chunk, n_times - done)
        xr = x.unsqueeze(1).expand(batch, n, *x.shape[1:]).reshape(batch * n, *x.shape[1:])
        if importance_sampling:
            t, w = importance_sample_t(sde, [batch * n], eps, generator, dtype=x.dtype, device=x.device,
                                       t_max=t_end)
            g2 = sde.diffusion(t) ** 2
            inv_q = w / g2
        else:
            t = uniform_times(batch * n, eps, t_end, generator, dtype=x.dtype, device=x.device)
            g2 = sde.diffusion(t) ** 2
            inv_q = torch.full_like(t, t_end - eps)
        x_t, z = sde.perturb(xr, t, randn_like(xr, generator))
        std = sde.marginal_coefs(t).std
        s = fn(x_t, t).flatten(1)
        zf = z.flatten(1)
        integrand = g2 * (s.pow(2).sum(1) + 2 * (s * zf).sum(1) / std) - 2 * sde.drift_divergence(t, num_dims)
        total = total + (integrand * inv_q).reshape(batch, n).sum(1)
        done += n
    terminal = expected_prior_nll(sde, x) if terminal_log_prob is None else _expected_terminal_nll(
        sde, x, t_end, terminal_log_prob, terminal_draws, generator)
    bound = terminal + 0.5 * total / n_times
    return bound if correction is None else bound - correction


def _expected_terminal_nll(sde: SDE, x: Tensor, t_end: float, log_prob: Callable[[Tensor], Tensor], draws: int,
                           generator: torch.Generator | None) -> Tensor:
    """E_{x_t_end ~ N(m x, sigma^2 I)}[-log p_end(x_t_end)], ``[B]``: the mean over ``draws`` draws."""
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(draws):
        x_end, _ = sde.perturb(x, _time(t_end, x), randn_like(x, generator))
        total = total - log_prob(x_end)
    return total / draws
