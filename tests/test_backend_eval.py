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
