"""Score-only model: a raw network wrapped into a NoiseConditionalModel.

As in Song, Sohl-Dickstein, Kingma, Kumar, Ermon and Poole, "Score-Based Generative Modeling
through Stochastic Differential Equations", ICLR 2021 (score_sde). The wrapper holds the
parametrisation; the network stays raw,
``net(x [B, ...], t [B]) -> like x``:

* ``'noise'``: the network predicts the scaled noise, s(x, t) = -net(x, t) / sigma_t
  (score_sde's convention for all three SDEs); the DSM residual sigma_t s + z becomes z - net.
* ``'score'``: s(x, t) = net(x, t).
"""
from __future__ import annotations

import gin
from torch import Tensor, nn

from hybrids.models.base import NoiseConditionalModel, check_time
from hybrids.sdes import SDE
from hybrids.tensors import expand_as_batch

PARAMETRIZATIONS = ("noise", "score")


@gin.configurable(module="hybrids.models")
class ScoreModel(NoiseConditionalModel):
    """s_theta(x, t) from a raw network; ``log_prob`` is not available (use the ODE or the bound).

    Args:
        net: raw network ``net(x, t) -> like x`` (e.g. ``UNet``, ``TimeMLP``).
        sde: the forward SDE whose sigma_t scales the ``'noise'`` parametrisation.
        parametrization: ``'noise'`` (s = -net / sigma_t) or ``'score'`` (s = net).
    """

    def __init__(self, net: nn.Module = gin.REQUIRED, sde: SDE = gin.REQUIRED, parametrization: str = "noise"):
        super().__init__()
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"Unknown parametrization {parametrization!r}; choose one of {PARAMETRIZATIONS}.")
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be an nn.Module net(x, t) -> like x; got {type(net)}.")
        self.net = net
        self.sde = sde
        self.parametrization = parametrization

    def score(self, x: Tensor, t: Tensor, *, create_graph: bool | None = None) -> Tensor:
        """s(x, t), shaped like ``x`` (``create_graph`` is unused: the score is a forward pass).

        Args:
            x: ``[B, ...]`` in model space.
            t: ``[B]`` or a scalar.
        """
        t = check_time(x, t)
        out = self.net(x, t)
        if out.shape != x.shape:
            raise ValueError(f"net returned shape {tuple(out.shape)} for input {tuple(x.shape)}; it must return like x.")
        if self.parametrization == "score":
            return out
        std = self.sde.marginal_coefs(t).std
        return -out / expand_as_batch(std, x)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Alias of :meth:`score`."""
        return self.score(x, t)
