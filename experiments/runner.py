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
``config.gin`` (every parsed binding), ``checkpoints/ckpt_<step>.pt``, tensorboardX event files,
``metrics.jsonl``, ``results.json``, ``samples/*.png`` (``samples/step_<N>/`` during training).
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fcntl
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import gin
import torch
from torch import nn

from hybrids.hooks.base import Hook, hook_keys
from hybrids.io import atomic_write_text, flatten_results, read_json, save_samples, to_jsonable, write_json
from hybrids.training import DistInfo, Trainer, load_ema

REPO_ROOT = Path(__file__).resolve().parents[1]
GIN_DIR = REPO_ROOT / "gin"
MODES = ("train", "eval", "sample", "all")
MODE_STAGES = {"train": ("train",), "eval": ("eval",), "sample": ("sample",),
               "all": ("train", "eval", "sample")}
RESULTS_FILE = "results.json"


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


# ---------------------------------------------------------------------------------------------
# gin files and bindings
def available_gin_files() -> list[str]:
    """Every ``*.gin`` under the repository's ``gin/`` directory, relative to it."""
    return sorted(str(p.relative_to(GIN_DIR)) for p in GIN_DIR.rglob("*.gin"))


def resolve_gin_file(name: str) -> Path:
    """Find a gin file: first in the repository's ``gin/`` (with or without ``.gin``), then as a path.

    Raises:
        ValueError: listing the available gin files when ``name`` matches none.
    """
    for candidate in (GIN_DIR / name, GIN_DIR / f"{name}.gin", Path(name).expanduser()):
        if candidate.is_file():
            return candidate.resolve()
    available = available_gin_files()
    raise ValueError(
        f"gin file {name!r} not found in {GIN_DIR} nor as a path. Available gin files: "
        + (", ".join(available) if available else "(none)")
    )


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


def check_num_levels(objective: Any, dataset: Any) -> None:
    """Fail clearly when ``objective.num_levels`` disagrees with the dataset's.

    Raises:
        ValueError: naming the gin binding to change.
    """
    levels = getattr(objective, "num_levels", None)
    if levels is None or levels == dataset.num_levels:
        return
    cls = type(objective).__name__
    if dataset.num_levels is None:
        fix = f"`{cls}.num_levels = None` (the data are continuous)"
    else:
        fix = f"`{cls}.num_levels = {dataset.num_levels}`"
    raise ValueError(
        f"objective {cls} has num_levels = {levels} but dataset {dataset.name!r} has num_levels = "
        f"{dataset.num_levels}; set {fix} in the gin file or with --gin_bindings."
    )


def numeric_scalars(results: dict[str, Any]) -> dict[str, float]:
    """TensorBoard scalars of evaluator results: numeric leaves, keyed ``<hook key>/<path>``."""
    return {k: float(v) for k, v in flatten_results(results, sep="/").items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class _Run:
    """State of one invocation: the experiment, its data and where it writes."""

    def __init__(self, workdir: Path, trainer: Trainer, exp: Experiment, data_dir: str | None):
        self.workdir = workdir
        self.trainer = trainer
        self.exp = exp
        self.train_data = _load(exp, "train", data_dir)
        self.test_data = _load(exp, "test", data_dir)
        check_num_levels(exp.objective, self.train_data)
        self.device = trainer.device

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.trainer.seed + 1)

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        model.eval()
        return {key: to_jsonable(hook(model, self.test_data, device=self.device, generator=self._generator()))
                for key, hook in zip(hook_keys(self.exp.evaluators), self.exp.evaluators)}

    def sample(self, model: nn.Module, directory: Path) -> list[Path]:
        model.eval()
        written = []
        for key, hook in zip(hook_keys(self.exp.samplers), self.exp.samplers):
            out = hook(model, self.test_data, device=self.device, generator=self._generator())
            written += save_samples(directory, key, out, self.train_data.num_levels)
        return written

    def eval_hook(self, step: int, model: nn.Module) -> dict[str, float]:
        return numeric_scalars(self.evaluate(model))

    def sample_hook(self, step: int, model: nn.Module) -> dict[str, float]:
        self.sample(model, self.workdir / "samples" / f"step_{step:08d}")
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

    start = time.time()
    dist_info = DistInfo.from_env()
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


def _run_stages(run: "_Run", workdir: Path, mode: str, paths: Sequence[Path],
                gin_bindings: Sequence[str], dist_info: DistInfo, start: float) -> dict[str, Any] | None:
    """The stages of ``mode`` for :func:`run_experiment` (the workdir is locked on rank 0)."""
    trainer, exp = run.trainer, run.exp
    if dist_info.is_main:
        atomic_write_text(workdir / "config.gin", gin.config_str())
        atomic_write_text(workdir / "operative_config.gin", gin.operative_config_str())
    stages = MODE_STAGES[mode]
    meta = {
        "uuid": uuid.uuid4().hex,
        "gin_files": [str(p) for p in paths],
        "gin_bindings": list(gin_bindings),
        "mode": mode,
        "device": str(trainer.device),
        "dataset": run.train_data.name,
    }
    results: dict[str, Any] = {}
    writer = None
    try:
        if "train" in stages:
            if dist_info.is_main:
                from tensorboardX import SummaryWriter

                writer = SummaryWriter(logdir=str(workdir))
            trainer.fit(exp.model, exp.objective, run.train_data.data, workdir,
                        labels=run.train_data.labels,
                        eval_hook=run.eval_hook if exp.evaluators else None,
                        sample_hook=run.sample_hook if exp.samplers else None, writer=writer)
        if not dist_info.is_main:
            return None
        model = exp.model.to(trainer.device)
        step = load_ema(model, workdir)
        if "eval" in stages:
            results = run.evaluate(model)
            if writer is not None:
                for key, value in numeric_scalars(results).items():
                    writer.add_scalar(f"eval/{key}", value, step)
        if "sample" in stages:
            run.sample(model, workdir / "samples")
    finally:
        if writer is not None:
            writer.close()
    meta.update(step=step, wall_time_s=time.time() - start)
    atomic_write_text(workdir / "operative_config.gin", gin.operative_config_str())
    return _write_results(workdir, meta, results, stages)
