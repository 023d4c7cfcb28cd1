r"""Run a grid of gin bindings over one configuration: one workdir and one run per cell.

Usage::

    python -m experiments.ablate --gin_file=ncml_vp.gin [--gin_file=presets/cpu_small.gin] \
        --grid='{"NCML.sde": ["@VESDE()", "@VPSDE()"], "Trainer.lr": [1e-3, 2e-4]}' \
        --workdir=runs/ablate_ncml --mode=all [--device=cpu] [--data_dir=DIR]

The grid is the product of the binding lists (in the order given; the last key varies fastest).
Values are JSON: numbers, booleans, null, lists, and strings; a string that starts with ``@`` or
``%`` is a gin reference and is written as is, any other string becomes a quoted gin string.
Cell i runs ``python -m experiments.run`` in ``WORKDIR/<i>_<bindings>`` (a subprocess per cell
keeps gin state apart; ``--in_process`` calls the same ``run_experiment`` in this process instead).
A cell whose ``results.json`` records every stage of the mode is skipped, so an interrupted grid
resumes; a failing cell is recorded with its error and the grid goes on.
``--from_checkpoint`` (a checkpoint file, or a workdir whose latest checkpoint is taken) evaluates
ONE trained model under every cell's bindings -- e.g. the same model under different samplers or
sampler settings -- with ``--mode=eval`` or ``--mode=sample``: each cell's workdir starts with a copy
of that checkpoint (run the grid once per mode to get both).
``WORKDIR/summary.csv`` and ``WORKDIR/summary.md`` hold one row per cell: bindings, status, error
and the flattened scalar results. The exit status is 1 when a cell failed. Progress goes to absl
logging (INFO, stderr): which cell runs, how many of the cells to run are done, and an ETA (the
mean time of the cells run so far times the number left).
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import gin
from absl import app, flags, logging

from experiments.cells import (
    Progress, cell_done, flatten_results, last_error_line, run_cell, run_cell_in_process, stop_cells_on_sigterm)
from experiments.plots import append_picture_links, write_grid_plots
from experiments.runner import MODES, RESULTS_FILE, parse_gin, resolve_gin_file
from hybrids.io import atomic_write, atomic_write_text, read_json
from hybrids.stats import mean_sd
from hybrids.training import CHECKPOINT_DIR, latest_checkpoint

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a program, so that importing this
    module next to the other entry points defines no flag twice)."""
    flags.DEFINE_multi_string("gin_file", [], "Gin file(s) of the row (names under gin/ or paths).")
    flags.DEFINE_multi_string("gin_bindings", [], "Bindings shared by every cell.")
    flags.DEFINE_string("grid", None, 'JSON object {"Configurable.param": [value, ...], ...}.')
    flags.DEFINE_string("workdir", None, "Parent directory of the cells' workdirs.")
    flags.DEFINE_string("mode", "all", f"Mode of every cell: {', '.join(MODES)}.")
    flags.DEFINE_string("device", "cpu", "cpu, cuda or cuda:N.")
    flags.DEFINE_string("data_dir", None, "Dataset directory passed to each cell.")
    flags.DEFINE_bool("in_process", False, "Run the cells in this process (faster) instead of a subprocess each.")
    flags.DEFINE_integer("seeds", 1, "Run every cell with Trainer.seed = 0..N-1 and write "
                         "summary_over_seeds.{csv,md} (mean ± sd over the seeds).")
    flags.DEFINE_list("plot_keys", [], "Result keys (as in summary.csv) to plot against the value of a "
                      "one-key numeric grid in sweep.png.")
    flags.DEFINE_string("from_checkpoint", None, "Checkpoint file, or workdir whose latest checkpoint is "
                        "used, copied into every cell (modes eval and sample only).")


def to_gin_literal(value: Any) -> str:
    """Write a JSON value as a gin literal (``@``/``%`` strings are references, kept as is)."""
    if isinstance(value, str):
        return value if value.startswith(("@", "%")) else repr(value)
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(to_gin_literal(v) for v in value) + "]"
    raise TypeError(f"grid values must be JSON numbers, strings, booleans, null or lists; got {value!r}.")


def parse_grid(grid: str | dict[str, list]) -> dict[str, list]:
    """Parse and check a grid: a non-empty JSON object mapping binding keys to non-empty lists.

    Raises:
        ValueError: naming what is wrong.
    """
    if isinstance(grid, str):
        try:
            grid = json.loads(grid)
        except json.JSONDecodeError as err:
            raise ValueError(f"--grid is not valid JSON ({err}); example: "
                             '\'{"Trainer.lr": [1e-3, 2e-4]}\'') from err
    if not isinstance(grid, dict) or not grid:
        raise ValueError('--grid must be a non-empty JSON object such as {"Trainer.lr": [1e-3, 2e-4]}.')
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid entry {key!r} must be a non-empty list of values; got {values!r}.")
    return grid


def grid_cells(grid: dict[str, list]) -> list[dict[str, Any]]:
    """The product of the binding lists, as a list of ``{key: value}`` dicts."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def cell_bindings(cell: dict[str, Any]) -> list[str]:
    """Gin binding strings of one cell, e.g. ``['Trainer.lr = 0.001']``."""
    return [f"{key} = {to_gin_literal(value)}" for key, value in cell.items()]


def cell_name(index: int, cell: dict[str, Any]) -> str:
    """Directory name ``<index>_<key>=<value>_...`` with unsafe characters replaced by ``_``."""
    text = "__".join(f"{key}={to_gin_literal(value)}" for key, value in cell.items())
    text = re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_")[:100]
    return f"{index:03d}_{text}"


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or the latest checkpoint of a workdir; clear errors when there is none."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise ValueError(f"--from_checkpoint: {path} holds no checkpoint ({CHECKPOINT_DIR}/ckpt_*.pt); "
                             "train it first or name a checkpoint file.")
        return found
    if not path.is_file():
        raise ValueError(f"--from_checkpoint: {path} is neither a checkpoint file nor a workdir.")
    return path


def seed_cell(cell_dir: Path, checkpoint: Path) -> None:
    """Copy ``checkpoint`` into a cell's checkpoint directory (atomically) unless it has one."""
    if latest_checkpoint(cell_dir) is not None:
        return
    with open(checkpoint, "rb") as source:
        atomic_write(cell_dir / CHECKPOINT_DIR / checkpoint.name, lambda f: shutil.copyfileobj(source, f))


def write_summary(workdir: Path, grid: dict[str, list], rows: list[dict[str, Any]]) -> None:
    """Write ``summary.csv`` and ``summary.md`` (one row per cell)."""
    result_keys = sorted({k for row in rows for k in row["results"]})
    # A result may share its name with a grid key (sample_fd_eval.sampler is both the binding and
    # the hook it reports): its column gets a suffix, so that no two columns share a header.
    result_columns = [f"{k} (result)" if k in grid or k in ("cell", "status", "error") else k for k in result_keys]
    header = ["cell", *grid, "status", "error", *result_columns]
    table = [[row["cell"], *(to_gin_literal(row["bindings"][k]) for k in grid), row["status"],
              row["error"], *(row["results"].get(k, "") for k in result_keys)] for row in rows]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(table)
    atomic_write_text(workdir / "summary.csv", buf.getvalue())

    def cell(value: Any) -> str:
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cell(v) for v in line) + " |" for line in table]
    atomic_write_text(workdir / "summary.md", "\n".join(md) + "\n")


SEED_KEY = "Trainer.seed"


def write_seed_summary(workdir: Path, grid: dict[str, list], rows: list[dict[str, Any]]) -> None:
    """``summary_over_seeds.csv`` / ``.md``: one line per setting of the non-seed bindings, every
    numeric result as mean and sample standard deviation over the seeds that finished."""
    keys = [k for k in grid if k != SEED_KEY]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(to_gin_literal(row["bindings"][k]) for k in keys), []).append(row)
    result_keys = sorted({k for row in rows for k, v in row["results"].items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool)})
    header = [*keys, "seeds done", *(c for k in result_keys for c in (f"{k} mean", f"{k} sd"))]
    lines = []
    for setting, members in groups.items():
        done = [m for m in members if m["status"] != "failed" and m["results"]]
        line = [*setting, len(done)]
        for k in result_keys:
            vals = [float(m["results"][k]) for m in done if isinstance(m["results"].get(k), (int, float))]
            line += ["" if v is None else v for v in mean_sd(vals)]
        lines.append(line)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(lines)
    atomic_write_text(workdir / "summary_over_seeds.csv", buf.getvalue())
    md_header = [*keys, "seeds done", *result_keys]
    md = ["| " + " | ".join(md_header) + " |", "|" + "---|" * len(md_header)]
    for line in lines:
        cells = [str(v) for v in line[:len(keys) + 1]]
        pairs = line[len(keys) + 1:]
        cells += [(f"{m:.6g} ± {sd:.2g}" if sd != "" else f"{m:.6g}") if m != "" else "–"
                  for m, sd in zip(pairs[::2], pairs[1::2])]
        md.append("| " + " | ".join(cells) + " |")
    atomic_write_text(workdir / "summary_over_seeds.md", "\n".join(md) + "\n")


def run_grid(gin_files: Sequence[str], grid: str | dict[str, list], workdir: str | os.PathLike, *,
             gin_bindings: Sequence[str] = (), mode: str = "all", device: str = "cpu",
             data_dir: str | None = None, in_process: bool = False,
             from_checkpoint: str | os.PathLike | None = None,
             plot_keys: Sequence[str] = (), seeds: int = 1) -> list[dict[str, Any]]:
    """Run (or resume) every cell of the grid; see the module docstring.

    Args:
        gin_files: the row's gin files (names under ``gin/`` or paths).
        grid: JSON text or a dict ``{binding key: [values]}``.
        workdir: parent of the cells' workdirs; gets ``summary.csv`` and ``summary.md``.
        gin_bindings: bindings shared by every cell (applied before the cell's own).
        mode: mode of every cell.
        device: device of every cell.
        data_dir: dataset directory.
        in_process: run cells in this process instead of one subprocess each.
        from_checkpoint: checkpoint file or workdir; every cell evaluates (mode eval) or samples
            (mode sample) this one trained model under its bindings.
        plot_keys: flattened result keys drawn against the grid value in ``sweep.png`` (a grid
            over one numeric binding); the other pictures of ``experiments.plots`` are drawn
            whenever the cells have data for them, and linked from ``summary.md``.
        seeds: run every cell with ``Trainer.seed = 0 .. seeds - 1`` (an extra grid axis; with
            ``from_checkpoint`` this varies the hooks' randomness only) and write
            ``summary_over_seeds.{csv,md}``: mean ± standard deviation of every result over the seeds.

    Returns:
        One dict per cell: ``cell``, ``bindings``, ``status`` ('done', 'skipped' or 'failed'),
        ``error`` and flattened ``results``.

    Raises:
        ValueError: bad grid, mode or gin file, or bindings that gin rejects (checked on the first
            cell before anything runs).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
    grid = parse_grid(grid)
    if isinstance(seeds, bool) or int(seeds) != seeds or seeds < 1:
        raise ValueError(f"seeds must be an int >= 1; got {seeds!r}.")
    if seeds > 1:
        if SEED_KEY in grid:
            raise ValueError(f"give the seeds either in the grid ({SEED_KEY}) or with --seeds, not both.")
        if plot_keys:
            raise ValueError("--plot_keys draws a one-key grid; with --seeds use summary_over_seeds.md.")
        grid = {**grid, SEED_KEY: list(range(int(seeds)))}
    if plot_keys and (len(grid) != 1 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in next(iter(grid.values())))):
        raise ValueError(f"--plot_keys needs a grid over one numeric binding; got {json.dumps(grid)}.")
    checkpoint = None
    if from_checkpoint is not None:
        if mode not in ("eval", "sample"):
            raise ValueError(f"--from_checkpoint evaluates one trained model, so --mode must be eval or "
                             f"sample; got {mode!r}.")
        checkpoint = resolve_checkpoint(from_checkpoint)
    paths = [resolve_gin_file(name) for name in gin_files]
    cells = grid_cells(grid)
    # Fail at once on a misspelt key rather than once per cell (gin state is cleared after).
    try:
        parse_gin([str(p) for p in paths], [*gin_bindings, *cell_bindings(cells[0])])
    finally:
        gin.clear_config()
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    pending = {index for index, cell in enumerate(cells) if not cell_done(root / cell_name(index, cell), mode)}
    progress = Progress(len(pending), "cell")
    logging.info("grid of %d cells in %s: %d to run, %d already done", len(cells), root, len(pending),
                 len(cells) - len(pending))
    for index, cell in enumerate(cells):
        cell_dir = root / cell_name(index, cell)
        status, error = "skipped", ""
        if index in pending:
            progress.start(f"{cell_dir.name} ({', '.join(cell_bindings(cell))})")
            if checkpoint is not None:
                seed_cell(cell_dir, checkpoint)
            runner = run_cell_in_process if in_process else run_cell
            code, stderr = runner(paths, [*gin_bindings, *cell_bindings(cell)], cell_dir, mode, device, data_dir)
            status = "done" if code == 0 else "failed"
            error = "" if code == 0 else last_error_line(stderr)
            progress.finish(cell_dir.name, status)
        results_path = cell_dir / RESULTS_FILE
        results = read_json(results_path).get("results", {}) if results_path.exists() and status != "failed" else {}
        rows.append({"cell": cell_dir.name, "bindings": cell, "status": status, "error": error,
                     "results": flatten_results(results)})
        print(f"[{index + 1}/{len(cells)}] {cell_dir.name}: {status}" + (f" -- {error}" if error else ""),
              flush=True)
        write_summary(root, grid, rows)
    if seeds > 1:
        write_seed_summary(root, grid, rows)
    cells_dirs = [(", ".join(f"{k}={to_gin_literal(v)}" for k, v in row["bindings"].items()), root / row["cell"])
                  for row in rows]
    append_picture_links(root / "summary.md", write_grid_plots(root, rows, cells_dirs, plot_keys))
    return rows


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    stop_cells_on_sigterm()
    if not FLAGS.grid or not FLAGS.workdir:
        raise app.UsageError("--grid and --workdir are required.")
    try:
        rows = run_grid(FLAGS.gin_file, FLAGS.grid, FLAGS.workdir, gin_bindings=FLAGS.gin_bindings,
                        mode=FLAGS.mode, device=FLAGS.device, data_dir=FLAGS.data_dir,
                        in_process=FLAGS.in_process, from_checkpoint=FLAGS.from_checkpoint,
                        plot_keys=FLAGS.plot_keys, seeds=FLAGS.seeds)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    failed = [row for row in rows if row["status"] == "failed"]
    print(f"summary: {Path(FLAGS.workdir) / 'summary.md'}; {len(rows) - len(failed)} of {len(rows)} cells ok")
    if failed:
        print("failed cells:\n" + "\n".join(f"  {r['cell']}: {r['error']}" for r in failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
