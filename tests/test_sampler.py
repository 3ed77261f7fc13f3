"""Qiskit maps on real interfaces: Aer's statevector with controlled gates, and engine='sampler' (SamplerV2 PUBs)
against exact kernels, qra's own shot model and qra's noise model (z-tests on binomial estimates, seeded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qra import kernel_attention
from qra.featuremaps import get

pytest.importorskip("qiskit_aer")
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector
from qiskit.primitives import BaseSamplerV2
from qiskit.quantum_info import Statevector
from qiskit_aer.noise import NoiseModel, ReadoutError, depolarizing_error
from qiskit_aer.primitives import SamplerV2 as AerSampler
from qra_qiskit import QiskitCircuitMap
from qra_qiskit.hardware import sampler_setup

QUBITS = 3
SHOTS = 2000
#: seeded draws: |z| beyond this would be a 1-in-10^5 event per value for a correct estimator
Z_LIMIT = 4.5


def controlled_circuit(gate: str) -> QuantumCircuit:
    """Three qubits whose only parameterised gates are ``gate`` (the case Aer failed on with a QiskitError)."""
    theta = ParameterVector("θ", 3)
    circuit = QuantumCircuit(3)
    circuit.h(range(3))
    circuit.rx(0.4, 1)
    for i, (control, target) in enumerate([(0, 1), (1, 2), (2, 0)]):
        if gate == "cu":
            circuit.cu(theta[i], 0.3 * theta[(i + 1) % 3], 0.7, theta[i] / 2, control, target)
        else:
            getattr(circuit, gate)(theta[i], control, target)
    return circuit


def reference_states(circuit: QuantumCircuit, values: torch.Tensor) -> np.ndarray:
    return np.stack([Statevector(circuit.assign_parameters(row.numpy())).data for row in values])


@pytest.mark.parametrize("gate", ["cp", "crx", "cry", "crz", "cu"])
def test_aer_binds_controlled_rotations_right_for_several_inputs(gate):
    circuit = controlled_circuit(gate)
    values = torch.rand(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 * np.pi
    fm = QiskitCircuitMap(d_in=3, circuit=circuit, projection="identity", engine="framework", device="aer")
    with torch.no_grad():
        states = fm.states(values).numpy()
    overlaps = np.abs(np.sum(reference_states(circuit, values).conj() * states, axis=-1)) ** 2
    assert np.abs(overlaps - 1).max() <= 1e-10  # same state up to a global phase, for every input


@pytest.mark.parametrize("plain", [False, True])
def test_aer_is_right_on_a_circuit_with_every_controlled_rotation(plain):
    theta = ParameterVector("θ", 5)
    circuit = QuantumCircuit(3)
    circuit.h(range(3))
    circuit.cp(theta[0], 0, 1)
    circuit.crx(theta[1], 1, 2)
    circuit.cry(theta[2], 2, 0)
    circuit.crz(theta[3], 0, 2)
    circuit.cu(theta[4], theta[0], theta[1], 0.3, 1, 0)
    if plain:  # and plain rotations besides
        circuit.ry(theta[0] * theta[2], 0)
        circuit.rzz(theta[3], 0, 2)
    values = torch.rand(5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 * np.pi
    aer = QiskitCircuitMap(d_in=5, circuit=circuit, projection="identity", engine="framework", device="aer")
    with torch.no_grad():
        states = aer.states(values).numpy()
    phases = np.sum(reference_states(circuit, values).conj() * states, axis=-1)
    assert np.abs(np.abs(phases) - 1).max() <= 1e-10


def zz(engine: str = "native", **params):
    return get("qiskit-zz", d_in=QUBITS, qubits=QUBITS, projection="identity", engine=engine, **params)


def inputs(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, QUBITS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


def z_scores(estimate: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    return (estimate - mean) / variance.clamp_min(1e-4).sqrt()


def assert_binomial(estimate: torch.Tensor, probability: torch.Tensor, shots: int, estimates: int = 1) -> None:
    """``estimate`` is a frequency of ``shots`` draws with ``probability`` (``estimates`` = 2: the difference of
    two independent such frequencies, ``probability`` then being the second one's estimate)."""
    variance = estimates * probability * (1 - probability) / shots
    z = z_scores(estimate, probability, variance)
    assert z.abs().max() < Z_LIMIT, z
    assert z.square().mean() < 2.5  # about 1 for a right estimator


def fidelities(fm, x, y) -> torch.Tensor:
    with torch.no_grad():
        return fm.similarity(fm.query_features(x), fm(y))


def test_sampler_fidelities_agree_with_exact_and_with_qras_shot_model():
    x, y = inputs(4, 0), inputs(5, 1)
    exact = fidelities(zz(), x, y)
    sampled = fidelities(zz("sampler", shots=SHOTS), x, y)
    assert sampled.shape == (4, 5) and not torch.equal(sampled, exact)
    assert_binomial(sampled, exact, SHOTS)
    qra_model = fidelities(zz(shots=SHOTS), x, y)  # qra's Binomial(shots, F)/shots
    assert_binomial(sampled - qra_model + exact, exact, SHOTS, estimates=2)


def test_large_measurements_run_in_slices_of_parameter_rows(monkeypatch):
    import qra_qiskit.maps as maps

    monkeypatch.setattr(maps, "ROWS_PER_RUN", 7)
    x, y = inputs(4, 0), inputs(5, 1)
    fm = zz("sampler", shots=SHOTS)
    sampled = fidelities(fm, x, y)
    assert fm._sampling_calls == 3  # 20 query–key pairs in slices of 7
    assert sampled.shape == (4, 5)
    assert_binomial(sampled, fidelities(zz(), x, y), SHOTS)
    projected = zz("sampler", shots=SHOTS, features="projected")
    with torch.no_grad():
        measured = projected(inputs(9, 2))  # 9 inputs, 3 bases each: 2 calls of up to 7 rows per basis
    assert measured.shape == (9, 3 * QUBITS) and projected._sampling_calls == 2


def test_sampler_projected_features_agree_with_exact():
    x = inputs(6, 2)
    with torch.no_grad():
        exact = zz(features="projected")(x)
        sampled = zz("sampler", features="projected", shots=SHOTS)(x)
    assert sampled.shape == (6, 3 * QUBITS)
    # ⟨P⟩ = 2p − 1 with p = (1 + ⟨P⟩)/2 the frequency of outcome 0: variance (1 − ⟨P⟩²)/shots
    z = z_scores(sampled, exact, (1 - exact.square()) / SHOTS)
    assert z.abs().max() < Z_LIMIT and z.square().mean() < 2.5


class GlobalDepolarizing(BaseSamplerV2):
    """Aer's sampler with a global depolarizing channel on all qubits just before the measurements."""

    def __init__(self, strength: float, seed: int = 0) -> None:
        self.strength, self.inner = strength, AerSampler(seed=seed)
        self.pubs: list = []

    def run(self, pubs, *, shots=None):
        noisy = []
        for circuit, values in pubs:
            unmeasured = circuit.remove_final_measurements(inplace=False)
            qubits = list(range(unmeasured.num_qubits))
            unmeasured.append(depolarizing_error(self.strength, len(qubits)), qubits)
            unmeasured.measure_all()
            noisy.append((unmeasured, values))
        self.pubs.append(noisy)
        return self.inner.run(noisy, shots=shots)


@pytest.mark.parametrize("features", ["state", "projected"])
def test_a_global_depolarizing_channel_on_aer_matches_qras_noise_model(features):
    strength = 0.3
    x, y = inputs(4, 3), inputs(4, 4)
    sampler = GlobalDepolarizing(strength)
    noisy = zz("sampler", shots=SHOTS, features=features, sampler=sampler)
    model = zz(features=features, noise={"depolarizing": strength})
    if features == "state":
        assert_binomial(fidelities(noisy, x, y), fidelities(model, x, y), SHOTS)
        assert len(sampler.pubs) == 1 and len(sampler.pubs[0]) == 1  # one PUB: a parameter row per pair
        assert sampler.pubs[0][0][1].shape == (16, 2 * QUBITS)
    else:
        with torch.no_grad():
            sampled, expected = noisy(x), model(x)
        z = z_scores(sampled, expected, (1 - expected.square()) / SHOTS)
        assert z.abs().max() < Z_LIMIT and z.square().mean() < 2.5
        assert len(sampler.pubs) == 1 and len(sampler.pubs[0]) == 3  # the X, Y and Z bases, a row per input


def test_aer_readout_errors_match_qras_readout_model():
    error = 0.05
    noise = NoiseModel()
    noise.add_all_qubit_readout_error(ReadoutError([[1 - error, error], [error, 1 - error]]))
    sampler = AerSampler(seed=5, options={"backend_options": {"noise_model": noise}})
    x, y = inputs(3, 5), inputs(4, 6)
    measured = fidelities(zz("sampler", shots=SHOTS, sampler=sampler), x, y)
    assert_binomial(measured, fidelities(zz(noise={"readout": error}), x, y), SHOTS)
    with torch.no_grad():
        sampled = zz("sampler", shots=SHOTS, sampler=sampler, features="projected")(x)
        expected = zz(features="projected", noise={"readout": error})(x)
    z = z_scores(sampled, expected, (1 - expected.square()) / SHOTS)
    assert z.abs().max() < Z_LIMIT


def test_a_sampler_object_is_used_not_recorded_and_a_fake_device_transpiles_to_its_target():
    fm = zz("sampler", shots=64, sampler=AerSampler(seed=0))
    assert "sampler" not in fm.featuremap_params and fm.featuremap_params["engine"] == "sampler"
    assert zz("sampler", shots=64).featuremap_params["sampler"] == "aer"
    fm.set_engine("sampler", "fake_manila", optimization_level=2)
    x = inputs(2, 7)
    with torch.no_grad():
        kernel = fm.similarity(fm(x), fm(x))
    assert kernel.shape == (2, 2) and ((kernel >= 0) & (kernel <= 1)).all()
    circuit, _ = fm._sampler_circuit("fidelity")
    assert {i.operation.name for i in circuit.data} <= {"rz", "sx", "x", "cx", "ecr", "measure", "barrier"}
    assert circuit.num_qubits == 5  # laid out on the device's qubits
    # qra's named backends run a PUB's parameter rows as parallel experiments (a user's sampler is left as it is)
    assert sampler_setup("aer").make(0)._backend.options.max_parallel_experiments == 0
    assert sampler_setup("fake_manila").make(0)._backend.options.max_parallel_experiments == 0


def test_the_sampler_engine_explains_what_it_needs():
    x = inputs(2, 8)
    with pytest.raises(ValueError, match="set shots=N"):
        zz("sampler")(x)
    with pytest.raises(ValueError, match="backend's own noise"):
        zz("sampler", shots=8, noise={"depolarizing": 0.1})(x)
    learned = get("qiskit-zz", d_in=4, qubits=QUBITS, engine="sampler", shots=8)
    with pytest.raises(RuntimeError, match="forward-only"):
        features = learned(torch.randn(2, 4))
        learned.similarity(features, features)
    with pytest.raises(ValueError, match="accepted: aer, fake_<device>"):
        sampler_setup("ibm_torino")
    with pytest.raises(ValueError, match="fake_torino"):
        sampler_setup("fake_nowhere")
    with pytest.raises(ValueError, match="optimization_level"):
        sampler_setup("aer", optimization_level=5)
    with pytest.raises(RuntimeError, match="gives no states"):
        zz("sampler", shots=8).states(x)
    with pytest.raises(ValueError, match=r"accepted: native, framework$"):
        get("pennylane-zz", d_in=3, qubits=3, engine="sampler")


def test_sampled_projected_features_run_linear_attention():
    fm = get("qiskit-zz", d_in=8, qubits=2, engine="sampler", shots=128, features="projected")
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    with torch.no_grad():
        out, _ = kernel_attention(q, k, v, fm, "linear")
    assert out.shape == (1, 2, 5, 8) and torch.isfinite(out).all()
