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

Tables of bits/dim end with reference rows that need no training: PNG and WebP on the same test
images (``experiments.references``).
Rows whose ``results.json`` already records a full run are collected, not rerun, so an interrupted
reproduction resumes; ``--collect_only`` runs nothing. A failing row is reported in the table (status
column) and the exit status is 1. ``--rows`` runs a subset (e.g. two processes on disjoint rows
of one workdir); rows outside it are only collected (status 'not selected' when they have no
results) and do not change the exit status. Writes ``WORKDIR/table.md`` and ``WORKDIR/table.csv``, and beside
them the pictures of ``experiments/plots.py`` that the rows have data for (``loss_curves.png``,
``samples.png``, ``pi_robustness.png``, ``condition_number.png``), linked from ``table.md``.
Progress goes to absl logging (INFO, stderr): which row runs, how many of the rows to run are
done, and an ETA (the mean time of the rows run so far times the number left).
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any, Sequence

from absl import app, flags, logging

from experiments.cells import (
    Progress, cell_done, flatten_results, last_error_line, run_cell, run_cell_in_process, stop_cells_on_sigterm)
from experiments.plots import append_picture_links, write_table_plots
from experiments.references import codec_reference_rows
from experiments.runner import RESULTS_FILE, resolve_gin_file
from experiments.tables import SCALES, TABLES, Table
from hybrids.io import atomic_write_text, read_json
from hybrids.stats import mean_sd

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
    flags.DEFINE_integer("seeds", 1, "Train every row this many times (Trainer.seed = 0..N-1, each in "
                         "ROW/seed_<i>); the table reports mean ± sd over the trainings.")
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


def seed_dirs(row_dir: Path, seeds: int) -> list[tuple[Path, tuple[str, ...]]]:
    """``(workdir, extra bindings)`` of each training of a row: the row's directory itself for one
    seed, else ``seed_<i>/`` with ``Trainer.seed = i`` for i = 0 .. seeds - 1."""
    if seeds == 1:
        return [(row_dir, ())]
    return [(row_dir / f"seed_{i}", (f"Trainer.seed = {i}",)) for i in range(seeds)]


def _summarise(values: list[Any]) -> tuple[Any, float | None, int]:
    """Mean, sample standard deviation (None below 2 values) and count of the numeric values."""
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not nums:
        return (values[0] if values else None), None, 0
    return (*mean_sd(nums), len(nums))


def reproduce(table_name: str, scale: str, workdir: str | Path, *, collect_only: bool = False,
              device: str = "cpu", data_dir: str | None = None, in_process: bool = False,
              gin_bindings: Sequence[str] = (), rows: Sequence[str] | None = None,
              seeds: int = 1) -> list[dict[str, Any]]:
    """Run (or resume, or only collect) every row of a table and write ``table.md``/``table.csv``
    and the table's pictures (``experiments.plots``).

    ``gin_bindings`` are applied to every row after the scale's presets (e.g. a shorter
    ``Trainer.num_steps``); they are written into each row's command in the table. ``rows``
    (slugs or labels) restricts what is run; the other rows are only collected. With ``seeds``
    = N > 1 every row is trained N times (``seed_<i>/`` with ``Trainer.seed = i``, each resumable)
    and the table reports the mean and standard deviation over the trainings.

    Returns:
        One dict per row: ``row``, ``status`` ('done', 'collected', 'missing', 'not selected',
        'failed', or 'reference' for the lossless-codec rows of ``experiments.references``), ``error``, ``ours`` (column name -> value; the mean over seeds), ``ours_sd``
        (column name -> standard deviation over seeds, None for one seed), ``n_seeds`` (trainings
        with results) and ``paper`` (column name -> value).
    """
    if isinstance(seeds, bool) or int(seeds) != seeds or seeds < 1:
        raise ValueError(f"seeds must be an int >= 1; got {seeds!r}.")
    seeds = int(seeds)
    table = get_table(table_name)
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}.")
    preset_files, preset_bindings = SCALES[scale]
    selected = select_rows(table, rows)
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    datasets, all_flat = [], []
    pending = [] if collect_only else [(r, d, extra) for r in table.rows if r in selected
                                       for d, extra in seed_dirs(root / r.slug, seeds) if not cell_done(d, MODE)]
    progress = Progress(len(pending), "training")
    logging.info("%s (%s scale, %d seed%s): %d trainings to run in %s", table.name, scale, seeds,
                 "s" if seeds > 1 else "", len(pending), root)
    for row in table.rows:
        gin_files = [resolve_gin_file(name) for name in (*row.gin_files, *preset_files)]
        bindings = [*preset_bindings.get("*", ()), *preset_bindings.get(table.name, ()), *row.bindings,
                    *gin_bindings]
        statuses, errors, per_seed = [], [], []
        for row_dir, extra in seed_dirs(root / row.slug, seeds):
            status, error = "collected", ""
            if (row, row_dir, extra) in pending:
                progress.start(f"{row.label} ({row_dir})")
                runner = run_cell_in_process if in_process else run_cell
                code, stderr = runner(gin_files, [*bindings, *extra], row_dir, MODE, device, data_dir)
                status = "done" if code == 0 else "failed"
                error = "" if code == 0 else last_error_line(stderr)
                progress.finish(row.label, status)
            elif not cell_done(row_dir, MODE):
                status = "not selected" if row not in selected else "missing"
            statuses.append(status)
            errors += [error] if error else []
            results_path = row_dir / RESULTS_FILE
            if results_path.exists():
                record = read_json(results_path)
                per_seed.append(flatten_results(record.get("results", {})))
                datasets.append(record.get("dataset"))
                all_flat.append(per_seed[-1])
        status = next((s for s in ("failed", "missing", "not selected", "done") if s in statuses), "collected")
        summaries = {col.name: _summarise([col.value(flat) for flat in per_seed]) for col in table.columns}
        ours = {name: mean for name, (mean, _, _) in summaries.items()}
        ours_sd = {name: sd for name, (_, sd, _) in summaries.items()}
        command = row.command(scale, (*gin_bindings, *(("Trainer.seed = <i>",) if seeds > 1 else ())), data_dir)
        if seeds > 1:
            command = command.replace(f"--workdir=runs/{row.slug}", f"--workdir=runs/{row.slug}/seed_<i>")
        rows.append({"row": row.label, "status": status, "error": "; ".join(errors), "ours": ours,
                     "ours_sd": ours_sd, "n_seeds": len(per_seed), "paper": dict(row.paper), "command": command})
        print(f"{table.name}: {row.label}: {status}" + (f" -- {rows[-1]['error']}" if errors else ""), flush=True)
    rows += codec_reference_rows(table, [d for d in datasets if d], all_flat, data_dir)
    write_table(root, table, scale, rows, seeds)
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


def write_table(root: Path, table: Table, scale: str, rows: list[dict[str, Any]], seeds: int = 1) -> None:
    """``table.csv`` (machine-readable; with several seeds a ``(ours sd)`` column after each mean)
    and ``table.md`` (ours and the paper's side by side; ``mean ± sd`` over the trainings)."""
    names = [col.name for col in table.columns]
    ours_cols = [c for n in names for c in ((f"{n} (ours)", f"{n} (ours sd)") if seeds > 1 else (f"{n} (ours)",))]
    header = ["row", "status", *(["trainings"] if seeds > 1 else []), *ours_cols,
              *(f"{n} (paper)" for n in names), "error"]

    def ours_values(r: dict[str, Any]) -> list[Any]:
        if seeds == 1:
            return [r["ours"][n] for n in names]
        return [v for n in names for v in (r["ours"][n], r["ours_sd"][n])]

    lines = [[r["row"], r["status"], *([r["n_seeds"]] if seeds > 1 else []), *ours_values(r),
              *(r["paper"].get(n) for n in names), r["error"]] for r in rows]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in line] for line in lines])
    atomic_write_text(root / "table.csv", buf.getvalue())
    md_header = ["row", "status", *(["trainings"] if seeds > 1 else []), *(f"{n} (ours)" for n in names),
                 *(f"{n} (paper)" for n in names)]
    spread = (f" Ours: mean ± standard deviation over {seeds} trainings (seeds 0..{seeds - 1}); the "
              "per-image standard errors are the rows' own s.e. columns." if seeds > 1 else "")
    md = [f"# {table.title}", "", f"Source: {table.source}. Scale: `{scale}`.{spread}", "",
          "| " + " | ".join(md_header) + " |", "|" + "---|" * len(md_header)]
    for r in rows:
        cells = [r["row"], r["status"], *([r["n_seeds"]] if seeds > 1 else [])]
        for n in names:
            mean, sd = r["ours"][n], r["ours_sd"].get(n) if seeds > 1 else None
            cells.append(_format(mean) + (f" ± {_format(sd)}" if sd is not None else ""))
        cells += [_format(r["paper"].get(n)) for n in names]
        md.append("| " + " | ".join(str(c) for c in cells) + " |")
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
                         gin_bindings=FLAGS.gin_bindings, rows=FLAGS.rows, seeds=FLAGS.seeds)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {Path(FLAGS.workdir) / 'table.md'}")
    sys.exit(1 if any(r["status"] in ("failed", "missing") for r in rows) else 0)


if __name__ == "__main__":
    define_flags()
    app.run(main)
