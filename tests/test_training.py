"""Trainer: optimizers, lr schedules, clipping, EMA, NaN guard, atomic writes, resume and DDP
equivalence."""
from __future__ import annotations

import math
import socket
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `tests._tiny_components` must be importable under one name
    sys.path.insert(0, str(REPO_ROOT))

from hybrids.io import atomic_torch_save, atomic_write, read_jsonl  # noqa: E402
from hybrids.training import (  # noqa: E402
    Trainer,
    cosine_factor,
    ema_update,
    latest_checkpoint,
    linear_increase_factor,
    load_checkpoint,
    load_ema,
)
from tests._tiny_components import TinyCategorical, TinyNLL, ddp_train_worker, tiny_trainer  # noqa: E402

K = 5
SHAPE = (1, 2, 2)


def _data(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, K, (n, *SHAPE), generator=torch.Generator().manual_seed(seed))


def _model() -> TinyCategorical:
    return TinyCategorical(shape=SHAPE, num_levels=K)


_trainer = tiny_trainer


class NoisyNLL(TinyNLL):
    """NLL on a random subset of the batch drawn from the global RNG (as objectives draw noise)."""

    def __call__(self, model, batch):
        keep = torch.rand(batch.shape[0]) < 0.7
        keep[0] = True
        return super().__call__(model, batch[keep])


class LinearLoss:
    """loss = <a, logits>: the gradient is the constant ``a`` whatever the parameters."""

    num_levels = K

    def __init__(self, a: torch.Tensor):
        self.a = a

    def __call__(self, model, batch):
        return (model.logits * self.a).sum(), {}


def test_lr_schedule_is_linear_warmup_times_decay(tmp_path):
    lr, warmup, decay = 0.1, 4, 0.9
    _trainer(num_steps=7, lr=lr, warmup_steps=warmup, lr_decay=decay).fit(_model(), TinyNLL(K), _data(), tmp_path)
    logged = [r["lr"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    # update n uses lr * min(1, n / 4) * 0.9^(n - 1), written out by hand:
    expected = [lr * 0.25, lr * 0.5 * 0.9, lr * 0.75 * 0.81, lr * 1.0 * 0.729, lr * 0.6561,
                lr * 0.59049, lr * 0.531441]
    assert logged == pytest.approx(expected, rel=1e-12)


def _closed_form_lr(n: int, lr: float, num_steps: int, warmup: int, schedule: str, lr_decay: float = 1.0,
                    lr_final: float = 0.0) -> float:
    """The learning rate of update n, written out from the formulas of the Trainer's docstring."""
    warm = min(1.0, n / warmup) if warmup else 1.0
    if schedule == "warmup_decay":
        return lr * warm * lr_decay ** (n - 1)
    if schedule == "linear_increase":
        return warm * (lr + (lr_final - lr) * (n - 1) / (num_steps - 1 if num_steps > 1 else 1))
    if n <= warmup:
        return lr * warm
    return lr_final + (lr - lr_final) * (1 + math.cos(math.pi * (n - warmup) / (num_steps - warmup))) / 2


@settings(max_examples=60, deadline=None)
@given(schedule=st.sampled_from(["warmup_decay", "linear_increase", "cosine"]), num_steps=st.integers(1, 10_000),
       data=st.data(), lr=st.floats(1e-5, 1.0), ratio=st.floats(0.0, 1.0), decay=st.floats(0.5, 1.0))
def test_lr_schedules_match_their_closed_forms(schedule, num_steps, data, lr, ratio, decay):
    warmup = data.draw(st.integers(0, num_steps - 1 if schedule == "cosine" else num_steps + 5), label="warmup")
    n = data.draw(st.integers(1, num_steps), label="update")
    kw = {"warmup_decay": dict(lr_decay=decay), "cosine": dict(lr_final=ratio * lr),
          "linear_increase": dict(lr_final=lr / max(ratio, 1e-3))}[schedule]
    trainer = Trainer(num_steps=num_steps, lr=lr, warmup_steps=warmup, lr_schedule=schedule, **kw)
    expected = _closed_form_lr(n, lr, num_steps, warmup, schedule, **kw)
    assert lr * trainer.schedule_factor(n) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    # The ends of the schedules that span the run: lr_final at the last update (once the warmup is
    # over; a 1-update 'linear_increase' stays at lr), and 'cosine' reaches lr when the warmup ends.
    if schedule != "warmup_decay" and warmup <= num_steps:
        last = lr if schedule == "linear_increase" and num_steps == 1 else kw["lr_final"]
        assert lr * trainer.schedule_factor(num_steps) == pytest.approx(last, rel=1e-12, abs=1e-15)
    if schedule == "cosine" and warmup:
        assert trainer.schedule_factor(warmup) == pytest.approx(1.0, rel=1e-15)


@settings(max_examples=30, deadline=None)
@given(num_steps=st.integers(2, 500), warmup=st.integers(0, 50), ratio=st.floats(1.0, 100.0))
def test_linear_increase_rises_and_cosine_falls_after_the_warmup(num_steps, warmup, ratio):
    ups = [linear_increase_factor(n, 0, ratio, num_steps) for n in range(1, num_steps + 1)]
    assert all(a <= b for a, b in zip(ups, ups[1:])) and ups[0] == 1.0
    if num_steps > warmup:
        downs = [cosine_factor(n, warmup, 1 / ratio, num_steps) for n in range(warmup + 1, num_steps + 1)]
        assert all(a >= b for a, b in zip(downs, downs[1:]))


@pytest.mark.parametrize("schedule, kw", [
    ("linear_increase", dict(lr_final=0.4, warmup_steps=2)),
    ("cosine", dict(lr_final=0.01, warmup_steps=3)),
])
def test_fit_logs_the_rates_of_the_schedule(tmp_path, schedule, kw):
    _trainer(num_steps=7, lr=0.1, lr_schedule=schedule, **kw).fit(_model(), TinyNLL(K), _data(), tmp_path)
    logged = [r["lr"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    if schedule == "linear_increase":  # 0.1 + 0.05 (n - 1), times the warmup 1/2 at update 1
        expected = [0.05, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
    else:  # warmup 1/3, 2/3, 1, then 0.01 + 0.045 (1 + cos(pi k / 4)) for k = 1..4
        expected = [0.1 / 3, 0.2 / 3, 0.1] + [0.01 + 0.045 * (1 + math.cos(math.pi * k / 4)) for k in range(1, 5)]
    assert logged == pytest.approx(expected, rel=1e-12)


# Each optimizer with settings that differ from its defaults, and a schedule.
OPTIMIZER_CASES = {
    "adam": dict(),
    "adamw": dict(optimizer="adamw", weight_decay=0.1, betas=(0.8, 0.9), lr_decay=0.9),
    "adagrad": dict(optimizer="adagrad", eps=1e-6, lr_schedule="linear_increase", lr_final=0.3),
    "sgd": dict(optimizer="sgd", momentum=0.5, nesterov=True, weight_decay=0.01, lr_schedule="cosine",
                warmup_steps=2),
}


def _torch_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """The torch optimizer that OPTIMIZER_CASES[name] should configure, written out."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.1)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=1e-6)
    return torch.optim.SGD(params, lr=lr, momentum=0.5, nesterov=True, weight_decay=0.01)


@pytest.mark.parametrize("name", OPTIMIZER_CASES)
def test_each_optimizer_is_torchs_with_its_settings_and_schedule(tmp_path, name):
    kw = OPTIMIZER_CASES[name]
    torch.manual_seed(0)
    a = torch.randn(*SHAPE, K)
    model = _model()
    with torch.no_grad():
        model.logits.normal_()
    theta0 = model.logits.detach().clone()
    theta = nn.Parameter(theta0.clone())
    lr, num_steps = 0.1, 5
    _trainer(num_steps=num_steps, lr=lr, **kw).fit(model, LinearLoss(a), _data(), tmp_path)

    reference = _torch_optimizer(name, [theta], lr)
    args = dict(lr=lr, num_steps=num_steps, warmup=kw.get("warmup_steps", 0),
                schedule=kw.get("lr_schedule", "warmup_decay"))
    args.update({k: kw[k] for k in ("lr_decay", "lr_final") if k in kw})
    rates = [_closed_form_lr(n, **args) for n in range(1, num_steps + 1)]
    for rate in rates:
        reference.param_groups[0]["lr"] = rate
        theta.grad = a.clone()
        reference.step()
    torch.testing.assert_close(model.logits.detach(), theta.detach(), rtol=1e-6, atol=1e-7)
    assert (model.logits.detach() - theta0).abs().min() > 1e-3  # every weight moved
    records = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["lr"] for r in records] == pytest.approx(rates, rel=1e-12)
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["optimizer_name"] == name
    # The same optimizer class with the same settings: equal param groups (but the learning rates).
    group, expected = (dict(g, lr=None, initial_lr=None) for g in (state["optimizer"]["param_groups"][0],
                                                                    reference.state_dict()["param_groups"][0]))
    assert group == expected
    assert state["optimizer"]["state"][0].keys() == reference.state_dict()["state"][0].keys()


@pytest.mark.parametrize("clip", [None, 0.5, 100.0])
def test_gradient_clipping_by_global_norm(tmp_path, clip):
    torch.manual_seed(0)
    a = torch.randn(*SHAPE, K)
    norm = a.norm().item()
    _trainer(num_steps=1, grad_clip=clip).fit(_model(), LinearLoss(a), _data(), tmp_path)
    record = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert record["grad_norm"] == pytest.approx(norm, rel=1e-6)  # logged before clipping
    state = load_checkpoint(latest_checkpoint(tmp_path))["optimizer"]["state"][0]
    # Adam's first moment after one update is (1 - beta1) g with g the clipped gradient.
    scale = 1.0 if clip is None or clip >= norm else clip / (norm + 1e-6)
    torch.testing.assert_close(state["exp_avg"], 0.1 * a * scale, rtol=1e-6, atol=1e-7)
    if clip is not None and clip < norm:
        assert (state["exp_avg"] / 0.1).norm().item() == pytest.approx(clip, rel=1e-5)


def test_ema_matches_hand_computation(tmp_path):
    d = 0.7
    torch.manual_seed(3)
    model = _model()
    with torch.no_grad():
        model.logits.normal_()
    theta0 = model.logits.detach().clone()
    _trainer(num_steps=2, ema_decay=d).fit(model, TinyNLL(K), _data(), tmp_path)
    ck1 = load_checkpoint(tmp_path / "checkpoints" / "ckpt_00000001.pt")
    ck2 = load_checkpoint(tmp_path / "checkpoints" / "ckpt_00000002.pt")
    theta1, theta2 = ck1["model"]["logits"], ck2["model"]["logits"]
    assert not torch.equal(theta1, theta2)
    expected = d * d * theta0 + d * (1 - d) * theta1 + (1 - d) * theta2
    torch.testing.assert_close(ck2["ema"]["logits"], expected, rtol=1e-6, atol=1e-6)
    # load_ema gives the EMA of the latest checkpoint.
    fresh = _model()
    assert load_ema(fresh, tmp_path) == 2
    torch.testing.assert_close(fresh.logits.detach(), expected, rtol=1e-6, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(decay=st.floats(0.0, 0.999), seed=st.integers(0, 1000))
def test_ema_update_formula(decay, seed):
    g = torch.Generator().manual_seed(seed)
    ema, model = nn.Linear(3, 2), nn.Linear(3, 2)
    for p in [*ema.parameters(), *model.parameters()]:
        p.data = torch.randn(p.shape, generator=g, dtype=torch.float64)
    expected = [decay * pe.detach().clone() + (1 - decay) * p.detach() for pe, p in zip(ema.parameters(), model.parameters())]
    ema_update(ema, model, decay)
    for pe, e in zip(ema.parameters(), expected):
        torch.testing.assert_close(pe.detach(), e, rtol=1e-12, atol=1e-12)


def test_nan_loss_stops_with_step_and_metrics(tmp_path):
    calls = {"n": 0}

    def objective(model, batch):
        calls["n"] += 1
        loss = -model.discrete_log_prob(batch).mean()
        if calls["n"] == 3:
            loss = loss * float("nan")
        return loss, {"marker": 1.25}

    with pytest.raises(FloatingPointError, match=r"update 3 .*marker.*1\.25"):
        _trainer().fit(_model(), objective, _data(), tmp_path)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.bin"

    def failing(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, failing)
    assert list(tmp_path.iterdir()) == []
    atomic_torch_save({"x": torch.ones(2)}, target)
    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # old file intact, no temp file
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.ones(2))


@pytest.mark.parametrize("optimizer_kw", [
    dict(), dict(optimizer="adamw", weight_decay=0.1), dict(optimizer="adagrad"),
    dict(optimizer="sgd", momentum=0.9, nesterov=True, lr_decay=0.95),
], ids=["adam", "adamw", "adagrad", "sgd"])
def test_resume_equals_uninterrupted(tmp_path, optimizer_kw):
    data = _data(40)  # 5 batches per epoch: the run crosses epoch boundaries
    kw = dict(batch_size=8, checkpoint_every=3, keep_checkpoints=2, log_every=1, ema_decay=0.8, **optimizer_kw)

    torch.manual_seed(0)
    full = _trainer(num_steps=12, **kw).fit(_model(), NoisyNLL(K), data, tmp_path / "a")

    torch.manual_seed(0)
    _trainer(num_steps=6, **kw).fit(_model(), NoisyNLL(K), data, tmp_path / "b")
    torch.manual_seed(12345)  # a new process has another RNG state; resume must restore it
    resumed = _trainer(num_steps=12, **kw).fit(_model(), NoisyNLL(K), data, tmp_path / "b")

    assert torch.equal(full.logits, resumed.logits)
    a, b = (load_checkpoint(latest_checkpoint(tmp_path / d)) for d in "ab")
    assert a["step"] == b["step"] == 12
    assert torch.equal(a["model"]["logits"], b["model"]["logits"])
    steps = [r["step"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl")]
    assert steps == list(range(1, 13))
    assert len(list((tmp_path / "b" / "checkpoints").iterdir())) == 2  # keep_checkpoints


class Killed(Exception):
    """Stands for the process being killed."""


class KilledAt(NoisyNLL):
    """NoisyNLL that raises ``Killed`` at its ``at``-th call (during that update)."""

    def __init__(self, at: int | None):
        super().__init__(K)
        self.at, self.calls = at, 0

    def __call__(self, model, batch):
        self.calls += 1
        if self.calls == self.at:
            raise Killed
        return super().__call__(model, batch)


@pytest.mark.parametrize("optimizer_kw", [
    dict(optimizer="adagrad", lr_schedule="linear_increase", lr_final=0.5, warmup_steps=2),
    dict(optimizer="sgd", momentum=0.5, lr_schedule="cosine", lr_final=0.001, warmup_steps=3),
    dict(optimizer="adamw", lr_schedule="cosine"),
], ids=["adagrad-linear_increase", "sgd-cosine", "adamw-cosine"])
def test_killed_run_resumes_exactly_under_the_schedules_that_span_the_run(tmp_path, optimizer_kw):
    data = _data(40)
    kw = dict(num_steps=12, batch_size=8, checkpoint_every=3, log_every=1, ema_decay=0.8, **optimizer_kw)
    torch.manual_seed(0)
    _trainer(**kw).fit(_model(), KilledAt(None), data, tmp_path / "a")
    torch.manual_seed(0)
    with pytest.raises(Killed):
        _trainer(**kw).fit(_model(), KilledAt(8), data, tmp_path / "b")  # during update 8: ckpt 6 is the last
    torch.manual_seed(12345)
    _trainer(**kw).fit(_model(), KilledAt(None), data, tmp_path / "b")
    a, b = (load_checkpoint(latest_checkpoint(tmp_path / d)) for d in "ab")
    assert a["step"] == b["step"] == 12
    for part in ("model", "ema"):
        assert torch.equal(a[part]["logits"], b[part]["logits"])
    assert [r["lr"] for r in read_jsonl(tmp_path / "a" / "metrics.jsonl")] == [
        r["lr"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl")]


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    _trainer(num_steps=6, checkpoint_every=4).fit(_model(), TinyNLL(K), _data(), tmp_path)
    (tmp_path / "checkpoints" / "ckpt_00000006.pt").unlink()  # as if killed after step 6's log
    _trainer(num_steps=6, checkpoint_every=4).fit(_model(), TinyNLL(K), _data(), tmp_path)
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def _indices(step: int, n: int, batch: int, seed: int, world: int, rank: int) -> torch.Tensor:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORLD_SIZE", str(world))
        mp.setenv("RANK", str(rank))
        return Trainer(num_steps=1, batch_size=batch, seed=seed).batch_indices(step, n)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(8, 60), batch=st.sampled_from([2, 4, 8]), world=st.sampled_from([1, 2]),
       seed=st.integers(0, 5))
def test_batch_indices_shard_a_permutation(n, batch, world, seed):
    seen = []
    for step in range(n // batch):
        shards = [_indices(step, n, batch, seed, world, rank) for rank in range(world)]
        assert all(len(s) == batch // world for s in shards)
        single = _indices(step, n, batch, seed, 1, 0)
        assert torch.equal(torch.cat(shards), single)  # ranks split the single-process batch
        seen.append(single)
    seen = torch.cat(seen)
    assert len(set(seen.tolist())) == len(seen) == (n // batch) * batch  # each example once per epoch
    # The next epoch is a different permutation (seeded by epoch), reproducible across calls.
    nxt = _indices(n // batch, n, batch, seed, 1, 0)
    assert torch.equal(nxt, _indices(n // batch, n, batch, seed, 1, 0))


@pytest.mark.parametrize("kw, match", [
    (dict(lr=0.0), "lr must be positive"),
    (dict(num_steps=0), "num_steps must be >= 1"),
    (dict(grad_clip=-1.0), "grad_clip"),
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(bf16=True), "CUDA"),
    (dict(device="tpu"), "unsupported device|Expected one of"),
])
def test_bad_trainer_arguments(kw, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        Trainer(**kw)


def test_batch_larger_than_dataset_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="fewer than Trainer.batch_size"):
        _trainer(batch_size=128).fit(_model(), TinyNLL(K), _data(16), tmp_path)


# ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    kw = dict(num_steps=5, batch_size=8, lr=0.1, warmup_steps=0, grad_clip=1.0, ema_decay=0.5,
              log_every=1, checkpoint_every=5)
    data = _data()
    assert int(data.max()) + 1 == K
    torch.manual_seed(7)
    Trainer(**kw).fit(_model(), TinyNLL(K), data, tmp_path / "one")
    # fork: the children reuse the imported torch (spawn re-imports it, ~10 s on a busy machine).
    mp.start_processes(ddp_train_worker, args=(2, _free_port(), str(tmp_path / "two"), data, kw),
                       nprocs=2, join=True, start_method="fork")
    one = load_checkpoint(latest_checkpoint(tmp_path / "one"))
    two = load_checkpoint(latest_checkpoint(tmp_path / "two"))
    assert two["step"] == 5
    torch.testing.assert_close(two["model"]["logits"], one["model"]["logits"], rtol=0, atol=1e-6)
    torch.testing.assert_close(two["ema"]["logits"], one["ema"]["logits"], rtol=0, atol=1e-6)
    assert not torch.equal(one["model"]["logits"], torch.zeros_like(one["model"]["logits"]))
    # Only rank 0 logged: one record per update.
    assert [r["step"] for r in read_jsonl(tmp_path / "two" / "metrics.jsonl")] == [1, 2, 3, 4, 5]


class LossInMetrics(TinyNLL):
    """An objective that also reports its loss under the metric name ``loss`` (as DSM does)."""

    def __call__(self, model, batch):
        loss, metrics = super().__call__(model, batch)
        return loss, {**metrics, "loss": loss.item()}


def test_loss_metric_is_not_counted_twice(tmp_path):
    _trainer(num_steps=3).fit(_model(), LossInMetrics(K), _data(), tmp_path)
    for record in read_jsonl(tmp_path / "metrics.jsonl"):
        if record["kind"] == "train":
            # TinyNLL's loss is the mean nll in nats, also reported as ``nll``.
            assert record["loss"] == pytest.approx(record["nll"], rel=1e-9)


def test_resume_with_another_configuration_fails_clearly(tmp_path):
    _trainer(num_steps=2).fit(_model(), TinyNLL(K), _data(), tmp_path)
    other = TinyCategorical(shape=(1, 2, 3), num_levels=K)
    data = torch.randint(0, K, (64, 1, 2, 3), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="new --workdir"):
        _trainer(num_steps=4).fit(other, TinyNLL(K), data, tmp_path)


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "warmup_decay"), ("adagrad", "cosine")])
def test_the_cpu_preset_resets_row_settings_for_any_optimizer(optimizer, schedule):
    """presets/cpu_small.gin replaces the paper rows' Adam betas and per-update decay for every row;
    it must do so with None (the optimizer's own default), so that an SGD/Adagrad or cosine row
    under it builds (a preset binding Adam's values would be refused as settings that do not
    apply) and the torch optimizer accepts the settings."""
    import gin

    from experiments.configs import resolve_gin_file
    from hybrids.training import OPTIMIZERS

    try:
        gin.parse_config_files_and_bindings(
            [str(resolve_gin_file("pixelcnnpp_mle.gin")), str(resolve_gin_file("presets/cpu_small.gin"))],
            [f"Trainer.optimizer = '{optimizer}'", f"Trainer.lr_schedule = '{schedule}'"])
        trainer = Trainer()
    finally:
        gin.clear_config()
    assert trainer.betas is None and "betas" not in trainer.optimizer_settings
    OPTIMIZERS[optimizer]([nn.Parameter(torch.zeros(1))], lr=1e-3, **trainer.optimizer_settings)
