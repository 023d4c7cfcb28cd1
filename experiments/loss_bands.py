r"""Training-loss curves of a reproduced table, mean +- standard deviation over its seeds.

Usage::

    python -m experiments.reproduce --table=arcsm_objectives --scale=cpu --seeds=3 --workdir=DIR
    python -m experiments.loss_bands --table=arcsm_objectives --workdir=DIR

For every row of the table with training records (``DIR/<row>/seed_<i>/metrics.jsonl``, or
``DIR/<row>/metrics.jsonl`` for one seed), the Trainer's logged loss (each record the mean over
``Trainer.log_every`` updates) is taken at the steps that every seed logged; at each step the mean
m = (1/S) sum_s l_s and the sample standard deviation sqrt(sum_s (l_s - m)^2 / (S - 1)) over the S
seeds are written to ``DIR/loss_bands.csv`` (columns row, step, mean, sd, seeds; sd empty for one
seed) and drawn as a line with a +-sd band in ``DIR/loss_bands.png``, one panel per row (the
objectives' losses have different units and constants, so each row keeps its own axis).
"""
from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path
from typing import Any

from absl import app, flags

from experiments.plots import seed_runs
from experiments.tables import TABLES
from hybrids.io import atomic_write, atomic_write_text, read_jsonl
from hybrids.stats import mean_sd
from hybrids.training import METRICS_FILE

FLAGS = flags.FLAGS
CSV_FILE = "loss_bands.csv"
PNG_FILE = "loss_bands.png"


def define_flags() -> None:
    """The command-line flags (defined only when run as a program)."""
    flags.DEFINE_string("table", None, f"Table whose rows to draw; one of {', '.join(sorted(TABLES))}.")
    flags.DEFINE_string("workdir", None, "The table's directory (experiments.reproduce --workdir).")


def train_losses(run_dir: Path) -> dict[int, float]:
    """``{step: logged training loss}`` of one training (finite values only)."""
    out = {}
    for record in read_jsonl(run_dir / METRICS_FILE):
        if record.get("kind") == "train" and "step" in record:
            try:
                value = float(record.get("loss"))
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                out[int(record["step"])] = value
    return out


def loss_bands(row_dir: Path) -> list[dict[str, Any]]:
    """Mean and sd over the row's seeds of the loss at every step all of them logged.

    Returns:
        ``[{'step', 'mean', 'sd', 'seeds'}, ...]`` in step order (``sd`` None for one seed); empty
        when no seed has training records.
    """
    curves = [c for c in (train_losses(d) for d in seed_runs(Path(row_dir))) if c]
    if not curves:
        return []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    bands = []
    for step in steps:
        mean, sd = mean_sd([c[step] for c in curves])
        bands.append({"step": step, "mean": mean, "sd": sd, "seeds": len(curves)})
    return bands


def write_loss_bands(root: Path, table_name: str) -> list[Path]:
    """Write ``loss_bands.csv`` and ``loss_bands.png`` for the rows of ``table_name`` under ``root``.

    Returns:
        The paths written (none when no row has training records).

    Raises:
        ValueError: for an unknown table (the message lists the tables).
    """
    if table_name not in TABLES:
        raise ValueError(f"unknown table {table_name!r}; choose one of {', '.join(sorted(TABLES))}.")
    root = Path(root)
    rows = [(row.label, loss_bands(root / row.slug)) for row in TABLES[table_name].rows]
    rows = [(label, bands) for label, bands in rows if bands]
    if not rows:
        return []
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["row", "step", "mean", "sd", "seeds"])
    for label, bands in rows:
        writer.writerows([label, b["step"], b["mean"], "" if b["sd"] is None else b["sd"], b["seeds"]] for b in bands)
    written = [atomic_write_text(root / CSV_FILE, buf.getvalue())]
    fig = _draw(rows, table_name)
    written.append(atomic_write(root / PNG_FILE, lambda f: fig.savefig(f, format="png")))
    return written


def _draw(rows: list[tuple[str, list[dict[str, Any]]]], table_name: str):
    """One panel per row: the mean loss against step with a +-sd band."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    ncols = min(5, len(rows))
    nrows = math.ceil(len(rows) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.8 * nrows + 0.5), dpi=100, layout="constrained")
    for i, (label, bands) in enumerate(rows):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        steps = [b["step"] for b in bands]
        means = [b["mean"] for b in bands]
        ax.plot(steps, means, marker="." if len(steps) < 20 else None)
        if bands[0]["sd"] is not None:
            ax.fill_between(steps, [b["mean"] - b["sd"] for b in bands], [b["mean"] + b["sd"] for b in bands],
                            alpha=0.3)
        ax.set_title(f"{label} ({bands[0]['seeds']} seed{'s' if bands[0]['seeds'] > 1 else ''})", fontsize="small")
        ax.set_xlabel("step", fontsize="small")
        ax.tick_params(labelsize="x-small")
    fig.suptitle(f"{table_name}: training loss, mean +- sd over seeds")
    return fig


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.table or not FLAGS.workdir:
        raise app.UsageError(f"--table and --workdir are required; tables: {', '.join(sorted(TABLES))}.")
    try:
        written = write_loss_bands(Path(FLAGS.workdir), FLAGS.table)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if not written:
        print(f"error: no row of {FLAGS.table} under {FLAGS.workdir} has training records ({METRICS_FILE}); "
              "run experiments.reproduce first.", file=sys.stderr)
        sys.exit(1)
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    define_flags()
    app.run(main)
