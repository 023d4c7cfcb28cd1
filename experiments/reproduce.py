r"""Rebuild one table of a source paper: our numbers beside the paper's.

Usage::

    python -m experiments.reproduce --table=ncml_table1 --scale=smoke|cpu|small|paper --workdir=DIR \
        [--gin_bindings=...] [--rows=SLUG,...] [--collect_only] [--device=cpu] [--data_dir=DIR] \
        [--in_process]

Each row of a table (``experiments/tables.py``) is one gin row file run with
``python -m experiments.run --mode=all`` in ``WORKDIR/<row>``, plus the scale's preset:

* ``smoke``: ``presets/cpu_small.gin`` with a few updates and tiny evaluations: minutes on 2 cores,
  exercised by the tests; its numbers only show that the pipeline runs;
* ``cpu``: ``presets/cpu_small.gin``: every row on the embedded digits, about a minute a row;
* ``small``: ``presets/cpu_small.gin`` + ``presets/mnist_small.gin``: the same networks on MNIST
  (read from ``--data_dir``), 2000 updates a row;
* ``paper``: the row files + ``presets/paper.gin`` (the papers' datasets and sizes; needs a GPU and
  the data).

Rows whose ``results.json`` already records a full run are collected, not rerun, so an interrupted
reproduction resumes; ``--collect_only`` runs nothing. A failing row is reported in the table (status
column) and the exit status is 1. ``--rows`` runs a subset (e.g. two processes on disjoint rows
of one workdir); rows outside it are only collected (status 'not selected' when they have no
results) and do not change the exit status. Writes ``WORKDIR/table.md`` and ``WORKDIR/table.csv``, and beside
them the pictures of ``experiments/plots.py`` that the rows have data for (``loss_curves.png``,
``samples.png``, ``pi_robustness.png``, ``condition_number.png``), linked from ``table.md``.
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any, Sequence

from absl import app, flags

from experiments.cells import (
    cell_done, flatten_results, last_error_line, run_cell, run_cell_in_process, stop_cells_on_sigterm)
from experiments.plots import append_picture_links, write_table_plots
from experiments.runner import RESULTS_FILE, resolve_gin_file
from experiments.tables import SCALES, TABLES, Table
from hybrids.io import atomic_write_text, read_json

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a program, so that importing this
    module next to the other entry points defines no flag twice)."""
    flags.DEFINE_string("table", None, "Table to rebuild.")
    flags.DEFINE_string("scale", "smoke", f"One of {', '.join(SCALES)}.")
    flags.DEFINE_string("workdir", None, "Directory of the table (one subdirectory per row).")
    flags.DEFINE_bool("collect_only", False, "Only collect the rows' existing results.")
    flags.DEFINE_multi_string("gin_bindings", [], "Bindings applied to every row after the scale's presets.")
    flags.DEFINE_string("device", "cpu", "cpu, cuda or cuda:N.")
    flags.DEFINE_string("data_dir", None, "Dataset directory passed to every row.")
    flags.DEFINE_bool("in_process", False, "Run rows in this process instead of a subprocess each.")
    flags.DEFINE_list("rows", None, "Only run these rows (slugs or labels, comma-separated); the other "
                      "rows are collected if their results exist.")


MODE = "all"


def get_table(name: str) -> Table:
    """Look a table up by name; unknown names fail with the list of tables."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; choose one of {', '.join(sorted(TABLES))}.")
    return TABLES[name]


def _format(value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value).replace("|", "\\|")


def reproduce(table_name: str, scale: str, workdir: str | Path, *, collect_only: bool = False,
              device: str = "cpu", data_dir: str | None = None, in_process: bool = False,
              gin_bindings: Sequence[str] = (), rows: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run (or resume, or only collect) every row of a table and write ``table.md``/``table.csv``
    and the table's pictures (``experiments.plots``).

    ``gin_bindings`` are applied to every row after the scale's presets (e.g. a shorter
    ``Trainer.num_steps``); they are written into each row's command in the table. ``rows``
    (slugs or labels) restricts what is run; the other rows are only collected.

    Returns:
        One dict per row: ``row``, ``status`` ('done', 'collected', 'missing', 'not selected' or
        'failed'), ``error``,
        ``ours`` (column name -> value) and ``paper`` (column name -> value).
    """
    table = get_table(table_name)
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}.")
    preset_files, preset_bindings = SCALES[scale]
    selected = select_rows(table, rows)
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in table.rows:
        row_dir = root / row.slug
        gin_files = [resolve_gin_file(name) for name in (*row.gin_files, *preset_files)]
        bindings = [*preset_bindings.get("*", ()), *preset_bindings.get(table.name, ()), *row.bindings,
                    *gin_bindings]
        status, error = "collected", ""
        if not cell_done(row_dir, MODE):
            if row not in selected:
                status = "not selected"
            elif collect_only:
                status = "missing"
            else:
                runner = run_cell_in_process if in_process else run_cell
                code, stderr = runner(gin_files, bindings, row_dir, MODE, device, data_dir)
                status = "done" if code == 0 else "failed"
                error = "" if code == 0 else last_error_line(stderr)
        results_path = row_dir / RESULTS_FILE
        flat = flatten_results(read_json(results_path).get("results", {})) if results_path.exists() else {}
        ours = {col.name: col.value(flat) for col in table.columns}
        rows.append({"row": row.label, "status": status, "error": error, "ours": ours, "paper": dict(row.paper),
                     "command": row.command(scale, gin_bindings, data_dir)})
        print(f"{table.name}: {row.label}: {status}" + (f" -- {error}" if error else ""), flush=True)
    write_table(root, table, scale, rows)
    pictures = write_table_plots(root, table, [(row.label, root / row.slug) for row in table.rows])
    append_picture_links(root / "table.md", pictures)
    return rows


def select_rows(table: Table, names: Sequence[str] | None) -> list:
    """The rows of ``table`` named by slug or label (all rows for None); unknown names fail with
    the table's slugs."""
    if names is None:
        return list(table.rows)
    by_name = {**{r.slug: r for r in table.rows}, **{r.label: r for r in table.rows}}
    unknown = [n for n in names if n not in by_name]
    if unknown or not names:
        raise ValueError(f"unknown rows {unknown} of table {table.name!r}; choose among "
                         f"{', '.join(r.slug for r in table.rows)}.")
    return [by_name[n] for n in names]


def write_table(root: Path, table: Table, scale: str, rows: list[dict[str, Any]]) -> None:
    """``table.csv`` (machine-readable) and ``table.md`` (ours and the paper's side by side)."""
    names = [col.name for col in table.columns]
    header = ["row", "status", *(f"{n} (ours)" for n in names), *(f"{n} (paper)" for n in names), "error"]
    lines = [[r["row"], r["status"], *(r["ours"][n] for n in names), *(r["paper"].get(n) for n in names),
              r["error"]] for r in rows]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in line] for line in lines])
    atomic_write_text(root / "table.csv", buf.getvalue())
    md = [f"# {table.title}", "", f"Source: {table.source}. Scale: `{scale}`.", "",
          "| " + " | ".join(header[:-1]) + " |", "|" + "---|" * (len(header) - 1)]
    md += ["| " + " | ".join(_format(v) for v in line[:-1]) + " |" for line in lines]
    md += ["", *table.notes, "", "Commands:", ""]
    md += [f"- {r['row']}: `{r['command']}`" + (f" (failed: {r['error']})" if r["error"] else "") for r in rows]
    atomic_write_text(root / "table.md", "\n".join(md) + "\n")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    stop_cells_on_sigterm()
    if not FLAGS.table or not FLAGS.workdir:
        raise app.UsageError(f"--table and --workdir are required; tables: {', '.join(sorted(TABLES))}.")
    try:
        rows = reproduce(FLAGS.table, FLAGS.scale, FLAGS.workdir, collect_only=FLAGS.collect_only,
                         device=FLAGS.device, data_dir=FLAGS.data_dir, in_process=FLAGS.in_process,
                         gin_bindings=FLAGS.gin_bindings, rows=FLAGS.rows)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {Path(FLAGS.workdir) / 'table.md'}")
    sys.exit(1 if any(r["status"] in ("failed", "missing") for r in rows) else 0)


if __name__ == "__main__":
    define_flags()
    app.run(main)
