"""Denoising score matching with the original or the likelihood weighting (papers/002).

METHODS.md section 4:

    J(theta) = E_t E_x0 E_z [ lambda(t) || s_theta(x_t, t) + z / sigma_t ||^2 ] / 2,
    x_t = m(t) x_0 + sigma_t z,  t ~ U[eps, T],

with lambda(t) = sigma_t^2 ("original", Song et al. 2021) or lambda(t) = g(t)^2 ("likelihood",
which makes J a bound on the KL / -log p up to constants, papers/002 Theorem 1).

Importance sampling (papers/002 section 5): draw t ~ q(t) proportional to g(t)^2 / sigma_t^2 on
[eps, T] and weight each term by lambda(t) / q(t). With lambda = g^2 the weight is the constant-
in-expectation lambda / q = Z sigma_t^2, Z = int_eps^T g^2 / sigma^2 dt, and each term becomes
Z || sigma_t s + z ||^2 / 2. Antiderivatives F(t) of g^2 / sigma^2:

* VP:    F(t) = log(exp(B(t)) - 1)                (g^2 = beta, sigma^2 = 1 - e^{-B});
* subVP: F(t) = 2 log(exp(B(t)) - 1) - B(t)      (g^2 = beta (1 - e^{-2B}), sigma = 1 - e^{-B});
* VE:    g^2 / sigma^2 = 2 log(sigma_max / sigma_min), a constant, so q is uniform.

Both closed forms are inverted exactly: VP gives B = softplus(F); subVP gives, with c = e^F,
(e^B - 1)^2 / e^B = c, a quadratic in w = e^B whose root w > 1 is e^B - 1 = (c + sqrt(c^2 + 4c)) / 2;
then t = B^{-1}(B) (``VPSDE.t_for_integral_beta``). Any other SDE uses a tabulated inverse CDF
(trapezoid rule on a geometric grid in t, linear interpolation), tested against both closed forms.

Default eps: 1e-5 for every SDE (score_sde's training default; papers/002 App. B uses 1e-5 for
VP/VE likelihoods and 1e-2 for subVP likelihoods, which a gin row may set).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import gin
import torch
from torch import Tensor

from hybrids.objectives.batches import batch_data, to_model_space
from hybrids.sdes import SDE, SubVPSDE, VESDE, VPSDE

Weighting = Callable[[SDE, Tensor], Tensor]

DEFAULT_EPS = 1e-5
_TABLE_POINTS = 20_001


# --- weightings (STYLE.md B.5: each weighting is its own callable) ------------------------------
def original_weighting(sde: SDE, t: Tensor) -> Tensor:
    """lambda(t) = sigma_t^2 (Song et al. 2021, all three SDEs), ``[B]``."""
    return sde.marginal_coefs(t).std ** 2


def likelihood_weighting(sde: SDE, t: Tensor) -> Tensor:
    """lambda(t) = g(t)^2, the weighting that turns DSM into a likelihood bound, ``[B]``."""
    return sde.diffusion(t) ** 2


WEIGHTINGS: dict[str, Weighting] = {"original": original_weighting, "likelihood": likelihood_weighting}


# --- importance sampling of t -------------------------------------------------------------------
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


def _check_eps(sde: SDE, eps: float) -> None:
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T = {sde.T}); got {eps}.")


def _table(sde: SDE, eps: float, num_points: int) -> tuple[Tensor, Tensor]:
    """Grid t_i (geometric on [eps, T]) and the cumulative integral C_i of g^2/sigma^2, float64.

    The integrand is written in s = log t, where t g^2 / sigma^2 is smooth (about 1 near t = 0
    for VP), and integrated with the trapezoid rule.
    """
    s = torch.linspace(math.log(eps), math.log(sde.T), num_points, dtype=torch.float64)
    t = torch.exp(s)
    t[0], t[-1] = eps, sde.T
    h = t * importance_density(sde, t)
    steps = 0.5 * (h[1:] + h[:-1]) * (s[1:] - s[:-1])
    return t, torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(steps, 0)])


def importance_normalizer(sde: SDE, eps: float, *, tabulated: bool = False) -> float:
    """Z = int_eps^T g(t)^2 / sigma_t^2 dt (closed form where known, else tabulated).

    METHODS.md quotes Z_VP = 23.8645 (eps 1e-5), 19.1654 (1e-3); Z_subVP = 37.6789, 28.2809.
    """
    _check_eps(sde, eps)
    if not tabulated and type(sde) in CLOSED_FORMS:
        ends = torch.tensor([eps, sde.T], dtype=torch.float64)
        f = cumulative_importance(sde, ends)
        return float(f[1] - f[0])
    return float(_table(sde, eps, _TABLE_POINTS)[1][-1])


def tabulated_inverse_cdf(sde: SDE, eps: float, u: Tensor, *, num_points: int = _TABLE_POINTS) -> Tensor:
    """Inverse CDF of q(t) proportional to g^2/sigma^2 on [eps, T], from a fine table.

    Args:
        sde: any SDE.
        eps: lower end of the time interval.
        u: uniforms in [0, 1], any shape.
        num_points: grid size.

    Returns:
        t with the shape of ``u``, float64.
    """
    _check_eps(sde, eps)
    t_grid, cum = _table(sde, eps, num_points)
    target = u.to(torch.float64) * cum[-1]
    idx = torch.searchsorted(cum, target.reshape(-1)).clamp(1, num_points - 1)
    lo, hi = cum[idx - 1], cum[idx]
    frac = ((target.reshape(-1) - lo) / (hi - lo)).clamp(0, 1)
    # Interpolate in log t, the variable of the (smooth) table.
    log_t = torch.log(t_grid[idx - 1]) + frac * (torch.log(t_grid[idx]) - torch.log(t_grid[idx - 1]))
    return torch.exp(log_t).reshape(u.shape)


def closed_form_inverse_cdf(sde: SDE, eps: float, u: Tensor) -> Tensor:
    """Exact inverse CDF of q(t) for VP, subVP and VE (see the module docstring), float64."""
    _check_eps(sde, eps)
    cumulative, inverse = CLOSED_FORMS[type(sde)]
    ends = cumulative(sde, torch.tensor([eps, sde.T], dtype=torch.float64))
    f = ends[0] + u.to(torch.float64) * (ends[1] - ends[0])
    return inverse(sde, f).clamp(eps, sde.T)


def importance_sample_t(
    sde: SDE,
    shape: Sequence[int] | int,
    eps: float,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    tabulated: bool = False,
) -> tuple[Tensor, Tensor]:
    """Draw t ~ q(t) proportional to g(t)^2 / sigma_t^2 on [eps, T] with its weight lambda/q.

    Args:
        sde: the forward SDE.
        shape: shape of the draw (e.g. ``[B]``).
        eps: lower end of the time interval.
        generator: random source of the uniforms.
        dtype, device: of the outputs (default dtype: torch's default).
        tabulated: force the tabulated inverse CDF even where a closed form exists.

    Returns:
        ``(t, weight)``, each ``shape``, with weight = lambda(t) / q(t) = Z sigma_t^2 for
        lambda = g^2, so that E_q[weight * h(t)] = int_eps^T g(t)^2 h(t) dt exactly for any h
        (the likelihood-weighted time integral; divide by g^2 to integrate h itself).
    """
    _check_eps(sde, eps)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dtype = dtype or torch.get_default_dtype()
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=gen_device).cpu()
    if tabulated or type(sde) not in CLOSED_FORMS:
        t = tabulated_inverse_cdf(sde, eps, u)
    else:
        t = closed_form_inverse_cdf(sde, eps, u)
    z = importance_normalizer(sde, eps, tabulated=tabulated)
    weight = z * sde.marginal_coefs(t).std ** 2
    return t.to(dtype=dtype, device=device), weight.to(dtype=dtype, device=device)


# --- the objective -------------------------------------------------------------------------------
@gin.configurable(module="hybrids.objectives")
class DSM:
    """Denoising score matching objective ``objective(model, batch) -> (loss, metrics)``.

    Per example: l_i = lambda(t_i) / sigma_{t_i}^2 * || sigma_{t_i} s(x_t, t_i) + z_i ||^2 / 2,
    summed over dimensions (mean with ``reduce_mean``); with importance sampling the factor is
    lambda(t) / q(t) / sigma_t^2 / (T - eps), so both samplers estimate the same
    J = E_{t ~ U[eps, T]}[...] (for lambda = g^2 the factor is Z / (T - eps)).

    Args:
        sde: the forward SDE.
        weighting: ``'original'`` (sigma^2), ``'likelihood'`` (g^2) or a callable
            ``weighting(sde, t) -> [B]``.
        importance_sampling: draw t from q(t) proportional to g^2 / sigma^2 instead of U[eps, T].
        eps: smallest time (None: 1e-5).
        num_levels: K of integer data (dequantized to [-1, 1]); None for continuous data.
        reduce_mean: average instead of sum over data dimensions (score_sde's ``reduce_mean``).

    Metrics: ``per_example_loss`` (``[B]`` tensor, detached; the Trainer logs its mean and the
    loss itself).
    """

    def __init__(
        self,
        sde: SDE = gin.REQUIRED,
        weighting: str | Weighting = "original",
        importance_sampling: bool = False,
        eps: float | None = None,
        num_levels: int | None = 256,
        reduce_mean: bool = False,
    ):
        if isinstance(weighting, str):
            if weighting not in WEIGHTINGS:
                raise ValueError(f"Unknown weighting {weighting!r}; choose one of {sorted(WEIGHTINGS)} or pass a callable.")
            weighting = WEIGHTINGS[weighting]
        elif not callable(weighting):
            raise TypeError(f"weighting must be a name or a callable weighting(sde, t); got {type(weighting)}.")
        self.sde = sde
        self.weighting = weighting
        self.importance_sampling = bool(importance_sampling)
        self.eps = DEFAULT_EPS if eps is None else float(eps)
        _check_eps(sde, self.eps)
        self.num_levels = num_levels
        self.reduce_mean = bool(reduce_mean)

    def sample_t(self, batch_size: int, like: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Times ``[B]`` and the factor lambda(t) / (sigma_t^2 p(t) (T - eps)), ``[B]``."""
        span = self.sde.T - self.eps
        if self.importance_sampling:
            t, w = importance_sample_t(self.sde, [batch_size], self.eps, generator, dtype=like.dtype, device=like.device)
            factor = w * self.weighting(self.sde, t) / self.sde.diffusion(t) ** 2 / span
        else:
            u = torch.rand(batch_size, generator=generator, dtype=like.dtype,
                           device=generator.device if generator is not None else like.device).to(like.device)
            t = self.eps + span * u
            factor = self.weighting(self.sde, t)
        return t, factor / self.sde.marginal_coefs(t).std ** 2

    def per_example_loss(self, model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """l_i for model-space data ``x0`` ``[B, ...]``; returns ``[B]``."""
        t, factor = self.sample_t(x0.shape[0], x0, generator)
        x_t, z = self.sde.perturb(x0, t, generator=generator)
        std = self.sde.marginal_coefs(t).std.reshape((-1,) + (1,) * (x0.ndim - 1))
        residual = (std * model.score(x_t, t) + z).flatten(1).pow(2)
        sq = residual.mean(1) if self.reduce_mean else residual.sum(1)
        return 0.5 * factor * sq

    def __call__(self, model, batch, *, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        data = batch_data(batch)
        dtype = next((p.dtype for p in model.parameters()), torch.get_default_dtype())
        x0 = to_model_space(data, self.num_levels, generator, dtype)
        losses = self.per_example_loss(model, x0, generator)
        loss = losses.mean()
        return loss, {"per_example_loss": losses.detach()}
