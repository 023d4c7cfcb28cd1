"""Benchmark: fast vs naive ancestral sampling of PixelCNN++/NCPN (hybrids.samplers.autoregressive).

Runs both methods in one process on the same generator seed (fast before and after naive, the
mean is reported) for a 1xSxS model (random initial
weights unless --checkpoint names a state_dict), checks that the samples agree and prints the
timings as JSON and as a row of the table in docs/benchmarks.md:

    OMP_NUM_THREADS=1 python benchmarks/ar_sampling.py [--model ncpn] [--t 0.05] [--batch 2]

naive runs one full forward pass per pixel; fast evaluates the network through the per-pixel
cache (``hybrids.models.pixelcnnpp_incremental``): about one position of every layer per pixel.
With ``--naive_pixels N`` naive is run on the first N pixels only (its per-pixel cost does not
depend on the pixel: one full pass and one pixel's draw) and its time is extrapolated to all
S*S pixels; the samples are then compared on those N pixels. With untrained weights almost no
sampled level equals the placeholder, so the speed-up comes from the cache alone.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from hybrids.data import level_values
from hybrids.distributions import (
    sample_discretized_logistic_mixture_pixel,
    sample_logistic_mixture_pixel,
)
from hybrids.models.pixelcnnpp import NCPN, PixelCNNpp
from hybrids.samplers.autoregressive import ancestral_sample
from hybrids.sdes import VPSDE


@torch.no_grad()
def naive_first_pixels(model, shape, t, generator, num_pixels: int) -> torch.Tensor:
    """The first ``num_pixels`` pixels (raster order) of ``ancestral_sample(method='naive')``:
    the same loop (one full pass per pixel, the same per-pixel draws), stopped early.

    Returns:
        ``[B, C, num_pixels]`` levels (t None) or values.
    """
    b, c, height, width = shape
    discrete = t is None
    x = torch.full(shape, -1.0 if discrete else 0.0)
    t_vec = torch.full((b,), 0.0 if discrete else t)
    out = []
    for p in range(num_pixels):
        r, col = divmod(p, width)
        params = model(x, t_vec)[:, :, r, col]
        if discrete:
            k = sample_discretized_logistic_mixture_pixel(params, model.num_levels, generator,
                                                          num_channels=c)
            x[:, :, r, col] = level_values(k, model.num_levels, dtype=x.dtype)
            out.append(k)
        else:
            x[:, :, r, col] = sample_logistic_mixture_pixel(params, generator, num_channels=c)
            out.append(x[:, :, r, col].clone())
    return torch.stack(out, dim=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["pixelcnnpp", "ncpn"], default="pixelcnnpp")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--nr_filters", type=int, default=32)
    parser.add_argument("--nr_resnet", type=int, default=1)
    parser.add_argument("--num_levels", type=int, default=256)
    parser.add_argument("--t", type=float, default=0.0, help="0: discrete levels; > 0: continuous at t")
    parser.add_argument("--naive_pixels", type=int, default=None,
                        help="run naive on the first N pixels only and extrapolate its time")
    parser.add_argument("--checkpoint", default=None, help="optional state_dict (.pt) to load")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    kw = dict(num_levels=args.num_levels, nr_filters=args.nr_filters, nr_resnet=args.nr_resnet,
              nr_logistic_mix=10, dropout=0.0)
    shape = (1, args.size, args.size)
    model = NCPN(shape, sde=VPSDE(), **kw) if args.model == "ncpn" else PixelCNNpp(shape, **kw)
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
    model = model.eval()
    t = None if args.t == 0 else args.t
    full_shape = (args.batch,) + shape
    num_pixels = args.size * args.size
    results = {}

    def run_fast() -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        g = torch.Generator().manual_seed(args.seed)
        return ancestral_sample(model, full_shape, t=t, generator=g), time.perf_counter() - start

    # fast runs before and after naive (the mean is reported): the machine's load may drift.
    fast, before = run_fast()
    g = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    if args.naive_pixels is None:
        naive = ancestral_sample(model, full_shape, t=t, generator=g, method="naive")
        results["naive_s"] = time.perf_counter() - start
        compared = num_pixels
    else:
        compared = min(args.naive_pixels, num_pixels)
        naive = naive_first_pixels(model, full_shape, t, g, compared)
        results["naive_s"] = (time.perf_counter() - start) * num_pixels / compared
        fast = fast.flatten(2)[:, :, :compared]
    after = run_fast()[1]
    results["fast_s"] = (before + after) / 2
    results["fast_runs_s"] = [before, after]
    results["naive_extrapolated_from_pixels"] = None if args.naive_pixels is None else compared
    results["identical"] = bool(torch.equal(fast, naive))
    results["max_abs_diff"] = float((fast.double() - naive.double()).abs().max())
    results["speedup"] = results["naive_s"] / results["fast_s"]
    results["config"] = vars(args)
    print(json.dumps(results, indent=1))
    config = (f"{args.model} 1x{args.size}x{args.size}, {args.nr_filters} filters, "
              f"{args.nr_resnet} resnet(s), batch {args.batch}, t = {args.t}")
    same = "yes, bitwise" if results["identical"] else (
        f"{'to rounding' if t is not None else 'no'} (max diff {results['max_abs_diff']:.1e})")
    if args.naive_pixels is not None:
        same += f" (first {compared} pixels)"
    print(f"| {config} | {results['naive_s']:.1f} | {results['fast_s']:.2f} | "
          f"**{results['speedup']:.1f}x** | {same} |")


if __name__ == "__main__":
    main()
