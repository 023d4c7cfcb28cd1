"""The one abstraction of hybrids: a model of densities or scores indexed by a noise level.

A `NoiseConditionalModel` describes a family p_theta(x | t), t a diffusion time (t = 0 is clean
data). It offers what it can of:

* ``log_prob(x, t)``: continuous log-density in nats, ``[B]``;
* ``discrete_log_prob(k)``: log-probability of integer data at t = 0 in nats, ``[B]``;
* ``score(x, t)``: grad_x log p_theta(x | t), shaped like ``x``; by default the autograd
  gradient of ``log_prob``;
* ``conditional_scores(x, t)``: for autoregressive score models, the univariate scores
  s_d = d/dx_d log q(x_d | x_<d) and their diagonal derivatives ds_d/dx_d, both ``[B, D]``.

Objectives, samplers and likelihood tools take a model (or any ``score_fn(x, t)`` callable) and
an SDE; they never reach into a network's internals.
"""
from __future__ import annotations

from typing import Callable

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
            "offered by hybrids.models.made.MADEConditionalScore and the PixelCNN++ "
            "conditional-score head."
        )

    def score_fn(self) -> ScoreFn:
        """The model's score as a plain ``score_fn(x, t)`` callable for samplers and likelihoods."""
        return lambda x, t: self.score(x, t)
