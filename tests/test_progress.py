"""Runs a user can watch: absl log lines of the runner, reproduce and ablate, and sample grids in
TensorBoard."""
from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
from pathlib import Path

import gin
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `tests._tiny_components` must be importable under one name
    sys.path.insert(0, str(REPO_ROOT))

from experiments import cells  # noqa: E402
from experiments.runner import format_duration, run_experiment  # noqa: E402
from hybrids.io import image_grid, write_json  # noqa: E402
from tests._tiny_components import FAST_BINDINGS, TINY_GIN  # noqa: E402

TINY, FAST = TINY_GIN, FAST_BINDINGS


@pytest.fixture
def absl_lines(caplog):
    """The messages absl logging emits at INFO and above during the test."""
    caplog.set_level(logging.INFO, logger="absl")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "absl"]


def _events(workdir: Path) -> list:
    """Every tensorboardX ``Event`` of the workdir's event files (TFRecord framing: length, its
    CRC, the record, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(workdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append(Event.FromString(data[pos + 12:pos + 12 + length]))
            pos += 12 + length + 4
    return events


def test_a_run_logs_its_hooks_results_and_pictures(tmp_path, absl_lines):
    workdir = tmp_path / "run"
    out = run_experiment([TINY], workdir=workdir, mode="all")
    lines = absl_lines()
    # every hook call: a start line and a finish line with the wall time (eval at 10 and 20 during
    # training, sample at 20, then the eval and sample stages)
    assert sum(line.startswith("evaluator tiny_nll_eval: started") for line in lines) == 3
    assert sum(line.startswith("evaluator tiny_nll_eval: finished in ") for line in lines) == 3
    assert "evaluator tiny_nll_eval: started (step 10)" in lines
    samplers = [line for line in lines if line.startswith("sampler tiny_sampler: finished in ")]
    assert len(samplers) == 2 and str(workdir / "samples" / "tiny_sampler_images.png") in samplers[-1]
    # the end of the run: where things are, then the headline numbers
    assert f"results: {workdir / 'results.json'} (step 20" in "\n".join(lines)
    assert f"samples: {workdir / 'samples'}/{{tiny_sampler_images.png, tiny_sampler_points.png}}" in lines
    nll = out["results"]["tiny_nll_eval"]["nll"]
    assert f"  tiny_nll_eval.nll = {nll:.6g}" in lines
    assert lines.index(f"  tiny_nll_eval.nll = {nll:.6g}") > lines.index(
        f"samples: {workdir / 'samples'}/{{tiny_sampler_images.png, tiny_sampler_points.png}}")


def test_headline_numbers_are_capped(tmp_path, absl_lines, monkeypatch):
    import experiments.runner as runner

    monkeypatch.setattr(runner, "HEADLINE_LINES", 2)
    run_experiment([TINY], FAST, workdir=tmp_path / "run", mode="all")
    lines = absl_lines()
    assert sum(line.startswith("  tiny_nll_eval.") for line in lines) == 2
    assert f"  ... and 1 more numbers in {tmp_path / 'run' / 'results.json'}" in lines


def test_sample_grids_go_to_tensorboard(tmp_path):
    workdir = tmp_path / "run"
    run_experiment([TINY], workdir=workdir, mode="all")
    images = [(e.step, v.tag, v.image) for e in _events(workdir) for v in e.summary.value if v.HasField("image")]
    tags = sorted({(step, tag) for step, tag, _ in images})
    assert tags == [(20, "samples/tiny_sampler_images"), (20, "samples/tiny_sampler_points")]
    # twice each: the training sample hook at step 20 and the sample stage (EMA of step 20)
    assert len(images) == 4
    grid = image_grid(torch.zeros(16, 1, 8, 8, dtype=torch.int64), 17)  # 16 samples of 8x8
    for _, tag, image in images:
        if tag.endswith("images"):
            assert (image.height, image.width) == grid.shape[:2]
        assert image.encoded_image_string.startswith(b"\x89PNG")


def test_sample_mode_alone_writes_its_grids_to_tensorboard(tmp_path):
    workdir = tmp_path / "run"
    run_experiment([TINY], FAST, workdir=workdir, mode="train")
    assert not any(v.HasField("image") for e in _events(workdir) for v in e.summary.value)
    gin.clear_config()
    run_experiment([TINY], FAST, workdir=workdir, mode="sample")
    tags = {(e.step, v.tag) for e in _events(workdir) for v in e.summary.value if v.HasField("image")}
    assert tags == {(4, "samples/tiny_sampler_images"), (4, "samples/tiny_sampler_points")}


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "experiments.run", f"--gin_file={TINY}", *args],
                          capture_output=True, text=True, cwd=cwd, env=env)


def test_cli_logs_on_stderr_and_verbosity_silences_it(tmp_path):
    proc = _cli([f"--workdir={tmp_path / 'a'}", *(f"--gin_bindings={b}" for b in FAST)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "evaluator tiny_nll_eval: finished in" in proc.stderr
    assert f"results: {tmp_path / 'a' / 'results.json'}" in proc.stderr
    assert "tiny_nll_eval" not in proc.stdout
    proc = _cli([f"--workdir={tmp_path / 'b'}", "--verbosity=-1", *(f"--gin_bindings={b}" for b in FAST)],
                tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "evaluator" not in proc.stderr and "results:" not in proc.stderr
    assert (tmp_path / "b" / "results.json").exists()


def test_progress_eta_is_the_mean_time_times_the_remaining_count(absl_lines):
    clock = iter([0.0, 10.0, 10.0, 40.0, 40.0, 70.0])
    progress = cells.Progress(4, "cell", clock=lambda: next(clock))
    assert progress.eta() is None
    progress.start("a")
    progress.finish("a", "done")        # 10 s
    assert progress.eta() == pytest.approx(30.0)
    progress.start("b")
    progress.finish("b", "failed")      # 30 s: mean 20 s, 2 left
    assert progress.eta() == pytest.approx(40.0)
    progress.start("c")
    progress.finish("c", "done")        # 30 s: mean 70/3 s, 1 left
    assert progress.eta() == pytest.approx(70.0 / 3)
    assert absl_lines() == [
        "cell 1/4 running: a (0 of 4 done; ETA unknown until one finishes)",
        "cell a: done in 10s (1 of 4 done; ETA 30s)",
        "cell 2/4 running: b (1 of 4 done; ETA 30s)",
        "cell b: failed in 30s (2 of 4 done; ETA 40s)",
        "cell 3/4 running: c (2 of 4 done; ETA 40s)",
        "cell c: done in 30s (3 of 4 done; ETA 23s)",
    ]
    assert [format_duration(s) for s in (0, 59.4, 61, 3600 + 62)] == ["0s", "59s", "1m01s", "1h01m02s"]


def test_ablate_logs_each_cell_and_an_eta(tmp_path, absl_lines):
    from experiments.ablate import run_grid

    grid = {"Trainer.lr": [0.05, 0.01]}
    run_grid([TINY], grid, tmp_path, gin_bindings=FAST, mode="train", in_process=True)
    lines = absl_lines()
    assert f"grid of 2 cells in {tmp_path}: 2 to run, 0 already done" in lines
    running = [line for line in lines if line.startswith("cell ") and " running: " in line]
    assert [line.split(" running:")[0] for line in running] == ["cell 1/2", "cell 2/2"]
    assert "Trainer.lr = 0.05" in running[0] and "(1 of 2 done; ETA " in running[1]
    assert any(line.startswith("cell 001_") and ": done in " in line and "(2 of 2 done; ETA 0s)" in line
               for line in lines)
    gin.clear_config()
    run_grid([TINY], grid, tmp_path, gin_bindings=FAST, mode="train", in_process=True)
    assert f"grid of 2 cells in {tmp_path}: 0 to run, 2 already done" in absl_lines()


def test_reproduce_logs_each_row_and_an_eta(tmp_path, absl_lines, monkeypatch):
    import experiments.reproduce as reproduce
    from experiments.tables import TABLES

    ran = []

    def fake_cell(gin_files, bindings, workdir, mode, device, data_dir):
        ran.append(workdir.name)
        write_json(workdir / "results.json", {"stages_completed": ["eval", "sample", "train"], "results": {}})
        return 0, ""

    monkeypatch.setattr(reproduce, "run_cell", fake_cell)
    monkeypatch.setattr(reproduce, "write_table_plots", lambda *args: [])
    table = TABLES["gps"]
    first = table.rows[0]
    (tmp_path / first.slug).mkdir(parents=True)
    write_json(tmp_path / first.slug / "results.json", {"stages_completed": ["eval", "sample", "train"]})
    reproduce.reproduce("gps", "smoke", tmp_path)
    n = len(table.rows) - 1
    assert ran == [row.slug for row in table.rows[1:]]
    lines = absl_lines()
    assert f"gps (smoke scale, 1 seed): {n} trainings to run in {tmp_path}" in lines
    running = [line for line in lines if line.startswith("training ") and " running: " in line]
    assert [line.split(" running:")[0] for line in running] == [f"training {i}/{n}" for i in range(1, n + 1)]
    assert table.rows[1].label in running[0]
    assert any(line.startswith(f"training {table.rows[-1].label}: done in ") and f"({n} of {n} done; ETA 0s)" in line
               for line in lines)
