"""Where a result came from, and writing it so that a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

TRACKED_PACKAGES = ("qra", "qra-pennylane", "qra-qiskit", "torch", "transformers", "pennylane", "qiskit", "qiskit-aer")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write to a temporary file beside ``path`` and rename it into place (atomic on POSIX).

    The file gets the mode any other new file would (0644 under the usual umask 022), not the 0600
    of the temporary file: results are meant to be read by others.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """JSON, written atomically (:func:`write_text_atomic`)."""
    return write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


#: the source tree qra runs from (qra/experiment/provenance.py is three levels down)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def git_commit() -> str | None:
    """The commit of the source tree qra runs from, with ``+dirty`` when it has local changes.

    ``QRA_GIT_COMMIT``, where set, says it instead: a copy shipped to a GPU machine may have no git
    metadata, or a stale copy of it that names an older commit.
    """
    if os.environ.get("QRA_GIT_COMMIT"):
        return os.environ["QRA_GIT_COMMIT"]
    root = PROJECT_ROOT
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def _program_name() -> str:
    """``qra``, ``python -m qra`` or ``python experiments/sweep.py``: how to run the command again."""
    program = Path(sys.argv[0])
    if program.name == "__main__.py":
        return f"python -m {program.parent.name}"
    if program.suffix == ".py":
        return f"python {_relative_to_project(program) if program.is_absolute() else program}"
    return program.name


def _relative_to_project(path: Path) -> Path:
    """A script's path inside this project (no machine paths in records), else its name alone."""
    try:
        return path.relative_to(PROJECT_ROOT)
    except ValueError:
        return Path(path.name)


def provenance(device: torch.device) -> dict[str, Any]:
    """Command, time, device, versions and commit: what a results file must say about itself."""
    return {
        "command": " ".join([_program_name(), *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "versions": versions(),
        "commit": git_commit(),
    }
