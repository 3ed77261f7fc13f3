"""The circuit compiler of qra's statevector engine: states against Qiskit, gradients, caching, memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qra.featuremaps import compiler
from qra.featuremaps.compiler import HadamardLayer, estimate_bytes, max_batch_for, program_for
from qra.featuremaps.statevector import GATES, Gate, reference_simulate, simulate

from .test_statevector import qiskit_circuits, random_circuit

qiskit = pytest.importorskip("qiskit")
from qiskit import QuantumCircuit  # noqa: E402
from qiskit.circuit.library import pauli_feature_map, zz_feature_map  # noqa: E402
from qiskit.quantum_info import Statevector  # noqa: E402

ZOO = ["h", "x", "y", "z", "s", "t", "sx", "rx", "ry", "rz", "p", "u", "cx", "cy", "cz", "swap", "rzz", "cp", "crz",
       "crx", "cry", "multirz"]  # fmt: skip


def assert_states(gates, num_qubits, expected: np.ndarray, **kwargs) -> None:
    exact = simulate(gates, num_qubits, dtype=torch.complex128, **kwargs).detach().numpy()
    single = simulate(gates, num_qubits, dtype=torch.complex64, **kwargs).detach().numpy()
    assert np.abs(exact.reshape(expected.shape) - expected).max() <= 1e-10
    assert np.abs(single.reshape(expected.shape) - expected).max() <= 1e-5


def qiskit_states(circuit: QuantumCircuit, x: np.ndarray) -> np.ndarray:
    return np.stack([Statevector(circuit.assign_parameters(row)).data for row in x])


def map_states(fm, x: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    with torch.no_grad():
        return fm.states(x.to(torch.float64 if dtype == torch.complex128 else torch.float32)).numpy()


@pytest.mark.parametrize("entanglement", ["linear", "circular", "full"])
@pytest.mark.parametrize("reps", [1, 2, 3])
def test_qiskit_zz_map_equals_qiskit(entanglement, reps):
    from qra_qiskit import QiskitZZ

    n = 4
    fm = QiskitZZ(n, reps=reps, entanglement=entanglement, projection="identity")
    x = torch.rand(3, n, generator=torch.Generator().manual_seed(reps), dtype=torch.float64) * 2 * math.pi
    expected = qiskit_states(zz_feature_map(n, reps=reps, entanglement=entanglement), x.numpy())
    assert np.abs(map_states(fm, x, torch.complex128) - expected).max() <= 1e-10
    assert np.abs(map_states(fm, x.float().double(), torch.complex64) - qiskit_states(
        fm.circuit, x.float().double().numpy())).max() <= 1e-5  # fmt: skip


@pytest.mark.parametrize("paulis", [["Z", "ZZ"], ["X", "XY"], ["Y", "ZX", "ZZZ"]])
def test_qiskit_pauli_maps_equal_qiskit(paulis):
    from qra_qiskit import QiskitPauli

    n = 3
    fm = QiskitPauli(n, paulis=paulis, reps=2, projection="identity")
    x = torch.rand(3, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 * math.pi
    expected = qiskit_states(pauli_feature_map(n, reps=2, paulis=paulis), x.numpy())
    assert np.abs(map_states(fm, x, torch.complex128) - expected).max() <= 1e-10
    assert np.abs(map_states(fm, x, torch.complex64) - expected).max() <= 1e-5


def pennylane_twin(name: str, x: np.ndarray, reps: int = 2) -> list[QuantumCircuit]:
    """Qiskit circuits equal to the PennyLane templates (qubit k is PennyLane wire n-1-k in the maps)."""
    circuits = []
    n = x.shape[-1]
    for row in x:
        circuit = QuantumCircuit(n)
        if name == "angle":
            for k in range(n):
                circuit.rx(row[k], k)
        for _ in range(reps if name != "angle" else 0):
            circuit.h(range(n))
            for k in range(n):
                (circuit.rz if name == "iqp" else circuit.p)(row[k] if name == "iqp" else 2 * row[k], k)
            for i in range(n):
                for j in range(i + 1, n):
                    if name == "iqp":
                        circuit.rzz(row[i] * row[j], i, j)
                    else:
                        circuit.cx(i, j)
                        circuit.p(2 * (math.pi - row[i]) * (math.pi - row[j]), j)
                        circuit.cx(i, j)
        circuits.append(circuit)
    return circuits


@pytest.mark.parametrize("name", ["iqp", "angle", "zz"])
def test_pennylane_maps_on_the_compiled_engine_equal_qiskit(name):
    pytest.importorskip("pennylane")
    from qra.featuremaps import get

    n = 4
    fm = get(f"pennylane-{name}", d_in=n, qubits=n, projection="identity", engine="native")
    x = torch.rand(3, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 * math.pi
    expected = np.stack([Statevector(c).data for c in pennylane_twin(name, x.numpy())])
    assert np.abs(map_states(fm, x, torch.complex128) - expected).max() <= 1e-10
    assert np.abs(map_states(fm, x, torch.complex64) - expected).max() <= 1e-5


def layered_circuit(num_qubits: int, layers: int, rng: np.random.Generator, batch: int):
    """Hardware-efficient-style circuits: full single-qubit layers (first on |0…0⟩), entanglers, H layers."""
    ones = [n for n in ZOO if GATES[n][0] == 1]
    twos = [n for n in ZOO if GATES[n][0] == 2 or n == "multirz"]
    gates, recipe = [], []

    def add(name, qubits):
        count = GATES[name][1]
        angles = rng.normal(size=(count, batch)) * 3
        gates.append(Gate(name, qubits, tuple(torch.tensor(a) for a in angles)))
        recipe.append((name, qubits, angles))

    for layer in range(layers):
        for q in range(num_qubits):
            add("h" if layer % 3 == 1 else ones[rng.integers(len(ones))], (q,))
        for _ in range(num_qubits):
            name = twos[rng.integers(len(twos))]
            arity = int(rng.integers(2, num_qubits + 1)) if name == "multirz" else 2
            add(name, tuple(int(q) for q in rng.choice(num_qubits, arity, replace=False)))
    return gates, qiskit_circuits(recipe, num_qubits, batch)


@pytest.mark.parametrize("num_qubits", [2, 3, 4, 5, 6])
def test_random_zoo_equals_qiskit(num_qubits):
    rng = np.random.default_rng(100 + num_qubits)
    for gates, circuits in (random_circuit(num_qubits, 40, rng, 3), layered_circuit(num_qubits, 4, rng, 3)):
        assert_states(gates, num_qubits, np.stack([Statevector(c).data for c in circuits]))


def test_twelve_qubits_equal_qiskit_and_the_hadamard_layer_is_factorised():
    n = 12
    layer = HadamardLayer(n, torch.complex128, torch.device("cpu"))
    assert [size for _, size, _ in layer.blocks] == [4, 4, 4]
    x = torch.rand(2, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 * math.pi
    circuit = zz_feature_map(n, reps=2, entanglement="linear")
    gates = [Gate("h", (q,)) for q in range(n)] + [Gate("p", (q,), (2 * x[:, q],)) for q in range(n)]
    gates += [Gate("rzz", (q, q + 1), (2 * (math.pi - x[:, q]) * (math.pi - x[:, q + 1]),)) for q in range(n - 1)]
    gates += [Gate("global_phase", (), (-(math.pi - x[:, q]) * (math.pi - x[:, q + 1]),)) for q in range(n - 1)]
    expected = qiskit_states(circuit, x.numpy())
    program, _ = program_for(gates * 2, n, torch.complex128, torch.device("cpu"))
    # all global phases commute to the first phase layer, where they are one scalar per input
    assert program.describe() == ["hadamard(4+4+4)", f"phase({2 * n - 1} terms, {2 * (n - 1)} global)",
                                  "hadamard(4+4+4)", f"phase({2 * n - 1} terms)"]  # fmt: skip
    assert_states(gates * 2, n, expected)


@pytest.mark.parametrize("name", ["qiskit-zz", "pennylane-zz", "pennylane-iqp"])
def test_zz_and_iqp_maps_compile_to_hadamard_and_phase_layers(name):
    pytest.importorskip("pennylane")
    from qra.featuremaps import get

    fm = get(name, d_in=5, qubits=5, projection="identity", engine="native")
    program, _ = program_for(fm.gates(torch.rand(3, 5, dtype=torch.float64)), 5, torch.complex64, torch.device("cpu"))
    assert [kind.split("(")[0] for kind in program.describe()] == ["hadamard", "phase"] * 2


def leaves_of(gates):
    leaves = [p.detach().clone().requires_grad_() for g in gates for p in g.params]
    it = iter(leaves)
    return [Gate(g.name, g.qubits, tuple(next(it) for _ in g.params)) for g in gates], leaves


@pytest.mark.parametrize("num_qubits", [2, 3])
def test_gradients_equal_finite_differences(num_qubits):
    rng = np.random.default_rng(num_qubits)
    for gates, _ in (random_circuit(num_qubits, 14, rng, 2), layered_circuit(num_qubits, 2, rng, 2)):
        _, leaves = leaves_of(gates)

        def states(*params, gates=gates):
            it = iter(params)
            rebuilt = [Gate(g.name, g.qubits, tuple(next(it) for _ in g.params)) for g in gates]
            return torch.view_as_real(simulate(rebuilt, num_qubits))

        assert torch.autograd.gradcheck(states, tuple(leaves))


@pytest.mark.parametrize("max_batch", [None, 2])
def test_gradients_of_shared_parameters_and_initial_states(max_batch):
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    shared = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    initial = torch.randn(5, 8, dtype=torch.complex128, requires_grad=True)

    def states(theta, shared, initial):
        gates = [Gate("h", (0,)), Gate("rx", (1,), (theta,)), Gate("cx", (0, 2)), Gate("rzz", (1, 2), (shared,)),
                 Gate("crx", (2, 0), (theta * shared,)), Gate("ry", (2,), (shared,)), Gate("p", (0,), (theta,)),
                 Gate("global_phase", (), (theta,)), Gate("global_phase", (), (shared * 2,))]  # fmt: skip
        return torch.view_as_real(simulate(gates, 3, initial_state=initial, max_batch=max_batch))

    assert torch.autograd.gradcheck(states, (theta, shared, initial))


@pytest.mark.parametrize("num_qubits", [4, 6])
def test_gradients_equal_plain_autograd(num_qubits):
    rng = np.random.default_rng(7 + num_qubits)
    for gates, _ in (random_circuit(num_qubits, 40, rng, 4), layered_circuit(num_qubits, 4, rng, 4)):
        gates, leaves = leaves_of(gates)
        weights = torch.randn(4, 2**num_qubits, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
        found = []
        for engine in (simulate, reference_simulate):
            states = engine(gates, num_qubits)
            loss = (states * weights).real.sum() + states.abs().square()[:, 0].sum()
            found.append(torch.autograd.grad(loss, leaves))
        for ours, plain in zip(*found, strict=True):
            torch.testing.assert_close(ours, plain, rtol=1e-9, atol=1e-10)


def test_complex64_gradients_are_close_to_complex128():
    x = torch.rand(64, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2 * math.pi
    grads = []
    for dtype in (torch.complex64, torch.complex128):
        leaf = x.clone().requires_grad_()
        gates = [Gate("h", (q,)) for q in range(5)] + [Gate("p", (q,), (2 * leaf[:, q],)) for q in range(5)]
        gates += [Gate("parity_phase", (i, j), (2 * (math.pi - leaf[:, i]) * (math.pi - leaf[:, j]),))
                  for i in range(5) for j in range(i + 1, 5)]  # fmt: skip
        states = simulate(gates * 2, 5, dtype=dtype)
        (states.real[:, :7].sum() + states.imag[:, 3:].sum()).backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)


def zz_gates(x: torch.Tensor, reps: int) -> list[Gate]:
    n = x.shape[-1]
    gates = []
    for _ in range(reps):
        gates += [Gate("h", (q,)) for q in range(n)] + [Gate("p", (q,), (2 * x[:, q],)) for q in range(n)]
        for i in range(n):
            for j in range(i + 1, n):
                theta = 2 * (math.pi - x[:, i]) * (math.pi - x[:, j])
                gates += [Gate("cx", (i, j)), Gate("p", (j,), (theta,)), Gate("cx", (i, j))]
        gates += [Gate("ry", (q,), (x[:, q],)) for q in range(n)] + [Gate("crx", (0, 1), (x[:, 0],))]
    return gates


def saved_state_copies(engine, reps: int, n: int = 5, batch: int = 32) -> int:
    """How many tensors of at least one batch of states autograd saves for backward, inside the engine."""
    x = torch.rand(batch, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_()
    gates = zz_gates(x, reps)
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        states = engine(gates, n, dtype=torch.complex64)
    states.real.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    return sum(nbytes >= batch * 2**n * 8 for nbytes in storages.values())


def test_backward_memory_does_not_grow_with_the_number_of_layers():
    # the compiled engine keeps its output only; the plain autograd engine keeps copies per gate/layer
    assert [saved_state_copies(simulate, reps) for reps in (1, 2, 4)] == [1, 1, 1]
    plain = [saved_state_copies(reference_simulate, reps) for reps in (1, 2, 4)]
    assert plain[0] > 1 and plain[2] > plain[1] > plain[0]


def test_programs_are_cached_per_structure(monkeypatch):
    compiled = []
    original = compiler.compile_gates
    monkeypatch.setattr(compiler, "compile_gates", lambda *a: compiled.append(1) or original(*a))
    compiler.clear_cache()
    for _ in range(3):  # new angle tensors each step, same structure: one compile
        x = torch.rand(4, 3, dtype=torch.float64)
        simulate(zz_gates(x, 2), 3)
    assert len(compiled) == 1
    simulate(zz_gates(torch.rand(4, 3, dtype=torch.float64), 2), 3, dtype=torch.complex64)
    simulate([Gate("rx", (0,), (0.3,))], 3)
    simulate([Gate("rx", (0,), (0.4,))], 3)  # constants are part of the structure
    assert len(compiled) == 4


def test_chunked_runs_equal_whole_runs_and_the_memory_estimate_is_consistent():
    x = torch.rand(10, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    whole, chunked = (simulate(zz_gates(x, 2), 4, max_batch=m) for m in (None, 3))
    torch.testing.assert_close(whole, chunked, rtol=0, atol=1e-13)
    state = 196_608 * 2**8 * 8
    assert estimate_bytes(8, 196_608) == 2 * state + 8 * state
    assert estimate_bytes(8, 196_608, backward=False, max_batch=16_384) == state + 4 * 16_384 * 2**8 * 8
    assert estimate_bytes(12, 1000, torch.complex128) == 10 * 1000 * 2**12 * 16
    chunk = max_batch_for(8, 2**30)
    assert 8 * chunk * 2**8 * 8 <= 2**30 < 8 * (chunk + 1) * 2**8 * 8


def test_complex64_stays_close_to_complex128_with_large_phases():
    x = torch.rand(16, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 40
    exact, single = (simulate(zz_gates(x, 3), 6, dtype=d) for d in (torch.complex128, torch.complex64))
    assert (single.to(torch.complex128) - exact).abs().max() < 2e-6
