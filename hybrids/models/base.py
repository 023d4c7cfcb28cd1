"""The model contracts of hybrids: a model of densities or scores indexed by a noise level.

A :class:`NoiseConditionalModel` describes a family p_theta(x | t), t a diffusion time (t = 0 is
clean data). It offers what it can of:

* ``log_prob(x, t)``: continuous log-density in nats, ``[B]``;
* ``discrete_log_prob(k)``: log-probability of integer data at t = 0 in nats, ``[B]``;
* ``score(x, t)``: grad_x log p_theta(x | t), shaped like ``x``; by default the autograd
  gradient of ``log_prob``;
* ``conditional_scores(x, t)``: for autoregressive score models, the univariate scores
  s_d = d/dx_d log q(x_d | x_<d) and their diagonal derivatives ds_d/dx_d, both ``[B, D]``.

Two side contracts are declared here as subclasses, so that samplers check them with
``isinstance`` instead of probing attributes:

* :class:`ARConditionalScoreModel`: autoregressive conditional score models (AR-CSM; Meng, Yu,
  Song, Song and Ermon, "Autoregressive Score Matching", NeurIPS 2020): a variable order
  (``to_sequence``/``from_sequence``), causal contexts ``context(x, t)`` and a position-wise head
  ``head(x_d, c, t)``. ``hybrids.samplers.ar_langevin_sample`` needs it.
* :class:`AncestralMixtureModel`: autoregressive logistic-mixture models in raster order
  (``model(x, t) -> params``, ``num_levels``) with an optional incremental evaluator
  (``incremental_cache()``, see :class:`IncrementalCache` and :class:`PixelIncrementalCache`).
  ``hybrids.samplers.ancestral_sample`` needs it.

Objectives, samplers and likelihood tools take a model (or any ``score_fn(x, t)`` callable) and
an SDE; they never reach into a network's internals.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def check_time(x: Tensor, t: Tensor) -> Tensor:
    """Return ``t`` as a ``[B]`` tensor with the dtype and device of ``x``.

    Args:
        x: data, ``[B, ...]``.
        t: diffusion times, a scalar or ``[B]``.

    Raises:
        ValueError: if ``t`` is neither a scalar nor a vector of length B.
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(
            f"t must be a scalar or have shape [B] = [{x.shape[0]}] to match x of shape "
            f"{tuple(x.shape)}; got t of shape {tuple(t.shape)}."
        )
    return t


class NoiseConditionalModel(nn.Module):
    """Base class of every hybrids model: p_theta(x | t) or its score, t = 0 being clean data.

    Subclasses implement ``log_prob`` (density models) or override ``score`` (score models);
    autoregressive score models implement ``conditional_scores``. Whatever is not implemented
    raises ``NotImplementedError`` with a message naming the tools that apply instead.
    """

    def log_prob(self, x: Tensor, t: Tensor) -> Tensor:
        """Continuous log-density log p_theta(x | t).

        Args:
            x: data in model space, ``[B, ...]``.
            t: diffusion times, ``[B]`` (or a scalar).

        Returns:
            ``[B]`` log-densities in nats.
        """
        raise NotImplementedError(
            f"{type(self).__name__} is a score model and has no tractable log_prob. Use "
            "hybrids.likelihood.ode_log_prob (probability-flow ODE) or "
            "hybrids.likelihood.dsm_bound (an upper bound on -log p) with its score instead."
        )

    def discrete_log_prob(self, k: Tensor) -> Tensor:
        """Log-probability of integer data k at t = 0.

        Args:
            k: integer levels, ``[B, ...]``, values in {0, ..., K-1}.

        Returns:
            ``[B]`` log-probabilities in nats.
        """
        raise NotImplementedError(
            f"{type(self).__name__} defines no discrete likelihood. For a continuous density use "
            "log_prob on dequantized data (hybrids.data.dequantize) and convert with "
            "hybrids.likelihood.bits_per_dim, which gives an upper bound on the discrete bpd."
        )

    def score(self, x: Tensor, t: Tensor, *, create_graph: bool | None = None) -> Tensor:
        """grad_x log p_theta(x | t), by autograd of ``log_prob`` unless a subclass overrides it.

        Args:
            x: data in model space, ``[B, ...]``.
            t: diffusion times, ``[B]`` (or a scalar).
            create_graph: keep the graph of the gradient so that a loss on the score can be
                back-propagated to the parameters. ``None`` means "when grad mode is on"
                (``torch.is_grad_enabled()``), which is what training needs.

        Returns:
            Score, shaped like ``x``.
        """
        if create_graph is None:
            create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            x_in = x if (x.requires_grad and create_graph) else x.detach().requires_grad_(True)
            log_p = self.log_prob(x_in, t)
            (grad,) = torch.autograd.grad(log_p.sum(), x_in, create_graph=create_graph)
        return grad

    def conditional_scores(self, x: Tensor, t: Tensor | None) -> tuple[Tensor, Tensor]:
        """Univariate conditional scores of an autoregressive model and their diagonal slopes.

        Args:
            x: data, ``[B, D]`` (or ``[B, C, H, W]`` flattened in raster order by the model).
            t: diffusion times ``[B]``, or ``None`` for a model without noise conditioning.

        Returns:
            ``(s, ds_dx)``: s_d = d/dx_d log q(x_d | x_<d) and ds_d/dx_d, each shaped like ``x``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} is not an autoregressive score model; conditional_scores is "
            "offered by subclasses of hybrids.models.base.ARConditionalScoreModel "
            "(hybrids.models.made.MADEConditionalScore, "
            "hybrids.models.heads.PixelCNNConditionalScore)."
        )

    def score_fn(self) -> ScoreFn:
        """The model's score as a plain ``score_fn(x, t)`` callable for samplers and likelihoods."""
        return lambda x, t: self.score(x, t)


def as_score_fn(score_fn: "NoiseConditionalModel | ScoreFn") -> ScoreFn:
    """A ``NoiseConditionalModel`` becomes its ``score`` method; other callables pass through.

    Raises:
        TypeError: for anything that is neither.
    """
    if isinstance(score_fn, NoiseConditionalModel):
        return score_fn.score
    if not callable(score_fn):
        raise TypeError(f"score_fn must be a callable score_fn(x, t) or a NoiseConditionalModel; got {type(score_fn)}.")
    return score_fn


def diagonal_conditional_scores(
    head_fn: Callable[[Tensor], Tensor], x: Tensor, *, create_graph: bool | None = None
) -> tuple[Tensor, Tensor]:
    """s = head_fn(x) and its diagonal Jacobian ds_d/dx_d from ONE backward pass.

    ``head_fn`` must act position-wise on its argument (the causal context having been computed
    from ``x`` itself beforehand, so it carries no dependence on x_d for output d). The head input
    is x_in = x_leaf + (x - x.detach()): it has the value of x, keeps s differentiable in x (the
    naive reference, autograd of s_d w.r.t. x through the context AND the head, still works), and
    d sum_d s_d / d x_leaf = (ds_d / dx_d)_d because position d of the head sees x_leaf only at d.

    Args:
        head_fn: maps the head input ``[B, ...]`` to scores of the same shape.
        x: ``[B, ...]`` positions fed to the head.
        create_graph: keep the graph of ds/dx (training needs it); None means "when grad mode
            is on".

    Returns:
        ``(s, ds_dx)``, both shaped like x.
    """
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        x_leaf = x.detach().requires_grad_(True)
        x_in = x_leaf + (x - x.detach()) if x.requires_grad else x_leaf
        s = head_fn(x_in)
        (ds_dx,) = torch.autograd.grad(s.sum(), x_leaf, create_graph=create_graph)
    if not create_graph:
        ds_dx = ds_dx.detach()
        if not torch.is_grad_enabled():
            s = s.detach()
    return s, ds_dx


AR_CSM_SCORE_MESSAGE = (
    "{name} is an autoregressive conditional score model (AR-CSM): it gives the univariate "
    "scores s_d = d/dx_d log q(x_d | x_<d) only. The joint score grad_x log p(x) also needs the "
    "derivatives of log q(x_j | x_<j) with respect to x_d for j > d, which involve the unknown "
    "normalisers of the conditionals (each q(x_j | x_<j) is known only up to a constant that "
    "depends on x_<j). Use conditional_scores(x, t) instead."
)


class ARConditionalScoreModel(NoiseConditionalModel):
    """Contract of an autoregressive conditional score model (AR-CSM).

    Meng, Yu, Song, Song and Ermon, "Autoregressive Score Matching", NeurIPS 2020. The model fixes
    a variable order x_1, ..., x_D and parametrises each univariate conditional score as

        s_d(x) = d/dx_d log q(x_d | x_<d) = h(x_d, c_d),

    with a causal context c_d that depends on x_<d only and a head h that acts on each position
    separately. Subclasses implement:

    * ``context(x, t) -> [B, D, F]``: the causal contexts of sequences x ``[B, D]`` (models may
      also accept their data shape);
    * ``head(x_d, c, t) -> [B, K]``: s_d = h(x_d, c_d) for K positions at once, x_d ``[B, K]``,
      c ``[B, K, F]``; nothing mixes positions;

    and may override the variable order:

    * ``to_sequence(x) -> [B, D]``: data ``[B, ...]`` to sequences in the model's order (default:
      ``x.reshape(B, -1)``, raster order for one channel, channel-major for several);
    * ``from_sequence(x_seq, shape) -> [B, ...]``: the inverse (default: ``reshape(shape)``).

    From these the class provides ``conditional_scores(x, t)``: (s, ds/dx) for all d from one
    context pass and one backward pass (:func:`diagonal_conditional_scores`). The joint score is
    not available (``score`` raises). ``hybrids.samplers.ar_langevin_sample`` samples any subclass
    one dimension at a time, calling ``context`` once per dimension and only ``head`` inside.
    """

    def context(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Causal contexts c_d, each a function of x_<d (and t) only.

        Args:
            x: sequences ``[B, D]`` in the model's order.
            t: diffusion times ``[B]``, or ``None`` for a model without noise conditioning.

        Returns:
            ``[B, D, F]`` contexts.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement context(x, t).")

    def head(self, x_d: Tensor, c: Tensor, t: Tensor | None = None) -> Tensor:
        """Position-wise conditional scores s_d = h(x_d, c_d).

        Args:
            x_d: ``[B, K]`` values of the K positions being scored.
            c: ``[B, K, F]`` their contexts (slices of ``context``).
            t: diffusion times ``[B]``, or ``None`` for a model without noise conditioning.

        Returns:
            ``[B, K]`` scores.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement head(x_d, c, t).")

    def to_sequence(self, x: Tensor) -> Tensor:
        """Data ``[B, ...]`` -> sequences ``[B, D]`` in the model's variable order.

        The default flattens each example (``x.reshape(B, -1)``): raster order for one channel.

        Raises:
            ValueError: if x has no batch dimension and feature dimension.
        """
        if x.ndim < 2:
            raise ValueError(
                f"expected x of shape [B, ...] with at least 2 dimensions, got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], -1)

    def from_sequence(self, x_seq: Tensor, shape: Sequence[int] | None = None) -> Tensor:
        """Sequences ``[B, D]`` in the model's order -> data of shape ``shape``.

        Args:
            x_seq: ``[B, D]``.
            shape: the full shape ``[B, ...]`` to return (the input shape of ``to_sequence``).
                ``None``: the model's own data shape where it has one; the default keeps
                ``[B, D]``.

        Returns:
            ``x_seq`` laid out as ``shape``; the default is ``x_seq.reshape(shape)``, the inverse
            of the default ``to_sequence``.
        """
        return x_seq if shape is None else x_seq.reshape(tuple(shape))

    def conditional_scores(
        self, x: Tensor, t: Tensor | None = None, *, create_graph: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        """Univariate conditional scores and their diagonal derivatives.

        ``x_seq = to_sequence(x)``, ``c = context(x_seq, t)``, then (s, ds/dx) of
        ``head(., c, t)`` at x_seq by :func:`diagonal_conditional_scores`, laid out like x by
        ``from_sequence``.

        Args:
            x: ``[B, D]`` sequences or data in the model's shape (e.g. ``[B, C, H, W]``).
            t: ``[B]`` times for a noise-conditional model, else None.
            create_graph: keep the graph of ds/dx (None: when grad mode is on).

        Returns:
            ``(s, ds_dx)`` shaped like x: s_d = h(x_d, c_d) and ds_d/dx_d = dh/dx_d.
        """
        x_seq = self.to_sequence(x)
        c = self.context(x_seq, t)
        s, ds = diagonal_conditional_scores(
            lambda v: self.head(v, c, t), x_seq, create_graph=create_graph
        )
        return self.from_sequence(s, x.shape), self.from_sequence(ds, x.shape)

    def score(self, x: Tensor, t: Tensor | None = None, **kwargs) -> Tensor:
        """Not available for AR-CSM; see :meth:`conditional_scores`.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(AR_CSM_SCORE_MESSAGE.format(name=type(self).__name__))


@runtime_checkable
class IncrementalCache(Protocol):
    """Interface of an incremental evaluator of an :class:`AncestralMixtureModel`.

    Ancestral sampling changes one pixel at a time; a cache recomputes only what depends on it
    (``hybrids.models.pixelcnnpp_incremental.IncrementalPixelCNN`` for PixelCNN++ and NCPN, in
    the style of Ramachandran et al., "Fast Generation for Convolutional Autoregressive Models",
    ICLR 2017 workshop). ``params(r)`` must equal the rows <= r of ``model(x, t)`` for the
    current x.
    """

    def reset(self, x: Tensor, t: Tensor | float | None = None) -> None:
        """Start from input ``x [B, C, H, W]`` (copied) at times ``t [B]``."""

    def params(self, up_to_row: int | None = None) -> Tensor:
        """Mixture params ``[B, P, H, W]`` whose rows <= ``up_to_row`` (None: all) are current."""

    def set_pixel(self, row: int, col: int, value: Tensor) -> None:
        """Set input pixel (row, col) to ``value [B, C]``."""


@runtime_checkable
class PixelIncrementalCache(IncrementalCache, Protocol):
    """An :class:`IncrementalCache` that also evaluates single pixels.

    ``pixel_params(r, c)`` must equal pixel (r, c) of ``model(x, t)`` for the current x; asked
    for pixel after pixel in raster order, each set before the next is asked for, a cache can
    compute about one position per layer per pixel instead of a row.
    """

    def pixel_params(self, row: int, col: int) -> Tensor:
        """Mixture params ``[B, P]`` of pixel (row, col)."""


class AncestralMixtureModel(NoiseConditionalModel):
    """Contract of a logistic-mixture model that can be sampled pixel by pixel.

    ``model(x, t) -> params``: for x ``[B, C, H, W]`` in model space and t ``[B]``, the parameters
    ``[B, P, H, W]`` of a (discretized) logistic mixture per pixel, P =
    ``hybrids.distributions.num_mixture_params(C, n)``, with channel coupling R -> G -> B inside
    the mixture (Salimans, Karpathy, Chen and Kingma, "PixelCNN++", ICLR 2017). The params of
    pixel j must depend on the pixels before j in raster order only (never on pixel j itself).
    ``hybrids.samplers.ancestral_sample`` samples any subclass.

    Attributes:
        num_levels: K, the number of levels of the discrete data (None: unknown; discrete
            sampling then needs an explicit ``num_levels``).
    """

    num_levels: int | None = None

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Mixture params ``[B, P, H, W]`` of ``x [B, C, H, W]`` at times ``t [B]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x, t).")

    def incremental_cache(self) -> IncrementalCache | None:
        """A fresh incremental evaluator of this model in its current state, or None.

        The default is None: the sampler then runs full forward passes (skipping those after a
        pixel that kept its placeholder value). Models return None where their cache does not
        apply (e.g. PixelCNN++ in train mode, where dropout is active).
        """
        return None
