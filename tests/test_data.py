"""Loading train/test splits from local files, with clear errors for bad data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from qra.experiment.data import DataError, load_text_classification

from .conftest import synthetic_reviews


def write_split(directory, split, rows, fmt):
    frame = pd.DataFrame(rows)
    if fmt == "csv":
        frame.to_csv(directory / f"{split}.csv", index=False)
    elif fmt == "parquet":
        frame.to_parquet(directory / f"{split}.parquet")
    else:
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_every_format_loads_and_keeps_text_and_label(tmp_path, fmt):
    for split, seed in (("train", 0), ("test", 1)):
        write_split(tmp_path, split, synthetic_reviews(10, seed), fmt)
    data = load_text_classification(tmp_path)
    assert data["train"].column_names == ["text", "label"]
    assert len(data["train"]) == len(data["test"]) == 10


def test_gzipped_jsonl_and_seeded_subsets(tiny_data_dir):
    first = load_text_classification(tiny_data_dir, max_train_samples=10, max_eval_samples=5, seed=3)
    again = load_text_classification(tiny_data_dir, max_train_samples=10, max_eval_samples=5, seed=3)
    other = load_text_classification(tiny_data_dir, max_train_samples=10, max_eval_samples=5, seed=4)
    assert len(first["train"]) == 10 and len(first["test"]) == 5
    assert first["train"]["text"] == again["train"]["text"]
    assert first["train"]["text"] != other["train"]["text"]


def test_missing_split_names_the_expected_files(tmp_path):
    write_split(tmp_path, "train", synthetic_reviews(4, 0), "jsonl")
    with pytest.raises(DataError, match=r"no 'test' split .*test\.jsonl\.gz.*found: train\.jsonl"):
        load_text_classification(tmp_path)


def test_missing_columns_and_bad_labels_are_explained(tmp_path):
    rows = [{"review": "good", "label": 1}]
    write_split(tmp_path, "train", rows, "jsonl")
    write_split(tmp_path, "test", rows, "jsonl")
    with pytest.raises(DataError, match=r"lacks column.*text.*it has review, label"):
        load_text_classification(tmp_path)
    rows = [{"text": "good", "label": 4}, {"text": "bad", "label": 0}]
    write_split(tmp_path, "train", rows, "jsonl")
    write_split(tmp_path, "test", rows, "jsonl")
    with pytest.raises(DataError, match=r"labels \[0, 4\]; qra expects 0/1"):
        load_text_classification(tmp_path)


def test_a_missing_directory_is_explained(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        load_text_classification(tmp_path / "nowhere")
