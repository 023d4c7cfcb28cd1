"""Predictor-corrector samplers for the reverse-time SDE, startable at any time.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon and Poole, "Score-Based Generative Modeling through
Stochastic Differential Equations", ICLR 2021 (score_sde); started at t < T they are the
score-based half of NCML's hybrid sampler ("Noise-conditional Maximum Likelihood Estimation with
Score-based Sampling", NeurIPS 2022 Workshop on Score-Based Methods, anonymous submission).

The reverse SDE dx = [f(x, t) - g(t)^2 s(x, t)] dt + g(t) dw_bar is integrated from ``t_start``
down to ``t_end`` on the uniform grid t_i = t_start - i h, h = (t_start - t_end) / N, i = 0..N-1.
Each step runs the corrector at t_i, then the predictor from t_i to t_i - h (score_sde's order).

Predictors (h > 0 steps backwards in time, z ~ N(0, I)):

* ``euler_maruyama``:   x <- x - [f(x, t) - g(t)^2 s(x, t)] h + g(t) sqrt(h) z;
* ``reverse_diffusion``: x <- x - f_d + G^2 s(x, t) + G z, with (f_d, G) = sde.discretize(x, t, h)
  (the forward discretisation; ancestral DDPM/SMLD steps), via ``sde.reverse(s).discretize``.

Corrector ``langevin`` (n steps at fixed t): eps = 2 a (snr mean_b ||z_b|| / mean_b ||s_b||)^2,
x <- x + eps s(x, t) + sqrt(2 eps) z, with a = ``sde.langevin_alpha(t, h)`` (1 for VE,
1 - beta(t) h for VP and subVP), norms over all but the batch dimension and their means over the
batch, as score_sde's LangevinCorrector. (A per-example ratio ||z_b|| / ||s_b|| makes the step
depend on the example's own state and noise: eps ~ 1/||s_b||^2 is heavy-tailed near the mode in
low dimension, and a 2-D Gaussian then came out with 17 times its variance.)

With ``denoise=True`` the last predictor step returns its mean (no noise is added), which is
score_sde's final denoising step. The sampler is free of gin; gin-configurable hooks wrap it.
``CountedScore`` counts the score evaluations (NFE) of this or any other sampler.
Gaussian draws follow ``hybrids.tensors``' rule (on the generator's device, then moved).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from hybrids.sdes import SDE
from hybrids.tensors import expand_as_batch, randn_like

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class CountedScore:
    """A score function that counts its calls: ``counted(x, t)`` returns ``score_fn(x, t)`` and adds 1
    to ``counted.nfe``.

    One call scores a whole batch ``[B, ...]``, so ``nfe`` is the number of network evaluations per
    sample (NFE) of any sampler that is given ``counted`` as its score, e.g.
    ``counted = CountedScore(model.score); pc_sample(counted, ...); counted.nfe``.

    Args:
        score_fn: s(x, t), ``[B, ...]``, ``[B]`` -> like x.
    """

    def __init__(self, score_fn: ScoreFn):
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.score_fn(x, t)


PREDICTORS = ("euler_maruyama", "reverse_diffusion")
CORRECTORS = (None, "langevin")


def euler_maruyama_step(
    score_fn: ScoreFn, sde: SDE, x: Tensor, t: Tensor, h: float, noise: Tensor
) -> tuple[Tensor, Tensor]:
    """One Euler-Maruyama step of the reverse SDE from t to t - h.

    Args:
        score_fn: s(x, t), ``[B, ...]`` -> like ``x``.
        sde: the forward SDE.
        x: current state, ``[B, ...]``.
        t: current times, ``[B]``.
        h: step size > 0 (time decreases by h).
        noise: standard normal draws, like ``x``.

    Returns:
        ``(x_new, x_mean)``: x_mean = x - [f - g^2 s] h and x_new = x_mean + g sqrt(h) noise.
    """
    drift = sde.reverse(score_fn).drift(x, t)
    x_mean = x - drift * h
    g = expand_as_batch(sde.diffusion(t), x)
    return x_mean + g * math.sqrt(h) * noise, x_mean


def reverse_diffusion_step(
    score_fn: ScoreFn, sde: SDE, x: Tensor, t: Tensor, h: float, noise: Tensor
) -> tuple[Tensor, Tensor]:
    """One reverse-diffusion step from t to t - h: x_mean = x - f_d + G^2 s, x_new = x_mean + G z.

    Args: as :func:`euler_maruyama_step`.

    Returns:
        ``(x_new, x_mean)``.
    """
    rev_f, G = sde.reverse(score_fn).discretize(x, t, h)
    x_mean = x + rev_f
    return x_mean + expand_as_batch(G, x) * noise, x_mean


def langevin_step(
    score_fn: ScoreFn, sde: SDE, x: Tensor, t: Tensor, h: float, snr: float, noise: Tensor
) -> tuple[Tensor, Tensor]:
    """One Langevin corrector step at fixed t with the signal-to-noise step rule.

    eps_b = 2 a_b (snr mean ||z|| / mean ||s||)^2 with the norms averaged over the batch
    (score_sde's rule), a = sde.langevin_alpha(t, h); x <- x + eps s + sqrt(2 eps) z.

    Returns:
        ``(x_new, x_mean)`` with x_mean = x + eps s.
    """
    s = score_fn(x, t)
    s_norm = s.flatten(1).norm(dim=1).mean()
    z_norm = noise.flatten(1).norm(dim=1).mean()
    # A vanishing score (exact mode) would give an infinite step; clamp the denominator.
    tiny = torch.finfo(x.dtype).tiny
    eps = 2 * sde.langevin_alpha(t, h) * (snr * z_norm / s_norm.clamp_min(tiny)) ** 2
    eps = expand_as_batch(eps, x)
    x_mean = x + eps * s
    return x_mean + torch.sqrt(2 * eps) * noise, x_mean


_PREDICTOR_FNS = {"euler_maruyama": euler_maruyama_step, "reverse_diffusion": reverse_diffusion_step}


def _check_step_size(sde: SDE, predictor: str, corrector: str | None, t_start: float, h: float,
                     num_steps: int, dtype: torch.dtype, device: torch.device) -> None:
    """Raise ``ValueError`` when the step h is too large for the discretised SDE itself.

    The reverse-diffusion predictor uses ``sde.discretize(x, t, h)`` (for VP, sqrt(1 - beta(t) h))
    and the Langevin corrector ``sde.langevin_alpha(t, h)`` (for VP and subVP, 1 - beta(t) h):
    with beta(t) h > 1 both are undefined and every sample would come out NaN. One evaluation
    on the whole time grid, before any score call.
    """
    times = torch.tensor([t_start - i * h for i in range(num_steps)], dtype=dtype, device=device)
    problems = []
    if predictor == "reverse_diffusion":
        f_d, G = sde.discretize(torch.ones(num_steps, 1, dtype=dtype, device=device), times, h)
        bad = ~(torch.isfinite(f_d.flatten(1)).all(1) & torch.isfinite(G))
        if bool(bad.any()):
            problems.append(f"the reverse-diffusion step sde.discretize(x, t, h) is undefined at t = "
                            f"{float(times[bad].max()):.4g}")
    if corrector is not None:
        alpha = sde.langevin_alpha(times, h)
        bad = ~(alpha >= 0)
        if bool(bad.any()):
            problems.append(f"the Langevin step scale sde.langevin_alpha(t, h) is "
                            f"{float(alpha[bad].min()):.4g} < 0 at t = {float(times[bad].max()):.4g}")
    if problems:
        hint = ""
        beta_max = getattr(sde, "beta_max", None)
        if beta_max is not None:
            hint = (f" For {type(sde).__name__} the step must keep beta(t) h <= 1, i.e. h <= "
                    f"1 / beta_max = {1 / beta_max:.3g}")
        raise ValueError(
            f"pc_sample: num_steps={num_steps} gives a step h={h:.3g} too large for {sde!r}: "
            f"{'; '.join(problems)}, so every sample would be NaN.{hint}. Use more steps."
        )


def pc_sample(
    score_fn: ScoreFn,
    sde: SDE,
    x_init: Tensor,
    *,
    t_start: float,
    t_end: float,
    num_steps: int,
    predictor: str = "euler_maruyama",
    corrector: str | None = None,
    snr: float = 0.16,
    n_corrector_steps: int = 1,
    denoise: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Integrate the reverse SDE from ``t_start`` to ``t_end`` with a predictor-corrector scheme.

    Args:
        score_fn: s(x, t) ~ grad_x log p_t(x) with ``t`` of shape ``[B]``; returns like ``x``.
        sde: the forward SDE (VESDE, VPSDE, SubVPSDE).
        x_init: samples of p_{t_start}, ``[B, ...]`` (float32 or float64).
        t_start: start time, 0 <= t_end < t_start <= sde.T.
        t_end: final time (e.g. 1e-3 for VP/subVP, 1e-5 for VE).
        num_steps: N >= 1 uniform steps of size h = (t_start - t_end) / N.
        predictor: ``'euler_maruyama'`` or ``'reverse_diffusion'``.
        corrector: ``None`` or ``'langevin'`` (run before each predictor step).
        snr: signal-to-noise ratio r of the Langevin step rule.
        n_corrector_steps: corrector steps per time step.
        denoise: return the mean of the last predictor step (no noise added there).
        generator: random source for all Gaussian draws.

    Returns:
        Samples at ``t_end``, shaped like ``x_init``.

    Raises:
        ValueError: on unknown predictor/corrector names or inconsistent times/sizes.
        FloatingPointError: the samples are NaN or infinite (the chain diverged); the message
            names the settings and advises more steps, a smaller snr or checking the score.
    """
    if predictor not in _PREDICTOR_FNS:
        raise ValueError(f"Unknown predictor {predictor!r}; choose one of {list(PREDICTORS)}.")
    if corrector not in CORRECTORS:
        raise ValueError(f"Unknown corrector {corrector!r}; choose one of {list(CORRECTORS)}.")
    if not isinstance(x_init, Tensor) or not x_init.is_floating_point() or x_init.ndim < 2:
        raise TypeError("x_init must be a floating-point tensor of shape [B, ...] (batch first).")
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer; got {num_steps}.")
    if not 0 <= t_end < t_start <= sde.T:
        raise ValueError(
            f"Need 0 <= t_end < t_start <= T = {sde.T}; got t_start={t_start}, t_end={t_end}."
        )
    if corrector is not None and (snr <= 0 or n_corrector_steps < 1):
        raise ValueError(f"Langevin needs snr > 0 and n_corrector_steps >= 1; got {snr}, {n_corrector_steps}.")
    step = _PREDICTOR_FNS[predictor]
    h = (float(t_start) - float(t_end)) / int(num_steps)
    x = x_init
    batch = x.shape[0]
    _check_step_size(sde, predictor, corrector, float(t_start), h, int(num_steps), x.dtype, x.device)
    for i in range(int(num_steps)):
        t = torch.full((batch,), float(t_start) - i * h, dtype=x.dtype, device=x.device)
        if corrector is not None:
            for _ in range(n_corrector_steps):
                x, _ = langevin_step(score_fn, sde, x, t, h, snr, randn_like(x, generator))
        x, x_mean = step(score_fn, sde, x, t, h, randn_like(x, generator))
    out = x_mean if denoise else x
    bad = ~torch.isfinite(out.detach().flatten(1)).all(1)
    if bool(bad.any()):
        corrector_text = ("" if corrector is None else
                          f", corrector={corrector!r} (snr={snr:g}, {n_corrector_steps} step(s))")
        raise FloatingPointError(
            f"pc_sample: the samples at t={float(t_end):g} are NaN or infinite in {int(bad.sum())} of "
            f"{out.shape[0]} chains (predictor={predictor!r}, num_steps={int(num_steps)}, step "
            f"h={h:.3g} from t={float(t_start):g}{corrector_text}): the chain diverged. Use more "
            f"steps (a smaller step h){', a smaller snr' if corrector is not None else ''}, and check "
            "that the score is finite at these times."
        )
    return out


def sample_from_prior(
    score_fn: ScoreFn,
    sde: SDE,
    shape: Sequence[int],
    *,
    eps: float = 1e-3,
    num_steps: int = 1000,
    predictor: str = "euler_maruyama",
    corrector: str | None = None,
    snr: float = 0.16,
    n_corrector_steps: int = 1,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw x_T from the SDE's prior and run :func:`pc_sample` from T down to ``eps``.

    Args:
        score_fn: s(x, t) with ``t`` of shape ``[B]``.
        sde: the forward SDE; its prior N(0, prior_std^2 I) starts the chain.
        shape: ``[B, ...]`` of the samples.
        eps: final time (score_sde: 1e-3 for VP/subVP, 1e-5 for VE).
        num_steps, predictor, corrector, snr, n_corrector_steps, denoise, generator: as in
            :func:`pc_sample`.
        device, dtype: of the samples.

    Returns:
        Samples at time ``eps``, ``shape``.

    Raises:
        FloatingPointError: non-finite samples (see :func:`pc_sample`).
    """
    x_T = sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)
    return pc_sample(
        score_fn, sde, x_T, t_start=sde.T, t_end=eps, num_steps=num_steps, predictor=predictor,
        corrector=corrector, snr=snr, n_corrector_steps=n_corrector_steps, denoise=denoise,
        generator=generator,
    )
