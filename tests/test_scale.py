"""experiments/scale.py: a stopped scale run must not leave its training processes behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# scale.py's run loop, with every training replaced by a process that records its pid and sleeps
LAUNCHER = """
import sys
sys.path.insert(0, {experiments!r})
import scale
scale.command = lambda arm, processes, run_dir: [sys.executable, "-c",
    f"import os, time; open({{str(run_dir / 'pid')!r}}, 'w').write(str(os.getpid())); time.sleep(120)"]
scale.run_all(scale.Path({runs!r}), ["0", "1"])
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_the_runs_in_flight(tmp_path):
    """A torchrun outliving ``timeout`` shared its GPUs with the next attempt and wrote into its directory."""
    runs = tmp_path / "runs"
    code = LAUNCHER.format(experiments=str(ROOT / "experiments"), runs=str(runs))
    launcher = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    pid_files = [runs / "baseline-1gpu" / "pid", runs / "rff-seed-defaults-1gpu" / "pid"]
    deadline = time.monotonic() + 60
    while not all(p.is_file() and p.read_text() for p in pid_files):
        assert time.monotonic() < deadline, "the 1-GPU runs did not start"
        time.sleep(0.2)
    children = [int(p.read_text()) for p in pid_files]
    assert all(alive(pid) for pid in children)
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in children)
