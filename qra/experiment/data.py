"""IMDb (or any binary text-classification data) as a ``datasets.DatasetDict`` with ``train`` and ``test``.

From the hub (``load_dataset("imdb")``) by default, or from a local folder holding ``train`` and
``test`` files in jsonl, jsonl.gz, csv or parquet with a ``text`` and a ``label`` (0/1) column.
"""

from __future__ import annotations

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


def validate(dataset: Dataset, split: str, source: str) -> Dataset:
    """Check the ``text``/``label`` columns and that labels are 0/1; keep only those two columns."""
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
            splits[split] = load_dataset(builder, data_files={split: str(path)}, split=split)
    limits = {"train": max_train_samples, "test": max_eval_samples}
    result = {}
    for split, dataset in splits.items():
        dataset = validate(dataset, split, source)
        limit = limits[split]
        if limit is not None and limit < len(dataset):
            dataset = dataset.shuffle(seed=seed).select(range(limit))
        result[split] = dataset
    return DatasetDict(result)
