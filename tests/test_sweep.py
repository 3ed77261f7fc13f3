"""experiments/sweep.py: a study grid from YAML, run in this process or in parallel processes, resumable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SWEEP = Path(__file__).parent.parent / "experiments" / "sweep.py"


def write_study(tmp_path, model_dir, data_dir, arms) -> Path:
    study = {
        "runs_dir": str(tmp_path / "runs"),
        "report_dir": str(tmp_path / "report"),
        "common": {"model": str(model_dir), "data_dir": str(data_dir), "max_length": 48, "epochs": 1,
                   "batch_size": 8, "eval_batch_size": 8, "attention_samples": 8, "device": "cpu"},
        "arms": arms,
    }  # fmt: skip
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def sweep(config: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SWEEP), str(config), *options], capture_output=True, text=True)


def test_parallel_sweep_runs_every_job_once_records_sharing_and_skips_finished_runs(
    tiny_model_dir, tiny_data_dir, tmp_path
):
    pytest.importorskip("qra_pennylane")
    arms = [
        {"name": "baseline", "featuremap": "none", "seeds": [0, 1]},
        {"name": "zz", "featuremap": "pennylane-zz", "featuremap_params": {"qubits": 2, "engine": "native"},
         "quantum_eval": {"shots": [16]}, "seeds": [0]},
    ]  # fmt: skip
    config = write_study(tmp_path, tiny_model_dir, tiny_data_dir, arms)
    # "GPU" 0 does not exist on a CPU machine: the children see CUDA_VISIBLE_DEVICES=0 and train on the CPU
    completed = sweep(config, "--jobs-per-gpu", "3", "--gpus", "0")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    runs = tmp_path / "runs"
    for name in ("baseline/seed0", "baseline/seed1", "zz/seed0"):
        record = json.loads((runs / name / "config.json").read_text())
        assert record["training"]["runs_sharing_device"] == 3
        assert (runs / name / "sweep.log").is_file()
    quantum = json.loads((runs / "zz" / "seed0" / "metrics.json").read_text())["quantum"]
    assert [setting["shots"] for setting in quantum] == [None, 16]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    # every run shared its device, so no configuration reports a training speed
    assert {row["train_samples_per_second_runs"] for row in summary} == {0}
    assert all(row["train_samples_per_second_mean"] is None for row in summary)
    again = sweep(config, "--no-report", "--dry-run")
    assert again.returncode == 0 and again.stdout.count("done") == 3 and "train " not in again.stdout


def test_sweep_names_an_unknown_arm(tiny_model_dir, tiny_data_dir, tmp_path):
    config = write_study(tmp_path, tiny_model_dir, tiny_data_dir, [{"name": "baseline", "featuremap": "none"}])
    completed = sweep(config, "--only", "rff", "--dry-run")
    assert completed.returncode != 0 and "no arm(s) rff" in completed.stderr


def test_runs_with_a_smaller_budget_are_their_own_configuration(tiny_model_dir, tiny_data_dir, tmp_path):
    arms = [
        {"name": "full", "featuremap": "none", "seeds": [0]},
        {"name": "subset", "featuremap": "none", "seeds": [0], "max_train_samples": 16},
    ]
    config = write_study(tmp_path, tiny_model_dir, tiny_data_dir, arms)
    completed = sweep(config)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert sorted(row["budget"]["max_train_samples"] or 0 for row in summary) == [0, 16]
    assert all(row["train_samples_per_second_runs"] == 1 for row in summary)  # trained alone: speed kept
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "baseline [16 train / all test]" in readme


def test_a_record_missing_its_evaluations_is_finished_again(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    """metrics.json without the robustness asked for (killed mid-evaluation, model not kept): train again."""
    monkeypatch.syspath_prepend(str(SWEEP.parent))
    import sweep as sweep_module

    study = {"word-dropout": [0.1]}
    arms = [{"name": "baseline", "featuremap": "none", "seeds": [0], "robustness": True}]
    config = write_study(tmp_path, tiny_model_dir, tiny_data_dir, arms)
    raw = yaml.safe_load(config.read_text()) | {"robustness": study}
    config.write_text(yaml.safe_dump(raw))
    _, [job] = sweep_module.load_plan(config)
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "robustness": {"clean": {}}}))
    assert job.pending_evaluations() == ["robustness"] and not job.finished()
    sweep_module.run_job(job)
    metrics = json.loads((job.run_dir / "metrics.json").read_text())
    assert "word-dropout=0.1" in metrics["robustness"] and (job.run_dir / "model").is_dir()
    assert job.finished() and job.pending_evaluations() == []


def test_a_sweep_needing_wordnet_stops_before_starting_jobs_when_it_is_missing(tiny_model_dir, tiny_data_dir,
                                                                              tmp_path):  # fmt: skip
    arms = [{"name": "baseline", "featuremap": "none", "seeds": [0, 1], "robustness": True}]
    config = write_study(tmp_path, tiny_model_dir, tiny_data_dir, arms)
    study = yaml.safe_load(config.read_text()) | {"robustness": {"synonym-swap": [0.1]}}
    config.write_text(yaml.safe_dump(study))
    # NLTK is importable but searches only an empty folder: no corpora/wordnet
    empty = tmp_path / "no_nltk_data"
    empty.mkdir()
    code = ("import nltk, runpy, sys; nltk.data.path[:] = [sys.argv[1]]; sys.argv = sys.argv[2:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")  # fmt: skip
    completed = subprocess.run([sys.executable, "-c", code, str(empty), str(SWEEP), str(config), "--jobs-per-gpu",
                                "2", "--gpus", "0"], capture_output=True, text=True)  # fmt: skip
    assert completed.returncode != 0
    assert "jobs of this sweep evaluate synonym swaps" in completed.stderr and "qra setup-wordnet" in completed.stderr
    assert "start " not in completed.stdout and not (tmp_path / "runs" / "baseline" / "seed0").exists()
