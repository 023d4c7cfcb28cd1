"""Multimeasurement denoising: the GPS training objective.

Saremi, Srivastava and Bach, "Universal Smoothed Score Functions for Generative Modeling",
arXiv 2023, Eq. 10-11:

    L(theta) = E_x E_eps ||x - xhat_theta(ybar)||^2 / D,   ybar = x + (sigma / sqrt M) eps,

with xhat_theta(ybar) = ybar + sigma_eff^2 g_theta(ybar) (hybrids.models.gps.GPSModel).

ybar is drawn directly: for y_m = x + sigma eps_m with independent standard normal eps_m, the mean
ybar = x + sigma * mean_m eps_m and sigma * mean_m eps_m ~ N(0, sigma^2/M I), so
ybar = x + (sigma/sqrt M) eps with eps ~ N(0, I) is exact in law (not an approximation) and costs
D instead of M*D noise draws. ``sample_measurements=True`` draws the M measurements explicitly
and averages them (for checking that claim). Because the loss depends on (sigma, M) only through
sigma/sqrt(M), every member of a universality class has the same loss (same paper, Prop. 2).
The data and the noise go through the shared path of ``hybrids.objectives.perturb``: ybar is the
perturbation x_t = x + sigma_eff z of one fixed noise level, with t = None.
"""
from __future__ import annotations

import math

import gin
import torch
from torch import Tensor

from hybrids.models.gps import GPSModel
from hybrids.objectives.perturb import Perturbation, model_space_data, perturb_gaussian
from hybrids.tensors import randn


@gin.configurable(module="hybrids.objectives")
class MultimeasurementDenoising:
    """min E ||x - xhat(ybar)||^2 (per-dimension mean) for a :class:`GPSModel`.

    Args:
        sigma: per-measurement noise std; None takes the model's.
        M: number of measurements; None takes the model's. (sigma, M) must lie in the model's
            universality class: sigma/sqrt(M) equal to the model's sigma_eff.
        num_levels: levels of integer data (dequantized to [-1, 1]); None for continuous data,
            which is used as is.
        sample_measurements: draw the M measurements and average them instead of drawing ybar
            directly (same law, M times the noise; for checks).
    """

    def __init__(
        self,
        sigma: float | None = None,
        M: int | None = None,
        num_levels: int | None = 256,
        sample_measurements: bool = False,
    ):
        if (sigma is None) != (M is None):
            raise ValueError("give both sigma and M, or neither (then the model's are used).")
        if M is not None and (isinstance(M, bool) or not isinstance(M, int) or M < 1):
            raise ValueError(f"M must be an int >= 1, got {M!r}.")
        if sigma is not None and not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}.")
        self.sigma = sigma
        self.M = M
        self.num_levels = num_levels
        self.sample_measurements = sample_measurements

    def _noise_params(self, model: GPSModel) -> tuple[float, int]:
        if not isinstance(model, GPSModel):
            raise TypeError(f"MultimeasurementDenoising needs a hybrids.models.gps.GPSModel, got {type(model).__name__}.")
        if self.sigma is None:
            return model.sigma, model.M
        sigma_eff = self.sigma / math.sqrt(self.M)
        if not math.isclose(sigma_eff, model.sigma_eff, rel_tol=1e-9):
            raise ValueError(
                f"objective (sigma={self.sigma}, M={self.M}) has sigma/sqrt(M) = {sigma_eff:.6g} but the "
                f"model's class is sigma_eff = {model.sigma_eff:.6g}; use model.with_measurements or "
                "matching values."
            )
        return self.sigma, self.M

    def perturbation(self, model: GPSModel, x: Tensor, generator: torch.Generator | None = None) -> Perturbation:
        """ybar = x + sigma_eff z as a :class:`Perturbation` (``x_t`` = ybar, ``std`` = sigma_eff).

        With ``sample_measurements`` the M measurements x + sigma eps_m are drawn and averaged;
        ``noise`` is then (ybar - x) / sigma_eff, standard normal in law.
        """
        sigma, M = self._noise_params(model)
        sigma_eff = sigma / math.sqrt(M)
        if not self.sample_measurements:
            return perturb_gaussian(x, sigma_eff, generator)
        eps = randn((x.shape[0], M) + tuple(x.shape[1:]), generator, dtype=x.dtype, device=x.device)
        ybar = (x.unsqueeze(1) + sigma * eps).mean(dim=1)
        ones = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        return Perturbation(x0=x, x_t=ybar, noise=(ybar - x) / sigma_eff, t=None, mean_coef=ones,
                            std=sigma_eff * ones, weight=ones)

    def per_example_loss(self, model: GPSModel, batch, generator: torch.Generator | None = None) -> Tensor:
        """||x - xhat(ybar)||^2 / D for each example, ``[B]``."""
        self._noise_params(model)  # type and universality-class checks before touching the data
        x = model_space_data(model, batch, self.num_levels, generator)
        p = self.perturbation(model, x, generator)
        xhat = model.xhat_from_ybar(p.x_t)
        return ((p.x0 - xhat) ** 2).flatten(1).mean(1)

    def __call__(self, model: GPSModel, batch, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """Return (mean loss, metrics): ``loss``, ``loss_std`` over the batch and ``sigma_eff``."""
        per_example = self.per_example_loss(model, batch, generator)
        loss = per_example.mean()
        metrics = {
            "loss": float(loss.detach()),
            "loss_std": float(per_example.detach().std()) if per_example.numel() > 1 else 0.0,
            "sigma_eff": float(model.sigma_eff),
        }
        return loss, metrics
