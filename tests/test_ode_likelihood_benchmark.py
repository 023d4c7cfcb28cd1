"""benchmarks/ode_likelihood.py at toy scale: the comparison's columns and errors, the baseline's
accepted times, and the U-Net step profile's bookkeeping."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import gin  # noqa: E402

from benchmarks.ode_likelihood import (EPS, HYBRIDS_VARIANTS, compare, gaussian_case, main,  # noqa: E402
                                       score_sde_log_prob, step_profile, sweep, trained_unet)
from experiments.runner import run_experiment  # noqa: E402
from hybrids.likelihood.ode import make_probe  # noqa: E402
from hybrids.sdes import VPSDE  # noqa: E402


def test_compare_reports_every_setting_against_the_closed_form():
    """Every column reaches the closed-form answer at rtol = atol = 1e-6 (a baseline or variant
    that solves a different ODE, or uses another probe than the reference, is off by far more),
    and the ratios are to the baseline's row."""
    sde = VPSDE()
    model, x, reference = gaussian_case(8, 4, sde)
    rows = compare(model.score, sde, x, reference, [1e-6])["tol=1e-06"]
    assert set(rows) == {"score_sde_scipy_rk45", *HYBRIDS_VARIANTS}
    for name, row in rows.items():
        assert row["nfe"] > 10 and row["error_nats_per_dim"] < 1e-5, (name, row)
    for name in HYBRIDS_VARIANTS:
        assert rows[name]["nfe_ratio"] == rows[name]["nfe"] / rows["score_sde_scipy_rk45"]["nfe"]


def test_sweep_frontier_is_the_cheapest_point_no_less_accurate():
    """Each frontier entry is, among all hybrids points of the sweep, the one with the fewest
    evaluations whose error is at most the baseline point's (a frontier that ignored the error
    condition, or kept the first match instead of the cheapest, fails), with its NFE ratio; errors
    fall as the tolerance tightens, so the baseline's slope is negative and the factor above 1."""
    sde = VPSDE()
    model, x, reference = gaussian_case(8, 4, sde)
    out = sweep(model.score, sde, x, reference, [1e-2, 1e-4, 1e-6], ["dopri5", "bosh3"])
    assert set(out["points"]) == {"score_sde_scipy_rk45", *(f"{n}_{m}" for n in HYBRIDS_VARIANTS
                                                            for m in ("dopri5", "bosh3"))}
    candidates = [p for s, pts in out["points"].items() if s != "score_sde_scipy_rk45" for p in pts]
    for entry in out["frontier"]:
        base, best = entry["baseline"], entry["best"]
        eligible = [p["nfe"] for p in candidates if p["error_nats_per_dim"] <= base["error_nats_per_dim"]]
        assert best is not None and best["nfe"] == min(eligible)
        assert best["error_nats_per_dim"] <= base["error_nats_per_dim"]
        assert entry["nfe_ratio"] == best["nfe"] / base["nfe"]
    assert out["baseline_slope"] < 0 and out["error_factor_at_half_nfe"] == 2.0 ** -out["baseline_slope"] > 1


def test_sweep_refuses_fixed_step_methods(capsys):
    """A tolerance sweep of a fixed-step method would time one step over [eps, T]: refused, naming the choices."""
    with pytest.raises(SystemExit):
        main(["--sweep", "--cases", "gaussian64", "--methods", "dopri5,rk4"])
    assert "adaptive torchdiffeq methods" in capsys.readouterr().err


def test_baseline_accepted_times_and_step_profile_bookkeeping():
    """The baseline's accepted times run from eps to T; the profile's bins count every step, and
    its roughness is a finite non-negative fraction."""
    sde = VPSDE()
    model, x, _ = gaussian_case(8, 2, sde)
    probe = make_probe(x, "rademacher", torch.Generator().manual_seed(1))
    _, nfe, times = score_sde_log_prob(model.score, sde, x, probe, 1e-3, accepted_times=True)
    assert times[0] == EPS and times[-1] == sde.T and np.all(np.diff(times) > 0) and nfe >= len(times)

    unet = trained_unet(sde, 3, 0).double()  # a few updates: the untrained output layer is zero
    digits = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    profile = step_profile(unet, sde, digits, [1e-2])
    assert sum(profile["tol=0.01"]["steps_per_bin"]) == profile["tol=0.01"]["steps"] > 0
    assert all(0 <= r < 1 for r in profile["relative_residual_of_quadratic_fit"].values())


def test_unet_case_on_a_trained_run(tmp_path):
    """``--run_dir``: the U-Net case loads a run (smoke-scale ScoreFlow VP U-Net on the digits),
    solves its reference in both variables and reports every column, with the run recorded."""
    workdir = tmp_path / "scoreflow"
    gin.clear_config()
    run_experiment(["scoreflow_vp_likelihood_is.gin", "presets/cpu_small.gin", "presets/smoke.gin"], [],
                   workdir=workdir, mode="train")
    gin.clear_config()
    out = main(["--cases", "unet", "--run_dir", str(workdir), "--batch_size", "2", "--tols", "1e-2",
                "--reference_tol", "1e-4"])
    assert out["setup"]["run_dir"] == str(workdir) and out["setup"]["run_step"] == 4
    rows = out["unet"]["tol=0.01"]
    assert set(rows) == {"score_sde_scipy_rk45", *HYBRIDS_VARIANTS} and all(r["nfe"] > 0 for r in rows.values())
    assert out["setup"]["reference_t_minus_angle_nats_per_dim"] >= 0
