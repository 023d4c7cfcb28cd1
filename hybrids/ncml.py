"""NCML runner hooks (papers/000; METHODS.md section 6): the pi sanity test and the two samplers.

Hooks share the runner signature ``hook(model, data, *, device, generator) -> dict``; ``data`` is
the test split (integer images), sizes are gin-bound keyword arguments with small CPU defaults.

* ``ncml_pi_eval``: bits/dim of the discrete likelihood at t = 0 on p_pi-perturbed test images
  (``hybrids.data.perturb_lsb``: each level moves +-1 with probability pi, reflected at the ends),
  for pi in ``pis``, and the degradation bpd(pi=1) - bpd(pi=0).
* ``ancestral_sampler``: plain ancestral sampling at t = 0 -> ``{'ancestral': levels}``.
* ``ncml_hybrid_sampler``: ``hybrid_sample`` -> ``{'hybrid': levels}``.

Hybrid sampling (``hybrid_sample``): x ~ p_theta(. | t0) by ancestral sampling of the continuous
mixture at t0 (default t0 = T_ncml), then the reverse SDE from t0 to eps with the model's score
grad_x log p_theta(x | t) (autograd), the final denoising step (the last predictor step returns
its mean), and quantization to levels (``hybrids.data.quantize``). Solver defaults (score_sde's,
the paper names none): VE reverse-diffusion predictor + one Langevin corrector step (snr 0.16),
eps = 1e-5; VP/subVP Euler-Maruyama without corrector, eps = 1e-3; step 1/1000 in t.
"""
from __future__ import annotations

import math
from typing import Sequence

import gin
import torch
from torch import Tensor, nn

from hybrids.data import perturb_lsb, quantize
from hybrids.objectives.ncml import default_t_max
from hybrids.samplers.autoregressive import ancestral_sample
from hybrids.samplers.sde import pc_sample
from hybrids.sdes import SDE, VESDE


def hybrid_defaults(sde: SDE) -> dict:
    """score_sde's solver settings for ``sde``: predictor, corrector and final time eps."""
    if isinstance(sde, VESDE):
        return {"predictor": "reverse_diffusion", "corrector": "langevin", "eps": 1e-5}
    return {"predictor": "euler_maruyama", "corrector": None, "eps": 1e-3}


def _sde_of(model: nn.Module, sde: SDE | None) -> SDE:
    sde = sde if sde is not None else getattr(model, "sde", None)
    if not isinstance(sde, SDE):
        raise ValueError(
            f"{type(model).__name__} has no `sde` attribute; bind the hook's `sde` argument in gin "
            "(e.g. ncml_hybrid_sampler.sde = %SDE)."
        )
    return sde


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
        model: noise-conditional AR model (``model(x, t) -> params``, ``model.score``), eval mode.
        sde: the SDE the model was trained with.
        shape: ``[B, C, H, W]``.
        num_levels: K of the output levels.
        t_ncml: T_ncml (default: the paper's value for ``sde``).
        t0: start of the reverse process, in (0, t_ncml] (default t_ncml).
        eps: final time (default 1e-5 VE, 1e-3 VP/subVP).
        step_size: time step; the number of steps is round((t0 - eps) / step_size), at least 1.
        predictor: None -> the SDE's default (see ``hybrid_defaults``).
        corrector: ``'auto'`` -> the SDE's default; None or ``'langevin'``.
        snr, n_corrector_steps: Langevin settings.
        generator: randomness of the ancestral draw and of the SDE solver.
        method: ancestral sampling method (``'fast'`` or ``'naive'``).

    Returns:
        ``int64 [B, C, H, W]`` levels.
    """
    t_ncml = default_t_max(sde) if t_ncml is None else float(t_ncml)
    t0 = t_ncml if t0 is None else float(t0)
    if not 0.0 < t0 <= t_ncml:
        raise ValueError(f"t0 must lie in (0, T_ncml = {t_ncml}]; got {t0}.")
    defaults = hybrid_defaults(sde)
    eps = defaults["eps"] if eps is None else float(eps)
    if not 0.0 <= eps < t0:
        raise ValueError(f"eps must lie in [0, t0 = {t0}); got {eps}.")
    if not step_size > 0:
        raise ValueError(f"step_size must be positive; got {step_size}.")
    predictor = defaults["predictor"] if predictor is None else predictor
    corrector = defaults["corrector"] if corrector == "auto" else corrector
    num_steps = max(1, round((t0 - eps) / step_size))
    x = ancestral_sample(model, shape, t=t0, generator=generator, method=method)

    def score_fn(x_t: Tensor, t: Tensor) -> Tensor:
        return model.score(x_t, t, create_graph=False)

    with torch.no_grad():
        x = pc_sample(score_fn, sde, x, t_start=t0, t_end=eps, num_steps=num_steps, predictor=predictor,
                      corrector=corrector, snr=snr, n_corrector_steps=n_corrector_steps, denoise=True,
                      generator=generator)
    return quantize(x, num_levels)


def _image_data(data, what: str) -> tuple[Tensor, int]:
    k, num_levels = data.data, data.num_levels
    if num_levels is None or k.ndim != 4:
        raise ValueError(f"{what} needs integer images [N, C, H, W] with num_levels; got {data.name} "
                         f"with shape {tuple(k.shape)} and num_levels={num_levels}.")
    return k, int(num_levels)


@gin.configurable(module="hybrids.ncml", denylist=["device", "generator"])
def ncml_pi_eval(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    pis: Sequence[float] = (0.0, 0.5, 1.0),
    num_examples: int = 256,
    batch_size: int = 64,
) -> dict:
    """Bits/dim at t = 0 on p_pi-perturbed test images (papers/000 section 2.1, Table 1).

    Args:
        model: model with ``discrete_log_prob`` (eval mode, on ``device``).
        data: test split (integer images).
        device: where to evaluate.
        generator: randomness of the perturbation.
        pis: perturbation probabilities.
        num_examples: first examples of the test split to use (all if larger).
        batch_size: examples per forward pass.

    Returns:
        ``{'bpd': {str(pi): mean}, 'se': {str(pi): standard error}, 'degradation': bpd(1) - bpd(0)
        (present when both 0 and 1 are in pis), 'num_examples': n}``.
    """
    k_all, num_levels = _image_data(data, "ncml_pi_eval")
    k_all = k_all[: int(num_examples)]
    n, num_dims = k_all.shape[0], k_all[0].numel()
    bpd, se = {}, {}
    with torch.no_grad():
        for pi in pis:
            values = []
            for start in range(0, n, int(batch_size)):
                k = k_all[start : start + int(batch_size)].to(device)
                k = perturb_lsb(k, float(pi), num_levels, generator)
                values.append(-model.discrete_log_prob(k).double().cpu() / (num_dims * math.log(2)))
            v = torch.cat(values)
            bpd[str(float(pi))] = float(v.mean())
            se[str(float(pi))] = float(v.std() / math.sqrt(n)) if n > 1 else float("nan")
    out = {"bpd": bpd, "se": se, "num_examples": n}
    if "0.0" in bpd and "1.0" in bpd:
        out["degradation"] = bpd["1.0"] - bpd["0.0"]
    return out


@gin.configurable(module="hybrids.ncml", denylist=["device", "generator"])
def ancestral_sampler(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_samples: int = 16,
    method: str = "fast",
) -> dict[str, Tensor]:
    """Plain ancestral sampling at t = 0: ``{'ancestral': int64 [N, C, H, W]}``."""
    k, num_levels = _image_data(data, "ancestral_sampler")
    shape = (int(num_samples),) + tuple(k.shape[1:])
    levels = ancestral_sample(model, shape, t=None, num_levels=num_levels, generator=generator,
                              method=method, device=device)
    return {"ancestral": levels.cpu()}


@gin.configurable(module="hybrids.ncml", denylist=["device", "generator"])
def ncml_hybrid_sampler(
    model: nn.Module,
    data,
    *,
    device: torch.device,
    generator: torch.Generator,
    num_samples: int = 16,
    sde: SDE | None = None,
    t_ncml: float | None = None,
    t0: float | None = None,
    eps: float | None = None,
    step_size: float = 1e-3,
    predictor: str | None = None,
    corrector: str | None = "auto",
    snr: float = 0.16,
    n_corrector_steps: int = 1,
    method: str = "fast",
) -> dict[str, Tensor]:
    """Hybrid sampling (see ``hybrid_sample``): ``{'hybrid': int64 [N, C, H, W]}``.

    ``sde`` defaults to ``model.sde``; the other arguments are those of ``hybrid_sample``.
    """
    k, num_levels = _image_data(data, "ncml_hybrid_sampler")
    shape = (int(num_samples),) + tuple(k.shape[1:])
    levels = hybrid_sample(
        model, _sde_of(model, sde), shape, num_levels=num_levels, t_ncml=t_ncml, t0=t0, eps=eps,
        step_size=step_size, predictor=predictor, corrector=corrector, snr=snr,
        n_corrector_steps=n_corrector_steps, generator=generator, method=method,
    )
    return {"hybrid": levels.cpu()}
