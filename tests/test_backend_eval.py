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
    entry = next(e for e in result["run"]["backends"] if e["backend"] == "aer")
    assert "predicted" not in entry and entry["samples"] == 2  # the per-review classes stay in the run's record
    readme = (out / "README.md").read_text()
    same = f"{entry['agreement_with_exact']:.0%}"
    row = f"| sampler | aer | 32 | 1 | 2 | {entry['accuracy']:.4f} | {entry['exact']['accuracy']:.4f} | {same} |"
    assert row in readme
    assert "--engine sampler --backend aer --shots 32 --optimization-level 1 --max-eval-samples 2" in readme
    assert not (out / "accuracy_vs_shots_and_noise.png").exists()  # no shots/noise sweep: no figure
    cost = result["run"]["qpu_cost_per_review"]  # projected features: measurement circuits, not compute–uncompute
    assert f"needs {cost['circuits_per_review']['projected']:,} measurement circuits" in readme
