"""Report aggregation across seeds: grouping, mean/std/95% CI, README and plots."""

from __future__ import annotations

import json
import math

import pytest

from qra.experiment.report import load_runs, mean_std_ci, summarise, write_report


def fake_run(root, name, seed, featuremap, accuracy, params=None, robustness=None, **settings):
    directory = root / name / f"seed{seed}"
    directory.mkdir(parents=True)
    config = {"featuremap": featuremap, "featuremap_params": params or {}, "mode": "softmax", "layers": [4, 5],
              "model": "tiny", "seed": seed} | settings  # fmt: skip
    qra = {"featuremap_params": (params or {}) | {"seed": 0}} if featuremap != "none" else None
    record = {"config": config, "model": {"qra": qra}, "device": "cpu", "command": f"qra train --seed {seed}",
              "commit": "abc"}  # fmt: skip
    (directory / "config.json").write_text(json.dumps(record))
    metrics = {
        "accuracy": accuracy, "f1": accuracy - 0.01, "peak_gpu_memory_bytes": None, "train_samples_per_second": 10.0,
        "attention_entropy": {"mean": [1.0] * 6, "normalized": [0.5] * 6},
        "attention_distance": {"bin_edges": [0, 1], "histogram": [[0.5, 0.5]] * 6, "mean": [2.0] * 6},
        "robustness": robustness or {},
    }  # fmt: skip
    (directory / "metrics.json").write_text(json.dumps(metrics))
    return directory


def test_mean_std_and_t_confidence_interval():
    mean, std, ci = mean_std_ci([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9) and std == pytest.approx(0.1)
    assert ci == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)  # t(0.975, 2 dof) = 4.3027
    assert mean_std_ci([0.7]) == (0.7, 0.0, None)


def test_runs_group_by_configuration_across_seeds(tmp_path):
    drop = {"word-dropout=0.1": {"accuracy": 0.7, "accuracy_drop": 0.1}}
    for seed, accuracy in enumerate([0.8, 0.9, 1.0]):
        fake_run(tmp_path, "baseline", seed, "none", accuracy, robustness=drop)
        fake_run(tmp_path, "rff", seed, "rff", accuracy - 0.1, params={"m": 64})
    fake_run(tmp_path, "rff-wide", 0, "rff", 0.5, params={"m": 256})
    rows = summarise(load_runs([tmp_path]))
    assert rows[0]["featuremap"] == "none"  # the baseline comes first
    by_m = {row["params"].get("m"): row for row in rows}
    assert {m: row["n_seeds"] for m, row in by_m.items()} == {None: 3, 64: 3, 256: 1}
    baseline, rff, wide = by_m[None], by_m[64], by_m[256]
    assert baseline["seeds"] == [0, 1, 2]
    assert baseline["accuracy_mean"] == pytest.approx(0.9)
    assert rff["accuracy_mean"] == pytest.approx(0.8)
    assert rff["params"] == {"m": 64, "seed": 0}
    assert wide["accuracy_ci95"] is None
    assert baseline["robustness"]["word-dropout=0.1"] == pytest.approx(
        {"accuracy_mean": 0.7, "drop_mean": 0.1, "n_seeds": 3}
    )
    assert baseline["attention_entropy_mean"] == [1.0] * 6
    for key in (
        "featuremap",
        "params",
        "mode",
        "layers",
        "model",
        "device",
        "seeds",
        "n_seeds",
        "accuracy_mean",
        "accuracy_std",
        "accuracy_ci95",
        "f1_mean",
        "f1_std",
        "peak_gpu_memory_bytes_mean",
        "train_samples_per_second_mean",
        "attention_entropy_mean",
        "attention_distance_mean",
        "robustness",
    ):
        assert key in baseline  # the keys later tools rely on


def test_speed_averages_only_runs_that_measured_it(tmp_path):
    """A resumed run records no throughput; the mean covers the seeds that did and says how many."""
    for seed in range(3):
        fake_run(tmp_path, "rff", seed, "rff", 0.9, params={"m": 64})
    resumed = json.loads((tmp_path / "rff" / "seed1" / "metrics.json").read_text())
    resumed |= {"train_samples_per_second": None, "resumed_from_checkpoint": "checkpoint-700"}
    (tmp_path / "rff" / "seed1" / "metrics.json").write_text(json.dumps(resumed))
    (row,) = summarise(load_runs([tmp_path]))
    assert row["train_samples_per_second_mean"] == pytest.approx(10.0) and row["train_samples_per_second_runs"] == 2


def test_write_report_makes_summary_readme_and_plots(tmp_path):
    for seed in range(2):
        fake_run(tmp_path / "runs", "baseline", seed, "none", 0.8 + seed / 10)
    out = write_report([tmp_path / "runs"], tmp_path / "report")
    assert json.loads((out / "summary.json").read_text())[0]["n_seeds"] == 2
    readme = (out / "README.md").read_text()
    assert "| baseline | 2 | 0.8500 ±" in readme and "qra train --seed 1" in readme
    for name in ("accuracy", "entropy", "distance", "robustness"):
        assert (out / f"{name}.png").stat().st_size > 1000


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        load_runs([tmp_path])


def test_a_commit_named_by_the_environment_overrides_the_tree(monkeypatch):
    """A GPU machine's copy can carry a stale .git; the launcher's QRA_GIT_COMMIT must win."""
    from qra.experiment.provenance import git_commit

    monkeypatch.delenv("QRA_GIT_COMMIT", raising=False)
    local = git_commit()
    assert local is None or len(local.split("+")[0]) == 40
    monkeypatch.setenv("QRA_GIT_COMMIT", "0123456789abcdef0123456789abcdef01234567")
    assert git_commit() == "0123456789abcdef0123456789abcdef01234567"


def test_temperature_learned_beta_and_budget_make_separate_configurations(tmp_path):
    fake_run(tmp_path, "rff", 0, "rff", 0.9, params={"m": 64})
    fake_run(tmp_path, "rff-b32", 0, "rff", 0.8, params={"m": 64}, beta=32.0)
    fake_run(tmp_path, "rff-learned", 0, "rff", 0.7, params={"m": 64}, learn_beta=True)
    fake_run(tmp_path, "rff-small", 0, "rff", 0.6, params={"m": 64}, max_train_samples=100)
    rows = summarise(load_runs([tmp_path]))
    from qra.experiment.report import label

    assert sorted(label(row) for row in rows) == [
        "rff(m=64) softmax L4,5", "rff(m=64) softmax L4,5 [100 train / all test]", "rff(m=64) softmax learned-β L4,5",
        "rff(m=64) softmax β=32 L4,5",
    ]  # fmt: skip


def test_commands_name_scripts_by_their_path_in_the_project(monkeypatch):
    """The parallel sweep starts its children with an absolute path; records keep only the project's part."""
    import sys
    from pathlib import Path

    import torch

    from qra.experiment.provenance import provenance

    script = Path(__file__).resolve().parent.parent / "experiments" / "sweep.py"
    monkeypatch.setattr(sys, "argv", [str(script), "study.yaml", "--run", "rff/seed0"])
    assert provenance(torch.device("cpu"))["command"] == ("python experiments/sweep.py study.yaml --run rff/seed0")
    monkeypatch.setattr(sys, "argv", ["/elsewhere/tool.py", "x"])
    assert provenance(torch.device("cpu"))["command"] == "python tool.py x"


def plot_rows(tmp_path, count=4, accuracy=0.92):
    for i in range(count):
        fake_run(tmp_path / "runs", f"rff{i}", 0, "rff", accuracy + i / 1000, params={"m": 64 + i})
    fake_run(tmp_path / "runs", "baseline", 0, "none", accuracy)
    return summarise(load_runs([tmp_path / "runs"]))


def test_accuracy_axis_spans_a_tenth_and_its_labels_are_not_cropped(tmp_path):
    from qra.experiment.plots import MIN_ACCURACY_SPAN, accuracy_figure

    rows = plot_rows(tmp_path)
    figure = accuracy_figure(rows)
    figure.canvas.draw()
    [axis] = figure.axes
    value_axis = axis.get_xlim() if axis.get_yticklabels()[0].get_text() else axis.get_ylim()
    assert value_axis[1] - value_axis[0] >= MIN_ACCURACY_SPAN  # gaps of 0.001 must look like 0.001
    assert value_axis[0] <= min(r["accuracy_mean"] for r in rows) and value_axis[1] >= 0.923
    renderer = figure.canvas.get_renderer()
    shown = [t for t in axis.get_xticklabels() if value_axis[0] <= t.get_position()[0] <= value_axis[1]]
    for text in [*axis.get_yticklabels(), *shown, axis.xaxis.label, axis.yaxis.label]:
        if text.get_text():
            box = text.get_window_extent(renderer)
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= figure.bbox.x1 and box.y1 <= figure.bbox.y1, text


def test_identical_entropy_lines_stay_distinguishable(tmp_path):
    from qra.experiment.plots import entropy_figure

    rows = plot_rows(tmp_path)  # every fake run has the same entropies
    figure = entropy_figure(rows)
    lines = figure.axes[0].get_lines()
    drawn = {(tuple(line.get_xdata()), line.get_marker(), line.get_linestyle()) for line in lines}
    assert len(drawn) == len(rows)
    assert len({tuple(line.get_xdata()) for line in lines}) == len(rows)  # side by side, not on top


def test_distance_legend_does_not_cover_the_bars(tmp_path):
    from qra.experiment.plots import distance_figure

    figure = distance_figure(plot_rows(tmp_path))
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legends = [*figure.legends, *(axis.get_legend() for axis in figure.axes if axis.get_legend())]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert box.x1 <= figure.bbox.x1 + 1
        for axis in figure.axes:
            assert not box.overlaps(axis.get_window_extent(renderer))


def test_attention_map_panels_have_their_own_annotated_colour_scale(tmp_path):
    import numpy as np

    from qra.experiment.plots import attention_maps_figure

    rows = plot_rows(tmp_path, count=1)
    peaked = np.zeros((6, 10, 10))
    peaked[:, :, 0] = 1.0
    flat = np.full((6, 10, 10), 0.1)
    flat[4:, 0, 0] = 0.11
    for row in rows:
        maps = peaked if row["featuremap"] == "none" else flat
        np.savez_compressed(f"{row['runs'][0]}/attention_example.npz", maps=maps, tokens=np.array(["t"] * 10))
    figure = attention_maps_figure(rows)
    images = [axis.get_images()[0] for axis in figure.axes if axis.get_images()]
    assert len(images) == 4  # two configurations x layers 4, 5
    limits = [image.get_clim() for image in images]
    assert limits[0][1] == 1.0 and limits[2][1] == pytest.approx(0.11)  # the kernel panels are not on the baseline's
    texts = [text.get_text() for axis in figure.axes for text in axis.texts]
    assert any("own scale 0.1–0.11" in text for text in texts)


def test_the_report_command_does_not_overwrite_a_report_without_being_asked(tmp_path):
    from typer.testing import CliRunner

    from qra.cli import app

    fake_run(tmp_path / "runs", "baseline", 0, "none", 0.9)
    out = tmp_path / "report"
    assert CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--out", str(out)]).exit_code == 0
    summary = (out / "summary.json").read_text()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--out", str(out)])
    assert result.exit_code == 2 and "already holds a report" in result.output and "--overwrite" in result.output
    assert (out / "summary.json").read_text() == summary
    assert CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--out", str(out), "--overwrite"]).exit_code == 0


def test_rows_carry_the_kernels_starting_temperature_and_bandwidth_for_the_entropy_figure(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "baseline", 0, "none", 0.9)
    fake_run(runs, "rff-b32", 0, "rff", 0.9, params={"m": 64, "sigma": 8.0}, beta=32.0)
    fake_run(runs, "rff-linear", 0, "rff", 0.9, params={"m": 64, "sigma": 2.0}, mode="linear")
    quantum = fake_run(runs, "zz", 0, "pennylane-zz", 0.9, params={"qubits": 4})
    metrics = json.loads((quantum / "metrics.json").read_text()) | {
        "temperature_calibration": {"layers": {"4": {"beta": [2.0, 8.0]}, "5": {"beta": [4.0, 4.0]}}},
        "angle_scale_calibration": {"layers": {"4": {"angle_scale": 0.01}, "5": {"angle_scale": 0.04}}},
    }
    (quantum / "metrics.json").write_text(json.dumps(metrics))
    out = write_report([runs], tmp_path / "report")
    rows = {row["featuremap"] + str(row["mode"] or ""): row for row in json.loads((out / "summary.json").read_text())}
    assert rows["none"]["temperature_start"] is None and rows["none"]["bandwidth"] is None
    assert rows["rffsoftmax β=32"]["temperature_start"] == 32.0
    assert rows["rffsoftmax β=32"]["bandwidth"] == {"name": "σ", "value": pytest.approx(8.0)}
    assert rows["rfflinear"]["temperature_start"] is None  # no softmax, no temperature
    assert rows["pennylane-zzsoftmax"]["temperature_start"] == pytest.approx(4.0)  # geometric mean of the heads'
    assert rows["pennylane-zzsoftmax"]["bandwidth"] == {"name": "angle scale", "value": pytest.approx(0.02)}
    assert (out / "entropy_vs_scale.png").stat().st_size > 1000
    assert "![entropy_vs_scale](entropy_vs_scale.png)" in (out / "README.md").read_text()
