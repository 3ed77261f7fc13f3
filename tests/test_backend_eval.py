"""qra eval --engine sampler / framework: a trained quantum model's circuits through a SamplerV2 or a shot device."""

from __future__ import annotations

import json

import pytest

from .test_train_cli import invoke, train_args

pytest.importorskip("qra_qiskit")


@pytest.fixture(scope="module")
def projected_run(tiny_model_dir, tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "projected"
    args = train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "qiskit-zz", "--fm", "qubits=2",
                      "--fm", "features=projected", "--mode", "linear", "--max-train-samples", "8",
                      "--max-eval-samples", "8")  # fmt: skip
    result = invoke(args)
    assert result.exit_code == 0, result.output
    return out


def test_eval_through_fake_torinos_sampler_is_recorded_and_resumes(projected_run, monkeypatch):
    pytest.importorskip("qiskit_ibm_runtime")
    args = ["eval", str(projected_run), "--engine", "sampler", "--backend", "fake_torino", "--shots", "64",
            "--max-eval-samples", "3"]  # fmt: skip
    result = invoke(args)
    assert result.exit_code == 0, result.output
    [entry] = json.loads((projected_run / "metrics.json").read_text())["quantum_backends"]
    assert {k: entry[k] for k in ("engine", "backend", "shots", "optimization_level", "samples")} == {
        "engine": "sampler", "backend": "fake_torino", "shots": 64, "optimization_level": 1, "samples": 3}
    assert 0 <= entry["accuracy"] <= 1 and 0 <= entry["exact"]["accuracy"] <= 1
    assert entry["accuracy_change"] == pytest.approx(entry["accuracy"] - entry["exact"]["accuracy"])
    agreeing = sum(a == b for a, b in zip(entry["predicted"], entry["exact"]["predicted"], strict=True))
    assert len(entry["predicted"]) == 3 and entry["agreement_with_exact"] == pytest.approx(agreeing / 3)
    assert "fake_torino" in result.output
    from qra_qiskit.maps import QiskitCircuitMap

    monkeypatch.setattr(QiskitCircuitMap, "measured_paulis", lambda *a: pytest.fail("measured again"))
    assert invoke(args).exit_code == 0  # on record: not measured again


def test_eval_records_each_review_and_resumes_at_the_next_after_an_interruption(projected_run, monkeypatch):
    pytest.importorskip("qiskit_aer")
    from qra_qiskit.maps import QiskitCircuitMap

    measure = QiskitCircuitMap.measured_paulis
    calls = []

    def counted(self, angles):
        if self.engine == "sampler":
            calls.append(angles.shape)
            if interrupt_at is not None and len(calls) == interrupt_at:
                raise KeyboardInterrupt  # the user stops a long evaluation
        return measure(self, angles)

    monkeypatch.setattr(QiskitCircuitMap, "measured_paulis", counted)
    args = ["eval", str(projected_run), "--engine", "sampler", "--backend", "aer", "--shots", "16"]
    interrupt_at = None
    assert invoke([*args, "--max-eval-samples", "1"]).exit_code == 0
    per_review = len(calls)  # every patched layer's queries and keys of one review
    assert per_review > 0 and all(shape[0] == 1 for shape in calls)  # one review at a time: no padded batch
    calls.clear()
    interrupt_at = 2 * per_review  # the 3rd review's measurements (the 2nd is on record, the first is reused)
    assert invoke([*args, "--max-eval-samples", "4"]).exit_code != 0
    metrics = json.loads((projected_run / "metrics.json").read_text())
    reviews = metrics["quantum_backend_reviews"]["sampler|aer|16|1"]  # every knob but the number of reviews
    assert len(reviews) == 2  # review 1 from the first evaluation, review 2 measured before the interruption
    assert [entry["samples"] for entry in metrics["quantum_backends"] if entry["backend"] == "aer"
            and entry["shots"] == 16] == [1]  # fmt: skip
    calls.clear()
    interrupt_at = None
    assert invoke([*args, "--max-eval-samples", "4"]).exit_code == 0
    assert len(calls) == 2 * per_review  # reviews 3 and 4 only
    metrics = json.loads((projected_run / "metrics.json").read_text())
    entry = next(e for e in metrics["quantum_backends"] if e["backend"] == "aer" and e["samples"] == 4)
    reviews = metrics["quantum_backend_reviews"]["sampler|aer|16|1"]
    assert entry["predicted"] == [int(review[1] > review[0]) for review in reviews]
    assert entry["agreement_with_exact"] is not None


def test_eval_with_engine_options_is_explained(projected_run):
    refused = invoke(["eval", str(projected_run), "--engine", "sampler", "--backend", "aer"])
    assert refused.exit_code == 2 and "--shots N" in refused.output
    refused = invoke(["eval", str(projected_run), "--backend", "aer", "--shots", "64"])
    assert refused.exit_code == 2 and "--engine" in refused.output
    refused = invoke(["eval", str(projected_run), "--engine", "sampler", "--backend", "ibm_x", "--shots", "8"])
    assert refused.exit_code == 2 and "fake_<device>" in " ".join(refused.output.split())


def test_quantum_report_tables_a_runs_backend_evaluations(projected_run, tmp_path):
    pytest.importorskip("qiskit_aer")
    import subprocess
    import sys
    from pathlib import Path

    args = ["eval", str(projected_run), "--engine", "sampler", "--backend", "aer", "--shots", "32",
            "--max-eval-samples", "2"]  # fmt: skip
    assert invoke(args).exit_code == 0
    script = Path(__file__).parent.parent / "experiments" / "quantum_report.py"
    out = tmp_path / "quantum"
    completed = subprocess.run([sys.executable, str(script), str(projected_run), "--out", str(out)],
                               capture_output=True, text=True)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    [result] = json.loads((out / "quantum.json").read_text())["results"]
    entry = next(e for e in result["run"]["backends"] if e["backend"] == "aer" and e["shots"] == 32)
    assert "predicted" not in entry and entry["samples"] == 2  # the per-review classes stay in the run's record
    readme = (out / "README.md").read_text()
    same = f"{entry['agreement_with_exact']:.0%}"
    row = f"| sampler | aer | 32 | 1 | 2 | {entry['accuracy']:.4f} | {entry['exact']['accuracy']:.4f} | {same} |"
    assert row in readme
    assert "--engine sampler --backend aer --shots 32 --optimization-level 1 --max-eval-samples 2" in readme
    assert not (out / "accuracy_vs_shots_and_noise.png").exists()  # no shots/noise sweep: no figure
    cost = result["run"]["qpu_cost_per_review"]  # projected features: measurement circuits, not compute–uncompute
    assert f"needs {cost['circuits_per_review']['projected']:,} measurement circuits" in readme
