"""The quantum feature maps against PennyLane and Qiskit themselves, and in attention and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import qra
from qra import kernel_attention
from qra.featuremaps import get

from .conftest import HEAD_DIM, tiny_bert

qml = pytest.importorskip("pennylane")
qiskit = pytest.importorskip("qiskit")
from qiskit import QuantumCircuit  # noqa: E402
from qiskit.circuit import ParameterVector  # noqa: E402
from qiskit.circuit.library import pauli_feature_map, zz_feature_map  # noqa: E402
from qiskit.quantum_info import Statevector  # noqa: E402
from qra_qiskit import QiskitCircuitMap  # noqa: E402

QUBITS = [1, 2, 3, 4, 5, 6]


def angles(qubits: int, count: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, qubits, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 * np.pi


def up_to_global_phase(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − e^{iφ} b| with φ aligning each pair of states."""
    overlap = np.sum(np.conj(b) * a, axis=-1, keepdims=True)
    return float(np.abs(a - b * overlap / np.abs(overlap)).max())


def pennylane_reference(template, x: torch.Tensor) -> np.ndarray:
    """States from PennyLane's default.qubit, wire order reversed into Qiskit's basis order."""
    qubits = x.shape[-1]
    device = qml.device("default.qubit", wires=qubits)

    @qml.qnode(device)
    def circuit(row):
        template(row, wires=list(reversed(range(qubits))))
        return qml.state()

    return np.stack([np.asarray(circuit(row.numpy())) for row in x])


def qiskit_reference(circuit, x: torch.Tensor) -> np.ndarray:
    return np.stack([Statevector(circuit.assign_parameters(row.numpy())).data for row in x])


def states(name: str, x: torch.Tensor, dtype: torch.dtype, **params) -> np.ndarray:
    fm = get(name, d_in=x.shape[-1], qubits=x.shape[-1], projection="identity", **params)
    with torch.no_grad():
        return fm.states(x.to(torch.float64 if dtype == torch.complex128 else torch.float32)).numpy()


def zz_reference(x: torch.Tensor) -> np.ndarray:
    # Qiskit's zz_feature_map refuses one qubit (no pairs); its Z-only Pauli map is the same circuit.
    qubits = x.shape[-1]
    circuit = zz_feature_map(qubits, reps=2) if qubits > 1 else pauli_feature_map(1, reps=2, paulis=["Z"])
    return qiskit_reference(circuit, x)


REFERENCES = {
    "pennylane-zz": zz_reference,
    "pennylane-iqp": lambda x: pennylane_reference(lambda r, wires: qml.IQPEmbedding(r, wires, n_repeats=2), x),
    "pennylane-angle": lambda x: pennylane_reference(lambda r, wires: qml.AngleEmbedding(r, wires, rotation="X"), x),
    "qiskit-zz": lambda x: qiskit_reference(zz_feature_map(x.shape[-1], reps=2), x),
    "qiskit-pauli": lambda x: qiskit_reference(pauli_feature_map(x.shape[-1], reps=2, paulis=["X", "XY"]), x),
}
PENNYLANE_ENGINES = ["framework", "native"]
QISKIT_ENGINES = ["native", "framework:statevector", "framework:aer"]  # engine:device
ENGINES = {
    "pennylane-zz": PENNYLANE_ENGINES,
    "pennylane-iqp": PENNYLANE_ENGINES,
    "pennylane-angle": PENNYLANE_ENGINES,
    "qiskit-zz": QISKIT_ENGINES,
    "qiskit-pauli": QISKIT_ENGINES,
}


def engine_params(engine: str) -> dict[str, str]:
    """``"framework:aer"`` -> ``{"engine": "framework", "device": "aer"}``."""
    name, _, device = engine.partition(":")
    return {"engine": name} | ({"device": device} if device else {})
CASES = [
    (name, engine, qubits)
    for name, engines in ENGINES.items()
    for engine in engines
    for qubits in QUBITS
    if not (name.startswith("qiskit") and qubits == 1)  # Qiskit's maps need two qubits for their pairs
]


@pytest.mark.parametrize(("name", "engine", "qubits"), CASES)
def test_states_equal_the_frameworks_own_simulator(name, engine, qubits):
    x = angles(qubits)
    expected = REFERENCES[name](x)
    params = engine_params(engine) | ({"paulis": "X,XY"} if name == "qiskit-pauli" else {})
    assert up_to_global_phase(states(name, x, torch.complex128, **params), expected) <= 1e-10
    assert up_to_global_phase(states(name, x, torch.complex64, **params), expected) <= 1e-5


@pytest.mark.parametrize("qubits", QUBITS[1:])
def test_pennylane_zz_is_qiskit_zz_exactly(qubits):
    x = angles(qubits, seed=3)
    reference = states("qiskit-zz", x, torch.complex128)
    assert np.abs(reference - zz_reference(x)).max() <= 1e-10
    for engine in ("framework", "native"):
        assert np.abs(states("pennylane-zz", x, torch.complex128, engine=engine) - reference).max() <= 1e-10


def test_fidelity_gram_matrix_equals_qiskit_machine_learning():
    from qiskit_machine_learning.kernels import FidelityStatevectorKernel

    x, y = angles(3, 6, seed=1), angles(3, 5, seed=2)
    expected = FidelityStatevectorKernel(feature_map=zz_feature_map(3)).evaluate(x.numpy(), y.numpy())
    for name in ("qiskit-zz", "pennylane-zz"):
        fm = get(name, d_in=3, qubits=3, projection="identity", engine="native")
        gram = fm.similarity(fm(x), fm(y))
        assert np.abs(gram.numpy() - expected).max() <= 1e-10


def test_native_gradients_equal_pennylane_backprop():
    x = torch.randn(6, 16, dtype=torch.float64)
    losses = {}
    for engine in ("framework", "native"):
        torch.manual_seed(0)
        fm = get("pennylane-zz", d_in=16, qubits=4, engine=engine).double()
        inputs = x.clone().requires_grad_()
        features = fm(inputs)
        loss = fm.similarity(features, features).sin().sum()
        loss.backward()
        losses[engine] = (loss.item(), inputs.grad, fm.encoder.weight.grad)
    (loss_a, *grads_a), (loss_b, *grads_b) = losses.values()
    assert abs(loss_a - loss_b) < 1e-10
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["pennylane-zz", "qiskit-zz"])
def test_maps_that_say_they_keep_their_states_do(name):
    """keeps_features_for_backward is a promise the fidelity kernel relies on to save the states rather than
    copies of its own: true exactly when the map's own graph saves the states it returns."""
    x = torch.randn(2, 3, 10, 16, requires_grad=True)
    for recompute in (False, True):
        fm = get(name, d_in=16, qubits=4, engine="native", recompute_states=recompute)
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t) or t, lambda t: t):
            states = fm(x)
        storage = states.untyped_storage().data_ptr()
        kept = any(t.untyped_storage().data_ptr() == storage for t in saved)
        assert fm.keeps_features_for_backward is kept is (not recompute)
    assert not get(name, d_in=16, qubits=4, engine="framework").keeps_features_for_backward
    assert not get(name, d_in=16, qubits=4, engine="native", shots=100).keeps_features_for_backward
    assert not get("rff", d_in=16).keeps_features_for_backward


@pytest.mark.parametrize("name", ["pennylane-zz", "qiskit-zz"])
def test_recomputed_states_give_the_same_gradients_and_keep_nothing_of_the_simulation(name):
    """recompute_states: the backward simulates again, so nothing state-sized is saved in the forward (only
    the inputs), and the states and every gradient (inputs, the learned projection) are the same."""
    x = torch.randn(2, 3, 40, 16)
    results = {}
    for recompute in (False, True):
        fm = get(name, d_in=16, qubits=6, engine="native", recompute_states=recompute)
        inputs = x.clone().requires_grad_()
        saved: list[int] = []

        def keep(tensor: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            states = fm(inputs)
        (states.real.sin().sum() + states.imag.square().sum()).backward()
        results[recompute] = (states.detach(), inputs.grad, fm.encoder.weight.grad, sum(saved))
        assert fm.featuremap_params["recompute_states"] is recompute  # saved with the model, rebuilt by name
    (states_a, *grads_a, saved_a), (states_b, *grads_b, saved_b) = results.values()
    torch.testing.assert_close(states_b, states_a, rtol=0, atol=0)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(b, a)
    state_bytes = states_a.numel() * states_a.element_size()
    assert saved_a >= state_bytes and saved_b <= x.numel() * x.element_size()


def test_any_user_circuit_runs_through_the_generic_qiskit_map():
    theta = ParameterVector("θ", 6)
    circuit = QuantumCircuit(3)
    for layer in range(2):
        for q in range(3):
            circuit.ry(theta[3 * layer + q], q)
        circuit.cx(0, 1)
        circuit.cx(1, 2)
    fm = QiskitCircuitMap(d_in=8, circuit=circuit, projection="random").double()
    x = torch.randn(5, 8, dtype=torch.float64)
    z = fm.angles(x)
    assert z.shape == (5, 6)
    expected = qiskit_reference(circuit, z.detach())
    assert np.abs(fm.states(x).detach().numpy() - expected).max() <= 1e-12
    assert torch.autograd.gradcheck(lambda t: fm.states(t).real, (x[:2].clone().requires_grad_(),))


@pytest.mark.parametrize("simulator", ["statevector", "aer"])
def test_forward_only_engines_refuse_gradients_clearly(simulator):
    fm = get("qiskit-zz", d_in=8, qubits=3, engine="framework", device=simulator)
    with pytest.raises(RuntimeError, match="forward-only: use engine='native'"):
        fm(torch.randn(2, 8))
    with torch.no_grad():
        assert fm(torch.randn(2, 8)).shape == (2, 8)


def test_real_lift_makes_the_fidelity_a_dot_product_for_linear_attention():
    fm = get("pennylane-zz", d_in=HEAD_DIM, qubits=3, engine="native", real_lift=True).double()
    plain = get("pennylane-zz", d_in=HEAD_DIM, qubits=3, engine="native").double()
    x, y = torch.randn(4, HEAD_DIM, dtype=torch.float64), torch.randn(5, HEAD_DIM, dtype=torch.float64)
    assert fm.is_linear and not plain.is_linear and fm.dim == 64
    torch.testing.assert_close(fm.similarity(fm(x), fm(y)), plain.similarity(plain(x), plain(y)))
    q, k, v = (torch.randn(2, 2, 6, HEAD_DIM, dtype=torch.float64) for _ in range(3))
    linear, weights = kernel_attention(q, k, v, fm, "linear", return_weights=True)
    torch.testing.assert_close(linear, kernel_attention(q, k, v, plain, "normalized")[0])
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="is_linear"):
        kernel_attention(q, k, v, plain, "linear")
    with pytest.raises(ValueError, match="qubits <= 6"):
        get("pennylane-zz", d_in=HEAD_DIM, qubits=7, real_lift=True)


def test_projection_errors_and_parameters_are_explained():
    with pytest.raises(ValueError, match="d_in equal to the circuit's 4 angles"):
        get("qiskit-zz", d_in=8, qubits=4, projection="identity")
    with pytest.raises(ValueError, match="accepted: identity, random, learned"):
        get("pennylane-zz", d_in=8, qubits=4, projection="pca")
    with pytest.raises(ValueError, match="accepted: native, framework"):
        get("pennylane-zz", d_in=8, qubits=4, engine="lightning")
    with pytest.raises(TypeError, match=r"wires; accepted: .*reps, .*qubits"):
        get("pennylane-zz", d_in=8, wires=4)


@pytest.mark.parametrize("engine", ["pennylane", "native"])
def test_a_patched_model_trains_with_pennylane_zz(engine, padded_batch):
    torch.manual_seed(0)
    model = qra.patch(tiny_bert(), "pennylane-zz", featuremap_params={"qubits": 3, "engine": engine},
                      layers=(4, 5), learn_beta=True)  # fmt: skip
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    labels = torch.tensor([0, 1])
    encoder = model.bert.encoder.layer[5].attention.self.qra_attention.featuremap.encoder
    before = encoder.weight.detach().clone()
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = model(**padded_batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert not torch.equal(encoder.weight, before)


def test_both_pennylane_engines_give_the_same_model_output(padded_batch):
    outputs = []
    for engine in ("pennylane", "native"):
        model = qra.patch(tiny_bert(), "pennylane-zz", featuremap_params={"qubits": 3, "engine": engine})
        with torch.no_grad():
            outputs.append(model(**padded_batch).logits)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)


def test_a_quantum_patched_model_saves_and_reloads(padded_batch, tmp_path):
    model = qra.patch(tiny_bert(), "qiskit-pauli", featuremap_params={"qubits": 3, "paulis": ["Z", "ZZ"]})
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, qra.KernelAttention):
                module.featuremap.encoder.weight.mul_(1.5)  # as if trained
        expected = model(**padded_batch).logits
    model.save_pretrained(tmp_path)
    reloaded = qra.load_patched(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**padded_batch).logits, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("name", "engine"), [("pennylane-zz", "pennylane"), ("pennylane-zz", "native"),
                                              ("qiskit-zz", "native"), ("pennylane-iqp", "native")])  # fmt: skip
def test_maps_run_on_cuda_and_match_cpu(name, engine):
    fm = get(name, d_in=16, qubits=4, engine=engine)
    x = torch.randn(64, 16)
    expected = fm(x)
    on_gpu = fm.cuda()(x.cuda())
    assert on_gpu.device.type == "cuda"
    assert (on_gpu.cpu() - expected).abs().max() < 1e-5


def test_finite_shot_kernels_have_the_binomial_mean_and_variance():
    fm = get("qiskit-zz", d_in=3, qubits=3, projection="identity", shots=200).double()
    exact = get("qiskit-zz", d_in=3, qubits=3, projection="identity").double()
    x = angles(3, 6, seed=4)
    features = fm(x)
    fidelity = exact.similarity(exact(x), exact(x))
    draws = torch.stack([fm.similarity(features, features) for _ in range(400)])
    assert torch.all(((draws * 200) - (draws * 200).round()).abs() < 1e-9)  # counts out of 200 shots
    variance = fidelity * (1 - fidelity) / 200
    assert torch.all((draws.mean(0) - fidelity).abs() <= 5 * (variance / 400).sqrt() + 1e-12)
    informative = variance > 1e-4
    ratio = draws.var(0)[informative] / variance[informative]
    assert 0.75 < ratio.mean() < 1.25


def test_finite_shots_are_reproducible_and_train_with_the_exact_gradient():
    x = angles(3, 5, seed=5).requires_grad_()

    def sampled(seed):
        fm = get("pennylane-zz", d_in=3, qubits=3, projection="identity", engine="native", shots=64, seed=seed)
        return fm.double().similarity(fm.double()(x), fm.double()(x))

    assert torch.equal(sampled(0), sampled(0)) and not torch.equal(sampled(0), sampled(1))
    sampled(0).sum().backward()
    sampled_gradient, x.grad = x.grad, None
    exact = get("pennylane-zz", d_in=3, qubits=3, projection="identity", engine="native").double()
    exact.similarity(exact(x), exact(x)).sum().backward()
    torch.testing.assert_close(sampled_gradient, x.grad)


def test_finite_shots_rule_out_linear_attention_and_are_validated():
    fm = get("pennylane-zz", d_in=HEAD_DIM, qubits=3, engine="native", real_lift=True, shots=100)
    assert not fm.is_linear
    q = torch.randn(1, 2, 4, HEAD_DIM)
    with pytest.raises(ValueError, match="is_linear"):
        kernel_attention(q, q, q, fm, "linear")
    with pytest.raises(ValueError, match="shots must be a positive integer"):
        get("qiskit-zz", d_in=3, qubits=3, shots=0)


def global_depolarizing_kraus(qubits: int, p: float) -> list[np.ndarray]:
    """Kraus operators of ρ → (1−p)ρ + p·I/d: the identity and every Pauli string, equally weighted."""
    import itertools

    single = {"I": np.eye(2), "X": np.array([[0, 1], [1, 0]]), "Y": np.array([[0, -1j], [1j, 0]]),
              "Z": np.diag([1, -1])}  # fmt: skip
    operators = []
    for letters in itertools.product("IXYZ", repeat=qubits):
        matrix = np.array([[1.0]])
        for letter in letters:
            matrix = np.kron(matrix, single[letter])
        weight = 1 - p + p / 4**qubits if set(letters) == {"I"} else p / 4**qubits
        operators.append(np.sqrt(weight) * matrix.astype(complex))
    return operators


@pytest.mark.parametrize("name", ["pennylane-zz", "qiskit-zz"])
@pytest.mark.parametrize("qubits", [2, 3])
def test_noisy_kernels_equal_pennylane_default_mixed(name, qubits):
    p, e = 0.1, 0.03
    fm = get(name, d_in=qubits, qubits=qubits, projection="identity", noise={"depolarizing": p, "readout": e})
    fm = fm.double()
    zz = get("pennylane-zz", d_in=qubits, qubits=qubits, projection="identity")
    x, y = angles(qubits, 3, seed=8), angles(qubits, 2, seed=9)
    kernel = fm.similarity(fm(x), fm(y))
    device = qml.device("default.mixed", wires=qubits)
    kraus = global_depolarizing_kraus(qubits, p)

    @qml.qnode(device)
    def compute_uncompute(a, b):
        zz.template(a, zz.wires)
        qml.adjoint(zz.template)(b, zz.wires)
        qml.QubitChannel(kraus, wires=range(qubits))
        for wire in range(qubits):
            qml.BitFlip(e, wires=wire)
        return qml.probs(wires=range(qubits))

    expected = np.array([[compute_uncompute(a.numpy(), b.numpy())[0] for b in y] for a in x])
    assert np.abs(kernel.detach().numpy() - expected).max() < 1e-10
    # a query needs only its state: the kernel from the queries' lighter features is the same
    torch.testing.assert_close(fm.similarity(fm.query_features(x), fm(y)), kernel)


def test_depolarizing_alone_is_the_closed_form_and_noise_is_validated():
    exact = get("qiskit-zz", d_in=3, qubits=3, projection="identity").double()
    noisy = get("qiskit-zz", d_in=3, qubits=3, projection="identity", noise={"depolarizing": 0.2}).double()
    x = angles(3, 4, seed=2)
    fidelity = exact.similarity(exact(x), exact(x))
    torch.testing.assert_close(noisy.similarity(noisy(x), noisy(x)), 0.8 * fidelity + 0.2 / 8)
    with pytest.raises(ValueError, match="accepted: depolarizing, readout"):
        get("qiskit-zz", d_in=3, qubits=3, noise={"dephasing": 0.1})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        get("qiskit-zz", d_in=3, qubits=3, noise={"readout": 1.5})


def test_noisy_kernels_work_in_attention_and_train():
    fm = get("pennylane-zz", d_in=HEAD_DIM, qubits=3, engine="native", noise={"depolarizing": 0.05, "readout": 0.02})
    q, k, v = (torch.randn(2, 2, 5, HEAD_DIM, requires_grad=True) for _ in range(3))
    out, weights = kernel_attention(q, k, v, fm, "normalized", return_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 5))
    out.sum().backward()
    assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("name", "legacy", "expected"),
    [
        ("pennylane-zz", {"engine": "pennylane"}, ("framework", "default.qubit")),
        ("qiskit-zz", {"engine": "statevector"}, ("framework", "statevector")),
        ("qiskit-zz", {"engine": "aer"}, ("framework", "aer")),
    ],
)
def test_engine_names_of_earlier_versions_still_load(name, legacy, expected):
    """Saved models record the engine names of earlier versions; they map onto native/framework."""
    fm = get(name, d_in=4, qubits=2, **legacy)
    assert (fm.engine, fm.device_name) == expected
    assert type(fm).upgrade_params(legacy)["engine"] == "framework"


def test_one_engine_vocabulary_and_a_clear_error_for_others():
    for name in ("pennylane-zz", "qiskit-zz", "pennylane-angle", "qiskit-pauli"):
        with pytest.raises(ValueError, match="accepted: native, framework"):
            get(name, d_in=4, qubits=2, engine="fast")


def test_set_measurement_switches_shots_and_noise_on_a_built_map():
    x = torch.rand(3, 4, dtype=torch.float64)[:, :2]
    fm = get("qiskit-zz", d_in=2, qubits=2, projection="identity").double()
    exact = fm.similarity(fm(x), fm(x))
    fm.set_measurement(shots=16)
    first = fm.similarity(fm(x), fm(x))
    fm.set_measurement(shots=16)  # the same setting draws the same samples again
    torch.testing.assert_close(fm.similarity(fm(x), fm(x)), first)
    assert not torch.allclose(first, exact) and torch.all((first * 16).round() == first * 16)
    fm.set_measurement(noise={"depolarizing": 0.5})
    torch.testing.assert_close(fm.similarity(fm(x), fm(x)), 0.5 * exact + 0.5 / 4)
    fm.set_measurement()
    torch.testing.assert_close(fm.similarity(fm(x), fm(x)), exact)
    with pytest.raises(ValueError, match="unknown noise"):
        fm.set_measurement(noise={"thermal": 0.1})


def pennylane_state_in_qra_order(template, x: torch.Tensor) -> np.ndarray:
    """PennyLane's own circuit on wires 0..q-1 (feature k on wire k), its states' bits reversed into qra's order."""
    qubits = x.shape[-1]
    device = qml.device("default.qubit", wires=qubits)

    @qml.qnode(device)
    def circuit(row):
        template(row, wires=list(range(qubits)))
        return qml.state()

    states = np.stack([np.asarray(circuit(row.numpy())) for row in x])
    return states.reshape(len(x), *[2] * qubits).transpose(0, *range(qubits, 0, -1)).reshape(len(x), -1)


@pytest.mark.parametrize("entanglement", ["linear", "circular", "full"])
@pytest.mark.parametrize("qubits", [2, 3, 4, 5])
@pytest.mark.parametrize("engine", PENNYLANE_ENGINES)
def test_pennylane_zz_entanglement_equals_qiskit_zz(entanglement, qubits, engine):
    x = angles(qubits, seed=4)
    expected = qiskit_reference(zz_feature_map(qubits, reps=2, entanglement=entanglement), x)
    found = states("pennylane-zz", x, torch.complex128, engine=engine, entanglement=entanglement)
    assert np.abs(found - expected).max() <= 1e-10
    qiskit_map = states("qiskit-zz", x, torch.complex128, entanglement=entanglement)
    assert np.abs(qiskit_map - expected).max() <= 1e-10
    with pytest.raises(ValueError, match="accepted: full, linear, circular"):
        get("pennylane-zz", d_in=qubits, entanglement="star")


@pytest.mark.parametrize("pattern", [[[0, 1], [1, 2]], [[2, 0]], [[0, 1], [0, 2], [1, 3], [2, 3]], []])
@pytest.mark.parametrize("engine", PENNYLANE_ENGINES)
def test_pennylane_iqp_pattern_equals_pennylanes_own(pattern, engine):
    qubits = 4
    x = angles(qubits, seed=5)
    expected = pennylane_state_in_qra_order(lambda r, wires: qml.IQPEmbedding(r, wires, n_repeats=2,
                                                                              pattern=pattern), x)  # fmt: skip
    assert up_to_global_phase(states("pennylane-iqp", x, torch.complex128, engine=engine, pattern=pattern),
                              expected) <= 1e-10  # fmt: skip
    default = states("pennylane-iqp", x, torch.complex128, engine=engine)
    all_pairs = pennylane_state_in_qra_order(lambda r, wires: qml.IQPEmbedding(r, wires, n_repeats=2), x)
    assert up_to_global_phase(default, all_pairs) <= 1e-10
    for bad in ([[0, 4]], [[1, 1]], "0-1", [[0, 1, 2]]):
        with pytest.raises(ValueError, match=r"pairs of distinct qubit indices in 0\.\.3"):
            get("pennylane-iqp", d_in=qubits, qubits=qubits, pattern=bad)


def test_sign_and_conjugate_in_qiskit_expressions_run_natively():
    theta = ParameterVector("θ", 3)
    circuit = QuantumCircuit(2)
    circuit.h([0, 1])
    circuit.ry(theta[0].sign() * theta[1] + theta[2].conjugate(), 0)
    circuit.rz((theta[1] - 1.5).sign() * theta[0], 1)
    circuit.cx(0, 1)
    circuit.rx(theta[2].conjugate() * theta[1], 1)
    fm = QiskitCircuitMap(d_in=3, circuit=circuit, projection="identity").double()
    x = torch.tensor([[0.3, 2.0, -0.7], [-1.1, 0.4, 1.3], [2.5, -0.2, 0.9]], dtype=torch.float64)
    expected = qiskit_reference(circuit, x)
    assert up_to_global_phase(fm.states(x).detach().numpy(), expected) <= 1e-12


def test_expressions_the_native_engine_cannot_compute_are_refused_when_built(monkeypatch):
    from qra_qiskit import maps

    theta = ParameterVector("θ", 2)
    circuit = QuantumCircuit(2)
    circuit.ry(theta[0].sign() + theta[1], 0)
    circuit.rz(theta[1], 1)
    monkeypatch.delitem(maps._TORCH_FUNCTIONS, "sign")  # as if Qiskit grew a function qra does not know
    with pytest.raises(ValueError, match="use sign, which engine='native' cannot compute; supported functions: Abs"):
        QiskitCircuitMap(d_in=2, circuit=circuit, projection="identity")
    QiskitCircuitMap(d_in=2, circuit=circuit, projection="identity", engine="framework")  # Qiskit's simulator can
