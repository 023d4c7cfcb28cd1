"""experiments.plots: the PNG pictures written next to a reproduced table, from fake row workdirs."""
from __future__ import annotations

import pytest

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from experiments.plots import _sample_panels, append_picture_links, write_table_plots
from experiments.tables import GPS_TABLE, NCML_TABLE1
from hybrids.io import write_json
from hybrids.metrics.conditioning import empirical_condition_numbers


def _write_metrics(row_dir: Path, losses: list[float]) -> None:
    """Training records every 10 steps, with an eval record between them (not a training loss)."""
    records = [{"kind": "train", "step": 10 * (i + 1), "loss": loss} for i, loss in enumerate(losses)]
    records.insert(1, {"kind": "eval", "step": 10, "bpd": 3.0})
    (row_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _write_sample(row_dir: Path, name: str, level: int) -> None:
    (row_dir / "samples").mkdir(parents=True, exist_ok=True)
    pixels = np.full((16, 16), level, np.uint8)
    pixels[4:12, 4:12] = 255 - level
    Image.fromarray(pixels).save(row_dir / "samples" / name)


def _rows_dirs(root: Path, labels: list[str]) -> list[tuple[str, Path]]:
    rows_dirs = [(label, root / label.replace(" ", "_")) for label in labels]
    for _, row_dir in rows_dirs:
        row_dir.mkdir(parents=True)
    return rows_dirs


def _assert_png(path: Path) -> None:
    assert path.stat().st_size > 5_000  # more than an empty canvas
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= 300 and image.height >= 200
        assert len(set(np.asarray(image.convert("L")).ravel().tolist())) > 2  # something is drawn


def test_ncml_table_gets_loss_samples_and_pi_pictures_and_rows_without_data_are_skipped(tmp_path):
    labels = ["model a", "model b", "model c"]
    rows_dirs = _rows_dirs(tmp_path, labels)
    (a, dir_a), (b, dir_b), (_, dir_c) = rows_dirs  # row c failed early: an empty workdir
    _write_metrics(dir_a, [4.0, 3.0, 2.5, "nan"])  # JSON keeps a non-finite loss as a string
    _write_metrics(dir_b, [5.0, 3.5, 3.0])
    _write_sample(dir_a, "sampler_b.png", 0)
    _write_sample(dir_a, "sampler_a.png", 200)
    for row_dir, bpd in ((dir_a, [3.0, 3.6, 3.9]), (dir_b, [3.1, 3.4, 3.5])):
        pi_eval = {"bpd": dict(zip(("0.0", "0.5", "1.0"), bpd)), "se": {"0.0": 0.05, "0.5": "nan", "1.0": 0.05}}
        write_json(row_dir / "results.json", {"results": {"pi_perturbation_eval": pi_eval}})

    written = write_table_plots(tmp_path, NCML_TABLE1, rows_dirs)

    names = ["loss_curves.png", "samples.png", "pi_robustness.png"]
    assert written == [tmp_path / name for name in names]
    for path in written:
        _assert_png(path)
    assert not (tmp_path / "condition_number.png").exists()  # no conditioning_eval results
    panels = _sample_panels(rows_dirs)  # every picture of every row, by name
    assert [ax.get_title() for ax in panels.axes] == ["model a\nsampler_a", "model a\nsampler_b"]
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind

    (tmp_path / "table.md").write_text("# table\n")
    append_picture_links(tmp_path / "table.md", written)
    md = (tmp_path / "table.md").read_text()
    assert md.startswith("# table\n") and all(f"]({name})" in md for name in names)


def test_rows_without_any_data_write_no_picture(tmp_path):
    rows_dirs = _rows_dirs(tmp_path, ["empty"])
    write_json(rows_dirs[0][1] / "results.json", {"results": {"pi_perturbation_eval": {"bpd": {"0.0": "nan"}}}})
    assert write_table_plots(tmp_path, NCML_TABLE1, rows_dirs) == []
    assert not list(tmp_path.glob("*.png"))


def test_gps_table_gets_condition_number_against_m(tmp_path):
    rows_dirs = _rows_dirs(tmp_path, ["friction 0.5", "friction 1.0"])
    factor = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cov = factor @ factor.T
    Ms = [1, 2, 4, 8, 16]
    sigma_eff, sigma = 0.5, 2.0
    for _, row_dir in rows_dirs:
        conditioning = {
            "M": Ms,
            "kappa_class": empirical_condition_numbers(cov, [sigma_eff * m**0.5 for m in Ms], Ms),
            "kappa_fixed_sigma": empirical_condition_numbers(cov, sigma, Ms),
            "sigma_eff": sigma_eff,
            "sigma": sigma,
        }
        write_json(row_dir / "results.json", {"results": {"conditioning_eval": conditioning}})

    written = write_table_plots(tmp_path, GPS_TABLE, rows_dirs)

    assert written == [tmp_path / "condition_number.png"]
    _assert_png(written[0])


def test_pi_robustness_of_seeded_rows_is_the_mean_over_trainings(tmp_path):
    """A row with seed_<i>/ workdirs is drawn as the mean over its trainings (the picture exists and
    the other pictures read the first seed)."""
    from experiments.plots import seed_runs, write_table_plots
    from experiments.tables import TABLES
    from hybrids.io import write_json

    row = tmp_path / "row"
    for i, bpd in enumerate((2.0, 2.2, 2.4)):
        write_json(row / f"seed_{i}" / "results.json",
                   {"results": {"pi_perturbation_eval": {"bpd": {"0.0": bpd, "1.0": bpd + 1}, "se": {}}}})
    assert [d.name for d in seed_runs(row)] == ["seed_0", "seed_1", "seed_2"]
    assert seed_runs(tmp_path / "plain") == [tmp_path / "plain"]
    written = write_table_plots(tmp_path, TABLES["ncml_table1"], [("row", row)])
    assert [p.name for p in written] == ["pi_robustness.png"]
    from experiments.plots import _pi_robustness

    ax = _pi_robustness([("row", row)]).axes[0]
    assert list(ax.lines[0].get_ydata()) == pytest.approx([2.2, 3.2])  # the mean over the 3 trainings
    assert "3 trainings" in ax.get_legend().get_texts()[0].get_text()


def _fake_sampler_grid(workdir: Path, cells: list[tuple[str, float, float]], status: str = "done") -> None:
    """An ablate summary over sample_fd_eval.sampler (the grid key is also a result key)."""
    from experiments.ablate import write_summary

    workdir.mkdir(parents=True)
    grid = {"sample_fd_eval.sampler": [c[0] for c in cells]}
    rows = [{"cell": f"{i:03d}_x", "bindings": {"sample_fd_eval.sampler": s}, "status": status, "error": "",
             "results": {"sample_fd_eval.fd": fd, "sample_fd_eval.network_passes_per_sample": passes,
                         "sample_fd_eval.floor.fd": 5.4, "sample_fd_eval.sampler": s.lstrip("@") + ":samples"}}
            for i, (s, passes, fd) in enumerate(cells)]
    write_summary(workdir, grid, rows)


def test_quality_cost_plot_of_sampler_grids(tmp_path):
    """FD against network passes for two models' sampler grids. The summary keeps the grid's binding
    and the result of the same name in two columns (a shared header made csv readers keep one of
    them), and the plot labels points by the binding."""
    import csv

    from experiments.plots import _cell_sampler, write_quality_cost_plot

    _fake_sampler_grid(tmp_path / "a", [("@ancestral_sampler", 1.0, 300.0), ("@h05/hybrid_sampler", 6.0, 150.0)])
    _fake_sampler_grid(tmp_path / "b", [("@pc_sampler", 100.0, 50.0), ("@ode_sampler", 80.0, 70.0)])
    _fake_sampler_grid(tmp_path / "c", [("@pc_sampler", 100.0, 50.0)], status="skipped")  # resumed grid
    with (tmp_path / "a" / "summary.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert len(header) == len(set(header)) and "sample_fd_eval.sampler (result)" in header
    with (tmp_path / "a" / "summary.csv").open(newline="") as f:
        labels = [_cell_sampler(r) for r in csv.DictReader(f)]
    assert labels == ["ancestral", "h05/hybrid"]
    out = write_quality_cost_plot([("A", tmp_path / "a"), ("B", tmp_path / "b")], tmp_path / "q.png")
    assert out == tmp_path / "q.png"
    _assert_png(out)
    assert write_quality_cost_plot([("none", tmp_path / "missing")], tmp_path / "n.png") is None
    # a grid whose cells a resumed ablate skipped (status 'skipped', results kept) is drawn too
    assert write_quality_cost_plot([("C", tmp_path / "c")], tmp_path / "c.png") == tmp_path / "c.png"
    assert not (tmp_path / "n.png").exists()
