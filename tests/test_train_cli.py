"""qra train / eval / report end to end on a tiny random DistilBERT and synthetic reviews (CPU)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import qra
from qra.cli import app
from qra.experiment.evaluation import FinishedRun, evaluate_robustness, load_run_model
from qra.experiment.robustness import SynonymTable

METRIC_KEYS = {"accuracy", "f1", "peak_gpu_memory_bytes", "train_samples_per_second", "eval_samples_per_second",
               "attention_entropy", "attention_distance"}  # fmt: skip


def train_args(model_dir, data_dir, out, *extra):
    return ["train", "--model", str(model_dir), "--data-dir", str(data_dir), "--max-length", "48", "--epochs", "1",
            "--batch-size", "8", "--eval-batch-size", "8", "--attention-samples", "8", "--device", "cpu",
            "--output-dir", str(out), *extra]  # fmt: skip


def invoke_crashing(monkeypatch, args, after_steps: int = 3):
    """``qra`` with ``args``, the Trainer raising KeyboardInterrupt at step ``after_steps + 1`` (a crash)."""
    from transformers import Trainer

    original_step = Trainer.training_step
    calls = {"n": 0}

    def crashing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == after_steps + 1:
            raise KeyboardInterrupt("simulated crash")
        return original_step(self, *a, **k)

    monkeypatch.setattr(Trainer, "training_step", crashing)
    try:
        return invoke(args)
    finally:
        monkeypatch.setattr(Trainer, "training_step", original_step)


def invoke(args):
    result = CliRunner().invoke(app, args)
    return result


@pytest.mark.parametrize(
    "featuremap_args",
    [["--featuremap", "none"], ["--featuremap", "rff", "--m", "16", "--sigma", "2.0"],
     ["--featuremap", "pennylane-zz", "--fm", "qubits=3", "--fm", "engine=native", "--mode", "normalized"]],
    ids=["baseline", "rff", "pennylane-zz"],
)  # fmt: skip
def test_train_writes_a_complete_run_directory(tiny_model_dir, tiny_data_dir, tmp_path, featuremap_args):
    if "pennylane-zz" in featuremap_args:
        pytest.importorskip("qra_pennylane")
    out = tmp_path / "run"
    result = invoke(train_args(tiny_model_dir, tiny_data_dir, out, *featuremap_args))
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    assert 0 <= metrics["accuracy"] <= 1 and metrics["peak_gpu_memory_bytes"] is None
    assert metrics["eval_predictions"] == 24
    assert len(metrics["attention_entropy"]["mean"]) == 6 and len(metrics["attention_distance"]["histogram"]) == 6
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["featuremap"] == featuremap_args[1]
    assert {"versions", "device", "commit", "command"} <= set(record)
    assert record["training"]["effective_batch_size"] == 8
    assert (out / "train_log.jsonl").read_text().strip()
    model = load_run_model(out)
    assert qra.is_patched(model) == (featuremap_args[1] != "none")
    if featuremap_args[1] == "rff":
        assert model.config.qra["featuremap_params"]["m"] == 16
    # the path each patched layer's training steps ran on (the fused kernels need CUDA)
    expected_paths = None if featuremap_args[1] == "none" else {"4": "pytorch", "5": "pytorch"}
    assert metrics["attention_paths"] == expected_paths


def test_eval_report_and_synonym_swap_on_a_trained_run(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "runs" / "rff"
    assert invoke(train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "rff", "--m", "16")).exit_code == 0
    result = invoke(["eval", str(out), "--robustness", "word-dropout=0.1,0.2"])
    assert result.exit_code == 0, result.output
    robustness = json.loads((out / "metrics.json").read_text())["robustness"]
    assert set(robustness) == {"clean", "word-dropout=0.1", "word-dropout=0.2"}
    assert robustness["clean"]["accuracy"] == pytest.approx(json.loads((out / "metrics.json").read_text())["accuracy"])
    assert robustness["word-dropout=0.2"]["examples"]
    table = SynonymTable({"great": ["superb"], "awful": ["terrible"], "movie": ["film"]})
    swapped = evaluate_robustness(out, {"synonym-swap": [0.5]}, synonyms=table)
    assert "film" in swapped["synonym-swap=0.5"]["examples"][0]["perturbed"] or swapped["synonym-swap=0.5"]["examples"]
    report = invoke(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert (tmp_path / "report" / "attention_maps.png").is_file()


def test_an_interrupted_run_resumes_from_its_checkpoint(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "rff", "--m", "16", "--save-steps", "2")
    interrupted = invoke_crashing(monkeypatch, args)
    assert interrupted.exit_code != 0 and not (out / "metrics.json").exists()
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    refused = invoke(args)
    assert refused.exit_code == 2 and "--resume" in refused.output
    resumed = invoke([*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 6  # 48 reviews / batch 8 = 6 steps, the last four after the restart
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0
    # the Trainer's throughput of a resumed run counts every sample over the last part's time only
    assert metrics["resumed_from_checkpoint"] == "checkpoint-2" and metrics["train_samples_per_second"] is None
    # ... and its train_loss averages only that part's steps: the run's mean comes from both parts' logged losses
    logged = {entry["step"]: entry["loss"] for entry in log if "loss" in entry}
    assert sorted(logged) == [2, 4, 6]
    assert metrics["train_loss"] == pytest.approx(sum(logged.values()) / 3)
    finished_again = invoke(args)
    assert finished_again.exit_code == 2 and "already holds a finished run" in finished_again.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--featuremap", "rf"], "Did you mean 'rff'?"),
     (["--featuremap", "rff", "--fm", "sigmaa=2"], "accepted: m, sigma"),
     (["--featuremap", "rff", "--layers", "4,9"], "the model has 6 layers"),
     (["--featuremap", "rff", "--mode", "cosine"], "accepted: softmax, normalized, linear"),
     (["--featuremap", "rff", "--robustness", "typo=0.1"], "word-dropout, synonym-swap")],
)  # fmt: skip
def test_bad_arguments_are_explained(tiny_model_dir, tiny_data_dir, tmp_path, extra, message):
    result = invoke(train_args(tiny_model_dir, tiny_data_dir, tmp_path / "run", *extra))
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_bad_data_directory_is_explained(tiny_model_dir, tmp_path):
    result = invoke(train_args(tiny_model_dir, tmp_path / "missing", tmp_path / "run", "--featuremap", "none"))
    assert result.exit_code == 2 and "is not a directory" in result.output


def test_seed_entry_point_accepts_the_seed_flags(tiny_model_dir, tiny_data_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "experiments" / "imdb_train.py"
    args = train_args(tiny_model_dir, tiny_data_dir, tmp_path / "run", "--m", "16", "--sigma", "1.0",
                      "--layers", "4,5", "--max-train-samples", "8", "--max-eval-samples", "8")[1:]  # fmt: skip
    completed = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    settings = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert settings["featuremap_params"] == {"m": 16, "sigma": 1.0}


def test_a_model_that_cannot_be_loaded_points_to_the_offline_options(tiny_data_dir, tmp_path):
    result = invoke(train_args(tmp_path / "no-such-model", tiny_data_dir, tmp_path / "run", "--featuremap", "none"))
    assert result.exit_code == 2
    assert "bundled:all-MiniLM-L6-v2" in " ".join(result.output.split())


def test_eval_with_sampled_and_noisy_quantum_kernels(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    pytest.importorskip("qra_pennylane")
    out = tmp_path / "zz"
    args = train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "pennylane-zz", "--fm", "qubits=2",
                      "--fm", "engine=native")  # fmt: skip
    assert invoke(args).exit_code == 0
    result = invoke(["eval", str(out), "--shots", "8,64", "--depolarizing", "0.1", "--readout", "0.05"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    settings = [(s["shots"], s["depolarizing"], s["readout"]) for s in metrics["quantum"]]
    assert settings == [(None, 0.0, 0.0), (8, 0.0, 0.0), (64, 0.0, 0.0), (None, 0.1, 0.0), (None, 0.0, 0.05)]
    assert metrics["quantum"][0]["accuracy"] == pytest.approx(metrics["accuracy"])
    assert "robustness" not in metrics  # only the quantum settings were asked for
    evaluated = []
    original_scores = FinishedRun.scores
    monkeypatch.setattr(FinishedRun, "scores", lambda self, texts=None, batch_size=None: evaluated.append(1)
                        or original_scores(self, texts, batch_size))  # fmt: skip
    assert invoke(["eval", str(out), "--shots", "8,64,256"]).exit_code == 0
    assert len(evaluated) == 1  # only the new setting (256 shots) was evaluated; the rest were on record
    resumed = json.loads((out / "metrics.json").read_text())["quantum"]
    assert [s["shots"] for s in resumed] == [None, 8, 64, 256] and resumed[1] == metrics["quantum"][1]
    baseline = tmp_path / "baseline"
    assert invoke(train_args(tiny_model_dir, tiny_data_dir, baseline, "--featuremap", "none")).exit_code == 0
    refused = invoke(["eval", str(baseline), "--shots", "8"])
    assert refused.exit_code == 2 and "not trained with a quantum circuit feature map" in " ".join(
        refused.output.split()
    )


def test_quantum_report_tables_and_plots_an_evaluated_run(tiny_model_dir, tiny_data_dir, tmp_path):
    pytest.importorskip("qra_pennylane")
    import subprocess
    import sys
    from pathlib import Path

    run = tmp_path / "zz" / "seed0"
    args = train_args(tiny_model_dir, tiny_data_dir, run, "--featuremap", "pennylane-zz", "--fm", "qubits=2",
                      "--fm", "engine=native")  # fmt: skip
    assert invoke(args).exit_code == 0
    assert invoke(["eval", str(run), "--shots", "8,64", "--depolarizing", "0.5"]).exit_code == 0
    script = Path(__file__).parent.parent / "experiments" / "quantum_report.py"
    out = tmp_path / "quantum"
    completed = subprocess.run([sys.executable, str(script), str(run), "--out", str(out), "--shot-rate", "1000"],
                               capture_output=True, text=True)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads((out / "quantum.json").read_text())
    [result] = report["results"]
    rows = result["rows"]
    assert [(r["shots"], r["depolarizing"]) for r in rows] == [(None, 0.0), (8, 0.0), (64, 0.0), (None, 0.5)]
    assert rows[0]["accuracy_change"] == 0.0
    # one review of 48 tokens, 4 heads, layers 4 and 5: 2 · 4 · 48² circuits, each run `shots` times
    circuits = result["run"]["qpu_cost_per_review"]["circuits_per_forward"]
    assert circuits == 2 * 4 * 48**2
    assert rows[2]["qpu_shots_per_review"] == circuits * 64
    assert rows[2]["qpu_seconds_per_review"] == circuits * 64 / 1000
    assert (out / "accuracy_vs_shots_and_noise.png").stat().st_size > 0
    assert "| 64 | 0 | 0 |" in (out / "README.md").read_text()


def test_profile_steps_writes_where_a_training_step_spends_its_time(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "profiled"
    args = train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "rff", "--m", "16", "--profile-steps", "3")
    args[args.index("--epochs") + 1] = "3"  # 48 reviews / batch 8 = 6 steps an epoch; profiling starts at step 10
    assert invoke(args).exit_code == 0
    profile = (out / "profile.txt").read_text()
    assert "3 steps after 10" in profile and "ms per step" in profile
    assert "aten::" in profile  # torch's own operations, with their self CPU times


def test_training_and_evaluation_keep_sdpa_off_cudnn(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    """cuDNN attention rebuilds a graph per batch shape (results/scale/profile-*.txt); qra keeps it off while it
    trains and predicts, and gives the process its setting back afterwards."""
    import torch
    from transformers import Trainer

    from qra.experiment import evaluation

    seen = []
    original_step, original_predict = Trainer.training_step, evaluation.predict

    def recording_step(self, *a, **k):
        seen.append(("train", torch.backends.cuda.cudnn_sdp_enabled()))
        return original_step(self, *a, **k)

    monkeypatch.setattr(Trainer, "training_step", recording_step)
    out = tmp_path / "run"
    assert invoke(train_args(tiny_model_dir, tiny_data_dir, out)).exit_code == 0
    run = evaluation.load_finished_run(out, device="cpu")
    model_forward = run.model.forward

    def recording_forward(*a, **k):
        seen.append(("predict", torch.backends.cuda.cudnn_sdp_enabled()))
        return model_forward(*a, **k)

    monkeypatch.setattr(run.model, "forward", recording_forward)
    original_predict(run.model, run.tokenizer, run.texts[:4], 32, 4)
    assert {kind for kind, _ in seen} == {"train", "predict"} and not any(enabled for _, enabled in seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_a_resumed_run_keeps_its_calibration_frozen_and_reported(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                 monkeypatch):  # fmt: skip
    """A run whose angle scale was calibrated 'fixed' resumes (the scale stays out of the optimizer, as in the
    checkpoint) and its metrics still hold the calibration made before the interruption."""
    pytest.importorskip("qra_pennylane")
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "pennylane-zz", "--fm", "qubits=3",
                      "--fm", "engine=native", "--calibrate-angle-scale", "fixed", "--save-steps", "2")  # fmt: skip
    assert invoke_crashing(monkeypatch, args).exit_code != 0
    calibration = json.loads((out / "preparation.json").read_text())["angle_scale_calibration"]
    resumed = invoke([*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_checkpoint"] == "checkpoint-2"
    assert metrics["angle_scale_calibration"] == calibration
    model = load_run_model(out)
    scales = [float(p.detach().exp()) for name, p in model.named_parameters() if name.endswith("log_angle_scale")]
    expected = [layer["angle_scale"] for layer in calibration["layers"].values()]
    assert scales == pytest.approx(expected, rel=1e-5)  # frozen: still the calibrated values


def test_train_calibrates_angle_scale_then_temperature_and_records_both(tiny_model_dir, tiny_data_dir, tmp_path):
    pytest.importorskip("qra_pennylane")
    out = tmp_path / "run"
    result = invoke(train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "pennylane-zz", "--fm", "qubits=3",
                               "--fm", "engine=native", "--calibrate-angle-scale", "learned",
                               "--calibrate-temperature", "learned", "--learn-beta"))  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    temperature = metrics["temperature_calibration"]
    assert set(temperature["layers"]) == {"4", "5"} and "angle_scale_calibration" in metrics
    assert json.loads((out / "preparation.json").read_text())["temperature_calibration"] == temperature
    for layer in temperature["layers"].values():  # each head as sharp as the layer's own attention
        assert layer["entropy"] == pytest.approx(layer["target_entropy"], abs=5e-3)
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["calibrate_temperature"] == "learned"


def test_a_resumed_runs_train_loss_weighs_each_logged_loss_by_its_steps_and_counts_rerun_steps_once(tmp_path):
    from qra.experiment.training import logged_mean_loss

    log = tmp_path / "train_log.jsonl"
    entries = [
        {"step": 50, "loss": 1.0}, {"step": 100, "loss": 0.8},  # the first part, interrupted after step 100
        {"step": 100, "loss": 0.5},  # the second part re-ran steps 51-100 from checkpoint-50: this entry counts
        {"step": 150, "loss": 0.4}, {"step": 160, "loss": 0.2},  # a last, shorter interval
        {"step": 160, "train_loss": 0.0},  # the Trainer's own figure for a part with no steps: not a logged loss
        {"step": 160, "eval_loss": 9.0},
    ]
    log.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    assert logged_mean_loss(log) == pytest.approx((1.0 * 50 + 0.5 * 50 + 0.4 * 50 + 0.2 * 10) / 160)
    assert logged_mean_loss(tmp_path / "missing.jsonl") is None
