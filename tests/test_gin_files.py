"""Every file under gin/ parses, and every row file runs end to end at smoke scale.

Rows that a reproduce table runs are smoke-run by tests/test_reproduce.py; the others run here, so
that together every row file is exercised. New row files join both sets automatically.
"""
from __future__ import annotations

import json

import pytest

from experiments.runner import GIN_DIR, available_gin_files, parse_gin, run_experiment
from experiments.tables import TABLES

ROWS = sorted(p.name for p in GIN_DIR.glob("*.gin"))
PRESETS = sorted(f for f in available_gin_files() if f.startswith("presets/"))
SMOKE = ("presets/cpu_small.gin", "presets/smoke.gin")
ROWS_IN_TABLES = sorted({f for table in TABLES.values() for row in table.rows for f in row.gin_files})
ROWS_IN_NO_TABLE = sorted(set(ROWS) - set(ROWS_IN_TABLES))


def test_the_row_sets_cover_every_row_file():
    assert len(ROWS) >= 21 and set(ROWS_IN_TABLES) <= set(ROWS)
    assert set(ROWS_IN_TABLES) | set(ROWS_IN_NO_TABLE) == set(ROWS)


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("presets", [(), ("presets/paper.gin",), SMOKE, SMOKE[:1] + ("presets/mnist_small.gin",)],
                         ids=["alone", "paper", "smoke", "mnist_small"])
def test_every_row_dry_runs_alone_and_under_every_preset(row, presets, capsys):
    """Catches: a row or preset binding a renamed hook or parameter (gin rejects it), a file that
    misses the `import` of a module it configures."""
    assert run_experiment([row, *presets], dry_run=True) is None
    assert "experiment.model" in capsys.readouterr().out


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_parses_on_its_own(preset):
    parse_gin([preset])


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS_IN_NO_TABLE)
def test_rows_outside_the_tables_run_at_smoke_scale(row, tmp_path):
    out = run_experiment([row, *SMOKE], workdir=tmp_path / "run", mode="all")
    assert out["stages_completed"] == ["eval", "sample", "train"]
    results = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    assert set(results) and all(value for value in results.values())
    assert list((tmp_path / "run" / "samples").glob("*.png"))
