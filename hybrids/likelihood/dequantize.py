"""Dequantization bounds on the discrete likelihood of a continuous density.

Pixel space: integer levels k in {0..K-1}^D, continuous y = k + u with u in [0, 1)^D; model space
x = 2 (k + u) / K - 1 in [-1, 1]^D, so log p_pixel(k + u) = log p_x(x) + D log(2 / K).
For any dequantizer q(u | k) on [0, 1)^D and S samples u_s ~ q(u | k),

    log P(k) >= E[ log (1/S) sum_s p_pixel(k + u_s) / q(u_s | k) ]

(S = 1 with q uniform, log q = 0, is the usual uniform-dequantization bound).

Variational dequantization (Flow++: Ho, Chen, Srinivas, Duan and Abbeel, ICML 2019): q_phi(u | k) is the push-forward of
v ~ U(0, 1)^D through u = sigmoid(h_phi(logit(v); k)), h_phi a stack of conditional affine
coupling layers. Each coupling's scale and shift nets end in zero-initialised layers, so at
initialisation h_phi is the identity, u = v exactly and log q(u | k) = 0: the untrained flow IS
uniform dequantization. log q(u | k) = -[log|d logit/dv| + log|det dh/dy| + log|d sigmoid/dy'|].
The conditioner is an MLP on the flattened level values 2k/(K-1) - 1
(``hybrids.data.transforms.level_values``) and the unmasked coordinates.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from hybrids.data.transforms import level_values
from hybrids.tensors import model_dtype, rand

LogProbFn = Callable[[Tensor], Tensor]
_CLAMP = 1e-6


def pixel_log_prob(log_prob_x: Tensor, num_dims: int, num_levels: int) -> Tensor:
    """log p_pixel(k + u) = log p_x(x) + D log(2 / K), ``[B]``."""
    return log_prob_x + num_dims * math.log(2.0 / num_levels)


def _to_model_space(k: Tensor, u: Tensor, num_levels: int) -> Tensor:
    return 2.0 * (k.to(u.dtype) + u) / num_levels - 1.0


class _Coupling(nn.Module):
    """y_b' = y_b exp(tanh(s)) + t with (s, t) = net([y_a masked, c]); identity at init."""

    def __init__(self, dim: int, mask: Tensor, hidden: int):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, y: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(torch.cat([y * self.mask, cond], 1)).chunk(2, 1)
        s = torch.tanh(s) * (1 - self.mask)
        t = t * (1 - self.mask)
        return y * torch.exp(s) + t, s.sum(1)


class VariationalDequantizer(nn.Module):
    """Conditional flow q_phi(u | k) on [0, 1)^D (Flow++-style), exactly uniform at initialisation.

    Args:
        num_dims: D (inputs ``[B, ...]`` are flattened).
        num_levels: K.
        num_couplings: coupling layers (alternating masks).
        hidden: hidden width of each coupling's MLP.
    """

    def __init__(self, num_dims: int, num_levels: int, num_couplings: int = 4, hidden: int = 64):
        super().__init__()
        if num_dims < 1 or num_levels < 2 or num_couplings < 1:
            raise ValueError(f"Need num_dims >= 1, num_levels >= 2, num_couplings >= 1; got {num_dims}, {num_levels}, {num_couplings}.")
        self.num_dims, self.num_levels = int(num_dims), int(num_levels)
        base = (torch.arange(num_dims) % 2).to(torch.get_default_dtype())
        masks = [base if i % 2 == 0 else 1 - base for i in range(num_couplings)]
        if num_dims == 1:
            masks = [torch.zeros(1)] * num_couplings
        self.couplings = nn.ModuleList([_Coupling(num_dims, m, hidden) for m in masks])

    def sample(self, k: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw u ~ q(u | k) and log q(u | k).

        Args:
            k: integer levels, ``[B, ...]`` with D elements per example.
            generator: random source.

        Returns:
            ``(u, log_q)``: u like ``k`` (float, in (0, 1)), log_q ``[B]`` nats.
        """
        if k[0].numel() != self.num_dims:
            raise ValueError(f"VariationalDequantizer(num_dims={self.num_dims}) got k of shape {tuple(k.shape)}.")
        dtype = model_dtype(self)
        flat_k = k.flatten(1).to(dtype)
        v = rand(flat_k.shape, generator, dtype=dtype, device=flat_k.device)
        v = v.clamp(_CLAMP, 1 - _CLAMP)
        cond = level_values(flat_k, self.num_levels, dtype=dtype)
        y = torch.log(v) - torch.log1p(-v)
        log_det = -(torch.log(v) + torch.log1p(-v)).sum(1)  # log |d logit / dv|
        for coupling in self.couplings:
            y, ld = coupling(y, cond)
            log_det = log_det + ld
        u = torch.sigmoid(y)
        log_det = log_det + (nn.functional.logsigmoid(y) + nn.functional.logsigmoid(-y)).sum(1)
        return u.reshape(k.shape), -log_det


def dequantization_log_weights(
    log_prob_fn: LogProbFn,
    k: Tensor,
    num_levels: int,
    *,
    dequantizer: VariationalDequantizer | None = None,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Log importance weights log w_s = log p_pixel(k + u_s) - log q(u_s | k), u_s ~ q(u | k).

    Args:
        log_prob_fn: log p_x of model-space x ``[B, ...]`` -> ``[B]`` (e.g. an ODE likelihood).
        k: integer levels ``[B, ...]``.
        num_levels: K.
        dequantizer: q(u | k); None means uniform (log q = 0).
        n_samples: S draws per example (``log_prob_fn`` is called S times on batches of B).
        generator: random source.
        dtype: dtype of x for uniform dequantization.

    Returns:
        ``[S, B]`` log weights in nats; their log-mean-exp over the first s rows is the s-sample bound.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1; got {n_samples}.")
    if k.is_floating_point():
        raise TypeError("k must be integer levels; dequantization bounds need discrete data.")
    num_dims = k[0].numel()
    terms = []
    for _ in range(n_samples):
        if dequantizer is None:
            u = rand(k.shape, generator, dtype=dtype, device=k.device)
            log_q = torch.zeros(k.shape[0], dtype=dtype, device=k.device)
        else:
            u, log_q = dequantizer.sample(k, generator)
        x = _to_model_space(k, u, num_levels)
        terms.append(pixel_log_prob(log_prob_fn(x), num_dims, num_levels) - log_q)
    return torch.stack(terms, 0)


def multisample_bounds(log_weights: Tensor, sizes: Sequence[int]) -> dict[int, Tensor]:
    """The nested s-sample bounds log (1/s) sum_{i<s} w_i for each s in ``sizes``.

    Args:
        log_weights: ``[S, B]`` from :func:`dequantization_log_weights`.
        sizes: sample counts, each in 1..S (the bounds share their first draws, so they are
            paired: for exact log p_x their expectations increase with s towards log P(k)).

    Returns:
        ``{s: [B] bounds in nats}``.
    """
    total = log_weights.shape[0]
    bad = [s for s in sizes if not 1 <= int(s) <= total]
    if bad:
        raise ValueError(f"sample counts {bad} outside 1..{total} (the number of log weights drawn).")
    return {int(s): torch.logsumexp(log_weights[: int(s)], 0) - math.log(int(s)) for s in sizes}


def dequantization_log_prob(
    log_prob_fn: LogProbFn,
    k: Tensor,
    num_levels: int,
    *,
    dequantizer: VariationalDequantizer | None = None,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Lower bound on log P(k) in nats: log (1/S) sum_s p_pixel(k + u_s) / q(u_s | k).

    Args:
        log_prob_fn: log p_x of model-space x ``[B, ...]`` -> ``[B]`` (e.g. an ODE likelihood).
        k: integer levels ``[B, ...]``.
        num_levels: K.
        dequantizer: q(u | k); None means uniform (log q = 0).
        n_samples: S importance samples (S = 1: the plain dequantization bound).
        generator: random source.
        dtype: dtype of x for uniform dequantization.

    Returns:
        ``[B]`` lower bounds (their expectations are) on log P(k).
    """
    log_w = dequantization_log_weights(log_prob_fn, k, num_levels, dequantizer=dequantizer, n_samples=n_samples,
                                       generator=generator, dtype=dtype)
    return multisample_bounds(log_w, [n_samples])[n_samples]


def train_variational_dequantizer(
    dequantizer: VariationalDequantizer,
    log_prob_fn: LogProbFn,
    data: Tensor,
    *,
    num_steps: int = 500,
    batch_size: int = 64,
    lr: float = 1e-3,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Maximise E_q[log p_pixel(k + u) - log q(u | k)] over phi against a FROZEN density.

    ``log_prob_fn`` is only differentiated with respect to its input x; its parameters (if any)
    are not in the optimiser and receive no update.

    Args:
        dequantizer: the flow q_phi (updated in place).
        log_prob_fn: log p_x(x) of model-space x, ``[B]``.
        data: integer levels ``[N, ...]``.
        num_steps, batch_size, lr: Adam settings.
        generator: random source of batches and u.

    Returns:
        The per-step objective values (nats per example, higher is better).
    """
    opt = torch.optim.Adam(dequantizer.parameters(), lr=lr)
    history = []
    for _ in range(num_steps):
        device = generator.device if generator is not None else data.device
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator, device=device)
        k = data[idx.to(data.device)]
        u, log_q = dequantizer.sample(k, generator)
        x = _to_model_space(k, u, dequantizer.num_levels)
        elbo = pixel_log_prob(log_prob_fn(x), dequantizer.num_dims, dequantizer.num_levels) - log_q
        loss = -elbo.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(-float(loss.detach()))
    return history
