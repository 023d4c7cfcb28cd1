"""MADE (masked autoencoder for distribution estimation) for AR-CSM and MLE.

Germain, Gregor, Murray and Larochelle, "MADE: Masked Autoencoder for Distribution Estimation",
ICML 2015. Natural variable order x_1, ..., x_D. Images ``[B, C, H, W]`` are flattened with
``x.reshape(B, -1)`` (raster order for C = 1) and results are returned in the input's shape.

* :class:`MADE`: masked MLP giving causal features c_d ``[B, D, F]``; c_d depends on x_<d only.
* :class:`MADEConditionalScore`: an autoregressive conditional score model (Meng, Yu, Song, Song
  and Ermon, "Autoregressive Score Matching", NeurIPS 2020), s_d = h(x_d, c_d); it implements
  :class:`hybrids.models.base.ARConditionalScoreModel`.
* :class:`MADEJointScore`: the joint-score counterpart of :class:`MADEConditionalScore` (the same
  network with its masks removed), s(x) in R^D, for the joint score matching objectives (SM, SSM,
  SSM-VR, DSM), so that a comparison with composite score matching changes only the objective.
* :class:`MADEDensity`: the maximum-likelihood baselines with continuous ``log_prob`` and
  ``discrete_log_prob``; the form of the conditionals p(x_d | x_<d) is a head object chosen once
  from the ``conditional`` argument: :class:`GaussianConditional` or
  :class:`LogisticMixtureConditional` (``CONDITIONALS``).

Discretization (shared by both heads): level k in {0..K-1} is the bin [c_k - delta, c_k + delta]
around c_k = 2k/(K-1) - 1 (``hybrids.data.level_values``), delta = 1/(K-1), the end bins being
open (-inf, c_0 + delta] and [c_{K-1} - delta, inf); the bins partition the real line, so the K
masses of a position sum to 1.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import gin
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybrids.data import level_values
from hybrids.distributions import (
    discretized_logistic_mixture_log_prob,
    logistic_mixture_log_prob,
    sample_logistic_mixture,
)
from hybrids.models.base import ARConditionalScoreModel, NoiseConditionalModel, check_time
from hybrids.models.heads import ConditionalScoreHead, smooth_activation
from hybrids.sdes import SDE
from hybrids.tensors import model_device, model_dtype, randn


class MaskedLinear(nn.Linear):
    """y = x (W * M)^T + b with a fixed binary mask M ``[out, in]``."""

    def __init__(self, mask: Tensor, bias: bool = True):
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked MLP whose output group d (F features) depends only on x_<d.

    Degrees: input d has degree d + 1 (d = 0..D-1), hidden units cycle through 1..D-1, and output
    group d has degree d + 1. A hidden unit of degree m sees inputs of degree <= m; output group d
    sees hidden units of degree <= d and, through a direct masked linear path, inputs x_j, j < d.
    c_0 is therefore a learned constant.

    Args:
        dim: D.
        out_features: F, features per position.
        hidden: hidden widths.
        activation: 'softplus', 'elu' or 'silu'.
        time_embedding: if True, t ``[B]`` enters every hidden layer through a linear map of t
            (t itself is embedded, so t = 0 is well defined).
    """

    def __init__(
        self,
        dim: int,
        out_features: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "softplus",
        time_embedding: bool = False,
    ):
        super().__init__()
        if dim < 1 or out_features < 1 or any(h < 1 for h in hidden):
            raise ValueError(
                f"MADE needs dim >= 1, out_features >= 1 and positive hidden widths; got "
                f"dim={dim}, out_features={out_features}, hidden={tuple(hidden)}"
            )
        self.dim, self.out_features = dim, out_features
        deg_in = torch.arange(1, dim + 1)
        deg_out = torch.arange(1, dim + 1).repeat_interleave(out_features)
        degrees = [deg_in] + [torch.arange(h) % max(dim - 1, 1) + 1 for h in hidden]
        self.layers = nn.ModuleList(
            MaskedLinear((d_next[:, None] >= d_prev[None, :]).long())
            for d_prev, d_next in zip(degrees[:-1], degrees[1:])
        )
        self.output = MaskedLinear((deg_out[:, None] > degrees[-1][None, :]).long())
        self.direct = MaskedLinear((deg_out[:, None] > deg_in[None, :]).long(), bias=False)
        self.act = smooth_activation(activation)
        self.time_layers = (
            nn.ModuleList(nn.Linear(1, h) for h in hidden) if time_embedding else None
        )

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Causal features.

        Args:
            x: ``[B, D]``.
            t: ``[B]`` times (required iff the MADE has a time embedding).

        Returns:
            ``[B, D, F]``; entry d depends on x_<d (and t) only.
        """
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MADE expects x of shape [B, {self.dim}], got {tuple(x.shape)}")
        if (self.time_layers is None) != (t is None):
            raise ValueError(
                "pass t exactly when the model is noise conditional "
                f"(time embedding {'on' if self.time_layers is not None else 'off'}, "
                f"got t={'None' if t is None else 'a tensor'})"
            )
        h = x
        for i, layer in enumerate(self.layers):
            pre = layer(h)
            if self.time_layers is not None:
                pre = pre + self.time_layers[i](check_time(x, t)[:, None])
            h = self.act(pre)
        out = self.output(h) + self.direct(x)
        return out.reshape(x.shape[0], self.dim, self.out_features)


def _flatten(x: Tensor, dim: int) -> Tensor:
    """``[B, D]`` or ``[B, C, H, W]`` with C H W = D -> ``[B, D]``."""
    if x.ndim < 2 or math.prod(x.shape[1:]) != dim:
        raise ValueError(
            f"expected x of shape [B, {dim}] or an image [B, C, H, W] with C*H*W = {dim}; "
            f"got {tuple(x.shape)}"
        )
    return x.reshape(x.shape[0], dim)


@gin.configurable(module="hybrids.models")
class MADEConditionalScore(ARConditionalScoreModel):
    """AR-CSM on MADE: s_d(x) = h(x_d, c_d) with c = MADE(x), the head h shared over positions.

    ``conditional_scores`` (from :class:`hybrids.models.base.ARConditionalScoreModel`) returns
    s_d and ds_d/dx_d for all d from one forward and one backward pass, shaped like its input.
    The variable order is the natural one: ``to_sequence`` flattens ``[B, D]`` or images
    ``[B, C, H, W]`` with C H W = D by ``reshape``. The joint score is not available (``score``
    raises).

    Args:
        dim: D (784 for MNIST images, 2 for toys).
        hidden: MADE hidden widths.
        context_features: F, width of c_d.
        head_hidden: hidden widths of h.
        activation: 'softplus', 'elu' or 'silu' (smooth; used in MADE and h).
        noise_conditional: if True the MADE embeds t, and ``conditional_scores`` needs t.
        sde: optional SDE of a noise-conditional model; when given, s is divided by the marginal
            std sigma(t) (the usual score preconditioning, which leaves the head's output O(1)).
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (256, 256),
        context_features: int = 16,
        head_hidden: Sequence[int] = (64, 64),
        activation: str = "softplus",
        noise_conditional: bool = False,
        sde: SDE | None = None,
    ):
        super().__init__()
        if sde is not None and not noise_conditional:
            raise ValueError("an sde is only used by a noise_conditional model; set both or neither")
        self.dim = dim
        self.noise_conditional = noise_conditional
        self.sde = sde
        self.made = MADE(dim, context_features, hidden, activation, time_embedding=noise_conditional)
        self.score_head = ConditionalScoreHead(context_features, head_hidden, activation)

    def _time(self, x: Tensor, t: Tensor | None) -> Tensor | None:
        if not self.noise_conditional:
            return None
        if t is None:
            raise ValueError("this MADEConditionalScore is noise conditional: pass t [B]")
        return check_time(x, t)

    def to_sequence(self, x: Tensor) -> Tensor:
        """``[B, D]`` or an image ``[B, C, H, W]`` with C H W = D -> ``[B, D]`` (raster order).

        Raises:
            ValueError: if x does not hold D values per example.
        """
        return _flatten(x, self.dim)

    def context(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Causal contexts c ``[B, D, F]`` of x ``[B, D]`` (or an image); c_d depends on x_<d."""
        x = self.to_sequence(x)
        return self.made(x, self._time(x, t))

    def head(self, x_d: Tensor, c: Tensor, t: Tensor | None = None) -> Tensor:
        """s_d = h(x_d, c_d) for x_d ``[B, K]`` and c ``[B, K, F]``; returns ``[B, K]``."""
        s = self.score_head(x_d, c)
        if self.sde is not None:
            s = s / self.sde.marginal_coefs(self._time(x_d, t)).std[:, None]
        return s


@gin.configurable(module="hybrids.models")
class MADEJointScore(NoiseConditionalModel):
    """The joint score s(x) in R^D from the network of a :class:`MADEConditionalScore`, unmasked.

    s_d(x) = h(x_d, c_d(x)) with c = MADE(x) ``[B, D, F]`` computed with every mask of the MADE
    (hidden, output and direct layers) set to one, and the shared per-position head h of the
    template (with its sigma(t) preconditioning for a noise-conditional template).

    Why this is the fair counterpart of the AR-CSM model in a comparison of objectives (Meng, Yu,
    Song, Song and Ermon, "Autoregressive Score Matching", NeurIPS 2020, compare composite score
    matching with SM, SSM and DSM): the layers, their sizes, the activation, the head, the
    parameter count and the cost of a forward pass are the template's, and the initial weights
    are the template's own (a copy), so a gin row that builds its template after the Trainer has
    seeded torch starts from exactly the weights of the CSM row with the same seed. Only what the
    masks impose changes, and it must: read as a joint score, the masked network's Jacobian
    ds_d/dx_j would vanish for j > d (triangular), and a gradient field has a symmetric Jacobian,
    so the masked network could only represent scores of independent coordinates. Unmasked, every
    s_d depends on all of x; the model is not autoregressive (``conditional_scores`` raises, and
    ``hybrids.samplers.ar_langevin_sample`` refuses it).

    gin::

        experiment.model = @MADEJointScore()
        MADEJointScore.template = @MADEConditionalScore()   # sizes bound on MADEConditionalScore

    Args:
        template: the AR-CSM model whose network is copied (the template itself is not changed).

    Raises:
        TypeError: for a template that is not a :class:`MADEConditionalScore`.
    """

    def __init__(self, template: MADEConditionalScore = gin.REQUIRED):
        super().__init__()
        if not isinstance(template, MADEConditionalScore):
            raise TypeError(
                f"MADEJointScore.template must be a MADEConditionalScore (bind "
                f"`MADEJointScore.template = @MADEConditionalScore()`); got {type(template).__name__}."
            )
        self.network = copy.deepcopy(template)
        made = self.network.made
        for layer in (*made.layers, made.output, made.direct):
            layer.mask.fill_(1.0)
        self.dim = template.dim
        self.noise_conditional = template.noise_conditional
        self.sde = template.sde

    def score(self, x: Tensor, t: Tensor | None = None, *, create_graph: bool | None = None) -> Tensor:
        """s(x, t), shaped like ``x`` (``create_graph`` is unused: the score is a forward pass).

        Args:
            x: ``[B, D]`` or an image ``[B, C, H, W]`` with C H W = D.
            t: ``[B]`` times for a noise-conditional template, else None (ignored).

        Returns:
            s_d = h(x_d, c_d(x)) for all d, laid out like ``x``.
        """
        x_seq = _flatten(x, self.dim)
        c = self.network.context(x_seq, t)
        return self.network.head(x_seq, c, t).reshape(x.shape)


_NARROW_BIN = 1e-3
"""Bins whose CDF ratio Phi(a)/Phi(b) exceeds exp(-1e-3) use the midpoint rule (_log_gaussian_bin_mass)."""


def _log_gaussian_bin_mass(mu: Tensor, log_sigma: Tensor, k: Tensor, num_levels: int) -> Tensor:
    """log of the N(mu, sigma^2) mass of bin k: [c_k - delta, c_k + delta], end bins open.

    c_k = 2k/(K-1) - 1, delta = 1/(K-1) (see the module docstring). The difference of normal
    CDFs is taken on the side of the mean where both tails are small (reflection about mu) in log
    space, which keeps far-tail masses accurate; a bin far narrower than sigma (where the two CDFs
    agree to the dtype's precision) takes the midpoint rule phi(mid) (b - a) instead.

    Args:
        mu, log_sigma: ``[B, D]``.
        k: ``[B, D]`` int64 levels.
        num_levels: K.

    Returns:
        ``[B, D]`` log-masses (the K masses of each position sum to 1).
    """
    centre = level_values(k, num_levels, dtype=mu.dtype)
    delta = 1.0 / (num_levels - 1)
    inv_sigma = torch.exp(-log_sigma)
    inf = torch.full_like(mu, math.inf)
    lo = torch.where(k == 0, -inf, (centre - delta - mu) * inv_sigma)
    hi = torch.where(k == num_levels - 1, inf, (centre + delta - mu) * inv_sigma)
    flip = (lo + hi) > 0  # bin mostly above the mean: use Phi(-lo) - Phi(-hi)
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    log_ratio = (log_a - log_b).clamp(max=0.0)  # log Phi(a) - log Phi(b) <= 0
    exact = log_b + torch.log((-torch.expm1(log_ratio)).clamp(min=torch.finfo(mu.dtype).tiny))
    # A bin far narrower than sigma: Phi(a) and Phi(b) agree to the dtype's precision (float32 at
    # sigma ~ 1e5 gives log 0), so use the midpoint rule phi(mid) (b - a), whose relative error is
    # O((b - a)^2) and tiny exactly where the difference of CDFs cannot be resolved.
    width = b - a
    narrow = torch.isfinite(width) & (log_ratio > -_NARROW_BIN)
    mid = torch.where(narrow, 0.5 * (a + b), torch.zeros_like(a))
    midpoint = -0.5 * mid**2 - 0.5 * math.log(2 * math.pi) + torch.log(torch.where(narrow, width, torch.ones_like(width)))
    return torch.where(narrow, midpoint, exact)


def _as_image_params(p: Tensor) -> Tensor:
    """``[B, D, 3n]`` -> ``[B, 3n, D, 1]``: the one-channel image layout of hybrids.distributions."""
    return p.permute(0, 2, 1).unsqueeze(-1)


class MADEConditional:
    """A family of univariate conditionals p(x_d | x_<d) = p(x_d; theta_d) for :class:`MADEDensity`.

    The MADE outputs ``num_features`` parameters theta_d per position, a function of x_<d only;
    the head turns them into log-densities, bin log-masses and draws. Subclasses set ``name`` (the
    value of ``MADEDensity``'s ``conditional`` argument) and ``num_features``.
    """

    name: str = ""
    num_features: int = 0

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """Continuous log-density of x.

        Args:
            params: ``[B, D, P]`` parameters (P = ``num_features``).
            x: ``[B, D]`` values.

        Returns:
            ``[B]`` log p(x) = sum_d log p(x_d; theta_d), in nats.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement log_prob.")

    def discrete_log_prob(self, params: Tensor, k: Tensor, num_levels: int) -> Tensor:
        """Log-probability of integer levels: the masses of bins [c_k - delta, c_k + delta].

        Args:
            params: ``[B, D, P]`` parameters, computed from the level values c_k of k.
            k: ``[B, D]`` int64 levels in {0..K-1}.
            num_levels: K.

        Returns:
            ``[B]`` log P(k) in nats.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement discrete_log_prob.")

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One draw x_d ~ p(x_d; theta_d) per example.

        Args:
            params: ``[B, P]`` parameters of one position.
            generator: random source (draws are made on its device, then moved to params').

        Returns:
            ``[B]`` continuous values in params' dtype.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement sample.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


LOG_SIGMA_MIN = -7.0
"""Lower clamp of a Gaussian conditional's log sigma (PixelCNN++ clamps its log scales at the same
value). Without it a confident model drives sigma to 0 and, in float32, the mass of a bin a few
thousand sigmas away underflows to 0 (log mass -inf: training stops with an infinite loss); at
sigma = e^-7 the farthest bin of [-1, 1] is about 2 200 sigmas away, log mass about -2.4e6, finite."""


class GaussianConditional(MADEConditional):
    """x_d | x_<d ~ N(mu_d, sigma_d^2), theta_d = (mu_d, log sigma_d): ``num_features = 2``.

    log sigma_d is clamped below at :data:`LOG_SIGMA_MIN` in every method, so the density, the
    bin masses and the draws belong to one model."""

    name = "gaussian"
    num_features = 2

    @staticmethod
    def _unpack(params: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_sigma = params.unbind(-1)
        return mu, log_sigma.clamp(min=LOG_SIGMA_MIN)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """sum_d log N(x_d; mu_d, sigma_d^2), ``[B]`` (see :meth:`MADEConditional.log_prob`)."""
        mu, log_sigma = self._unpack(params)
        z = (x - mu) * torch.exp(-log_sigma)
        lp = -0.5 * z**2 - log_sigma - 0.5 * math.log(2 * math.pi)
        return lp.sum(-1)

    def discrete_log_prob(self, params: Tensor, k: Tensor, num_levels: int) -> Tensor:
        """sum_d log of the normal mass of bin k_d, ``[B]``, accurate in the far tails."""
        mu, log_sigma = self._unpack(params)
        return _log_gaussian_bin_mass(mu, log_sigma, k, num_levels).sum(-1)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_d = mu_d + sigma_d z, z ~ N(0, 1): one normal draw per example, ``[B]``."""
        z = randn(params.shape[:1], generator, dtype=params.dtype, device=params.device)
        mu, log_sigma = self._unpack(params)
        return mu + torch.exp(log_sigma) * z


class LogisticMixtureConditional(MADEConditional):
    """x_d | x_<d ~ a mixture of ``nr_mix`` logistics (the PixelCNN++ parametrisation of
    ``hybrids.distributions``: logits, means, log scales): ``num_features = 3 nr_mix``.

    Args:
        nr_mix: number of mixture components n.
    """

    name = "logistic_mixture"

    def __init__(self, nr_mix: int = 10):
        if int(nr_mix) < 1:
            raise ValueError(f"nr_mix must be >= 1, got {nr_mix}")
        self.nr_mix = int(nr_mix)
        self.num_features = 3 * self.nr_mix

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """Log-density of the mixture, ``[B]`` (see :meth:`MADEConditional.log_prob`)."""
        return logistic_mixture_log_prob(_as_image_params(params), x[:, None, :, None])

    def discrete_log_prob(self, params: Tensor, k: Tensor, num_levels: int) -> Tensor:
        """Discretized logistic-mixture log-mass, ``[B]``."""
        return discretized_logistic_mixture_log_prob(
            _as_image_params(params), k[:, None, :, None], num_levels
        )

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One mixture draw per example, ``[B]`` (``sample_logistic_mixture`` of
        ``hybrids.distributions``)."""
        x_d = sample_logistic_mixture(params[:, :, None, None], generator, num_channels=1)
        return x_d.reshape(params.shape[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(nr_mix={self.nr_mix})"


CONDITIONALS: dict[str, Callable[[int], MADEConditional]] = {
    "gaussian": lambda nr_mix: GaussianConditional(),
    "logistic_mixture": LogisticMixtureConditional,
}
"""The values of ``MADEDensity``'s ``conditional`` argument and the heads they build from
``nr_mix``."""


@gin.configurable(module="hybrids.models")
class MADEDensity(NoiseConditionalModel):
    """Maximum-likelihood MADE baseline: normalised conditionals p(x_d | x_<d).

    'gaussian': x_d | x_<d ~ N(mu_d, sigma_d^2) (:class:`GaussianConditional`);
    'logistic_mixture': a mixture of ``nr_mix`` logistics (:class:`LogisticMixtureConditional`).
    Both define a continuous density (``log_prob``, t ignored) and a discrete one
    (``discrete_log_prob``): the mass of each bin [c_k - delta, c_k + delta] with open end bins,
    c_k = 2k/(K-1) - 1 (see the module docstring).

    Args:
        dim: D.
        conditional: 'gaussian' or 'logistic_mixture' (the keys of ``CONDITIONALS``).
        nr_mix: mixture components (logistic mixture only).
        hidden: MADE hidden widths.
        activation: MADE activation.
        num_levels: K for ``discrete_log_prob``.

    Attributes:
        distribution: the head object (a :class:`MADEConditional`) chosen from ``conditional``.
    """

    def __init__(
        self,
        dim: int,
        conditional: str = "gaussian",
        nr_mix: int = 10,
        hidden: Sequence[int] = (256, 256),
        activation: str = "softplus",
        num_levels: int = 256,
    ):
        super().__init__()
        if conditional not in CONDITIONALS:
            raise ValueError(
                f"conditional must be 'gaussian' or 'logistic_mixture', got {conditional!r}"
            )
        self.dim, self.conditional, self.nr_mix, self.num_levels = dim, conditional, nr_mix, num_levels
        self.distribution: MADEConditional = CONDITIONALS[conditional](nr_mix)
        self.made = MADE(dim, self.distribution.num_features, hidden, activation)

    def params(self, x: Tensor) -> Tensor:
        """Per-position parameters ``[B, D, P]`` of p(x_d | x_<d) for x ``[B, D]``."""
        return self.made(x)

    def log_prob(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Continuous log-density ``[B]`` (nats) of x ``[B, D]`` or an image; t is ignored."""
        x = _flatten(x, self.dim)
        return self.distribution.log_prob(self.params(x), x)

    def discrete_log_prob(self, k: Tensor) -> Tensor:
        """log P(k) ``[B]`` (nats) of integer levels ``[B, D]`` or ``[B, C, H, W]``.

        The conditioning values are the bin centres c_k = 2k/(K-1) - 1 of the preceding levels.

        Raises:
            TypeError: for floating-point k.
            ValueError: for levels outside {0..K-1} or a wrong number of values.
        """
        if k.dtype.is_floating_point:
            raise TypeError(f"discrete_log_prob expects integer levels, got dtype {k.dtype}")
        if k.min() < 0 or k.max() >= self.num_levels:
            raise ValueError(f"levels must lie in [0, {self.num_levels - 1}]")
        k = _flatten(k, self.dim)
        x = level_values(k, self.num_levels, dtype=model_dtype(self))
        return self.distribution.discrete_log_prob(self.params(x), k, self.num_levels)

    @torch.no_grad()
    def sample(
        self, num_samples: int, generator: torch.Generator | None = None, *, discrete: bool = True
    ) -> Tensor:
        """Ancestral samples, one MADE pass per dimension.

        Continuous: x_d ~ p(x_d | x_<d). Discrete: x_d is drawn from the continuous conditional
        and mapped to its bin k_d = round((x_d + 1)(K - 1) / 2) (clamped), which draws k_d from
        exactly the bin masses of ``discrete_log_prob``; later positions condition on the bin
        centre c_k, as ``discrete_log_prob`` does.

        Args:
            num_samples: N.
            generator: random source.
            discrete: return int64 levels (else float model-space values).

        Returns:
            ``[N, D]`` int64 levels in {0..K-1} or floats.
        """
        x = torch.zeros(num_samples, self.dim, dtype=model_dtype(self), device=model_device(self))
        for d in range(self.dim):
            x_d = self.distribution.sample(self.params(x)[:, d], generator)
            if discrete:
                k_d = torch.round((x_d + 1) * (self.num_levels - 1) / 2).clamp(0, self.num_levels - 1)
                x_d = level_values(k_d, self.num_levels, dtype=x.dtype)
            x[:, d] = x_d
        if discrete:
            return torch.round((x + 1) * (self.num_levels - 1) / 2).long()
        return x
