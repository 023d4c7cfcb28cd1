"""Grid and table runs stop the cell they run when killed (experiments.cells)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.runner import REPO_ROOT

PARENT = """
import subprocess, sys
from experiments.cells import stop_cells_on_sigterm
stop_cells_on_sigterm()
child = "import os, time; open({pid!r}, 'w').write(str(os.getpid())); time.sleep(120)"
subprocess.run([sys.executable, "-c", child])
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_stops_the_running_cell(tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    parent = subprocess.Popen([sys.executable, "-c", PARENT.format(pid=str(pid_file))], env=env)
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline and parent.poll() is None, "the child never started"
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert _alive(child)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 128 + signal.SIGTERM
    assert not _alive(child), "the cell's process outlived the killed grid run"
