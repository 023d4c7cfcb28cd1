"""Probability-flow ODE likelihood: hybrids' solve against score_sde's, in evaluations and error.

The baseline is score_sde's likelihood code (Song et al., ICLR 2021) as it computes it: scipy
``solve_ivp`` RK45 on the flattened numpy state [x, log-density] with one Rademacher probe fixed
for the solve. hybrids' ``ode_log_prob`` runs the same Dormand-Prince 5(4) pair through
torchdiffeq, stepping in t (the default) or in the angle phi = arctan(sigma_t / m_t)
(``time_variable='angle'``), each with the error norm ``'mixed'`` (the default: the largest
per-tensor RMS) and ``'rms'`` (one RMS norm over the whole state, as scipy). All see the same
score, the same probe, the same start time eps = 1e-5 and the same rtol = atol.

Cases (VP SDE):

* ``gaussian64`` / ``gaussian784``: Gaussian data N(mu, diag(v)) (mu ~ U(-1/2, 1/2), v log-uniform
  on [1e-3, 0.3], fixed seed) with the exact score (``GaussianDataModel``), batches of 8 / 16.
  The flow is linear and diagonal, so the ODE's answer with the N(0, I) prior is known in closed
  form, and the one-probe Hutchinson divergence of a diagonal Jacobian is exact: the error is the
  solver's alone.
* ``unet``: a compact digits U-Net trained ``--train_steps`` DSM updates (likelihood weighting +
  importance sampling), batch of 8 dequantized test digits. Reference: the same probe, solved in
  t at rtol = atol = 1e-9, so the error is again the solver's; the same solve in the angle variable
  is recorded in ``setup`` (``reference_t_minus_angle_nats_per_dim``) as a check of the reference.
  With ``--run_dir`` the case uses a trained run's score model instead (``hybrids.load_run``, EMA
  weights, float64) on its dataset's test split (``--data_dir``), e.g. a MNIST U-Net.

Errors are mean |log p - reference| over the batch in nats per dimension.

    OMP_NUM_THREADS=1 python -m benchmarks.ode_likelihood [--cases gaussian64,gaussian784,unet]

``--sweep`` runs every column with every ``--methods`` (torchdiffeq: dopri5, bosh3, dopri8) over the
``--tols`` grid and reports, for each of the baseline's points, the cheapest hybrids point whose error
is no larger (``frontier``) and the baseline's slope of log error against log NFE:

    OMP_NUM_THREADS=1 python -m benchmarks.ode_likelihood --sweep \
        --tols 1e-2,3.16e-3,1e-3,3.16e-4,1e-4,3.16e-5,1e-5,3.16e-6,1e-6,3.16e-7,1e-7

``--divergence_cost`` instead times the exact divergence (D backward passes per evaluation)
against Hutchinson on the U-Net; ``--step_profile`` counts where score_sde's solve places its
steps on the U-Net and how far the network's output is from smooth in t.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from scipy import integrate
from torch import Tensor

from hybrids import load_run
from hybrids.data import dequantize, load_dataset
from hybrids.likelihood import bits_per_dim, ode_log_prob
from hybrids.likelihood.ode import ADAPTIVE_METHODS, flow_and_divergence, make_probe
from hybrids.models.analytic import GaussianDataModel
from hybrids.models.score_model import ScoreModel
from hybrids.models.unet import UNet
from hybrids.objectives.dsm import DSM
from hybrids.sdes import SDE, VPSDE

EPS = 1e-5
# column name -> (time_variable, norm) of ode_log_prob
HYBRIDS_VARIANTS = {"hybrids_t_mixed": ("t", "mixed"), "hybrids_t_rms": ("t", "rms"),
                    "hybrids_angle_mixed": ("angle", "mixed"), "hybrids_angle_rms": ("angle", "rms")}


def score_sde_log_prob(score_fn, sde: SDE, x: Tensor, probe: Tensor, tol: float,
                       accepted_times: bool = False) -> tuple:
    """log p_eps(x) as score_sde computes it: scipy RK45 on the flattened [x, delta] state.

    Returns ``(log_prob, nfe)``, and the solver's accepted step times if ``accepted_times``.
    """
    shape, batch = x.shape, x.shape[0]
    nfe = 0

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        xs = torch.from_numpy(state[:-batch]).reshape(shape).to(x.dtype).requires_grad_(True)
        with torch.enable_grad():
            drift, div = flow_and_divergence(score_fn, sde, xs, torch.full((batch,), t, dtype=x.dtype),
                                             probe=probe, create_graph=False)
        return np.concatenate([drift.detach().numpy().ravel(), div.detach().numpy()])

    start = np.concatenate([x.detach().numpy().ravel(), np.zeros(batch)])
    solution = integrate.solve_ivp(rhs, (EPS, sde.T), start, rtol=tol, atol=tol, method="RK45")
    end = torch.from_numpy(solution.y[:, -1]).to(x.dtype)
    log_prob = sde.prior_log_prob(end[:-batch].reshape(shape)) + end[-batch:]
    return (log_prob, nfe, solution.t) if accepted_times else (log_prob, nfe)


def gaussian_case(dim: int, batch: int, sde: SDE) -> tuple[GaussianDataModel, Tensor, Tensor]:
    """(model, x, closed-form ODE log-density of x with the N(0, I) prior)."""
    g = torch.Generator().manual_seed(0)
    mean = torch.rand(dim, generator=g, dtype=torch.float64) - 0.5
    var = torch.empty(dim, dtype=torch.float64).uniform_(math.log(1e-3), math.log(0.3), generator=g).exp()
    model = GaussianDataModel(mean, var, sde)
    x = model.sample(batch, 0.0, g)
    # The flow maps x - m(eps) mu to (x - m(eps) mu) sqrt(var_T / var_eps) per dimension.
    m_eps, v_eps = model.marginal_params(torch.full((batch,), EPS, dtype=x.dtype), x)
    m_T, v_T = model.marginal_params(torch.full((batch,), sde.T, dtype=x.dtype), x)
    z = m_T + (x - m_eps) * (v_T / v_eps).sqrt()
    return model, x, sde.prior_log_prob(z) + 0.5 * torch.log(v_T / v_eps).sum(1)


def trained_unet(sde: SDE, train_steps: int, seed: int) -> ScoreModel:
    """A compact digits U-Net after ``train_steps`` likelihood-weighted, importance-sampled DSM updates."""
    torch.manual_seed(seed)
    model = ScoreModel(UNet(1, 16, (1, 2), 1, dropout=0.0), sde)
    train = load_dataset("digits", "train")
    g = torch.Generator().manual_seed(seed)
    objective = DSM(sde, weighting="likelihood", importance_sampling=True, num_levels=train.num_levels)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(train_steps):
        loss, _ = objective(model, train.data[torch.randint(0, len(train), (64,), generator=g)], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def solve(setting: str, score_fn, sde: SDE, x: Tensor, probe: Tensor, tol: float) -> tuple[Tensor, int]:
    """``(log_prob, nfe)`` of one setting at rtol = atol = ``tol``: ``'score_sde_scipy_rk45'``, a
    ``HYBRIDS_VARIANTS`` column (dopri5), or such a column with ``'_' + method`` appended (any
    adaptive torchdiffeq method). Every setting uses ``probe`` (``make_probe`` with seed 1)."""
    if setting == "score_sde_scipy_rk45":
        return score_sde_log_prob(score_fn, sde, x, probe, tol)
    column, method = setting, "dopri5"
    if setting not in HYBRIDS_VARIANTS:
        column, _, method = setting.rpartition("_")
    time_variable, norm = HYBRIDS_VARIANTS[column]
    res = ode_log_prob(score_fn, sde, x, eps=EPS, rtol=tol, atol=tol, norm=norm, method=method,
                       time_variable=time_variable, generator=torch.Generator().manual_seed(1))
    return res.log_prob, res.nfe


def _measure(setting: str, score_fn, sde: SDE, x: Tensor, probe: Tensor, reference: Tensor, tol: float) -> dict:
    start = time.perf_counter()
    log_prob, nfe = solve(setting, score_fn, sde, x, probe, tol)
    return {"nfe": nfe, "seconds": time.perf_counter() - start,
            "error_nats_per_dim": float((log_prob - reference).abs().mean() / x[0].numel())}


def compare(score_fn, sde: SDE, x: Tensor, reference: Tensor, tols: list[float]) -> dict:
    """NFE, seconds and error per method and tolerance, plus the ratios to score_sde."""
    probe = make_probe(x, "rademacher", torch.Generator().manual_seed(1))
    out = {}
    for tol in tols:
        rows = {name: _measure(name, score_fn, sde, x, probe, reference, tol)
                for name in ("score_sde_scipy_rk45", *HYBRIDS_VARIANTS)}
        base = rows["score_sde_scipy_rk45"]
        for name in HYBRIDS_VARIANTS:
            rows[name]["nfe_ratio"] = rows[name]["nfe"] / base["nfe"]
            rows[name]["error_ratio"] = rows[name]["error_nats_per_dim"] / base["error_nats_per_dim"]
        out[f"tol={tol:g}"] = rows
        print(json.dumps({f"tol={tol:g}": rows}), flush=True)
    return out


def sweep(score_fn, sde: SDE, x: Tensor, reference: Tensor, tols: list[float], methods: list[str]) -> dict:
    """Error against evaluations over a tolerance grid, and the cheapest match of each baseline point.

    Runs score_sde's solve and every ``HYBRIDS_VARIANTS`` column with every method in ``methods`` at
    each tolerance. ``frontier``: for each baseline point, the hybrids point (any setting, any
    tolerance) with the fewest evaluations among those whose error is no larger, and the ratio of
    evaluations (the issue's target is <= 0.5). ``baseline_slope``: least-squares slope of
    log(error) against log(NFE) over the baseline's points, and ``error_factor_at_half_nfe`` =
    2^-slope, how many times more accurate than the baseline, at equal evaluations, a method must be
    to match its error with half of them when its error falls at the same rate.
    """
    probe = make_probe(x, "rademacher", torch.Generator().manual_seed(1))
    settings = ["score_sde_scipy_rk45"] + [f"{name}_{m}" for name in HYBRIDS_VARIANTS for m in methods]
    points: dict[str, list[dict]] = {s: [] for s in settings}
    for tol in tols:
        for setting in settings:
            points[setting].append({"tol": tol, **_measure(setting, score_fn, sde, x, probe, reference, tol)})
            print(json.dumps({setting: points[setting][-1]}), flush=True)
    return {"points": points, **sweep_summary(points)}


def sweep_summary(points: dict[str, list[dict]]) -> dict:
    """``frontier``, ``baseline_slope`` and ``error_factor_at_half_nfe`` of :func:`sweep`'s points
    (setting -> list of ``{"tol", "nfe", "error_nats_per_dim", ...}``, the baseline under
    ``'score_sde_scipy_rk45'``)."""
    baseline = points["score_sde_scipy_rk45"]
    frontier = []
    for base in baseline:
        matches = [dict(p, setting=s) for s, pts in points.items() if s != "score_sde_scipy_rk45" for p in pts
                   if p["error_nats_per_dim"] <= base["error_nats_per_dim"]]
        best = min(matches, key=lambda p: p["nfe"]) if matches else None
        frontier.append({"baseline": base, "best": best, "nfe_ratio": best["nfe"] / base["nfe"] if best else None})
    slope = float(np.polyfit(np.log([p["nfe"] for p in baseline]),
                             np.log([p["error_nats_per_dim"] for p in baseline]), 1)[0])
    return {"frontier": frontier, "baseline_slope": slope, "error_factor_at_half_nfe": 2.0 ** -slope}


def step_profile(model: ScoreModel, sde: SDE, x: Tensor, tols: list[float]) -> dict:
    """Where score_sde's RK45 solve on the U-Net places its steps, and how rough the network is in t.

    Roughness: at t0 in {0.01, 0.1, 0.5}, the network output of one noisy digit on 201 times in
    [t0 - 0.005, t0 + 0.005], minus its least-squares quadratic in t: the RMS residual relative to
    the output's RMS (0 for an output smooth on that scale).
    """
    probe = make_probe(x, "rademacher", torch.Generator().manual_seed(1))
    edges = [0.0, 1e-3, 1e-2, 0.1, 0.3, 1.0 + 1e-9]
    out: dict = {"bin_edges": edges[:-1] + [1.0]}
    for tol in tols:
        times = score_sde_log_prob(model.score, sde, x, probe, tol, accepted_times=True)[2]
        out[f"tol={tol:g}"] = {"steps": len(times) - 1,
                               "steps_per_bin": np.histogram(times[1:], bins=edges)[0].tolist()}
    g = torch.Generator().manual_seed(3)
    roughness = {}
    for t0 in (0.01, 0.1, 0.5):
        coefs = sde.marginal_coefs(torch.tensor([t0], dtype=x.dtype))
        xt = coefs.mean_coef * x[:1] + coefs.std * torch.randn(x[:1].shape, generator=g, dtype=x.dtype)
        ts = t0 + torch.linspace(-0.005, 0.005, 201, dtype=x.dtype)
        with torch.no_grad():
            outputs = torch.stack([model(xt, t.reshape(1))[0].flatten() for t in ts])
        basis = torch.stack([torch.ones_like(ts), ts - t0, (ts - t0) ** 2], 1)
        residual = outputs - basis @ torch.linalg.lstsq(basis, outputs).solution
        roughness[f"t0={t0:g}"] = float(residual.pow(2).mean().sqrt() / outputs.pow(2).mean().sqrt())
    out["relative_residual_of_quadratic_fit"] = roughness
    return out


def divergence_cost(model: ScoreModel, sde: SDE, batch_size: int, tol: float, seed: int) -> dict:
    """Exact (D backward passes) vs Hutchinson divergence at the same tolerance on digits."""
    test = load_dataset("digits", "test")
    x = dequantize(test.data[:batch_size], test.num_levels, torch.Generator().manual_seed(seed))
    rows = {}
    for divergence in ("exact", "hutchinson"):
        start = time.perf_counter()
        res = ode_log_prob(model, sde, x, divergence=divergence, rtol=tol, atol=tol,
                           generator=torch.Generator().manual_seed(1))
        rows[divergence] = {"nfe": res.nfe, "seconds_per_batch": time.perf_counter() - start,
                            "bpd_mean": float(bits_per_dim(-res.log_prob, x[0].numel(), test.num_levels).mean())}
    rows["seconds_ratio_exact_over_hutchinson"] = (rows["exact"]["seconds_per_batch"]
                                                   / rows["hutchinson"]["seconds_per_batch"])
    return rows


def build_case(case: str, args: argparse.Namespace, setup: dict) -> tuple:
    """``(score_fn, sde, x, reference)`` of one case; the U-Net's reference solves are checked
    against each other (t and angle variables) and their difference recorded in ``setup``."""
    sde = VPSDE()
    if case in ("gaussian64", "gaussian784"):
        model, x, reference = gaussian_case(int(case[len("gaussian"):]), 8 if case == "gaussian64" else 16, sde)
        return model.score, sde, x, reference
    if case != "unet":
        raise SystemExit(f"Unknown case {case!r}; choose from gaussian64, gaussian784, unet.")
    if args.run_dir is None:
        model, dataset = trained_unet(sde, args.train_steps, args.seed).double(), "digits"
    else:
        run = load_run(args.run_dir)
        model, dataset, sde = run.model.double(), run.dataset_name, run.sde
        setup.update(run_dir=args.run_dir, run_step=run.step, run_sde=repr(sde))
    test = load_dataset(dataset, "test", args.data_dir)
    x = dequantize(test.data[: args.batch_size], test.num_levels, torch.Generator().manual_seed(args.seed)).double()
    references = {}
    for time_variable in ("t", "angle"):
        with torch.no_grad():
            references[time_variable] = ode_log_prob(model, sde, x, eps=EPS, rtol=args.reference_tol,
                                                     atol=args.reference_tol, time_variable=time_variable,
                                                     generator=torch.Generator().manual_seed(1)).log_prob
    setup["reference_t_minus_angle_nats_per_dim"] = float(
        (references["t"] - references["angle"]).abs().mean() / x[0].numel())
    return model.score, sde, x, references["t"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="gaussian64,gaussian784,unet")
    parser.add_argument("--tols", default="1e-5,1e-3", help="tolerances (with --sweep: its grid)")
    parser.add_argument("--train_steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=8, help="U-Net case")
    parser.add_argument("--divergence_cost", action="store_true")
    parser.add_argument("--step_profile", action="store_true",
                        help="where score_sde's solve steps on the U-Net, and the network's roughness in t")
    parser.add_argument("--sweep", action="store_true",
                        help="error against evaluations over the --tols grid, every column with every --methods")
    parser.add_argument("--methods", default="dopri5,bosh3,dopri8", help="with --sweep: torchdiffeq methods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run_dir", default=None, help="unet case: a trained run's workdir instead of the digits U-Net")
    parser.add_argument("--data_dir", default=None, help="with --run_dir: where its dataset lives")
    parser.add_argument("--reference_tol", type=float, default=1e-9, help="unet case: tolerance of the reference solves")
    args = parser.parse_args(argv)

    sde = VPSDE()
    tols = [float(t) for t in args.tols.split(",")]
    methods = args.methods.split(",")
    if not set(methods) <= set(ADAPTIVE_METHODS):
        parser.error(f"--methods must be adaptive torchdiffeq methods, some of {', '.join(ADAPTIVE_METHODS)}; "
                     f"got {args.methods!r} (a tolerance sweep of a fixed-step method measures nothing).")
    results = {"setup": {"eps": EPS, "threads": torch.get_num_threads(), "train_steps": args.train_steps,
                         "sde": repr(sde)}}
    if args.step_profile:
        model = trained_unet(sde, args.train_steps, args.seed).double()
        test = load_dataset("digits", "test")
        x = dequantize(test.data[: args.batch_size], test.num_levels, torch.Generator().manual_seed(args.seed)).double()
        results["step_profile"] = step_profile(model, sde, x, tols)
        print(json.dumps(results, indent=1))
        return results
    if args.divergence_cost:
        model = trained_unet(sde, args.train_steps, args.seed)
        results["divergence_cost"] = divergence_cost(model, sde, args.batch_size, tols[0], args.seed)
        print(json.dumps(results, indent=1))
        return results
    for case in args.cases.split(","):
        print(f"== {case}", flush=True)
        score_fn, case_sde, x, reference = build_case(case, args, results["setup"])
        if args.sweep:
            results[case] = sweep(score_fn, case_sde, x, reference, tols, methods)
        else:
            results[case] = compare(score_fn, case_sde, x, reference, tols)
    print(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
