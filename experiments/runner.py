"""What ``python -m experiments.run`` does, as importable functions (the CLI lives in run.py).

A run is one gin configuration: ``experiment.model``, ``experiment.objective``,
``experiment.dataset``, ``experiment.evaluators`` and ``experiment.samplers`` name what to build,
``Trainer.*`` how to train it. Modes:

* ``train``: ``Trainer.fit`` (resumes from the workdir's latest checkpoint), with the evaluators and
  samplers called every ``Trainer.eval_every`` / ``Trainer.sample_every`` updates on the EMA model;
* ``eval``: load the latest checkpoint's EMA weights, run the evaluators on the test split, merge
  their outputs into ``results.json`` (one entry per evaluator name);
* ``sample``: the same weights, run the samplers, write ``samples/<sampler>_<key>.png``;
* ``all``: train, eval, sample.

Workdir layout: ``operative_config.gin`` (after the models are built and again at the end),
``config.gin`` (every parsed binding), ``checkpoints/ckpt_<step>.pt``, tensorboardX event files
(scalars, and the sample grids as images ``samples/<file stem>``), ``metrics.jsonl``,
``results.json``, ``samples/*.png`` (``samples/step_<N>/`` during training).

``config.gin`` and ``operative_config.gin`` are written (atomically) only once the run is known to
fit the workdir: its latest checkpoint has the built model's parameter names and shapes, ``eval``
and ``sample`` have a checkpoint, the training set holds a batch. A run that fails before, e.g. on
a checkpoint of another configuration, leaves the files of the run that wrote the workdir as they
were; :func:`hybrids.runs.load_run` reads them back.

Progress goes to absl logging (INFO): each evaluator's and sampler's start and finish with its wall
time, the Trainer's lines, and at the end the paths of ``results.json`` and of the sample pictures
and up to ``HEADLINE_LINES`` numeric results.

``Experiment`` and the gin configurable ``experiment`` live in :mod:`hybrids.runs` (so that the
library can rebuild a run without importing ``experiments``) and are re-exported here.
"""
from __future__ import annotations

import contextlib
import difflib
import fcntl
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import gin
import numpy as np
import torch
from absl import logging
from torch import Tensor, nn

from hybrids.hooks.base import hook_keys
from hybrids.io import (
    atomic_write_text, flatten_results, image_grid, read_json, save_samples, to_jsonable, write_json)
from hybrids.runs import Experiment, experiment
from hybrids.training import (
    CHECKPOINT_DIR, DistInfo, Trainer, latest_checkpoint, load_checkpoint, load_ema, load_weights)

# The gin directory and its lookup live in experiments.configs (checkout, editable install or
# installed wheel); they stay importable from here.
from experiments.configs import GIN_DIR, REPO_ROOT, available_gin_files, resolve_gin_file  # noqa: F401

MODES = ("train", "eval", "sample", "all")
MODE_STAGES = {"train": ("train",), "eval": ("eval",), "sample": ("sample",),
               "all": ("train", "eval", "sample")}
RESULTS_FILE = "results.json"


# ---------------------------------------------------------------------------------------------
# gin files and bindings
def _registered_configurables() -> list[str]:
    # gin has no public listing of its registry; fall back to no suggestions if it changes.
    try:
        selectors = [str(key) for key, _ in gin.config._REGISTRY.items()]
    except (AttributeError, TypeError):
        return []
    return sorted({name for sel in selectors for name in (sel, sel.rsplit(".", 1)[-1])})


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str] = ()) -> list[Path]:
    """Resolve and parse gin files and bindings (``skip_unknown=False``).

    Returns:
        The resolved gin file paths.

    Raises:
        ValueError: unknown gin file (lists the available ones), or an unknown configurable or
            parameter (gin's message plus a hint).
    """
    if not gin_files:
        raise ValueError("give at least one --gin_file. Available gin files: " + ", ".join(available_gin_files()))
    paths = [resolve_gin_file(name) for name in gin_files]
    gin.add_config_file_search_path(str(GIN_DIR))
    try:
        gin.parse_config_files_and_bindings([str(p) for p in paths], list(gin_bindings), skip_unknown=False)
    except (ValueError, KeyError, ImportError, SyntaxError) as err:
        words = str(err).replace("'", " ").replace('"', " ").split()
        close = sorted({m for w in words for m in difflib.get_close_matches(w, _registered_configurables(), n=3)})
        hint = (
            "Hint: check the spelling of the configurable and parameter; a configurable is known "
            "only after its module is imported, so the gin file must start with `import hybrids.<module>` "
            "lines for what it binds."
        )
        if close:
            hint += " Similar registered names: " + ", ".join(close) + "."
        raise ValueError(f"gin rejected the configuration ({type(err).__name__}): {err}\n{hint}") from err
    return paths


# ---------------------------------------------------------------------------------------------
def _load(exp: Experiment, split: str, data_dir: str | None):
    num = exp.num_train_examples if split == "train" else exp.num_test_examples
    if callable(exp.dataset):
        return exp.dataset(split=split, data_dir=data_dir, num_examples=num)
    from hybrids.data import load_dataset

    return load_dataset(exp.dataset, split=split, data_dir=data_dir, num_examples=num)


def check_num_levels(objective: Any, dataset: Any, model: Any = None) -> None:
    """Fail clearly when ``objective.num_levels`` or ``model.num_levels`` disagrees with the dataset's.

    Args:
        objective: the objective; checked when it has a ``num_levels`` attribute that is not None.
        dataset: the training split (an ``ArrayDataset``; ``num_levels`` None for continuous data).
        model: the model; checked when it has a ``num_levels`` attribute that is not None.

    Raises:
        ValueError: naming the gin binding to change.
    """
    for role, owner in (("objective", objective), ("model", model)):
        levels = getattr(owner, "num_levels", None)
        if levels is None or levels == dataset.num_levels:
            continue
        cls = type(owner).__name__
        if dataset.num_levels is None:
            fix = f"`{cls}.num_levels = None` (the data are continuous)" if role == "objective" else (
                f"a continuous-data configuration of {cls} (the data are continuous)")
        else:
            fix = f"`{cls}.num_levels = {dataset.num_levels}`"
        raise ValueError(
            f"{role} {cls} has num_levels = {levels} but dataset {dataset.name!r} has num_levels = "
            f"{dataset.num_levels}; set {fix} in the gin file or with --gin_bindings (or bind the "
            "NUM_LEVELS macro that the row files use)."
        )


def numeric_scalars(results: dict[str, Any]) -> dict[str, float]:
    """TensorBoard scalars of evaluator results: numeric leaves, keyed ``<hook key>/<path>``."""
    return {k: float(v) for k, v in flatten_results(results, sep="/").items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def check_device(device: str | torch.device) -> None:
    """Fail clearly on a ``--device`` that torch cannot parse or that is neither CPU nor CUDA.

    Raises:
        ValueError: naming the value and the choices.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {str(device)!r} (--device); use cpu, cuda or cuda:N (N a GPU index).")


def check_workdir(workdir: Path) -> None:
    """Make sure ``workdir`` is a writable directory or can be created as one (nothing is created).

    Raises:
        ValueError: naming the path and the fix when it is an existing file, lies under a file, or
            cannot be written.
    """
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir} is an existing file, not a directory; pass a directory "
                         "path (e.g. --workdir=runs/NAME), or move the file away.")
    existing = workdir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--workdir {workdir} cannot be created: {existing} is a file, not a directory; "
                         "pass a --workdir whose parents are directories.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        where = "" if existing == workdir else f" (its nearest existing parent {existing} is not)"
        raise ValueError(f"--workdir {workdir} is not writable{where}: {type(err).__name__}: "
                         f"{err.strerror or err}; fix the permissions or pass a --workdir you can write "
                         "to.") from None


@contextlib.contextmanager
def _binding_hint(gin_bindings: Sequence[str]) -> Iterator[None]:
    """Re-raise a TypeError or ValueError of building the configuration with a hint on bindings."""
    try:
        yield
    except (TypeError, ValueError) as err:
        given = ("; --gin_bindings given: " + ", ".join(repr(b) for b in gin_bindings)) if gin_bindings else (
            "; no --gin_bindings were given, so look at the values in the gin files")
        message = (f"{err}\nHint: if a binding caused this, check the value types of the bindings (numbers "
                   f"unquoted, strings quoted, tuples in parentheses, objects as @Name()){given}.")
        # gin re-raises under a proxy subclass, so the builtin type is rebuilt.
        raise (TypeError if isinstance(err, TypeError) else ValueError)(message) from err


def check_checkpoint_fits(model: nn.Module, workdir: Path) -> Path | None:
    """Check that the workdir's latest checkpoint fits ``model`` (same parameter names and shapes),
    without changing ``model``.

    Returns:
        The latest checkpoint, or None when the workdir holds none.

    Raises:
        ValueError: the checkpoint was written by another configuration (``load_weights``' message).
    """
    path = latest_checkpoint(workdir)
    if path is None:
        return None
    saved = load_checkpoint(path)["model"]
    expected = model.state_dict()
    if set(saved) != set(expected) or any(tuple(saved[k].shape) != tuple(v.shape) for k, v in expected.items()
                                          if hasattr(saved[k], "shape") and hasattr(v, "shape")):
        load_weights(model, saved, path)  # raises its error naming the path and what to do
    return path


def _write_configs(workdir: Path) -> None:
    """``config.gin`` and ``operative_config.gin`` (each written atomically)."""
    atomic_write_text(workdir / "config.gin", gin.config_str())
    atomic_write_text(workdir / "operative_config.gin", gin.operative_config_str())


def format_duration(seconds: float) -> str:
    """``'42s'``, ``'3m07s'`` or ``'1h02m03s'``."""
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class _Run:
    """State of one invocation: the experiment, its data and where it writes."""

    def __init__(self, workdir: Path, trainer: Trainer, exp: Experiment, data_dir: str | None):
        self.workdir = workdir
        self.trainer = trainer
        self.exp = exp
        self.train_data = _load(exp, "train", data_dir)
        self.test_data = _load(exp, "test", data_dir)
        check_num_levels(exp.objective, self.train_data, exp.model)
        self.device = trainer.device
        self.writer: Any = None  # a tensorboardX SummaryWriter on rank 0, set by _run_stages
        self.written: list[Path] = []  # sample pictures written by this invocation

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.trainer.seed + 1)

    def evaluate(self, model: nn.Module, step: int | None = None) -> dict[str, Any]:
        """Run every evaluator on the test split; logs each one's start and wall time."""
        model.eval()
        results = {}
        for key, hook in zip(hook_keys(self.exp.evaluators), self.exp.evaluators):
            logging.info("evaluator %s: started%s", key, "" if step is None else f" (step {step})")
            began = time.time()
            results[key] = to_jsonable(hook(model, self.test_data, device=self.device, generator=self._generator()))
            logging.info("evaluator %s: finished in %.1fs", key, time.time() - began)
        return results

    def sample(self, model: nn.Module, directory: Path, step: int | None = None) -> list[Path]:
        """Run every sampler and write its pictures into ``directory`` (and to TensorBoard as
        ``samples/<file stem>`` when a writer exists); logs each one's start and wall time."""
        model.eval()
        written = []
        for key, hook in zip(hook_keys(self.exp.samplers), self.exp.samplers):
            logging.info("sampler %s: started%s", key, "" if step is None else f" (step {step})")
            began = time.time()
            out = hook(model, self.test_data, device=self.device, generator=self._generator())
            paths = save_samples(directory, key, out, self.train_data.num_levels)
            logging.info("sampler %s: finished in %.1fs; wrote %s", key, time.time() - began,
                         ", ".join(str(p) for p in paths))
            if self.writer is not None:
                for value, path in zip(out.values(), paths):
                    self.writer.add_image(f"samples/{path.stem}", self._picture(value, path),
                                          0 if step is None else step, dataformats="HWC")
            written += paths
        self.written += written
        return written

    def _picture(self, value: Tensor, path: Path) -> np.ndarray:
        """``[H, W, C]`` uint8 picture of a sampler output: the grid of integer levels, or the
        scatter plot PNG just written for 2-D points."""
        if value.ndim == 4 and not value.dtype.is_floating_point:
            levels = value.detach().cpu()
            num_levels = self.train_data.num_levels or int(levels.max().item()) + 1
            return image_grid(levels, num_levels)
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    def eval_hook(self, step: int, model: nn.Module) -> dict[str, float]:
        return numeric_scalars(self.evaluate(model, step))

    def sample_hook(self, step: int, model: nn.Module) -> dict[str, float]:
        self.sample(model, self.workdir / "samples" / f"step_{step:08d}", step)
        return {}


def _write_results(workdir: Path, meta: dict[str, Any], results: dict[str, Any], stages: Sequence[str]) -> dict:
    path = workdir / RESULTS_FILE
    old = read_json(path) if path.exists() else {}
    merged = dict(old)
    merged.update(meta)
    merged["uuid"] = old.get("uuid", meta["uuid"])
    merged["results"] = {**old.get("results", {}), **results}
    merged["stages_completed"] = sorted(set(old.get("stages_completed", [])) | set(stages))
    write_json(path, merged)
    return merged


HEADLINE_LINES = 12


def _log_summary(workdir: Path, merged: dict[str, Any], written: Sequence[Path]) -> None:
    """Log where the results and pictures are, and up to ``HEADLINE_LINES`` numeric results."""
    logging.info("results: %s (step %s, %s)", workdir / RESULTS_FILE, merged.get("step"),
                 format_duration(merged.get("wall_time_s", 0.0)))
    by_dir: dict[Path, list[str]] = {}
    for path in written:
        by_dir.setdefault(path.parent, []).append(path.name)
    for directory, names in by_dir.items():
        logging.info("samples: %s/{%s}", directory, ", ".join(names))
    numbers = [(k, v) for k, v in flatten_results(merged.get("results", {})).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for key, value in numbers[:HEADLINE_LINES]:
        logging.info("  %s = %.6g", key, value)
    if len(numbers) > HEADLINE_LINES:
        logging.info("  ... and %d more numbers in %s", len(numbers) - HEADLINE_LINES, workdir / RESULTS_FILE)


def run_experiment(
    gin_files: Sequence[str],
    gin_bindings: Sequence[str] = (),
    *,
    workdir: str | os.PathLike | None = None,
    mode: str = "all",
    data_dir: str | None = None,
    device: str = "cpu",
    dry_run: bool = False,
) -> dict[str, Any] | None:
    """Parse the gin configuration and run the requested mode (see the module docstring).

    Progress goes to absl logging (INFO): each evaluator's and sampler's start and wall time, the
    Trainer's lines, and at the end the paths of ``results.json`` and of the sample pictures and
    the headline numbers.

    Args:
        gin_files: gin file names (looked up in ``gin/``) or paths; later files override.
        gin_bindings: extra bindings, applied after the files.
        workdir: run directory (default ``runs/<stem of the first gin file>``).
        mode: one of ``MODES``.
        data_dir: passed to ``load_dataset`` (None: ``$HYBRIDS_DATA`` or ``~/.cache/hybrids``).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        dry_run: print the resolved configuration and return None without building anything.

    Returns:
        The content of ``results.json`` (None for a dry run and on DDP ranks other than 0).

    Raises:
        ValueError: bad mode, device, gin file, binding or workdir (an existing file, or not
            writable), mismatched ``num_levels``, a checkpoint in the workdir written by another
            configuration; a ValueError or TypeError of building the configuration is re-raised
            with a hint on the value types of the bindings.
        FileNotFoundError: ``eval`` or ``sample`` in a workdir without a checkpoint.
        WorkdirBusyError: another run holds the workdir.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
    paths = parse_gin(gin_files, gin_bindings)
    workdir = Path(workdir) if workdir else Path("runs") / paths[0].stem
    if dry_run:
        print(f"# gin files: {', '.join(map(str, paths))}\n# workdir: {workdir}\n# mode: {mode}\n"
              f"# device: {device}\n# data_dir: {data_dir}\n")
        print(gin.config_str())
        return None

    check_device(device)
    check_workdir(workdir)
    start = time.time()
    dist_info = DistInfo.from_env()
    with _binding_hint(gin_bindings):
        trainer = Trainer(device=device)
        trainer.seed_everything()
        exp = experiment()
    run = _Run(workdir, trainer, exp, data_dir)
    with workdir_lock(workdir) if dist_info.is_main else contextlib.nullcontext():
        return _run_stages(run, workdir, mode, paths, gin_bindings, dist_info, start)


class WorkdirBusyError(RuntimeError):
    """Another process is running in the workdir."""


@contextlib.contextmanager
def workdir_lock(workdir: Path):
    """Hold an exclusive lock on ``workdir`` (``workdir/.lock``, released when the process ends,
    even by a crash), so that two runs never write one workdir at once."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusyError(
                f"workdir {workdir} is in use by another run; wait for it to finish or pass "
                "another --workdir.") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_before_writing(run: "_Run", workdir: Path, stages: Sequence[str]) -> None:
    """What must hold before ``config.gin`` / ``operative_config.gin`` are (over)written: the
    workdir's latest checkpoint fits the model, eval/sample have a checkpoint, and the training set
    holds at least one batch."""
    checkpoint = check_checkpoint_fits(run.exp.model, workdir)
    if "train" in stages:
        run.trainer.batch_indices(0, len(run.train_data.data))
    elif checkpoint is None:
        raise FileNotFoundError(
            f"no checkpoint in {workdir / CHECKPOINT_DIR}; train first (--mode=train or --mode=all).")


def _run_stages(run: "_Run", workdir: Path, mode: str, paths: Sequence[Path],
                gin_bindings: Sequence[str], dist_info: DistInfo, start: float) -> dict[str, Any] | None:
    """The stages of ``mode`` for :func:`run_experiment` (the workdir is locked on rank 0).

    The configuration files are written only once the run is known to fit the workdir (see
    :func:`_check_before_writing`), so a run that fails early leaves a previous run's files as they
    were.
    """
    trainer, exp = run.trainer, run.exp
    stages = MODE_STAGES[mode]
    if dist_info.is_main:
        _check_before_writing(run, workdir, stages)
        _write_configs(workdir)
        logging.info("run: %s (%s) on %s, dataset %s, workdir %s", " + ".join(p.name for p in paths),
                     mode, trainer.device, run.train_data.name, workdir)
    meta = {
        "uuid": uuid.uuid4().hex,
        "gin_files": [str(p) for p in paths],
        "gin_bindings": list(gin_bindings),
        "mode": mode,
        "device": str(trainer.device),
        "dataset": run.train_data.name,
    }
    results: dict[str, Any] = {}
    try:
        if dist_info.is_main:
            from tensorboardX import SummaryWriter

            run.writer = SummaryWriter(logdir=str(workdir))
        if "train" in stages:
            trainer.fit(exp.model, exp.objective, run.train_data.data, workdir,
                        labels=run.train_data.labels,
                        eval_hook=run.eval_hook if exp.evaluators else None,
                        sample_hook=run.sample_hook if exp.samplers else None, writer=run.writer)
        if not dist_info.is_main:
            return None
        model = exp.model.to(trainer.device)
        step = load_ema(model, workdir)
        if "eval" in stages:
            results = run.evaluate(model, step)
            for key, value in numeric_scalars(results).items():
                run.writer.add_scalar(f"eval/{key}", value, step)
        if "sample" in stages:
            run.sample(model, workdir / "samples", step)
    finally:
        if run.writer is not None:
            run.writer.close()
            run.writer = None
    meta.update(step=step, wall_time_s=time.time() - start)
    atomic_write_text(workdir / "operative_config.gin", gin.operative_config_str())
    merged = _write_results(workdir, meta, results, stages)
    _log_summary(workdir, merged, run.written)
    return merged
