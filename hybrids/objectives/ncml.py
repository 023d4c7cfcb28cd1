"""Noise-conditional maximum likelihood (NCML).

"Noise-conditional Maximum Likelihood Estimation with Score-based Sampling", NeurIPS 2022
Workshop on Score-Based Methods (anonymous submission).

Maximise E_{t ~ mu} E_{x_t ~ p_t} log p_theta(x_t | t), with

    mu = p_zero delta_0 + (1 - p_zero) U(0, t_max].

* t = 0: the integer data k are scored by the discretized likelihood ``model.discrete_log_prob(k)``
  (what Table 1's NLL measures); for continuous data (``num_levels=None``) by
  ``model.log_prob(x, 0)``.
* t > 0: k is dequantized, x_0 = 2 (k + u) / K - 1 (``hybrids.data.dequantize``), perturbed by the SDE,
  x_t = m(t) x_0 + sigma(t) z (``hybrids.objectives.perturb.perturb``), and scored by the continuous
  density ``model.log_prob(x_t, t)``.

Loss: mean over the batch of -log p / (D ln 2), i.e. bits per dimension for the t = 0 part (the
discrete likelihood) and -log p_theta(x_t | t) / (D ln 2) of the continuous density for t > 0 (no
dequantization offset: it is not a pixel-space likelihood). With ``p_zero = 1`` NCML is ``MLE``.

Default ``p_zero = 0.5`` (the paper gives no value): half of each batch trains the clean
discrete likelihood that Table 1 reports and half the noisy densities whose scores drive the
hybrid sampler; an equal split gives both expectations the same number of examples, so neither
term's gradient is starved, and it keeps the t = 0 model (ancestral sampling, the pi test) trained
at half the rate of plain MLE rather than at the rate of one noise level among a continuum.

t_max defaults (the paper's appendix A.1): VE 0.5, VP 0.1, subVP 0.025. The paper says these give a
per-pixel noise std of about 10 levels; they do not: the marginal stds are 0.707 (VE), 0.322 (VP)
and 0.0087 (subVP) in [-1, 1] units, about 90, 41 and 1.1 levels of 8-bit data
(``pixel_std_of``). ``t_for_pixel_std`` picks t from a target std instead (10 levels: t = 0.242
VE, 0.0204 VP, 0.0857 subVP).
"""
from __future__ import annotations

from typing import Any

import gin
import torch
from torch import Tensor, nn

from hybrids.data.transforms import to_model_space
from hybrids.likelihood.units import nats_to_bpd
from hybrids.objectives.batches import batch_data, check_data
from hybrids.objectives.perturb import perturb
from hybrids.sdes import SDE, SubVPSDE, VESDE, VPSDE
from hybrids.tensors import model_dtype, rand

PAPER_T_MAX: dict[type, float] = {VESDE: 0.5, VPSDE: 0.1, SubVPSDE: 0.025}
"""T_ncml of the NCML paper (appendix A.1), keyed by SDE class."""


def default_t_max(sde: SDE) -> float:
    """The paper's T_ncml for ``sde`` (VE 0.5, VP 0.1, subVP 0.025).

    Raises:
        TypeError: for an SDE class without a paper value (pass ``t_max`` explicitly).
    """
    for cls, value in PAPER_T_MAX.items():
        if type(sde) is cls:
            return value
    raise TypeError(
        f"No paper T_ncml for {type(sde).__name__}; known: {[c.__name__ for c in PAPER_T_MAX]}. "
        "Pass t_max explicitly (e.g. from t_for_pixel_std)."
    )


def pixel_std_of(sde: SDE, t: float | Tensor, num_levels: int = 256) -> Tensor:
    """Marginal noise std sigma(t) in pixel levels: sigma(t) (K - 1) / 2 (model space [-1, 1]).

    Args:
        sde: the SDE.
        t: time(s), a float or a tensor.
        num_levels: K.

    Returns:
        Tensor like ``t`` (float64 for a Python float).
    """
    if int(num_levels) != num_levels or num_levels < 2:
        raise ValueError(f"num_levels must be an int >= 2; got {num_levels!r}.")
    t = torch.as_tensor(t, dtype=torch.float64) if not isinstance(t, Tensor) else t
    return sde.marginal_coefs(t).std * (num_levels - 1) / 2


def t_for_pixel_std(sde: SDE, levels: float, num_levels: int = 256) -> float:
    """The time t at which the marginal std is ``levels`` pixel levels (inverse of ``pixel_std_of``).

    Args:
        sde: the SDE.
        levels: target std in levels (> 0), e.g. 10.
        num_levels: K.

    Raises:
        ValueError: for a non-positive target or one the SDE cannot reach.
    """
    if int(num_levels) != num_levels or num_levels < 2:
        raise ValueError(f"num_levels must be an int >= 2; got {num_levels!r}.")
    if not levels > 0:
        raise ValueError(f"levels must be positive; got {levels!r}.")
    std = torch.tensor(2.0 * levels / (num_levels - 1), dtype=torch.float64)
    return float(sde.t_for_std(std))


@gin.configurable(module="hybrids.objectives")
class NCML:
    """The NCML objective (see the module docstring for the measure mu and the units).

    Args:
        sde: the forward SDE perturbing the data.
        t_max: T_ncml, the largest noise level; None: the paper's value for the SDE.
        p_zero: probability that an example gets t = 0 (default 0.5, see the module docstring).
        num_levels: K of integer data; None for continuous data (no dequantization, t = 0 scored
            by ``model.log_prob(x, 0)``).

    Call: ``objective(model, batch, *, generator=None) -> (loss, metrics)``. Metrics: ``loss``;
    ``bpd_t0`` (-log p / (D ln 2) over the t = 0 examples) and ``nll_per_dim_noisy`` (-log p / D in
    nats over the t > 0 examples; NaN when a part is empty), ``frac_t0``.
    """

    def __init__(self, sde: SDE = gin.REQUIRED, t_max: float | None = None, p_zero: float = 0.5,
                 num_levels: int | None = 256):
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a hybrids.sdes.SDE (e.g. VPSDE()); got {type(sde).__name__}.")
        t_max = default_t_max(sde) if t_max is None else float(t_max)
        if not 0.0 < t_max <= sde.T:
            raise ValueError(f"t_max must lie in (0, T = {sde.T}]; got {t_max}.")
        if not 0.0 <= p_zero <= 1.0:
            raise ValueError(f"p_zero must be a probability in [0, 1]; got {p_zero}.")
        if num_levels is not None and (isinstance(num_levels, bool) or int(num_levels) != num_levels or num_levels < 2):
            raise ValueError(f"num_levels must be an int >= 2 or None (continuous data); got {num_levels!r}.")
        self.sde = sde
        self.t_max = t_max
        self.p_zero = float(p_zero)
        self.num_levels = None if num_levels is None else int(num_levels)

    def sample_t(self, batch_size: int, *, dtype: torch.dtype = torch.float32, device=None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Draw t ~ mu per example, ``[B]``: 0 with probability p_zero, else U(0, t_max]."""
        zero = rand((batch_size,), generator, dtype=torch.float64, device=device) < self.p_zero
        t = self.t_max * (1.0 - rand((batch_size,), generator, dtype=torch.float64, device=device))  # (0, t_max]
        return torch.where(zero, torch.zeros_like(t), t).to(dtype)

    def __call__(self, model: nn.Module, batch: Any, *,
                 generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        data = batch_data(batch)
        check_data(data, self.num_levels)
        b = data.shape[0]
        num_dims = data[0].numel()
        dtype = data.dtype if data.is_floating_point() else model_dtype(model)
        t = self.sample_t(b, dtype=dtype, device=data.device, generator=generator)
        at_zero = t == 0
        nll = torch.zeros(b, dtype=dtype, device=data.device)
        metrics: dict[str, float] = {"frac_t0": float(at_zero.float().mean())}
        if bool(at_zero.any()):
            clean = data[at_zero]
            if self.num_levels is None:
                log_p0 = model.log_prob(clean, torch.zeros(clean.shape[0], dtype=dtype, device=data.device))
            else:
                log_p0 = model.discrete_log_prob(clean)
            nll = nll.index_put((at_zero,), -log_p0.to(dtype))
            metrics["bpd_t0"] = nats_to_bpd(float(-log_p0.detach().mean()), num_dims)
        else:
            metrics["bpd_t0"] = float("nan")
        noisy = ~at_zero
        if bool(noisy.any()):
            x0 = to_model_space(data[noisy], self.num_levels, generator, dtype)
            p = perturb(self.sde, x0, t[noisy], generator)
            log_pt = model.log_prob(p.x_t, p.t)
            nll = nll.index_put((noisy,), -log_pt.to(dtype))
            metrics["nll_per_dim_noisy"] = float(-log_pt.detach().mean()) / num_dims
        else:
            metrics["nll_per_dim_noisy"] = float("nan")
        loss = nats_to_bpd(nll.mean(), num_dims)
        metrics["loss"] = float(loss.detach())
        return loss, metrics

