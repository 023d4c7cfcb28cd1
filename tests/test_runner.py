"""experiments.run: a tiny end-to-end run, resume, bad flags / gin files / bindings / modes, dry run."""
from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import gin
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `tests._tiny_components` must be importable under one name
    sys.path.insert(0, str(REPO_ROOT))

from experiments.runner import GIN_DIR, WorkdirBusyError, resolve_gin_file, run_experiment, workdir_lock  # noqa: E402
from hybrids.data import load_dataset  # noqa: E402
from hybrids.io import read_json, read_jsonl  # noqa: E402
from hybrids.training import latest_checkpoint, load_checkpoint  # noqa: E402
from tests._tiny_components import TinyCategorical  # noqa: E402

TINY = str(REPO_ROOT / "tests" / "gin" / "tiny.gin")


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


def test_full_tiny_run_writes_everything(tmp_path):
    workdir = tmp_path / "run"
    out = run_experiment([TINY], workdir=workdir, mode="all")
    names = {p.name for p in workdir.iterdir()}
    assert {"operative_config.gin", "config.gin", "checkpoints", "metrics.jsonl", "results.json",
            "samples"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    operative = (workdir / "operative_config.gin").read_text()
    assert "Trainer.num_steps = 20" in operative and "TinyCategorical.num_levels = 17" in operative

    # keep_checkpoints = 2 with checkpoint_every = 5 over 20 updates
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["ckpt_00000015.pt", "ckpt_00000020.pt"]
    ckpt = load_checkpoint(workdir / "checkpoints" / "ckpt_00000020.pt")
    assert set(ckpt) >= {"step", "model", "ema", "optimizer", "scheduler", "rng", "gin_config"}
    assert "Trainer.lr = 0.05" in ckpt["gin_config"]

    records = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [5, 10, 15, 20]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [10, 20]

    results = read_json(workdir / "results.json")
    assert results == out
    assert results["step"] == 20 and results["mode"] == "all" and results["dataset"] == "digits"
    assert results["stages_completed"] == ["eval", "sample", "train"]
    assert len(results["uuid"]) == 32 and results["wall_time_s"] > 0
    ev = results["results"]["tiny_nll_eval"]
    assert ev["uniform_nll"] == pytest.approx(64 * math.log(17))
    assert ev["nll"] < ev["uniform_nll"]  # 20 updates at lr 0.05 beat the uniform initialisation
    # The evaluator saw the EMA weights of the last checkpoint: recompute independently.
    model = TinyCategorical(shape=(1, 8, 8), num_levels=17)
    model.load_state_dict(ckpt["ema"])
    test = load_dataset("digits", "test").data[:128]
    assert ev["nll"] == pytest.approx(-model.discrete_log_prob(test).mean().item(), rel=1e-6)

    for name in ["tiny_sampler_images.png", "tiny_sampler_points.png",
                 "step_00000020/tiny_sampler_images.png"]:
        with Image.open(workdir / "samples" / name) as im:
            assert im.format == "PNG" and im.width >= 64


def test_resume_continues_the_step_count(tmp_path):
    workdir = tmp_path / "run"
    run_experiment([TINY], ["Trainer.num_steps = 10"], workdir=workdir, mode="train")
    first = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in first if r["kind"] == "train"] == [5, 10]
    from gin import clear_config

    clear_config()
    out = run_experiment([TINY], ["Trainer.num_steps = 20"], workdir=workdir, mode="train")
    records = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [5, 10, 15, 20]
    assert records[: len(first)] == first  # updates 1..10 were not redone
    assert out["step"] == 20 and load_checkpoint(latest_checkpoint(workdir))["step"] == 20


def test_a_workdir_in_use_is_refused(tmp_path):
    """Two runs never write one workdir: the second fails with a clear error, and the lock goes
    with the first run."""
    workdir = tmp_path / "run"
    with workdir_lock(workdir):
        with pytest.raises(WorkdirBusyError, match="in use by another run.*another --workdir"):
            run_experiment([TINY], ["Trainer.num_steps = 5"], workdir=workdir, mode="train")
        assert not (workdir / "checkpoints").exists()
    gin.clear_config()
    out = run_experiment([TINY], ["Trainer.num_steps = 5"], workdir=workdir, mode="train")
    assert out["step"] == 5


def test_eval_and_sample_modes_need_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint .*--mode=train"):
        run_experiment([TINY], workdir=tmp_path / "empty", mode="eval")


def test_unknown_gin_file_lists_available(tmp_path):
    with pytest.raises(ValueError, match="Available gin files: .*presets/cpu_small.gin"):
        run_experiment(["no_such_row.gin"], workdir=tmp_path)


def test_gin_files_resolve_from_gin_dir_whatever_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_gin_file("presets/cpu_small.gin") == (GIN_DIR / "presets" / "cpu_small.gin").resolve()
    assert resolve_gin_file("presets/paper") == (GIN_DIR / "presets" / "paper.gin").resolve()
    assert resolve_gin_file(TINY) == Path(TINY).resolve()


@pytest.mark.parametrize("binding, words", [
    ("Trainer.no_such_param = 1", ["no_such_param", "Hint"]),
    ("Trainr.lr = 1.0", ["Trainr", "Similar registered names", "Trainer"]),
])
def test_unknown_binding_fails_with_hint(tmp_path, binding, words):
    with pytest.raises(ValueError) as info:
        run_experiment([TINY], [binding], workdir=tmp_path)
    for word in words:
        assert word in str(info.value)


def test_unknown_mode_lists_modes(tmp_path):
    with pytest.raises(ValueError, match="train, eval, sample, all"):
        run_experiment([TINY], workdir=tmp_path, mode="fit")


def test_num_levels_mismatch_names_the_binding(tmp_path):
    with pytest.raises(ValueError, match=r"`TinyNLL.num_levels = 17`"):
        run_experiment([TINY], ["TinyNLL.num_levels = 256"], workdir=tmp_path / "w", mode="train")


def test_dry_run_prints_config_and_builds_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_experiment([TINY, "presets/cpu_small.gin"], dry_run=True) is None
    printed = capsys.readouterr().out
    assert "Trainer.num_steps = 200" in printed  # the later file wins
    assert "experiment.model = @TinyCategorical()" in printed
    assert f"# workdir: {Path('runs') / 'tiny'}" in printed
    assert not (tmp_path / "runs").exists()


def test_cli_reports_bad_input(tmp_path):
    cmd = [sys.executable, "-m", "experiments.run", f"--gin_file={TINY}", "--mode=bogus",
           f"--workdir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: ValueError: unknown mode 'bogus'; choose one of train, eval, sample, all.")


def test_cli_dry_run_from_another_directory(tmp_path):
    cmd = [sys.executable, "-m", "experiments.run", "--gin_file=presets/cpu_small.gin", "--dry_run",
           "--gin_bindings=Trainer.lr = 0.5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert "Trainer.lr = 0.5" in proc.stdout and "Trainer.num_steps = 200" in proc.stdout


def test_paper_and_cpu_presets_parse():
    from experiments.runner import parse_gin

    import gin

    for name in ["presets/cpu_small.gin", "presets/paper.gin"]:
        gin.clear_config()
        parse_gin([name])
        from hybrids.training import Trainer

        trainer = Trainer()
        assert trainer.checkpoint_every == gin.query_parameter("Trainer.checkpoint_every")
    assert torch.get_num_threads() >= 1


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    """The runner under torchrun (2 gloo ranks) trains the same parameters as one process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "experiments.run", f"--gin_file={TINY}", f"--workdir={tmp_path / 'two'}", "--mode=all"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_experiment([TINY], workdir=tmp_path / "one", mode="train")
    one, two = (load_checkpoint(tmp_path / d / "checkpoints" / "ckpt_00000020.pt") for d in ("one", "two"))
    torch.testing.assert_close(two["model"]["logits"], one["model"]["logits"], rtol=0, atol=1e-6)
    torch.testing.assert_close(two["ema"]["logits"], one["ema"]["logits"], rtol=0, atol=1e-6)
    # rank 0 alone logged and evaluated
    records = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [5, 10, 15, 20]
    assert read_json(tmp_path / "two" / "results.json")["results"]["tiny_nll_eval"]["n"] == 128
