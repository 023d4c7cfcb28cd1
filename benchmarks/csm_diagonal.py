"""CSM loss (forward + backward) with the one-backward diagonal vs the naive per-dimension loop.

The naive reference computes ds_d/dx_d by D separate autograd passes of s_d through the whole
network (create_graph=True, as training needs); the library computes all D of them with one
backward pass of sum_d h(x_d, c_d) through a leaf copy of x (hybrids.models.heads). Both losses
and their parameter gradients are checked to agree before timing.

    OMP_NUM_THREADS=1 python benchmarks/csm_diagonal.py --dim 784 --batch 16
"""
from __future__ import annotations

import argparse
import time

import torch

from hybrids.models.made import MADEConditionalScore
from hybrids.objectives.csm import csm_per_example


def fast_loss(model: MADEConditionalScore, x: torch.Tensor) -> torch.Tensor:
    s, ds = model.conditional_scores(x)
    return csm_per_example(s, ds).mean()


def naive_loss(model: MADEConditionalScore, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    s = model.head(x, model.context(x))
    diag = []
    for d in range(x.shape[1]):
        (g,) = torch.autograd.grad(s[:, d].sum(), x, create_graph=True)
        diag.append(g[:, d])
    return csm_per_example(s, torch.stack(diag, 1)).mean()


def step_time(loss_fn, model, x, repeats: int) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    """Median wall time of loss + backward; also the last loss and parameter gradients."""
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = loss_fn(model, x)
        loss.backward()
        times.append(time.perf_counter() - start)
    grads = [p.grad.detach().clone() for p in model.parameters()]
    return sorted(times)[len(times) // 2], loss.detach(), grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=784)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--naive_repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = MADEConditionalScore(args.dim, hidden=(args.hidden, args.hidden),
                                 context_features=args.features, head_hidden=(32, 32))
    model.to(args.device)
    x = torch.randn(args.batch, args.dim, device=args.device)
    step_time(fast_loss, model, x, 1)  # warm-up
    t_fast, l_fast, g_fast = step_time(fast_loss, model, x, args.repeats)
    t_naive, l_naive, g_naive = step_time(naive_loss, model, x, args.naive_repeats)
    torch.testing.assert_close(l_fast, l_naive, rtol=1e-4, atol=1e-5)
    for a, b in zip(g_fast, g_naive):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    print(f"device={args.device} D={args.dim} batch={args.batch} hidden={args.hidden}x2 "
          f"F={args.features} threads={torch.get_num_threads()}")
    print(f"one-backward diagonal: {t_fast * 1e3:9.2f} ms per loss+backward "
          f"(median of {args.repeats})")
    print(f"naive per-dim loop:    {t_naive * 1e3:9.2f} ms per loss+backward "
          f"(median of {args.naive_repeats})")
    print(f"speed-up: {t_naive / t_fast:.1f}x  (losses and gradients agree)")


if __name__ == "__main__":
    main()
