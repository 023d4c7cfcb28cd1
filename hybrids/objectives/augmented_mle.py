"""Maximum likelihood on noise-augmented levels: the "any smoothing" control for NCML's pi test.

NCML trains a density at t = 0 on clean levels and at t > 0 on noisy data, and its likelihood then
degrades less under small level perturbations. A plain way to make a likelihood model smoother is
to train it on noisy levels. This objective does that with NCML's noise magnitudes: with
probability ``p_clean`` an example keeps its levels k; otherwise they are replaced by

    k' = quantize(x + sigma_t z),   x = dequantize(k),   t ~ U(0, t_max],   z ~ N(0, I),

sigma_t the marginal std of ``sde`` (VP: sqrt(1 - exp(-int beta)); the mean scaling m(t) of VP and
subVP is left out: it is a change of contrast, not noise), and the loss is the discrete likelihood
of the levels in bits per dimension. A table row with this objective separates "NCML" from "any
smoothing" in the pi test.
"""
from __future__ import annotations

from typing import Any

import gin
import torch
from torch import Tensor, nn

from hybrids.data import dequantize, quantize
from hybrids.likelihood.units import nats_to_bpd
from hybrids.objectives.batches import batch_data, check_data
from hybrids.objectives.ncml import default_t_max
from hybrids.sdes import SDE
from hybrids.tensors import expand_as_batch, rand, randn_like


@gin.configurable(module="hybrids.objectives")
class NoiseAugmentedMLE:
    """Discrete MLE on levels augmented with NCML-sized Gaussian noise (see the module docstring).

    Args:
        sde: the SDE whose marginal std sizes the noise.
        num_levels: K of the integer data.
        t_max: largest t (None: NCML's T_ncml for the SDE).
        p_clean: probability that an example keeps its clean levels.

    Call: ``objective(model, batch, *, generator=None) -> (loss, metrics)`` with metrics ``bpd``
    (= loss) and ``frac_clean``.
    """

    def __init__(self, sde: SDE = gin.REQUIRED, num_levels: int = 256, t_max: float | None = None,
                 p_clean: float = 0.5):
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a hybrids.sdes.SDE (e.g. VPSDE()); got {type(sde).__name__}.")
        if isinstance(num_levels, bool) or int(num_levels) != num_levels or num_levels < 2:
            raise ValueError(f"num_levels must be an int >= 2; got {num_levels!r}.")
        self.t_max = default_t_max(sde) if t_max is None else float(t_max)
        if not 0.0 < self.t_max <= sde.T:
            raise ValueError(f"t_max must lie in (0, T = {sde.T}]; got {self.t_max}.")
        if not 0.0 <= p_clean <= 1.0:
            raise ValueError(f"p_clean must be a probability in [0, 1]; got {p_clean}.")
        self.sde, self.num_levels, self.p_clean = sde, int(num_levels), float(p_clean)

    def augment(self, k: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(k', clean [B] bool)``: levels with noise added to the examples that are not clean."""
        b = k.shape[0]
        clean = rand((b,), generator, dtype=torch.float64, device=k.device) < self.p_clean
        t = self.t_max * (1.0 - rand((b,), generator, dtype=torch.float64, device=k.device))  # (0, t_max]
        x = dequantize(k, self.num_levels, generator, dtype=torch.float64)
        std = self.sde.marginal_coefs(t).std
        noisy = quantize(x + expand_as_batch(std, x) * randn_like(x, generator), self.num_levels)
        return torch.where(expand_as_batch(clean, k), k, noisy.to(k.dtype)), clean

    def __call__(self, model: nn.Module, batch: Any, *,
                 generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        data = batch_data(batch)
        check_data(data, self.num_levels)
        k, clean = self.augment(data, generator)
        loss = nats_to_bpd(-model.discrete_log_prob(k).mean(), data[0].numel())
        return loss, {"bpd": float(loss.detach()), "frac_clean": float(clean.double().mean())}
