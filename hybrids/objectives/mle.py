"""Maximum likelihood on clean data (the PixelCNN++ baseline of NCML's Table 1).

Integer data: loss = mean_b -log P_theta(k_b) / (D ln 2), bits per dimension of the discrete
likelihood (``hybrids.likelihood.units.nats_to_bpd``). Continuous data (``num_levels=None``, e.g. 2-D toys):
loss = mean_b -log p_theta(x_b | t = 0) / (D ln 2), bits per dimension of the density (no offset).
"""
from __future__ import annotations

from typing import Any

import gin
import torch
from torch import Tensor, nn

from hybrids.likelihood.units import nats_to_bpd
from hybrids.objectives.batches import batch_data, check_data


@gin.configurable(module="hybrids.objectives")
class MLE:
    """Negative log-likelihood in bits per dimension.

    Args:
        num_levels: K of integer data scored by ``model.discrete_log_prob``; ``None`` for
            continuous data scored by ``model.log_prob(x, t=0)``.

    Call: ``objective(model, batch) -> (loss, metrics)`` with metrics ``bpd`` (= loss) and
    ``nll_nats`` (mean -log p per example).
    """

    def __init__(self, num_levels: int | None = 256):
        if num_levels is not None and (isinstance(num_levels, bool) or int(num_levels) != num_levels or num_levels < 2):
            raise ValueError(f"num_levels must be an int >= 2 or None (continuous data); got {num_levels!r}.")
        self.num_levels = None if num_levels is None else int(num_levels)

    def __call__(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        data = batch_data(batch)
        check_data(data, self.num_levels)
        num_dims = data[0].numel()
        if self.num_levels is None:
            t = torch.zeros(data.shape[0], dtype=data.dtype, device=data.device)
            log_p = model.log_prob(data, t)
        else:
            log_p = model.discrete_log_prob(data)
        nll = -log_p
        loss = nats_to_bpd(nll.mean(), num_dims)
        return loss, {"bpd": float(loss.detach()), "nll_nats": float(nll.detach().mean())}
