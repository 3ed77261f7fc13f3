"""qra's batched statevector engine against Qiskit's Statevector, gate by gate and fused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qra.featuremaps.statevector import GATES, Gate, fuse_parity_phases, simulate

qiskit = pytest.importorskip("qiskit")
from qiskit import QuantumCircuit  # noqa: E402
from qiskit.quantum_info import Statevector  # noqa: E402

QISKIT_GATES = [name for name in GATES if name not in ("id", "multirz", "parity_phase", "global_phase")]


def random_circuit(num_qubits: int, depth: int, rng: np.random.Generator, batch: int):
    """A random circuit over every engine gate, with per-sample angles, and its per-sample Qiskit twins."""
    gates, recipe = [], []
    names = [n for n in QISKIT_GATES if GATES[n][0] <= num_qubits] + ["multirz"] * (num_qubits > 1)
    for _ in range(depth):
        name = names[rng.integers(len(names))]
        arity, count = GATES[name]
        arity = int(rng.integers(1, num_qubits + 1)) if arity < 0 else arity
        qubits = tuple(int(q) for q in rng.choice(num_qubits, arity, replace=False))
        angles = rng.normal(size=(count, batch)) * 3
        gates.append(Gate(name, qubits, tuple(torch.tensor(a) for a in angles)))
        recipe.append((name, qubits, angles))
    # a Hadamard layer and a diagonal block in the middle exercise the fast paths too
    gates[depth // 2 : depth // 2] = [Gate("h", (q,)) for q in range(num_qubits)]
    recipe[depth // 2 : depth // 2] = [("h", (q,), np.zeros((0, batch))) for q in range(num_qubits)]
    return gates, qiskit_circuits(recipe, num_qubits, batch)


def qiskit_circuits(recipe, num_qubits: int, batch: int) -> list:
    """One Qiskit circuit per batch element from a recipe of (gate name, qubits, angles [params, batch])."""
    circuits = []
    for b in range(batch):
        circuit = QuantumCircuit(num_qubits)
        for name, qubits, angles in recipe:
            if name == "multirz":  # exp(-iθ/2 Z…Z): a CX ladder around RZ
                for q in qubits[:-1]:
                    circuit.cx(q, qubits[-1])
                circuit.rz(angles[0, b], qubits[-1])
                for q in reversed(qubits[:-1]):
                    circuit.cx(q, qubits[-1])
            else:
                getattr(circuit, name)(*angles[:, b], *qubits)
        circuits.append(circuit)
    return circuits


@pytest.mark.parametrize("num_qubits", [1, 2, 3, 4, 5, 6])
def test_random_circuits_equal_qiskit(num_qubits):
    rng = np.random.default_rng(num_qubits)
    gates, circuits = random_circuit(num_qubits, depth=40, rng=rng, batch=3)
    expected = np.stack([Statevector(c).data for c in circuits])
    exact = simulate(gates, num_qubits, dtype=torch.complex128)
    single = simulate(gates, num_qubits, dtype=torch.complex64)
    assert exact.shape == (3, 2**num_qubits)
    assert np.abs(exact.numpy() - expected).max() <= 1e-10
    assert np.abs(single.numpy() - expected).max() <= 1e-5


def test_parity_phase_fusion_is_exact_and_removes_the_cx_ladders():
    from qiskit import transpile
    from qiskit.circuit.library import zz_feature_map

    x = np.random.default_rng(0).normal(size=4)
    circuit = transpile(zz_feature_map(4).assign_parameters(x), basis_gates=["h", "p", "cx"], optimization_level=0)
    gates = [Gate(i.operation.name, tuple(circuit.find_bit(q).index for q in i.qubits),
                  tuple(float(p) for p in i.operation.params)) for i in circuit.data]  # fmt: skip
    fused = fuse_parity_phases(gates)
    assert {g.name for g in fused} == {"h", "p", "parity_phase"}
    assert np.abs(simulate(gates, 4).numpy() - Statevector(circuit).data).max() < 1e-12


def test_phases_stay_accurate_in_complex64_when_they_grow_large():
    # ZZ-type phases of hundreds of radians: reduced modulo 2π in float64 before the exponential.
    theta = torch.tensor([300.123456789, -511.987654321], dtype=torch.float64)
    gates = [Gate("h", (0,)), Gate("h", (1,)), Gate("parity_phase", (0, 1), (theta,)), Gate("p", (1,), (theta * 1.7,))]
    exact = simulate(gates, 2, dtype=torch.complex128)
    single = simulate(gates, 2, dtype=torch.complex64)
    assert (single.to(torch.complex128) - exact).abs().max() < 2e-7


def test_batch_shapes_broadcast_and_gradients_flow():
    theta = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    gates = [Gate("ry", (0,), (theta,)), Gate("cx", (0, 1)), Gate("rz", (1,), (0.3,)), Gate("rx", (1,), (theta * 2,))]
    states = simulate(gates, 2)
    assert states.shape == (2, 3, 4)
    torch.testing.assert_close(states.abs().square().sum(-1), torch.ones(2, 3, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda t: simulate([Gate("ry", (0,), (t,)), Gate("cx", (0, 1)),
                                                        Gate("rzz", (0, 1), (t * t,))], 2).real, (theta,))  # fmt: skip


def test_the_empty_circuit_is_the_zero_state_and_bad_gates_are_explained():
    assert torch.equal(simulate([], 2), torch.tensor([1, 0, 0, 0], dtype=torch.complex128))
    with pytest.raises(ValueError, match="no gate 'toffoli'"):
        Gate("toffoli", (0, 1, 2))
    with pytest.raises(ValueError, match="acts on 2 qubit"):
        Gate("cx", (0,))
    with pytest.raises(ValueError, match=r"outside qubits 0\.\.1"):
        simulate([Gate("h", (2,))], 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_states_equal_cpu_states():
    rng = np.random.default_rng(7)
    gates, _ = random_circuit(5, depth=30, rng=rng, batch=4)
    cuda_gates = [Gate(g.name, g.qubits, tuple(p.cuda() for p in g.params)) for g in gates]
    for dtype, tolerance in ((torch.complex128, 1e-12), (torch.complex64, 1e-5)):
        on_gpu = simulate(cuda_gates, 5, dtype=dtype)
        assert on_gpu.device.type == "cuda"
        assert (on_gpu.cpu() - simulate(gates, 5, dtype=dtype)).abs().max() < tolerance


def test_schedule_keeps_non_commuting_order_and_groups_layers():
    from qra.featuremaps.statevector import schedule

    gates = [Gate("h", (0,)), Gate("p", (0,), (0.1,)), Gate("h", (1,)), Gate("parity_phase", (0, 1), (0.2,)),
             Gate("h", (0,)), Gate("p", (1,), (0.3,)), Gate("h", (1,))]  # fmt: skip
    ordered = schedule(gates)
    assert [g.name for g in ordered] == ["h", "h", "p", "parity_phase", "p", "h", "h"]
    torch.testing.assert_close(simulate(ordered, 2), simulate(gates, 2))


def test_impossible_sizes_are_refused_with_the_number():
    from qra.featuremaps.statevector import check_memory, format_bytes

    assert format_bytes(2**44) == "16.0 TiB"
    with pytest.raises(MemoryError, match=r"need 64.0 TiB, but cpu has .* free"):
        check_memory(40, 8, torch.complex64, torch.device("cpu"))
    check_memory(4, 8, torch.complex64, torch.device("cpu"))  # small: fine
    pytest.importorskip("qra_pennylane")
    from qra.featuremaps import get

    with pytest.raises(ValueError, match=r"qubits=40 needs 8.0 TiB for a single input's state .* qubits <= 30"):
        get("pennylane-zz", d_in=8, qubits=40)
