"""Time and peak memory of one training update under CSM, SM, SSM, SSM-VR and DSM on one MADE, as D grows.

The AR-CSM paper (Meng, Yu, Song, Song and Ermon, "Autoregressive Score Matching", NeurIPS 2020)
argues that composite score matching is much cheaper than exact score matching (whose trace of
the Jacobian takes D backward passes) and, unlike sliced and denoising score matching, neither
noisy (random projections) nor dependent on a chosen noise level.
Here the network is the same for every objective: CSM trains ``MADEConditionalScore``; SM, SSM,
SSM-VR and DSM train ``MADEJointScore``, the same network unmasked (same sizes and parameter
count). Every objective sees x + N(0, sigma^2) noise (sigma = 0.1) as in the ``arcsm_objectives``
table's gin rows; data x ~ N(0, I) in D dimensions (cost does not depend on the values).

One update = zero_grad, objective, backward, Adam step. Per (objective, D):

* time: the median wall time of ``--repeats`` updates after one warm-up update;
* peak memory: the process's peak resident set size during those updates minus its resident set
  size just before them, when the model, its gradients, Adam's state and the batch exist and
  glibc has returned what the warm-up update freed (``malloc_trim(0)``) (Linux: the peak is reset
  through /proc/self/clear_refs, read as VmHWM, the baseline as VmRSS). Each
  configuration runs in a fresh process with one thread, forked from a parent that has only run
  one tiny update of each objective (so that lazy imports and the code pages of the kernels are
  loaded and shared, not counted), so no allocator state carries over from another configuration.

SM stops at the first D whose update exceeds ``--time_limit`` seconds or ``--memory_limit`` MiB,
and is not started at a D where its projection from the previous D exceeds a limit: SM costs
about D backward passes of the network, so t_SM(D') ~ t_SM(D) (D'/D) t_DSM(D') / t_DSM(D), and
likewise for memory (DSM's floored at 1 MiB). Ratios are to DSM at the same D, from the same run.

    OMP_NUM_THREADS=1 python benchmarks/score_objectives.py            # a few minutes
    OMP_NUM_THREADS=1 python benchmarks/score_objectives.py --quick    # seconds: a smoke test
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from queue import Empty
from typing import Any

import torch
from torch import Tensor

from hybrids.models.made import MADEConditionalScore, MADEJointScore
from hybrids.objectives.csm import CSM
from hybrids.objectives.dsm import DSM
from hybrids.objectives.score_matching import SM, SSM
from hybrids.sdes import VESDE

OBJECTIVES = ("CSM", "SM", "SSM", "SSM-VR", "DSM")
"""The table's columns."""
ORDER = ("DSM", "CSM", "SSM", "SSM-VR", "SM")
"""Run order at each D: DSM before SM, whose projection needs DSM's cost at that D."""
DIMS = (2, 16, 64, 256, 784)
QUICK_DIMS = (2, 8)
SIGMA = 0.1


def build(name: str, dim: int, hidden: tuple[int, ...], features: int, head_hidden: tuple[int, ...]):
    """The model and objective of one configuration (the table's gin rows, on continuous data)."""
    template = MADEConditionalScore(dim, hidden=hidden, context_features=features, head_hidden=head_hidden)
    if name == "CSM":
        return template, CSM(sigma=SIGMA, num_levels=None)
    sde = VESDE(sigma_min=1e-3, sigma_max=SIGMA)  # sigma(T = 1) = SIGMA
    objective = {
        "SM": lambda: SM(sde=sde, t=1.0, num_levels=None, max_dims=10**6),
        "SSM": lambda: SSM(sde=sde, t=1.0, num_levels=None),
        "SSM-VR": lambda: SSM(sde=sde, t=1.0, num_levels=None, variance_reduction=True),
        "DSM": lambda: DSM(sde=sde, eps=1 - 1e-6, num_levels=None),
    }[name]()
    return MADEJointScore(template), objective


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (Linux >= 4.0)
        f.write("5")


def measure(name: str, dim: int, batch: int, repeats: int, hidden: tuple[int, ...], features: int,
            head_hidden: tuple[int, ...], seed: int = 0) -> dict[str, Any]:
    """Time (median of ``repeats`` after a warm-up) and peak memory above the baseline of one update."""
    torch.manual_seed(seed)
    model, objective = build(name, dim, hidden, features, head_hidden)
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.randn(batch, dim)
    generator = torch.Generator().manual_seed(seed)

    def update() -> tuple[float, Tensor]:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = objective(model, x, generator=generator)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start, loss

    update()  # warm-up: Adam's state, the autograd engine of this process
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the warm-up freed goes back to the OS
    _reset_peak_rss()
    baseline = _status_kib("VmRSS")
    times, losses = zip(*(update() for _ in range(repeats)))
    peak = _status_kib("VmHWM")
    return {"objective": name, "dim": dim, "seconds": statistics.median(times),
            "peak_mib": max(peak - baseline, 0) / 1024, "loss": losses[-1].item(),
            "parameters": sum(p.numel() for p in model.parameters())}


def _measure_into(queue, *args) -> None:
    try:
        queue.put(measure(*args))
    except Exception as err:  # reported in the table, not raised: the other configurations go on
        queue.put(f"failed: {type(err).__name__}: {err}")


def in_fresh_process(args: argparse.Namespace, name: str, dim: int, timeout: float) -> dict[str, Any] | str:
    """``measure`` in a forked one-thread process; a string saying why when it fails or times out."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure_into, args=(queue, name, dim, args.batch, args.repeats, tuple(args.hidden),
                                                   args.features, tuple(args.head_hidden)))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return f"not finished within {timeout:.0f} s"
    try:
        return queue.get(timeout=5)
    except Empty:  # killed before it could report, e.g. out of memory
        return f"failed: the process ended with exit code {proc.exitcode}"


def run(args: argparse.Namespace) -> dict[int, dict[str, dict[str, Any] | str]]:
    """Every (D, objective): a measurement dict, or a string saying why it was not measured."""
    results: dict[int, dict[str, dict[str, Any] | str]] = {}
    sm_stop: str | None = None
    last_sm: tuple[int, dict[str, Any]] | None = None
    for dim in args.dims:
        results[dim] = {}
        for name in ORDER:
            if name == "SM":
                if sm_stop is None and last_sm is not None and isinstance(results[dim]["DSM"], dict):
                    prev_dim, prev = last_sm
                    dsm_now, dsm_then = results[dim]["DSM"], results[prev_dim]["DSM"]
                    factor = dim / prev_dim
                    t_proj = prev["seconds"] * factor * dsm_now["seconds"] / dsm_then["seconds"]
                    # DSM's memory floored at 1 MiB: below that it is the allocator's granularity
                    m_proj = prev["peak_mib"] * factor * max(dsm_now["peak_mib"], 1.0) / max(dsm_then["peak_mib"], 1.0)
                    if t_proj > args.time_limit or m_proj > args.memory_limit:
                        sm_stop = (f"not run: projected from D = {prev_dim}: {t_proj:.3g} s, {m_proj:.0f} MiB per "
                                   f"update (limits {args.time_limit:g} s, {args.memory_limit:g} MiB)")
                if sm_stop is not None:
                    results[dim][name] = sm_stop
                    continue
            res = in_fresh_process(args, name, dim, timeout=60 + (args.repeats + 2) * args.time_limit)
            results[dim][name] = res
            if name == "SM" and isinstance(res, dict):
                last_sm = (dim, res)
                if res["seconds"] > args.time_limit or res["peak_mib"] > args.memory_limit:
                    sm_stop = (f"not run: SM exceeded the limits at D = {dim} ({res['seconds']:.3g} s, "
                               f"{res['peak_mib']:.0f} MiB per update)")
            elif name == "SM":
                sm_stop = f"not run: SM at D = {dim}: {res}"
            print(f"D={dim:4d} {name:7s} " + (f"{res['seconds'] * 1e3:10.2f} ms {res['peak_mib']:9.1f} MiB"
                                              if isinstance(res, dict) else str(res)), file=sys.stderr, flush=True)
    return results


def table(results: dict[int, dict[str, dict[str, Any] | str]]) -> str:
    """Markdown: ms and MiB per update of each objective at each D, and the ratios to DSM."""
    lines = ["| D | parameters | " + " | ".join(f"{n} ms (x DSM)" for n in OBJECTIVES) + " | "
             + " | ".join(f"{n} MiB (x DSM)" for n in OBJECTIVES) + " |",
             "|---|---|" + "---|" * (2 * len(OBJECTIVES))]
    notes = []
    for dim, row in results.items():
        dsm = row.get("DSM")
        params = next((r["parameters"] for r in row.values() if isinstance(r, dict)), "")
        cells = []
        for key, unit in (("seconds", 1e3), ("peak_mib", 1.0)):
            for name in OBJECTIVES:
                r = row.get(name)
                if not isinstance(r, dict):
                    cells.append("–")
                    notes.append(f"D = {dim}, {name}: {r}")
                    continue
                ratio = r[key] / dsm[key] if isinstance(dsm, dict) and dsm[key] > 0 else float("nan")
                cells.append(f"{r[key] * unit:.3g} ({ratio:.2g}x)")
        lines.append(f"| {dim} | {params} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + sorted(set(notes), key=notes.index))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=None, help=f"D values (default {DIMS})")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--head_hidden", type=int, nargs="+", default=[32])
    parser.add_argument("--time_limit", type=float, default=10.0, help="SM's limit, seconds per update")
    parser.add_argument("--memory_limit", type=float, default=4096.0, help="SM's limit, MiB per update")
    parser.add_argument("--quick", action="store_true", help=f"D = {QUICK_DIMS}, a tiny network: seconds")
    args = parser.parse_args()
    if args.quick:
        args.dims = args.dims or list(QUICK_DIMS)
        args.batch, args.repeats, args.hidden, args.features, args.head_hidden = 8, 2, [16, 16], 4, [8]
    args.dims = args.dims or list(DIMS)
    if not Path("/proc/self/clear_refs").exists():
        sys.exit("this benchmark measures memory through Linux's /proc/self/clear_refs and VmHWM; run it on Linux.")
    torch.set_num_threads(1)
    for name in OBJECTIVES:  # lazy imports and first-use code pages, once, before the forks share them
        measure(name, 2, 2, 1, (8,), 2, (4,))
    began = time.time()
    results = run(args)
    print(f"MADE hidden={args.hidden} F={args.features} head={args.head_hidden} batch={args.batch} "
          f"threads=1 repeats={args.repeats} (median) limits: SM {args.time_limit:g} s, {args.memory_limit:g} MiB "
          "per update; memory: peak RSS above the built model's, a fresh process per configuration")
    print(table(results))
    print(f"total {time.time() - began:.0f} s")


if __name__ == "__main__":
    main()
