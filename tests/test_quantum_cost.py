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


def test_projected_features_need_six_circuits_per_token_not_one_per_pair(tiny_model_dir):
    # tiny model: 4 heads; B=2, N=10: 3 bases x (10 queries + 10 keys) = 60 circuits per head and layer
    result = quantum_cost(str(tiny_model_dir), "qiskit-zz", {"qubits": 3, "features": "projected"}, [4, 5], 10, 2,
                          0.05, 1000.0)  # fmt: skip
    assert result["kernel"] == "projected" and result["circuits_per_head_and_layer"] == {"fidelity": 100,
                                                                                        "projected": 60}  # fmt: skip
    assert result["circuits_per_forward"] == 2 * 4 * 60 * 2
    assert result["circuits_per_review"] == {"fidelity": 4 * 100 * 2, "projected": 4 * 60 * 2}
    assert result["shots_per_circuit"] == 400  # a ±1 mean: standard error at most 1/sqrt(shots)
    fidelity = quantum_cost(str(tiny_model_dir), "qiskit-zz", {"qubits": 3}, [4, 5], 10, 2, 0.05, 1000.0)
    assert fidelity["kernel"] == "fidelity" and fidelity["circuits_per_review"] == result["circuits_per_review"]
    assert "hardware" not in fidelity


def test_transpiled_to_fake_torino_the_circuits_grow_and_carry_an_estimated_fidelity(tiny_model_dir):
    pytest.importorskip("qiskit_ibm_runtime")
    result = quantum_cost(str(tiny_model_dir), "qiskit-zz", {"qubits": 3}, [4], 10, 1, 0.05, 1000.0,
                          backend="fake_torino")  # fmt: skip
    hardware = result["hardware"]
    assert hardware["backend"] == "fake_torino" and hardware["optimization_level"] == 1
    logical = result["circuit"]
    for kind in ("fidelity_circuit", "projected_circuit"):
        found = hardware[kind]
        assert 0 < found["estimated_fidelity"] < 1 and found["measurements"] == 3 and found["qubits"] >= 3
        assert all(0 <= q < 133 for q in found["physical_qubits"])
    # Torino's two-qubit gate is CZ on a heavy-hex lattice: routing a fully entangled map adds gates
    assert hardware["fidelity_circuit"]["two_qubit_gates"] >= logical["two_qubit_gates"]
    assert hardware["projected_circuit"]["two_qubit_gates"] < hardware["fidelity_circuit"]["two_qubit_gates"]
    assert hardware["projected_circuit"]["estimated_fidelity"] > hardware["fidelity_circuit"]["estimated_fidelity"]


def test_the_estimated_fidelity_is_the_product_of_the_targets_reported_errors():
    pytest.importorskip("qiskit_ibm_runtime")
    from qiskit import QuantumCircuit
    from qra_qiskit.hardware import backend_target, circuit_counts

    target = backend_target("fake_torino")
    (a, b), _ = next(iter(target["cz"].items()))
    circuit = QuantumCircuit(133, 2)
    circuit.sx(a)
    circuit.cz(a, b)
    circuit.measure([a, b], [0, 1])
    expected = ((1 - target["sx"][(a,)].error) * (1 - target["cz"][(a, b)].error)
                * (1 - target["measure"][(a,)].error) * (1 - target["measure"][(b,)].error))  # fmt: skip
    counts = circuit_counts(circuit, target)
    assert counts["estimated_fidelity"] == pytest.approx(expected, rel=1e-12)
    assert counts["two_qubit_gates"] == 1 and counts["physical_qubits"] == sorted({a, b})
    with pytest.raises(ValueError, match="not a device with a target"):
        backend_target("aer")


@pytest.mark.parametrize("name", ["pennylane-zz", "pennylane-iqp"])
def test_any_circuit_map_becomes_a_qiskit_circuit_with_the_same_state(name):
    import numpy as np
    import torch
    from qiskit.quantum_info import Statevector
    from qra_qiskit.hardware import circuit_from_gates

    from qra.featuremaps import get

    fm = get(name, d_in=3, qubits=3, projection="identity", engine="native")
    angles = torch.rand(1, 3, dtype=torch.float64) * 6
    expected = fm.states(angles).detach().numpy()[0]
    found = Statevector(circuit_from_gates(fm.gates(angles), 3)).data
    assert np.abs(found - expected).max() <= 1e-10  # global phase included


def test_cli_reports_the_device_counts(tiny_model_dir, tmp_path):
    pytest.importorskip("qiskit_ibm_runtime")
    out = tmp_path / "cost.json"
    result = CliRunner().invoke(app, ["quantum-cost", "--featuremap", "pennylane-zz", "--fm", "qubits=3", "--model",
                                      str(tiny_model_dir), "--seq-len", "16", "--backend", "fake_torino",
                                      "--output", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fidelity circuit on fake_torino" in result.output and "projected features" in result.output
    saved = json.loads(out.read_text())
    assert saved["hardware"]["fidelity_circuit"]["two_qubit_gates"] >= 12
    refused = CliRunner().invoke(app, ["quantum-cost", "--fm", "qubits=3", "--model", str(tiny_model_dir),
                                       "--backend", "fake_nowhere"])  # fmt: skip
    assert refused.exit_code == 2 and "fake_torino" in refused.output
