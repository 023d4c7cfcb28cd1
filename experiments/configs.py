"""Where the gin files are: the repository's ``gin/`` directory, or its installed copy.

The gin files live at the top of the repository (``gin/ncml_vp.gin``, ``gin/presets/*.gin``) and
ship with the package as the data package ``experiments.gin_configs`` (setup.cfg maps it onto
``gin/`` with ``package_dir``, so the repository keeps one copy). :func:`gin_dir` finds them in the
three ways the code runs:

* an installed wheel (``pip install .``): ``site-packages/experiments/gin_configs/``, next to this
  module;
* a checkout (``python -m experiments.run`` from the repository root) or an editable install
  (``pip install -e .``): ``experiments/`` is the repository's, so ``<repository>/gin/``.

The installed copy is looked for first: in site-packages, ``experiments/../gin`` is gin-config's
own package, which holds no gin file.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["REPO_ROOT", "GIN_DIR", "gin_dir", "available_gin_files", "resolve_gin_file"]

# The directory that holds the ``experiments`` package: the repository root for a checkout or an
# editable install, site-packages for an installed wheel. On PYTHONPATH, it makes a subprocess's
# ``python -m experiments.run`` import this copy of the package, from any working directory.
REPO_ROOT = Path(__file__).resolve().parents[1]

_PACKAGED_GIN_DIR = Path(__file__).resolve().parent / "gin_configs"  # installed (wheel)
_SOURCE_GIN_DIR = REPO_ROOT / "gin"                                  # checkout, editable install


def gin_dir() -> Path:
    """The directory of the gin files: the installed copy if there is one, else ``<repository>/gin``.

    Returns ``<repository>/gin`` when neither exists, so that errors name where the files were
    expected.
    """
    for candidate in (_PACKAGED_GIN_DIR, _SOURCE_GIN_DIR):
        if candidate.is_dir() and any(candidate.glob("*.gin")):
            return candidate
    return _SOURCE_GIN_DIR


GIN_DIR = gin_dir()


def available_gin_files() -> list[str]:
    """Every ``*.gin`` under the gin directory (:data:`GIN_DIR`), relative to it."""
    return sorted(p.relative_to(GIN_DIR).as_posix() for p in GIN_DIR.rglob("*.gin"))


def resolve_gin_file(name: str) -> Path:
    """Find a gin file: first in the gin directory (with or without ``.gin``), then as a path.

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
