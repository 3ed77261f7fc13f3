"""A run directory: what it holds, with one reader and one writer.

A run directory holds:

- ``config.json``  — every setting (:class:`~qra.experiment.config.TrainConfig` under ``"config"``), the model,
  the data, versions, device and git commit
- ``metrics.json`` — accuracy, F1, speed, peak GPU memory, attention entropy/distance, robustness,
  quantum evaluations; its presence means the run finished training
- ``model/``       — the trained model (safetensors) and tokenizer; ``qra.load_patched`` reloads it
- ``checkpoints/`` — Trainer checkpoints, for ``--resume`` (deleted when the run completes, unless kept)
- ``failed.json``  — present when the run stopped on an error it cannot recover from (a non-finite loss,
  logits or attention): the reason; reports list such runs apart and never average them in
- ``predictions.npz`` — how the trained model did on every test review, in the test set's order: ``correct``
  (whether it classified the review right) and ``test_set_digest`` (SHA-256 of the reviews' texts in order,
  so that paired tests can check two runs saw the same reviews in the same order).  McNemar's test needs
  no more; the labels and predicted classes are left out, since together they would be the data set's
  labels, which stay out of results.  A few kB per run.  Records of earlier versions hold ``label`` and
  ``predicted`` (and ``logits``, ``review_hash``) instead; :meth:`RunDirectory.predictions` reads both
- ``preparation.json`` — what the warm-ups before fine-tuning did (angle-scale calibration, distillation),
  written before training starts, so that a run resumed from a checkpoint still reports it
- ``train_log.jsonl``, ``train.log`` and, when asked for, ``profile.txt``

Every other module reads and writes these files through :class:`RunDirectory`, so their layout
(and the translation of records written by earlier versions) lives here only.  Writes are atomic.
A results folder may hold a hand-written ``NOTES.md`` (:func:`read_notes`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import BASELINE, TrainConfig
from .provenance import write_json_atomic

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
FAILED_FILE = "failed.json"
PREDICTIONS_FILE = "predictions.npz"
PREPARATION_FILE = "preparation.json"
PREDICTION_ARRAYS = ("correct", "test_set_digest", "label", "predicted", "logits", "review_hash")
#: what the Trainer writes last into a checkpoint: a checkpoint without it is incomplete (e.g. the disk filled up)
CHECKPOINT_COMPLETE_FILE = "trainer_state.json"
NOTES_FILE = "NOTES.md"
#: settings that cannot change the trained model: resuming a run may change them, every other setting must agree
RESUME_FREE_SETTINGS = ("output_dir", "device", "eval_batch_size", "robustness", "profile_steps", "attention_samples",
                        "save_steps", "keep_checkpoints", "kernel_implementation")  # fmt: skip
#: keys that earlier versions wrote under another name in ``config.json["config"]``
RENAMED_CONFIG_KEYS = {"fm_params": "featuremap_params"}


def test_set_digest(texts: Sequence[str]) -> bytes:
    """SHA-256 of the test reviews in order: equal digests mean two runs were tested on the same reviews."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode()
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.digest()


def same_test_set(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Whether two runs' stored predictions are over the same reviews in the same order (either record format)."""
    if a["correct"].shape != b["correct"].shape:
        return False
    for key in ("test_set_digest", "review_hash"):
        if key in a and key in b:
            return bool(np.array_equal(a[key], b[key]))
    return False


@dataclass(frozen=True)
class RunDirectory:
    """One run's folder.  Reading never changes it; each write replaces one file atomically."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def is_finished(self) -> bool:
        """Training finished and was measured: ``metrics.json`` is written last, at the end of a run."""
        return (self.path / METRICS_FILE).is_file()

    @property
    def is_failed(self) -> bool:
        """The run stopped on an error it recorded (``failed.json``); its results must not be used."""
        return (self.path / FAILED_FILE).is_file()

    @property
    def has_record(self) -> bool:
        return (self.path / CONFIG_FILE).is_file()

    @property
    def is_readable(self) -> bool:
        """A finished run whose settings are on record too, and that did not fail (what reports read)."""
        return self.is_finished and self.has_record and not self.is_failed

    def failure(self) -> dict[str, Any] | None:
        """What ``failed.json`` says (``{"reason": ..., "step": ...}``), or None."""
        file = self.path / FAILED_FILE
        return json.loads(file.read_text()) if file.is_file() else None

    def write_failure(self, reason: str, **details: Any) -> None:
        write_json_atomic(self.path / FAILED_FILE, {"reason": reason, **details})

    def clear_failure(self) -> None:
        """A new attempt starts: the previous attempt's failure no longer describes the run."""
        (self.path / FAILED_FILE).unlink(missing_ok=True)

    def checkpoints(self) -> tuple[list[Path], list[Path]]:
        """(complete checkpoints, incomplete ones), each oldest first by step."""
        if not self.checkpoints_dir.is_dir():
            return [], []
        found = sorted((p for p in self.checkpoints_dir.glob("checkpoint-*") if p.is_dir()
                        and p.name.split("-", 1)[1].isdigit()), key=lambda p: int(p.name.split("-", 1)[1]))  # fmt: skip
        complete = [p for p in found if _readable_json(p / CHECKPOINT_COMPLETE_FILE)]
        return complete, [p for p in found if p not in complete]

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (what ``--resume`` continues from), or None."""
        complete, _ = self.checkpoints()
        return complete[-1] if complete else None

    def remove_incomplete_checkpoints(self) -> list[Path]:
        """Delete checkpoints that were never completely written (nothing can resume from them)."""
        _, incomplete = self.checkpoints()
        for path in incomplete:
            shutil.rmtree(path, ignore_errors=True)
        return incomplete

    def remove_checkpoints(self) -> None:
        """Delete every Trainer checkpoint (a completed run's model is in ``model/``)."""
        shutil.rmtree(self.checkpoints_dir, ignore_errors=True)

    def differing_settings(self, config: TrainConfig) -> dict[str, tuple[Any, Any]]:
        """The settings (other than :data:`RESUME_FREE_SETTINGS`) in which ``config`` differs from the record:
        ``{key: (recorded, new)}``."""
        recorded = TrainConfig.from_dict(self.settings()).as_dict()
        new = config.as_dict()

        def normal(value: Any) -> Any:
            return json.loads(json.dumps(value, sort_keys=True))

        return {key: (recorded.get(key), value) for key, value in new.items()
                if key not in RESUME_FREE_SETTINGS and normal(recorded.get(key)) != normal(value)}  # fmt: skip

    def record(self) -> dict[str, Any]:
        """The whole ``config.json``, its settings under the names this version uses."""
        file = self.path / CONFIG_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{self.path} is not a run directory: it has no {CONFIG_FILE}")
        record = json.loads(file.read_text())
        settings = record.get("config", {})
        for old, new in RENAMED_CONFIG_KEYS.items():
            if old in settings and new not in settings:
                settings[new] = settings.pop(old)
        return record

    def settings(self) -> dict[str, Any]:
        """The run's :class:`TrainConfig` fields as saved (a dict: fields of other versions kept)."""
        return self.record()["config"]

    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.settings())

    def metrics(self) -> dict[str, Any]:
        """``metrics.json``, or ``{}`` while the run has not finished."""
        file = self.path / METRICS_FILE
        return json.loads(file.read_text()) if file.is_file() else {}

    def write_predictions(self, logits: Any, labels: Any, texts: Sequence[str]) -> None:
        """Store whether each test review was classified right (``predictions.npz``, atomically), in order."""
        logits = np.asarray(logits, dtype=np.float32)
        labels = np.asarray(labels)
        if not len(logits) == len(labels) == len(texts):
            raise ValueError(f"predictions: {len(logits)} logits, {len(labels)} labels and {len(texts)} texts differ")
        arrays = {
            "correct": logits.argmax(axis=-1) == labels,
            "test_set_digest": np.frombuffer(test_set_digest(texts), dtype=np.uint8),
        }
        temporary = self.path / f".{PREDICTIONS_FILE}.tmp.npz"
        np.savez_compressed(temporary, **arrays)
        os.replace(temporary, self.path / PREDICTIONS_FILE)

    @property
    def has_predictions(self) -> bool:
        return (self.path / PREDICTIONS_FILE).is_file()

    def predictions(self) -> dict[str, np.ndarray] | None:
        """The stored per-review results (``correct`` and the digest, see the module docstring), or None."""
        file = self.path / PREDICTIONS_FILE
        if not file.is_file():
            return None
        with np.load(file) as stored:
            found = {name: stored[name] for name in PREDICTION_ARRAYS if name in stored}
        if "correct" not in found:  # an earlier version's record
            found["correct"] = found["predicted"] == found["label"]
        return found

    def write_preparation(self, prepared: dict[str, Any]) -> None:
        write_json_atomic(self.path / PREPARATION_FILE, prepared)

    def preparation(self) -> dict[str, Any]:
        """What the warm-ups before fine-tuning did (``preparation.json``), or ``{}`` when none ran."""
        file = self.path / PREPARATION_FILE
        return json.loads(file.read_text()) if file.is_file() else {}

    def write_record(self, record: dict[str, Any]) -> None:
        write_json_atomic(self.path / CONFIG_FILE, record)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json_atomic(self.path / METRICS_FILE, metrics)

    def update_metrics(self, key: str, value: Any, merge: bool = False) -> None:
        """Set ``metrics[key]`` (``merge``: update the dict there instead of replacing it)."""
        metrics = self.metrics()
        metrics[key] = (metrics.get(key, {}) | value) if merge else value
        self.write_metrics(metrics)


@dataclass
class FinishedRecord:
    """What a finished run has on record, read once: its settings, its ``config.json`` and its metrics."""

    path: Path
    config: dict[str, Any]
    record: dict[str, Any]
    metrics: dict[str, Any]

    @classmethod
    def read(cls, path: str | Path) -> FinishedRecord:
        directory = RunDirectory(path)
        record = directory.record()
        return cls(directory.path, record["config"], record, directory.metrics())

    @property
    def featuremap(self) -> str:
        return self.config["featuremap"]

    @property
    def is_baseline(self) -> bool:
        return self.featuremap == BASELINE

    @property
    def featuremap_params(self) -> dict[str, Any]:
        """The map's full parameters, defaults included (what the model was patched with)."""
        qra = self.record.get("model", {}).get("qra") or {}
        return qra.get("featuremap_params", self.config.get("featuremap_params", {}))

    @property
    def patched_layers(self) -> list[int]:
        """The layers that ran kernel attention (none for the baseline)."""
        return [] if self.is_baseline else list(self.config.get("layers", []))

    @property
    def model_layers(self) -> int | None:
        """How many layers the encoder has, as recorded."""
        return self.record.get("model", {}).get("layers")


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


@dataclass
class FailedRecord:
    """A run that recorded a failure: where it is, what it was and why it failed."""

    path: Path
    config: dict[str, Any]
    reason: str


def find_failed(paths: Iterable[str | Path]) -> list[FailedRecord]:
    """Every run at or under ``paths`` that recorded a failure (``failed.json``), in path order."""
    found = []
    for root in map(Path, paths):
        candidates = [root] if RunDirectory(root).is_failed else sorted(p.parent for p in root.rglob(FAILED_FILE))
        for directory in candidates:
            run = RunDirectory(directory)
            settings = run.settings() if run.has_record else {}
            found.append(FailedRecord(run.path, settings, str((run.failure() or {}).get("reason", "unknown"))))
    return found


def find_finished(paths: Iterable[str | Path]) -> list[FinishedRecord]:
    """Every finished run at or under ``paths`` (recursively), each read once; an error if there is none."""
    paths = list(paths)
    found = []
    for root in map(Path, paths):
        candidates = [root] if RunDirectory(root).is_finished else sorted(p.parent for p in root.rglob(METRICS_FILE))
        found += [FinishedRecord.read(directory) for directory in candidates if RunDirectory(directory).is_readable]
    if not found:
        failed = len(find_failed(paths))
        note = f" ({failed} failed run(s), with {FAILED_FILE})" if failed else ""
        raise FileNotFoundError(
            f"no finished runs ({CONFIG_FILE} + {METRICS_FILE}) under {', '.join(map(str, paths))}{note}"
        )
    return found


def read_notes(folder: str | Path) -> str:
    """The hand-written conclusions (``NOTES.md``) kept at the top of a regenerated README, or ""."""
    path = Path(folder) / NOTES_FILE
    return path.read_text() if path.is_file() else ""
