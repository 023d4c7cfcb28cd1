"""docs/extending.md works as written: its four files, copied out of the page, train, evaluate and
sample under the smoke preset without touching a library file; the objective and the sampler it
shows are also checked against closed forms on Gaussian data."""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import gin
import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
SMOKE = ("presets/cpu_small.gin", "presets/smoke.gin")


def _doc_files() -> dict[str, str]:
    """``{file name: text}`` of every fenced block of the page that starts with ``# file: NAME``."""
    blocks = re.findall(r"```(?:python|gin)\n# file: (\S+)\n(.*?)```", DOC.read_text(), flags=re.S)
    return {name: body for name, body in blocks}


@pytest.fixture(scope="module")
def doc_dir(tmp_path_factory):
    """The page's files in a directory on sys.path (imported once: gin registers a module's
    configurables once per process)."""
    root = tmp_path_factory.mktemp("extending")
    for name, body in _doc_files().items():
        (root / name).write_text(body)
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


def test_the_page_has_one_python_and_one_gin_file_per_addition():
    assert sorted(_doc_files()) == ["annealed_langevin.py", "annealed_langevin_ve.gin", "ncssm.py", "ncssm_vp.gin"]


def test_ncssm_expectation_is_the_score_matching_objective_of_gaussian_data(doc_dir):
    """With the exact score of N(mu, v) data, E[l] at time t is lambda(t) (tr ds/dx + ||s||^2 / 2)
    = -lambda(t) sum_d 1 / (2 v_t,d). Catches: a dropped or sign-flipped Jacobian term, a
    missing 1/2, the projection counted twice."""
    import ncssm

    from hybrids.models.analytic import GaussianDataModel
    from hybrids.sdes import VPSDE

    sde = VPSDE()
    mean, var = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64), torch.tensor([0.3, 0.1, 0.6], dtype=torch.float64)
    model = GaussianDataModel(mean, var, sde)
    objective = ncssm.NCSSM(sde, weighting="likelihood", eps=0.3, num_levels=None, num_projections=2)
    objective.sde = sde
    n = 40_000
    x0 = mean + var.sqrt() * torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, metrics = objective(model, x0, generator=torch.Generator().manual_seed(1))
    losses = metrics["per_example_loss"]
    # The same times again, to evaluate the closed form at each example's t.
    from hybrids.objectives.perturb import likelihood_weighting, sample_times

    t, lam = sample_times(sde, n, 0.3, torch.Generator().manual_seed(1), like=x0, weighting=likelihood_weighting)
    m = sde.marginal_coefs(t)
    v_t = m.mean_coef[:, None] ** 2 * var + m.std[:, None] ** 2
    expected = (-lam * (1 / (2 * v_t)).sum(1)).mean()
    se = losses.std() / math.sqrt(n)
    assert abs(float(losses.mean() - expected)) < 4 * float(se)


def test_annealed_langevin_samples_gaussian_data(doc_dir):
    """On exact VE scores of N(1.5, 0.2) data the sampler's output has the data's mean and
    variance. Catches: a flipped score, a wrong step scaling (NCSN's alpha vs 2 a), levels in the
    wrong order."""
    import annealed_langevin

    from hybrids.data import ArrayDataset
    from hybrids.models.analytic import GaussianDataModel
    from hybrids.sdes import VESDE

    sde = VESDE(sigma_min=0.01, sigma_max=5.0)
    model = GaussianDataModel(torch.full((2,), 1.5, dtype=torch.float64), torch.full((2,), 0.2, dtype=torch.float64), sde)
    data = ArrayDataset("moons", torch.zeros(4, 2), None, None)
    out = annealed_langevin.my_annealed_langevin_sampler(
        model, data, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0), num_samples=4000,
        num_steps=2000, num_noise_levels=10, step_lr=1e-4)
    x = out["samples"]
    assert torch.allclose(x.mean(0), torch.full((2,), 1.5, dtype=torch.float64), atol=0.05)
    assert torch.allclose(x.var(0), torch.full((2,), 0.2 + 0.01**2, dtype=torch.float64), rtol=0.1)


@pytest.mark.slow
def test_the_new_objective_and_sampler_run_end_to_end_under_the_smoke_preset(doc_dir):
    from experiments.runner import run_experiment

    out = run_experiment([str(doc_dir / "ncssm_vp.gin"), *SMOKE], workdir=doc_dir / "ncssm", mode="all")
    assert out["stages_completed"] == ["eval", "sample", "train"]
    config = (doc_dir / "ncssm" / "operative_config.gin").read_text()
    assert "NCSSM.weighting = 'original'" in config
    losses = [json.loads(line)["loss"] for line in (doc_dir / "ncssm" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses and all(math.isfinite(v) for v in losses)

    gin.clear_config()
    out = run_experiment([str(doc_dir / "annealed_langevin_ve.gin"), *SMOKE], workdir=doc_dir / "al", mode="all")
    assert (doc_dir / "al" / "samples" / "my_annealed_langevin_sampler_samples.png").exists()
    # The smoke preset never names the new sampler, yet its Budget shrank it: 20 steps in all.
    config = (doc_dir / "al" / "operative_config.gin").read_text()
    assert "Budget.num_steps = 20" in config

