"""Projected quantum features (features="projected"): single-qubit Pauli expectations of every circuit map,
against Qiskit's and PennyLane's own expectation values, with gradients, shots, noise and both kernels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qra import kernel_attention
from qra.featuremaps import get
from qra.featuremaps.circuit import pauli_expectations

qml = pytest.importorskip("pennylane")
pytest.importorskip("qiskit")
from qiskit.circuit.library import pauli_feature_map, zz_feature_map  # noqa: E402
from qiskit.quantum_info import SparsePauliOp, Statevector  # noqa: E402

QUBITS = 3


def inputs(count: int = 3, seed: int = 0, qubits: int = QUBITS) -> torch.Tensor:
    return torch.rand(count, qubits, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 * np.pi


def qiskit_expectations(circuit, x: torch.Tensor) -> np.ndarray:
    """⟨X_k⟩…, ⟨Y_k⟩…, ⟨Z_k⟩… from Statevector.expectation_value (SparsePauliOp on qubit k, little-endian)."""
    n = circuit.num_qubits
    operators = [SparsePauliOp.from_sparse_list([(pauli, [k], 1.0)], n) for pauli in "XYZ" for k in range(n)]
    rows = []
    for row in x:
        state = Statevector(circuit.assign_parameters(row.numpy()))
        rows.append([state.expectation_value(op).real for op in operators])
    return np.array(rows)


def pennylane_expectations(template, x: torch.Tensor) -> np.ndarray:
    """The same from PennyLane's qml.expval; qubit k is wire n − 1 − k."""
    n = x.shape[-1]
    wires = list(reversed(range(n)))

    @qml.qnode(qml.device("default.qubit", wires=n))
    def circuit(row):
        template(row, wires=wires)
        return [qml.expval(pauli(wires[k])) for pauli in (qml.PauliX, qml.PauliY, qml.PauliZ) for k in range(n)]

    return np.array([[float(v) for v in circuit(row.numpy())] for row in x])


REFERENCES = {
    "qiskit-zz": lambda x: qiskit_expectations(zz_feature_map(QUBITS, reps=2), x),
    "qiskit-pauli": lambda x: qiskit_expectations(pauli_feature_map(QUBITS, reps=2, paulis=["X", "XY"]), x),
    "pennylane-zz": lambda x: qiskit_expectations(zz_feature_map(QUBITS, reps=2), x),
    "pennylane-iqp": lambda x: pennylane_expectations(lambda r, wires: qml.IQPEmbedding(r, wires, n_repeats=2), x),
    "pennylane-angle": lambda x: pennylane_expectations(lambda r, wires: qml.AngleEmbedding(r, wires), x),
}
ENGINES = {
    "qiskit-zz": ["native", "framework:statevector", "framework:aer"],
    "qiskit-pauli": ["native", "framework:aer"],
    "pennylane-zz": ["native", "framework"],
    "pennylane-iqp": ["native", "framework"],
    "pennylane-angle": ["native", "framework"],
}
CASES = [(name, engine) for name, engines in ENGINES.items() for engine in engines]


def projected(name: str, engine: str = "native", **params):
    engine, _, device = engine.partition(":")
    extra = ({"device": device} if device else {}) | ({"paulis": "X,XY"} if name == "qiskit-pauli" else {})
    return get(name, d_in=QUBITS, qubits=QUBITS, projection="identity", engine=engine, features="projected",
               **extra, **params)  # fmt: skip


@pytest.mark.parametrize(("name", "engine"), CASES)
def test_projected_features_are_the_frameworks_pauli_expectations(name, engine):
    x = inputs(seed=1)
    fm = projected(name, engine)
    assert fm.dim == 3 * QUBITS and fm.is_linear and not fm.is_fidelity
    with torch.no_grad():
        features = fm(x)
    assert features.dtype == torch.float64 and features.shape == (3, 3 * QUBITS)
    assert np.abs(features.numpy() - REFERENCES[name](x)).max() <= 1e-10
    with torch.no_grad():
        single = fm(x.float())
    assert single.dtype == torch.float32 and np.abs(single.numpy() - REFERENCES[name](x)).max() <= 1e-5


def test_the_expectations_of_basis_and_product_states():
    # |0…0⟩: ⟨Z⟩ = 1; |+⟩ on qubit 0 only: ⟨X_0⟩ = 1; |+i⟩ on qubit 1: ⟨Y_1⟩ = 1 (bit k = qubit k)
    zero = torch.zeros(8, dtype=torch.complex128)
    zero[0] = 1
    assert pauli_expectations(zero, 3).tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1]
    plus = torch.zeros(8, dtype=torch.complex128)
    plus[0] = plus[1] = 1 / math.sqrt(2)
    assert torch.allclose(pauli_expectations(plus, 3), torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1.0], dtype=torch.float64))
    plus_i = torch.zeros(8, dtype=torch.complex128)
    plus_i[0], plus_i[2] = 1 / math.sqrt(2), 1j / math.sqrt(2)
    assert torch.allclose(pauli_expectations(plus_i, 3), torch.tensor([0, 0, 0, 0, 1, 0, 1, 0, 1.0],
                                                                      dtype=torch.float64))  # fmt: skip


@pytest.mark.parametrize("kernel", ["linear", "gaussian"])
def test_gradients_equal_finite_differences(kernel):
    fm = get("qiskit-zz", d_in=5, qubits=QUBITS, engine="native", features="projected", projected_kernel=kernel,
             gamma=0.5).double()  # fmt: skip
    x, y = torch.randn(3, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: fm.similarity(fm(a), fm(b)),
                                    (x.requires_grad_(), y.requires_grad_()))  # fmt: skip
    fm(x).sum().backward()
    assert fm.encoder.weight.grad is not None and fm.encoder.weight.grad.abs().sum() > 0


def test_linear_and_gaussian_kernels_in_attention():
    linear = projected("qiskit-zz")
    gaussian = projected("qiskit-zz", projected_kernel="gaussian", gamma=0.7)
    assert linear.is_linear and not gaussian.is_linear
    x, y = inputs(4, 2), inputs(5, 3)
    fx, fy = linear(x), linear(y)
    torch.testing.assert_close(linear.similarity(fx, fy), fx @ fy.T)
    torch.testing.assert_close(gaussian.similarity(fx, fy), torch.exp(-0.7 * torch.cdist(fx, fy).square()))
    q, k, v = (torch.rand(1, 2, 6, QUBITS, dtype=torch.float64) for _ in range(3))
    fast, weights = kernel_attention(q, k, v, linear, "linear", return_weights=True)
    scores = linear(q) @ linear(k).transpose(-1, -2)  # S_ij = φ(q_i)·φ(k_j) (may be negative)
    torch.testing.assert_close(weights, scores / scores.sum(-1, keepdim=True))
    torch.testing.assert_close(fast, weights @ v)
    with pytest.raises(ValueError, match="is_linear"):
        kernel_attention(q, k, v, gaussian, "linear")
    softmax, weights = kernel_attention(q, k, v, gaussian, "softmax", return_weights=True)
    assert torch.isfinite(softmax).all() and torch.allclose(weights.sum(-1), torch.ones(1, 2, 6, dtype=torch.float64))


def test_shots_give_binomial_estimates_and_noise_scales_the_expectations():
    x = inputs(2, 4)
    exact = projected("pennylane-iqp", "native")(x).detach()
    shots, draws = 256, 400
    fm = projected("pennylane-iqp", "native", shots=shots)
    samples = torch.stack([fm(x).detach() for _ in range(draws)])
    assert fm.is_linear  # a sampled feature vector is still a dot-product map
    # each estimate 2·Binomial(shots, (1+⟨P⟩)/2)/shots − 1: mean ⟨P⟩, variance (1 − ⟨P⟩²)/shots
    z = (samples.mean(0) - exact) / ((1 - exact.square()) / shots / draws).clamp_min(1e-8).sqrt()
    assert z.abs().max() < 4.5
    assert torch.allclose(samples.var(0), (1 - exact.square()) / shots, rtol=0.25, atol=1e-4)
    fm.set_measurement(shots=shots)  # the stream restarts: reproducible
    again = fm(x).detach()
    fm.set_measurement(shots=shots)
    assert torch.equal(fm(x).detach(), again)
    noisy = projected("pennylane-iqp", "native", noise={"depolarizing": 0.2, "readout": 0.05})
    assert noisy.dim == 3 * QUBITS
    torch.testing.assert_close(noisy(x).detach(), exact * 0.8 * 0.9)


def test_a_pennylane_shot_device_measures_the_projected_features():
    x = inputs(3, 5)
    exact = projected("pennylane-angle", "framework")(x).detach()
    shots = 4000
    for device in ("default.qubit", "lightning.qubit"):
        fm = projected("pennylane-angle", "framework", shots=shots)
        fm.set_engine("framework", device)
        measured = fm(x).detach()
        z = (measured - exact) / ((1 - exact.square()) / shots).clamp_min(1e-4).sqrt()
        assert measured.shape == (3, 3 * QUBITS) and z.abs().max() < 4.5 and not torch.equal(measured, exact)
    with pytest.raises(ValueError, match="noisy PennyLane device"):
        projected("pennylane-angle", "framework", shots=10, noise={"readout": 0.1})(x)


def test_a_pennylane_shot_device_measures_the_fidelity_kernel():
    """Without features="projected", a PennyLane device with shots estimates every query–key fidelity itself
    (the all-zeros frequency of U(y)†U(x)): binomial around the exact fidelity, in attention too."""
    x, y = inputs(3, 5) / 3, inputs(4, 6) / 3  # moderate angles: fidelities away from 0 and 1
    built = {"d_in": QUBITS, "qubits": QUBITS, "projection": "identity"}
    exact_map = get("pennylane-zz", engine="native", **built)
    with torch.no_grad():
        exact = exact_map.similarity(exact_map(x), exact_map(y))
    shots = 4000
    for device in ("default.qubit", "lightning.qubit"):
        fm = get("pennylane-zz", engine="framework", shots=shots, **built)
        fm.set_engine("framework", device)
        assert fm.measures_kernel and not fm.is_fidelity and not fm.is_linear and fm.dim == fm.num_angles
        with torch.no_grad():
            measured = fm.similarity(fm.query_features(x), fm(y))
        z = (measured - exact) / (exact * (1 - exact) / shots).clamp_min(1e-4).sqrt()
        assert measured.shape == (3, 4) and z.abs().max() < 4.5 and not torch.equal(measured, exact)
    q, k, v = x[None, None].float(), y[None, None].float(), torch.randn(1, 1, 4, 2)
    fm = get("pennylane-zz", engine="framework", shots=shots, **built)
    out, weights = kernel_attention(q, k, v, fm, "softmax", return_weights=True)
    assert out.shape == (1, 1, 3, 2) and torch.allclose(weights.sum(-1), torch.ones(1, 1, 3))
    noisy = get("pennylane-zz", engine="framework", shots=10, noise={"depolarizing": 0.1}, **built)
    with pytest.raises(ValueError, match="noisy PennyLane device"):
        noisy(x)


def test_features_options_are_validated():
    with pytest.raises(ValueError, match="accepted: state, projected"):
        get("qiskit-zz", d_in=4, qubits=2, features="pauli")
    with pytest.raises(ValueError, match="accepted: linear, trace, gaussian"):
        get("qiskit-zz", d_in=4, qubits=2, features="projected", projected_kernel="rbf")
    with pytest.raises(ValueError, match="gamma"):
        get("qiskit-zz", d_in=4, qubits=2, features="projected", projected_kernel="gaussian", gamma=0)
    with pytest.raises(ValueError, match="not both"):
        get("pennylane-zz", d_in=4, qubits=2, features="projected", real_lift=True)
    assert get("qiskit-zz", d_in=4, qubits=2).featuremap_params["features"] == "state"


def test_the_trace_kernel_is_huangs_linear_projected_kernel_and_never_negative():
    """Σ_k Tr(ρ_k(x) ρ_k(y)) over single-qubit reduced states, from Qiskit's partial traces."""
    from qiskit.quantum_info import DensityMatrix, Statevector, partial_trace

    fm = get("qiskit-zz", d_in=3, qubits=3, projection="identity", features="projected",
             projected_kernel="trace").double()  # fmt: skip
    x, y = torch.rand(4, 3, dtype=torch.float64) * 6.28, torch.rand(5, 3, dtype=torch.float64) * 6.28
    assert fm.is_linear and fm.dim == 10
    kernel = fm.similarity(fm(x), fm(y))
    states = get("qiskit-zz", d_in=3, qubits=3, projection="identity").double().states

    def reduced(state):
        rho = DensityMatrix(Statevector(state.detach().numpy()))
        return [partial_trace(rho, [q for q in range(3) if q != k]).data for k in range(3)]

    for i, sx in enumerate(states(x)):
        for j, sy in enumerate(states(y)):
            expected = sum(np.trace(a @ b).real for a, b in zip(reduced(sx), reduced(sy), strict=True))
            assert kernel[i, j].item() == pytest.approx(expected, abs=1e-10)
    assert (kernel >= 0).all()
    q, k, v = (torch.randn(1, 2, 6, 3, dtype=torch.float64) for _ in range(3))
    linear, weights = kernel_attention(q, k, v, fm, "linear", return_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 6, dtype=torch.float64))
    torch.testing.assert_close(linear, weights @ v)
    assert (weights >= 0).all()
