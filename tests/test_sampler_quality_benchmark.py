"""benchmarks/sampler_quality.py end to end on a smoke-scale NCML-VP run on the digits: the output
files and keys, NFE bookkeeping, and that its hybrid samples are exactly ``hybrid_sample``'s."""
from __future__ import annotations

import sys
from pathlib import Path

import gin
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.sampler_quality import main, parse_setting, run_setting, start_draws  # noqa: E402
from experiments.runner import run_experiment  # noqa: E402
from hybrids import load_run  # noqa: E402
from hybrids.samplers.hybrid import hybrid_sample  # noqa: E402


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sq") / "ncml_vp"
    gin.clear_config()
    run_experiment(["ncml_vp.gin", "presets/cpu_small.gin", "presets/smoke.gin"], [], workdir=path, mode="train")
    gin.clear_config()
    return path


def test_benchmark_writes_json_table_and_plot(workdir, tmp_path):
    out = tmp_path / "out"
    result = main(["--workdir", str(workdir), "--out", str(out), "--settings", "pc:2", "heun:2", "ode:1e-2",
                   "--num_samples", "12", "--batch_size", "8", "--classifier_steps", "20", "--kid_subsets", "3",
                   "--kid_subset_size", "8"])
    assert {p.name for p in out.iterdir()} == {"results.json", "results.md", "quality_vs_nfe.png"}
    assert result["setup"]["fd_metric"] == "FD-digits classifier" and result["setup"]["ar_passes"] == 64
    assert {"fd", "kid", "kid_subset_std", "num_samples", "split"} <= set(result["floor"])
    rows = {r["label"]: r for r in result["settings"]}
    assert rows["pc:2"]["score_nfe"] == 2 and rows["heun:2"]["score_nfe"] == 3 and rows["ode:0.01"]["score_nfe"] >= 7
    for row in rows.values():
        assert row["fd"] > 0 and row["seconds"] > 0 and row["ar_passes"] == 64
    table = (out / "results.md").read_text()
    assert "| heun:2 | 3 | 64 |" in table and "floor" in table


def test_hybrid_samples_are_hybrid_sample_s(workdir):
    """The shared ancestral draw plus each setting's reverse solver gives exactly hybrid_sample's levels."""
    run = load_run(workdir)
    start = start_draws(run.model, run.sde, (1, 8, 8), [3], hybrid=True, t0=None, seed=5, device=torch.device("cpu"))
    for text in ("pc:3", "heun:2"):
        setting = parse_setting(text)
        levels, _ = run_setting(run.model, run.sde, start, setting, 17, torch.device("cpu"))
        direct = hybrid_sample(run.model, run.sde, (3, 1, 8, 8), num_levels=17, generator=torch.Generator().manual_seed(5),
                               **setting.reverse_kwargs(start.t0, 1e-3))
        assert torch.equal(levels, direct), text


def test_bad_settings_are_rejected():
    for text in ("pc:0", "heun:1", "heun:2.5", "ode:0", "ode:x", "euler:10", "pc"):
        with pytest.raises(ValueError, match="bad sampler setting"):
            parse_setting(text)
