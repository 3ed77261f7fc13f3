"""For scripts that start training processes of their own (experiments/sweep.py, experiments/scale.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Collection


def stop_children_on_sigterm(children: Collection[subprocess.Popen]) -> None:
    """On SIGTERM (e.g. from ``timeout``), stop every process in ``children`` too, then exit 128 + 15.

    A child left running outlives its launcher: the next attempt at the same run would share its
    GPUs and write into the same directory.  ``children`` is read when the signal arrives, so the
    caller may keep adding to it.  The caller must poll its children rather than block in
    ``Popen.wait()``: waiting here for a child the interrupted code is waiting on would deadlock.
    """

    def stop(signum: int, frame: object) -> None:
        for process in children:
            process.terminate()
        for process in children:
            process.wait()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
