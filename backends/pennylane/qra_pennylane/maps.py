"""PennyLane circuits as qra feature maps, run on a PennyLane device or on qra's batched engine.

Qubit k of qra (bit k of the basis index, Qiskit's order) is PennyLane wire ``qubits - 1 - k``
(PennyLane's wire 0 is the most significant bit), so the states of every engine, and of the
Qiskit backend, are in the same basis order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache, partial
from itertools import combinations

import pennylane as qml
import torch

from qra.featuremaps.circuit import LEGACY_ENGINES, CircuitFeatureMap
from qra.featuremaps.slot_ops import pair_products
from qra.featuremaps.statevector import Gate

ROTATIONS = ("X", "Y", "Z")
#: which qubit pairs the ZZ map entangles, as Qiskit's ``zz_feature_map`` names them
ENTANGLEMENTS = ("full", "linear", "circular")


def entangled_pairs(qubits: int, entanglement: str) -> list[tuple[int, int]]:
    """Qiskit's pairs: ``full`` every i < j, ``linear`` (i, i+1), ``circular`` linear and (q−1, 0) for q > 2."""
    if entanglement == "full":
        return list(combinations(range(qubits), 2))
    linear = [(i, i + 1) for i in range(qubits - 1)]
    return [*linear, (qubits - 1, 0)] if entanglement == "circular" and qubits > 2 else linear

#: PennyLane operation name -> qra engine gate name (same qubit roles: control first).
GATE_NAMES = {
    "Identity": "id", "Hadamard": "h", "PauliX": "x", "PauliY": "y", "PauliZ": "z", "S": "s", "T": "t",
    "SX": "sx", "RX": "rx", "RY": "ry", "RZ": "rz", "PhaseShift": "p", "CNOT": "cx", "CY": "cy", "CZ": "cz",
    "SWAP": "swap", "IsingZZ": "rzz", "MultiRZ": "multirz", "CRZ": "crz", "CRX": "crx", "CRY": "cry",
    "ControlledPhaseShift": "cp", "GlobalPhase": "global_phase",
}  # fmt: skip


def operations_to_gates(operations: list[qml.operation.Operator], qubits: int) -> list[Gate]:
    """PennyLane operations -> engine gates, decomposing with PennyLane's own rules where needed."""
    gates = []
    for op in operations:
        if op.name in GATE_NAMES:
            wires = () if op.name == "GlobalPhase" else tuple(qubits - 1 - w for w in op.wires.tolist())
            gates.append(Gate(GATE_NAMES[op.name], wires, tuple(op.parameters)))
        elif op.has_decomposition:
            gates.extend(operations_to_gates(op.decomposition(), qubits))
        else:
            raise ValueError(f"cannot run PennyLane operation {op.name} on qra's engine: it has no decomposition")
    return gates


@lru_cache(maxsize=64)
def _pair_rows(pairs: tuple[tuple[int, int], ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs' first and second qubits as index tensors on ``device``, made once: slot_values runs every forward.

    For ``index_select``, whose backward is an ``index_add`` (advanced indexing's is a sort, ~0.7 ms on an H200
    at 393,216 inputs)."""
    index = torch.tensor(pairs, dtype=torch.long, device=device).reshape(-1, 2)
    return index[:, 0].contiguous(), index[:, 1].contiguous()


@lru_cache(maxsize=64)
def _expansion(once: tuple[tuple[int, float], ...], reps: int, device: torch.device) -> torch.Tensor:
    """The ``[S, S']`` float64 matrix taking a map's distinct values to its gate parameters (``slot_basis``).

    ``once``: for each gate parameter of one repetition, (the distinct value it takes, its weight);
    the template repeats those ``reps`` times.  Made once per map shape and device."""
    width = 1 + max((column for column, _ in once), default=-1)
    rows = torch.zeros(len(once), width, dtype=torch.float64)
    for row, (column, weight) in enumerate(once):
        rows[row, column] = weight
    return rows.repeat(reps, 1).to(device)


@lru_cache(maxsize=32)
def _device(name: str, qubits: int) -> qml.devices.Device:
    return qml.device(name, wires=qubits)


class PennyLaneCircuitMap(CircuitFeatureMap):
    """A circuit feature map whose circuit is the PennyLane template :meth:`template`.

    ``engine="framework"`` (the default) runs a QNode (torch interface, parameter broadcasting over
    the whole batch, differentiable) on the PennyLane device named by ``device`` (any installed
    PennyLane device), on the input's torch device.  With ``shots`` the device itself measures, as a
    shot device or a hardware plugin does (seeded from ``seed``): with ``features="projected"`` the
    expectations ⟨X_k⟩, ⟨Y_k⟩, ⟨Z_k⟩ (``qml.expval``), otherwise the fidelity of every query–key pair,
    as the all-zeros frequency of the compute–uncompute circuit U(y)†U(x) (``qml.probs``).  qra's own
    noise model is refused then: a noisy device (``default.mixed`` with noise channels) is the way.
    Without shots the device's exact states are used.
    ``engine="native"`` records the same operations on a PennyLane tape, decomposes
    them with PennyLane's rules and runs them on qra's batched engine — much faster, same states.
    Every other parameter is :class:`~qra.featuremaps.circuit.CircuitFeatureMap`'s.
    """

    def __init__(self, d_in: int, device: str = "default.qubit", engine: str = "framework", **kwargs) -> None:
        super().__init__(d_in, engine=LEGACY_ENGINES.get(engine, engine), **kwargs)
        self.device_name = device

    def template(self, angles: torch.Tensor, wires: list[int]) -> None:
        """Queue the circuit's operations for angles ``[batch, qubits]``; ``wires[k]`` is qubit k's wire."""
        raise NotImplementedError

    @property
    def wires(self) -> list[int]:
        return list(reversed(range(self.qubits)))

    def gates(self, angles: torch.Tensor) -> list[Gate]:
        tape = qml.tape.make_qscript(self.template)(angles.reshape(-1, self.qubits), self.wires)
        return operations_to_gates(tape.operations, self.qubits)

    def simulate(self, angles: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        states = super().simulate(angles.reshape(-1, self.qubits), dtype)  # the tape's gates take a flat batch
        return states.reshape(*angles.shape[:-1], 2**self.qubits)

    def framework_states(self, angles: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self._run_qnode(angles).to(dtype)

    def resources(self) -> dict[str, object]:
        """The compute–uncompute circuit as PennyLane builds it, decomposed to one-qubit gates and CNOTs."""
        gate_set = {"CNOT", "RX", "RY", "RZ", "Hadamard", "PhaseShift", "GlobalPhase"}

        @partial(qml.transforms.decompose, gate_set=gate_set)
        @qml.qnode(_device("default.qubit", self.qubits))
        def circuit(x: torch.Tensor, y: torch.Tensor):
            self.template(x, self.wires)
            qml.adjoint(self.template)(y, self.wires)
            return qml.probs()

        x, y = (torch.rand(1, self.num_angles, dtype=torch.float64) for _ in range(2))
        found = qml.specs(circuit, level="device")(x, y)["resources"]
        two_qubit = sum(count for size, count in found.gate_sizes.items() if size >= 2)
        return {"qubits": self.qubits, "depth": found.depth, "gates": found.num_gates - found.gate_types.get(
            "GlobalPhase", 0), "two_qubit_gates": two_qubit, "basis": "PennyLane: 1-qubit gates + CNOT"}  # fmt: skip

    def set_engine(self, engine: str, backend: object | None = None, **options: object) -> None:
        """``framework`` with ``backend`` a PennyLane device name (e.g. ``lightning.qubit``), or ``native``."""
        if engine == "framework" and backend is not None:
            if not isinstance(backend, str):
                raise TypeError(f"a PennyLane map's backend is a PennyLane device name, got {type(backend).__name__}")
            self.device_name = backend
            backend = None
        super().set_engine(engine, backend, **options)

    @property
    def measures_kernel(self) -> bool:
        """With ``engine="framework"`` and ``shots`` the device measures the fidelity kernel itself."""
        return super().measures_kernel or (self.engine == "framework" and self.shots is not None)

    def _shot_device(self) -> qml.devices.Device:
        """The map's device, seeded from the map's seed and how many times it has sampled (when it takes a seed)."""
        seed = hash((self.seed, self._sampling_calls)) & 0x7FFF_FFFF
        self._sampling_calls += 1
        try:
            return qml.device(self.device_name, wires=self.qubits, seed=seed)
        except TypeError:  # a device without a seed option
            return qml.device(self.device_name, wires=self.qubits)

    def measured_paulis(self, angles: torch.Tensor) -> torch.Tensor | None:
        """With ``engine="framework"`` and ``shots``: ⟨X_k⟩…, ⟨Y_k⟩…, ⟨Z_k⟩… measured by the device with shots."""
        if self.engine != "framework" or self.shots is None:
            return None
        self._check_sampling("the Pauli expectations")
        wires = self.wires
        observables = [qml.PauliX, qml.PauliY, qml.PauliZ]

        def circuit(batch: torch.Tensor):
            self.template(batch, wires)
            return [qml.expval(pauli(wires[k])) for pauli in observables for k in range(self.qubits)]

        flat = angles.reshape(-1, self.num_angles)
        qnode = qml.set_shots(qml.QNode(circuit, self._shot_device(), interface="torch"), shots=self.shots)
        with torch.device(angles.device):
            values = qnode(flat)
        expectations = torch.stack([torch.as_tensor(v, device=angles.device).reshape(-1) for v in values], dim=-1)
        return expectations.reshape(*angles.shape[:-1], 3 * self.qubits)

    def measured_fidelities(self, angles_x: torch.Tensor, angles_y: torch.Tensor) -> torch.Tensor:
        """All-zeros frequencies of U(y)†U(x) ``[..., n, m]`` from the device with shots: one circuit per pair.

        N² circuits per head — what a QPU would run for the fidelity kernel (``qra quantum-cost``), so meant
        for evaluating a trained model on a few reviews, not for training.
        """
        self._check_sampling("the fidelity kernel")
        batch = torch.broadcast_shapes(angles_x.shape[:-2], angles_y.shape[:-2])
        n, m = angles_x.shape[-2], angles_y.shape[-2]
        x = angles_x.unsqueeze(-2).expand(*batch, n, m, self.num_angles).reshape(-1, self.num_angles)
        y = angles_y.unsqueeze(-3).expand(*batch, n, m, self.num_angles).reshape(-1, self.num_angles)
        wires = self.wires

        def circuit(compute: torch.Tensor, uncompute: torch.Tensor):
            self.template(compute, wires)
            qml.adjoint(self.template)(uncompute, wires)
            return qml.probs(wires=wires)

        qnode = qml.set_shots(qml.QNode(circuit, self._shot_device(), interface="torch"), shots=self.shots)
        with torch.device(angles_x.device):
            probabilities = qnode(x, y)
        all_zeros = torch.as_tensor(probabilities, device=angles_x.device).reshape(-1, 2**self.qubits)[:, 0]
        return all_zeros.reshape(*batch, n, m)

    def _run_qnode(self, angles: torch.Tensor) -> torch.Tensor:
        device = _device(self.device_name, self.qubits)

        def circuit(batch: torch.Tensor) -> torch.Tensor:
            self.template(batch, self.wires)
            return qml.state()

        diff_method = "backprop" if self.device_name == "default.qubit" else "best"
        qnode = qml.QNode(circuit, device, interface="torch", diff_method=diff_method)
        # default.qubit makes its initial state on torch's default device: make that the input's.
        with torch.device(angles.device):
            states = qnode(angles)
        return states.reshape(angles.shape[0], 2**self.qubits)


class RepeatedPennyLaneMap(PennyLaneCircuitMap):
    """A PennyLane circuit map whose template repeats ``reps`` times (default 2)."""

    def __init__(self, d_in: int, reps: int = 2, **kwargs) -> None:
        super().__init__(d_in, **kwargs)
        if not isinstance(reps, int) or reps < 1:
            raise ValueError(f"reps must be a positive integer, got {reps!r}")
        self.reps = reps


class PennyLaneZZ(RepeatedPennyLaneMap):
    """ZZ feature map (Havlíček et al. 2019) as Qiskit defines it, built from PennyLane gates.

    Per repetition: H on every qubit, PhaseShift(2·x_i), and for every entangled pair (i, j)
    IsingZZ(2(π−x_i)(π−x_j)) with the global phase that makes it Qiskit's CX·P·CX exactly, so the
    states equal ``qiskit-zz``'s.  ``reps``: number of repetitions (default 2).  ``entanglement``:
    the pairs, as in Qiskit: ``full`` (every i < j, the default), ``linear`` (i, i+1) or
    ``circular`` (linear and the pair of the last and first qubit).
    """

    def __init__(self, d_in: int, entanglement: str = "full", **kwargs) -> None:
        super().__init__(d_in, **kwargs)
        if entanglement not in ENTANGLEMENTS:
            raise ValueError(f"unknown entanglement {entanglement!r}; accepted: {', '.join(ENTANGLEMENTS)}")
        self.entanglement = entanglement

    def slot_basis(self, angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """2·x_k and θ = 2(π−x_i)(π−x_j) per pair; the template records, per repetition, 2·x_k, then θ and −θ/2."""
        pairs = tuple(entangled_pairs(self.qubits, self.entanglement))
        rows = angles.T.contiguous()  # [q, B]: values as contiguous rows (see the base class)
        first, second = _pair_rows(pairs, angles.device)
        theta = pair_products(rows, first, second, shift=math.pi, scale=2.0)  # keeps only the rows for backward
        once = [(k, 1.0) for k in range(self.qubits)]
        once += [(self.qubits + p, weight) for p in range(len(pairs)) for weight in (1.0, -0.5)]
        return torch.cat([2 * rows, theta]).T, _expansion(tuple(once), self.reps, angles.device)

    def template(self, angles: torch.Tensor, wires: list[int]) -> None:
        n = len(wires)
        pairs = entangled_pairs(n, self.entanglement)
        for _ in range(self.reps):
            for k in range(n):
                qml.Hadamard(wires[k])
            for k in range(n):
                qml.PhaseShift(2 * angles[..., k], wires=wires[k])
            for i, j in pairs:
                theta = 2 * (math.pi - angles[..., i]) * (math.pi - angles[..., j])
                qml.IsingZZ(theta, wires=[wires[i], wires[j]])
                qml.GlobalPhase(-theta / 2)  # CX·P(θ)·CX = e^{iθ/2}·IsingZZ(θ)


class PennyLaneIQP(RepeatedPennyLaneMap):
    """IQP embedding exactly as PennyLane's ``qml.IQPEmbedding`` defines it (RZ(x_i), MultiRZ(x_i·x_j)).

    ``reps``: PennyLane's ``n_repeats`` (default 2).  ``pattern``: PennyLane's ``pattern``, the pairs
    of qubits (= angle indices, PennyLane's wires when the circuit runs on wires 0…q−1) whose
    products MultiRZ entangles, e.g. ``[[0, 1], [1, 2]]``; None (the default): every pair.
    """

    def __init__(self, d_in: int, pattern: Sequence[Sequence[int]] | None = None, **kwargs) -> None:
        super().__init__(d_in, **kwargs)
        self.pattern = None if pattern is None else self._check_pattern(pattern)

    def _check_pattern(self, pattern: Sequence[Sequence[int]]) -> list[list[int]]:
        accepted = f"a list of pairs of distinct qubit indices in 0..{self.qubits - 1}, e.g. [[0, 1], [1, 2]]"
        if isinstance(pattern, str) or not isinstance(pattern, Sequence):
            raise ValueError(f"pattern must be {accepted}; got {pattern!r}")
        pairs = []
        for pair in pattern:
            if (isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2
                    or not all(isinstance(q, int) and not isinstance(q, bool) and 0 <= q < self.qubits for q in pair)
                    or pair[0] == pair[1]):  # fmt: skip
                raise ValueError(f"pattern must be {accepted}; got the pair {pair!r}")
            pairs.append([int(pair[0]), int(pair[1])])
        return pairs

    def slot_basis(self, angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_k and x_a·x_b per pair; IQPEmbedding records, per repetition, RZ(x_k) on each qubit, then MultiRZ(x_a·x_b)
        for each pair."""
        pairs = tuple(tuple(pair) for pair in (self.pattern if self.pattern is not None
                                               else combinations(range(self.qubits), 2)))  # fmt: skip
        rows = angles.T.contiguous()  # [q, B]: values as contiguous rows (see the base class)
        first, second = _pair_rows(pairs, angles.device)
        once = tuple((column, 1.0) for column in range(self.qubits + len(pairs)))
        return torch.cat([rows, pair_products(rows, first, second)]).T, _expansion(once, self.reps, angles.device)

    def template(self, angles: torch.Tensor, wires: list[int]) -> None:
        pattern = None if self.pattern is None else [[wires[a], wires[b]] for a, b in self.pattern]
        qml.IQPEmbedding(angles, wires=wires, n_repeats=self.reps, pattern=pattern)


class PennyLaneAngle(PennyLaneCircuitMap):
    """Angle embedding exactly as PennyLane's ``qml.AngleEmbedding`` defines it (one rotation per qubit).

    ``rotation``: ``X`` (default), ``Y`` or ``Z``.  A product state: no entanglement.
    """

    def __init__(self, d_in: int, rotation: str = "X", **kwargs) -> None:
        super().__init__(d_in, **kwargs)
        if rotation not in ROTATIONS:
            raise ValueError(f"unknown rotation {rotation!r}; accepted: {', '.join(ROTATIONS)}")
        self.rotation = rotation

    def template(self, angles: torch.Tensor, wires: list[int]) -> None:
        qml.AngleEmbedding(angles, wires=wires, rotation=self.rotation)
