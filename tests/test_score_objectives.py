"""CSM against SM / SSM / SSM-VR / DSM on one MADE: the joint-score MADE, the comparison's hooks
(objective_eval, langevin_sampler, sample_mmd_eval), the Gaussian-kernel MMD, the row files'
fairness contract, the benchmark's --quick mode, the reproduce table and its loss bands."""
from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import gin
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrids.data import ArrayDataset
from hybrids.hooks.objective_comparison import langevin_sampler, objective_eval, sample_mmd_eval
from hybrids.metrics.mmd import gaussian_kernel, gaussian_mmd2_unbiased
from hybrids.models.analytic import GaussianDataModel
from hybrids.models.made import MADEConditionalScore, MADEJointScore
from hybrids.objectives.csm import CSM
from hybrids.objectives.dsm import DSM
from hybrids.objectives.score_matching import SM
from hybrids.samplers.langevin import ar_langevin_sample
from hybrids.sdes import VESDE, VPSDE

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def _template(dim: int, seed: int = 0, **kwargs) -> MADEConditionalScore:
    torch.manual_seed(seed)
    kwargs = {"hidden": (12, 10), "context_features": 3, "head_hidden": (6,), **kwargs}
    return MADEConditionalScore(dim, **kwargs).double()


def _dense_score(template: MADEConditionalScore, x: torch.Tensor) -> torch.Tensor:
    """An independent joint score: the template's weights as plain dense layers, no masks."""
    made = template.made
    h = x
    for layer in made.layers:
        h = F.softplus(F.linear(h, layer.weight, layer.bias))
    c = (F.linear(h, made.output.weight, made.output.bias) + x @ made.direct.weight.T).reshape(
        x.shape[0], x.shape[1], made.out_features)
    return template.score_head.net(torch.cat([x.unsqueeze(-1), c], -1)).squeeze(-1)


# --- the joint-score MADE ---------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(dim=st.integers(1, 7), batch=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_joint_score_is_the_template_network_without_masks(dim, batch, seed):
    """Catches: a mask left in place (the direct path, the output layer), a joint model that does not
    start from the template's weights, or one that changes the template (the CSM row's model)."""
    template = _template(dim, seed)
    before = {k: v.clone() for k, v in template.state_dict().items()}
    joint = MADEJointScore(template)
    x = torch.randn(batch, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    s = joint.score(x)
    assert s.shape == x.shape
    torch.testing.assert_close(s, _dense_score(template, x))
    for key, value in template.state_dict().items():
        torch.testing.assert_close(value, before[key])  # the template keeps its masks and weights
        if not key.endswith("mask"):
            torch.testing.assert_close(joint.state_dict()["network." + key], value)
    assert sum(p.numel() for p in joint.parameters()) == sum(p.numel() for p in template.parameters())


def test_every_coordinate_of_the_joint_score_sees_every_input():
    """Catches: the masked (autoregressive) network read as a joint score, whose Jacobian is lower
    triangular with a zero diagonal part from the context, i.e. s_d blind to x_j for j > d."""
    template = _template(5)
    x = torch.randn(3, 5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: MADEJointScore(template).score(v).sum(0), x)  # [D, B, D]
    assert bool((jac.abs() > 1e-10).all())
    masked = torch.autograd.functional.jacobian(
        lambda v: template.head(v, template.context(v)).sum(0), x)
    assert bool((masked.permute(1, 0, 2).triu(1).abs() < 1e-14).all())  # the AR reading: s_d blind to x_>d


def test_joint_score_on_images_and_noise_conditional_templates():
    """Images are flattened in raster order and returned in their shape; a noise-conditional template
    with an SDE keeps its time embedding and its 1 / sigma(t) preconditioning."""
    template = _template(4)
    joint = MADEJointScore(template)
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(joint.score(x), joint.score(x.reshape(2, 4)).reshape(2, 1, 2, 2))
    sde = VPSDE()
    nc = MADEJointScore(_template(4, noise_conditional=True, sde=sde))
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    raw = nc.network.score_head(x.reshape(2, 4), nc.network.context(x.reshape(2, 4), t))
    torch.testing.assert_close(nc.score(x, t).reshape(2, 4), raw / sde.marginal_coefs(t).std[:, None])
    assert nc.sde is sde
    with pytest.raises(ValueError, match="pass t"):
        nc.score(x)


def test_joint_score_is_not_an_autoregressive_model():
    joint = MADEJointScore(_template(3))
    with pytest.raises(NotImplementedError, match="not an autoregressive score model"):
        joint.conditional_scores(torch.zeros(2, 3), None)
    with pytest.raises(TypeError, match="ARConditionalScoreModel"):
        ar_langevin_sample(joint, (2, 3), n_steps=1, step_size=1e-3)
    with pytest.raises(TypeError, match="MADEConditionalScore"):
        MADEJointScore(torch.nn.Linear(2, 2))


def test_sm_on_the_joint_made_is_trace_plus_half_squared_norm():
    """SM through MADEJointScore.score equals tr(ds/dx) + ||s||^2 / 2 from the full Jacobian.
    Catches: a score that detaches x (trace 0) or reads the wrong layout."""
    joint = MADEJointScore(_template(4))
    x0 = torch.randn(6, 4, dtype=torch.float64)
    sde = VESDE(1e-3, 0.1)
    gen = torch.Generator().manual_seed(3)
    loss, metrics = SM(sde=sde, t=1.0, num_levels=None)(joint, x0, generator=gen)
    x = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: joint.score(v).sum(0), x)  # [D, B, D]
    trace = torch.diagonal(jac.permute(1, 0, 2), dim1=1, dim2=2).sum(1)
    expected = trace + 0.5 * joint.score(x).pow(2).sum(1)
    torch.testing.assert_close(metrics["per_example_loss"], expected)
    torch.testing.assert_close(loss, expected.mean())


# --- the Gaussian-kernel MMD ------------------------------------------------------------------------
def test_mmd_matches_the_formula_on_points_by_hand():
    """x = {0, 1}, y = {0, 2} in 1-D, h = 1: k(a, b) = exp(-(a - b)^2 / 2).
    Catches: the diagonal kept in the within-sample terms (the biased V-statistic), h for h^2."""
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]])
    k = lambda d: math.exp(-d**2 / 2)  # noqa: E731
    expected = k(1) + k(2) - 2 * (k(0) + k(2) + k(1) + k(1)) / 4
    assert gaussian_mmd2_unbiased(x, y, bandwidths=(1.0,)) == pytest.approx(expected, rel=1e-12)
    both = gaussian_mmd2_unbiased(x, y, bandwidths=(1.0, 2.0))
    assert both == pytest.approx(0.5 * (expected + gaussian_mmd2_unbiased(x, y, bandwidths=(2.0,))), rel=1e-12)


def test_mmd_of_gaussians_matches_the_closed_form():
    """E exp(-||X - Y||^2 / (2 h^2)) = (h^2 / (h^2 + s^2))^(d/2) exp(-||mu||^2 / (2 (h^2 + s^2))) for
    X - Y ~ N(mu, s^2 I) in d dimensions; the unbiased estimate of 4000 + 4000 points is within
    5 standard errors of MMD^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y)."""
    gen = torch.Generator().manual_seed(0)
    d, h, s1, s2, shift = 2, 0.3, 0.5, 0.8, torch.tensor([0.6, -0.3], dtype=torch.float64)

    def ek(var: float, mu2: float) -> float:
        return (h**2 / (h**2 + var)) ** (d / 2) * math.exp(-mu2 / (2 * (h**2 + var)))

    exact = ek(2 * s1**2, 0.0) + ek(2 * s2**2, 0.0) - 2 * ek(s1**2 + s2**2, float(shift.pow(2).sum()))
    values = [gaussian_mmd2_unbiased(s1 * torch.randn(1000, d, generator=gen, dtype=torch.float64),
                                     shift + s2 * torch.randn(1000, d, generator=gen, dtype=torch.float64), (h,))
              for _ in range(4)]
    se = statistics.stdev(values) / 2
    assert abs(statistics.fmean(values) - exact) < 5 * se + 1e-4, (values, exact)
    assert exact > 0.02  # a real difference, far above the tolerance


def test_mmd_rejects_bad_inputs():
    with pytest.raises(ValueError, match="at least 2 points"):
        gaussian_mmd2_unbiased(torch.zeros(1, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"\[m, d\] and \[n, d\]"):
        gaussian_mmd2_unbiased(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="bandwidths must be positive"):
        gaussian_mmd2_unbiased(torch.zeros(3, 2), torch.zeros(3, 2), bandwidths=(0.0,))
    assert gaussian_kernel(torch.zeros(2, 2), torch.ones(3, 2), (1.0,)).shape == (2, 3)


# --- the hooks --------------------------------------------------------------------------------------
class _Recorder:
    """An objective whose loss is the batch mean of a fixed function of the examples; records batches."""

    def __init__(self):
        self.batches = []

    def __call__(self, model, batch, *, generator=None):
        self.batches.append(batch.clone())
        out = model(batch.float().reshape(batch.shape[0], -1)).pow(2).mean()
        return out, {}


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_objective_eval_statistics_and_the_untouched_model(reduction):
    """The mean, sd and se are those of the per-batch losses the objective returned (recomputed
    here from the recorded batches), divided by D only for 'sum'; batches are Trainer.batch_size
    draws of the split; the timed updates train a copy. Catches: updates applied to the evaluated
    model, the per-dimension column divided (or the per-example one not multiplied) for 'mean'
    objectives, a population sd."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = ArrayDataset("digits", torch.randint(0, 17, (40, 1, 2, 3)), None, 17)
    gin.parse_config("import hybrids.training\nTrainer.batch_size = 7")
    objective = _Recorder()
    out = objective_eval(model, data, device=CPU, generator=torch.Generator().manual_seed(1), objective=objective,
                         num_batches=6, timed_updates=2, reduction=reduction)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    recorded = objective.batches[:6]
    assert all(b.shape == (7, 1, 2, 3) for b in recorded)
    with torch.no_grad():
        losses = [float(model(b.float().reshape(7, -1)).pow(2).mean()) for b in recorded]
    assert out["loss"]["mean"] == pytest.approx(statistics.fmean(losses))
    assert out["loss"]["sd"] == pytest.approx(statistics.stdev(losses))
    assert out["loss"]["se"] == pytest.approx(statistics.stdev(losses) / math.sqrt(6))
    to_dim, to_example = (1 / 6, 1) if reduction == "sum" else (1, 6)
    for key, factor in (("loss_per_dim", to_dim), ("loss_per_example", to_example)):
        assert out[key]["mean"] == pytest.approx(statistics.fmean(losses) * factor)
        assert out[key]["sd"] == pytest.approx(statistics.stdev(losses) * factor)
    assert out["seconds_per_update"] > 0 and out["batch_size"] == 7 and out["num_dims"] == 6
    assert len(objective.batches) == 6 + 3  # a warm-up and 2 timed updates
    with pytest.raises(ValueError, match="reduction must be one of"):
        objective_eval(model, data, device=CPU, generator=torch.Generator(), objective=objective, reduction="avg")


def test_objective_eval_on_csm_leaves_the_trained_model_and_is_seeded():
    """A real objective: the same generator seed gives the same statistics; the model is unchanged."""
    model = _template(2).float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = ArrayDataset("checkerboard", torch.randn(50, 2), None, None)
    kwargs = dict(device=CPU, objective=CSM(sigma=0.1, num_levels=None), num_batches=4, update_batch_size=8,
                  timed_updates=1, reduction="mean")
    a = objective_eval(model, data, generator=torch.Generator().manual_seed(5), **kwargs)
    b = objective_eval(model, data, generator=torch.Generator().manual_seed(5), **kwargs)
    assert a["loss"] == b["loss"] and a["loss"]["sd"] > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_langevin_sampler_reaches_the_gaussian_stationary_law():
    """x <- x + eps s + sqrt(2 eps) z on N(m, s^2) has the stationary law N(m, s^2 / (1 - eps / (2 s^2)))
    exactly; 4000 chains of 300 steps (contraction 0.96 per step) from N(0, I) match its mean and
    variance. Catches: the score called without the bound t, a wrong noise scale."""
    mean, std, eps = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5, 0.01
    model = GaussianDataModel(mean, torch.full((2,), std**2, dtype=torch.float64), VPSDE())
    data = ArrayDataset("checkerboard", torch.zeros(4, 2), None, None)
    x = langevin_sampler(model, data, device=CPU, generator=torch.Generator().manual_seed(0), num_samples=4000,
                         num_steps=300, step_size=eps, t=0.0)["samples"]
    var = std**2 / (1 - eps / (2 * std**2))
    assert x.shape == (4000, 2) and x.dtype == torch.float64
    assert (x.mean(0) - mean).abs().max() < 4 * math.sqrt(var / 4000)
    assert (x.var(0) / var - 1).abs().max() < 0.08


def test_langevin_sampler_starts_images_uniformly_in_model_space():
    """With a zero score and a tiny step, image samples stay at their U[-1, 1] start: every level
    about equally often (the same start as ar_langevin_sampler's)."""

    class Zero(torch.nn.Module):
        def score(self, x, t):
            return torch.zeros_like(x)

    zero = Zero()
    zero.register_buffer("dtype_probe", torch.zeros(1))
    data = ArrayDataset("digits", torch.zeros(2, 1, 8, 8, dtype=torch.long), None, 17)
    levels = langevin_sampler(zero, data, device=CPU, generator=torch.Generator().manual_seed(0), num_samples=200,
                              num_steps=1, step_size=1e-8)["samples"]
    counts = torch.bincount(levels.flatten(), minlength=17).double()
    assert levels.shape == (200, 1, 8, 8) and levels.dtype == torch.long
    inner = counts[1:-1] / counts[1:-1].mean()  # the end levels collect half bins
    assert (inner - 1).abs().max() < 0.15 and counts[0] > 0 and counts[-1] > 0


def test_sample_mmd_eval_separates_a_perfect_sampler_from_a_bad_one():
    """Real points score like the floor; points piled at the origin do not. Images are refused."""
    from hybrids.data import load_dataset
    from hybrids.hooks.base import sampler

    @sampler
    def _real_points(model, data, *, device, generator, num_samples=None):
        return {"samples": load_dataset("checkerboard", split="train", num_examples=3000).data[-num_samples:]}

    @sampler
    def _origin(model, data, *, device, generator, num_samples=None):
        return {"samples": torch.zeros(num_samples, 2)}

    data = load_dataset("checkerboard", split="test", num_examples=16)
    kwargs = dict(device=CPU, generator=torch.Generator(), num_quality_samples=500, num_reference=1000)
    good = sample_mmd_eval(None, data, sampler=_real_points, **kwargs)
    bad = sample_mmd_eval(None, data, sampler=_origin, **kwargs)
    assert abs(good["mmd2"]) < 0.01 and abs(good["floor"]["mmd2"]) < 0.01
    assert bad["mmd2"] > 0.1 and good["num_samples"] == 500 and good["num_reference"] == 1000
    with pytest.raises(ValueError, match="sample_fd_eval"):
        sample_mmd_eval(None, ArrayDataset("digits", torch.zeros(2, 1, 8, 8, dtype=torch.long), None, 17),
                        sampler=_origin, **kwargs)


# --- the row files: only the objective changes ------------------------------------------------------
def _resolved(query: str):
    """A gin binding's value, following macro references (``%NAME``)."""
    value = gin.query_parameter(query)
    while isinstance(value, gin.config.ConfigurableReference) and str(value).startswith("%"):
        value = gin.query_parameter(str(value))
    return value


@pytest.mark.parametrize("gin_file", ["made_objectives_toy.gin", "made_objectives_mnist.gin"])
def test_rows_share_network_weights_noise_level_and_sampler_settings(gin_file):
    """Under the smoke preset and the table's bindings: every row of a dataset builds the same
    network with the same initial weights (CSM's masked, the others unmasked), each objective
    perturbs with std SIGMA, and both samplers have the same step and steps. Catches: a row file
    whose joint model has other sizes than the CSM row, or a DSM / SM noise level off SIGMA."""
    from experiments.runner import parse_gin
    from experiments.tables import TABLES
    from hybrids.runs import experiment
    from hybrids.training import Trainer

    rows = [r for r in TABLES["arcsm_objectives"].rows if r.gin_files == (gin_file,)]
    assert len(rows) == 5
    built = {}
    for row in rows:
        gin.clear_config()
        parse_gin([gin_file, "presets/cpu_small.gin", "presets/smoke.gin"], list(row.bindings))
        Trainer().seed_everything()
        exp = experiment()
        sigma = _resolved("%SIGMA")
        for setting in ("num_steps", "step_size"):
            assert _resolved(f"ar_langevin_sampler.{setting}") == _resolved(f"langevin_sampler.{setting}")
        built[row.label] = (exp.model, exp.objective, sigma)
    weights = [{k.removeprefix("network."): v for k, v in m.state_dict().items() if not k.endswith("mask")}
               for m, _, _ in built.values()]
    for other in weights[1:]:
        assert other.keys() == weights[0].keys()
        assert all(torch.equal(other[k], weights[0][k]) for k in other)
    kinds = {label.split()[1]: (type(m).__name__, type(o).__name__) for label, (m, o, _) in built.items()}
    assert kinds == {"CSM": ("MADEConditionalScore", "CSM"), "SM": ("MADEJointScore", "SM"),
                     "SSM": ("MADEJointScore", "SSM"), "SSM-VR": ("MADEJointScore", "SSM"),
                     "DSM": ("MADEJointScore", "DSM")}
    for label, (model, objective, sigma) in built.items():
        if isinstance(objective, CSM):
            assert objective.sigma == sigma
            continue
        first = objective.eps if isinstance(objective, DSM) else objective.t  # DSM: t ~ U[eps, T]
        std = objective.sde.marginal_coefs(torch.tensor([first, objective.sde.T])).std
        assert torch.allclose(std, torch.full_like(std, sigma), rtol=1e-5), label
    assert built[rows[3].label][1].variance_reduction and not built[rows[2].label][1].variance_reduction


# --- the benchmark, the table, the loss bands -------------------------------------------------------
@pytest.mark.slow
def test_benchmark_quick_reports_every_objective_and_stops_sm_at_its_limit():
    """--quick with a time limit SM cannot meet: every objective is measured at D = 2, SM is then
    stopped (and says why) while the others go on at D = 8."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "score_objectives.py"), "--quick",
                          "--time_limit", "1e-9"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| D |"))
    assert all(f"{name} ms (x DSM)" in header and f"{name} MiB (x DSM)" in header
               for name in ("CSM", "SM", "SSM", "SSM-VR", "DSM"))
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[3:-1]] for line in lines
            if line.startswith("| 2 |") or line.startswith("| 8 |")}
    assert all(c != "–" for c in rows["2"])
    assert rows["8"][1] == "–" and rows["8"][6] == "–"  # SM's time and memory at D = 8
    assert sum(c == "–" for c in rows["8"]) == 2
    assert "D = 8, SM: not run: SM exceeded the limits at D = 2" in out.stdout
    assert "(1x)" in rows["2"][4]  # DSM against itself


@pytest.mark.slow
def test_reproduce_smoke_rows_and_loss_bands_over_two_seeds(tmp_path):
    """Two toy rows at smoke scale with two seeds: objective_eval's columns are finite, CSM's loss is
    per dimension as trained (times D per example), SM's per example (divided by D per dimension);
    loss_bands.csv holds the mean and sd over the two
    seeds of the logged losses (recomputed from metrics.jsonl) and loss_bands.png is written."""
    from experiments.loss_bands import write_loss_bands
    from experiments.reproduce import reproduce

    shrink = ["LANGEVIN_STEPS = 20", "sample_mmd_eval.num_quality_samples = 100", "ar_langevin_sampler.num_samples = 8",
              "langevin_sampler.num_samples = 8", "objective_eval.num_batches = 4"]
    rows = reproduce("arcsm_objectives", "smoke", tmp_path, in_process=True,
                     rows=["toy_csm_ar-csm_made", "toy_sm_joint_made"], seeds=2, gin_bindings=shrink)
    done = {r["row"]: r for r in rows if r["status"] == "done"}
    assert set(done) == {"toy CSM (AR-CSM MADE)", "toy SM (joint MADE)"}
    for r in done.values():
        for column in ("loss per example (end of training)", "its sd over updates", "s / update", "MMD^2 (toy)"):
            assert math.isfinite(r["ours"][column]), column
    csm = json.loads((tmp_path / "toy_csm_ar-csm_made" / "seed_0" / "results.json").read_text())["results"]
    sm = json.loads((tmp_path / "toy_sm_joint_made" / "seed_0" / "results.json").read_text())["results"]
    assert csm["objective_eval"]["loss_per_dim"] == csm["objective_eval"]["loss"]
    assert csm["objective_eval"]["loss_per_example"]["sd"] == pytest.approx(2 * csm["objective_eval"]["loss"]["sd"])
    assert sm["objective_eval"]["loss_per_example"] == sm["objective_eval"]["loss"]
    assert sm["objective_eval"]["loss_per_dim"]["mean"] == pytest.approx(sm["objective_eval"]["loss"]["mean"] / 2)
    paths = write_loss_bands(tmp_path, "arcsm_objectives")
    assert [p.name for p in paths] == ["loss_bands.csv", "loss_bands.png"] and paths[1].stat().st_size > 0
    with open(paths[0]) as f:
        bands = [r for r in csv.DictReader(f) if r["row"] == "toy SM (joint MADE)"]
    logs = [{r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "toy_sm_joint_made" / f"seed_{i}" /
                                                             "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train"} for i in range(2)]
    assert [int(b["step"]) for b in bands] == sorted(logs[0])
    for b in bands:
        values = [log[int(b["step"])] for log in logs]
        assert float(b["mean"]) == pytest.approx(statistics.fmean(values))
        assert float(b["sd"]) == pytest.approx(statistics.stdev(values)) and int(b["seeds"]) == 2
    with pytest.raises(ValueError, match="arcsm_objectives"):
        write_loss_bands(tmp_path, "no_table")
