"""Trainer: Adam, AdamW, Adagrad or SGD with a learning-rate schedule, gradient clipping, EMA,
atomic resumable checkpoints, DDP.

The training loop is method-agnostic: it minimises ``objective(model, batch) -> (loss, metrics)``
over mini-batches of a data tensor. What it does per update n = 1, 2, ... (``step`` counts completed
updates):

* learning rate lr_n = lr * w(n) * s(n), with the linear warmup w(n) = min(1, n / W) of every
  schedule (W = ``warmup_steps``, 0: none) and s chosen by ``lr_schedule`` (N = ``num_steps``):

  - ``'warmup_decay'`` (default): s(n) = lr_decay^(n - 1) (warmup as in score_sde; per-step
    multiplicative decay as in PixelCNN++, which uses lr_decay = 0.999995);
  - ``'linear_increase'`` (GPS, Saremi et al. 2023, train with a linearly increasing rate):
    s(n) = 1 + (lr_final / lr - 1) (n - 1) / (N - 1), from lr at update 1 to ``lr_final`` (>= lr)
    at update N;
  - ``'cosine'``: s(n) = r + (1 - r) (1 + cos(pi p)) / 2 with r = lr_final / lr and
    p = max(0, n - W) / (N - W): the warmup reaches lr at update W, then the rate falls along a
    half cosine to ``lr_final`` (default 0, at most lr) at update N (N > W).

  The schedule is a pure function of n, so a resumed run continues it exactly;
* global-norm clipping of the gradient to ``grad_clip`` (``None`` disables);
* the optimizer ``optimizer``: ``'adam'`` (default), ``'adamw'`` (decoupled weight decay),
  ``'adagrad'`` (the GPS paper's) or ``'sgd'`` (with momentum, optionally Nesterov's). Its settings
  apply only where the optimizer has them: ``betas`` to Adam and AdamW, ``eps`` to Adam, AdamW and
  Adagrad, ``weight_decay`` to all four (an L2 term added to the gradient, except AdamW's decoupled
  decay), ``momentum`` and ``nesterov`` to SGD. Left None, a setting takes the optimizer's default
  (betas (0.9, 0.999); eps 1e-8, Adagrad 1e-10; weight decay 0, AdamW 0.01; momentum 0.9; nesterov
  False). Binding a setting that the chosen optimizer does not use, or ``lr_decay`` / ``lr_final``
  with a schedule that does not use it, is a ValueError naming the binding and the optimizer or
  schedule: a binding is never ignored;
* EMA of the parameters, ema <- decay * ema + (1 - decay) * theta (buffers copied); the EMA copy is
  what evaluation, sampling and ``load_ema`` use.

Data order is a pure function of (seed, step): epoch e = step // steps_per_epoch uses the
permutation ``torch.randperm(N)`` drawn from a generator seeded with ``seed`` and e, so a resumed
run sees exactly the batches the uninterrupted run would have seen. The global RNG state (used by
objectives for noise and by dropout) is saved in each checkpoint and restored on resume.

Distributed data parallel: when launched by ``torchrun`` (environment ``WORLD_SIZE`` > 1) the
process group is initialised (gloo on CPU, nccl on CUDA), each rank takes a contiguous 1/world
shard of the global batch, and a module whose ``forward(batch)`` calls ``objective(model, batch)``
is wrapped in ``DistributedDataParallel`` (objectives call ``model.log_prob``/``score``, not
``forward``, so DDP must wrap the objective call). Gradients are averaged over ranks, so the update
equals the single-process update on the global batch. Rank 0 logs and writes checkpoints.

Safety of the work in a workdir:

* Progress goes to absl logging (INFO, rank 0): one line every ``log_every`` updates (step, loss,
  learning rate, steps/s, ETA), one when resuming and one at the end.
* Nothing non-finite is saved: the loss (before the update), the gradient norm (before the
  optimizer step) and the weights and EMA (before every checkpoint) are checked; a non-finite value
  stops training with a ``FloatingPointError`` that names the step, the last good checkpoint (left
  intact) and a configuration change to resume with.
* Resuming takes the newest intact checkpoint: an unreadable one (truncated, corrupt, a failed CRC
  check, or holding non-finite weights) is reported and skipped (``fit`` renames it to
  ``*.corrupt``); temporary files of interrupted checkpoint writes are removed.
* On resume the Trainer's current hyperparameters win over the optimizer and scheduler state
  stored in the checkpoint: a changed ``Trainer.lr``, optimizer setting or schedule setting applies
  from the next update on and is logged (with ``'linear_increase'`` and ``'cosine'`` the schedule
  spans ``num_steps``, so a larger ``num_steps`` on resume also changes the next rates), and the
  differences between the checkpoint's gin configuration and the current one are logged. The
  optimizer itself cannot change: each checkpoint records ``optimizer_name`` (checkpoints without
  it are Adam's), and resuming one with another ``Trainer.optimizer`` is a ValueError that names
  both.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import numbers
import os
import re
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import gin
import torch
import torch.distributed as dist
from absl import logging
from torch import Tensor, nn

from hybrids.io import append_jsonl, atomic_torch_save, truncate_jsonl

Objective = Callable[[nn.Module, Any], tuple[Tensor, dict[str, float]]]
StepHook = Callable[[int, nn.Module], dict[str, float] | None]

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
# Temporary files of hybrids.io.atomic_write for checkpoints: ".<name>.<random>.tmp".
_CKPT_TMP_RE = re.compile(r"^\.ckpt_\d+\.pt\..+\.tmp$")
_CHECKPOINT_KEYS = ("step", "model", "ema")
_SEED_LIMIT = 2**63 // 1_000_003  # seed * 1_000_003 + epoch stays in torch's [-2**63, 2**64)
_DEVICE_CHOICES = "'cpu', 'cuda' or 'cuda:N' (N a GPU index)"

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}
LR_SCHEDULES = ("warmup_decay", "linear_increase", "cosine")
# The Trainer arguments that only some optimizers / schedules use, with their values when left None
# (the optimizer's default); binding one that the chosen optimizer or schedule does not use is an error.
_OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "betas": {"adam": (0.9, 0.999), "adamw": (0.9, 0.999)},
    "eps": {"adam": 1e-8, "adamw": 1e-8, "adagrad": 1e-10},
    "weight_decay": {"adam": 0.0, "adamw": 0.01, "adagrad": 0.0, "sgd": 0.0},
    "momentum": {"sgd": 0.9},
    "nesterov": {"sgd": False},
}
_SCHEDULE_USERS = {"lr_decay": ("warmup_decay",), "lr_final": ("linear_increase", "cosine")}
# Checkpoints written before Trainer.optimizer existed hold Adam's state.
_LEGACY_OPTIMIZER = "adam"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: truncated, corrupt, not a hybrids checkpoint, or
    holding non-finite weights."""


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly) distributed run, read from torchrun's environment."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistInfo":
        """Read ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (defaults: a single process)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world}).")
        return cls(world, rank, local)


def _warmup(update: int, warmup_steps: int) -> float:
    """The linear warmup of every schedule: min(1, n / warmup_steps) (1 when warmup_steps = 0)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, update / warmup_steps)


def lr_factor(update: int, warmup_steps: int, lr_decay: float) -> float:
    """Multiplier of the base learning rate at update n (1-based) under ``'warmup_decay'``:
    min(1, n / warmup) * decay^(n-1)."""
    return _warmup(update, warmup_steps) * lr_decay ** (update - 1)


def linear_increase_factor(update: int, warmup_steps: int, final_ratio: float, num_steps: int) -> float:
    """Multiplier of the base learning rate at update n (1-based) under ``'linear_increase'``:
    min(1, n / warmup) * (1 + (r - 1) (n - 1) / (N - 1)) with r = lr_final / lr and N = num_steps,
    so that (after the warmup) update 1 uses lr and update N uses lr_final (N = 1: lr)."""
    progress = (update - 1) / max(1, num_steps - 1)
    return _warmup(update, warmup_steps) * (1.0 + (final_ratio - 1.0) * progress)


def cosine_factor(update: int, warmup_steps: int, final_ratio: float, num_steps: int) -> float:
    """Multiplier of the base learning rate at update n (1-based) under ``'cosine'``:
    min(1, n / W) * (r + (1 - r) (1 + cos(pi p)) / 2) with p = max(0, n - W) / (N - W), W the
    warmup, r = lr_final / lr and N = num_steps > W: the warmup reaches lr at update W, then the rate
    falls along a half cosine to lr_final at update N."""
    progress = max(0, update - warmup_steps) / (num_steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return _warmup(update, warmup_steps) * (final_ratio + (1.0 - final_ratio) * cosine)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema_p <- decay * ema_p + (1 - decay) * p for parameters; buffers are copied.

    Args:
        ema: the averaged copy (same architecture as ``model``).
        model: the trained model.
        decay: in [0, 1]; 0 copies the model.
    """
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def checkpoint_files(workdir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt_<step>.pt`` in ``workdir/checkpoints``, newest first."""
    ckpt_dir = Path(workdir) / CHECKPOINT_DIR
    if not ckpt_dir.is_dir():
        return []
    return sorted(((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _CKPT_RE.match(p.name))),
                  reverse=True)


def _check_archive(path: Path) -> bool:
    """Check the CRC of every record of a zip-format checkpoint (torch.load does not).

    Returns:
        Whether ``path`` is a zip archive (False: a truncated archive, or another format, which
        only loading can judge).

    Raises:
        CheckpointError: a record of the archive fails its CRC check.
    """
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt ({err}).") from err
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt (its record {bad} fails the CRC check).")
    return True


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict (tensors and plain values only; ``weights_only=True``).

    The file's CRC checksums are verified first, so that a corrupt file is reported rather than
    loaded as wrong weights.

    Raises:
        CheckpointError: the file is truncated, corrupt or not a hybrids checkpoint (the message
            names the path).
        FileNotFoundError: there is no file at ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}.")
    try:
        _check_archive(path)
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (CheckpointError, FileNotFoundError, PermissionError):
        raise
    except Exception as err:  # torch/pickle/zip raise many types for a damaged file
        said = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"checkpoint {path} cannot be read; it is truncated or corrupt (torch said: {said})."
        ) from err
    if not isinstance(state, dict) or any(k not in state for k in _CHECKPOINT_KEYS):
        raise CheckpointError(
            f"{path} is not a hybrids checkpoint (a dict with keys {', '.join(_CHECKPOINT_KEYS)}).")
    return state


def _nonfinite_entries(state_dicts: dict[str, dict[str, Any]]) -> list[str]:
    """Names ``<label>.<key>`` of the floating-point tensors holding NaN or infinity."""
    named = [(f"{label}.{key}", t) for label, sd in state_dicts.items() for key, t in sd.items()
             if isinstance(t, Tensor) and t.is_floating_point()]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(t).all() for _, t in named]).cpu()
    return [name for (name, _), ok in zip(named, flags.tolist()) if not ok]


def _usable(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """The checkpoint at ``path``, loaded; CheckpointError if unreadable or its weights are not finite."""
    state = load_checkpoint(path, map_location)
    bad = _nonfinite_entries({"model": state["model"], "ema": state["ema"]})
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite weights ({_shorten(bad)}); it was written by a "
            "run that diverged.")
    return state


def _shorten(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _newest_usable(workdir: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                   log: bool = True, load: bool = True
                   ) -> tuple[Path, dict[str, Any] | None, list[Path]] | None:
    """The newest usable checkpoint of ``workdir``, skipping unusable newer ones with a warning.

    Args:
        workdir: the run directory.
        map_location: where tensors are loaded.
        log: log a warning for each skipped checkpoint.
        load: load the checkpoint (False: only verify the archive's checksums, or load it when it
            is not a zip archive, and return None as the state).

    Returns:
        ``(path, state, skipped)`` with the paths of the skipped unusable checkpoints, or None when
        the workdir holds no checkpoint.

    Raises:
        CheckpointError: there are checkpoints but none is usable (the message names each file and
            what is wrong with it).
    """
    found = checkpoint_files(workdir)
    if not found:
        return None
    problems: list[tuple[Path, str]] = []
    for step, path in found:
        try:
            if load or not _check_archive(path):
                state = _usable(path, map_location)
            else:
                state = None
        except CheckpointError as err:
            problems.append((path, str(err)))
            continue
        if log:
            for bad_path, why in problems:
                logging.warning("skipping checkpoint %s: %s Using the newest intact checkpoint instead: %s "
                                "(step %d).", bad_path, why, path, step)
        return path, (state if load else None), [p for p, _ in problems]
    listing = " ".join(why for _, why in problems)
    raise CheckpointError(
        f"no usable checkpoint in {Path(workdir) / CHECKPOINT_DIR}: {listing} Move these files away "
        "(or pass a new --workdir) to train from scratch."
    )


def latest_checkpoint(workdir: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint in ``workdir/checkpoints``, or None if there is none.

    A newer checkpoint that fails its checksums (truncated or corrupt) is skipped with a warning.

    Raises:
        CheckpointError: checkpoints exist but none is intact.
    """
    found = _newest_usable(workdir, load=False)
    return None if found is None else found[0]


def load_latest_checkpoint(workdir: str | os.PathLike, map_location: str | torch.device = "cpu"
                           ) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest usable checkpoint of ``workdir``: ``(path, state)``, or None if there is none.

    Newer checkpoints that are truncated, corrupt or hold non-finite weights are skipped with a
    warning naming them.

    Raises:
        CheckpointError: checkpoints exist but none is usable.
    """
    found = _newest_usable(workdir, map_location)
    return None if found is None else (found[0], found[1])


def load_ema(model: nn.Module, workdir: str | os.PathLike) -> int:
    """Load the EMA weights of the newest usable checkpoint into ``model``.

    Returns:
        The step of that checkpoint.

    Raises:
        FileNotFoundError: if ``workdir`` holds no checkpoint.
        CheckpointError: checkpoints exist but none is usable (truncated, corrupt or non-finite).
    """
    found = load_latest_checkpoint(workdir)
    if found is None:
        raise FileNotFoundError(
            f"no checkpoint in {Path(workdir) / CHECKPOINT_DIR}; train first (--mode=train or --mode=all)."
        )
    path, state = found
    load_weights(model, state["ema"], path)
    return int(state["step"])


def load_weights(model: nn.Module, state_dict: dict[str, Any], path: Path) -> None:
    """``model.load_state_dict`` with an error that says what to do when the checkpoint in the
    workdir was written by a different configuration (other network sizes or model class).

    Raises:
        ValueError: the checkpoint's parameters do not fit ``model``.
    """
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise ValueError(
            f"the checkpoint {path} does not fit the configured model (it was written by a different "
            "configuration); use a new --workdir, or the gin files and bindings of that run (its "
            f"operative_config.gin). torch said: {str(err).splitlines()[0]}"
        ) from err


class _ObjectiveModule(nn.Module):
    """Holds the model so that DDP can wrap the objective call: forward(batch) = objective(model, batch)."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        return self.objective(self.model, batch)


def _metric_value(value: Any) -> float:
    return float(value.detach().float().mean().item()) if isinstance(value, Tensor) else float(value)


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (hours unbounded), or ``?`` for an unknown (non-finite or negative) duration."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _gin_bindings(text: str) -> dict[str, str]:
    """``{"Trainer.lr": "0.001", ...}`` from gin config text (imports and comments skipped; values
    continued on indented lines are joined)."""
    out: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            key = None
        elif line[0].isspace() and key is not None:
            out[key] = f"{out[key]} {stripped.rstrip(chr(92)).strip()}".strip()
        elif stripped.startswith(("import ", "from ")):
            key = None
        else:
            name, sep, value = stripped.partition(" = ")
            key = name.strip() if sep else None
            if key is not None:
                out[key] = value.rstrip(chr(92)).strip()
    return out


def gin_config_diff(stored: str, current: str, stored_name: str = "checkpoint",
                    current_name: str = "current", max_lines: int = 40) -> str:
    """A unified diff (no context) of the bindings present in both gin texts whose values differ.

    Bindings present in only one text are left out: a checkpoint stores the operative
    configuration, which lacks what was not used by then.

    Returns:
        The diff, or ``''`` when no shared binding changed.
    """
    old, new = _gin_bindings(stored), _gin_bindings(current)
    changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
    if not changed:
        return ""
    diff = list(difflib.unified_diff([f"{k} = {old[k]}" for k in changed], [f"{k} = {new[k]}" for k in changed],
                                     fromfile=stored_name, tofile=current_name, n=0, lineterm=""))
    if len(diff) > max_lines:
        diff = diff[:max_lines] + [f"... ({len(diff) - max_lines} more lines)"]
    return "\n".join(diff)


def _integer(name: str, value: Any, minimum: int | None, what: str = "") -> int:
    """``value`` as an int >= ``minimum`` (None: any); an integral float (4.0) is accepted.

    Raises:
        TypeError: not a number.
        ValueError: not a whole number, or below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Trainer.{name} must be an integer; got {value!r} ({type(value).__name__}).")
    if not isinstance(value, numbers.Integral):
        if not math.isfinite(float(value)) or float(value) != math.floor(float(value)):
            raise ValueError(f"Trainer.{name} must be a whole number; got {value!r}.")
    result = int(value)
    if minimum is not None and result < minimum:
        raise ValueError(f"Trainer.{name} must be >= {minimum}{what}; got {value!r}.")
    return result


def _real(name: str, value: Any) -> float:
    """``value`` as a finite float.

    Raises:
        TypeError: not a number.
        ValueError: NaN or infinite.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Trainer.{name} must be a number; got {value!r} ({type(value).__name__}).")
    if not math.isfinite(float(value)):
        raise ValueError(f"Trainer.{name} must be finite; got {value!r}.")
    return float(value)


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``.

    Raises:
        TypeError: not a string.
        ValueError: not one of ``choices`` (the message lists them).
    """
    if not isinstance(value, str):
        raise TypeError(f"Trainer.{name} must be a string, one of {list(choices)}; got {value!r}.")
    if value not in choices:
        raise ValueError(f"Unknown Trainer.{name} {value!r}; choose one of {list(choices)}.")
    return value


def _does_not_apply(name: str, value: Any, setting: str, chosen: str, users: Sequence[str]) -> ValueError:
    """The error for a binding of ``Trainer.<name>`` that ``Trainer.<setting> = chosen`` does not use."""
    return ValueError(
        f"Trainer.{name} = {value!r} does not apply to Trainer.{setting} = {chosen!r} (only to "
        f"{', '.join(map(repr, users))}); remove the binding, or choose a Trainer.{setting} that uses it.")


@gin.configurable(module="hybrids", denylist=["device"])
class Trainer:
    """Optimisation loop shared by every hybrids objective (see the module docstring).

    Args:
        num_steps: total number of updates.
        batch_size: global batch size (split evenly over DDP ranks).
        lr: base learning rate (``'linear_increase'``: that of the first update).
        optimizer: ``'adam'``, ``'adamw'``, ``'adagrad'`` or ``'sgd'`` (torch.optim's; Adagrad's
            initial accumulator and its own lr_decay stay torch's 0: the schedule sets the rate).
        betas: Adam/AdamW betas, each in [0, 1) (None: (0.9, 0.999)).
        eps: Adam/AdamW/Adagrad epsilon, >= 0 (None: 1e-8; Adagrad 1e-10).
        weight_decay: >= 0; decoupled for AdamW, an L2 gradient term otherwise (None: 0; AdamW 0.01).
        momentum: SGD momentum in [0, 1) (None: 0.9).
        nesterov: SGD with Nesterov momentum (None: False; True needs momentum > 0).
        lr_schedule: ``'warmup_decay'``, ``'linear_increase'`` or ``'cosine'`` (module docstring).
        warmup_steps: linear warmup length in updates, before any schedule (0: none).
        lr_decay: ``'warmup_decay'`` only: per-update multiplicative decay, in (0, 1] (None: 1.0, none).
        lr_final: the learning rate of the last update: ``'linear_increase'`` (required, >= lr) and
            ``'cosine'`` (in [0, lr]; None: 0).
        grad_clip: maximum global gradient norm (``None``: no clipping).
        ema_decay: decay of the parameter EMA.
        seed: seeds the data order and, via ``seed_everything``, parameter initialisation.
        log_every: write averaged metrics (and a progress line) every this many updates.
        eval_every: call the eval hook every this many updates (0: never during training).
        sample_every: call the sample hook every this many updates (0: never during training).
        checkpoint_every: write a checkpoint every this many updates (and always at the end).
        keep_checkpoints: how many recent checkpoints to keep.
        bf16: run the objective under bfloat16 autocast (CUDA only).
        device: ``'cpu'``, ``'cuda'`` or ``'cuda:N'``; set by the runner, not by gin. Under DDP on
            CUDA each rank uses ``cuda:LOCAL_RANK``.

    The optimizer and schedule settings that the chosen optimizer or schedule does not use are
    None; binding one is an error (see the module docstring).

    Raises:
        TypeError: an argument of the wrong type (the message names ``Trainer.<argument>``).
        ValueError: an argument out of its range, a fractional count, an unknown optimizer or
            schedule, a setting bound that the optimizer or schedule does not use, or an
            unsupported or unavailable device.
    """

    def __init__(
        self,
        num_steps: int = 1_300_000,
        batch_size: int = 128,
        lr: float = 2e-4,
        optimizer: str = "adam",
        betas: tuple[float, float] | None = None,
        eps: float | None = None,
        weight_decay: float | None = None,
        momentum: float | None = None,
        nesterov: bool | None = None,
        lr_schedule: str = "warmup_decay",
        warmup_steps: int = 5000,
        lr_decay: float | None = None,
        lr_final: float | None = None,
        grad_clip: float | None = 1.0,
        ema_decay: float = 0.9999,
        seed: int = 0,
        log_every: int = 100,
        eval_every: int = 0,
        sample_every: int = 0,
        checkpoint_every: int = 10_000,
        keep_checkpoints: int = 3,
        bf16: bool = False,
        device: str | torch.device = "cpu",
    ):
        self.num_steps = _integer("num_steps", num_steps, 1)
        self.batch_size = _integer("batch_size", batch_size, 1)
        self.log_every = _integer("log_every", log_every, 1)
        self.checkpoint_every = _integer("checkpoint_every", checkpoint_every, 1)
        self.keep_checkpoints = _integer("keep_checkpoints", keep_checkpoints, 1)
        self.warmup_steps = _integer("warmup_steps", warmup_steps, 0, " (0 disables)")
        self.eval_every = _integer("eval_every", eval_every, 0, " (0 disables)")
        self.sample_every = _integer("sample_every", sample_every, 0, " (0 disables)")
        self.seed = _integer("seed", seed, None)
        if abs(self.seed) >= _SEED_LIMIT:
            raise ValueError(
                f"Trainer.seed must be between -{_SEED_LIMIT - 1} and {_SEED_LIMIT - 1}; got {seed!r}.")
        self.lr = _real("lr", lr)
        if not self.lr > 0:
            raise ValueError(f"Trainer.lr must be positive; got {lr!r}.")
        self.ema_decay = _real("ema_decay", ema_decay)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"Trainer.ema_decay must be in [0, 1); got {ema_decay!r}.")
        self._init_optimizer(optimizer, betas, eps, weight_decay, momentum, nesterov)
        self._init_schedule(lr_schedule, lr_decay, lr_final)
        if grad_clip is not None:
            if isinstance(grad_clip, bool) or not isinstance(grad_clip, numbers.Real):
                raise TypeError(f"Trainer.grad_clip must be a number or None (no clipping); got {grad_clip!r}.")
            if not grad_clip > 0:
                raise ValueError(f"Trainer.grad_clip must be positive or None (no clipping); got {grad_clip!r}.")
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        if not isinstance(bf16, bool):
            raise TypeError(f"Trainer.bf16 must be True or False; got {bf16!r}.")
        self.dist = DistInfo.from_env()
        self.device = self._resolve_device(device)
        if bf16 and self.device.type != "cuda":
            raise ValueError("Trainer.bf16 = True needs a CUDA device (--device=cuda); on CPU leave it False.")
        self.bf16 = bf16
        if self.batch_size % self.dist.world_size:
            raise ValueError(
                f"Trainer.batch_size = {self.batch_size} is the global batch and must be divisible by "
                f"the number of DDP processes ({self.dist.world_size})."
            )

    def _init_optimizer(self, optimizer: str, betas: tuple[float, float] | None, eps: float | None,
                        weight_decay: float | None, momentum: float | None, nesterov: bool | None) -> None:
        """Check and set ``optimizer`` and its settings; None takes the optimizer's default and a
        setting the optimizer does not use stays None (binding it is an error)."""
        self.optimizer = _choice("optimizer", optimizer, tuple(OPTIMIZERS))
        given = {"betas": betas, "eps": eps, "weight_decay": weight_decay, "momentum": momentum,
                 "nesterov": nesterov}
        for name, value in given.items():
            if value is not None and self.optimizer not in _OPTIMIZER_DEFAULTS[name]:
                raise _does_not_apply(name, value, "optimizer", self.optimizer, tuple(_OPTIMIZER_DEFAULTS[name]))
        betas, eps, weight_decay, momentum, nesterov = (_OPTIMIZER_DEFAULTS[name].get(self.optimizer)
                                                        if value is None else value for name, value in given.items())
        if betas is not None:
            if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
                raise TypeError(f"Trainer.betas must be a pair (beta1, beta2); got {betas!r}.")
            betas = (_real("betas", betas[0]), _real("betas", betas[1]))
            if not all(0.0 <= b < 1.0 for b in betas):
                raise ValueError(f"Trainer.betas must both be in [0, 1); got {given['betas']!r}.")
        if eps is not None:
            eps = _real("eps", eps)
            if eps < 0:
                raise ValueError(f"Trainer.eps must be >= 0; got {given['eps']!r}.")
        weight_decay = _real("weight_decay", weight_decay)
        if weight_decay < 0:
            raise ValueError(f"Trainer.weight_decay must be >= 0 (0: none); got {given['weight_decay']!r}.")
        if momentum is not None:
            momentum = _real("momentum", momentum)
            if not 0.0 <= momentum < 1.0:
                raise ValueError(f"Trainer.momentum must be in [0, 1) (0: plain SGD); got {given['momentum']!r}.")
        if nesterov is not None:
            if not isinstance(nesterov, bool):
                raise TypeError(f"Trainer.nesterov must be True or False; got {nesterov!r}.")
            if nesterov and momentum == 0:
                raise ValueError("Trainer.nesterov = True needs a momentum; Trainer.momentum is 0.")
        self.betas, self.eps, self.weight_decay, self.momentum, self.nesterov = (
            betas, eps, weight_decay, momentum, nesterov)

    def _init_schedule(self, lr_schedule: str, lr_decay: float | None, lr_final: float | None) -> None:
        """Check and set the learning-rate schedule and its settings (after ``lr``, ``num_steps``
        and ``warmup_steps``); a setting the schedule does not use stays None (binding it is an
        error)."""
        self.lr_schedule = _choice("lr_schedule", lr_schedule, LR_SCHEDULES)
        for name, value in (("lr_decay", lr_decay), ("lr_final", lr_final)):
            if value is not None and self.lr_schedule not in _SCHEDULE_USERS[name]:
                raise _does_not_apply(name, value, "lr_schedule", self.lr_schedule, _SCHEDULE_USERS[name])
        self.lr_decay = self.lr_final = None
        if self.lr_schedule == "warmup_decay":
            self.lr_decay = 1.0 if lr_decay is None else _real("lr_decay", lr_decay)
            if not 0.0 < self.lr_decay <= 1.0:
                raise ValueError(f"Trainer.lr_decay must be in (0, 1] (1.0: no decay); got {lr_decay!r}.")
        elif self.lr_schedule == "linear_increase":
            if lr_final is None:
                raise ValueError("Trainer.lr_schedule = 'linear_increase' needs Trainer.lr_final, the learning "
                                 "rate of the last update (Trainer.lr is that of the first).")
            self.lr_final = _real("lr_final", lr_final)
            if not self.lr_final > 0:
                raise ValueError(f"Trainer.lr_final must be positive; got {lr_final!r}.")
            if self.lr_final < self.lr:
                raise ValueError(
                    f"Trainer.lr_final = {lr_final!r} is below Trainer.lr = {self.lr!r}, but 'linear_increase' "
                    "raises the rate from Trainer.lr to Trainer.lr_final; swap them, or use "
                    "Trainer.lr_schedule = 'cosine' to lower it.")
        else:
            self.lr_final = 0.0 if lr_final is None else _real("lr_final", lr_final)
            if not 0.0 <= self.lr_final <= self.lr:
                raise ValueError(f"Trainer.lr_final of 'cosine' must be in [0, Trainer.lr = {self.lr!r}]; "
                                 f"got {lr_final!r}.")
            if self.num_steps <= self.warmup_steps:
                raise ValueError(
                    f"Trainer.lr_schedule = 'cosine' decays after the warmup, but Trainer.warmup_steps = "
                    f"{self.warmup_steps} leaves none of the Trainer.num_steps = {self.num_steps} updates; "
                    "lower Trainer.warmup_steps.")

    @property
    def optimizer_settings(self) -> dict[str, Any]:
        """The keyword arguments (besides ``lr``) of the torch optimizer: the settings it uses."""
        return {name: getattr(self, name) for name, defaults in _OPTIMIZER_DEFAULTS.items()
                if self.optimizer in defaults}

    def schedule_factor(self, update: int) -> float:
        """Multiplier of ``lr`` at update n (1-based) under the configured ``lr_schedule``."""
        if self.lr_schedule == "warmup_decay":
            return lr_factor(update, self.warmup_steps, self.lr_decay)
        shape = linear_increase_factor if self.lr_schedule == "linear_increase" else cosine_factor
        return shape(update, self.warmup_steps, self.lr_final / self.lr, self.num_steps)

    def _resolve_device(self, device: str | torch.device) -> torch.device:
        if isinstance(device, torch.device):
            spec = str(device) if device.type != "cpu" else "cpu"
        elif isinstance(device, str):
            spec = device.strip().lower()
        else:
            raise TypeError(f"device must be a string ({_DEVICE_CHOICES}); got {device!r}.")
        match = re.fullmatch(r"cpu|cuda(?::(\d+))?", spec)
        if match is None:
            raise ValueError(f"unsupported device {device!r} (--device); choose {_DEVICE_CHOICES}.")
        if spec == "cpu":
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available on this machine; "
                             "use --device=cpu.")
        count = torch.cuda.device_count()
        if match.group(1) is not None and int(match.group(1)) >= count:
            raise ValueError(f"device {device!r} requested but this machine has {count} CUDA device(s) "
                             f"(cuda:0 to cuda:{count - 1}); choose one of those or 'cuda'.")
        if self.dist.distributed:
            return torch.device("cuda", self.dist.local_rank)
        return torch.device(spec)

    def seed_everything(self) -> None:
        """Seed torch's global RNG with ``seed`` (call before building the model for identical init)."""
        torch.manual_seed(self.seed)

    # ----------------------------------------------------------------------------------------
    # Data order
    def batch_indices(self, step: int, num_examples: int) -> Tensor:
        """Indices of this rank's share of the global batch for update ``step + 1`` (0-based step).

        Epoch e = step // (N // B) uses ``randperm(N)`` from a generator seeded with seed and e;
        the global batch is its slice [j B, (j + 1) B), and rank r takes the contiguous r-th
        1/world of it.
        """
        steps_per_epoch = num_examples // self.batch_size
        if steps_per_epoch < 1:
            raise ValueError(
                f"the training set has {num_examples} examples, fewer than Trainer.batch_size = "
                f"{self.batch_size}; lower the batch size."
            )
        epoch, j = divmod(step, steps_per_epoch)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(num_examples, generator=generator)
        batch = perm[j * self.batch_size : (j + 1) * self.batch_size]
        local = self.batch_size // self.dist.world_size
        return batch[self.dist.rank * local : (self.dist.rank + 1) * local]

    # ----------------------------------------------------------------------------------------
    def _init_process_group(self) -> None:
        if self.dist.distributed and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)

    def _barrier(self) -> None:
        if self.dist.distributed:
            dist.barrier()

    def _checkpoint_state(self, step: int, model: nn.Module, ema: nn.Module, optimizer, scheduler) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "optimizer_name": self.optimizer,
            "scheduler": scheduler.state_dict(),
            "rng": rng,
            "gin_config": gin.operative_config_str(),
        }

    def _save_checkpoint(self, workdir: Path, state: dict) -> Path:
        """Write ``state`` atomically as ``ckpt_<step>.pt`` (rank 0) and delete the oldest beyond
        ``keep_checkpoints`` (never the one just written); returns its path (on every rank)."""
        ckpt_dir = workdir / CHECKPOINT_DIR
        path = ckpt_dir / f"ckpt_{state['step']:08d}.pt"
        self._barrier()
        if self.dist.is_main:
            atomic_torch_save(state, path)
            found = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _CKPT_RE.match(p.name)))
            for _, old in found[: -self.keep_checkpoints]:
                if old != path:
                    old.unlink()
        self._barrier()
        return path

    @staticmethod
    def _remove_stale_temp_files(ckpt_dir: Path) -> None:
        """Delete temporary files of checkpoint writes that a killed run left behind."""
        if not ckpt_dir.is_dir():
            return
        stale = sorted(p for p in ckpt_dir.iterdir() if _CKPT_TMP_RE.match(p.name) and p.is_file())
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            logging.info("removed %d temporary file(s) of interrupted checkpoint writes in %s: %s",
                         len(stale), ckpt_dir, ", ".join(p.name for p in stale))

    def _apply_configured_hyperparameters(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> list[str]:
        """Overwrite the hyperparameters restored from a checkpoint with the configured ones.

        After ``load_state_dict`` the optimizer's param groups and the scheduler's base learning
        rates are the checkpoint's; this sets the base learning rate and the optimizer's settings
        (``optimizer_settings``: betas, eps, weight decay, momentum, nesterov, whichever it uses) to
        the Trainer's values and the current learning rate to what the configured schedule gives for
        the next update. With an unchanged configuration every value is set to what it already was.

        Returns:
            Descriptions of the values that changed, e.g. ``"Trainer.lr: 0.001 -> 0.0005"``, and,
            when the schedule's settings (``lr_schedule``, ``warmup_steps``, ``lr_decay``,
            ``lr_final``, or ``num_steps`` for the schedules that span the run) changed the next
            update's learning rate, that rate before and after.
        """
        configured = {"initial_lr": self.lr, **self.optimizer_settings}
        restored = [(group["initial_lr"], group["lr"]) for group in optimizer.param_groups]
        changes: list[str] = []
        for group in optimizer.param_groups:
            for key, value in configured.items():
                old = group.get(key)
                old = tuple(old) if key == "betas" and old is not None else old
                if old != value:
                    change = f"Trainer.{'lr' if key == 'initial_lr' else key}: {old} -> {value}"
                    if change not in changes:
                        changes.append(change)
                group[key] = value
        scheduler.base_lrs = [self.lr for _ in optimizer.param_groups]
        # The same expression LambdaLR.get_lr evaluates: base_lr * lambda(last_epoch).
        lrs = [base * fn(scheduler.last_epoch) for fn, base in zip(scheduler.lr_lambdas, scheduler.base_lrs)]
        for group, lr, fn, (old_base, old_lr) in zip(optimizer.param_groups, lrs, scheduler.lr_lambdas, restored):
            group["lr"] = lr
            change = (f"learning rate of update {scheduler.last_epoch + 1} under the schedule "
                      f"(Trainer.lr_schedule and its settings): {old_lr:.6g} -> {lr:.6g}")
            if old_lr != old_base * fn(scheduler.last_epoch) and change not in changes:
                changes.append(change)
        scheduler._last_lr = list(lrs)
        return changes

    def _check_optimizer_name(self, ckpt_path: Path, state: dict[str, Any]) -> None:
        """Raise a ValueError when the checkpoint was written by another ``Trainer.optimizer``."""
        stored = state.get("optimizer_name", _LEGACY_OPTIMIZER)
        if stored != self.optimizer:
            raise ValueError(
                f"the checkpoint {ckpt_path} was written with Trainer.optimizer = {stored!r}, but the "
                f"configuration has Trainer.optimizer = {self.optimizer!r}; the state of {stored!r} cannot "
                f"be continued by {self.optimizer!r}. Resume with Trainer.optimizer = {stored!r} (the "
                f"checkpoint's), or train with {self.optimizer!r} from scratch in a new --workdir.")

    def _divergence_error(self, update: int, what: str, last_good: tuple[Path, int] | None) -> FloatingPointError:
        """The error for a non-finite loss, gradient or weights at ``update`` (1-based)."""
        if last_good is None:
            where = ("No checkpoint had been written yet, so rerunning in the same workdir starts "
                     "from scratch")
        else:
            where = (f"The last good checkpoint, {last_good[0]} (step {last_good[1]}), is intact: "
                     "rerun in the same workdir to resume from it")
        bindings, halved = f"--gin_bindings='Trainer.lr = {self.lr / 2:.6g}'", f"half of {self.lr:g}"
        if self.lr_final:  # a schedule towards lr_final: halve both, keeping their order
            bindings += f" --gin_bindings='Trainer.lr_final = {self.lr_final / 2:.6g}'"
            halved = f"halves of {self.lr:g} and {self.lr_final:g}"
        advice = f"with a smaller learning rate, e.g. {bindings} ({halved})"
        if self.grad_clip is None or self.grad_clip > 1.0:
            advice += ", or with gradient clipping, --gin_bindings='Trainer.grad_clip = 1.0'"
        return FloatingPointError(
            f"training diverged at update {update} (after {update - 1} completed updates): {what}. "
            f"Nothing from the diverged update was saved. {where} {advice}; values changed on resume "
            "replace the checkpoint's optimizer settings."
        )

    def _log_resume(self, ckpt_path: Path, state: dict, step: int, changes: list[str]) -> None:
        logging.info("resuming from checkpoint %s (step %d of Trainer.num_steps = %d)", ckpt_path, step,
                     self.num_steps)
        if changes:
            logging.warning(
                "resuming with optimizer settings that differ from the checkpoint's; the configured "
                "ones apply from update %d on (learning rate %.6g): %s", step + 1,
                self.lr * self.schedule_factor(step + 1), "; ".join(changes))
        stored = state.get("gin_config")
        if isinstance(stored, str) and stored:
            current = gin.operative_config_str() + "\n" + gin.config_str()
            diff = gin_config_diff(stored, current, f"{ckpt_path.name} (gin config)", "current gin config")
            if diff:
                logging.info("the gin configuration differs from the checkpoint's (the current one applies):\n%s",
                             diff)

    def fit(
        self,
        model: nn.Module,
        objective: Objective,
        data: Tensor,
        workdir: str | os.PathLike,
        *,
        labels: Tensor | None = None,
        eval_hook: StepHook | None = None,
        sample_hook: StepHook | None = None,
        writer: Any = None,
    ) -> nn.Module:
        """Train ``model`` on ``data`` until ``num_steps`` updates, resuming from ``workdir``.

        Resuming takes the newest usable checkpoint of ``workdir`` (newer unusable ones are
        reported and renamed to ``*.corrupt``), applies the configured hyperparameters over the
        checkpoint's optimizer state and logs how the gin configuration changed.

        Args:
            model: the model (its parameters are trained in place; moved to the device).
            objective: ``objective(model, batch) -> (loss, metrics)``.
            data: training examples ``[N, ...]`` (kept on the CPU; batches are moved).
            workdir: run directory; checkpoints go to ``workdir/checkpoints`` and the latest one
                is resumed automatically; metrics go to ``workdir/metrics.jsonl``.
            labels: optional ``[N]`` labels; batches are then ``(x, y)`` tuples.
            eval_hook: ``hook(step, ema_model) -> dict | None`` called every ``eval_every``
                updates on rank 0; returned scalars are logged.
            sample_hook: the same, every ``sample_every`` updates.
            writer: optional tensorboardX ``SummaryWriter`` (rank 0).

        Returns:
            The EMA model (on the device, eval mode).

        Raises:
            FloatingPointError: a loss or gradient norm is NaN or infinite (checked before the
                update), or the weights are not finite at a checkpoint (checked before writing it);
                the message names the update, the last good checkpoint and what to change.
            CheckpointError: the workdir holds checkpoints but none is usable.
        """
        workdir = Path(workdir)
        main = self.dist.is_main
        t_start = time.monotonic()
        self._init_process_group()
        if main:
            self._remove_stale_temp_files(workdir / CHECKPOINT_DIR)
        model = model.to(self.device)
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        optimizer = OPTIMIZERS[self.optimizer](model.parameters(), lr=self.lr, **self.optimizer_settings)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: self.schedule_factor(i + 1))

        step = 0
        last_good: tuple[Path, int] | None = None
        found = _newest_usable(workdir, self.device, log=main)
        if found is not None:
            ckpt_path, state, skipped = found
            self._check_optimizer_name(ckpt_path, state)
            load_weights(model, state["model"], ckpt_path)
            load_weights(ema, state["ema"], ckpt_path)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            changes = self._apply_configured_hyperparameters(optimizer, scheduler)
            torch.set_rng_state(state["rng"]["torch"].cpu())
            if "cuda" in state["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
            step = int(state["step"])
            last_good = (ckpt_path, step)
            self._barrier()  # every rank has read its files before rank 0 renames the unusable ones
            if main:
                for bad in skipped:
                    bad.replace(bad.with_name(bad.name + ".corrupt"))
                    logging.warning("renamed the unusable checkpoint %s to %s.corrupt (kept for inspection; "
                                    "delete it when not needed)", bad, bad.name)
                self._log_resume(ckpt_path, state, step, changes)
                if step >= self.num_steps:
                    logging.warning(
                        "nothing left to train: the checkpoint %s is at step %d and Trainer.num_steps = %d. "
                        "To train longer, set a larger Trainer.num_steps, e.g. "
                        "--gin_bindings='Trainer.num_steps = %d'.", ckpt_path, step, self.num_steps, 2 * step)
            del state
        elif main:
            logging.info("training from scratch: %d updates of batch %d in %s", self.num_steps,
                         self.batch_size, workdir)
        start_step = step
        if main:
            workdir.mkdir(parents=True, exist_ok=True)
            # Records logged after the resumed checkpoint belong to steps that are redone now.
            truncate_jsonl(workdir / METRICS_FILE, lambda r: r.get("step", 0) <= step)

        wrapped: nn.Module = _ObjectiveModule(model, objective)
        if self.dist.distributed:
            wrapped = nn.parallel.DistributedDataParallel(
                wrapped, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        sums: dict[str, float] = {}
        count = 0
        t_last = time.monotonic()
        model.train()
        while step < self.num_steps:
            idx = self.batch_indices(step, data.shape[0])
            x = data[idx].to(self.device, non_blocking=True)
            batch = x if labels is None else (x, labels[idx].to(self.device, non_blocking=True))
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss, metrics = wrapped(batch)
            if loss.ndim != 0:
                raise ValueError(f"the objective must return a scalar loss; got shape {tuple(loss.shape)}.")
            finite = bool(torch.isfinite(loss))
            if self.dist.distributed:  # every rank stops when one rank's loss is not finite
                flag = torch.tensor([0.0 if finite else 1.0], device=self.device)
                dist.all_reduce(flag)
                finite = not bool(flag.item() > 0)
            if not finite:
                shown = {k: _metric_value(v) for k, v in metrics.items()}
                value = loss.item()
                what = (f"the loss is {value}; metrics: {shown}" if not math.isfinite(value) else
                        f"the loss of another DDP process is not finite (here {value:.6g}; metrics: {shown})")
                raise self._divergence_error(step + 1, what, last_good)
            optimizer.zero_grad(set_to_none=True)
            loss.float().backward()
            # With max_norm = inf the gradient is only measured (its scale factor is exactly 1).
            max_norm = math.inf if self.grad_clip is None else self.grad_clip
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            if not bool(torch.isfinite(grad_norm)):
                raise self._divergence_error(
                    step + 1, f"the gradient norm is {float(grad_norm)} (the loss, {loss.item():.6g}, is "
                    "finite); the update was not applied", last_good)
            lr_now = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            ema_update(ema, model, self.ema_decay)
            step += 1

            # The optimised loss is logged as "loss"; an objective's own "loss" metric is the same
            # quantity and is not added twice.
            sums["loss"] = sums.get("loss", 0.0) + loss.item()
            for k, v in metrics.items():
                if k != "loss":
                    sums[k] = sums.get(k, 0.0) + _metric_value(v)
            count += 1
            if main and step % self.log_every == 0:
                now = time.monotonic()
                record = {k: v / count for k, v in sums.items()}
                rate = count / max(now - t_last, 1e-9)
                record.update(step=step, lr=lr_now, grad_norm=float(grad_norm), steps_per_s=rate)
                self._log(workdir, writer, step, record, prefix="train")
                logging.info("step %d/%d: loss %.6g, lr %.3g, %.3g steps/s, ETA %s", step, self.num_steps,
                             record["loss"], lr_now, rate, format_duration((self.num_steps - step) / rate))
                sums, count, t_last = {}, 0, now
            for every, hook, name in ((self.eval_every, eval_hook, "eval"),
                                      (self.sample_every, sample_hook, "sample")):
                if hook is not None and every and step % every == 0 and main:
                    out = hook(step, ema)
                    if out:
                        self._log(workdir, writer, step, dict(out, step=step), prefix=name)
            if step % self.checkpoint_every == 0 or step == self.num_steps:
                bad = _nonfinite_entries({"model": model.state_dict(), "ema": ema.state_dict()})
                if bad:
                    raise self._divergence_error(
                        step, f"the weights are not finite after this update ({_shorten(bad)}), so its "
                        "checkpoint was not written", last_good)
                path = self._save_checkpoint(workdir, self._checkpoint_state(step, model, ema, optimizer, scheduler))
                last_good = (path, step)
        if writer is not None:
            writer.flush()
        if main:
            logging.info("training finished at step %d/%d: %d updates in %s; last checkpoint: %s", step,
                         self.num_steps, step - start_step, format_duration(time.monotonic() - t_start),
                         last_good[0] if last_good else "none")
        return ema.eval()

    @staticmethod
    def _log(workdir: Path, writer: Any, step: int, record: dict[str, Any], prefix: str) -> None:
        append_jsonl(workdir / METRICS_FILE, dict(record, kind=prefix))
        if writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    writer.add_scalar(f"{prefix}/{key}", value, step)
