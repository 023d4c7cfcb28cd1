"""Shared pytest fixtures: gin is cleared around every test, torch runs single-threaded."""
from __future__ import annotations

import os
from pathlib import Path

import gin
import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)

# CI runs the property tests with a fixed seed (a red CI must be reproducible); locally hypothesis
# explores new examples on every run.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist.npz"


@pytest.fixture(autouse=True)
def _clear_gin():
    """Bindings leak between tests under pytest unless cleared (dopamine's gin tests do this)."""
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(autouse=True, scope="session")
def _private_data_cache(tmp_path_factory):
    """Caches the library writes by default (classifiers, dataset statistics) go to a temporary
    directory, never into the user's ~/.cache/hybrids."""
    previous = os.environ.get("HYBRIDS_DATA")
    os.environ["HYBRIDS_DATA"] = str(tmp_path_factory.mktemp("hybrids_data"))
    yield
    if previous is None:
        os.environ.pop("HYBRIDS_DATA", None)
    else:
        os.environ["HYBRIDS_DATA"] = previous


@pytest.fixture
def mnist_path() -> Path:
    """Path of the shared MNIST npz; skips the test with a reason when it is absent."""
    path = Path(os.environ.get("HYBRIDS_TEST_MNIST", SHARED_MNIST))
    if not path.exists():
        pytest.skip(f"needs MNIST at {path}: set HYBRIDS_TEST_MNIST to an mnist.npz (keys x_train, y_train, x_test, y_test)")
    return path
