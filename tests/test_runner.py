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


# ---------------------------------------------------------------------------------------------
# Faults: a failing run leaves the workdir's configuration files as they were.
def _configs(workdir: Path) -> dict[str, tuple[bytes, int]]:
    return {name: ((workdir / name).read_bytes(), (workdir / name).stat().st_mtime_ns)
            for name in ("config.gin", "operative_config.gin")}


def test_checkpoint_of_another_configuration_keeps_the_config_files(tmp_path):
    workdir = tmp_path / "run"
    run_experiment([TINY], ["Trainer.num_steps = 5"], workdir=workdir, mode="train")
    before = _configs(workdir)
    for mode in ("train", "eval"):
        gin.clear_config()
        with pytest.raises(ValueError, match="does not fit the configured model.*new --workdir"):
            run_experiment([TINY], ["Trainer.num_steps = 10", "TinyCategorical.shape = (1, 4, 4)"],
                           workdir=workdir, mode=mode)
        assert _configs(workdir) == before
    assert latest_checkpoint(workdir).name == "ckpt_00000005.pt"


def test_a_run_failing_before_training_keeps_the_config_files(tmp_path):
    workdir = tmp_path / "run"
    run_experiment([TINY], ["Trainer.num_steps = 5"], workdir=workdir, mode="train")
    before = _configs(workdir)
    gin.clear_config()
    with pytest.raises(ValueError, match="fewer than Trainer.batch_size"):
        run_experiment([TINY], ["Trainer.num_steps = 10", "Trainer.batch_size = 100000"], workdir=workdir,
                       mode="train")
    assert _configs(workdir) == before
    gin.clear_config()
    with pytest.raises(ValueError, match="TinyNLL.num_levels = 17"):
        run_experiment([TINY], ["TinyNLL.num_levels = 5"], workdir=workdir, mode="train")
    assert _configs(workdir) == before


def test_eval_without_a_checkpoint_writes_no_config(tmp_path):
    workdir = tmp_path / "empty"
    with pytest.raises(FileNotFoundError, match="no checkpoint .*--mode=train"):
        run_experiment([TINY], workdir=workdir, mode="sample")
    assert not (workdir / "config.gin").exists() and not (workdir / "operative_config.gin").exists()


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    with pytest.raises(ValueError, match=r"--workdir .*notes.txt is an existing file, not a directory; pass a"):
        run_experiment([TINY], workdir=path, mode="train")
    gin.clear_config()
    with pytest.raises(ValueError, match=r"cannot be created: .*notes.txt is a file"):
        run_experiment([TINY], workdir=path / "run", mode="train")
    assert path.read_text() == "mine"


def test_an_unwritable_workdir_is_refused(tmp_path, monkeypatch):
    import experiments.runner as runner

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(runner.tempfile, "TemporaryFile", refuse)
    with pytest.raises(ValueError, match=r"--workdir .*run is not writable.*Permission denied.*fix the permissions"):
        run_experiment([TINY], workdir=tmp_path / "run", mode="train")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="POSIX permissions; root ignores them")
def test_a_read_only_workdir_is_refused(tmp_path):
    workdir = tmp_path / "ro"
    workdir.mkdir()
    workdir.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="is not writable"):
            run_experiment([TINY], workdir=workdir, mode="train")
    finally:
        workdir.chmod(0o755)


def test_model_num_levels_must_match_the_data(tmp_path):
    with pytest.raises(ValueError,
                       match=r"model TinyCategorical has num_levels = 9 .*`TinyCategorical.num_levels = 17`"):
        run_experiment([TINY], ["TinyCategorical.num_levels = 9"], workdir=tmp_path / "w", mode="train")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("binding", ["Trainer.num_steps = 'many'", "TinyCategorical.shape = 'big'"])
def test_wrong_value_types_name_the_bindings(tmp_path, binding):
    with pytest.raises((TypeError, ValueError)) as info:
        run_experiment([TINY], [binding], workdir=tmp_path / "w", mode="train")
    message = str(info.value)
    assert "check the value types of the bindings" in message and repr(binding) in message


def test_unknown_device_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown device 'garbage' \(--device\); use cpu, cuda or cuda:N"):
        run_experiment([TINY], workdir=tmp_path / "w", device="garbage")


@pytest.mark.parametrize("flag, last_line", [
    ("--device=garbage", "error: ValueError: unknown device 'garbage' (--device)"),
    ("--gin_bindings=Trainer.num_steps = 'many'", "check the value types of the bindings"),
    ("--workdir={file}", "is an existing file, not a directory"),
])
def test_cli_bad_input_ends_in_one_error_line(tmp_path, flag, last_line):
    file = tmp_path / "a_file"
    file.write_text("")
    cmd = [sys.executable, "-m", "experiments.run", f"--gin_file={TINY}", f"--workdir={tmp_path / 'w'}",
           flag.format(file=file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and last_line in last


@pytest.mark.parametrize("binding, words", [("IMAGE_SHAPE = (1, 28, 28)", "image_shape"),
                                            ("NUM_LEVELS = 256", "num_levels")])
def test_row_macros_that_disagree_with_the_data_fail_clearly(tmp_path, binding, words):
    """A row's data macros (IMAGE_SHAPE, NUM_LEVELS) that do not match the dataset (the 8x8,
    17-level digits of presets/cpu_small.gin) fail before training, naming what disagrees."""
    with pytest.raises(ValueError, match=words):
        run_experiment(["pixelcnnpp_mle.gin", "presets/cpu_small.gin", "presets/smoke.gin"], [binding],
                       workdir=tmp_path / "run", mode="train")
