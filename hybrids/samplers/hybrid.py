"""NCML's hybrid sampler: an autoregressive draw at a noise level t0, then the reverse SDE.

x ~ p_theta(. | t0) is drawn pixel by pixel from the model's continuous mixture at t0 (default
t0 = T_ncml, the largest level it was trained on), then the reverse SDE runs from t0 down to eps
with the model's own score grad_x log p_theta(x | t) (autograd of its log-density), the last
predictor step returns its mean (the final denoising step), and the result is quantized to
levels. Solver defaults follow score_sde (the NCML paper names none): VE uses the
reverse-diffusion predictor and one Langevin corrector step (snr 0.16), eps = 1e-5; VP and subVP
use Euler-Maruyama without corrector, eps = 1e-3; step 1/1000 in t.

Reference: "Noise-conditional Maximum Likelihood Estimation with Score-based Sampling", NeurIPS
2022 Workshop on Score-Based Methods.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from hybrids.data import quantize
from hybrids.objectives.ncml import default_t_max
from hybrids.samplers.autoregressive import ancestral_sample
from hybrids.samplers.sde import pc_sample
from hybrids.sdes import SDE, VESDE, default_sampling_eps


def hybrid_defaults(sde: SDE) -> dict:
    """score_sde's solver settings for ``sde``: predictor, corrector and final time eps."""
    if isinstance(sde, VESDE):
        return {"predictor": "reverse_diffusion", "corrector": "langevin", "eps": default_sampling_eps(sde)}
    return {"predictor": "euler_maruyama", "corrector": None, "eps": default_sampling_eps(sde)}


def hybrid_sample(
    model: nn.Module,
    sde: SDE,
    shape: Sequence[int],
    *,
    num_levels: int,
    t_ncml: float | None = None,
    t0: float | None = None,
    eps: float | None = None,
    step_size: float = 1e-3,
    predictor: str | None = None,
    corrector: str | None = "auto",
    snr: float = 0.16,
    n_corrector_steps: int = 1,
    generator: torch.Generator | None = None,
    method: str = "fast",
) -> Tensor:
    """NCML hybrid sampling: ancestral draw at t0, reverse SDE t0 -> eps, denoise, quantize.

    Args:
        model: noise-conditional autoregressive mixture model (``model(x, t) -> params``,
            ``model.score``), in eval mode.
        sde: the SDE the model was trained with.
        shape: ``[B, C, H, W]``.
        num_levels: K of the output levels.
        t_ncml: T_ncml (default: the paper's value for ``sde``).
        t0: start of the reverse process, in (0, t_ncml] (default t_ncml).
        eps: final time (default 1e-5 VE, 1e-3 VP/subVP).
        step_size: time step; the number of steps is round((t0 - eps) / step_size), at least 1.
        predictor: None -> the SDE's default (see ``hybrid_defaults``).
        corrector: ``'auto'`` -> the SDE's default; None or ``'langevin'``.
        snr, n_corrector_steps: Langevin corrector settings.
        generator: randomness of the ancestral draw and of the SDE solver.
        method: ancestral sampling method (``'fast'`` or ``'naive'``).

    Returns:
        ``int64 [B, C, H, W]`` levels.
    """
    t_ncml = default_t_max(sde) if t_ncml is None else float(t_ncml)
    t0 = t_ncml if t0 is None else float(t0)
    if not 0.0 < t0 <= t_ncml:
        raise ValueError(f"t0 must lie in (0, T_ncml = {t_ncml}]; got {t0}.")
    settings = _solver_settings(sde, t0, eps, step_size, predictor, corrector)  # fail before the slow draw
    x = ancestral_sample(model, shape, t=t0, generator=generator, method=method)

    def score_fn(x_t: Tensor, t: Tensor) -> Tensor:
        return model.score(x_t, t, create_graph=False)

    x = reverse_from(score_fn, sde, x, t0=t0, **settings, snr=snr, n_corrector_steps=n_corrector_steps,
                     generator=generator)
    return quantize(x, num_levels)


def _solver_settings(sde: SDE, t0: float, eps: float | None, step_size: float, predictor: str | None,
                     corrector: str | None) -> dict:
    """eps, step size, predictor and corrector with the SDE's defaults filled in, checked."""
    defaults = hybrid_defaults(sde)
    eps = defaults["eps"] if eps is None else float(eps)
    if not 0.0 <= eps < t0:
        raise ValueError(f"eps must lie in [0, t0 = {t0}); got {eps}.")
    if not step_size > 0:
        raise ValueError(f"step_size must be positive; got {step_size}.")
    return {"eps": eps, "step_size": step_size,
            "predictor": defaults["predictor"] if predictor is None else predictor,
            "corrector": defaults["corrector"] if corrector == "auto" else corrector}


def reverse_from(
    score_fn,
    sde: SDE,
    x_t0: Tensor,
    *,
    t0: float,
    eps: float | None = None,
    step_size: float = 1e-3,
    predictor: str | None = None,
    corrector: str | None = "auto",
    snr: float = 0.16,
    n_corrector_steps: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The second half of hybrid sampling: the reverse SDE from ``x_t0 ~ p(. | t0)`` down to eps.

    Runs ``hybrids.samplers.sde.pc_sample`` from t0 to eps in round((t0 - eps) / step_size) steps
    (at least 1) with the SDE's default predictor/corrector (``hybrid_defaults``) unless given, and
    returns the mean of the last predictor step (the final denoising step).

    Args:
        score_fn: ``score_fn(x, t)``, e.g. a model's score without a graph.
        sde: the forward SDE.
        x_t0: ``[B, ...]`` draws at time t0.
        t0: the start time (> eps).
        eps, step_size, predictor, corrector, snr, n_corrector_steps: see ``hybrid_sample``.
        generator: randomness of the solver.

    Returns:
        ``[B, ...]`` continuous samples at time eps (model space).
    """
    settings = _solver_settings(sde, t0, eps, step_size, predictor, corrector)
    num_steps = max(1, round((t0 - settings["eps"]) / step_size))
    with torch.no_grad():
        return pc_sample(score_fn, sde, x_t0, t_start=t0, t_end=settings["eps"], num_steps=num_steps,
                         predictor=settings["predictor"], corrector=settings["corrector"], snr=snr,
                         n_corrector_steps=n_corrector_steps, denoise=True, generator=generator)
