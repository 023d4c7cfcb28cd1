"""experiments.reproduce: every table at smoke scale, end to end, with the paper's values beside ours."""
from __future__ import annotations

import csv
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.reproduce import get_table, reproduce
from experiments.tables import SCALES, TABLES
from hybrids.io import flatten_results
from hybrids import load_run
from hybrids.io import read_json


def test_every_row_file_of_every_table_exists():
    from experiments.runner import resolve_gin_file

    for table in TABLES.values():
        assert table.rows and table.columns
        for row in table.rows:
            for name in row.gin_files:
                assert resolve_gin_file(name).exists()
            assert set(dict(row.paper)) <= {c.name for c in table.columns}
    for files, _ in SCALES.values():
        for name in files:
            assert resolve_gin_file(name).exists()


def test_unknown_table_and_scale_fail_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match="ncml_table1"):
        get_table("table9")
    with pytest.raises(ValueError, match="smoke, cpu, small, paper"):
        reproduce("gps", "huge", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TABLES))
def test_smoke_scale_runs_end_to_end_and_resumes(name, tmp_path):
    table = TABLES[name]
    rows = reproduce(name, "smoke", tmp_path, in_process=True)
    references = [r for r in rows if r["status"] == "reference"]
    rows = [r for r in rows if r["status"] != "reference"]
    assert [r["row"] for r in rows] == [row.label for row in table.rows]
    # a bits/dim table ends with the PNG and WebP rows, their value in the reference column only
    assert len(references) == (2 if table.codec_reference else 0)
    for r in references:
        assert [n for n, v in r["ours"].items() if v is not None] == [table.codec_reference.column]
    assert all(r["status"] == "done" for r in rows), [r["error"] for r in rows]
    # every row produced at least one of the table's numbers, and they are finite
    for r in rows:
        values = [v for v in r["ours"].values() if v is not None]
        assert values, f"{r['row']} produced none of {list(r['ours'])}"
        assert all(math.isfinite(float(v)) for v in values)
    with open(tmp_path / "table.csv") as f:
        lines = list(csv.reader(f))
    assert len(lines) == 1 + len(table.rows) + len(references)
    header = lines[0]
    for row, line in zip(table.rows, lines[1:]):
        for column, value in row.paper:
            assert float(line[header.index(f"{column} (paper)")]) == pytest.approx(value)
    md = (tmp_path / "table.md").read_text()
    assert table.title in md and "python -m experiments.run" in md
    # every row's trained model comes back from its workdir
    for row in table.rows:
        run = load_run(tmp_path / row.slug)
        assert run.step == read_json(tmp_path / row.slug / "results.json")["step"]
        assert not run.model.training and run.dataset_name
    # a second call collects the finished rows instead of rerunning them
    again = reproduce(name, "smoke", tmp_path, collect_only=True)
    assert all(r["status"] in ("collected", "reference") for r in again)
    assert [r["ours"] for r in again] == [r["ours"] for r in rows + references]


def test_unknown_rows_fail_with_the_table_slugs(tmp_path):
    with pytest.raises(ValueError, match="friction_0.25"):
        reproduce("gps", "smoke", tmp_path, rows=["friction 9"])
    assert not (tmp_path / "table.md").exists()


@pytest.mark.slow
def test_rows_runs_only_the_selected_rows_and_collects_the_others(tmp_path):
    table = TABLES["gps"]
    first, second = table.rows[0], table.rows[1]
    rows = reproduce("gps", "smoke", tmp_path, in_process=True, rows=[first.slug])
    status = {r["row"]: r["status"] for r in rows}
    assert status[first.label] == "done"
    assert all(status[row.label] == "not selected" for row in table.rows[1:])
    assert not (tmp_path / second.slug).exists()
    # a second process on another row (by label) collects the first one instead of rerunning it
    rows = reproduce("gps", "smoke", tmp_path, in_process=True, rows=[second.label])
    status = {r["row"]: r["status"] for r in rows}
    assert status[first.label] == "collected" and status[second.label] == "done"
    assert "not selected" in (tmp_path / "table.md").read_text()


def test_column_alternative_keys_take_the_first_present():
    from experiments.tables import Column

    column = Column("AUROC", ("a.auroc", "b.auroc"))
    assert column.value({"b.auroc": 0.7, "c": 1.0}) == 0.7
    assert column.value({"a.auroc": 0.9, "b.auroc": 0.7}) == 0.9
    assert column.value({"c": 1.0}) is None
    assert Column("x", "c").value({"c": 1.0}) == 1.0


def test_row_command_names_every_file_binding_and_the_data_dir():
    from experiments.tables import TABLES

    row = next(r for r in TABLES["arcsm"].rows if r.bindings)
    command = row.command("small", ["Trainer.num_steps = 5"], "/data/mnist")
    assert command.startswith(f"python -m experiments.run --gin_file={row.gin_files[0]} "
                              "--gin_file=presets/cpu_small.gin --gin_file=presets/mnist_small.gin ")
    assert all(f"--gin_bindings='{b}'" in command for b in (*row.bindings, "Trainer.num_steps = 5"))
    assert command.endswith(f"--data_dir=/data/mnist --workdir=runs/{row.slug} --mode=all")
    assert "--data_dir" not in row.command("cpu")


@given(binding=st.sampled_from([
    "Trainer.num_steps = 5", "multisample_dequant_eval.divergence = 'exact'", "X.s = \"a'b\"",
    "X.s = '$HOME'", "X.v = [1, 2]", "FOO=1"]), data_dir=st.sampled_from(["/data/mnist", "/my data/it's"]))
@settings(max_examples=20, deadline=None)
def test_row_command_is_one_shell_word_per_flag(binding, data_dir):
    """The printed command splits (as a shell would) into exactly the flags experiments.run gets.

    Catches the binding quoted as --gin_bindings='...' around a value that holds a single quote
    (gin strings such as divergence = 'exact'): the shell then splits or mangles it."""
    import shlex

    from experiments.tables import TABLES

    row = TABLES["arcsm"].rows[0]
    words = shlex.split(row.command("small", [binding], data_dir))
    assert f"--gin_bindings={binding}" in words
    assert f"--data_dir={data_dir}" in words
    assert all(f"--gin_bindings={b}" in words for b in row.bindings)


@pytest.mark.slow
def test_seeds_train_each_row_n_times_and_report_mean_and_sd(tmp_path):
    """--seeds=2: each selected row is trained twice (seed_0, seed_1 with Trainer.seed = 0, 1),
    the table reports the mean of the two trainings' results and their standard deviation, and a
    second call collects instead of retraining."""
    import json
    import statistics

    table = TABLES["gps"]
    row = table.rows[0]
    out = reproduce("gps", "smoke", tmp_path, in_process=True, rows=[row.slug], seeds=2)
    first = next(r for r in out if r["row"] == row.label)
    assert first["status"] == "done" and first["n_seeds"] == 2
    col = table.columns[0]
    values = []
    for i in range(2):
        run_dir = tmp_path / row.slug / f"seed_{i}"
        assert f"Trainer.seed = {i}" in (run_dir / "config.gin").read_text()
        flat = flatten_results(json.loads((run_dir / "results.json").read_text())["results"])
        values.append(col.value(flat))
    assert first["ours"][col.name] == pytest.approx(statistics.mean(values))
    assert first["ours_sd"][col.name] == pytest.approx(statistics.stdev(values))
    md = (tmp_path / "table.md").read_text()
    assert "mean ± standard deviation over 2 trainings" in md and "Trainer.seed = <i>" in md
    assert f"--workdir=runs/{row.slug}/seed_<i>" in md
    with open(tmp_path / "table.csv") as f:
        header = next(csv.reader(f))
    assert f"{col.name} (ours sd)" in header and "trainings" in header
    again = reproduce("gps", "smoke", tmp_path, collect_only=True, seeds=2)
    assert next(r for r in again if r["row"] == row.label)["ours"] == first["ours"]
    with pytest.raises(ValueError, match="seeds"):
        reproduce("gps", "smoke", tmp_path, seeds=0)
