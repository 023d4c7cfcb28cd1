"""Trainer faults and bad inputs: progress lines, divergence, changed bindings on resume, damaged
checkpoints, interrupted writes, nothing left to train, argument checks.

Each fault the Trainer handles has a test here; the user must never lose the work in a workdir.
"""
from __future__ import annotations

import logging as std_logging
import os
import re
import socket
import sys
import time
from pathlib import Path

import gin
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `tests._tiny_components` must be importable under one name
    sys.path.insert(0, str(REPO_ROOT))

from hybrids.io import read_jsonl  # noqa: E402
from hybrids.training import (  # noqa: E402
    CheckpointError,
    Trainer,
    checkpoint_files,
    format_duration,
    gin_config_diff,
    latest_checkpoint,
    load_checkpoint,
    load_ema,
    lr_factor,
)
from tests._tiny_components import TinyCategorical, TinyNLL, tiny_trainer  # noqa: E402

K = 5
SHAPE = (1, 2, 2)


def _data(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, K, (n, *SHAPE), generator=torch.Generator().manual_seed(seed))


def _model() -> TinyCategorical:
    torch.manual_seed(0)
    return TinyCategorical(shape=SHAPE, num_levels=K)


_trainer = tiny_trainer


@pytest.fixture
def logs(caplog):
    """absl log records (absl logs through the standard ``logging`` logger named 'absl')."""
    caplog.set_level(std_logging.INFO, logger="absl")
    return caplog


def _messages(caplog, level: int | None = None) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "absl" and (level is None or r.levelno == level)]


def _ckpt(workdir: Path, step: int) -> Path:
    return workdir / "checkpoints" / f"ckpt_{step:08d}.pt"


def _all_checkpoints_finite(workdir: Path) -> bool:
    for _, path in checkpoint_files(workdir):
        state = load_checkpoint(path)
        for part in ("model", "ema"):
            if not all(torch.isfinite(t).all() for t in state[part].values() if t.is_floating_point()):
                return False
    return True


# ----------------------------------------------------------------------------------------------
# Progress lines
def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(65.4) == "0:01:05"
    assert format_duration(3600 * 27 + 61) == "27:01:01"
    assert format_duration(float("inf")) == "?"
    assert format_duration(float("nan")) == "?"


def test_progress_lines_every_log_every_and_at_start_and_end(tmp_path, logs):
    _trainer(num_steps=6, log_every=2, checkpoint_every=3).fit(_model(), TinyNLL(K), _data(), tmp_path)
    info = _messages(logs, std_logging.INFO)
    assert any(m.startswith("training from scratch: 6 updates") for m in info)
    progress = [m for m in info if m.startswith("step ")]
    assert [m.split(":")[0] for m in progress] == ["step 2/6", "step 4/6", "step 6/6"]
    pattern = r"^step \d+/6: loss [-0-9.e+]+, lr [0-9.e+-]+, [0-9.e+]+ steps/s, ETA \d+:\d\d:\d\d$"
    assert all(re.match(pattern, m) for m in progress), progress
    assert progress[-1].endswith("ETA 0:00:00")
    end = [m for m in info if m.startswith("training finished")]
    assert len(end) == 1 and "step 6/6: 6 updates in" in end[0] and str(_ckpt(tmp_path, 6)) in end[0]

    logs.clear()
    _trainer(num_steps=8, log_every=2, checkpoint_every=3).fit(_model(), TinyNLL(K), _data(), tmp_path)
    info = _messages(logs, std_logging.INFO)
    assert f"resuming from checkpoint {_ckpt(tmp_path, 6)} (step 6 of Trainer.num_steps = 8)" in info
    assert any(m.startswith("training finished at step 8/8: 2 updates") for m in info)


# ----------------------------------------------------------------------------------------------
# Divergence: nothing non-finite is saved, the error says where the good work is and what to change
class StepSizeUnstableNLL(TinyNLL):
    """NLL whose loss overflows (inf) once an update moved any logit by more than ``max_move``: a
    stand-in for a model that diverges when the learning rate is too large. The previous logits
    are remembered within one process only, as a resumed run starts afresh."""

    def __init__(self, max_move: float = 2.5):
        super().__init__(K)
        self.max_move = max_move
        self.previous = None

    def __call__(self, model, batch):
        loss, metrics = super().__call__(model, batch)
        current = model.logits.detach().clone()
        if self.previous is not None and (current - self.previous).abs().max() > self.max_move:
            loss = loss * float("inf")
        self.previous = current
        return loss, metrics


def test_divergence_keeps_good_checkpoints_and_the_advised_binding_fixes_it(tmp_path, logs):
    # lr 4 with a warmup of 2: update 2 moves a logit by 3.4 > 2.5, so the loss of update 3 is inf.
    kw = dict(num_steps=10, warmup_steps=2, checkpoint_every=2, log_every=1)
    with pytest.raises(FloatingPointError) as info:
        _trainer(lr=4.0, **kw).fit(_model(), StepSizeUnstableNLL(), _data(), tmp_path)
    msg = str(info.value)
    assert "diverged at update 3 (after 2 completed updates): the loss is inf" in msg
    assert f"last good checkpoint, {_ckpt(tmp_path, 2)} (step 2), is intact" in msg
    assert "--gin_bindings='Trainer.grad_clip = 1.0'" in msg
    assert [s for s, _ in checkpoint_files(tmp_path)] == [2]
    assert _all_checkpoints_finite(tmp_path)

    advised = re.search(r"--gin_bindings='Trainer\.lr = ([^']+)'", msg).group(1)
    assert float(advised) == 2.0  # half of 4
    logs.clear()
    _trainer(lr=float(advised), **kw).fit(_model(), StepSizeUnstableNLL(), _data(), tmp_path)
    assert [s for s, _ in checkpoint_files(tmp_path)][0] == 10
    assert _all_checkpoints_finite(tmp_path)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 11))
    # Updates 3.. use the new base learning rate (the warmup is over: factor 1).
    assert [r["lr"] for r in records[2:]] == [2.0] * 8
    warned = " ".join(_messages(logs, std_logging.WARNING))
    assert "Trainer.lr: 4.0 -> 2.0" in warned


def test_weights_that_overflow_are_never_checkpointed(tmp_path):
    # A constant negative gradient makes every Adam step exactly +lr: logits of 3.0e38 grow by
    # 1e37 per update and pass float32's largest value (3.4e38) at update 5, while the loss
    # <a, logits> stays finite.
    a = -torch.rand(*SHAPE, K, generator=torch.Generator().manual_seed(0)) * 1e-3
    model = _model()
    with torch.no_grad():
        model.logits.fill_(3.0e38)

    def linear(model, batch):
        return (model.logits * a).sum(), {}

    with pytest.raises(FloatingPointError) as info:
        _trainer(num_steps=8, lr=1e37, grad_clip=1.0).fit(model, linear, _data(), tmp_path)
    msg = str(info.value)
    assert "diverged at update 5" in msg and "the weights are not finite after this update" in msg
    assert "model.logits" in msg and "checkpoint was not written" in msg
    assert f"{_ckpt(tmp_path, 4)} (step 4), is intact" in msg
    assert "Trainer.lr = 5e+36" in msg and "grad_clip" not in msg  # clipping is on already
    assert [s for s, _ in checkpoint_files(tmp_path)] == [4, 3, 2, 1]
    assert _all_checkpoints_finite(tmp_path)


def test_non_finite_gradient_stops_before_the_update(tmp_path):
    calls = {"n": 0}

    def objective(model, batch):
        calls["n"] += 1
        loss = -model.discrete_log_prob(batch).mean()
        if calls["n"] == 3:  # finite loss (0 * 0), NaN gradient (0 * d sqrt(x)/dx at x = 0)
            loss = loss + 0.0 * (model.logits - model.logits.detach()).sqrt().sum()
        return loss, {}

    with pytest.raises(FloatingPointError, match=r"update 3 .*gradient norm is nan .*update was not applied"):
        _trainer(checkpoint_every=2).fit(_model(), objective, _data(), tmp_path)
    assert [s for s, _ in checkpoint_files(tmp_path)] == [2]
    assert _all_checkpoints_finite(tmp_path)


def test_nan_loss_before_any_checkpoint_says_so(tmp_path):
    def objective(model, batch):
        return model.logits.sum() * float("nan"), {"marker": 2.5}

    with pytest.raises(FloatingPointError, match=r"update 1 .*loss is nan; metrics: \{'marker': 2\.5\}.*"
                                                 r"No checkpoint had been written yet"):
        _trainer().fit(_model(), objective, _data(), tmp_path)
    assert checkpoint_files(tmp_path) == []


def test_checkpoint_with_non_finite_weights_is_skipped_on_resume(tmp_path, logs):
    """A workdir poisoned by an older version (NaN weights saved) resumes from a finite checkpoint."""
    _trainer(num_steps=4).fit(_model(), TinyNLL(K), _data(), tmp_path)
    state = load_checkpoint(_ckpt(tmp_path, 4))
    state["model"]["logits"].fill_(float("nan"))
    torch.save(state, _ckpt(tmp_path, 4))
    logs.clear()
    assert load_ema(_model(), tmp_path) == 3
    _trainer(num_steps=4).fit(_model(), TinyNLL(K), _data(), tmp_path)
    warned = _messages(logs, std_logging.WARNING)
    assert len([m for m in warned if f"skipping checkpoint {_ckpt(tmp_path, 4)}" in m
                and "non-finite weights (model.logits)" in m]) == 2
    assert (tmp_path / "checkpoints" / "ckpt_00000004.pt.corrupt").exists()
    assert _all_checkpoints_finite(tmp_path)


def _nan_on_rank_one_worker(rank: int, world: int, port: int, workdir: str, data: torch.Tensor) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.manual_seed(7)
    calls = {"n": 0}

    def objective(model, batch):
        calls["n"] += 1
        loss, metrics = TinyNLL(K)(model, batch)
        return (loss * float("nan") if rank == 1 and calls["n"] == 3 else loss), metrics

    try:
        _trainer(num_steps=6, checkpoint_every=2).fit(
            TinyCategorical(shape=SHAPE, num_levels=K), objective, data, workdir)
        outcome = "finished"
    except FloatingPointError as err:
        outcome = str(err)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    Path(workdir, f"rank{rank}.txt").write_text(outcome)


def test_ddp_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.start_processes(_nan_on_rank_one_worker, args=(2, port, str(tmp_path), _data()), nprocs=2,
                             join=False, start_method="fork")
    deadline = time.time() + 120
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank hung after another rank's loss became NaN")
    zero, one = ((tmp_path / f"rank{r}.txt").read_text() for r in (0, 1))
    assert "update 3" in zero and "another DDP process" in zero
    assert "update 3" in one and "the loss is nan" in one
    assert f"{_ckpt(tmp_path, 2)} (step 2), is intact" in zero
    assert [s for s, _ in checkpoint_files(tmp_path)] == [2]


# ----------------------------------------------------------------------------------------------
# Bindings given on resume win over the checkpoint's optimizer state
def test_changed_hyperparameters_apply_on_resume(tmp_path, logs):
    _trainer(num_steps=4, lr=0.1, warmup_steps=0, lr_decay=0.9).fit(_model(), TinyNLL(K), _data(), tmp_path)
    logs.clear()
    new_lr, betas = 0.05, (0.8, 0.99)
    _trainer(num_steps=8, lr=new_lr, betas=betas, eps=1e-6, warmup_steps=0, lr_decay=0.9).fit(
        _model(), TinyNLL(K), _data(), tmp_path)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["lr"] for r in records[:4]] == pytest.approx([0.1 * 0.9 ** i for i in range(4)], rel=1e-12)
    # The lr of update n after the resume is new_lr * lr_factor(n): the new schedule, not the old.
    assert [r["lr"] for r in records[4:]] == [new_lr * lr_factor(n, 0, 0.9) for n in range(5, 9)]
    state = load_checkpoint(_ckpt(tmp_path, 8))
    group = state["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == new_lr and tuple(group["betas"]) == betas and group["eps"] == 1e-6
    assert group["lr"] == new_lr * lr_factor(9, 0, 0.9)
    assert state["scheduler"]["base_lrs"] == [new_lr]
    warned = " ".join(_messages(logs, std_logging.WARNING))
    assert "Trainer.lr: 0.1 -> 0.05" in warned and "Trainer.betas: (0.9, 0.999) -> (0.8, 0.99)" in warned
    assert "from update 5 on" in warned


@pytest.mark.parametrize("before, after, expected", [
    (dict(optimizer="sgd"), dict(optimizer="sgd", momentum=0.5, nesterov=True, weight_decay=0.01),
     ["Trainer.momentum: 0.9 -> 0.5", "Trainer.nesterov: False -> True", "Trainer.weight_decay: 0.0 -> 0.01"]),
    (dict(optimizer="adamw"), dict(optimizer="adamw", weight_decay=0.2), ["Trainer.weight_decay: 0.01 -> 0.2"]),
    (dict(optimizer="adagrad"), dict(optimizer="adagrad", eps=1e-6), ["Trainer.eps: 1e-10 -> 1e-06"]),
], ids=["sgd", "adamw", "adagrad"])
def test_changed_optimizer_settings_apply_on_resume(tmp_path, logs, before, after, expected):
    _trainer(num_steps=4, **before).fit(_model(), TinyNLL(K), _data(), tmp_path)
    logs.clear()
    _trainer(num_steps=6, **after).fit(_model(), TinyNLL(K), _data(), tmp_path)
    group = load_checkpoint(_ckpt(tmp_path, 6))["optimizer"]["param_groups"][0]
    reference = Trainer(**after)
    assert {k: tuple(v) if k == "betas" else v for k, v in group.items() if k in reference.optimizer_settings
            } == reference.optimizer_settings
    warned = " ".join(_messages(logs, std_logging.WARNING))
    assert all(change in warned for change in expected), warned
    assert "learning rate of update" not in warned  # the schedule is the same
    # An unchanged configuration resumes without a warning.
    logs.clear()
    _trainer(num_steps=7, **after).fit(_model(), TinyNLL(K), _data(), tmp_path)
    assert not _messages(logs, std_logging.WARNING)


def test_changed_schedule_applies_on_resume_and_is_logged(tmp_path, logs):
    kw = dict(num_steps=8, lr=0.1, lr_schedule="linear_increase")
    _trainer(lr_final=0.8, checkpoint_every=4, **kw).fit(_model(), TinyNLL(K), _data(), tmp_path)
    _ckpt(tmp_path, 8).unlink()  # resume from step 4
    logs.clear()
    _trainer(lr_final=0.45, checkpoint_every=4, **kw).fit(_model(), TinyNLL(K), _data(), tmp_path)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    # 0.1 + 0.1 (n - 1) until update 4, then the new schedule 0.1 + 0.05 (n - 1).
    assert [r["lr"] for r in records] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.3, 0.35, 0.4, 0.45], rel=1e-12)
    warned = " ".join(_messages(logs, std_logging.WARNING))
    assert ("learning rate of update 5 under the schedule (Trainer.lr_schedule and its settings): "
            "0.5 -> 0.3") in warned
    assert "Trainer.lr:" not in warned


@pytest.mark.parametrize("first, then", [("adam", "sgd"), ("sgd", "adagrad"), ("adam", "adamw")])
def test_resuming_with_another_optimizer_names_both_and_the_fix(tmp_path, first, then):
    _trainer(num_steps=2, optimizer=first).fit(_model(), TinyNLL(K), _data(), tmp_path)
    with pytest.raises(ValueError) as info:
        _trainer(num_steps=4, optimizer=then).fit(_model(), TinyNLL(K), _data(), tmp_path)
    msg = str(info.value)
    assert f"{_ckpt(tmp_path, 2)} was written with Trainer.optimizer = '{first}'" in msg
    assert f"the configuration has Trainer.optimizer = '{then}'" in msg
    assert f"Resume with Trainer.optimizer = '{first}'" in msg and "new --workdir" in msg
    assert [s for s, _ in checkpoint_files(tmp_path)] == [2, 1]  # nothing was changed


def test_checkpoints_without_an_optimizer_name_are_adams(tmp_path):
    """Checkpoints written before Trainer.optimizer existed resume under Adam only."""
    _trainer(num_steps=2).fit(_model(), TinyNLL(K), _data(), tmp_path)
    state = load_checkpoint(_ckpt(tmp_path, 2))
    assert state.pop("optimizer_name") == "adam"
    torch.save(state, _ckpt(tmp_path, 2))
    with pytest.raises(ValueError, match="written with Trainer.optimizer = 'adam'"):
        _trainer(num_steps=3, optimizer="adagrad").fit(_model(), TinyNLL(K), _data(), tmp_path)
    _trainer(num_steps=3).fit(_model(), TinyNLL(K), _data(), tmp_path)
    assert [s for s, _ in checkpoint_files(tmp_path)][0] == 3


def test_divergence_advice_halves_lr_final_too(tmp_path):
    def objective(model, batch):
        return model.logits.sum() * float("nan"), {}

    with pytest.raises(FloatingPointError) as info:
        _trainer(lr=0.1, lr_schedule="linear_increase", lr_final=0.4).fit(_model(), objective, _data(), tmp_path)
    assert ("--gin_bindings='Trainer.lr = 0.05' --gin_bindings='Trainer.lr_final = 0.2' "
            "(halves of 0.1 and 0.4)") in str(info.value)


def test_resume_logs_the_gin_configuration_diff(tmp_path, logs):
    gin.parse_config("hybrids.Trainer.lr = 0.1\nhybrids.Trainer.num_steps = 3")
    Trainer(batch_size=8, warmup_steps=0, checkpoint_every=3, log_every=1).fit(
        _model(), TinyNLL(K), _data(), tmp_path)
    gin.clear_config()
    gin.parse_config("hybrids.Trainer.lr = 0.025\nhybrids.Trainer.num_steps = 5")
    logs.clear()
    Trainer(batch_size=8, warmup_steps=0, checkpoint_every=3, log_every=1).fit(
        _model(), TinyNLL(K), _data(), tmp_path)
    diff = [m for m in _messages(logs, std_logging.INFO) if m.startswith("the gin configuration differs")]
    assert len(diff) == 1
    lines = diff[0].splitlines()
    assert "--- ckpt_00000003.pt (gin config)" in lines and "+++ current gin config" in lines
    assert [ln for ln in lines if ln[:1] in "+-" and not ln.startswith(("---", "+++"))] == [
        "-Trainer.lr = 0.1", "-Trainer.num_steps = 3", "+Trainer.lr = 0.025", "+Trainer.num_steps = 5"]
    assert read_jsonl(tmp_path / "metrics.jsonl")[-1]["lr"] == 0.025


def test_gin_config_diff_only_shows_changed_shared_bindings():
    stored = "import a.b\n\n# Parameters for T:\nT.x = 1\nT.y = [1,\n    2]\nT.only_old = 3\n"
    current = "T.x = 1\nT.y = [1,\n    3]\nT.only_new = 4\n"
    diff = gin_config_diff(stored, current, "old", "new")
    assert diff.splitlines() == ["--- old", "+++ new", "@@ -1 +1 @@", "-T.y = [1, 2]", "+T.y = [1, 3]"]
    assert gin_config_diff(stored, stored) == ""


# ----------------------------------------------------------------------------------------------
# Damaged checkpoints, interrupted writes
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte], ids=["truncated", "corrupt"])
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, logs, damage):
    _trainer(num_steps=6, checkpoint_every=2).fit(_model(), TinyNLL(K), _data(), tmp_path)
    reference = load_checkpoint(_ckpt(tmp_path, 6))
    damage(_ckpt(tmp_path, 6))

    with pytest.raises(CheckpointError, match=re.escape(str(_ckpt(tmp_path, 6)))):
        load_checkpoint(_ckpt(tmp_path, 6))
    logs.clear()
    assert latest_checkpoint(tmp_path) == _ckpt(tmp_path, 4)
    assert load_ema(_model(), tmp_path) == 4
    warned = _messages(logs, std_logging.WARNING)
    assert len(warned) == 2 and all(f"skipping checkpoint {_ckpt(tmp_path, 6)}" in m for m in warned)
    assert all(f"newest intact checkpoint instead: {_ckpt(tmp_path, 4)} (step 4)" in m for m in warned)

    logs.clear()
    _trainer(num_steps=6, checkpoint_every=2).fit(_model(), TinyNLL(K), _data(), tmp_path)
    assert any(f"resuming from checkpoint {_ckpt(tmp_path, 4)}" in m for m in _messages(logs))
    assert (tmp_path / "checkpoints" / "ckpt_00000006.pt.corrupt").exists()
    redone = load_checkpoint(_ckpt(tmp_path, 6))  # steps 5-6 redone exactly
    assert torch.equal(redone["model"]["logits"], reference["model"]["logits"])
    assert torch.equal(redone["ema"]["logits"], reference["ema"]["logits"])
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
    _trainer(num_steps=4, checkpoint_every=2).fit(_model(), TinyNLL(K), _data(), tmp_path)
    _truncate(_ckpt(tmp_path, 4))
    _ckpt(tmp_path, 2).write_bytes(b"")
    for call in (lambda: _trainer(num_steps=6).fit(_model(), TinyNLL(K), _data(), tmp_path),
                 lambda: load_ema(_model(), tmp_path), lambda: latest_checkpoint(tmp_path)):
        with pytest.raises(CheckpointError) as info:
            call()
        msg = str(info.value)
        assert "no usable checkpoint in" in msg and "Move these files away" in msg
        assert str(_ckpt(tmp_path, 4)) in msg and str(_ckpt(tmp_path, 2)) in msg
        assert isinstance(info.value, ValueError)  # the CLI prints ValueErrors as its error line


def test_not_a_checkpoint_is_reported_with_its_path(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} is not a hybrids checkpoint"):
        load_checkpoint(path)


def test_stale_temp_files_of_interrupted_writes_are_removed(tmp_path, logs):
    _trainer(num_steps=2).fit(_model(), TinyNLL(K), _data(), tmp_path)
    ckpt_dir = tmp_path / "checkpoints"
    stale = ckpt_dir / ".ckpt_00000003.pt.k2j4xq_a.tmp"  # hybrids.io.atomic_write's naming
    stale.write_bytes(b"partial")
    other = ckpt_dir / ".notes.tmp"
    other.write_text("not ours")
    logs.clear()
    _trainer(num_steps=3).fit(_model(), TinyNLL(K), _data(), tmp_path)
    assert not stale.exists() and other.exists()
    assert any("removed 1 temporary file(s) of interrupted checkpoint writes" in m and stale.name in m
               for m in _messages(logs, std_logging.INFO))


def test_nothing_left_to_train_is_logged_with_how_to_train_longer(tmp_path, logs):
    _trainer(num_steps=6, checkpoint_every=3).fit(_model(), TinyNLL(K), _data(), tmp_path)
    before = read_jsonl(tmp_path / "metrics.jsonl")
    logs.clear()
    ema = _trainer(num_steps=4, checkpoint_every=3).fit(_model(), TinyNLL(K), _data(), tmp_path)
    warned = " ".join(_messages(logs, std_logging.WARNING))
    assert "nothing left to train" in warned and "step 6 and Trainer.num_steps = 4" in warned
    assert "--gin_bindings='Trainer.num_steps = 12'" in warned
    assert [s for s, _ in checkpoint_files(tmp_path)] == [6, 3]
    assert read_jsonl(tmp_path / "metrics.jsonl") == before
    assert torch.equal(ema.logits, load_checkpoint(_ckpt(tmp_path, 6))["ema"]["logits"])


# ----------------------------------------------------------------------------------------------
# Argument checks
INT_ARGS = ["num_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
            "warmup_steps", "eval_every", "sample_every", "seed"]


@pytest.mark.parametrize("name", INT_ARGS)
@pytest.mark.parametrize("value, error", [(3.9, ValueError), ("10", TypeError), (None, TypeError),
                                          (True, TypeError), (float("nan"), ValueError)])
def test_integer_arguments_must_be_whole_numbers(name, value, error):
    with pytest.raises(error, match=rf"Trainer\.{name} must be"):
        Trainer(**{name: value})


@pytest.mark.parametrize("name", INT_ARGS)
def test_integral_floats_are_accepted_as_ints(name):
    trainer = Trainer(**{name: 4.0})
    assert getattr(trainer, name) == 4 and type(getattr(trainer, name)) is int


@pytest.mark.parametrize("name, value", [("num_steps", 0), ("batch_size", -8), ("log_every", 0),
                                         ("checkpoint_every", 0), ("keep_checkpoints", 0),
                                         ("warmup_steps", -1), ("eval_every", -1), ("sample_every", -5)])
def test_counts_below_their_minimum(name, value):
    with pytest.raises(ValueError, match=rf"Trainer\.{name} must be >= \d"):
        Trainer(**{name: value})


def test_seed_range():
    assert Trainer(seed=-3).seed == -3  # negative seeds are valid torch seeds
    with pytest.raises(ValueError, match=r"Trainer\.seed must be between"):
        Trainer(seed=2**62)


def test_fractional_num_steps_no_longer_truncates(tmp_path):
    with pytest.raises(ValueError, match=r"Trainer\.num_steps must be a whole number; got 3\.9"):
        _trainer(num_steps=3.9)
    _trainer(num_steps=3.0).fit(_model(), TinyNLL(K), _data(), tmp_path)
    assert [s for s, _ in checkpoint_files(tmp_path)][0] == 3


@pytest.mark.parametrize("kw, error, match", [
    (dict(lr="1e-3"), TypeError, r"Trainer\.lr must be a number"),
    (dict(lr=float("nan")), ValueError, r"Trainer\.lr must be finite"),
    (dict(lr=-1e-3), ValueError, r"Trainer\.lr must be positive"),
    (dict(lr_decay=0.0), ValueError, r"Trainer\.lr_decay must be in \(0, 1\]"),
    (dict(lr_decay=1.5), ValueError, r"Trainer\.lr_decay must be in \(0, 1\]"),
    (dict(ema_decay=-0.1), ValueError, r"Trainer\.ema_decay must be in \[0, 1\)"),
    (dict(ema_decay=1.0), ValueError, r"Trainer\.ema_decay must be in \[0, 1\)"),
    (dict(betas=(0.9, 1.0)), ValueError, r"Trainer\.betas must both be in \[0, 1\)"),
    (dict(betas=0.9), TypeError, r"Trainer\.betas must be a pair"),
    (dict(betas="ab"), TypeError, r"Trainer\.betas must be a pair"),
    (dict(eps=-1e-8), ValueError, r"Trainer\.eps must be >= 0"),
    (dict(grad_clip=0.0), ValueError, r"Trainer\.grad_clip must be positive or None"),
    (dict(grad_clip="1.0"), TypeError, r"Trainer\.grad_clip must be a number or None"),
    (dict(bf16="yes"), TypeError, r"Trainer\.bf16 must be True or False"),
])
def test_real_valued_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        Trainer(**kw)


@pytest.mark.parametrize("kw, error, match", [
    (dict(optimizer="adamx"), ValueError,
     r"Unknown Trainer\.optimizer 'adamx'; choose one of \['adam', 'adamw', 'adagrad', 'sgd'\]"),
    (dict(optimizer="Adam"), ValueError, r"Unknown Trainer\.optimizer 'Adam'"),
    (dict(optimizer=None), TypeError, r"Trainer\.optimizer must be a string"),
    (dict(lr_schedule="step"), ValueError,
     r"Unknown Trainer\.lr_schedule 'step'; choose one of \['warmup_decay', 'linear_increase', 'cosine'\]"),
    (dict(weight_decay=-0.1), ValueError, r"Trainer\.weight_decay must be >= 0"),
    (dict(optimizer="adamw", weight_decay=float("inf")), ValueError, r"Trainer\.weight_decay must be finite"),
    (dict(optimizer="sgd", momentum=1.0), ValueError, r"Trainer\.momentum must be in \[0, 1\)"),
    (dict(optimizer="sgd", momentum=-0.1), ValueError, r"Trainer\.momentum must be in \[0, 1\)"),
    (dict(optimizer="sgd", momentum="0.9"), TypeError, r"Trainer\.momentum must be a number"),
    (dict(optimizer="sgd", nesterov="yes"), TypeError, r"Trainer\.nesterov must be True or False"),
    (dict(optimizer="sgd", momentum=0.0, nesterov=True), ValueError,
     r"Trainer\.nesterov = True needs a momentum; Trainer\.momentum is 0"),
    (dict(optimizer="adagrad", eps=-1.0), ValueError, r"Trainer\.eps must be >= 0"),
    (dict(lr_schedule="linear_increase"), ValueError,
     r"'linear_increase' needs Trainer\.lr_final, the learning rate of the last update"),
    (dict(lr_schedule="linear_increase", lr_final=0.0), ValueError, r"Trainer\.lr_final must be positive"),
    (dict(lr_schedule="linear_increase", lr_final=-1.0), ValueError, r"Trainer\.lr_final must be positive"),
    (dict(lr=1e-3, lr_schedule="linear_increase", lr_final=1e-4), ValueError,
     r"Trainer\.lr_final = 0\.0001 is below Trainer\.lr = 0\.001.*swap them"),
    (dict(lr_schedule="linear_increase", lr_final=float("nan")), ValueError, r"Trainer\.lr_final must be finite"),
    (dict(lr=1e-3, lr_schedule="cosine", lr_final=-1e-4, warmup_steps=0), ValueError,
     r"Trainer\.lr_final of 'cosine' must be in \[0, Trainer\.lr = 0\.001\]; got -0\.0001"),
    (dict(lr=1e-3, lr_schedule="cosine", lr_final=1e-2, warmup_steps=0), ValueError,
     r"Trainer\.lr_final of 'cosine' must be in \[0, Trainer\.lr"),
    (dict(num_steps=100, warmup_steps=100, lr_schedule="cosine"), ValueError,
     r"Trainer\.warmup_steps = 100 leaves none of the Trainer\.num_steps = 100 updates"),
])
def test_optimizer_and_schedule_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        Trainer(**kw)


@pytest.mark.parametrize("kw, match", [
    (dict(momentum=0.9),
     r"Trainer\.momentum = 0\.9 does not apply to Trainer\.optimizer = 'adam' \(only to 'sgd'\)"),
    (dict(optimizer="adamw", nesterov=False),
     r"Trainer\.nesterov = False does not apply to Trainer\.optimizer = 'adamw'"),
    (dict(optimizer="sgd", betas=(0.9, 0.999)),
     r"Trainer\.betas = \(0\.9, 0\.999\) does not apply to Trainer\.optimizer = 'sgd' \(only to 'adam', 'adamw'\)"),
    (dict(optimizer="adagrad", betas=(0.9, 0.999)), r"Trainer\.betas .* Trainer\.optimizer = 'adagrad'"),
    (dict(optimizer="sgd", eps=1e-8),
     r"Trainer\.eps = 1e-08 does not apply to Trainer\.optimizer = 'sgd' \(only to 'adam', 'adamw', 'adagrad'\)"),
    (dict(lr_final=1e-3),
     r"Trainer\.lr_final = 0\.001 does not apply to Trainer\.lr_schedule = 'warmup_decay' "
     r"\(only to 'linear_increase', 'cosine'\); remove the binding, or choose a Trainer\.lr_schedule that uses it"),
    (dict(lr_schedule="cosine", lr_decay=1.0),
     r"Trainer\.lr_decay = 1\.0 does not apply to Trainer\.lr_schedule = 'cosine'"),
    (dict(lr_schedule="linear_increase", lr_final=1.0, lr_decay=0.99), r"Trainer\.lr_decay .* 'linear_increase'"),
])
def test_a_setting_the_optimizer_or_schedule_does_not_use_is_an_error(kw, match):
    with pytest.raises(ValueError, match=match):
        Trainer(**kw)


def test_gin_selects_the_optimizer_and_refuses_settings_it_does_not_use():
    try:
        gin.parse_config("hybrids.Trainer.optimizer = 'sgd'\nhybrids.Trainer.nesterov = True\n"
                         "hybrids.Trainer.lr_schedule = 'cosine'\nhybrids.Trainer.warmup_steps = 0")
        trainer = Trainer()
        assert trainer.optimizer_settings == dict(weight_decay=0.0, momentum=0.9, nesterov=True)
        assert (trainer.betas, trainer.eps, trainer.lr_decay, trainer.lr_final) == (None, None, None, 0.0)
        gin.parse_config("hybrids.Trainer.betas = (0.9, 0.99)")
        with pytest.raises(ValueError,
                           match=r"Trainer\.betas = \(0\.9, 0\.99\) does not apply to Trainer\.optimizer = 'sgd'"):
            Trainer()
    finally:
        gin.clear_config()


def test_defaults_are_adam_with_warmup_and_no_decay():
    trainer = Trainer()
    assert (trainer.optimizer, trainer.lr_schedule) == ("adam", "warmup_decay")
    assert trainer.optimizer_settings == dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    assert (trainer.lr_decay, trainer.lr_final, trainer.momentum, trainer.nesterov) == (1.0, None, None, None)
    assert Trainer(optimizer="adamw").optimizer_settings == dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    assert Trainer(optimizer="adagrad").optimizer_settings == dict(eps=1e-10, weight_decay=0.0)


@pytest.mark.parametrize("device", ["garbage", "gpu", "cuda:x", "tpu", "cpu:0:1", ""])
def test_unknown_device_names_the_choices(device):
    with pytest.raises(ValueError, match=r"unsupported device .*choose 'cpu', 'cuda' or 'cuda:N'"):
        Trainer(device=device)


def test_device_of_the_wrong_type():
    with pytest.raises(TypeError, match="device must be a string"):
        Trainer(device=3)


@pytest.mark.parametrize("device", ["cpu", " CPU ", torch.device("cpu")])
def test_cpu_device_spellings(device):
    assert Trainer(device=device).device == torch.device("cpu")


def test_unavailable_cuda_is_a_value_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available.*--device=cpu"):
        Trainer(device="cuda")


def test_cuda_index_beyond_the_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"has 1 CUDA device\(s\) \(cuda:0 to cuda:0\)"):
        Trainer(device="cuda:3")
    assert Trainer(device="cuda:0").device == torch.device("cuda:0")


def test_lr_factor_is_unchanged_by_the_checks():
    # The schedule is part of the bitwise-identity promise: spot-check the closed form.
    assert lr_factor(1, 0, 1.0) == 1.0
    assert lr_factor(3, 4, 0.5) == 0.75 * 0.25
    assert lr_factor(10, 5, 0.999995) == 0.999995 ** 9
