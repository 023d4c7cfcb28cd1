"""Density of a 2-D autoregressive score model, normalised numerically on a grid.

An AR conditional score model gives s_1(x_1) = d/dx_1 log q(x_1) and
s_2(x_1, x_2) = d/dx_2 log q(x_2 | x_1). Integrating each along its own coordinate (cumulative
trapezoid rule from the grid's lower edge) gives log q(x_1) and log q(x_2 | x_1) up to a constant
per conditioning value; normalising each on the grid gives the joint q(x_1) q(x_2 | x_1). Mass
outside the grid is ignored.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from hybrids.tensors import map_in_batches, model_dtype


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
    """Numerically normalised density of a 2-D AR conditional score model on a square grid.

    Args:
        model: AR conditional score model on 2-D data (``conditional_scores(x, None)``).
        lim: grid range (the same for both coordinates).
        resolution: n grid points per axis.
        device: where to evaluate.

    Returns:
        ``(grid [n], density [n, n])`` with density[i, j] = q(x_1 = grid[i], x_2 = grid[j]).
    """
    grid = torch.linspace(lim[0], lim[1], resolution, dtype=model_dtype(model), device=device)
    dx = float(grid[1] - grid[0])
    x1, x2 = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([x1.flatten(), x2.flatten()], dim=1)
    s = map_in_batches(lambda chunk: model.conditional_scores(chunk, None)[0], pts, 4096)
    s = s.reshape(resolution, resolution, 2)
    q1 = _normalise(_cumulative_trapezoid(s[:, 0, 0], dx), dx)  # s_1 does not depend on x_2
    q2 = _normalise(_cumulative_trapezoid(s[:, :, 1], dx), dx)  # [i, j] = q(grid_j | grid_i)
    return grid, q1[:, None] * q2
