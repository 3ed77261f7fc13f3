"""qra quantum-cost: shot counts from the binomial variance, circuits from the backends' own circuits."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qra.cli import app
from qra.experiment.quantum_cost import quantum_cost, shots_for_precision

pytest.importorskip("qra_qiskit")
pytest.importorskip("qra_pennylane")


def test_shots_bound_the_worst_case_standard_error():
    assert shots_for_precision(0.01) == 2500
    shots = shots_for_precision(0.03)
    assert (0.25 / shots) ** 0.5 <= 0.03 < (0.25 / (shots - 1)) ** 0.5
    with pytest.raises(ValueError, match=r"\(0, 0.5\)"):
        shots_for_precision(0.0)


def test_counts_for_a_small_model(tiny_model_dir):
    # tiny model: 4 heads; B=2, N=10 -> 2*4*100 = 800 kernel values per layer, two layers
    result = quantum_cost(str(tiny_model_dir), "pennylane-zz", {"qubits": 3}, [4, 5], 10, 2, 0.05, 1000.0)
    assert result["kernel_values_per_layer"] == 800 and result["circuits_per_forward"] == 1600
    assert result["shots_per_kernel_value"] == 100 and result["total_shots"] == 160_000
    assert result["qpu_seconds"] == pytest.approx(160.0)
    # ZZ map, 3 qubits, 2 reps: 3 pairs x 2 CNOTs x 2 reps, twice (compute and uncompute)
    assert result["circuit"]["two_qubit_gates"] == 24 and result["circuit"]["qubits"] == 3
    qiskit = quantum_cost(str(tiny_model_dir), "qiskit-zz", {"qubits": 3}, [4, 5], 10, 2, 0.05, 1000.0)["circuit"]
    assert 0 < qiskit["two_qubit_gates"] <= 24 and qiskit["depth"] > 0  # the transpiler may cancel a few


def test_non_quantum_maps_and_bad_layers_are_explained(tiny_model_dir):
    with pytest.raises(ValueError, match="not a quantum circuit map"):
        quantum_cost(str(tiny_model_dir), "rff", {}, [4], 10, 1, 0.01, 1e5)
    with pytest.raises(ValueError, match="the model has 6 layers"):
        quantum_cost(str(tiny_model_dir), "qiskit-zz", {"qubits": 3}, [6], 10, 1, 0.01, 1e5)


def test_cli_prints_the_table_and_writes_json(tiny_model_dir, tmp_path):
    out = tmp_path / "cost.json"
    result = CliRunner().invoke(app, ["quantum-cost", "--featuremap", "qiskit-zz", "--fm", "qubits=3", "--model",
                                      str(tiny_model_dir), "--seq-len", "16", "--output", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "circuits per forward pass" in result.output
    assert json.loads(out.read_text())["circuits_per_forward"] == 2 * 4 * 16 * 16


def test_a_circuit_map_without_a_backend_counts_its_engine_gates():
    from qra.featuremaps.circuit import CircuitFeatureMap
    from qra.featuremaps.statevector import Gate

    class Ladder(CircuitFeatureMap):
        def gates(self, angles):
            return [Gate("ry", (0,), (angles[..., 0],)), Gate("cx", (0, 1)), Gate("ry", (1,), (angles[..., 1],))]

    resources = Ladder(d_in=2, qubits=2, projection="identity").resources()
    # ry0, cx, ry1, then mirrored: ry1, cx, ry0 -> one chain of 6 gates
    assert resources == {"qubits": 2, "depth": 6, "gates": 6, "two_qubit_gates": 2, "basis": "qra engine gates"}
