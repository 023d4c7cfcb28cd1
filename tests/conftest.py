"""Shared pytest fixtures: gin is cleared around every test, torch runs single-threaded."""
from __future__ import annotations

import os
from pathlib import Path

import gin
import pytest
import torch

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist.npz"


@pytest.fixture(autouse=True)
def _clear_gin():
    """Bindings leak between tests under pytest unless cleared (dopamine's gin tests do this)."""
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture
def mnist_path() -> Path:
    """Path of the shared MNIST npz; skips the test with a reason when it is absent."""
    path = Path(os.environ.get("HYBRIDS_TEST_MNIST", SHARED_MNIST))
    if not path.exists():
        pytest.skip(f"needs MNIST at {path} (../shared/data/mnist.npz beside the checkout)")
    return path
