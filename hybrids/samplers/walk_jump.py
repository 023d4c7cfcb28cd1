"""Walk-jump sampling of Gaussian M-densities with underdamped Langevin MCMC.

Saremi, Srivastava and Bach, "Universal Smoothed Score Functions for Generative Modeling", arXiv
2023.

Walk: Langevin MCMC on the multimeasurement variable y = (y_1, ..., y_M), y_m in R^D, whose
score is grad_{y_m} log p(y) = (ybar - y_m)/sigma^2 + g(ybar)/M with g = grad log p_{sigma/sqrt M}
(``hybrids.models.gps``). Jump: xhat(y) = ybar + (sigma^2/M) g(ybar), the Bayes estimate of x.

Underdamped scheme (Sachs, Leimkuhler and Danos 2017, in the A-B-O-B-A order of the authors'
code; one score call per step, inverse mass u, v_0 = 0, step delta, c = exp(-friction)):

    y += delta v / 2;  psi = score(y);  v += u delta psi / 2;
    v = c v + u delta psi / 2 + sqrt(u (1 - c^2)) xi;  y += delta v / 2.

``friction`` is the *effective* friction gamma * delta (the product the paper tunes and the
authors' newer code takes directly, default 1.0); the older code's gamma = 0.5 with
delta = sigma / 2 corresponds to friction = sigma / 4.

Overdamped scheme (for comparison; unadjusted Langevin with the same length scale delta):
y += (delta^2 / 2) u psi + delta sqrt(u) xi.

Reduction: with the GPS score the mean of the
measurement scores is g(ybar)/M, so (ybar, sqrt(M) * mean velocity) follows the same scheme on
p_{sigma/sqrt M} in R^D with step delta/sqrt(M), the same c, the same u and the standard normal
noise sqrt(M) * mean_m xi_m. The deviations y_m - ybar never reach the jumps, so the reduced chain
(the default) gives the jumps of the full M x D chain, for the same noise, with M times less
memory and arithmetic. The same holds for the overdamped scheme.

Start: y_0 = x_0 + sigma n (n standard normal per measurement; in the reduced chain
ybar_0 = x_0 + sigma/sqrt(M) z with z = sqrt(M) mean_m n_m), where x_0 is ``init`` or zeros.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from hybrids.models.gps import measurement_score_from_ybar
from hybrids.tensors import randn_like

ScoreFn = Callable[[Tensor], Tensor]
NoiseSampler = Callable[[Tensor], Tensor]

METHODS = ("underdamped", "overdamped")


def m_density_score(score_fn_ybar: ScoreFn, sigma: float) -> ScoreFn:
    """The full M-density score y ``[B, M, *event]`` -> ``[B, M, *event]`` built from g(ybar)."""

    def score(y: Tensor) -> Tensor:
        return measurement_score_from_ybar(y, score_fn_ybar(y.mean(dim=1)), sigma)

    return score


def langevin_walk(
    score_fn: ScoreFn,
    y0: Tensor,
    *,
    n_steps: int,
    step_size: float,
    friction: float = 1.0,
    method: str = "underdamped",
    inverse_mass: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Run ``n_steps`` of underdamped (A-B-O-B-A) or overdamped Langevin on ``score_fn``.

    Args:
        score_fn: grad log p, ``y -> like y``.
        y0: start, ``[B, ...]``; the velocity starts at 0.
        n_steps: number of steps (one score call each).
        step_size: delta.
        friction: effective friction gamma * delta (underdamped only), c = exp(-friction).
        method: 'underdamped' or 'overdamped' (see the module docstring for both updates).
        inverse_mass: u (a positive scalar).
        noise_sampler: ``like -> standard normal like like``; default draws from ``generator``.
        generator: random generator used when ``noise_sampler`` is None.
        callback: called as ``callback(k, y)`` after step k = 1..n_steps.

    Returns:
        The final state y, like ``y0``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}.")
    if not (step_size > 0 and inverse_mass > 0 and friction >= 0):
        raise ValueError(
            f"need step_size > 0, inverse_mass > 0 and friction >= 0; got {step_size}, {inverse_mass}, {friction}."
        )
    noise = noise_sampler or (lambda like: randn_like(like, generator))
    delta, u = float(step_size), float(inverse_mass)
    y = y0
    if method == "overdamped":
        for k in range(1, n_steps + 1):
            y = y + (delta**2 / 2) * u * score_fn(y) + delta * math.sqrt(u) * noise(y)
            if callback is not None:
                callback(k, y)
        return y
    c = math.exp(-friction)
    noise_scale = math.sqrt(u * (1.0 - c**2))
    v = torch.zeros_like(y)
    for k in range(1, n_steps + 1):
        y = y + (delta / 2) * v
        psi = score_fn(y)
        v = v + (u * delta / 2) * psi
        v = c * v + (u * delta / 2) * psi + noise_scale * noise(v)
        y = y + (delta / 2) * v
        if callback is not None:
            callback(k, y)
    return y


def walk_jump(
    score_fn_ybar: ScoreFn,
    sigma: float,
    M: int,
    shape: tuple[int, ...],
    *,
    n_steps: int,
    step_size: float | None = None,
    friction: float = 1.0,
    generator: torch.Generator | None = None,
    record_every: int | None = None,
    init: Tensor | None = None,
    method: str = "underdamped",
    reduced: bool = True,
    inverse_mass: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor | list[Tensor]:
    """Walk-jump sampling of the Gaussian M-density with noise sigma and M measurements.

    Runs under the caller's grad mode: wrap it in ``torch.no_grad()`` for a network score.

    Args:
        score_fn_ybar: g(ybar) = grad log p_{sigma/sqrt M}(ybar), ``[B, *event] -> [B, *event]``.
        sigma: per-measurement noise std.
        M: number of measurements.
        shape: shape of the jumps, ``(B, *event)`` (B parallel chains).
        n_steps: walk steps (one score call each; each jump costs one more).
        step_size: delta of the M x D chain; default sigma / 2 (the authors' choice). The reduced
            chain uses delta / sqrt(M).
        friction: effective friction gamma * delta, c = exp(-friction) (the authors' newer code).
        generator: random generator (used when ``noise_sampler`` is None).
        record_every: if set, return the jumps after every ``record_every`` steps.
        init: x_0 ``[B, *event]`` (default zeros); y_0 = x_0 + sigma n.
        method: 'underdamped' (A-B-O-B-A) or 'overdamped'.
        reduced: run the exact D-dimensional reduction (default) instead of the M x D chain.
        inverse_mass: u.
        noise_sampler: ``like -> standard normal like like``, called once for the start and once
            per step (shape ``[B, M, *event]`` in the full chain, ``[B, *event]`` reduced).
        dtype, device: of the chain when ``init`` is None (defaults: torch default dtype, CPU).

    Returns:
        The final jumps xhat(y), ``shape``; or, with ``record_every``, the list of jumps after
        steps record_every, 2 record_every, ... <= n_steps.

    Raises:
        ValueError: bad sizes or settings.
        FloatingPointError: the returned jumps are NaN or infinite (the chain diverged); the
            message names the step size and friction and advises a smaller ``step_size``.
    """
    if isinstance(M, bool) or not isinstance(M, int) or M < 1:
        raise ValueError(f"M must be an int >= 1, got {M!r}.")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}.")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}.")
    if record_every is not None and (not isinstance(record_every, int) or record_every < 1):
        raise ValueError(f"record_every must be None or an int >= 1, got {record_every!r}.")
    shape = tuple(shape)
    if init is None:
        x0 = torch.zeros(shape, dtype=dtype or torch.get_default_dtype(), device=device)
    else:
        if tuple(init.shape) != shape:
            raise ValueError(f"init must have shape {shape}, got {tuple(init.shape)}.")
        x0 = init
    delta = sigma / 2 if step_size is None else float(step_size)
    sigma_eff = sigma / math.sqrt(M)
    noise = noise_sampler or (lambda like: randn_like(like, generator))

    if reduced:
        y0 = x0 + sigma_eff * noise(x0)
        score_fn, chain_step = score_fn_ybar, delta / math.sqrt(M)

        def jump(y: Tensor) -> Tensor:
            return y + sigma_eff**2 * score_fn_ybar(y)

    else:
        x0m = x0.unsqueeze(1).expand((shape[0], M) + shape[1:])
        y0 = x0m + sigma * noise(x0m)
        score_fn, chain_step = m_density_score(score_fn_ybar, sigma), delta

        def jump(y: Tensor) -> Tensor:
            ybar = y.mean(dim=1)
            return ybar + sigma_eff**2 * score_fn_ybar(ybar)

    jumps: list[Tensor] = []

    def record(k: int, y: Tensor) -> None:
        if k % record_every == 0:
            jumps.append(jump(y))

    y = langevin_walk(
        score_fn,
        y0,
        n_steps=n_steps,
        step_size=chain_step,
        friction=friction,
        method=method,
        inverse_mass=inverse_mass,
        noise_sampler=noise,
        callback=record if record_every is not None else None,
    )
    if record_every is not None:
        if jumps:  # one reduction over all records; the first bad one is named
            finite = torch.stack([torch.isfinite(j.detach()).all() for j in jumps])
            if not bool(finite.all()):
                first = int((~finite).nonzero()[0])
                _check_finite_jumps(jumps[first], (first + 1) * record_every, delta, chain_step, friction,
                                    method, sigma)
        return jumps
    out = jump(y)
    _check_finite_jumps(out, n_steps, delta, chain_step, friction, method, sigma)
    return out


def _check_finite_jumps(x: Tensor, step: int, delta: float, chain_step: float, friction: float,
                        method: str, sigma: float) -> None:
    """Raise ``FloatingPointError`` when jumps are NaN or infinite (a diverged walk)."""
    bad = ~torch.isfinite(x.detach().reshape(x.shape[0], -1)).all(1) if x.ndim > 1 else ~torch.isfinite(x)
    if not bool(bad.any()):
        return
    friction_text = f", friction={friction:g}" if method == "underdamped" else ""
    raise FloatingPointError(
        f"walk_jump: the jumps after step {step} are NaN or infinite in {int(bad.sum())} of "
        f"{bad.numel()} chains ({method} walk, step_size={delta:g} (chain step {chain_step:g})"
        f"{friction_text}, sigma={sigma:g}): the walk diverged. Use a smaller step_size (the default "
        f"is sigma / 2 = {sigma / 2:g}){' or a larger friction' if method == 'underdamped' else ''}, "
        "and check that the score is finite."
    )
