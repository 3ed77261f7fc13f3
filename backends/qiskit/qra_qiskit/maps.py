"""Qiskit circuits as qra feature maps: simulated on qra's engine, Qiskit's Statevector or Aer, or sampled.

The circuit's parameters, in ``circuit.parameters`` order (a ParameterVector keeps its index
order), are the angles the map's projection produces.  For the native engine the circuit is
transpiled to the engine's gates once, and every gate angle — a ParameterExpression such as
2(π−x₀)(π−x₁) — is compiled to a torch function through sympy, so the whole batch is simulated
at once and differentiably.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import sympy
import torch
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import ParameterExpression
from qiskit.circuit.library import pauli_feature_map, zz_feature_map

from qra.featuremaps.circuit import ENGINES, CircuitFeatureMap
from qra.featuremaps.statevector import GATES, Gate

from . import hardware

#: Qiskit's own simulators for ``engine="framework"``
DEVICES = ("statevector", "aer")
#: parameter rows per sampler call. A PUB has one row per input or query–key pair, which can be millions,
#: and Aer holds every row's experiment in memory: 32 reviews of 128 tokens (49,152 rows a PUB) through
#: FakeTorino's noise model took over 24 GB in one call
ROWS_PER_RUN = 1024
NATIVE_BASIS = [name for name in GATES if name not in ("id", "multirz", "parity_phase", "global_phase")]
#: sympy functions of a parameter expression -> torch.  The angles are real, so conjugate() and re() are the
#: angle itself and im() is zero; sign() is torch.sign (its gradient is zero, as the function's)
_TORCH_FUNCTIONS = {
    "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
    "asin": torch.asin, "acos": torch.acos, "atan": torch.atan, "Abs": torch.abs, "sign": torch.sign,
    "conjugate": lambda x: x, "re": lambda x: x, "im": torch.zeros_like, "pi": math.pi, "E": math.e,
}  # fmt: skip
#: sympy functions whose printer writes Python that branches on the value (sign: copysign with a comparison),
#: which a batch of angles cannot do: they are renamed to opaque functions that call the torch function
_OPAQUE = {sympy.sign: "sign"}

AngleFunction = Callable[[torch.Tensor], torch.Tensor | float]


def _unsupported_functions(value: object) -> set[str]:
    """The functions in a gate parameter's expression that the native engine cannot compute."""
    if not isinstance(value, ParameterExpression) or not value.parameters:
        return set()
    expression = sympy.sympify(value.sympify())
    return {type(f).__name__ for f in expression.atoms(sympy.Function)} - set(_TORCH_FUNCTIONS)


def check_native_expressions(circuit: QuantumCircuit) -> None:
    """Refuse, when the map is built, a circuit whose parameter expressions the native engine cannot compute."""
    found = set().union(*(_unsupported_functions(p) for instruction in circuit.data
                          for p in instruction.operation.params))  # fmt: skip
    if found:
        supported = sorted(name for name, f in _TORCH_FUNCTIONS.items() if callable(f))
        raise ValueError(
            f"the circuit's parameter expressions use {', '.join(sorted(found))}, which engine='native' cannot "
            f"compute; supported functions: {', '.join(supported)}. Use engine='framework' (Qiskit's simulator)"
        )


def _expression(value: object) -> sympy.Expr | None:
    """A gate parameter's sympy expression, ready for torch (opaque functions renamed), or None for a constant."""
    if not isinstance(value, ParameterExpression) or not value.parameters:
        return None
    expression = sympy.sympify(value.sympify())
    for function_class, name in _OPAQUE.items():
        expression = expression.replace(function_class, sympy.Function(f"qra_{name}"))
    return expression


_NAMESPACE = _TORCH_FUNCTIONS | {f"qra_{name}": _TORCH_FUNCTIONS[name] for name in _OPAQUE.values()}


def _compile(value: object, symbols: list[sympy.Symbol]) -> AngleFunction | float:
    """A gate parameter as a float, or a torch function of the angles ``[..., count]``."""
    expression = _expression(value)
    if expression is None:
        return float(value)
    function = sympy.lambdify(symbols, expression, modules=[_NAMESPACE, "math"])
    return lambda angles: function(*angles.unbind(-1))


def _compile_all(expressions: list[sympy.Expr], symbols: list[sympy.Symbol]) -> Callable[[torch.Tensor], torch.Tensor]:
    """All the expressions as one torch function of the angles ``[B, count]`` -> ``[B, len(expressions)]``.

    Repeated expressions (a circuit's repetitions) are computed once and common subexpressions shared.
    """
    unique = list(dict.fromkeys(expressions))
    index = [unique.index(e) for e in expressions]
    function = sympy.lambdify(symbols, unique, modules=[_NAMESPACE, "math"], cse=True)
    index_on: dict[torch.device, torch.Tensor] = {}

    def values(angles: torch.Tensor) -> torch.Tensor:
        rows = angles.T.contiguous()  # each angle, and so each expression, a contiguous row (see slot_values)
        computed = [c if isinstance(c, torch.Tensor) else rows.new_full(rows.shape[1:], float(c))
                    for c in function(*rows.unbind(0))]  # fmt: skip
        stacked = torch.stack(computed)
        if len(unique) != len(expressions):
            if angles.device not in index_on:
                index_on[angles.device] = torch.tensor(index, device=angles.device)
            stacked = stacked.index_select(0, index_on[angles.device])
        return stacked.T

    return values


class QiskitCircuitMap(CircuitFeatureMap):
    """Any parameterised Qiskit ``QuantumCircuit`` as a feature map (from Python; not registered).

    ``circuit``: its parameters are the angles (``circuit.num_parameters`` of them, in
    ``circuit.parameters`` order); the projection maps d_in to that many.  ``engine``: ``native``
    (qra's batched, differentiable engine; the default, for training), ``framework``: Qiskit's
    own simulator named by ``device`` — ``statevector`` (``qiskit.quantum_info.Statevector`` per
    input) or ``aer`` (qiskit-aer with batched parameter binds, after transpiling to a basis without
    parameterised controlled gates, which Aer binds wrongly) — or ``sampler``: the circuits a QPU
    runs, through a ``qiskit.primitives.BaseSamplerV2``, ``shots`` each (see :meth:`set_sampler`).
    ``framework`` and ``sampler`` are forward-only, for verification and inference.

    ``sampler``: for ``engine="sampler"``, a backend name — ``aer`` (qiskit-aer's noiseless
    ``SamplerV2``, the default) or ``fake_<device>`` such as ``fake_torino`` (Aer with that IBM
    device's noise model, circuits transpiled for its target) — or any ``BaseSamplerV2`` object
    (not recorded in ``featuremap_params``: a reloaded map has ``aer``).  ``optimization_level``:
    Qiskit's preset transpiler level for the sampler's target (default 1).  Every other parameter
    is :class:`~qra.featuremaps.circuit.CircuitFeatureMap`'s.
    """

    fixed_parameters = ("qubits",)  # the circuit's own width
    engines = (*ENGINES, "sampler")

    def __init__(
        self,
        d_in: int,
        circuit: QuantumCircuit,
        device: str = "statevector",
        engine: str = "native",
        sampler: object = "aer",
        optimization_level: int = 1,
        **kwargs,
    ) -> None:
        if not isinstance(circuit, QuantumCircuit):
            raise TypeError(f"circuit must be a qiskit QuantumCircuit, got {type(circuit).__name__}")
        if circuit.num_parameters == 0:
            raise ValueError("the circuit has no parameters: nothing for the inputs to set")
        if engine in DEVICES:  # earlier versions named the simulator as the engine
            engine, device = "framework", engine
        if device not in DEVICES:
            raise ValueError(f"unknown Qiskit simulator device={device!r}; accepted: {', '.join(DEVICES)}")
        super().__init__(d_in, circuit.num_qubits, engine=engine, num_angles=circuit.num_parameters, **kwargs)
        if self.engine == "native":
            check_native_expressions(circuit)
        self.circuit = circuit
        self.device_name = device
        self._circuit_parameters = list(circuit.parameters)
        self._program: list[tuple[str, tuple[int, ...], tuple[AngleFunction | float, ...]]] | None = None
        self._slot_function: Callable[[torch.Tensor], torch.Tensor] | None = None
        if not isinstance(sampler, str):  # an object: used, not recorded (a saved config must stay JSON)
            getattr(self, "_featuremap_params", {}).pop("sampler", None)
        self._sampler_choice: object = sampler
        self.optimization_level = optimization_level
        self._sampler_setup: hardware.SamplerSetup | None = None
        self._sampler_circuits: dict[str, tuple[QuantumCircuit, list[int]]] = {}
        if self.engine == "sampler":
            self.set_sampler(sampler, optimization_level)

    def _native_program(self) -> list[tuple[str, tuple[int, ...], tuple[AngleFunction | float, ...]]]:
        """The circuit transpiled to the engine's gates, with compiled angle functions (built once)."""
        if self._program is None:
            transpiled = transpile(self.circuit, basis_gates=NATIVE_BASIS, optimization_level=0)
            symbols = [sympy.Symbol(parameter.name) for parameter in self._circuit_parameters]
            program = []
            for instruction in transpiled.data:
                name = instruction.operation.name
                if name == "barrier":
                    continue
                qubits = tuple(transpiled.find_bit(q).index for q in instruction.qubits)
                params = tuple(_compile(p, symbols) for p in instruction.operation.params)
                program.append((name, qubits, params))
            phase = _compile(transpiled.global_phase, symbols)
            expressions = [_expression(p) for instruction in transpiled.data if instruction.operation.name != "barrier"
                           for p in instruction.operation.params]  # fmt: skip
            if callable(phase) or phase != 0:  # Qiskit's e^{iφ}; the engine's global_phase is e^{-iφ}
                program.append(("global_phase", (), (phase,)))
                expressions.append(None if not callable(phase) else -_expression(transpiled.global_phase))
            self._program = program
            # the gates' tensor parameters, in order, as one function: slot_values
            self._slot_function = _compile_all([e for e in expressions if e is not None], symbols)
        return self._program

    def slot_values(self, angles: torch.Tensor) -> torch.Tensor:
        """Every parametrised gate parameter of the transpiled circuit from one compiled function (see the base)."""
        self._native_program()
        return self._slot_function(angles)

    def resources(self) -> dict[str, object]:
        """The compute–uncompute circuit U(y)†U(x), transpiled by Qiskit to IBM's basis (rz, sx, x, cx)."""
        rng = np.random.default_rng(0)
        x, y = (rng.uniform(0, 2 * np.pi, self.num_angles) for _ in range(2))
        circuit = self.circuit.assign_parameters(x).compose(self.circuit.assign_parameters(y).inverse())
        compiled = transpile(circuit, basis_gates=["rz", "sx", "x", "cx"], optimization_level=1, seed_transpiler=0)
        two_qubit = sum(1 for instruction in compiled.data if instruction.operation.num_qubits >= 2)
        return {
            "qubits": self.qubits,
            "depth": compiled.depth(),
            "gates": compiled.size(),
            "two_qubit_gates": two_qubit,
            "basis": "Qiskit transpile: rz, sx, x, cx",
        }

    def gates(self, angles: torch.Tensor) -> list[Gate]:
        def evaluate(param: AngleFunction | float, negate: bool) -> torch.Tensor | float:
            value = param(angles) if callable(param) else param
            return -value if negate else value

        return [
            Gate(name, qubits, tuple(evaluate(p, name == "global_phase") for p in params))
            for name, qubits, params in self._native_program()
        ]

    @classmethod
    def upgrade_params(cls, params: dict[str, object]) -> dict[str, object]:
        """``engine="statevector"``/``"aer"`` of earlier versions: ``engine="framework"`` with that ``device``."""
        if params.get("engine") in DEVICES:
            params = {**params, "device": params["engine"]}
        return super().upgrade_params(params)

    def framework_states(self, angles: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if torch.is_grad_enabled() and angles.requires_grad:
            raise RuntimeError(
                f"engine='framework' runs Qiskit's {self.device_name} simulator and is forward-only: use "
                "engine='native' to train, or call it under torch.no_grad()"
            )
        values = angles.detach().reshape(-1, self.num_angles).cpu().numpy()
        states = self._statevector(values) if self.device_name == "statevector" else self._aer(values)
        states = torch.from_numpy(states).to(device=angles.device, dtype=dtype)
        return states.reshape(*angles.shape[:-1], 2**self.qubits)

    def _statevector(self, values: np.ndarray) -> np.ndarray:
        from qiskit.quantum_info import Statevector

        return np.stack([Statevector(self.circuit.assign_parameters(row)).data for row in values])

    def _aer(self, values: np.ndarray) -> np.ndarray:
        from qiskit_aer import AerSimulator

        simulator = AerSimulator(method="statevector")
        # qiskit-aer binds parameters of controlled rotations (cp, crx, cry, crz, cu) wrongly (qiskit-aer #2403,
        # #2323): wrong states, or a QiskitError for several inputs; decomposed first, they bind right
        circuit = transpile(self.circuit, basis_gates=hardware.SAFE_BASIS, optimization_level=0)
        circuit.save_statevector()
        compiled = transpile(circuit, simulator, optimization_level=0)
        binds = [{parameter: values[:, i].tolist() for i, parameter in enumerate(self._circuit_parameters)}]
        result = simulator.run([compiled], parameter_binds=binds).result()
        return np.stack([np.asarray(result.get_statevector(i)) for i in range(len(values))])

    # -- engine="sampler": the circuits a QPU runs, through a SamplerV2 ------------------------------------

    def set_engine(self, engine: str, backend: object | None = None, **options: object) -> None:
        """``sampler`` with ``backend`` a backend name or a ``BaseSamplerV2`` (options: ``optimization_level``,
        ``target``); ``framework`` with ``backend`` a simulator device (``statevector``, ``aer``); ``native``."""
        if engine == "sampler":
            self.set_sampler("aer" if backend is None else backend, **options)  # type: ignore[arg-type]
            return
        if engine == "framework" and backend is not None:
            if backend not in DEVICES:
                raise ValueError(f"unknown Qiskit simulator device={backend!r}; accepted: {', '.join(DEVICES)}")
            self.device_name = backend
            backend = None
        super().set_engine(engine, backend, **options)

    def set_sampler(self, sampler: object = "aer", optimization_level: int | None = None,
                    target: object | None = None) -> None:  # fmt: skip
        """Run this map's circuits through ``sampler`` (``engine="sampler"``): a backend name (``aer``,
        ``fake_torino``, …) or any ``qiskit.primitives.BaseSamplerV2``, e.g. IBM Runtime's ``SamplerV2(mode=
        backend)`` with ``target=backend``.  Circuits are transpiled for the sampler's target (its backend's, or
        ``target``; else a basis any simulator takes) at ``optimization_level`` and sent as one PUB per
        circuit with a parameter row per input (projected features: three PUBs, the X, Y and Z bases) or per
        (query, key) pair (fidelity: the compute–uncompute circuit U(y)†U(x)), ``shots`` shots each.
        """
        level = self.optimization_level if optimization_level is None else optimization_level
        self._sampler_setup = hardware.sampler_setup(sampler, level, target)  # type: ignore[arg-type]
        self._sampler_choice, self.optimization_level = sampler, level
        self._sampler_circuits = {}
        self.engine = "sampler"

    def _sampler_circuit(self, kind: str) -> tuple[QuantumCircuit, list[int]]:
        """The transpiled circuit of ``kind`` (``fidelity`` or a Pauli basis) and its values' column order."""
        if kind not in self._sampler_circuits:
            if kind == "fidelity":
                circuit, parameters = hardware.compute_uncompute(self.circuit)
            else:
                circuit, parameters = hardware.measurement_circuit(self.circuit, kind), self._circuit_parameters
            transpiled = self._sampler_setup.transpile(circuit)
            self._sampler_circuits[kind] = (transpiled, hardware.bind_order(transpiled, parameters))
        return self._sampler_circuits[kind]

    def _run_pubs(self, pubs: list[tuple[QuantumCircuit, np.ndarray]], reduce: Callable) -> list[np.ndarray]:
        """Run PUBs of equally many parameter rows, ROWS_PER_RUN rows a sampler call; per PUB, ``reduce`` of each
        call's measured bits (a BitArray → an array with one entry per row), concatenated over the calls."""
        if self._sampler_setup is None:
            self.set_sampler(self._sampler_choice, self.optimization_level)
        rows = {len(values) for _, values in pubs}
        if len(rows) != 1:
            raise ValueError(f"the PUBs of one measurement need equally many parameter rows, got {sorted(rows)}")
        parts: list[list[np.ndarray]] = [[] for _ in pubs]
        for start in range(0, rows.pop(), ROWS_PER_RUN):
            seed = hash((self.seed, self._sampling_calls)) & 0x7FFF_FFFF
            self._sampling_calls += 1
            chunk = [(circuit, values[start : start + ROWS_PER_RUN]) for circuit, values in pubs]
            result = self._sampler_setup.make(seed).run(chunk, shots=self.shots).result()
            for part, pub_result in zip(parts, result, strict=True):
                part.append(reduce(pub_result.data.meas))
        return [np.concatenate(part) for part in parts]

    def _refuse_gradients(self, *tensors: torch.Tensor) -> None:
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            raise RuntimeError("engine='sampler' estimates from measurements and is forward-only: use "
                               "engine='native' to train, or call it under torch.no_grad()")  # fmt: skip

    def measured_paulis(self, angles: torch.Tensor) -> torch.Tensor | None:
        """⟨X_k⟩, ⟨Y_k⟩, ⟨Z_k⟩ ``[..., 3q]`` from three PUBs (X, Y, Z bases), one parameter row per input."""
        if self.engine != "sampler":
            return None
        self._refuse_gradients(angles)
        values = angles.detach().reshape(-1, self.num_angles).cpu().numpy()
        circuits = [self._sampler_circuit(basis) for basis in hardware.PAULI_BASES]
        results = self._run_pubs([(circuit, values[:, order]) for circuit, order in circuits],
                                 lambda bits: hardware.z_expectations(bits, self.qubits))  # fmt: skip
        expectations = np.concatenate(results, axis=-1)
        return torch.from_numpy(expectations).to(angles.device).reshape(*angles.shape[:-1], 3 * self.qubits)

    def measured_fidelities(self, angles_x: torch.Tensor, angles_y: torch.Tensor) -> torch.Tensor:
        """All-zeros frequencies of U(y)†U(x) ``[..., n, m]``: one PUB, one parameter row per (x, y) pair."""
        self._check_sampling("the fidelity kernel")
        self._refuse_gradients(angles_x, angles_y)
        batch = torch.broadcast_shapes(angles_x.shape[:-2], angles_y.shape[:-2])
        n, m = angles_x.shape[-2], angles_y.shape[-2]
        pairs = torch.cat([angles_x.detach().unsqueeze(-2).expand(*batch, n, m, self.num_angles),
                           angles_y.detach().unsqueeze(-3).expand(*batch, n, m, self.num_angles)], dim=-1)  # fmt: skip
        circuit, order = self._sampler_circuit("fidelity")
        values = pairs.reshape(-1, 2 * self.num_angles).cpu().numpy()[:, order]
        [frequencies] = self._run_pubs([(circuit, values)],
                                       lambda bits: hardware.all_zeros_frequency(bits, self.qubits))  # fmt: skip
        return torch.from_numpy(frequencies).to(device=angles_x.device).reshape(*batch, n, m)

    def __getstate__(self) -> dict:
        # compiled lambdas and sampler objects don't pickle; rebuilt on demand
        return {**self.__dict__, "_program": None, "_sampler_setup": None, "_sampler_circuits": {}}


class QiskitZZ(QiskitCircuitMap):
    """ZZ feature map (Havlíček et al. 2019): Qiskit's ``zz_feature_map`` (alpha = 2).

    ``qubits`` (None: d_in), ``reps`` (2), ``entanglement`` (``full``, ``linear``, ``circular``…).
    """

    fixed_parameters = ("circuit",)

    def __init__(
        self, d_in: int, qubits: int | None = None, reps: int = 2, entanglement: str = "full", **kwargs
    ) -> None:
        circuit = zz_feature_map(d_in if qubits is None else qubits, reps=reps, entanglement=entanglement)
        super().__init__(d_in, circuit, **kwargs)


class QiskitPauli(QiskitCircuitMap):
    """Pauli feature map: Qiskit's ``pauli_feature_map`` with the Pauli strings ``paulis``.

    ``paulis``: e.g. ``["Z", "ZZ"]`` (Qiskit's default) or ``["X", "XY"]``; a comma-separated
    string is accepted too.  ``qubits`` (None: d_in), ``reps`` (2), ``entanglement`` (``full``).
    """

    fixed_parameters = ("circuit",)

    def __init__(
        self,
        d_in: int,
        qubits: int | None = None,
        paulis: Sequence[str] | str = ("Z", "ZZ"),
        reps: int = 2,
        entanglement: str = "full",
        **kwargs,
    ) -> None:
        paulis = [p.strip() for p in paulis.split(",")] if isinstance(paulis, str) else list(paulis)
        circuit = pauli_feature_map(d_in if qubits is None else qubits, reps=reps, entanglement=entanglement,
                                    paulis=paulis)  # fmt: skip
        super().__init__(d_in, circuit, **kwargs)
