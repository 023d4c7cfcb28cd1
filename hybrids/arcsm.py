"""AR-CSM runner hooks (papers/001, METHODS.md section 7): sampling, denoising, anomaly detection
and numerically normalised 2-D densities.

Every hook has the runner's signature ``hook(model, data, *, device, generator, **sizes)``;
``data`` is the test ``ArrayDataset`` (integer images or float 2-D toys) and ``model`` an AR-CSM
offering ``conditional_scores(x, t)`` (and ``context``/``head`` for sampling). The models here are
trained without noise conditioning (t = None) on data perturbed with N(0, sigma^2) noise, so the
hooks that score data take the same ``sigma`` (gin files bind both to one macro).
"""
from __future__ import annotations

import math
from typing import Sequence

import gin
import matplotlib
import numpy as np
import torch
from torch import Tensor, nn

from hybrids.data import dequantize, quantize
from hybrids.metrics.anomaly import auroc
from hybrids.metrics.denoising import mse, psnr
from hybrids.samplers.langevin import ar_langevin_sample

_DENY = ["device", "generator"]


def _model_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters()), torch.get_default_dtype())


def _to_model_space(data, k: Tensor, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Integer levels -> uniformly dequantized [-1, 1]; float (toy) data unchanged."""
    if data.num_levels is None:
        return k.to(dtype)
    return dequantize(k, data.num_levels, generator, dtype=dtype)


def _normal_like(x: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)


def _conditional_scores(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """s(x) in batches, without a graph; shaped like x."""
    out = []
    for chunk in x.split(batch_size):
        with torch.no_grad():
            out.append(model.conditional_scores(chunk, None)[0])
    return torch.cat(out)


@gin.configurable(module="hybrids.arcsm", denylist=_DENY)
def arcsm_sampler(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_samples: int = 16,
    n_steps: int = 100,
    step_size: float = 1e-4,
) -> dict[str, Tensor]:
    """Per-dimension Langevin samples (``hybrids.samplers.ar_langevin_sample``).

    Images start from U[-1, 1] and are returned as int64 levels (``quantize``); 2-D toys start
    from N(0, I) and are returned as float points.

    Args:
        num_samples: N.
        n_steps: Langevin updates per dimension.
        step_size: eps of x <- x + eps s + sqrt(2 eps) z (keep it well below sigma^2 for images).

    Returns:
        ``{'samples': [N, C, H, W] int64}`` or ``{'samples': [N, 2] float}``.
    """
    shape = (num_samples, *data.data.shape[1:])
    dtype = _model_dtype(model)
    if data.num_levels is None:
        init = torch.randn(shape, generator=generator, dtype=dtype, device=generator.device)
    else:
        init = 2 * torch.rand(shape, generator=generator, dtype=dtype, device=generator.device) - 1
    x = ar_langevin_sample(model, shape, n_steps=n_steps, step_size=step_size,
                           generator=generator, init=init.to(device))
    if data.num_levels is None:
        return {"samples": x.float().cpu()}
    return {"samples": quantize(x.float(), data.num_levels).cpu()}


def single_step_denoise(model: nn.Module, y: Tensor, sigma: float, batch_size: int = 64) -> Tensor:
    """xhat_d = y_d + sigma^2 s_d(y): AR-CSM single-step denoising.

    Tweedie's formula E[x | y] = y + sigma^2 grad_y log p_sigma(y) needs the joint score of the
    noisy data; AR-CSM supplies only the diagonal terms s_d = d/dy_d log p_sigma(y_d | y_<d)
    (the terms d/dy_d log p_sigma(y_j | y_<j), j > d, are dropped), so this is an approximation
    to Tweedie's formula, exact when the noisy coordinates are independent.

    Args:
        model: AR-CSM trained on data perturbed with N(0, sigma^2).
        y: ``[B, ...]`` noisy inputs.
        sigma: the noise std (model space).
        batch_size: evaluation batch size.

    Returns:
        Denoised ``[B, ...]``.
    """
    return y + sigma**2 * _conditional_scores(model, y, batch_size)


@gin.configurable(module="hybrids.arcsm", denylist=_DENY)
def arcsm_denoise_eval(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    sigma: float = 0.6,
    num_examples: int = 64,
    batch_size: int = 64,
) -> dict[str, float]:
    """MSE and PSNR (data range 2, model space [-1, 1]) of noisy and denoised test inputs.

    x = dequantized test image (or a toy point), y = x + sigma z, xhat = single_step_denoise(y).
    papers/001 denoises MNIST at sigma = 0.6 "in the rescaled space"; the library reads this as
    sigma = 0.6 in its [-1, 1] model space (the default here). The model must have been trained
    at the same sigma.

    Returns:
        ``mse_noisy``, ``mse_denoised``, ``psnr_noisy``, ``psnr_denoised`` (means over examples),
        ``sigma`` and ``num_examples``.
    """
    dtype = _model_dtype(model)
    x = _to_model_space(data, data.data[:num_examples], generator, dtype).to(device)
    y = x + sigma * _normal_like(x, generator)
    xhat = single_step_denoise(model, y, sigma, batch_size)
    return {
        "sigma": float(sigma),
        "num_examples": int(x.shape[0]),
        "mse_noisy": float(mse(y, x).mean()),
        "mse_denoised": float(mse(xhat, x).mean()),
        "psnr_noisy": float(psnr(y, x).mean()),
        "psnr_denoised": float(psnr(xhat, x).mean()),
    }


@gin.configurable(module="hybrids.arcsm", denylist=_DENY)
def arcsm_denoise_images(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    sigma: float = 0.6,
    num_examples: int = 16,
) -> dict[str, Tensor]:
    """Clean, noisy and denoised test images (int64 levels) for a picture like papers/001 Fig. 5."""
    if data.num_levels is None:
        raise ValueError("arcsm_denoise_images needs image data (integer levels)")
    dtype = _model_dtype(model)
    x = _to_model_space(data, data.data[:num_examples], generator, dtype).to(device)
    y = x + sigma * _normal_like(x, generator)
    xhat = single_step_denoise(model, y, sigma)
    levels = data.num_levels
    return {name: quantize(v.float(), levels).cpu()
            for name, v in (("clean", x), ("noisy", y), ("denoised", xhat))}


OOD_SETS = ("uniform_noise", "inverted", "flipped")


def _ood_levels(name: str, k: Tensor, num_levels: int, generator: torch.Generator) -> Tensor:
    """Out-of-distribution images made from test images k ``[N, C, H, W]``."""
    if name == "uniform_noise":  # i.i.d. uniform levels
        return torch.randint(0, num_levels, k.shape, generator=generator,
                             device=generator.device).to(k.device)
    if name == "inverted":  # k -> K - 1 - k
        return num_levels - 1 - k
    if name == "flipped":  # upside down
        return torch.flip(k, dims=(-2,))
    raise ValueError(f"unknown OOD set {name!r}; choose from {OOD_SETS}")


@gin.configurable(module="hybrids.arcsm", denylist=_DENY)
def arcsm_anomaly_eval(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    sigma: float = 0.0,
    ood: Sequence[str] = OOD_SETS,
    num_examples: int = 256,
    batch_size: int = 64,
) -> dict[str, float]:
    """AUROC of the anomaly score ||s(x)||_2 (2-norm over all dimensions; higher = anomalous).

    In-distribution: the first ``num_examples`` test images. Out-of-distribution sets built from
    the same images: 'uniform_noise' (i.i.d. uniform levels), 'inverted' (K - 1 - k), 'flipped'
    (upside down). All inputs are dequantized and perturbed with N(0, sigma^2) noise, sigma the
    training noise of the model. AUROC (``hybrids.metrics.anomaly.auroc``) is threshold free:
    it is the probability that an OOD input scores above an in-distribution one.

    Returns:
        ``auroc_<set>`` and ``mean_norm_<set>`` per OOD set, ``mean_norm_in``.
    """
    if data.num_levels is None:
        raise ValueError("arcsm_anomaly_eval builds its OOD sets from images (integer levels)")
    dtype = _model_dtype(model)
    k = data.data[:num_examples].to(device)

    def norms(levels: Tensor) -> Tensor:
        x = _to_model_space(data, levels, generator, dtype)
        if sigma > 0:
            x = x + sigma * _normal_like(x, generator)
        return _conditional_scores(model, x, batch_size).flatten(1).norm(dim=1)

    s_in = norms(k)
    out: dict[str, float] = {"mean_norm_in": float(s_in.mean())}
    for name in ood:
        s_out = norms(_ood_levels(name, k, data.num_levels, generator))
        out[f"auroc_{name}"] = auroc(s_in, s_out)
        out[f"mean_norm_{name}"] = float(s_out.mean())
    return out


@gin.configurable(module="hybrids.arcsm", denylist=_DENY)
def density_anomaly_eval(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    ood: Sequence[str] = OOD_SETS,
    num_examples: int = 256,
    batch_size: int = 64,
) -> dict[str, float]:
    """AUROC of the likelihood detector -log P_theta(k) (bits/dim; higher = anomalous).

    The maximum-likelihood baselines' counterpart of ``arcsm_anomaly_eval``, on the same
    in-distribution images and OOD sets ('uniform_noise', 'inverted', 'flipped'), scored by the
    model's exact discrete likelihood (``model.discrete_log_prob``) instead of a score norm.

    Returns:
        ``auroc_<set>`` and ``mean_bpd_<set>`` per OOD set, ``mean_bpd_in``.
    """
    if data.num_levels is None:
        raise ValueError("density_anomaly_eval builds its OOD sets from images (integer levels)")
    if not hasattr(model, "discrete_log_prob"):
        raise TypeError(f"density_anomaly_eval needs a model with discrete_log_prob (an MLE model); "
                        f"{type(model).__name__} has none: use arcsm_anomaly_eval for score models.")
    k = data.data[:num_examples].to(device)
    dims = k[0].numel()

    def bpd(levels: Tensor) -> Tensor:
        with torch.no_grad():
            nll = torch.cat([-model.discrete_log_prob(chunk) for chunk in levels.split(batch_size)])
        return nll / (dims * math.log(2.0))

    b_in = bpd(k)
    out: dict[str, float] = {"mean_bpd_in": float(b_in.mean())}
    for name in ood:
        b_out = bpd(_ood_levels(name, k, data.num_levels, generator))
        out[f"auroc_{name}"] = auroc(b_in, b_out)
        out[f"mean_bpd_{name}"] = float(b_out.mean())
    return out


def _cumulative_trapezoid(f: Tensor, dx: float) -> Tensor:
    """F_j = int_{g_0}^{g_j} f along the last dimension (trapezoid rule), F_0 = 0."""
    steps = 0.5 * dx * (f[..., 1:] + f[..., :-1])
    return torch.cat([torch.zeros_like(f[..., :1]), steps.cumsum(-1)], dim=-1)


def _normalise(log_q: Tensor, dx: float) -> Tensor:
    """exp(log_q) normalised to unit trapezoid integral along the last dimension."""
    q = torch.exp(log_q - log_q.max(-1, keepdim=True).values)
    return q / torch.trapezoid(q, dx=dx, dim=-1).unsqueeze(-1)


def conditional_density_grid(
    model: nn.Module, lim: tuple[float, float] = (-4.0, 4.0), resolution: int = 200,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Numerically normalised density of a 2-D AR-CSM on a square grid.

    log q(x_1) = int s_1 dx_1 and log q(x_2 | x_1) = int s_2(x_1, .) dx_2 (cumulative trapezoid
    from the grid's lower edge, i.e. up to a constant per conditioning value), each normalised on
    the grid; the joint is q(x_1) q(x_2 | x_1). Mass outside the grid is ignored.

    Args:
        model: AR-CSM on 2-D data (``conditional_scores``).
        lim: grid range (the same for both coordinates).
        resolution: n grid points per axis.

    Returns:
        ``(grid [n], density [n, n])`` with density[i, j] = q(x_1 = grid[i], x_2 = grid[j]).
    """
    dtype = _model_dtype(model)
    grid = torch.linspace(lim[0], lim[1], resolution, dtype=dtype, device=device)
    dx = float(grid[1] - grid[0])
    x1, x2 = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([x1.flatten(), x2.flatten()], dim=1)
    s = _conditional_scores(model, pts, batch_size=4096).reshape(resolution, resolution, 2)
    q1 = _normalise(_cumulative_trapezoid(s[:, 0, 0], dx), dx)  # s_1 does not depend on x_2
    q2 = _normalise(_cumulative_trapezoid(s[:, :, 1], dx), dx)  # [i, j] = q(grid_j | grid_i)
    return grid, q1[:, None] * q2


@gin.configurable(module="hybrids.arcsm", denylist=_DENY)
def arcsm_density_image(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    lim: tuple[float, float] = (-4.0, 4.0),
    resolution: int = 200,
    colormap: str = "viridis",
) -> dict[str, Tensor]:
    """The numerically normalised 2-D density as an RGB picture (x_1 right, x_2 up).

    Returns:
        ``{'density': [1, 3, n, n] int64}`` levels 0..255 (stretched so that the brightest channel
        value is 255), which the runner writes as a PNG.
    """
    _, dens = conditional_density_grid(model, lim, resolution, device)
    img = dens.T.flip(0).cpu().double().numpy()  # rows: x_2 from top (high) to bottom
    rgb = matplotlib.colormaps[colormap](img / img.max())[..., :3]
    levels = np.round(255 * rgb / rgb.max()).astype(np.int64)
    return {"density": torch.from_numpy(levels).permute(2, 0, 1).unsqueeze(0)}


@gin.configurable(module="hybrids.arcsm", denylist=_DENY)
def arcsm_density_eval(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    lim: tuple[float, float] = (-4.0, 4.0),
    resolution: int = 400,
    num_examples: int = 2000,
) -> dict[str, float]:
    """Mean test log-likelihood (nats) of a 2-D AR-CSM under its grid-normalised density.

    Each test point takes the density of its nearest grid node (error O(grid spacing)); points
    outside the grid count as outside and are reported, not scored.

    Returns:
        ``test_log_likelihood`` (over points inside the grid), ``fraction_outside_grid``.
    """
    grid, dens = conditional_density_grid(model, lim, resolution, device)
    x = data.data[:num_examples].to(device=device, dtype=grid.dtype)
    inside = ((x >= lim[0]) & (x <= lim[1])).all(1)
    dx = float(grid[1] - grid[0])
    idx = torch.round((x[inside] - lim[0]) / dx).long().clamp(0, resolution - 1)
    log_p = torch.log(dens[idx[:, 0], idx[:, 1]].clamp_min(torch.finfo(dens.dtype).tiny))
    return {
        "test_log_likelihood": float(log_p.mean()),
        "fraction_outside_grid": float(1 - inside.double().mean()),
    }


@gin.configurable(module="hybrids.arcsm", denylist=_DENY)
def made_density_sampler(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_samples: int = 16,
) -> dict[str, Tensor]:
    """Ancestral samples of the MLE baselines (``hybrids.models.made.MADEDensity``).

    Returns:
        ``{'samples': [N, C, H, W] int64}`` for image data, ``{'samples': [N, 2] float}`` for toys.
    """
    shape = (num_samples, *data.data.shape[1:])
    if data.num_levels is None:
        return {"samples": model.sample(num_samples, generator, discrete=False).float().cpu()}
    if data.num_levels != model.num_levels:
        raise ValueError(f"model has num_levels={model.num_levels}, data {data.num_levels}")
    return {"samples": model.sample(num_samples, generator).reshape(shape).cpu()}
