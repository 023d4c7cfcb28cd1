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
from tests._tiny_components import FAST_BINDINGS, TINY_GIN  # noqa: E402

TINY, FAST = TINY_GIN, FAST_BINDINGS


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
    md = [line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("|")]
    assert len(md) == 2 + 4 and "tiny_nll_eval.nll" in md[0]
    assert (tmp_path / "loss_curves.png").exists() and "](loss_curves.png)" in (tmp_path / "summary.md").read_text()

    mtimes = [(c / "results.json").stat().st_mtime_ns for c in cells]
    again = run_grid([TINY], grid, tmp_path, gin_bindings=FAST, mode="all", in_process=True)
    assert [r["status"] for r in again] == ["skipped"] * 4
    assert [(c / "results.json").stat().st_mtime_ns for c in cells] == mtimes
    assert [r["results"] for r in again] == [r["results"] for r in rows]


def test_from_checkpoint_evaluates_one_trained_model_in_every_cell(tmp_path):
    trained = tmp_path / "trained"
    run_grid([TINY], {"tiny_nll_eval.num_examples": [16]}, trained, gin_bindings=FAST, mode="all",
             in_process=True)
    train_dir = next(p for p in trained.iterdir() if p.is_dir())
    nll_16 = read_json(train_dir / "results.json")["results"]["tiny_nll_eval"]["nll"]
    ckpt = train_dir / "checkpoints" / "ckpt_00000004.pt"
    grid = {"tiny_nll_eval.num_examples": [16, 64]}
    rows = run_grid([TINY], grid, tmp_path / "evals", gin_bindings=FAST, mode="eval", in_process=True,
                    from_checkpoint=train_dir, plot_keys=["tiny_nll_eval.nll", "tiny_nll_eval.n"])
    assert [r["status"] for r in rows] == ["done", "done"]
    cells = sorted(p for p in (tmp_path / "evals").iterdir() if p.is_dir())
    for cell in cells:
        assert (cell / "checkpoints" / ckpt.name).read_bytes() == ckpt.read_bytes()
        assert read_json(cell / "results.json")["step"] == 4
    # the same trained weights, evaluated under each cell's bindings
    assert rows[0]["results"]["tiny_nll_eval.nll"] == nll_16
    assert rows[1]["results"]["tiny_nll_eval.n"] == 64
    # the sweep picture of the two keys against the grid value, linked from the summary
    sweep = tmp_path / "evals" / "sweep.png"
    assert sweep.stat().st_size > 1000 and "](sweep.png)" in (tmp_path / "evals" / "summary.md").read_text()
    # a checkpoint file works too; an untrained model (no seeding) would not give nll_16
    rows = run_grid([TINY], {"tiny_nll_eval.num_examples": [16]}, tmp_path / "file", gin_bindings=FAST,
                    mode="eval", in_process=True, from_checkpoint=ckpt)
    assert rows[0]["results"]["tiny_nll_eval.nll"] == nll_16


def test_from_checkpoint_errors_name_the_problem(tmp_path):
    grid = {"tiny_nll_eval.num_examples": [16]}
    with pytest.raises(ValueError, match="one numeric binding"):
        run_grid([TINY], {"Trainer.lr": [0.1], "TinyNLL.scale": [1.0]}, tmp_path / "g", plot_keys=["x"])
    with pytest.raises(ValueError, match="--mode must be eval or sample"):
        run_grid([TINY], grid, tmp_path / "g", mode="all", from_checkpoint=tmp_path)
    with pytest.raises(ValueError, match="holds no checkpoint"):
        run_grid([TINY], grid, tmp_path / "g", mode="eval", from_checkpoint=tmp_path)
    with pytest.raises(ValueError, match="neither a checkpoint file nor a workdir"):
        run_grid([TINY], grid, tmp_path / "g", mode="eval", from_checkpoint=tmp_path / "nope.pt")
    assert not (tmp_path / "g").exists()


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


def test_seeds_add_a_seed_axis_and_a_summary_over_seeds(tmp_path):
    """--seeds=2 runs each cell with Trainer.seed = 0 and 1 and summarises each setting as the
    mean ± sd of its two seeds (checked against the per-seed results)."""
    import statistics

    rows = run_grid([TINY], {"Trainer.lr": [0.05, 0.01]}, tmp_path, gin_bindings=FAST, mode="all",
                    in_process=True, seeds=2)
    assert [r["bindings"]["Trainer.seed"] for r in rows] == [0, 1, 0, 1] and all(r["status"] == "done" for r in rows)
    with open(tmp_path / "summary_over_seeds.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(t["Trainer.lr"]) for t in table] == [0.05, 0.01] and all(t["seeds done"] == "2" for t in table)
    for t, pair in zip(table, (rows[:2], rows[2:])):
        vals = [r["results"]["tiny_nll_eval.nll"] for r in pair]
        assert vals[0] != vals[1]  # the seeds differ
        assert float(t["tiny_nll_eval.nll mean"]) == pytest.approx(statistics.mean(vals))
        assert float(t["tiny_nll_eval.nll sd"]) == pytest.approx(statistics.stdev(vals))
    assert "±" in (tmp_path / "summary_over_seeds.md").read_text()
    with pytest.raises(ValueError, match="not both"):
        run_grid([TINY], {"Trainer.seed": [0, 1]}, tmp_path / "x", seeds=2)
