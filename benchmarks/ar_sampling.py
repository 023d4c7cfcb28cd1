"""Benchmark: fast vs naive ancestral sampling of PixelCNN++/NCPN (hybrids.samplers.autoregressive).

Runs both methods once on the same generator seed for a 1x28x28 model (random initial weights
unless --checkpoint names a state_dict), checks that the samples agree and prints the timings:

    OMP_NUM_THREADS=1 python benchmarks/ar_sampling.py [--model ncpn] [--t 0.05] [--batch 4]

naive runs one full forward pass per pixel; fast evaluates the network through the row cache
(``hybrids.models.pixelcnnpp_incremental``): about one row of the full-resolution maps per
pixel. With untrained weights almost no sampled level equals the placeholder, so the speed-up
comes from the cache alone; a trained MNIST model (background at level 0) also skips pixels.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from hybrids.models.pixelcnnpp import NCPN, PixelCNNpp
from hybrids.samplers.autoregressive import ancestral_sample
from hybrids.sdes import VPSDE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["pixelcnnpp", "ncpn"], default="pixelcnnpp")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--nr_filters", type=int, default=32)
    parser.add_argument("--nr_resnet", type=int, default=1)
    parser.add_argument("--num_levels", type=int, default=256)
    parser.add_argument("--t", type=float, default=0.0, help="0: discrete levels; > 0: continuous at t")
    parser.add_argument("--checkpoint", default=None, help="optional state_dict (.pt) to load")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    kw = dict(num_levels=args.num_levels, nr_filters=args.nr_filters, nr_resnet=args.nr_resnet,
              nr_logistic_mix=10, dropout=0.0)
    shape = (1, args.size, args.size)
    model = NCPN(shape, sde=VPSDE(), **kw) if args.model == "ncpn" else PixelCNNpp(shape, **kw)
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
    model = model.to(args.device).eval()
    t = None if args.t == 0 else args.t
    results, samples = {}, {}
    for method in ("fast", "naive"):
        g = torch.Generator(device=args.device).manual_seed(args.seed)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        samples[method] = ancestral_sample(model, (args.batch,) + shape, t=t, generator=g, method=method)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        results[f"{method}_s"] = time.perf_counter() - start
    a, b = samples["fast"], samples["naive"]
    results["identical"] = bool(torch.equal(a, b))
    results["max_abs_diff"] = float((a.double() - b.double()).abs().max())
    results["speedup"] = results["naive_s"] / results["fast_s"]
    results["config"] = vars(args)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
