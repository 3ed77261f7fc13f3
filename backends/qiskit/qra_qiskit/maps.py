"""Qiskit circuits as qra feature maps: simulated on qra's engine, Qiskit's Statevector or Aer.

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

from qra.featuremaps.circuit import CircuitFeatureMap
from qra.featuremaps.statevector import GATES, Gate

#: Qiskit's own simulators for ``engine="framework"``
DEVICES = ("statevector", "aer")
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


def _compile(value: object, symbols: list[sympy.Symbol]) -> AngleFunction | float:
    """A gate parameter as a float, or a torch function of the angles ``[..., count]``."""
    if isinstance(value, ParameterExpression):
        if not value.parameters:
            return float(value)
        expression = sympy.sympify(value.sympify())
        for function_class, name in _OPAQUE.items():
            expression = expression.replace(function_class, sympy.Function(f"qra_{name}"))
        namespace = _TORCH_FUNCTIONS | {f"qra_{name}": _TORCH_FUNCTIONS[name] for name in _OPAQUE.values()}
        function = sympy.lambdify(symbols, expression, modules=[namespace, "math"])
        return lambda angles: function(*angles.unbind(-1))
    return float(value)


class QiskitCircuitMap(CircuitFeatureMap):
    """Any parameterised Qiskit ``QuantumCircuit`` as a feature map (from Python; not registered).

    ``circuit``: its parameters are the angles (``circuit.num_parameters`` of them, in
    ``circuit.parameters`` order); the projection maps d_in to that many.  ``engine``: ``native``
    (qra's batched, differentiable engine; the default, for training) or ``framework``: Qiskit's
    own simulator named by ``device`` — ``statevector`` (``qiskit.quantum_info.Statevector`` per
    input) or ``aer`` (qiskit-aer with batched parameter binds), forward-only, for verification and
    inference.  Every other parameter is :class:`~qra.featuremaps.circuit.CircuitFeatureMap`'s.
    """

    fixed_parameters = ("qubits",)  # the circuit's own width

    def __init__(
        self, d_in: int, circuit: QuantumCircuit, device: str = "statevector", engine: str = "native", **kwargs
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
            if callable(phase) or phase != 0:  # Qiskit's e^{iφ}; the engine's global_phase is e^{-iφ}
                program.append(("global_phase", (), (phase,)))
            self._program = program
        return self._program

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
        circuit = self.circuit.copy()
        circuit.save_statevector()
        compiled = transpile(circuit, simulator, optimization_level=0)
        binds = [{parameter: values[:, i].tolist() for i, parameter in enumerate(self._circuit_parameters)}]
        result = simulator.run([compiled], parameter_binds=binds).result()
        return np.stack([np.asarray(result.get_statevector(i)) for i in range(len(values))])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_program": None}  # compiled lambdas don't pickle; rebuilt on demand


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
