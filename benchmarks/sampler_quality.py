"""Sample quality per score evaluation: FD and KID of reverse solvers at several step counts.

For a trained run (``hybrids.load_run(workdir)``) it draws ``--num_samples`` images with each
sampler setting and reports, per setting, the score evaluations per sample (NFE), the wall time,
and the Frechet distance and KID to the dataset's test split in the features ``sample_fd_eval``
uses (the library's domain classifier: "FD-<dataset> classifier" / "KID-<dataset> classifier",
not Inception FID), with the floor of both: the same metrics for as many held-out real images.

* An NCML model (an ``AncestralMixtureModel`` with an autograd score) is sampled as
  ``hybrid_sample`` does: the ancestral draw at t0 (default T_ncml; H W network passes per
  sample, reported separately as ``ar_passes``, drawn once and shared by every setting), then
  ``reverse_from`` with each setting on the generator state the draw left, so each setting's
  samples are exactly ``hybrid_sample``'s for that seed. One score evaluation is a forward and a
  backward pass of the network.
* A score model (ScoreModel U-Net, ...) is sampled from the SDE's prior at T by the same reverse
  solvers (``reverse_from`` with t0 = T); one score evaluation is one forward pass.

Settings: ``pc:N`` (predictor-corrector, N steps: step size (t0 - eps) / N; VE adds one Langevin
corrector step per step, so 2 N evaluations), ``heun:N`` (EDM's Heun sampler, 2 N - 1
evaluations), ``ode:TOL`` (dopri5 at rtol = atol = TOL, adaptive). The ODE solvers end with
Tweedie's denoising step, PC with the mean of its last step.

    python -m benchmarks.sampler_quality --workdir=runs/ncml_vp_mnist --out=out/sq_ncml --device=cuda
    python -m benchmarks.sampler_quality --smoke --out=/tmp/sq   # trains a tiny NCML-VP on digits first

Writes ``results.json``, ``results.md`` (a table) and ``quality_vs_nfe.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import hybrids  # noqa: E402
from hybrids.data import ArrayDataset, load_dataset, quantize  # noqa: E402
from hybrids.hooks import sample_fd_eval  # noqa: E402
from hybrids.io import atomic_write_text, write_json  # noqa: E402
from hybrids.models.base import AncestralMixtureModel  # noqa: E402
from hybrids.objectives.ncml import default_t_max  # noqa: E402
from hybrids.samplers.autoregressive import ancestral_sample  # noqa: E402
from hybrids.samplers.hybrid import hybrid_defaults, reverse_from  # noqa: E402
from hybrids.samplers.sde import CountedScore  # noqa: E402
from hybrids.sdes import SDE  # noqa: E402
from hybrids.tensors import model_dtype  # noqa: E402

DEFAULT_SETTINGS = ("pc:10", "pc:20", "pc:50", "pc:100", "heun:5", "heun:10", "heun:20", "heun:40",
                    "ode:1e-3", "ode:1e-4", "ode:1e-5")
SMOKE_SETTINGS = ("pc:5", "pc:10", "heun:3", "heun:5", "ode:1e-2", "ode:1e-3")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One sampler setting: ``solver`` 'pc' / 'heun' with a number of steps, or 'ode' with a tolerance."""

    solver: str
    value: float

    @property
    def label(self) -> str:
        return f"{self.solver}:{self.value:g}"

    def reverse_kwargs(self, t0: float, eps: float) -> dict[str, Any]:
        """``reverse_from``'s settings for this setting."""
        if self.solver == "pc":
            return {"reverse": "pc", "step_size": (t0 - eps) / int(self.value)}
        if self.solver == "heun":
            return {"reverse": "heun", "num_steps": int(self.value)}
        return {"reverse": "ode", "rtol": self.value, "atol": self.value}


def parse_setting(text: str) -> Setting:
    """``'pc:20'``, ``'heun:10'`` or ``'ode:1e-4'`` -> :class:`Setting` (ValueError otherwise)."""
    solver, _, value = text.partition(":")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not math.isfinite(number):
        number = 0.0
    if solver in ("pc", "heun") and number == int(number) and number >= (1 if solver == "pc" else 2):
        return Setting(solver, int(number))
    if solver == "ode" and number > 0:
        return Setting(solver, number)
    raise ValueError(f"bad sampler setting {text!r}: use pc:N (N >= 1 steps), heun:N (N >= 2 steps) or ode:TOL "
                     "(rtol = atol = TOL > 0).")


def _batches(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - i) for i in range(0, n, batch_size)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Start:
    """The draws every setting starts from, per batch, and the generator states after them."""

    x: list[Tensor]
    states: list[Tensor]
    t0: float
    ar_passes: int
    seconds: float


def start_draws(model: nn.Module, sde: SDE, shape: Sequence[int], batches: list[int], *, hybrid: bool,
                t0: float | None, seed: int, device: torch.device) -> Start:
    """Batch b's draws with a generator seeded ``seed + b``: ancestral at t0 (hybrid) or the prior at T."""
    xs, states = [], []
    _sync(device)
    start = time.perf_counter()
    if hybrid:
        t0 = default_t_max(sde) if t0 is None else float(t0)
    else:
        t0 = sde.T
    for b, size in enumerate(batches):
        g = torch.Generator(device=device).manual_seed(seed + b)
        if hybrid:
            x = ancestral_sample(model, (size, *shape), t=t0, generator=g)
        else:
            x = sde.prior_sample((size, *shape), g, dtype=model_dtype(model), device=g.device).to(device)
        xs.append(x)
        states.append(g.get_state())
    _sync(device)
    passes = shape[-1] * shape[-2] if hybrid else 0
    return Start(x=xs, states=states, t0=t0, ar_passes=passes, seconds=time.perf_counter() - start)


def run_setting(model: nn.Module, sde: SDE, start: Start, setting: Setting, num_levels: int,
                device: torch.device) -> tuple[Tensor, dict[str, Any]]:
    """Levels ``int64 [N, C, H, W]`` of one setting, with its score NFE per sample and wall time."""
    eps = hybrid_defaults(sde)["eps"]
    kwargs = setting.reverse_kwargs(start.t0, eps)
    levels, nfes, seconds = [], [], 0.0
    for x, state in zip(start.x, start.states):
        g = torch.Generator(device=device)
        g.set_state(state)
        counted = CountedScore(lambda y, t: model.score(y, t, create_graph=False))
        _sync(device)
        begin = time.perf_counter()
        out = reverse_from(counted, sde, x, t0=start.t0, eps=eps, generator=g, **kwargs)
        _sync(device)
        seconds += time.perf_counter() - begin
        levels.append(quantize(out, num_levels).cpu())
        nfes.append(counted.nfe)
    return torch.cat(levels), {"score_nfe": sum(nfes) / len(nfes), "score_nfe_max": max(nfes),
                               "ar_passes": start.ar_passes, "seconds": seconds}


def quality(model: nn.Module, data: ArrayDataset, levels: Tensor, *, floor: bool, device: torch.device,
            classifier_steps: int | None, kid_subsets: int, kid_subset_size: int, label: str) -> dict[str, Any]:
    """``sample_fd_eval``'s FD and KID of ``levels`` against ``data``'s split (its floor when asked)."""

    def replay(model, data, *, device, generator, num_samples=None):
        return {"samples": levels}

    replay.__name__ = label
    return sample_fd_eval(model, data, device=device, generator=torch.Generator(), sampler=replay,
                          num_quality_samples=int(levels.shape[0]), classifier_steps=classifier_steps,
                          floor=floor, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size)


def markdown_table(result: dict[str, Any]) -> str:
    """The results as a markdown table, one row per setting and the floor last."""
    setup = result["setup"]
    fd_name, kid_name = setup["fd_metric"], setup["kid_metric"]
    lines = [f"Sampler quality of {setup['workdir']} ({setup['model']}, {setup['mode']}, {setup['sde']}, "
             f"t0 = {setup['t0']:g}, eps = {setup['eps']:g}), N = {setup['num_samples']} samples vs the "
             f"{setup['reference_split']} split; AR draw: {setup['ar_passes']} network passes per sample, "
             f"{setup['ar_seconds']:.1f} s (shared by all settings).", "",
             f"| sampler | score NFE / sample | AR passes / sample | seconds | {fd_name} | {kid_name} (+- subset std) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["settings"]:
        lines.append(f"| {row['label']} | {row['score_nfe']:g} | {row['ar_passes']} | {row['seconds']:.2f} | "
                     f"{row['fd']:.4g} | {row['kid']:.4g} +- {row['kid_subset_std']:.2g} |")
    floor = result["floor"]
    lines.append(f"| real held-out ({floor['split']} split, floor) | - | - | - | {floor['fd']:.4g} | "
                 f"{floor['kid']:.4g} +- {floor['kid_subset_std']:.2g} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """FD and KID against score NFE per sample, one line per solver, the real-data floor dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, name in ((axes[0], "fd", result["setup"]["fd_metric"]), (axes[1], "kid", result["setup"]["kid_metric"])):
        for solver in ("pc", "heun", "ode"):
            rows = sorted((r for r in result["settings"] if r["solver"] == solver), key=lambda r: r["score_nfe"])
            if rows:
                ax.plot([r["score_nfe"] for r in rows], [r[key] for r in rows], "o-", label=solver)
        ax.axhline(result["floor"][key], ls="--", color="gray", label="real held-out")
        ax.set_xscale("log")
        ax.set_xlabel("score evaluations per sample")
        ax.set_ylabel(name)
        ax.legend()
    fig.suptitle(f"{result['setup']['model']}: {result['setup']['mode']}, N = {result['setup']['num_samples']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def benchmark(workdir: str | Path, out: str | Path, settings: Sequence[str], *, num_samples: int, batch_size: int,
              t0: float | None, seed: int, device: str, data_dir: str | None, classifier_steps: int | None,
              kid_subsets: int, kid_subset_size: int) -> dict[str, Any]:
    """Run every setting on the run in ``workdir`` and write the JSON, the table and the plot into ``out``."""
    parsed = [parse_setting(s) for s in settings]
    dev = torch.device(device)
    run = hybrids.load_run(workdir, device=dev)
    model, sde = run.model, run.sde
    if sde is None:
        raise ValueError(f"{workdir}: the run's model carries no SDE; this benchmark samples SDE-based models.")
    hybrid = isinstance(model, AncestralMixtureModel)
    data = load_dataset(run.dataset_name, split="test", data_dir=data_dir)
    start = start_draws(model, sde, tuple(data.shape), _batches(num_samples, batch_size), hybrid=hybrid, t0=t0,
                        seed=seed, device=dev)
    rows, floor = [], None
    for setting in parsed:
        levels, cost = run_setting(model, sde, start, setting, int(data.num_levels), dev)
        metrics = quality(model, data, levels, floor=floor is None, device=dev, classifier_steps=classifier_steps,
                          kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, label=setting.label)
        if floor is None:
            floor = {"fd": metrics["floor"]["fd"], "kid": metrics["floor"]["kid"]["kid"],
                     "kid_subset_std": metrics["floor"]["kid"]["kid_subset_std"],
                     "num_samples": metrics["floor"]["num_samples"], "split": metrics["floor"]["split"]}
            names = {"fd_metric": metrics["metric"], "kid_metric": metrics["kid"]["metric"]}
        rows.append({"label": setting.label, "solver": setting.solver, "value": setting.value, **cost,
                     "fd": metrics["fd"], "kid": metrics["kid"]["kid"],
                     "kid_subset_std": metrics["kid"]["kid_subset_std"]})
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "setup": {"workdir": str(workdir), "step": run.step, "model": type(model).__name__,
                  "mode": "hybrid (ancestral at t0, then reverse)" if hybrid else "from the prior",
                  "sde": repr(sde), "t0": start.t0, "eps": hybrid_defaults(sde)["eps"], "dataset": data.name,
                  "reference_split": "test", "num_samples": num_samples, "batch_size": batch_size, "seed": seed,
                  "device": str(dev), "ar_passes": start.ar_passes, "ar_seconds": start.seconds, **names},
        "floor": floor,
        "settings": rows,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", result)
    atomic_write_text(out / "results.md", markdown_table(result))
    plot(result, out / "quality_vs_nfe.png")
    return result


def train_smoke_run(workdir: Path, train_steps: int) -> None:
    """A tiny NCML-VP (NCPN) trained on the embedded digits: ``ncml_vp.gin`` + ``presets/cpu_small.gin``."""
    import gin

    from experiments.runner import run_experiment

    gin.clear_config()
    run_experiment(["ncml_vp.gin", "presets/cpu_small.gin"], [f"Trainer.num_steps = {train_steps}"],
                   workdir=workdir, mode="train")
    gin.clear_config()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="a trained run's workdir (python -m experiments.run)")
    parser.add_argument("--out", required=True, help="directory for results.json, results.md, quality_vs_nfe.png")
    parser.add_argument("--settings", nargs="+", default=None,
                        help=f"pc:N, heun:N, ode:TOL (default: {' '.join(DEFAULT_SETTINGS)})")
    parser.add_argument("--num_samples", type=int, default=None, help="N (default 1000; --smoke: 64)")
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--t0", type=float, default=None, help="hybrid start time (default T_ncml)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--classifier_steps", type=int, default=None,
                        help="domain classifier updates (default: hybrids.hooks.Budget's)")
    parser.add_argument("--kid_subsets", type=int, default=100)
    parser.add_argument("--kid_subset_size", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true",
                        help="train a tiny NCML-VP on digits into OUT/smoke_run first (unless --workdir) and use "
                             "small settings")
    parser.add_argument("--smoke_train_steps", type=int, default=100)
    args = parser.parse_args(argv)
    workdir = args.workdir
    if args.smoke and workdir is None:
        workdir = Path(args.out) / "smoke_run"
        train_smoke_run(workdir, args.smoke_train_steps)
    if workdir is None:
        parser.error("--workdir is required (or --smoke)")
    settings = args.settings or (SMOKE_SETTINGS if args.smoke else DEFAULT_SETTINGS)
    num_samples = args.num_samples or (64 if args.smoke else 1000)
    classifier_steps = args.classifier_steps or (100 if args.smoke else None)
    result = benchmark(workdir, args.out, settings, num_samples=num_samples, batch_size=args.batch_size,
                       t0=args.t0, seed=args.seed, device=args.device, data_dir=args.data_dir,
                       classifier_steps=classifier_steps, kid_subsets=args.kid_subsets,
                       kid_subset_size=args.kid_subset_size)
    print(markdown_table(result))
    return result


if __name__ == "__main__":
    main()
