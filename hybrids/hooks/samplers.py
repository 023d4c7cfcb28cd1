"""Sampler hooks: ancestral and hybrid sampling of autoregressive mixtures, predictor-corrector and
probability-flow ODE and annealed Langevin (NCSN) sampling of any model with a score, per-dimension Langevin for
autoregressive score models, a model's own ``sample`` method, and the grid density picture of a
2-D autoregressive score model.

Every hook returns ``{'samples': ...}`` (int64 levels ``[N, C, H, W]`` for image data, float
``[N, 2]`` for 2-D toys), plus extra pictures under other keys where noted.
"""
from __future__ import annotations

import matplotlib
import numpy as np
import torch
from torch import Tensor, nn

from hybrids.data import ArrayDataset
from hybrids.hooks.base import sampler, samples_output, score_sampler_hook, shape_sampler_hook
from hybrids.likelihood.density_grid import conditional_density_grid
from hybrids.samplers.autoregressive import ancestral_sample
from hybrids.samplers.hybrid import hybrid_sample
from hybrids.samplers.langevin import annealed_langevin_sample, ar_langevin_sample
from hybrids.samplers.ode import ode_sample
from hybrids.samplers.sde import sample_from_prior
from hybrids.sdes import SDE, default_sampling_eps, sde_of
from hybrids.tensors import model_dtype, rand, randn


ancestral_sampler = shape_sampler_hook(ancestral_sample, name="ancestral_sampler")
"""Ancestral sampling of an autoregressive mixture (``hybrids.samplers.ancestral_sample``): discrete
levels at t = 0 (bind ``ancestral_sampler.t`` for continuous values at a noise level t)."""

hybrid_sampler = shape_sampler_hook(hybrid_sample, name="hybrid_sampler")
"""NCML's hybrid sampling (``hybrids.samplers.hybrid.hybrid_sample``): an ancestral draw at t0, then
a reverse solver with the model's autograd score (``reverse``: ``'pc'``, the reverse SDE, default;
``'ode'``, the probability-flow ODE at ``rtol``/``atol``; ``'heun'``, EDM's Heun in ``num_steps``
steps; the sizes ``num_steps``, ``rtol``, ``atol`` default to the Budget's); ``sde`` defaults to
``model.sde``."""


annealed_langevin_sampler = score_sampler_hook(annealed_langevin_sample, name="annealed_langevin_sampler")
"""NCSN's annealed Langevin dynamics (``hybrids.samplers.langevin.annealed_langevin_sample``) for any
model with a score, from draws of the SDE's prior; ``num_steps`` (all levels together) defaults to
the Budget's, ``sde`` to ``model.sde``."""


@sampler
def pc_sampler(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_samples: int | None = None,
    num_steps: int | None = None,
    predictor: str = "reverse_diffusion",
    corrector: str | None = "langevin",
    snr: float = 0.16,
    eps: float | None = None,
    sde: SDE | None = None,
) -> dict[str, Tensor]:
    """Predictor-corrector samples from the prior (``hybrids.samplers.sde.sample_from_prior``).

    Args:
        num_samples, num_steps: samples and steps (None: the budget's; score_sde: 1000 steps).
        predictor, corrector, snr: sampler settings (score_sde: reverse diffusion + Langevin, snr 0.16).
        eps: final time (None: 1e-5 for VE, 1e-3 otherwise, as score_sde).
        sde: overrides ``model.sde``.
    """
    sde = sde_of(model, sde, binding="pc_sampler.sde")
    eps = default_sampling_eps(sde) if eps is None else eps
    shape = (num_samples,) + tuple(data.shape)
    with torch.no_grad():
        x = sample_from_prior(model.score, sde, shape, eps=eps, num_steps=num_steps, predictor=predictor,
                              corrector=corrector, snr=snr, generator=generator, device=device,
                              dtype=model_dtype(model))
    return {"samples": samples_output(x, data.num_levels, "pc_sampler")}


@sampler
def ode_sampler(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_samples: int | None = None,
    eps: float = 1e-3,
    rtol: float | None = None,
    atol: float | None = None,
    denoise: bool = False,
    sde: SDE | None = None,
) -> dict[str, Tensor]:
    """Probability-flow ODE samples (``hybrids.samplers.ode.ode_sample``) from prior draws."""
    sde = sde_of(model, sde, binding="ode_sampler.sde")
    shape = (num_samples,) + tuple(data.shape)
    x_init = sde.prior_sample(shape, generator, dtype=model_dtype(model), device=generator.device).to(device)
    out = ode_sample(model, sde, x_init=x_init, eps=eps, rtol=rtol, atol=atol, denoise=denoise)
    return {"samples": samples_output(out.samples, data.num_levels, "ode_sampler")}


@sampler
def ar_langevin_sampler(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_samples: int | None = None,
    num_steps: int | None = None,
    step_size: float = 1e-4,
) -> dict[str, Tensor]:
    """Per-dimension Langevin samples of an AR score model (``hybrids.samplers.ar_langevin_sample``).

    Images start from U[-1, 1], 2-D toys from N(0, I).

    Args:
        num_samples: N (None: the budget's).
        num_steps: Langevin updates per dimension (None: the budget's).
        step_size: eps of x <- x + eps s + sqrt(2 eps) z (keep it well below sigma^2 for images).
    """
    shape = (num_samples, *data.shape)
    dtype = model_dtype(model)
    if data.num_levels is None:
        init = randn(shape, generator, dtype=dtype)
    else:
        init = 2 * rand(shape, generator, dtype=dtype) - 1
    x = ar_langevin_sample(model, shape, n_steps=num_steps, step_size=step_size,
                           generator=generator, init=init.to(device))
    return {"samples": samples_output(x, data.num_levels, "ar_langevin_sampler")}


@sampler
def model_sampler(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_samples: int | None = None,
) -> dict[str, Tensor]:
    """Samples from the model's own ``sample(n, generator, discrete=...)`` method (e.g. the MLE
    baselines ``hybrids.models.made.MADEDensity``): levels for image data, points for toys."""
    if not hasattr(model, "sample"):
        raise TypeError(f"model_sampler needs a model with a sample(n, generator) method; "
                        f"{type(model).__name__} has none.")
    if data.num_levels is None:
        return {"samples": model.sample(num_samples, generator, discrete=False).float().cpu()}
    if data.num_levels != model.num_levels:
        raise ValueError(f"model has num_levels={model.num_levels}, data {data.num_levels}")
    return {"samples": model.sample(num_samples, generator).reshape((num_samples, *data.shape)).cpu()}


@sampler
def density_grid_image(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_samples: int | None = None,
    lim: tuple[float, float] = (-4.0, 4.0),
    resolution: int = 200,
    colormap: str = "viridis",
) -> dict[str, Tensor]:
    """The grid-normalised density of a 2-D AR score model as an RGB picture (x_1 right, x_2 up).

    ``num_samples`` is part of the sampler contract and unused: the output is one picture.

    Returns:
        ``{'density': [1, 3, n, n] int64}`` levels 0..255 (stretched so that the brightest channel
        value is 255).
    """
    _, dens = conditional_density_grid(model, lim, resolution, device)
    img = dens.T.flip(0).cpu().double().numpy()  # rows: x_2 from top (high) to bottom
    rgb = matplotlib.colormaps[colormap](img / img.max())[..., :3]
    levels = np.round(255 * rgb / rgb.max()).astype(np.int64)
    return {"density": torch.from_numpy(levels).permute(2, 0, 1).unsqueeze(0)}
