r"""Time and memory of walk-jump on the full M x D chain against the exact D-dimensional reduction.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/walk_jump_reduction.py [--D 784] [--M 16] [--chains 256] \
        [--steps 100] [--score analytic|mlp] [--integrator aboba|cheng|randomized_midpoint] [--device cpu|cuda]

Each (score, chain) cell runs in its own subprocess so that its peak memory is its own: on CPU
the increase of the peak resident set size (``ru_maxrss``) over the process's level after a
warm-up call; on CUDA ``torch.cuda.max_memory_allocated`` above the level before the walk.
Scores: ``analytic`` is the exact g of N(0, diag(lambda)) data (cost O(D), so the chain's own
arithmetic dominates); ``mlp`` is a GPSModel around hybrids' TimeMLP (hidden 256; the score call
is the same D-dimensional call in both chains, so the saving is the M x D arithmetic and state).
Timings include the final jump and exclude the warm-up (two chains, two steps). ``state MB`` is the
size of one chain state tensor (y), float32. ``--integrator`` picks the underdamped integrator of
``walk_jump`` (the reduction is exact for each; 'randomized_midpoint' calls the score twice a step).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybrids.models.gps import GPSModel  # noqa: E402
from hybrids.models.mlp import TimeMLP  # noqa: E402
from hybrids.samplers.walk_jump import INTEGRATORS, walk_jump  # noqa: E402

SIGMA = 2.0  # MNIST in [-1, 1] units


def make_score(kind: str, D: int, M: int, device: torch.device):
    """g(ybar) for the benchmark: exact Gaussian or an (untrained) GPS network."""
    if kind == "analytic":
        lam = torch.linspace(0.01, 1.0, D, device=device)
        s2 = SIGMA**2 / M
        return lambda ybar: -ybar / (lam + s2)
    torch.manual_seed(0)
    model = GPSModel(TimeMLP(dim=D, hidden=256, num_layers=2), sigma=SIGMA, M=M).to(device).eval()
    return model.ybar_score


def run_cell(args) -> dict:
    device = torch.device(args.device)
    score = make_score(args.score, args.D, args.M, device)
    kw = dict(n_steps=args.steps, friction=1.0, integrator=args.integrator, device=device,
              reduced=args.chain == "reduced")
    shape = (args.chains, args.D)
    with torch.no_grad():
        # Warm-up on two chains, so the chain's own large tensors are not in the baseline.
        walk_jump(score, SIGMA, args.M, (2, args.D), generator=torch.Generator(device).manual_seed(1), **{**kw, "n_steps": 2})
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        out = walk_jump(score, SIGMA, args.M, shape, generator=torch.Generator(device).manual_seed(2), **kw)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024  # KiB on Linux
    assert torch.isfinite(out).all()
    return {"score": args.score, "chain": args.chain, "integrator": args.integrator, "seconds": seconds, "ms_per_step": 1e3 * seconds / args.steps,
            "peak_mb": peak_mb, "state_mb": 4 * args.chains * args.D * (args.M if args.chain == "full" else 1) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--D", type=int, default=784)
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--chains", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--score", choices=["analytic", "mlp", "both"], default="both")
    parser.add_argument("--integrator", choices=INTEGRATORS, default="aboba")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chain", choices=["full", "reduced"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.chain is not None:
        print(json.dumps(run_cell(args)))
        return
    scores = ["analytic", "mlp"] if args.score == "both" else [args.score]
    print(f"D = {args.D}, M = {args.M}, chains = {args.chains}, steps = {args.steps}, device = {args.device}, "
          f"integrator = {args.integrator}, threads = {torch.get_num_threads()}")
    print(f"{'score':9s} {'chain':8s} {'ms/step':>9s} {'peak MB':>9s} {'state MB':>9s}")
    for score in scores:
        rows = {}
        for chain in ("full", "reduced"):
            cmd = [sys.executable, __file__, "--D", str(args.D), "--M", str(args.M), "--chains", str(args.chains),
                   "--steps", str(args.steps), "--score", score, "--integrator", args.integrator,
                   "--device", args.device, "--chain", chain]
            rows[chain] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            r = rows[chain]
            print(f"{score:9s} {chain:8s} {r['ms_per_step']:9.2f} {r['peak_mb']:9.1f} {r['state_mb']:9.1f}")
        f, r = rows["full"], rows["reduced"]
        mem = f["peak_mb"] / r["peak_mb"] if r["peak_mb"] > 0 else math.inf
        print(f"{score:9s} ratio full/reduced: time {f['seconds'] / r['seconds']:.1f}x, peak memory {mem:.1f}x")


if __name__ == "__main__":
    main()
