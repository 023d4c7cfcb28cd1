"""What a gin configuration builds, and a finished run's trained model back from its workdir.

:func:`experiment` is the gin configurable every row file binds (``experiment.model = @NCPN()``,
``experiment.objective = ...``); ``python -m experiments.run`` calls it to build a run, and
:func:`load_run` calls it to rebuild a run from its workdir::

    import hybrids

    run = hybrids.load_run("runs/ncml_vp_small")   # EMA weights of the latest checkpoint
    print(run.step, run.objective_name, run.dataset_name, run.sde)
    run.model                                      # the NCPN, eval mode, on the CPU

It is registered with gin under the module name ``experiments`` (selector
``experiments.experiment``), so gin files and saved ``config.gin`` files that bind ``experiment.*``
keep working whether or not they ``import experiments.runner``.

A workdir (see ``experiments/runner.py``) holds ``config.gin`` (``gin.config_str()`` of the run,
with its ``import`` lines) and ``checkpoints/ckpt_<step>.pt`` (state_dicts ``model`` and ``ema``,
``step``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import gin
import torch
from torch import nn

from hybrids.hooks.base import Hook
from hybrids.io import read_json
from hybrids.sdes import SDE
from hybrids.training import CHECKPOINT_DIR, latest_checkpoint, load_checkpoint, load_weights

__all__ = ["CONFIG_FILE", "Experiment", "Run", "checkpoint_steps", "experiment", "load_run"]

CONFIG_FILE = "config.gin"
_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
# The module-level state of gin that `gin.clear_config` resets (gin 0.5); load_run restores it.
_GIN_STATE = ("_CONFIG", "_SINGLETONS", "_IMPORTS", "_OPERATIVE_CONFIG")


@dataclasses.dataclass
class Experiment:
    """What a gin configuration builds: see :func:`experiment`."""

    model: nn.Module
    objective: Callable
    dataset: str | Callable
    evaluators: tuple[Hook, ...]
    samplers: tuple[Hook, ...]
    num_train_examples: int | None
    num_test_examples: int | None


@gin.configurable(module="experiments")
def experiment(
    model: nn.Module = gin.REQUIRED,
    objective: Callable = gin.REQUIRED,
    dataset: str | Callable = gin.REQUIRED,
    evaluators: Sequence[Hook] = (),
    samplers: Sequence[Hook] = (),
    num_train_examples: int | None = None,
    num_test_examples: int | None = None,
) -> Experiment:
    """The pieces of one run, bound in gin (``experiment.model = @NCPN()`` etc.).

    Args:
        model: the model (a ``NoiseConditionalModel``).
        objective: ``objective(model, batch) -> (loss, metrics)``.
        dataset: a name for ``hybrids.data.load_dataset``, or a callable
            ``dataset(split=..., data_dir=..., num_examples=...) -> ArrayDataset``.
        evaluators: hooks ``hook(model, test_data, *, device, generator) -> dict`` (JSON-able).
        samplers: hooks with the same signature returning ``dict[str, Tensor]`` samples.
        num_train_examples: keep only this many training examples (None: all).
        num_test_examples: keep only this many test examples (None: all).
    """
    return Experiment(model, objective, dataset, tuple(evaluators), tuple(samplers),
                      num_train_examples, num_test_examples)


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run, rebuilt from its workdir by :func:`load_run`.

    Attributes:
        model: the model with the checkpoint's weights, eval mode, parameters frozen
            (``requires_grad`` False; call ``model.requires_grad_(True)`` to train it further).
        sde: the model's SDE (``model.sde``), else the objective's (``objective.sde``), else None.
        config_text: the text of the workdir's ``config.gin``.
        objective_name: the objective's class name (e.g. ``'NCML'``).
        dataset_name: the dataset binding (e.g. ``'digits'``); for a dataset callable, the name
            the run recorded in ``results.json``, else the callable's name.
        step: the checkpoint's step (completed updates).
        workdir: the run directory.
    """

    model: nn.Module
    sde: SDE | None
    config_text: str
    objective_name: str
    dataset_name: str
    step: int
    workdir: Path


def checkpoint_steps(workdir: str | os.PathLike) -> dict[int, Path]:
    """The checkpoints of a workdir by step: ``{step: workdir/checkpoints/ckpt_<step>.pt}``, sorted."""
    ckpt_dir = Path(workdir) / CHECKPOINT_DIR
    if not ckpt_dir.is_dir():
        return {}
    found = {int(m.group(1)): p for p in ckpt_dir.iterdir() if (m := _CKPT_RE.match(p.name))}
    return dict(sorted(found.items()))


@contextlib.contextmanager
def _private_gin_config() -> Iterator[None]:
    """Run the body on an empty gin config, then put back the global config found on entry
    (bindings, imports, singletons, operative config and the lock)."""
    config = gin.config
    try:
        saved = {name: getattr(config, name) for name in _GIN_STATE}
        saved = {name: (set(value) if isinstance(value, set) else
                        {k: dict(v) if isinstance(v, dict) else v for k, v in value.items()})
                 for name, value in saved.items()}
    except AttributeError:  # another gin version: the config is only cleared (see load_run)
        saved = None
    locked = gin.config_is_locked()
    gin.clear_config()
    try:
        yield
    finally:
        gin.clear_config()
        if saved is not None:
            for name, value in saved.items():
                getattr(config, name).update(value)
        else:
            logging.getLogger(__name__).warning(
                "load_run could not save gin's global config (unknown gin version); it was cleared.")
        if locked:
            config._set_config_is_locked(True)


def _trainer_seed() -> int:
    try:
        return int(gin.query_parameter("Trainer.seed"))
    except ValueError:
        return 0


def _dataset_name(dataset: str | Callable, workdir: Path) -> str:
    if isinstance(dataset, str):
        return dataset
    results = workdir / "results.json"
    if results.exists():
        with contextlib.suppress(ValueError, OSError):
            name = read_json(results).get("dataset")
            if name:
                return str(name)
    return getattr(dataset, "__name__", type(dataset).__name__)


def _sde(model: nn.Module, objective: Any) -> SDE | None:
    for owner in (model, objective):
        sde = getattr(owner, "sde", None)
        if isinstance(sde, SDE):
            return sde
    return None


def load_run(workdir: str | os.PathLike, *, ema: bool = True, step: int | None = None,
             device: str | torch.device = "cpu") -> Run:
    """Rebuild a run's model from its workdir and load a checkpoint's weights.

    Parses the workdir's ``config.gin`` (``skip_unknown=False``; its ``import`` lines are
    executed, so the modules of the run's configurables must be importable), seeds torch with the
    run's ``Trainer.seed`` as the runner does, builds ``experiment.model`` and
    ``experiment.objective``, and loads the EMA weights (or, with ``ema=False``, the raw trained
    weights) of the latest checkpoint (the newest intact one, as the runner takes) or of
    ``checkpoints/ckpt_<step>.pt``.

    Gin and torch's global state are left as found: the config is parsed into a private, empty
    global gin config and the one present before the call (bindings, imports, operative config,
    lock) is put back afterwards, also on errors; the model is built under
    ``torch.random.fork_rng``, so the caller's CPU random stream is not advanced.

    Args:
        workdir: the run directory written by ``python -m experiments.run``.
        ema: load the EMA weights (what the runner evaluates and samples) rather than the raw
            weights of the last update.
        step: the checkpoint's step (None: the latest checkpoint).
        device: where the model is put.

    Returns:
        A :class:`Run` (model in eval mode with frozen parameters, on ``device``).

    Raises:
        FileNotFoundError: the workdir does not exist, or holds no ``config.gin`` or no
            checkpoint (the messages name the paths and what to do).
        ValueError: ``step`` names no checkpoint (the message lists the steps available), the
            config no longer parses, or the checkpoint does not fit the rebuilt model.
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"load_run: workdir {workdir} does not exist (or is not a directory); "
                                "pass the --workdir of a run of `python -m experiments.run`.")
    config_path = workdir / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"load_run: {config_path} not found, so {workdir} is not the workdir of a run (or its run "
            "failed before training); pass the --workdir of a run of `python -m experiments.run`.")
    steps = checkpoint_steps(workdir)
    if not steps:
        raise FileNotFoundError(
            f"load_run: no checkpoint in {workdir / CHECKPOINT_DIR} (files ckpt_<step>.pt); train first "
            "(python -m experiments.run --mode=train or --mode=all with this --workdir).")
    if step is None:
        path = latest_checkpoint(workdir)  # the newest intact one, as the runner's
    elif int(step) in steps:
        path = steps[int(step)]
    else:
        raise ValueError(f"load_run: no checkpoint of step {step} in {workdir / CHECKPOINT_DIR}; steps "
                         f"available: {', '.join(map(str, steps))}.")
    config_text = config_path.read_text()

    with _private_gin_config():
        try:
            gin.parse_config(config_text, skip_unknown=False)
        except (ValueError, KeyError, ImportError, SyntaxError) as err:
            raise ValueError(
                f"load_run: gin rejected {config_path} ({type(err).__name__}: {err}); the configurables "
                "it binds must exist and their modules must be importable (it was written by another "
                "version of the code?).") from err
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_trainer_seed())
            exp = experiment()
    model = exp.model
    state = load_checkpoint(path, map_location="cpu")
    load_weights(model, state["ema" if ema else "model"], path)
    model = model.to(device).eval().requires_grad_(False)
    return Run(model=model, sde=_sde(model, exp.objective), config_text=config_text,
               objective_name=getattr(exp.objective, "__name__", type(exp.objective).__name__),
               dataset_name=_dataset_name(exp.dataset, workdir), step=int(state["step"]),
               workdir=workdir)
