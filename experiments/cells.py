"""Run one gin configuration as a cell of a grid or a row of a table (used by ablate and reproduce).

A cell runs ``python -m experiments.run`` in a subprocess (gin state stays apart) or
:func:`experiments.runner.run_experiment` in this process; it is done when its ``results.json``
records every stage of the mode, which is what makes grids and tables resumable.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

import gin
from absl import logging

from experiments.runner import MODE_STAGES, REPO_ROOT, RESULTS_FILE, format_duration, run_experiment
from hybrids.io import atomic_write_text, flatten_results, read_json

__all__ = ["Progress", "cell_done", "flatten_results", "last_error_line", "run_cell", "run_cell_in_process",
           "stop_cells_on_sigterm"]


class Progress:
    """Logs (absl, INFO) the progress of a sequence of cells or rows: which one runs, how many of
    how many are done, and an ETA = mean wall time of the ones run so far x the number remaining.

    Args:
        total: how many will run.
        noun: what they are called in the log lines (``'cell'``, ``'row'``).
        clock: seconds since some fixed point (default ``time.monotonic``).
    """

    def __init__(self, total: int, noun: str, clock: Callable[[], float] = time.monotonic):
        self.total, self.noun, self._clock = int(total), noun, clock
        self.durations: list[float] = []
        self._began: float | None = None

    def eta(self) -> float | None:
        """Seconds left: mean time of the finished ones x the remaining count (None before the first)."""
        if not self.durations:
            return None
        return sum(self.durations) / len(self.durations) * (self.total - len(self.durations))

    def _eta_text(self) -> str:
        eta = self.eta()
        return "ETA unknown until one finishes" if eta is None else f"ETA {format_duration(eta)}"

    def start(self, name: str) -> None:
        """Log that ``name`` starts running."""
        self._began = self._clock()
        logging.info("%s %d/%d running: %s (%d of %d done; %s)", self.noun, len(self.durations) + 1,
                     self.total, name, len(self.durations), self.total, self._eta_text())

    def finish(self, name: str, status: str) -> None:
        """Log that ``name`` ended with ``status``, with its wall time and the updated ETA."""
        now = self._clock()
        took = now - (self._began if self._began is not None else now)
        self.durations.append(took)
        self._began = None
        logging.info("%s %s: %s in %s (%d of %d done; %s)", self.noun, name, status, format_duration(took),
                     len(self.durations), self.total, self._eta_text())


def cell_done(workdir: Path, mode: str) -> bool:
    """True when ``workdir/results.json`` records every stage of ``mode``."""
    path = workdir / RESULTS_FILE
    if not path.exists():
        return False
    try:
        done = set(read_json(path).get("stages_completed", []))
    except (json.JSONDecodeError, OSError):
        return False
    return set(MODE_STAGES[mode]) <= done


def last_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:500]


def stop_cells_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so that ``kill PID`` of a grid or table run also stops the
    cell it is running: ``subprocess.run`` kills its child when interrupted by an exception."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def run_cell(gin_files: Sequence[Path], bindings: Sequence[str], workdir: Path, mode: str,
             device: str, data_dir: str | None) -> tuple[int, str]:
    """Run one cell with ``python -m experiments.run`` in a subprocess.

    Returns:
        ``(returncode, stderr)``; the output is also kept in ``workdir/run.log``.
    """
    cmd = [sys.executable, "-m", "experiments.run", f"--workdir={workdir}", f"--mode={mode}",
           f"--device={device}"]
    cmd += [f"--gin_file={p}" for p in gin_files]
    cmd += [f"--gin_bindings={b}" for b in bindings]
    if data_dir:
        cmd.append(f"--data_dir={data_dir}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(workdir / "run.log", f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, proc.stderr


def run_cell_in_process(gin_files: Sequence[Path], bindings: Sequence[str], workdir: Path, mode: str,
                        device: str, data_dir: str | None) -> tuple[int, str]:
    """Run one cell with :func:`experiments.runner.run_experiment` in this process (gin is cleared
    before and after; faster, but a crash or a leak in one cell affects the others).

    Returns:
        ``(0, "")`` or ``(1, "error: <type>: <message>")``; the error is also kept in ``run.log``.
    """
    gin.clear_config()
    try:
        run_experiment([str(p) for p in gin_files], bindings, workdir=workdir, mode=mode,
                       data_dir=data_dir, device=device)
    except Exception as err:  # noqa: BLE001 -- a failing cell is recorded, the grid goes on
        message = f"error: {type(err).__name__}: {err}".replace("\n", " ")
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(workdir / "run.log", traceback.format_exc() + message + "\n")
        return 1, message
    finally:
        gin.clear_config()
    return 0, ""
