"""qra report on protocol runs: Win A/B/C against each baseline, paired tests in summary.json and verdicts.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qra.experiment.report import write_report
from qra.experiment.runs import RunDirectory, same_test_set
from qra.experiment.stats import mcnemar

from .test_report import fake_run

PROTOCOL = {"freeze": ["embeddings", 0, 1, 2, 3], "data_order": "seed", "max_length": 256, "epochs": 3, "lr": 2e-5}
SEEDS = [13, 42, 1234, 7, 99]
REVIEWS = 400


def protocol_run(root, name, seed, featuremap, correct, memory=None, robustness=None, **settings):
    labels = np.random.default_rng(0).integers(0, 2, REVIEWS)
    accuracy = float(np.mean(correct))
    directory = fake_run(root, name, seed, featuremap, accuracy, params={"m": 64} if featuremap != "none" else None,
                         robustness=robustness, **(PROTOCOL | settings))  # fmt: skip
    metrics = json.loads((directory / "metrics.json").read_text()) | {"peak_gpu_memory_bytes": memory}
    (directory / "metrics.json").write_text(json.dumps(metrics))
    predicted = np.where(correct, labels, 1 - labels)
    logits = np.stack([-predicted, predicted], axis=1).astype(float)
    RunDirectory(directory).write_predictions(logits, labels, [f"review {i}" for i in range(REVIEWS)])
    return directory


def correctness(seed: int, share: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random(REVIEWS) < share


def test_report_judges_protocol_runs_against_both_baselines(tmp_path):
    runs = tmp_path / "runs"
    for seed in SEEDS:
        base = correctness(seed, 0.88)
        arm = base | (np.random.default_rng(seed + 1).random(REVIEWS) < 0.15)  # fixes reviews: clearly better
        drop = lambda value: {"content-word-dropout=0.05": {"accuracy": 0.8, "accuracy_drop": value}}  # noqa: E731
        protocol_run(runs, "baseline-sdpa", seed, "none", base, robustness=drop(0.02))
        protocol_run(runs, "baseline-eager", seed, "none", base, attn_implementation="eager", robustness=drop(0.02))
        protocol_run(runs, "rff", seed, "rff", arm, robustness=drop(0.02 + 0.001 * (seed % 3)))
    out = tmp_path / "report"
    write_report([runs], out)
    verdicts = json.loads((out / "verdicts.json").read_text())
    found = {(c["arm"], c["baseline"]): c for c in verdicts["comparisons"]}
    assert len(found) == 2  # the arm against the SDPA and the eager baseline
    (arm_label, sdpa_label), (_, eager_label) = sorted(found, key=lambda pair: "eager" in pair[1])
    assert "eager" in eager_label and "frozen emb+L0-3" in arm_label and "N=256" in arm_label
    comparison = found[(arm_label, sdpa_label)]
    assert comparison["seeds"] == sorted(SEEDS)
    assert comparison["win_a"]["verdict"] == "met" and comparison["win_a"]["delta_accuracy"] > 0.01
    assert comparison["win_b"]["verdict"].startswith("n/a")  # judged at max length 512 only
    assert comparison["win_c"]["verdict"] == "not met"  # not the same accuracy
    tests = comparison["paired_tests"]
    assert tests["verdict"] == "better" and len(tests["mcnemar"]) == 5
    base = RunDirectory(runs / "baseline-sdpa" / "seed13").predictions()
    arm = RunDirectory(runs / "rff" / "seed13").predictions()
    expected = mcnemar(arm["correct"], base["correct"])
    assert tests["mcnemar"][[m["seed"] for m in tests["mcnemar"]].index(13)]["p_value"] == pytest.approx(
        expected.p_value)  # fmt: skip
    rows = json.loads((out / "summary.json").read_text())
    paired = {row["featuremap"]: row.get("paired_tests") for row in rows}
    assert paired["none"] is None and set(paired["rff"]) == {sdpa_label, eager_label}
    readme = (out / "README.md").read_text()
    assert "## Protocol verdicts (Win A, B, C)" in readme and "| Win A |" in readme and "McNemar" in readme
    # the answer first: verdicts, paired tests and power before the table of measurements
    assert readme.index("## Protocol verdicts") < readme.index("### Power") < readme.index("## Measurements")
    power = comparison["paired_tests"]["power"]  # planned from the spread of the 5 per-seed differences
    assert power["seeds"] == 5
    assert power["std_difference"] == pytest.approx(tests["paired_t_accuracy"]["std_difference"])
    assert "### Power: seeds each comparison needs" in readme and f"| {power['seeds_to_detect']} |" in readme


def test_win_b_and_c_at_the_stress_length(tmp_path):
    runs = tmp_path / "runs"
    for seed in SEEDS:
        base = correctness(seed, 0.9)
        protocol_run(runs, "baseline", seed, "none", base, memory=10 * 2**30, max_length=512,
                     robustness={"adjective-swap=1": {"accuracy": 0.8, "accuracy_drop": 0.05 + 0.001 * (seed % 4)}})
        protocol_run(runs, "linear", seed, "rff", base, memory=8 * 2**30, max_length=512,
                     robustness={"adjective-swap=1": {"accuracy": 0.85, "accuracy_drop": 0.02 + 0.001 * (seed % 3)}})
    write_report([runs], tmp_path / "report")
    (comparison,) = json.loads((tmp_path / "report" / "verdicts.json").read_text())["comparisons"]
    assert comparison["win_b"]["verdict"] == "met" and comparison["win_b"]["memory_saving"] == pytest.approx(0.2)
    assert comparison["win_c"]["verdict"] == "met" and comparison["win_c"]["robustness"][0]["better"]
    assert comparison["win_a"]["verdict"] == "not met"
    assert comparison["paired_tests"]["verdict"] == "equivalent"  # identical predictions


def test_runs_without_protocol_settings_or_predictions_get_no_verdicts(tmp_path):
    for seed in range(3):
        fake_run(tmp_path / "runs", "baseline", seed, "none", 0.9)
        fake_run(tmp_path / "runs", "rff", seed, "rff", 0.91, params={"m": 64})
    write_report([tmp_path / "runs"], tmp_path / "report")
    assert not (tmp_path / "report" / "verdicts.json").exists()
    assert "Protocol verdicts" not in (tmp_path / "report" / "README.md").read_text()
    assert all("paired_tests" not in row for row in json.loads((tmp_path / "report" / "summary.json").read_text()))


def test_paired_runs_must_share_the_test_set_in_order(tmp_path):
    texts = [f"review {i}" for i in range(6)]
    labels = np.array([0, 1, 0, 1, 1, 0])
    logits = np.eye(2)[labels]
    for name, order in (("a", texts), ("b", texts), ("c", texts[::-1])):
        RunDirectory(tmp_path / name).path.mkdir(parents=True)
        RunDirectory(tmp_path / name).write_predictions(logits, labels, order)
    a, b, c = (RunDirectory(tmp_path / name).predictions() for name in "abc")
    assert same_test_set(a, b) and not same_test_set(a, c)
    assert a["correct"].all()
    # records written before the digest carry labels, classes and a per-review CRC-32; those still pair
    old_format = tmp_path / "old"
    old_format.mkdir()
    np.savez_compressed(old_format / "predictions.npz", label=labels, predicted=1 - labels,
                        review_hash=np.arange(6, dtype=np.uint32))  # fmt: skip
    old = RunDirectory(old_format).predictions()
    assert not old["correct"].any() and same_test_set(old, dict(old)) and not same_test_set(old, a)


@pytest.mark.parametrize("measured_negative_mass", [False, True])
def test_long_range_attention_is_not_judged_on_entropies_of_signed_weights(tmp_path, measured_negative_mass):
    """An older linear-mode record took the entropy of signed weights (-0.255 in results/imdb): it decides nothing."""
    runs = tmp_path / "runs"
    for seed in SEEDS:
        base = correctness(seed, 0.9)
        baseline = protocol_run(runs, "baseline", seed, "none", base)
        linear = protocol_run(runs, "linear", seed, "rff", base, mode="linear")
        for directory, entropy, distance in ((baseline, 0.7, 2.0), (linear, -0.255, 3.0 + 0.01 * (seed % 3))):
            metrics = json.loads((directory / "metrics.json").read_text())
            metrics["attention_entropy"]["normalized"] = [0.7] * 4 + [entropy, 0.7]
            metrics["attention_distance"]["mean"] = [distance] * 6
            if measured_negative_mass:
                metrics["attention_negative_mass"] = [0.0] * 6
            (directory / "metrics.json").write_text(json.dumps(metrics))
    write_report([runs], tmp_path / "report")
    (comparison,) = json.loads((tmp_path / "report" / "verdicts.json").read_text())["comparisons"]
    win_c = comparison["win_c"]
    if measured_negative_mass:  # a measured entropy below the baseline's, with longer distances: long-range
        assert win_c["verdict"] == "met" and win_c["long_range"]["better"]
    else:
        assert win_c["verdict"] == "not met" and win_c["long_range"] is None
        assert "signed weights" in win_c["measured"]
