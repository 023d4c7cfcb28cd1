"""NCML's hybrid sampler: an autoregressive draw at a noise level t0, then a reverse solver to eps.

x ~ p_theta(. | t0) is drawn pixel by pixel from the model's continuous mixture at t0 (default
t0 = T_ncml, the largest level it was trained on; H W network passes), then a reverse solver runs
from t0 down to eps with the model's own score grad_x log p_theta(x | t) (autograd of its
log-density; one forward and one backward pass per score evaluation), ends with a denoising step,
and the result is quantized to levels. The reverse solver (``reverse``) is one of

* ``'pc'`` (default): the reverse SDE by predictor-corrector steps of size ``step_size``
  (``hybrids.samplers.sde.pc_sample``); the last predictor step returns its mean. Defaults follow
  score_sde (the NCML paper names none): VE uses the reverse-diffusion predictor and one Langevin
  corrector step (snr 0.16), eps = 1e-5; VP and subVP use Euler-Maruyama without corrector,
  eps = 1e-3; step 1/1000 in t. Score evaluations: the number of steps, times 1 + the corrector steps.
* ``'ode'``: the probability-flow ODE dx/dt = f - g^2 s / 2 from t0 to eps with the adaptive
  dopri5 solver at ``rtol``/``atol`` (``hybrids.samplers.ode.ode_sample``), then Tweedie's
  denoising step E[x_0 | x_eps] = (x + std^2 s) / m (one more score evaluation).
* ``'heun'``: the same ODE with EDM's Heun sampler in ``num_steps`` steps
  (``hybrids.samplers.heun.heun_sample``: EDM's time steps, the last step Euler's to sigma = 0,
  which is the same Tweedie step); 2 num_steps - 1 score evaluations.

``hybrids.samplers.sde.CountedScore`` counts the score evaluations of any of them.

Reference: "Noise-conditional Maximum Likelihood Estimation with Score-based Sampling", NeurIPS
2022 Workshop on Score-Based Methods; EDM: Karras, Aittala, Aila and Laine, "Elucidating the
Design Space of Diffusion-Based Generative Models", NeurIPS 2022.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from hybrids.data import quantize
from hybrids.objectives.ncml import default_t_max
from hybrids.samplers.autoregressive import ancestral_sample
from hybrids.samplers.heun import check_heun_settings, heun_sample
from hybrids.samplers.ode import check_tolerances, ode_sample
from hybrids.samplers.sde import ScoreFn, pc_sample
from hybrids.sdes import SDE, VESDE, default_sampling_eps

REVERSE_SOLVERS = ("pc", "ode", "heun")
HEUN_STEPS = 18  # EDM's CIFAR-10 count: 35 score evaluations
ODE_TOLERANCE = 1e-5  # rtol = atol of score_sde's probability-flow sampler


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
    reverse: str = "pc",
    num_steps: int | None = None,
    rho: float = 7.0,
    rtol: float | None = None,
    atol: float | None = None,
) -> Tensor:
    """NCML hybrid sampling: ancestral draw at t0, reverse solver t0 -> eps, denoise, quantize.

    Args:
        model: noise-conditional autoregressive mixture model (``model(x, t) -> params``,
            ``model.score``), in eval mode.
        sde: the SDE the model was trained with.
        shape: ``[B, C, H, W]``.
        num_levels: K of the output levels.
        t_ncml: T_ncml (default: the paper's value for ``sde``).
        t0: start of the reverse process, in (0, t_ncml] (default t_ncml).
        eps: final time (default 1e-5 VE, 1e-3 VP/subVP).
        step_size: ``'pc'``: time step; the number of steps is round((t0 - eps) / step_size), at least 1.
        predictor: ``'pc'``: None -> the SDE's default (see ``hybrid_defaults``).
        corrector: ``'pc'``: ``'auto'`` -> the SDE's default; None or ``'langevin'``.
        snr, n_corrector_steps: ``'pc'``: Langevin corrector settings.
        generator: randomness of the ancestral draw and of the ``'pc'`` solver.
        method: ancestral sampling method (``'fast'`` or ``'naive'``).
        reverse: the reverse solver, ``'pc'``, ``'ode'`` or ``'heun'`` (see the module docstring).
        num_steps: ``'heun'``: N >= 2 steps (None: 18, EDM's CIFAR-10 count).
        rho: ``'heun'``: EDM's time-step exponent.
        rtol, atol: ``'ode'``: tolerances of dopri5 (None: 1e-5).

    Returns:
        ``int64 [B, C, H, W]`` levels.
    """
    t_ncml = default_t_max(sde) if t_ncml is None else float(t_ncml)
    t0 = t_ncml if t0 is None else float(t0)
    if not 0.0 < t0 <= t_ncml:
        raise ValueError(f"t0 must lie in (0, T_ncml = {t_ncml}]; got {t0}.")
    settings = _solver_settings(sde, t0, eps, step_size, predictor, corrector, reverse, num_steps, rho, rtol,
                                atol)  # fail before the slow draw
    x = ancestral_sample(model, shape, t=t0, generator=generator, method=method)

    def score_fn(x_t: Tensor, t: Tensor) -> Tensor:
        return model.score(x_t, t, create_graph=False)

    x = reverse_from(score_fn, sde, x, t0=t0, **settings, snr=snr, n_corrector_steps=n_corrector_steps,
                     generator=generator)
    return quantize(x, num_levels)


def _solver_settings(sde: SDE, t0: float, eps: float | None, step_size: float, predictor: str | None,
                     corrector: str | None, reverse: str, num_steps: int | None, rho: float,
                     rtol: float | None, atol: float | None) -> dict:
    """The reverse solver's settings with the defaults filled in, checked (those of the chosen solver)."""
    if reverse not in REVERSE_SOLVERS:
        raise ValueError(f"Unknown reverse solver {reverse!r}; choose one of {list(REVERSE_SOLVERS)}.")
    defaults = hybrid_defaults(sde)
    eps = defaults["eps"] if eps is None else float(eps)
    if reverse == "pc" and not 0.0 <= eps < t0:
        raise ValueError(f"eps must lie in [0, t0 = {t0}); got {eps}.")
    if reverse != "pc" and not 0.0 < eps < t0:
        raise ValueError(f"eps must lie in (0, t0 = {t0}) for reverse={reverse!r} (the ODE's noise level at "
                         f"eps must be positive); got {eps}.")
    if reverse == "pc" and not step_size > 0:
        raise ValueError(f"step_size must be positive; got {step_size}.")
    num_steps = HEUN_STEPS if num_steps is None else num_steps
    rtol = ODE_TOLERANCE if rtol is None else rtol
    atol = ODE_TOLERANCE if atol is None else atol
    if reverse == "heun":
        check_heun_settings(num_steps, rho)
    if reverse == "ode":
        check_tolerances(rtol, atol)
    return {"reverse": reverse, "eps": eps, "step_size": step_size,
            "predictor": defaults["predictor"] if predictor is None else predictor,
            "corrector": defaults["corrector"] if corrector == "auto" else corrector,
            "num_steps": num_steps, "rho": rho, "rtol": rtol, "atol": atol}


def reverse_from(
    score_fn: ScoreFn,
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
    reverse: str = "pc",
    num_steps: int | None = None,
    rho: float = 7.0,
    rtol: float | None = None,
    atol: float | None = None,
) -> Tensor:
    """The second half of hybrid sampling: a reverse solver from ``x_t0 ~ p(. | t0)`` down to eps.

    ``reverse='pc'`` runs ``hybrids.samplers.sde.pc_sample`` from t0 to eps in
    round((t0 - eps) / step_size) steps (at least 1) with the SDE's default predictor/corrector
    (``hybrid_defaults``) unless given, and returns the mean of the last predictor step (the final
    denoising step). ``'ode'`` (``ode_sample``, dopri5 at rtol/atol) and ``'heun'``
    (``heun_sample``, EDM's sampler in ``num_steps`` steps) solve the probability-flow ODE from t0
    to eps and return Tweedie's E[x_0 | x_eps] = (x + std(eps)^2 s(x, eps)) / m(eps). Wrap
    ``score_fn`` in ``hybrids.samplers.sde.CountedScore`` to count its evaluations.

    Args:
        score_fn: ``score_fn(x, t)``, e.g. a model's score without a graph.
        sde: the forward SDE.
        x_t0: ``[B, ...]`` draws at time t0.
        t0: the start time (> eps; <= T).
        eps, step_size, predictor, corrector, snr, n_corrector_steps, reverse, num_steps, rho, rtol,
            atol: see ``hybrid_sample``.
        generator: randomness of the solver (``'pc'``; the ODE solvers are deterministic).

    Returns:
        ``[B, ...]`` continuous samples at time eps, or denoised (model space).

    Raises:
        ValueError: an unknown solver name or a bad setting of the chosen solver (before any score call).
    """
    settings = _solver_settings(sde, t0, eps, step_size, predictor, corrector, reverse, num_steps, rho, rtol, atol)
    eps = settings["eps"]
    if reverse == "ode":
        return ode_sample(score_fn, sde, x_init=x_t0, t_start=t0, eps=eps, rtol=settings["rtol"],
                          atol=settings["atol"], denoise=True).samples
    if reverse == "heun":
        return heun_sample(score_fn, sde, x_init=x_t0, t_start=t0, eps=eps, num_steps=settings["num_steps"],
                           rho=rho).samples
    pc_steps = max(1, round((t0 - eps) / step_size))
    with torch.no_grad():
        return pc_sample(score_fn, sde, x_t0, t_start=t0, t_end=eps, num_steps=pc_steps,
                         predictor=settings["predictor"], corrector=settings["corrector"], snr=snr,
                         n_corrector_steps=n_corrector_steps, denoise=True, generator=generator)
