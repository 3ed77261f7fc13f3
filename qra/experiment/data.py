"""IMDb (or any binary text-classification data) as a ``datasets.DatasetDict`` with ``train`` and ``test``.

From the hub (``load_dataset("imdb")``) by default, or from a local folder holding ``train`` and
``test`` files in jsonl, jsonl.gz, csv or parquet with a ``text`` and a ``label`` (0/1) column.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

SPLITS = ("train", "test")
#: file suffix -> the ``datasets`` builder that reads it
FORMATS = {".jsonl.gz": "json", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class DataError(ValueError):
    """The data is missing or not in the shape qra needs; the message says what is expected."""


def _split_file(directory: Path, split: str) -> tuple[Path, str]:
    for suffix, builder in FORMATS.items():
        candidate = directory / f"{split}{suffix}"
        if candidate.is_file():
            return candidate, builder
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    raise DataError(
        f"no {split!r} split in {directory}: expected one of "
        f"{', '.join(split + s for s in FORMATS)}; found: {', '.join(found) or 'nothing'}"
    )


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else path.open(encoding="utf-8")


def _is_blank(path: Path) -> bool:
    """True for a file without any content but whitespace (text formats; parquet files are never blank)."""
    if path.suffix == ".parquet":
        return path.stat().st_size == 0
    try:
        with _open_text(path) as stream:
            while chunk := stream.read(1 << 16):
                if chunk.strip():
                    return False
    except (OSError, UnicodeDecodeError, EOFError):
        return False  # unreadable: the loader's own error says more
    return True


def _first_bad_json_line(path: Path) -> str | None:
    """``"line N: <why>"`` for the first line of a JSONL file that is not one JSON object, or None."""
    with _open_text(path) as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                return f"line {number}: not valid JSON ({error.msg} at column {error.colno})"
            if not isinstance(row, dict):
                return f"line {number}: a JSON {type(row).__name__}, not an object"
    return None


def load_split_file(path: Path, builder: str, split: str) -> Dataset:
    """One split's file through ``datasets``, with errors that name the file (and the line, for JSONL)."""
    if _is_blank(path):
        raise DataError(f"{path} is empty: the {split!r} split needs rows with a 'text' and a 'label' (0/1)")
    try:
        return load_dataset(builder, data_files={split: str(path)}, split=split)
    except Exception as error:
        where = None
        if builder == "json":
            try:
                where = _first_bad_json_line(path)
            except (OSError, UnicodeDecodeError, EOFError) as reading:
                where = f"cannot be read ({type(reading).__name__}: {reading})"
        expected = ("one JSON object per line, with 'text' and 'label' (0/1)" if builder == "json"
                    else f"a {builder} file with 'text' and 'label' (0/1) columns")  # fmt: skip
        cause = where or f"{type(error).__name__}: {error.__cause__ or error}"
        raise DataError(f"{path}, {cause}; expected {expected}") from error


def validate(dataset: Dataset, split: str, source: str) -> Dataset:
    """Check the ``text``/``label`` columns, that labels are 0/1, that no review is empty and that the
    training split holds both classes; keep only the ``text`` and ``label`` columns."""
    missing = {"text", "label"} - set(dataset.column_names)
    if missing:
        raise DataError(
            f"{source} [{split}] lacks column(s) {', '.join(sorted(missing))}: qra needs 'text' (string) "
            f"and 'label' (0 = negative, 1 = positive); it has {', '.join(dataset.column_names)}"
        )
    labels = set(dataset.unique("label"))
    if not labels <= {0, 1}:
        raise DataError(f"{source} [{split}] has labels {sorted(labels)[:10]}; qra expects 0/1 (binary)")
    if len(dataset) == 0:
        raise DataError(f"{source} [{split}] is empty")
    empty = [i for i, text in enumerate(dataset["text"]) if not isinstance(text, str) or not text.strip()]
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise DataError(
            f"{source} [{split}] has {len(empty)} empty or missing review(s) (rows {shown}, counting from 0); "
            "every 'text' must be a non-empty string: remove those rows"
        )
    if split == "train" and len(labels) < 2:
        raise DataError(
            f"{source} [{split}] holds only label {sorted(labels)}: training a binary classifier needs reviews "
            "of both classes (0 = negative, 1 = positive)"
        )
    extra = [c for c in dataset.column_names if c not in ("text", "label")]
    return dataset.remove_columns(extra) if extra else dataset


def load_text_classification(
    data_dir: str | Path | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
) -> DatasetDict:
    """Train and test splits, validated, each optionally cut to a seeded random subset.

    ``data_dir=None`` loads ``imdb`` from the Hugging Face hub.  The subsets are drawn with
    ``seed`` so every arm of an experiment sees the same reviews.
    """
    if data_dir is None:
        source = "hub dataset 'imdb'"
        try:
            raw = load_dataset("imdb")
        except (OSError, ConnectionError) as error:
            raise DataError(
                f"could not load the hub dataset 'imdb' ({type(error).__name__}: {error}); without access to the "
                "Hugging Face hub, pass --data-dir with train/test files (jsonl, jsonl.gz, csv or parquet)"
            ) from error
        splits = {split: raw[split] for split in SPLITS}
    else:
        directory = Path(data_dir)
        if not directory.is_dir():
            raise DataError(f"--data-dir {directory} is not a directory")
        source = str(directory)
        splits = {}
        for split in SPLITS:
            path, builder = _split_file(directory, split)
            splits[split] = load_split_file(path, builder, split)
    limits = {"train": max_train_samples, "test": max_eval_samples}
    result = {}
    for split, dataset in splits.items():
        dataset = validate(dataset, split, source)
        limit = limits[split]
        if limit is not None and limit < len(dataset):
            dataset = dataset.shuffle(seed=seed).select(range(limit))
        result[split] = dataset
    return DatasetDict(result)
