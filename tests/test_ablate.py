"""experiments.ablate: a 2x2 grid, resuming (finished cells skipped), failing cells reported."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `tests._tiny_components` must be importable under one name
    sys.path.insert(0, str(REPO_ROOT))

from experiments.ablate import cell_bindings, cell_name, grid_cells, parse_grid, run_grid, to_gin_literal  # noqa: E402
from hybrids.io import read_json  # noqa: E402

TINY = str(REPO_ROOT / "tests" / "gin" / "tiny.gin")
FAST = ["Trainer.num_steps = 4", "Trainer.eval_every = 0", "Trainer.sample_every = 0",
        "Trainer.log_every = 2", "Trainer.checkpoint_every = 4"]


@pytest.fixture(autouse=True)
def _single_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_grid_product_names_and_literals():
    grid = parse_grid('{"NCML.sde": ["@VESDE()", "@VPSDE()"], "Trainer.lr": [1e-3, 2e-4], "x.s": ["a b"]}')
    cells = grid_cells(grid)
    assert len(cells) == 4
    assert cells[1] == {"NCML.sde": "@VESDE()", "Trainer.lr": 2e-4, "x.s": "a b"}
    assert cell_bindings(cells[1]) == ["NCML.sde = @VESDE()", "Trainer.lr = 0.0002", "x.s = 'a b'"]
    names = [cell_name(i, c) for i, c in enumerate(cells)]
    assert len(set(names)) == 4 and names[0].startswith("000_")
    assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.=+-_") for n in names)
    assert to_gin_literal([None, True, "%CONST"]) == "[None, True, %CONST]"


@pytest.mark.parametrize("grid, match", [
    ("{not json", "not valid JSON"),
    ("{}", "non-empty JSON object"),
    ('{"Trainer.lr": []}', "non-empty list"),
    ('{"Trainer.lr": 0.1}', "non-empty list"),
])
def test_bad_grids_are_rejected(grid, match):
    with pytest.raises(ValueError, match=match):
        parse_grid(grid)


def test_misspelt_grid_key_fails_before_running(tmp_path):
    with pytest.raises(ValueError, match="no_such_param"):
        run_grid([TINY], '{"Trainer.no_such_param": [1, 2]}', tmp_path / "g")
    assert not (tmp_path / "g").exists()


def test_two_by_two_grid_then_resume(tmp_path):
    grid = {"Trainer.lr": [0.05, 0.01], "TinyNLL.scale": [1.0, 0.5]}
    rows = run_grid([TINY], grid, tmp_path, gin_bindings=FAST, mode="all", in_process=True)
    assert [r["status"] for r in rows] == ["done"] * 4
    cells = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(cells) == 4
    for row, cell in zip(rows, cells):
        results = read_json(cell / "results.json")
        assert results["step"] == 4 and results["stages_completed"] == ["eval", "sample", "train"]
        expected = [*FAST, *cell_bindings(row["bindings"])]
        assert results["gin_bindings"] == expected
        assert "Trainer.lr = %r" % row["bindings"]["Trainer.lr"] in (cell / "operative_config.gin").read_text()
        assert row["results"]["tiny_nll_eval.nll"] == results["results"]["tiny_nll_eval"]["nll"]
    with open(tmp_path / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["status"] for t in table] == ["done"] * 4
    assert [float(t["Trainer.lr"]) for t in table] == [0.05, 0.05, 0.01, 0.01]
    assert all(float(t["tiny_nll_eval.nll"]) < float(t["tiny_nll_eval.uniform_nll"]) for t in table)
    nll = [r["results"]["tiny_nll_eval.nll"] for r in rows]
    assert nll[0] < nll[2]  # the cells got their bindings: 4 Adam steps of lr 0.05 beat lr 0.01
    assert nll[1] == pytest.approx(nll[0], rel=1e-4)  # Adam is invariant to the loss scale (up to eps)
    md = (tmp_path / "summary.md").read_text().splitlines()
    assert len(md) == 2 + 4 and "tiny_nll_eval.nll" in md[0]

    mtimes = [(c / "results.json").stat().st_mtime_ns for c in cells]
    again = run_grid([TINY], grid, tmp_path, gin_bindings=FAST, mode="all", in_process=True)
    assert [r["status"] for r in again] == ["skipped"] * 4
    assert [(c / "results.json").stat().st_mtime_ns for c in cells] == mtimes
    assert [r["results"] for r in again] == [r["results"] for r in rows]


@pytest.mark.slow
def test_failing_cell_is_reported_by_the_cli(tmp_path):
    grid = json.dumps({"Trainer.lr": [0.05, -1.0]})
    cmd = [sys.executable, "-m", "experiments.ablate", f"--gin_file={TINY}", f"--grid={grid}",
           f"--workdir={tmp_path}", "--mode=train", "--in_process", *[f"--gin_bindings={b}" for b in FAST]]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "1 of 2 cells ok" in proc.stdout
    assert "Trainer.lr must be positive" in proc.stderr
    with open(tmp_path / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["status"] for t in table] == ["done", "failed"]
    assert "Trainer.lr must be positive" in table[1]["error"] and table[0]["error"] == ""
    assert (tmp_path / table[1]["cell"] / "run.log").exists()


@pytest.mark.slow
def test_subprocess_cell_records_its_error(tmp_path):
    rows = run_grid([TINY], {"Trainer.lr": [-1.0]}, tmp_path, gin_bindings=FAST, mode="train")
    assert rows[0]["status"] == "failed"
    assert rows[0]["error"].startswith("error: ValueError: Trainer.lr must be positive; got -1.0.")
    log = (tmp_path / rows[0]["cell"] / "run.log").read_text()
    assert "-m experiments.run" in log and "Traceback" in log
