"""Qiskit circuits on samplers and real targets: backends by name, transpilation, PUB sweeps, cost.

A *backend name* is ``aer`` (qiskit-aer's noiseless ``SamplerV2``) or ``fake_<device>`` (a fake
IBM device of qiskit-ibm-runtime, e.g. ``fake_torino``: Aer with that device's noise model, and its
target — gates, connectivity, error rates — to transpile for).  Any other
``qiskit.primitives.BaseSamplerV2`` (IBM Runtime's ``SamplerV2`` on a real device) is passed as an
object, with the ``target`` (a ``Target`` or a backend) its circuits must be transpiled for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector
from qiskit.primitives import BaseSamplerV2
from qiskit.transpiler import Target, generate_preset_pass_manager

#: A basis without parameterised controlled rotations: qiskit-aer binds the parameters of cp, crx, cry,
#: crz and cu wrongly (qiskit-aer #2403, #2323), so circuits for Aer are transpiled to this basis first
SAFE_BASIS = ["u", "p", "rx", "ry", "rz", "h", "x", "y", "z", "s", "sdg", "t", "tdg", "sx", "sxdg", "cx", "cz",
              "swap"]  # fmt: skip
#: named backends besides ``fake_<device>``
NAMED_BACKENDS = ("aer",)
#: the measurement bases of the projected features, in the features' order
PAULI_BASES = ("X", "Y", "Z")


@dataclass
class SamplerSetup:
    """A sampler and what its circuits are transpiled for (a target, else :data:`SAFE_BASIS`)."""

    name: str
    make: Callable[[int | None], BaseSamplerV2]  # seed -> sampler (a given sampler ignores the seed)
    target: Target | None
    optimization_level: int

    def transpile(self, circuit: QuantumCircuit) -> QuantumCircuit:
        """The circuit for this backend: laid out and routed on the target's qubits, in its gates."""
        if self.target is not None:
            manager = generate_preset_pass_manager(self.optimization_level, target=self.target, seed_transpiler=0)
        else:
            manager = generate_preset_pass_manager(self.optimization_level, basis_gates=SAFE_BASIS, seed_transpiler=0)
        return manager.run(circuit)


@lru_cache(maxsize=8)
def fake_backend(name: str):
    """``fake_torino`` -> qiskit-ibm-runtime's ``FakeTorino()`` (any of its fake devices, by name)."""
    try:
        from qiskit_ibm_runtime import fake_provider
    except ImportError as error:
        raise ValueError(f"backend {name!r} needs qiskit-ibm-runtime (pip install qiskit-ibm-runtime)") from error
    wanted = name.lower().replace("_", "")
    for attribute in dir(fake_provider):
        if attribute.lower() in (wanted, wanted + "v2") and attribute.startswith("Fake"):
            return getattr(fake_provider, attribute)()
    known = sorted(a.lower().removeprefix("fake").removesuffix("v2") for a in dir(fake_provider)
                   if a.startswith("Fake") and a[4:5].isupper() and "Provider" not in a)  # fmt: skip
    raise ValueError(f"unknown backend {name!r}; accepted: aer, or fake_<device> with a device of "
                     f"qiskit-ibm-runtime's fake provider: {', '.join('fake_' + k for k in known)}")  # fmt: skip


def backend_target(name: str) -> Target:
    """The target (gates, coupling map, error rates) of a named device backend."""
    if name in NAMED_BACKENDS or not name.startswith("fake_"):
        raise ValueError(f"backend {name!r} is not a device with a target; accepted: fake_<device>, e.g. fake_torino")
    return fake_backend(name).target


#: Aer runs one experiment per parameter row; its default runs them one after another, each on all cores,
#: which small circuits cannot use. In parallel: 768 six-qubit rows through FakeTorino's noise model took
#: 15.2 s instead of 27.7 s on a 2-core machine
AER_OPTIONS = {"max_parallel_experiments": 0}


def sampler_setup(
    sampler: str | BaseSamplerV2, optimization_level: int = 1, target: object | None = None
) -> SamplerSetup:
    """A named backend (``aer``, ``fake_torino``…) or a user's ``BaseSamplerV2``, ready to run PUBs."""
    if isinstance(optimization_level, bool) or optimization_level not in (0, 1, 2, 3):
        raise ValueError(f"optimization_level is Qiskit's preset level 0, 1, 2 or 3; got {optimization_level!r}")
    if target is not None and not isinstance(target, Target):
        target = getattr(target, "target", None)
        if not isinstance(target, Target):
            raise TypeError("target must be a qiskit Target or a backend with a .target")
    if isinstance(sampler, BaseSamplerV2):
        found = getattr(getattr(sampler, "_backend", None), "target", None)  # IBM Runtime's and Aer's samplers
        chosen = target if target is not None else found if isinstance(found, Target) else None
        return SamplerSetup(type(sampler).__name__, lambda seed: sampler, chosen, optimization_level)
    if not isinstance(sampler, str):
        raise TypeError(f"sampler must be a backend name (aer, fake_torino, …) or a qiskit BaseSamplerV2, "
                        f"got {type(sampler).__name__}")  # fmt: skip
    from qiskit_aer.primitives import SamplerV2 as AerSampler

    if sampler == "aer":
        options = {"backend_options": AER_OPTIONS}
        return SamplerSetup("aer", lambda seed: AerSampler(seed=seed, options=options), target, optimization_level)
    if not sampler.startswith("fake_"):
        raise ValueError(f"unknown backend {sampler!r}; accepted: aer, fake_<device> (e.g. fake_torino), or a "
                         "qiskit BaseSamplerV2 object")  # fmt: skip
    device = fake_backend(sampler)
    simulator = _noisy_simulator(sampler)
    return SamplerSetup(sampler, lambda seed: AerSampler.from_backend(simulator, seed=seed),
                        device.target if target is None else target, optimization_level)  # fmt: skip


@lru_cache(maxsize=8)
def _noisy_simulator(name: str):
    """Aer with a fake device's noise model, coupling map and basis (built once per device)."""
    from qiskit_aer import AerSimulator

    return AerSimulator.from_backend(fake_backend(name), **AER_OPTIONS)


def bind_order(transpiled: QuantumCircuit, parameters: list) -> list[int]:
    """Columns of the values (in ``parameters`` order) that ``transpiled.parameters`` take, in its order."""
    index = {parameter: i for i, parameter in enumerate(parameters)}
    return [index[parameter] for parameter in transpiled.parameters]


def compute_uncompute(circuit: QuantumCircuit) -> tuple[QuantumCircuit, list]:
    """U(y)†U(x) with all qubits measured, and its parameters: x's, then y's (circuit.parameters order)."""
    count = circuit.num_parameters
    x, y = ParameterVector("qra_x", count), ParameterVector("qra_y", count)
    original = list(circuit.parameters)
    ux = circuit.assign_parameters(dict(zip(original, x, strict=True)))
    uy = circuit.assign_parameters(dict(zip(original, y, strict=True)))
    combined = ux.compose(uy.inverse())
    combined.measure_all()
    return combined, [*x, *y]


def measurement_circuit(circuit: QuantumCircuit, basis: str) -> QuantumCircuit:
    """U(x), then every qubit measured in the ``X``, ``Y`` or ``Z`` basis (outcome 0 = eigenvalue +1)."""
    measured = circuit.copy()
    qubits = range(circuit.num_qubits)
    if basis == "Y":
        measured.sdg(qubits)
    if basis in ("X", "Y"):
        measured.h(qubits)
    measured.measure_all()
    return measured


def _bits(array: np.ndarray, qubits: int) -> np.ndarray:
    """``[..., shots, bytes]`` (a BitArray's big-endian bytes) -> ``[..., shots, qubits]`` bits, bit k = clbit k."""
    return np.stack([(array[..., -1 - k // 8] >> (k % 8)) & 1 for k in range(qubits)], axis=-1)


def all_zeros_frequency(bit_array, qubits: int) -> np.ndarray:
    """Per parameter row, the fraction of shots that read 0 on every qubit."""
    return (_bits(bit_array.array, qubits) == 0).all(-1).mean(-1)


def z_expectations(bit_array, qubits: int) -> np.ndarray:
    """Per parameter row and qubit k, the mean of (−1)^bit_k: ⟨Z_k⟩ in the measured basis."""
    return 1 - 2 * _bits(bit_array.array, qubits).mean(-2)


def instruction_error(target: Target, name: str, qargs: tuple[int, ...]) -> float:
    """The target's reported error of one instruction on given qubits (0 where it reports none)."""
    if name not in target.operation_names:
        return 0.0
    properties = target[name].get(qargs) if target[name] is not None else None
    error = getattr(properties, "error", None)
    return float(error) if error is not None and math.isfinite(error) else 0.0


def circuit_counts(circuit: QuantumCircuit, target: Target | None = None) -> dict[str, object]:
    """Depth, gates, two-qubit gates (measurements and barriers aside) and, with a target, the estimated
    fidelity Π(1 − error) over the gates and readouts, from the target's reported error rates."""
    gates = [i for i in circuit.data if i.operation.name not in ("barrier", "measure", "delay")]
    counts: dict[str, object] = {
        "qubits": len({circuit.find_bit(q).index for i in gates for q in i.qubits}) or circuit.num_qubits,
        "depth": circuit.depth(lambda i: i.operation.name not in ("barrier", "measure")),
        "gates": len(gates),
        "two_qubit_gates": sum(1 for i in gates if i.operation.num_qubits >= 2),
    }
    if target is not None:
        log_fidelity = 0.0
        for instruction in circuit.data:
            if instruction.operation.name in ("barrier", "delay"):
                continue
            qargs = tuple(circuit.find_bit(q).index for q in instruction.qubits)
            log_fidelity += math.log1p(-min(instruction_error(target, instruction.operation.name, qargs), 1 - 1e-12))
        counts["measurements"] = sum(1 for i in circuit.data if i.operation.name == "measure")
        counts["estimated_fidelity"] = math.exp(log_fidelity)
        counts["physical_qubits"] = sorted({circuit.find_bit(q).index for i in circuit.data
                                            if i.operation.name != "barrier" for q in i.qubits})  # fmt: skip
    return counts


def hardware_resources(circuit: QuantumCircuit, backend: str, optimization_level: int = 1) -> dict[str, object]:
    """The compute–uncompute circuit (fidelity kernel) and the X-basis measurement circuit (projected features)
    transpiled to a device's target (layout, routing, its gates): depth, two-qubit gates, estimated fidelity.

    ``circuit`` is U(x), parameterised or bound (a bound circuit is used for both x and y)."""
    setup = SamplerSetup(backend, lambda seed: None, backend_target(backend), optimization_level)  # type: ignore
    rng = np.random.default_rng(0)
    x, y = (circuit.assign_parameters(rng.uniform(0, 2 * np.pi, circuit.num_parameters)) for _ in range(2))
    pair = x.compose(y.inverse())  # U(y)†U(x), bound: the counts do not depend on the angles
    pair.measure_all()
    measure = measurement_circuit(x, "X")
    return {
        "backend": backend,
        "optimization_level": optimization_level,
        "fidelity_circuit": circuit_counts(setup.transpile(pair), setup.target),
        "projected_circuit": circuit_counts(setup.transpile(measure), setup.target),
    }


def circuit_from_gates(gates: list, qubits: int) -> QuantumCircuit:
    """qra engine gates (one input's angles) as a Qiskit circuit: any circuit map's U(x) for transpilation."""
    circuit = QuantumCircuit(qubits)

    def value(parameter) -> float:
        return float(np.asarray(parameter.detach().cpu() if hasattr(parameter, "detach") else parameter).reshape(-1)[0])

    for gate in gates:
        params = [value(p) for p in gate.params]
        if gate.name == "global_phase":  # the engine's global_phase(φ) is e^{-iφ}
            circuit.global_phase -= params[0]
        elif gate.name == "multirz":  # exp(-iθ/2 Z⊗…⊗Z): a CNOT ladder onto the last qubit, RZ, and back
            *rest, last = gate.qubits
            for q in rest:
                circuit.cx(q, last)
            circuit.rz(params[0], last)
            for q in reversed(rest):
                circuit.cx(q, last)
        elif gate.name == "id":
            continue
        elif hasattr(circuit, gate.name) and gate.name != "parity_phase":
            getattr(circuit, gate.name)(*params, *gate.qubits)
        else:
            raise ValueError(f"no Qiskit gate for the engine gate {gate.name!r}")
    return circuit
