"""Overdamped Langevin samplers: plain, annealed over noise levels (NCSN), and per-dimension for
AR-CSM.

The annealed sampler is Algorithm 1 of Song and Ermon, "Generative Modeling by Estimating
Gradients of the Data Distribution", NeurIPS 2019, for any model with a score ``score_fn(x, t)``.
The per-dimension sampler is that of Meng, Yu, Song, Song and Ermon, "Autoregressive Score
Matching", NeurIPS 2020, for models that implement
:class:`hybrids.models.base.ARConditionalScoreModel`.

All use the unadjusted Langevin update with step size eps,

    x <- x + eps * s(x) + sqrt(2 eps) z,   z ~ N(0, I),

whose stationary law tends to the target as eps -> 0 (score_sde's convention and that of NCSN's
released code; NCSN's paper writes the same update with alpha = 2 eps).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from hybrids.models.base import ARConditionalScoreModel, NoiseConditionalModel, ScoreFn, as_score_fn
from hybrids.sdes import SDE, default_sampling_eps
from hybrids.tensors import expand_as_batch, model_device, model_dtype, randn, randn_like


def _check_steps(n_steps: int, step_size: float) -> None:
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")


@torch.no_grad()
def langevin_sample(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    n_steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Overdamped Langevin dynamics x <- x + eps s(x) + sqrt(2 eps) z from ``x``.

    Args:
        score_fn: s(x) = grad log p(x), shaped like x (bind t beforehand if needed).
        x: ``[B, ...]`` initial state.
        n_steps: number of updates.
        step_size: eps.
        generator: random source of z (drawn on its device, then moved to x's).

    Returns:
        The final state, like x.
    """
    _check_steps(n_steps, step_size)
    noise_scale = math.sqrt(2.0 * step_size)
    for _ in range(int(n_steps)):
        x = x + step_size * score_fn(x) + noise_scale * randn_like(x, generator)
    return x


def annealed_noise_levels(
    sde: SDE,
    *,
    num_scales: int | None = None,
    sigma_max: float | None = None,
    sigma_min: float | None = None,
    times: Sequence[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """NCSN's noise levels sigma_1 > ... > sigma_L and the times t_i with marginal std sigma_i.

    Either geometric, sigma_i = sigma_max (sigma_min / sigma_max)^((i - 1) / (L - 1)), with
    t_i = ``sde.t_for_std(sigma_i)``; or the given ``times``, with sigma_i = std(t_i).

    Args:
        sde: the SDE whose marginal stds are the noise levels.
        num_scales: L (None: 10, NCSN's; with ``times``: their number).
        sigma_max: sigma_1 (None: the SDE's std at T).
        sigma_min: sigma_L (None: the SDE's std at ``default_sampling_eps(sde)``: about 0.01 for
            the default VE, VP and subVP SDEs, NCSN's sigma_L).
        times: explicit times t_1, ..., t_L instead (their stds must decrease).

    Returns:
        ``(sigmas, times)``, each ``[L]`` float64.

    Raises:
        ValueError: L < 1, sigma_max <= sigma_min (L > 1), stds outside the SDE's range (from
            ``t_for_std``), ``times`` with sigma_max/sigma_min or a different num_scales, or stds
            of ``times`` that do not strictly decrease.
    """
    if times is not None:
        if sigma_max is not None or sigma_min is not None:
            raise ValueError("give either the noise levels' times or sigma_max/sigma_min, not both.")
        times = torch.as_tensor(times, dtype=torch.float64).flatten()
        if num_scales is not None and num_scales != times.numel():
            raise ValueError(f"num_scales = {num_scales} but {times.numel()} times were given.")
        if times.numel() < 1:
            raise ValueError("times must hold at least one time.")
        sigmas = sde.marginal_coefs(times).std
        if bool((sigmas[1:] >= sigmas[:-1]).any()):
            raise ValueError(
                f"annealed Langevin needs strictly decreasing noise levels sigma_1 > ... > sigma_L; the times "
                f"{times.tolist()} give stds {sigmas.tolist()} (list the times from the noisiest down).")
        return sigmas, times
    num_scales = 10 if num_scales is None else num_scales
    if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 1:
        raise ValueError(f"num_scales (the number L of noise levels) must be an integer >= 1; got {num_scales!r}.")
    ends = sde.marginal_coefs(torch.tensor([sde.T, default_sampling_eps(sde)], dtype=torch.float64)).std
    hi = float(ends[0]) if sigma_max is None else float(sigma_max)
    lo = float(ends[1]) if sigma_min is None else float(sigma_min)
    if num_scales > 1 and not hi > lo > 0:
        raise ValueError(f"annealed Langevin needs sigma_max > sigma_min > 0 (decreasing noise levels); got "
                         f"sigma_max = {hi}, sigma_min = {lo}.")
    sigmas = torch.exp(torch.linspace(math.log(hi), math.log(lo), num_scales, dtype=torch.float64))
    return sigmas, sde.t_for_std(sigmas)


@torch.no_grad()
def annealed_langevin_sample(
    score_fn: NoiseConditionalModel | ScoreFn,
    sde: SDE,
    x_init: Tensor,
    *,
    generator: torch.Generator | None = None,
    num_steps: int | None = None,
    num_scales: int | None = None,
    sigma_max: float | None = None,
    sigma_min: float | None = None,
    times: Sequence[float] | None = None,
    step_lr: float = 2e-5,
    denoise: bool = False,
) -> Tensor:
    """Annealed Langevin dynamics (NCSN, Algorithm 1) for any model with a score ``s(x, t)``.

    For the noise levels sigma_1 > ... > sigma_L at times t_i (:func:`annealed_noise_levels`), with
    a_i = step_lr sigma_i^2 / sigma_L^2, run T_i updates at each level in turn,

        x <- x + a_i s(x, t_i) + sqrt(2 a_i) z,   z ~ N(0, I),

    which is Algorithm 1's x + (alpha_i / 2) s + sqrt(alpha_i) z with alpha_i = 2 a_i (the update of
    NCSN's released code and of the library's other Langevin samplers). With ``denoise`` a last
    Tweedie step returns E[x_0 | x_{t_L}] = (x + sigma_L^2 s(x, t_L)) / m(t_L) (m = 1 for VE).

    gin (the hook ``hybrids.hooks.annealed_langevin_sampler``)::

        experiment.samplers = [@annealed_langevin_sampler]
        annealed_langevin_sampler.num_scales = 10
        annealed_langevin_sampler.step_lr = 2e-5

    Args:
        score_fn: a model (its ``score``) or ``score_fn(x, t)`` with t ``[B]``.
        sde: the SDE that maps noise levels to times.
        x_init: ``[B, ...]`` initial state (the hook draws it from the SDE's prior).
        generator: random source of z.
        num_steps: updates in all, spread over the L levels as evenly as possible (the first
            ``num_steps % L`` levels take one more); at least L. None: 100 L (NCSN's T = 100 per
            level); the hook takes ``Budget.num_steps`` (1000: NCSN's 10 x 100).
        num_scales, sigma_max, sigma_min, times: the noise levels (:func:`annealed_noise_levels`;
            default: 10 levels, geometric between the SDE's stds at T and at its sampling eps).
        step_lr: epsilon of a_i (NCSN: 2e-5 with sigma_L = 0.01).
        denoise: finish with the Tweedie step.

    Returns:
        Samples like ``x_init``.

    Raises:
        ValueError: for bad noise levels (see :func:`annealed_noise_levels`), ``num_steps`` < L or
            ``step_lr <= 0``.
        FloatingPointError: when samples come out NaN or infinite.
    """
    sigmas, level_times = annealed_noise_levels(sde, num_scales=num_scales, sigma_max=sigma_max,
                                                sigma_min=sigma_min, times=times)
    n_levels = sigmas.numel()
    num_steps = 100 * n_levels if num_steps is None else num_steps
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < n_levels:
        raise ValueError(f"annealed Langevin needs an integer num_steps >= L = {n_levels} (at least one update "
                         f"per noise level); got {num_steps!r}.")
    if not step_lr > 0:
        raise ValueError(f"step_lr must be positive, got {step_lr}")
    score = as_score_fn(score_fn)
    steps_each, extra = divmod(num_steps, n_levels)
    sigma_last = float(sigmas[-1])
    x = x_init
    for i, (sigma, t) in enumerate(zip(sigmas.tolist(), level_times.tolist())):
        a = step_lr * sigma**2 / sigma_last**2
        t_vec = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        for _ in range(steps_each + (i < extra)):
            x = x + a * score(x, t_vec) + math.sqrt(2 * a) * randn_like(x, generator)
    if denoise:
        t_vec = torch.full((x.shape[0],), float(level_times[-1]), dtype=x.dtype, device=x.device)
        mean_coef = expand_as_batch(sde.marginal_coefs(t_vec).mean_coef, x)
        x = (x + sigma_last**2 * score(x, t_vec)) / mean_coef
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    if bool(bad.any()):
        raise FloatingPointError(
            f"annealed_langevin_sample: the samples are NaN or infinite in {int(bad.sum())} of {x.shape[0]} chains "
            f"(step_lr={step_lr}, L={n_levels} levels from sigma={float(sigmas[0]):.4g} to {sigma_last:.4g}, "
            f"num_steps={num_steps}): the chain diverged. Use a smaller step_lr (the largest step is "
            f"step_lr (sigma_1 / sigma_L)^2 = {step_lr * float(sigmas[0]) ** 2 / sigma_last**2:.4g}), and check that "
            "the score is finite.")
    return x


@torch.no_grad()
def ar_langevin_sample(
    model: ARConditionalScoreModel,
    shape: Sequence[int],
    *,
    n_steps: int,
    step_size: float,
    generator: torch.Generator | None = None,
    init: Tensor | None = None,
    t: Tensor | None = None,
) -> Tensor:
    """Sample an AR-CSM one dimension at a time with Langevin dynamics on each conditional.

    For d = 1..D in the model's order (``model.to_sequence``/``from_sequence``, e.g. pixel-major
    RGB for PixelCNN++; raster order by default): the context c_d is computed ONCE from the
    current x (only x_<d matters), then ``n_steps`` Langevin updates move x_d with
    s_d = h(x_d, c_d); only the head runs in the inner loop.

    Args:
        model: an :class:`~hybrids.models.base.ARConditionalScoreModel`: it offers
            ``context(x, t) -> [B, D, F]`` (x ``[B, D]``), ``head(x_d, c, t) -> [B, K]``
            (x_d ``[B, K]``, c ``[B, K, F]``) and its variable order.
        shape: ``[B, D]`` or ``[B, C, H, W]`` (any shape ``to_sequence`` accepts) of the
            samples.
        n_steps: Langevin updates per dimension.
        step_size: eps of each update.
        generator: random source of the initial state and the noise.
        init: initial state shaped ``shape`` (default: N(0, I) draws); its x_d is where the
            chain for dimension d starts.
        t: ``[B]`` times for a noise-conditional model, else None.

    Returns:
        Samples shaped ``shape`` (``model.from_sequence(x_seq, shape)``) in the model's dtype.

    Raises:
        TypeError: if ``model`` is not an ``ARConditionalScoreModel``.
        ValueError: for ``n_steps < 1``, ``step_size <= 0`` or an ``init`` of the wrong shape.
    """
    _check_steps(n_steps, step_size)
    if not isinstance(model, ARConditionalScoreModel):
        raise TypeError(
            f"ar_langevin_sample needs an ARConditionalScoreModel (hybrids.models.base), with "
            f"context(x, t), head(x_d, c, t), to_sequence and from_sequence; got "
            f"{type(model).__name__}. Subclass ARConditionalScoreModel (MADEConditionalScore and "
            "PixelCNNConditionalScore do)."
        )
    shape = tuple(int(v) for v in shape)
    dtype, device = model_dtype(model), model_device(model)
    if init is None:
        x = randn(shape, generator, dtype=dtype, device=device)
    else:
        if tuple(init.shape) != shape:
            raise ValueError(f"init has shape {tuple(init.shape)}, expected {shape}")
        x = init.to(dtype=dtype, device=device).clone()
    x = model.to_sequence(x).clone()
    noise_scale = math.sqrt(2.0 * step_size)
    for d in range(x.shape[1]):
        c_d = model.context(x, t)[:, d : d + 1]
        x_d = x[:, d : d + 1]
        for _ in range(int(n_steps)):
            s_d = model.head(x_d, c_d, t)  # before the draw, as the head may use the global RNG
            x_d = x_d + step_size * s_d + noise_scale * randn_like(x_d, generator)
        x[:, d : d + 1] = x_d
    return model.from_sequence(x, shape)
