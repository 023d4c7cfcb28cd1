"""Time-conditional MLP score network for vectors and 2-D data: ``net(x [B, ...], t [B]) -> like x``."""
from __future__ import annotations

import math

import gin
import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1000.0, max_period: float = 10_000.0) -> Tensor:
    """Transformer-style embedding of ``scale * t``: [sin(w_k s t), cos(w_k s t)], ``[B, dim]``.

    Defined at t = 0 (t itself is embedded, not log sigma(t)). ``dim`` must be even.
    """
    if dim % 2:
        raise ValueError(f"embedding dim must be even; got {dim}.")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    args = scale * t[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


@gin.configurable(module="hybrids.models")
class TimeMLP(nn.Module):
    """MLP with a sinusoidal time embedding added after every hidden layer (SiLU activations).

    Args:
        dim: D, the number of input dimensions (inputs ``[B, ...]`` are flattened to ``[B, D]``).
        hidden: hidden width.
        num_layers: number of hidden layers (>= 1).
        embed_dim: size of the time embedding.
    """

    def __init__(self, dim: int = gin.REQUIRED, hidden: int = 128, num_layers: int = 3, embed_dim: int = 64):
        super().__init__()
        if dim < 1 or hidden < 1 or num_layers < 1:
            raise ValueError(f"TimeMLP needs dim, hidden, num_layers >= 1; got {dim}, {hidden}, {num_layers}.")
        self.dim, self.embed_dim = int(dim), int(embed_dim)
        self.embed = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.hidden = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(num_layers)])
        self.time_proj = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(num_layers)])
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x: ``[B, ...]`` with D elements per example; t: ``[B]``. Returns like ``x``."""
        flat = x.flatten(1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"TimeMLP(dim={self.dim}) got x of shape {tuple(x.shape)}.")
        temb = self.embed(sinusoidal_embedding(t.to(x.dtype).reshape(-1), self.embed_dim))
        h = self.inp(flat)
        for layer, proj in zip(self.hidden, self.time_proj):
            h = layer(nn.functional.silu(h + proj(temb)))
        return self.out(nn.functional.silu(h)).reshape(x.shape)
