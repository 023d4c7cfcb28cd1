"""Pictures of a reproduced table (next to ``table.md``, ``experiments.reproduce``) or of an
ablation grid (next to ``summary.md``, ``experiments.ablate``), saved as PNG.

From the rows' workdirs (``metrics.jsonl``, ``results.json``, ``samples/*.png``):

* ``loss_curves.png``: training loss against step, one line per row;
* ``samples.png``: one panel per sample picture of each row (e.g. ancestral and hybrid samples);
* ``pi_robustness.png``: NLL (bpd) against the perturbation probability pi, one line per row
  (rows with ``pi_perturbation_eval`` results; error bars are one standard error);
* ``condition_number.png``: kappa against M on log-log axes, along the universality class and at
  the fixed sigma (rows with ``conditioning_eval`` results; rows with the same curve share a line);
* ``sweep.png`` (grids only): chosen scalar results against the value of a one-key numeric grid,
  one panel per result key;
* ``write_quality_cost_plot``: sample quality against network passes per sample for several
  sampler grids (one ``experiments.ablate`` workdir per model), one series per model.

A picture without data is not written. Files are written atomically and drawn with matplotlib's
Agg backend, so no display is needed.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from experiments.runner import RESULTS_FILE
from experiments.tables import Table
from hybrids.io import atomic_write, atomic_write_text, read_json, read_jsonl
from hybrids.stats import mean_sd
from hybrids.training import METRICS_FILE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RowDirs = list[tuple[str, Path]]

PICTURES = {
    "loss_curves.png": "loss curves",
    "samples.png": "samples",
    "pi_robustness.png": "NLL against pi",
    "condition_number.png": "condition number against M",
    "sweep.png": "results against the grid value",
}


def write_table_plots(root: Path, table: Table, rows_dirs: RowDirs) -> list[Path]:
    """Draw every picture that the rows have data for into ``root``.

    Args:
        root: the table's directory (where ``table.md`` is).
        table: the table, for the pictures' titles.
        rows_dirs: ``(row label, row workdir)`` per row, in table order; missing files are skipped.
            A row trained with several seeds (``seed_<i>/`` below its workdir) is drawn from its
            first seed, except in ``pi_robustness.png``, which shows the mean over the seeds with
            one-standard-deviation bars.

    Returns:
        The paths written, in the order of :data:`PICTURES`.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    drawers: dict[str, Callable[[RowDirs], Figure | None]] = {
        "loss_curves.png": _loss_curves,
        "samples.png": _sample_panels,
        "pi_robustness.png": _pi_robustness,
        "condition_number.png": _condition_numbers,
    }
    first_runs = [(label, seed_runs(Path(row_dir))[0]) for label, row_dir in rows_dirs]
    written = []
    for name, draw in drawers.items():
        fig = draw(rows_dirs if name == "pi_robustness.png" else first_runs)
        if fig is None:
            continue
        fig.suptitle(f"{table.name}: {PICTURES[name]}")
        written.append(atomic_write(Path(root) / name, lambda f, fig=fig: fig.savefig(f, format="png")))
    return written


def write_grid_plots(root: Path, cells: list[dict[str, Any]], cells_dirs: RowDirs,
                     plot_keys: list[str] = ()) -> list[Path]:
    """Pictures of an ablation grid: those of :func:`write_table_plots` (one "row" per cell) and,
    for a grid over one numeric binding, ``sweep.png`` with each of ``plot_keys`` (flattened
    result keys) against the binding's value.

    Args:
        root: the grid's directory (where ``summary.md`` is).
        cells: ``experiments.ablate.run_grid``'s rows (``bindings`` and flattened ``results``).
        cells_dirs: ``(cell label, cell workdir)`` per cell, in grid order.
        plot_keys: result keys for ``sweep.png``.

    Raises:
        ValueError: ``plot_keys`` for a grid that is not over one numeric binding.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    written = []
    for name, draw in (("loss_curves.png", _loss_curves), ("samples.png", _sample_panels),
                       ("condition_number.png", _condition_numbers)):
        fig = draw(cells_dirs)
        if fig is not None:
            fig.suptitle(PICTURES[name])
            written.append(atomic_write(Path(root) / name, lambda f, fig=fig: fig.savefig(f, format="png")))
    if plot_keys:
        fig = _sweep(cells, list(plot_keys))
        written.append(atomic_write(Path(root) / "sweep.png", lambda f: fig.savefig(f, format="png")))
    return written


def _sweep(cells: list[dict[str, Any]], keys: list[str]) -> Figure:
    """One panel per result key: its value against the grid's single numeric binding."""
    names = {name for cell in cells for name in cell["bindings"]}
    values = [next(iter(cell["bindings"].values())) if len(cell["bindings"]) == 1 else None for cell in cells]
    if len(names) != 1 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"a sweep plot needs a grid over one numeric binding; got bindings {sorted(names)} "
                         f"with values {values}.")
    (name,) = names
    fig = _figure(3.6 * len(keys), 3.4)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        points = sorted((float(v), y) for v, cell in zip(values, cells)
                        if (y := _finite(cell["results"].get(key))) is not None)
        if points:
            ax.plot(*zip(*points), marker="o")
        ax.set_xscale("log" if all(x > 0 for x, _ in points) and len(points) > 2 else "linear")
        ax.set_xlabel(name)
        ax.set_title(key, fontsize="small")
    return fig


def write_quality_cost_plot(grids: list[tuple[str, Path]], path: Path,
                            quality_key: str = "sample_fd_eval.fd",
                            cost_key: str = "sample_fd_eval.network_passes_per_sample",
                            floor_key: str | None = "sample_fd_eval.floor.fd") -> Path | None:
    """Sample quality against cost: one series per model, one labelled point per sampler cell.

    Args:
        grids: ``(model label, ablate workdir)``; each workdir's ``summary.csv`` has one row per
            cell, with the cell's sampler binding and the flattened results.
        path: the PNG to write.
        quality_key, cost_key: flattened result keys of the y (log scale) and x axes (x linear
            up to 1, logarithmic above). Cells that ablate skipped as done earlier count.
        floor_key: a result key drawn as a dashed line (the real-data floor), or None.

    Returns:
        ``path``, or None when no cell has both values.
    """
    import csv

    import matplotlib

    matplotlib.use("Agg", force=False)
    fig = _figure(7.5, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    floors, drawn = [], False
    for label, workdir in grids:
        summary = Path(workdir) / "summary.csv"
        if not summary.exists():
            continue
        with summary.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("status") in ("done", "skipped")]  # skipped: done earlier
        points = [(x, y, _cell_sampler(r)) for r in rows
                  if (x := _finite(r.get(cost_key))) is not None and (y := _finite(r.get(quality_key))) is not None]
        floors += [v for r in rows if floor_key and (v := _finite(r.get(floor_key))) is not None]
        if not points:
            continue
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", linestyle=":", label=label)
        for x, y, name in points:
            ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        drawn = True
    if not drawn:
        return None
    if floors:
        ax.axhline(float(np.mean(floors)), color="grey", linestyle="--", linewidth=0.8, label="real-data floor")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0.0)
    ax.set_yscale("log")
    ax.set_xlabel(f"{cost_key} (cached autoregressive draws add their pixel conditionals)")
    ax.set_ylabel(quality_key)
    ax.legend(fontsize="small")
    return atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=110))


def _cell_sampler(row: dict[str, str]) -> str:
    """A summary row's sampler binding (``@h05/hybrid_sampler`` -> ``h05/hybrid``), else its cell name."""
    value = row.get("sample_fd_eval.sampler", "")
    return (value if value.startswith("@") else row.get("cell", "?")).lstrip("@").replace("_sampler", "")


def append_picture_links(markdown: Path, pictures: list[Path]) -> None:
    """Add a "Pictures" section linking ``pictures`` (siblings of ``markdown``) to the file."""
    if not pictures:
        return
    links = [f"![{PICTURES.get(p.name, p.stem)}]({p.name})" for p in pictures]
    text = markdown.read_text(encoding="utf-8").rstrip("\n")
    atomic_write_text(markdown, "\n\n".join([text, "Pictures:", *links]) + "\n")


def _figure(width: float = 6.0, height: float = 4.0) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _finite(value: Any) -> float | None:
    """``value`` as a float, or ``None`` if it is missing or not finite (JSON keeps nan as "nan")."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _results(row_dir: Path) -> dict[str, Any]:
    path = row_dir / RESULTS_FILE
    return read_json(path).get("results", {}) if path.exists() else {}


def _loss_curves(rows_dirs: RowDirs) -> Figure | None:
    """Training loss against step, one line per row with ``kind == "train"`` records."""
    fig, ax, all_losses = None, None, []
    for label, row_dir in rows_dirs:
        points = [(r["step"], _finite(r.get("loss"))) for r in read_jsonl(row_dir / METRICS_FILE)
                  if r.get("kind") == "train" and "step" in r]
        points = [(step, loss) for step, loss in points if loss is not None]
        if not points:
            continue
        if fig is None:
            fig = _figure()
            ax = fig.add_subplot(1, 1, 1)
        steps, losses = zip(*points)
        ax.plot(steps, losses, marker="." if len(points) < 20 else None, label=label)
        all_losses.extend(losses)
    if fig is None:
        return None
    if min(all_losses) > 0 and max(all_losses) / min(all_losses) > 100:  # spans decades
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize="small")
    return fig


def _sample_panels(rows_dirs: RowDirs) -> Figure | None:
    """One panel per sample picture (``samples/*.png``, by name) of each row."""
    from PIL import Image

    panels = []
    for label, row_dir in rows_dirs:
        for path in sorted((row_dir / "samples").glob("*.png")):
            with Image.open(path) as image:
                pixels = np.asarray(image if image.mode == "L" else image.convert("RGB"))
            panels.append((f"{label}\n{path.stem}", pixels))
    if not panels:
        return None
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(3.0 * ncols, 3.2 * nrows + 0.4)
    for i, (title, pixels) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize="small")
        ax.set_axis_off()
    return fig


def seed_runs(row_dir: Path) -> list[Path]:
    """The workdirs of a row's trainings: its ``seed_<i>/`` subdirectories in seed order, or the row
    directory itself when it has none."""
    seeds = [d for d in row_dir.glob("seed_*") if d.is_dir() and d.name[5:].isdigit()]
    return sorted(seeds, key=lambda d: int(d.name[5:])) or [row_dir]


def _pi_robustness(rows_dirs: RowDirs) -> Figure | None:
    """NLL (bpd) against pi from ``pi_perturbation_eval``: one training with one-standard-error bars
    over images, or the mean over a row's seeds with one-standard-deviation bars over trainings."""
    fig, ax = None, None
    for label, row_dir in rows_dirs:
        runs = [_results(d).get("pi_perturbation_eval", {}) for d in seed_runs(Path(row_dir))]
        runs = [r for r in runs if r.get("bpd")]
        if not runs:
            continue
        if len(runs) == 1:
            se = runs[0].get("se", {})
            points = sorted((float(pi), _finite(bpd), _finite(se.get(pi)) or 0.0)
                            for pi, bpd in runs[0]["bpd"].items())
        else:
            pis = sorted(set.intersection(*(set(r["bpd"]) for r in runs)), key=float)
            points = []
            for pi in pis:
                vals = [v for v in (_finite(r["bpd"][pi]) for r in runs) if v is not None]
                if len(vals) > 1:
                    points.append((float(pi), *mean_sd(vals)))
            label = f"{label} ({len(runs)} trainings)"
        points = [p for p in points if p[1] is not None]
        if not points:
            continue
        if fig is None:
            fig = _figure()
            ax = fig.add_subplot(1, 1, 1)
        pis, bpds, errors = zip(*points)
        ax.errorbar(pis, bpds, yerr=errors, marker="o", capsize=3, label=label)
    if fig is None:
        return None
    ax.set_xlabel("pi (probability of perturbing the least significant bit)")
    ax.set_ylabel("NLL (bpd)")
    ax.legend(fontsize="small")
    return fig


def _condition_numbers(rows_dirs: RowDirs) -> Figure | None:
    """kappa against M from ``conditioning_eval``: both series, log-log; equal curves drawn once."""
    series = {"kappa_class": ("solid", "universality class (sigma_eff sqrt M)"),
              "kappa_fixed_sigma": ("dashed", "fixed sigma")}
    curves: dict[tuple[str, tuple[tuple[int, float], ...]], list[str]] = {}
    for label, row_dir in rows_dirs:
        result = _results(row_dir).get("conditioning_eval", {})
        for key in series:
            kappas = map(_finite, result.get(key, []))
            points = tuple((int(m), kappa) for m, kappa in zip(result.get("M", []), kappas)
                           if kappa is not None and kappa > 0)
            if points:
                curves.setdefault((key, points), []).append(label)
    if not curves:
        return None
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for (key, points), labels in curves.items():
        linestyle, name = series[key]
        ms, kappas = zip(*points)
        ax.plot(ms, kappas, marker="o", linestyle=linestyle, label=f"{name}: {', '.join(labels)}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("M (number of measurements)")
    ax.set_ylabel("condition number kappa")
    ax.legend(fontsize="x-small")
    return fig
