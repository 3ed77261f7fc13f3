"""experiments/scale.py: runs one at a time with the same effective batch, and leaves nothing behind when stopped."""

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
scale.command = lambda arm, processes, effective_batch, run_dir: [sys.executable, "-c",
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
    pid_file = runs / "baseline-1gpu" / "pid"
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the first run did not start"
        time.sleep(0.2)
    children = [int(pid_file.read_text())]
    assert all(alive(pid) for pid in children)
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in children)


def test_runs_go_one_at_a_time_with_the_same_effective_batch(tmp_path, monkeypatch):
    """Each pair: 1 GPU × B, then 2 GPUs × B/2 under torchrun; a finished run is skipped, a broken one redone."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import scale

    monkeypatch.setattr(scale, "stop_children_on_sigterm", lambda children: None)  # leave pytest's handler be

    runs = tmp_path / "runs"
    (runs / "baseline-1gpu").mkdir(parents=True)
    (runs / "baseline-1gpu" / "metrics.json").write_text("{}")
    (runs / "baseline-2gpu").mkdir()
    (runs / "baseline-2gpu" / "leftover").write_text("from an interrupted attempt")
    log = tmp_path / "order.txt"
    fake = (
        "import os, sys; run_dir = sys.argv[sys.argv.index('--output-dir') + 1]; "
        f"open({str(log)!r}, 'a').write(' '.join([os.path.basename(run_dir), os.environ['CUDA_VISIBLE_DEVICES'], "
        "str(len(os.listdir(run_dir))), *sys.argv[1:]]) + chr(10)); "
        "open(os.path.join(run_dir, 'metrics.json'), 'w').write('{}')"
    )
    real_command = scale.command
    monkeypatch.setattr(scale, "command", lambda *a: [sys.executable, "-c", fake, *real_command(*a)[1:]])
    scale.run_all(runs, ["3", "5"])
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [line[:3] for line in lines] == [
        ["baseline-2gpu", "3,5", "1"],  # only its launch.log: the leftover was removed
        ["baseline-b256-1gpu", "3", "1"],
        ["baseline-b256-2gpu", "3,5", "1"],
        ["rff-seed-defaults-1gpu", "3", "1"],
        ["rff-seed-defaults-2gpu", "3,5", "1"],
    ]
    for line in lines:
        gpus = len(line[1].split(","))
        effective = 256 if line[0].startswith("baseline-b256") else 32
        assert line[line.index("--batch-size") + 1] == str(effective // gpus)
        assert ("--nproc_per_node=2" in line) == (gpus == 2)
