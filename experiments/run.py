r"""Train, evaluate or sample one gin configuration.

Usage::

    python -m experiments.run --gin_file=ncml_vp.gin [--gin_file=presets/cpu_small.gin] \
        [--gin_bindings='Trainer.lr = 1e-3'] --workdir=runs/ncml_vp --mode=train|eval|sample|all \
        [--data_dir=DIR] [--device=cpu|cuda|cuda:N] [--dry_run]

Launch with ``torchrun --nproc_per_node=N -m experiments.run ...`` for data-parallel training.
See :mod:`experiments.runner` for the modes and the workdir layout.

Progress (training lines, each evaluator and sampler with its wall time, where the results and
pictures went, the headline numbers) is logged with absl logging at INFO on stderr;
``--verbosity=-1`` keeps only warnings and errors. A bad input ends with one line
``error: <type>: <what to change>`` on stderr and exit status 2.
"""
from __future__ import annotations

import os
import sys
import traceback

from absl import app, flags

from experiments.runner import MODES, WorkdirBusyError, run_experiment

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Define the command-line flags (only when run as a program, so that importing this
    module next to the other entry points defines no flag twice)."""
    flags.DEFINE_multi_string(
        "gin_file", [], "Gin file: a name under gin/ (e.g. ncml_vp.gin) or a path; repeatable, later files override.")
    flags.DEFINE_multi_string(
        "gin_bindings", [], "Gin binding, e.g. 'Trainer.lr = 1e-3'; repeatable, applied after the files.")
    flags.DEFINE_string("workdir", None, "Run directory (default runs/<stem of the first gin file>).")
    flags.DEFINE_string("mode", "all", f"One of {', '.join(MODES)}.")
    flags.DEFINE_string("data_dir", None, "Dataset directory (default $HYBRIDS_DATA or ~/.cache/hybrids).")
    flags.DEFINE_string("device", "cpu", "cpu, cuda or cuda:N.")
    flags.DEFINE_bool("dry_run", False, "Print the resolved configuration and exit.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        run_experiment(FLAGS.gin_file, FLAGS.gin_bindings, workdir=FLAGS.workdir, mode=FLAGS.mode,
                       data_dir=FLAGS.data_dir or os.environ.get("HYBRIDS_DATA"), device=FLAGS.device,
                       dry_run=FLAGS.dry_run)
    except (ValueError, TypeError, OSError, FloatingPointError, WorkdirBusyError) as err:
        # Bad input (flags, gin files, bindings, data, workdir, device) and failures the user can
        # act on. The traceback helps with bugs; the last line repeats the message that says what
        # to change.
        traceback.print_exc()
        print(f"error: {type(err).__name__}: {err}".replace("\n", " "), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
