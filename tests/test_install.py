"""A real (non-editable) install: the wheel ships the gin files and ``python -m experiments.run``
finds them from any directory.

The slow test builds a wheel of the repository, installs it into a fresh virtual environment and
runs the smoke-scale NCML-VP row from a temporary directory. How it stays fast, offline and honest:

* The wheel is built from a copy of the source tree (``pip wheel --no-deps --no-build-isolation``):
  pip builds in the tree it is given, so building the repository itself would leave ``build/`` and
  ``*.egg-info`` in it, and stale files in ``build/lib`` would end up in the wheel. Without build
  isolation the build uses this environment's setuptools and wheel (the ``[test]`` extra installs
  them); where they are missing or too old, it falls back to pip's isolated build.
* The virtual environment is created without pip and without system site-packages. A ``.pth`` file
  in it lists this interpreter's site-packages directories as plain paths, so torch and the other
  dependencies are reused from this environment (no network, no reinstall), whether that is the
  system's or a virtual environment's (``--system-site-packages`` would expose the *base*
  interpreter's site-packages, not those of the virtual environment CI runs in). Plain path lines
  do not run the ``.pth`` files of those directories, so the editable install's import hook
  (``__editable__.hybrids-*.pth``) is not loaded and the repository is never on ``sys.path``;
  the venv's own site-packages comes first anyway. The test checks that ``experiments`` and the gin
  directory are imported from the venv.
* Every command runs with ``python -I`` (no PYTHONPATH, no user site-packages, no current directory
  on ``sys.path``) from a directory outside the repository.
"""
from __future__ import annotations

import configparser
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from experiments import configs

REPO_ROOT = Path(__file__).resolve().parents[1]
# Top-level entries left out of the copy that the wheel is built from (besides __pycache__,
# *.egg-info and virtual environments anywhere).
_NOT_COPIED = {".git", "build", "dist", "runs", ".pytest_cache", ".hypothesis", ".ci-venv", "venv", ".venv"}


# ---------------------------------------------------------------------------------------------
# fast checks
def test_setup_cfg_lists_every_package():
    """setup.cfg lists the packages (the gin data package is mapped, so ``find:`` cannot be used):
    every package under hybrids/ and experiments/ must be there, or the wheel would miss it."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {".".join(init.parent.relative_to(REPO_ROOT).parts)
             for top in ("hybrids", "experiments") for init in (REPO_ROOT / top).rglob("__init__.py")}
    assert found - listed == set(), "add these packages to [options] packages in setup.cfg"
    assert "experiments.gin_configs" in listed
    assert cfg["options"]["package_dir"].split() == ["experiments.gin_configs", "=", "gin"]


def test_gin_dir_in_a_checkout():
    assert configs.GIN_DIR == REPO_ROOT / "gin"
    assert configs.REPO_ROOT == REPO_ROOT
    assert {"ncml_vp.gin", "presets/cpu_small.gin", "presets/smoke.gin"} <= set(configs.available_gin_files())


def test_gin_dir_prefers_the_installed_copy(tmp_path, monkeypatch):
    packaged = tmp_path / "gin_configs"
    monkeypatch.setattr(configs, "_PACKAGED_GIN_DIR", packaged)
    assert configs.gin_dir() == REPO_ROOT / "gin"  # no installed copy: the repository's
    (packaged / "presets").mkdir(parents=True)
    assert configs.gin_dir() == REPO_ROOT / "gin"  # a directory without gin files does not count
    (packaged / "row.gin").write_text("")
    assert configs.gin_dir() == packaged


# ---------------------------------------------------------------------------------------------
# the real install
def _ignore(directory: str, names: list[str]) -> set[str]:
    top = Path(directory) == REPO_ROOT
    return {name for name in names
            if (top and name in _NOT_COPIED) or name == "__pycache__" or name.endswith(".egg-info")
            or Path(directory, name, "pyvenv.cfg").exists()}


def _can_build_without_isolation() -> bool:
    """setuptools >= 64 (pyproject.toml's build requirement) with a bdist_wheel (its own from 70.1)."""
    def version(name: str) -> tuple[int, ...] | None:
        try:
            return tuple(int(p) for p in importlib.metadata.version(name).split(".")[:2] if p.isdigit())
        except importlib.metadata.PackageNotFoundError:
            return None

    setuptools_version = version("setuptools")
    if setuptools_version is None or setuptools_version < (64,):
        return False
    return setuptools_version >= (70, 1) or version("wheel") is not None


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"$ {' '.join(proc.args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.mark.slow
def test_installed_wheel_runs_from_any_directory(tmp_path):
    elsewhere = tmp_path / "elsewhere"  # the working directory of every command: not the repository
    elsewhere.mkdir()

    # 1. A wheel, built from a copy of the source tree.
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=_ignore)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source]
    if _can_build_without_isolation():
        build.insert(5, "--no-build-isolation")
    _check(_run(build, elsewhere))
    (wheel,) = wheels.glob("hybrids-*.whl")

    # 2. A fresh venv that reuses this environment's dependencies through a .pth of plain paths.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site_dir = Path(_check(_run(
        [python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], elsewhere)).stdout.strip())
    parent_sites = [p for p in dict.fromkeys(sys.path)
                    if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (site_dir / "_parent_environment.pth").write_text("".join(f"{p}\n" for p in parent_sites))
    _check(_run([python, "-I", "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                 wheel], elsewhere))

    # 3. The venv imports the wheel's copy, and finds the gin files in it.
    probe = _check(_run([python, "-I", "-c",
                         "import json, experiments, experiments.configs as c, experiments.runner as r; "
                         "print(json.dumps([experiments.__file__, str(c.GIN_DIR), str(r.GIN_DIR), str(r.REPO_ROOT)]))"],
                        elsewhere))
    experiments_file, gin_dir, runner_gin_dir, repo_root = map(Path, json.loads(probe.stdout.strip().splitlines()[-1]))
    assert experiments_file.is_relative_to(site_dir.resolve()), experiments_file
    assert gin_dir == runner_gin_dir == site_dir.resolve() / "experiments" / "gin_configs"
    assert (gin_dir / "ncml_vp.gin").is_file() and (gin_dir / "presets" / "smoke.gin").is_file()
    # The directory that cells.py puts on PYTHONPATH for its `python -m experiments.run` subprocesses.
    assert (repo_root / "experiments" / "run.py").is_file()

    # 4. The README's command at smoke scale, from outside the repository.
    workdir = tmp_path / "run"
    proc = _check(_run([python, "-I", "-m", "experiments.run", "--gin_file=ncml_vp.gin",
                        "--gin_file=presets/cpu_small.gin", "--gin_file=presets/smoke.gin",
                        f"--workdir={workdir}"], elsewhere))
    results = (workdir / "results.json").read_text()
    assert "pi_perturbation_eval" in results, proc.stderr[-3000:]  # the evaluators ran
    assert [Path(f).relative_to(gin_dir).as_posix() for f in json.loads(results)["gin_files"]] == [
        "ncml_vp.gin", "presets/cpu_small.gin", "presets/smoke.gin"]
    assert not (elsewhere / "runs").exists()

    # 5. An unknown gin file lists the installed ones.
    proc = _run([python, "-I", "-m", "experiments.run", "--gin_file=nonexistent.gin",
                 f"--workdir={tmp_path / 'unknown'}"], elsewhere, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "gin file 'nonexistent.gin' not found in" in last and str(gin_dir) in last, last
    assert "Available gin files:" in last and "ncml_vp.gin" in last and "presets/cpu_small.gin" in last, last
