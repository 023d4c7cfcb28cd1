"""Forward diffusion SDEs dx = f(x, t) dt + g(t) dw on t in [0, T] (Song et al. 2021, ScoreFlow (Song et al., 2021b)).

Every SDE here has an affine drift, so the transition kernel is Gaussian,
p_0t(x_t | x_0) = N(m(t) x_0, sigma(t)^2 I), with

==========  =================  =======================================  ========  ==================
SDE         f(x, t)            g(t)                                     m(t)      sigma(t)
==========  =================  =======================================  ========  ==================
VE          0                  sigma(t) sqrt(2 ln(sigma_max/sigma_min))  1         sigma_min r^t
VP          -beta(t) x / 2     sqrt(beta(t))                            alpha_t   sqrt(1 - alpha_t^2)
subVP       -beta(t) x / 2     sqrt(beta(t) (1 - exp(-2 B(t))))         alpha_t   1 - alpha_t^2
==========  =================  =======================================  ========  ==================

with r = sigma_max / sigma_min, beta(t) = beta_min + t (beta_max - beta_min),
B(t) = int_0^t beta = beta_min t + t^2 (beta_max - beta_min) / 2 and alpha_t = exp(-B(t) / 2).

VE convention (as score_sde): sigma(0) = sigma_min, i.e. the data are taken to carry N(0,
sigma_min^2) noise at t = 0. The VE SDE started from a noiseless x_0 at t = 0 would have variance
sigma(t)^2 - sigma_min^2; the two differ by sigma_min^2 = 1e-4 and every formula in hybrids
(marginals, the analytic model, likelihoods) uses the sigma(t) convention consistently.

Tensors: ``x`` is ``[B, ...]``; ``t`` is ``[B]`` (a scalar is broadcast) and follows the dtype of
``x`` where both are given. Per-example quantities (``diffusion``, ``std``) are ``[B]``.

Times are checked: the SDE methods taking ``t`` (``drift_coef``, ``drift``, ``drift_divergence``,
``diffusion``, ``marginal_coefs``, ``marginal``, ``perturb``, ``likelihood_weighting``,
``langevin_alpha``, ``discretize`` and those of ``ReverseSDE``) raise ``ValueError`` naming the
valid range [0, T] and the offending values when a time lies outside it (or is NaN), up to a
rounding tolerance of max(1e-6, machine eps of t's dtype) * T (:meth:`SDE.check_time`);
``t_for_std`` rejects stds whose time would leave [0, T]. The check is one min/max reduction per
call and leaves the values of valid calls unchanged. The formula helpers ``VESDE.sigma``,
``beta`` and ``integral_beta`` are defined for any t and are not checked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import gin
import torch
from torch import Tensor

from hybrids.tensors import expand_as_batch

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _as_time(t: Tensor | float, like: Tensor | None = None) -> Tensor:
    if like is not None:
        return torch.as_tensor(t, dtype=like.dtype, device=like.device)
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def _time_tolerance(T: float, dtype: torch.dtype) -> float:
    """Rounding slack of the [0, T] check: max(1e-6, machine eps of ``dtype``) * T."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return max(1e-6, eps) * T


def _describe_values(values: Tensor, limit: int = 5) -> str:
    """Up to ``limit`` values as a short, readable list."""
    flat = values.detach().flatten()
    shown = ", ".join(f"{v:.6g}" for v in flat[:limit].tolist())
    return f"[{shown}{', ...' if flat.numel() > limit else ''}]"


@dataclass(frozen=True)
class Marginal:
    """Coefficients of p_0t(x_t | x_0) = N(mean_coef * x_0, std^2 I), each ``[B]``."""

    mean_coef: Tensor
    std: Tensor


class SDE:
    """Base class: an SDE with affine drift f(x, t) = drift_coef(t) x and Gaussian transitions.

    Subclasses define ``drift_coef``, ``diffusion``, ``marginal_coefs``, ``prior_std`` and
    ``t_for_std``, passing every time through :meth:`check_time`; everything else follows.
    """

    T: float = 1.0

    def check_time(self, t: Tensor | float) -> Tensor:
        """Return ``t`` as a tensor after checking that every value lies in [0, T].

        A tolerance of max(1e-6, machine eps of t's dtype) * T absorbs rounding (e.g. t computed
        as eps + (T - eps) u); the values themselves are returned unchanged.

        Raises:
            ValueError: a time below 0, above T or NaN; the message names the valid range, how
                many values are outside it and the first of them.
        """
        t = _as_time(t)
        if t.numel() == 0:
            return t
        lo, hi = torch.stack(torch.aminmax(t.detach())).tolist()  # one reduction, one sync
        tol = _time_tolerance(self.T, t.dtype)
        if -tol <= lo and hi <= self.T + tol:  # False for NaN
            return t
        bad = ~((t >= -tol) & (t <= self.T + tol))
        raise ValueError(
            f"{type(self).__name__}: diffusion times must lie in [0, T] = [0, {self.T}]; got "
            f"{int(bad.sum())} of {t.numel()} values outside it: {_describe_values(t[bad])} (range of "
            f"t: {lo:.6g}..{hi:.6g}; a NaN time comes from a NaN upstream)."
        )

    # --- to be defined by subclasses -------------------------------------------------------
    def drift_coef(self, t: Tensor) -> Tensor:
        """a(t) in f(x, t) = a(t) x, ``[B]``."""
        raise NotImplementedError

    def diffusion(self, t: Tensor) -> Tensor:
        """g(t), ``[B]``."""
        raise NotImplementedError

    def marginal_coefs(self, t: Tensor) -> Marginal:
        """m(t) and sigma(t) of p_0t, each ``[B]``."""
        raise NotImplementedError

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std^2 I) at t = T."""
        raise NotImplementedError

    def t_for_std(self, std: Tensor | float) -> Tensor:
        """The time t at which the marginal std sigma(t) equals ``std`` (inverse of sigma)."""
        raise NotImplementedError

    def t_for_noise_ratio(self, ratio: Tensor | float) -> Tensor:
        """The time t at which sigma(t) / m(t) equals ``ratio`` (EDM's sigma of the scaled state
        x / m(t)), ``[B]``.

        This generic inverse bisects the increasing map t -> sigma(t) / m(t) on [0, T] (60 halvings:
        t to within T 2^-60, about 1e-18 T); the built-in SDEs override it with closed forms.

        Raises:
            ValueError: a ratio outside [sigma(0) / m(0), sigma(T) / m(T)] (up to 1e-6 relative).
        """
        ratio = _as_time(ratio)
        self._check_noise_ratio(ratio)
        lo, hi = torch.zeros_like(ratio), torch.full_like(ratio, self.T)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            coefs = self.marginal_coefs(mid)
            below = coefs.std / coefs.mean_coef < ratio
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def _check_noise_ratio(self, ratio: Tensor) -> None:
        """Raise ``ValueError`` unless every ratio lies in [sigma(0)/m(0), sigma(T)/m(T)] (1e-6 slack)."""
        ends = self.marginal_coefs(torch.tensor([0.0, self.T], dtype=torch.float64))
        low, high = (ends.std / ends.mean_coef).tolist()
        slack = _time_tolerance(1.0, ratio.dtype)
        if not bool(((ratio >= low * (1 - slack)) & (ratio <= high * (1 + slack))).all()):
            raise ValueError(f"{type(self).__name__}: noise-to-signal ratios sigma(t)/m(t) of times in [0, T] lie "
                             f"in [{low:.6g}, {high:.6g}]; got {ratio.min().item()}..{ratio.max().item()}.")

    # --- derived -------------------------------------------------------------------------
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """f(x, t) = a(t) x, shaped like ``x``."""
        t = _as_time(t, x)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return expand_as_batch(self.drift_coef(t), x) * x

    def drift_divergence(self, t: Tensor, num_dims: int) -> Tensor:
        """div_x f(x, t) = a(t) D, ``[B]`` (independent of x for affine drifts)."""
        return self.drift_coef(_as_time(t)) * num_dims

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of p_0t(x_t | x_0).

        Args:
            x0: clean data, ``[B, ...]``.
            t: times, ``[B]`` or a scalar.

        Returns:
            ``(mean, std)``: mean shaped like ``x0``, std ``[B]``.
        """
        t = _as_time(t, x0)
        if t.ndim == 0:
            t = t.expand(x0.shape[0])
        coefs = self.marginal_coefs(t)
        return expand_as_batch(coefs.mean_coef, x0) * x0, coefs.std

    def perturb(
        self,
        x0: Tensor,
        t: Tensor,
        noise: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw x_t = m(t) x_0 + sigma(t) z, z ~ N(0, I).

        Returns:
            ``(x_t, z)``, both shaped like ``x0``. grad log p_0t(x_t | x_0) = -z / sigma(t).
        """
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)} but x0 has {tuple(x0.shape)}.")
        mean, std = self.marginal(x0, t)
        return mean + expand_as_batch(std, x0) * noise, noise

    def prior_sample(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw from the prior N(0, prior_std^2 I); ``shape`` includes the batch dimension."""
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return self.prior_std * z

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std^2 I) summed over all but the batch dimension, ``[B]`` nats."""
        num_dims = z[0].numel()
        s2 = self.prior_std**2
        sq = z.flatten(1).pow(2).sum(1)
        return -0.5 * num_dims * math.log(2 * math.pi * s2) - sq / (2 * s2)

    def likelihood_weighting(self, t: Tensor) -> Tensor:
        """lambda(t) = g(t)^2, the weighting that makes DSM a bound on -log p (ScoreFlow (Song et al., 2021b))."""
        return self.diffusion(_as_time(t)) ** 2

    def langevin_alpha(self, t: Tensor, dt: float) -> Tensor:
        """Scale a of the Langevin corrector step 2 a (snr ||z|| / ||s||)^2, ``[B]``.

        score_sde uses a = 1 for VE and a = alpha_i = 1 - beta_i of the discretised chain for VP,
        with beta_i = beta(t) dt. The drift of subVP is that of VP, so the same a applies (the
        reference code has no value for subVP and its corrector crashes there).
        """
        return torch.ones_like(self.check_time(t))

    def discretize(self, x: Tensor, t: Tensor, dt: float) -> tuple[Tensor, Tensor]:
        """One forward step of size dt > 0: x_{t+dt} = x + f_d + G z. Returns ``(f_d, G)``.

        The default is Euler-Maruyama: f_d = f(x, t) dt, G = g(t) sqrt(dt) (``[B]``).
        """
        t = _as_time(t, x)
        return self.drift(x, t) * dt, self.diffusion(t) * math.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE dx = [f - g^2 s] dt + g dw_bar, or the probability-flow ODE
        dx/dt = f - g^2 s / 2 when ``probability_flow`` is True (both integrated from T to 0)."""
        return ReverseSDE(self, score_fn, probability_flow)


class ReverseSDE:
    """Reverse-time process of an SDE given a score s(x, t) = grad log p_t(x).

    ``drift(x, t)`` is the coefficient of dt (dt < 0 when integrating from T towards 0) and
    ``diffusion(t)`` is the coefficient of the reverse Brownian motion (0 for the ODE).
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.sde = sde
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.T = sde.T

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """f(x, t) - c g(t)^2 s(x, t), c = 1/2 for the ODE and 1 for the SDE."""
        t = _as_time(t, x)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        g2 = expand_as_batch(self.sde.diffusion(t) ** 2, x)
        c = 0.5 if self.probability_flow else 1.0
        return self.sde.drift(x, t) - c * g2 * self.score_fn(x, t)

    def diffusion(self, t: Tensor) -> Tensor:
        """g(t) for the SDE, zeros for the probability-flow ODE, ``[B]``."""
        g = self.sde.diffusion(_as_time(t))
        return torch.zeros_like(g) if self.probability_flow else g

    def discretize(self, x: Tensor, t: Tensor, dt: float) -> tuple[Tensor, Tensor]:
        """Reverse-diffusion step from t to t - dt (dt > 0): x_{t-dt} = x - f_d + G^2 s + G z.

        Uses the forward discretisation (f_d, G) of the SDE (score_sde's ReverseDiffusionPredictor).
        Returns the mean update ``-f_d + c G^2 s`` and ``G`` (zeros for the ODE).
        """
        t = _as_time(t, x)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        f_d, G = self.sde.discretize(x, t, dt)
        c = 0.5 if self.probability_flow else 1.0
        rev_f = -f_d + c * expand_as_batch(G**2, x) * self.score_fn(x, t)
        return rev_f, torch.zeros_like(G) if self.probability_flow else G


@gin.configurable(module="hybrids.sdes")
class VESDE(SDE):
    """Variance-exploding SDE: sigma(t) = sigma_min (sigma_max / sigma_min)^t, no drift.

    Args:
        sigma_min: sigma(0) (paper default 0.01, data in [-1, 1]).
        sigma_max: sigma(T), the prior std (paper default 50).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VESDE needs 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}.")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    def sigma(self, t: Tensor) -> Tensor:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t (the formula, defined for any t: no range
        check, unlike the SDE methods; ``discretize`` evaluates it at t - dt < 0)."""
        return self.sigma_min * torch.exp(_as_time(t) * self._log_ratio)

    def drift_coef(self, t: Tensor) -> Tensor:
        return torch.zeros_like(self.check_time(t))

    def diffusion(self, t: Tensor) -> Tensor:
        return self.sigma(self.check_time(t)) * math.sqrt(2 * self._log_ratio)

    def marginal_coefs(self, t: Tensor) -> Marginal:
        t = self.check_time(t)
        return Marginal(torch.ones_like(t), self.sigma(t))

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def t_for_std(self, std: Tensor | float) -> Tensor:
        """t = ln(std / sigma_min) / ln(sigma_max / sigma_min); std must lie in [sigma_min, sigma_max]."""
        std = _as_time(std)
        if not bool(((std >= self.sigma_min * (1 - 1e-6)) & (std <= self.sigma_max * (1 + 1e-6))).all()):
            raise ValueError(
                f"VESDE marginal stds lie in [sigma_min, sigma_max] = [{self.sigma_min}, "
                f"{self.sigma_max}] (sigma(0) = sigma_min, sigma(T) = sigma_max: times in [0, T] = "
                f"[0, {self.T}]); got {std.min().item()}..{std.max().item()}."
            )
        return torch.log(std / self.sigma_min) / self._log_ratio

    def t_for_noise_ratio(self, ratio: Tensor | float) -> Tensor:
        """m(t) = 1, so sigma(t) / m(t) = sigma(t): t = ln(r / sigma_min) / ln(sigma_max / sigma_min)."""
        ratio = _as_time(ratio)
        self._check_noise_ratio(ratio)
        return torch.log(ratio / self.sigma_min) / self._log_ratio

    def discretize(self, x: Tensor, t: Tensor, dt: float) -> tuple[Tensor, Tensor]:
        """SMLD step: f_d = 0, G = sqrt(sigma(t)^2 - sigma(t - dt)^2), with sigma(t - dt) := 0
        when t - dt <= 0 (score_sde's VESDE.discretize with adjacent continuous times)."""
        t = self.check_time(_as_time(t, x))
        sigma = self.sigma(t)
        prev = torch.where(t - dt > 0, self.sigma(t - dt), torch.zeros_like(sigma))
        return torch.zeros_like(x), torch.sqrt(sigma**2 - prev**2)


class _BetaSchedule(SDE):
    """Shared linear-beta schedule of VP and subVP: beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"{type(self).__name__} needs 0 < beta_min < beta_max; got {beta_min}, {beta_max}.")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def beta(self, t: Tensor) -> Tensor:
        """beta(t) = beta_min + t (beta_max - beta_min), ``[B]`` (the formula: no range check)."""
        return self.beta_min + _as_time(t) * (self.beta_max - self.beta_min)

    def integral_beta(self, t: Tensor) -> Tensor:
        """B(t) = int_0^t beta(s) ds = beta_min t + t^2 (beta_max - beta_min) / 2, ``[B]`` (the
        formula: no range check)."""
        t = _as_time(t)
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def t_for_integral_beta(self, b: Tensor) -> Tensor:
        """Inverse of B: the root t >= 0 of beta_min t + t^2 (beta_max - beta_min)/2 = b."""
        b = _as_time(b)
        d = self.beta_max - self.beta_min
        # (-beta_min + sqrt(beta_min^2 + 2 d b)) / d, written stably for small b.
        return 2 * b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * b))

    def drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(self.check_time(t))

    @property
    def prior_std(self) -> float:
        return 1.0

    def _check_std_open_unit(self, std: Tensor) -> None:
        """Stds of VP and subVP lie in (0, 1); NaN is rejected too."""
        if not bool(((std > 0) & (std < 1)).all()):
            raise ValueError(
                f"{type(self).__name__} marginal stds lie in (0, 1); got {std.min().item()}..{std.max().item()}."
            )

    def _check_time_of_std(self, t: Tensor, std: Tensor) -> Tensor:
        """Raise unless the times found for ``std`` lie within [0, T] (up to rounding)."""
        too_late = t > self.T + _time_tolerance(self.T, t.dtype)
        if bool(too_late.any()):
            sigma_T = float(self.marginal_coefs(torch.tensor(self.T, dtype=torch.float64)).std)
            raise ValueError(
                f"{type(self).__name__}: std {_describe_values(std[too_late])} is reached only at t = "
                f"{_describe_values(t[too_late])}, after T = {self.T}; stds of times in [0, T] lie in "
                f"(0, sigma(T)] = (0, {sigma_T:.6g}]."
            )
        return t

    def langevin_alpha(self, t: Tensor, dt: float) -> Tensor:
        return 1 - self.beta(self.check_time(t)) * dt


@gin.configurable(module="hybrids.sdes")
class VPSDE(_BetaSchedule):
    """Variance-preserving SDE (DDPM in continuous time): g(t) = sqrt(beta(t)).

    Args:
        beta_min: beta(0) (paper default 0.1).
        beta_max: beta(1) (paper default 20).
    """

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(self.check_time(t)))

    def discretize(self, x: Tensor, t: Tensor, dt: float) -> tuple[Tensor, Tensor]:
        """DDPM step (score_sde's VPSDE.discretize): with beta_i = beta(t) dt,
        f_d = (sqrt(1 - beta_i) - 1) x and G = sqrt(beta_i)."""
        t = self.check_time(_as_time(t, x))
        beta_i = self.beta(t) * dt
        return (expand_as_batch(torch.sqrt(1 - beta_i), x) - 1) * x, torch.sqrt(beta_i)

    def marginal_coefs(self, t: Tensor) -> Marginal:
        b = self.integral_beta(self.check_time(t))
        return Marginal(torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b)))

    def t_for_std(self, std: Tensor | float) -> Tensor:
        """Solve 1 - exp(-B(t)) = std^2 for t: B = -ln(1 - std^2), then invert B."""
        std = _as_time(std)
        self._check_std_open_unit(std)
        return self._check_time_of_std(self.t_for_integral_beta(-torch.log1p(-(std**2))), std)

    def t_for_noise_ratio(self, ratio: Tensor | float) -> Tensor:
        """sigma^2 / m^2 = exp(B) - 1 = ratio^2: B = ln(1 + ratio^2), then invert B."""
        ratio = _as_time(ratio)
        self._check_noise_ratio(ratio)
        return self.t_for_integral_beta(torch.log1p(ratio**2))


@gin.configurable(module="hybrids.sdes")
class SubVPSDE(_BetaSchedule):
    """Sub-VP SDE: g(t) = sqrt(beta(t) (1 - exp(-2 B(t)))), marginal std 1 - alpha_t^2.

    Args:
        beta_min: beta(0) (paper default 0.1).
        beta_max: beta(1) (paper default 20).
    """

    def diffusion(self, t: Tensor) -> Tensor:
        t = self.check_time(t)
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.integral_beta(t)))

    def marginal_coefs(self, t: Tensor) -> Marginal:
        b = self.integral_beta(self.check_time(t))
        return Marginal(torch.exp(-0.5 * b), -torch.expm1(-b))

    def t_for_std(self, std: Tensor | float) -> Tensor:
        """Solve 1 - exp(-B(t)) = std for t: B = -ln(1 - std), then invert B."""
        std = _as_time(std)
        self._check_std_open_unit(std)
        return self._check_time_of_std(self.t_for_integral_beta(-torch.log1p(-std)), std)

    def t_for_noise_ratio(self, ratio: Tensor | float) -> Tensor:
        """sigma / m = (1 - exp(-B)) / exp(-B/2) = 2 sinh(B/2) = ratio: B = 2 asinh(ratio / 2)."""
        ratio = _as_time(ratio)
        self._check_noise_ratio(ratio)
        return self.t_for_integral_beta(2 * torch.asinh(ratio / 2))


SDES = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}


def get_sde(name: str, **kwargs) -> SDE:
    """Build an SDE by name (``ve``, ``vp`` or ``subvp``) with paper defaults."""
    try:
        return SDES[name.lower()](**kwargs)
    except KeyError:
        raise ValueError(f"Unknown SDE {name!r}; choose one of {sorted(SDES)}.") from None


def default_sampling_eps(sde: SDE) -> float:
    """Final time of samplers (score_sde's choice): 1e-5 for VE, 1e-3 for VP and subVP."""
    return 1e-5 if isinstance(sde, VESDE) else 1e-3


def sde_of(model: object, sde: SDE | None = None, *, binding: str = "sde") -> SDE:
    """The SDE a tool should use for ``model``: ``sde`` when given, else ``model.sde``.

    Args:
        model: a model; score models and NCPNs carry the SDE they were trained with as ``.sde``.
        sde: an explicit SDE, which wins.
        binding: the gin parameter a user can bind instead (named in the error).

    Raises:
        ValueError: when neither gives a ``hybrids.sdes.SDE``.
    """
    found = sde if sde is not None else getattr(model, "sde", None)
    if not isinstance(found, SDE):
        raise ValueError(
            f"{type(model).__name__} has no `sde` attribute holding a hybrids.sdes.SDE (got "
            f"{type(found).__name__}); pass one, e.g. bind `{binding} = %SDE` in gin."
        )
    return found
