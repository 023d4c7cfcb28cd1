"""Walk-jump sampling of Gaussian M-densities with underdamped Langevin MCMC.

Saremi, Srivastava and Bach, "Universal Smoothed Score Functions for Generative Modeling", arXiv
2023.

Walk: Langevin MCMC on the multimeasurement variable y = (y_1, ..., y_M), y_m in R^D, whose
score is grad_{y_m} log p(y) = (ybar - y_m)/sigma^2 + g(ybar)/M with g = grad log p_{sigma/sqrt M}
(``hybrids.models.gps``). Jump: xhat(y) = ybar + (sigma^2/M) g(ybar), the Bayes estimate of x.

Underdamped Langevin, the library's convention (inverse mass u, friction gamma, step delta):

    dy = v dt,   dv = (u psi(y) - gamma v) dt + sqrt(2 gamma u) dW,   psi = grad log p,

whose stationary law is p(y) N(v; 0, u I). ``friction`` is the *effective* friction
F = gamma * delta (the product the paper tunes and the authors' newer code takes directly, default
1.0; the older code's gamma = 0.5 with delta = sigma / 2 corresponds to friction = sigma / 4), so
gamma = F / delta and c = exp(-F) = exp(-gamma delta). v_0 = 0. Three integrators (``integrator``):

'aboba' (default): the splitting of Sachs, Leimkuhler and Danos (2017) in the A-B-O-B-A order of
the authors' code; one score call per step:

    y += delta v / 2;  psi = score(y);  v += u delta psi / 2;
    v = c v + u delta psi / 2 + sqrt(u (1 - c^2)) xi;  y += delta v / 2.

'cheng': Cheng, Chatterji, Bartlett and Jordan (2018), "Underdamped Langevin MCMC: a
non-asymptotic analysis": the SDE integrated exactly over the step with the score frozen at
psi = score(y); one score call per step. Their dv = -gamma v dt - u grad f(x) dt + sqrt(2 gamma u) dB
is the library's SDE with f = -log p and the same u and gamma (their analysis takes gamma = 2,
u = 1/L). With L = gamma * ell for a time ell, phi1(L) = (1 - e^{-L}) / L and
phi2(L) = (L - 1 + e^{-L}) / L^2, the flow over ell is, per coordinate,

    y' = y + ell phi1(L) v + u ell^2 phi2(L) psi + X,    v' = e^{-L} v + u ell phi1(L) psi + V,
    Var X = u ell^2 (2L - 3 + 4 e^{-L} - e^{-2L}) / L^2,  Var V = u (1 - e^{-2L}),
    Cov(X, V) = u ell (1 - e^{-L})^2 / L,

drawn from two standard normals per coordinate as V = sqrt(u (1 - e^{-2L})) xi_1,
X = sqrt(u) ell (phi1(L) sqrt(tanh(L/2)) xi_1 + sqrt(2 (L - 2 tanh(L/2))) / L xi_2). A step is this
flow with ell = delta, L = F (in their notation E v' = v e^{-gamma delta} - (u/gamma)(1 - e^{-gamma
delta}) grad f, ...). The coefficients take Taylor series for L < 1, so F = 0 (no noise) is exact.

'randomized_midpoint': Shen and Lee (2019), "The randomized midpoint method for log-concave
sampling", their algorithm for underdamped Langevin, which takes Cheng et al.'s SDE at gamma = 2,
here at gamma = F / delta (their u is the library's u, their h is delta). Per chain alpha ~ U[0, 1], a = alpha delta, L_1 = alpha F,
L_2 = (1 - alpha) F; two score calls per step:

    psi = score(y);  y_mid = y + a phi1(L_1) v + u a^2 phi2(L_1) psi + X_1     (the 'cheng' flow over a)
    psi_m = score(y_mid)
    y' = y + delta phi1(F) v + u delta (delta - a) phi1(L_2) psi_m + W_2
    v' = c v + u delta e^{-L_2} psi_m + W_3,

i.e. the integrals int_0^delta k(delta - s) psi(y_s) ds of the exact solution estimated by
delta k(delta - a) psi(y_mid) (k: the OU kernels u (1 - e^{-gamma t}) / gamma and u e^{-gamma t}).
The Brownian parts are those of one path: with (X_1, V_1) the OU noise over [0, a] and (X_2, V_2)
an independent one over [a, delta] (each drawn as in 'cheng'),
W_2 = X_1 + (delta - a) phi1(L_2) V_1 + X_2 and W_3 = e^{-L_2} V_1 + V_2, which is the Gaussian
vector (W_1 = X_1, W_2, W_3) of Shen and Lee with its covariance (e.g.
Cov(W_1, W_3) = (u / gamma) e^{-gamma delta} (e^{gamma a / 2} - e^{-gamma a / 2})^2). alpha is
drawn from ``generator`` (one per chain, shared by the M measurements and the D coordinates).

Overdamped scheme (for comparison; unadjusted Langevin with the same length scale delta):
y += (delta^2 / 2) u psi + delta sqrt(u) xi.

Reduction: with the GPS score the mean of the
measurement scores is g(ybar)/M, so (ybar, sqrt(M) * mean velocity) follows the same scheme on
p_{sigma/sqrt M} in R^D with step delta/sqrt(M), the same c, the same u and the standard normal
noise sqrt(M) * mean_m xi_m. The deviations y_m - ybar never reach the jumps, so the reduced chain
(the default) gives the jumps of the full M x D chain, for the same noise, with M times less
memory and arithmetic. The same holds for the overdamped scheme and for every integrator: each
update is linear in (y, v), psi and the normals, with coefficients that are the same for every
measurement, and the score enters the mean of the updates only as g(ybar) / M. Averaging a step
over m with h = delta / sqrt(M) and V = sqrt(M) vbar at fixed F (so L, alpha and c are unchanged):
delta v -> h V, u delta^2 psi -> u h^2 g, sqrt(M) u delta psi -> u h g in v, the y-noise (a
multiple of delta) -> h times the same combination of sqrt(M) mean_m xi_m, and sqrt(M) times the
v-noise (free of delta) -> the v-noise of sqrt(M) mean_m xi_m. 'randomized_midpoint' needs the same
alpha per chain in both chains: it is drawn per chain, shared by the M measurements.

Start: y_0 = x_0 + sigma n (n standard normal per measurement; in the reduced chain
ybar_0 = x_0 + sigma/sqrt(M) z with z = sqrt(M) mean_m n_m), where x_0 is ``init`` or zeros.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from hybrids.models.gps import measurement_score_from_ybar
from hybrids.tensors import rand, randn_like

ScoreFn = Callable[[Tensor], Tensor]
NoiseSampler = Callable[[Tensor], Tensor]

METHODS = ("underdamped", "overdamped")
INTEGRATORS = ("aboba", "cheng", "randomized_midpoint")
_TAYLOR_TERMS = 20  # below L = 1 the first omitted term is < 1 / 21! ~ 2e-20 (float64 exact)


def m_density_score(score_fn_ybar: ScoreFn, sigma: float) -> ScoreFn:
    """The full M-density score y ``[B, M, *event]`` -> ``[B, M, *event]`` built from g(ybar)."""

    def score(y: Tensor) -> Tensor:
        return measurement_score_from_ybar(y, score_fn_ybar(y.mean(dim=1)), sigma)

    return score


class OUFlow(NamedTuple):
    """Coefficients of the exact underdamped flow over a time ell with the score frozen, as
    functions of L = gamma ell (module docstring, 'cheng'); each like L, float64.

    y' = y + ell phi1 v + u ell^2 phi2 psi + sqrt(u) ell (noise_x1 xi_1 + noise_x2 xi_2),
    v' = decay v + u ell phi1 psi + sqrt(u) noise_v xi_1.
    """

    decay: Tensor  # e^{-L}
    phi1: Tensor  # (1 - e^{-L}) / L
    phi2: Tensor  # (L - 1 + e^{-L}) / L^2
    noise_v: Tensor  # sqrt(1 - e^{-2L})
    noise_x1: Tensor  # phi1 sqrt(tanh(L / 2)) = Cov(X, V) / (sqrt(u) ell sqrt(Var V))
    noise_x2: Tensor  # sqrt(2 (L - 2 tanh(L / 2))) / L, the part of X independent of V


def _taylor(L: Tensor, coefficients: list[float]) -> Tensor:
    """sum_j coefficients[j] (-L)^j by Horner's rule."""
    out = torch.zeros_like(L)
    for c in reversed(coefficients):
        out = out * (-L) + c
    return out


def ou_flow(L: Tensor) -> OUFlow:
    """``OUFlow`` at L = gamma ell >= 0 (any shape, float64): closed forms for L >= 1, Taylor
    series below (phi1 = sum (-L)^j / (j+1)!, phi2 = sum (-L)^j / (j+2)!,
    (L - 2 tanh(L/2)) / L^3 = sum (j+1) (-L)^j / (j+3)! / (1 + e^{-L})), so no cancellation as L -> 0."""
    L = L.to(torch.float64)
    small, big = L < 1, L.clamp(min=1.0)
    fact = [float(math.factorial(j)) for j in range(_TAYLOR_TERMS + 3)]
    decay = torch.exp(-L)
    phi1 = torch.where(small, _taylor(L, [1 / fact[j + 1] for j in range(_TAYLOR_TERMS)]), -torch.expm1(-big) / big)
    phi2 = torch.where(small, _taylor(L, [1 / fact[j + 2] for j in range(_TAYLOR_TERMS)]),
                       (big + torch.expm1(-big)) / big**2)
    tanh_gap = torch.where(  # (L - 2 tanh(L/2)) / L^3, -> 1/12
        small, _taylor(L, [(j + 1) / fact[j + 3] for j in range(_TAYLOR_TERMS)]) / (1 + decay),
        (big - 2 * torch.tanh(big / 2)) / big**3)
    return OUFlow(decay, phi1, phi2, torch.sqrt(-torch.expm1(-2 * L)), phi1 * torch.sqrt(torch.tanh(L / 2)),
                  torch.sqrt(2 * L * tanh_gap))


def _cast(flow: OUFlow, like: Tensor) -> OUFlow:
    return OUFlow(*(t.to(dtype=like.dtype, device=like.device) for t in flow))


def _ou_noise(flow: OUFlow, ell: float | Tensor, u: float, like: Tensor, noise: NoiseSampler) -> tuple[Tensor, Tensor]:
    """The Brownian part (X, V) of the flow over ell, from two calls of ``noise`` (xi_1, xi_2)."""
    xi1, xi2 = noise(like), noise(like)
    return math.sqrt(u) * ell * (flow.noise_x1 * xi1 + flow.noise_x2 * xi2), math.sqrt(u) * flow.noise_v * xi1


def langevin_walk(
    score_fn: ScoreFn,
    y0: Tensor,
    *,
    n_steps: int,
    step_size: float,
    friction: float = 1.0,
    method: str = "underdamped",
    integrator: str = "aboba",
    inverse_mass: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Run ``n_steps`` of underdamped or overdamped Langevin on ``score_fn``.

    Args:
        score_fn: grad log p, ``y -> like y``.
        y0: start, ``[B, ...]`` (B chains); the velocity starts at 0.
        n_steps: number of steps (one score call each; two for 'randomized_midpoint').
        step_size: delta.
        friction: effective friction F = gamma * delta (underdamped only), c = exp(-F).
        method: 'underdamped' or 'overdamped' (see the module docstring for both).
        integrator: of the underdamped walk: 'aboba' (default), 'cheng' or 'randomized_midpoint'.
        inverse_mass: u (a positive scalar).
        noise_sampler: ``like -> standard normal like like``, called once per step ('aboba',
            overdamped), twice ('cheng') or four times ('randomized_midpoint'); default draws from
            ``generator``.
        generator: random generator of the normals when ``noise_sampler`` is None, and of the
            randomized midpoint's alpha ``[B]``.
        callback: called as ``callback(k, y)`` after step k = 1..n_steps.

    Returns:
        The final state y, like ``y0``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}.")
    if integrator not in INTEGRATORS:
        raise ValueError(f"unknown integrator {integrator!r}; choose one of {INTEGRATORS}.")
    if method == "overdamped" and integrator != "aboba":
        raise ValueError(f"integrator {integrator!r} is one of the underdamped walk; method='overdamped' takes none "
                         "(leave integrator='aboba').")
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
    v = torch.zeros_like(y)
    if integrator == "aboba":
        c = math.exp(-friction)
        noise_scale = math.sqrt(u * (1.0 - c**2))
        for k in range(1, n_steps + 1):
            y = y + (delta / 2) * v
            psi = score_fn(y)
            v = v + (u * delta / 2) * psi
            v = c * v + (u * delta / 2) * psi + noise_scale * noise(v)
            y = y + (delta / 2) * v
            if callback is not None:
                callback(k, y)
        return y
    F = torch.tensor(float(friction), dtype=torch.float64)
    full = _cast(ou_flow(F), y)
    chain_shape = (y.shape[0],) + (1,) * (y.ndim - 1)
    for k in range(1, n_steps + 1):
        psi = score_fn(y)
        if integrator == "cheng":
            x_noise, v_noise = _ou_noise(full, delta, u, y, noise)
            y, v = (y + delta * full.phi1 * v + u * delta**2 * full.phi2 * psi + x_noise,
                    full.decay * v + u * delta * full.phi1 * psi + v_noise)
        else:  # randomized_midpoint
            alpha = rand(chain_shape, generator, dtype=torch.float64, device=y.device)
            first, rest = _cast(ou_flow(alpha * F), y), _cast(ou_flow((1 - alpha) * F), y)
            a, left = (alpha * delta).to(y.dtype), ((1 - alpha) * delta).to(y.dtype)
            x1, v1 = _ou_noise(first, a, u, y, noise)
            psi_mid = score_fn(y + a * first.phi1 * v + u * a**2 * first.phi2 * psi + x1)
            x2, v2 = _ou_noise(rest, left, u, y, noise)
            w2, w3 = x1 + left * rest.phi1 * v1 + x2, rest.decay * v1 + v2  # one Brownian path's (W_2, W_3)
            y, v = (y + delta * full.phi1 * v + u * delta * left * rest.phi1 * psi_mid + w2,
                    full.decay * v + u * delta * rest.decay * psi_mid + w3)
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
    integrator: str = "aboba",
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
        n_steps: walk steps (one score call each, two for 'randomized_midpoint'; each jump costs
            one more).
        step_size: delta of the M x D chain; default sigma / 2 (the authors' choice). The reduced
            chain uses delta / sqrt(M).
        friction: effective friction gamma * delta, c = exp(-friction) (the authors' newer code).
        generator: random generator of the normals when ``noise_sampler`` is None, and of the
            randomized midpoint's alpha.
        record_every: if set, return the jumps after every ``record_every`` steps.
        init: x_0 ``[B, *event]`` (default zeros); y_0 = x_0 + sigma n.
        method: 'underdamped' or 'overdamped'.
        integrator: of the underdamped walk: 'aboba' (default), 'cheng' or 'randomized_midpoint'
            (module docstring); every one runs on the reduced chain as well.
        reduced: run the exact D-dimensional reduction (default) instead of the M x D chain.
        inverse_mass: u.
        noise_sampler: ``like -> standard normal like like``, called once for the start and then
            as in ``langevin_walk`` (shape ``[B, M, *event]`` in the full chain, ``[B, *event]``
            reduced).
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
        integrator=integrator,
        inverse_mass=inverse_mass,
        noise_sampler=noise,
        generator=generator,
        callback=record if record_every is not None else None,
    )
    if record_every is not None:
        if jumps:  # one reduction over all records; the first bad one is named
            finite = torch.stack([torch.isfinite(j.detach()).all() for j in jumps])
            if not bool(finite.all()):
                first = int((~finite).nonzero()[0])
                _check_finite_jumps(jumps[first], (first + 1) * record_every, delta, chain_step, friction,
                                    method, integrator, sigma)
        return jumps
    out = jump(y)
    _check_finite_jumps(out, n_steps, delta, chain_step, friction, method, integrator, sigma)
    return out


def _check_finite_jumps(x: Tensor, step: int, delta: float, chain_step: float, friction: float,
                        method: str, integrator: str, sigma: float) -> None:
    """Raise ``FloatingPointError`` when jumps are NaN or infinite (a diverged walk)."""
    bad = ~torch.isfinite(x.detach().reshape(x.shape[0], -1)).all(1) if x.ndim > 1 else ~torch.isfinite(x)
    if not bool(bad.any()):
        return
    friction_text = f", friction={friction:g}, integrator={integrator!r}" if method == "underdamped" else ""
    raise FloatingPointError(
        f"walk_jump: the jumps after step {step} are NaN or infinite in {int(bad.sum())} of "
        f"{bad.numel()} chains ({method} walk, step_size={delta:g} (chain step {chain_step:g})"
        f"{friction_text}, sigma={sigma:g}): the walk diverged. Use a smaller step_size (the default "
        f"is sigma / 2 = {sigma / 2:g}){' or a larger friction' if method == 'underdamped' else ''}, "
        "and check that the score is finite."
    )
