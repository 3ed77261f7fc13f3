"""A circuit compiler for qra's statevector engine: gate lists become short programs of fused layers.

:func:`~qra.featuremaps.statevector.simulate` hands its gate list here.  The list is reduced to its
*structure* — gate names, qubits, constant parameters, and which parameters are tensors (a
"slot": batched ``[B]`` or shared 0-d) — and compiled once per structure, dtype and device into a
:class:`Program` (cached, so training steps pay no compile cost).  The compiler first rewrites CX
ladders around phases into parity phases and reorders gates into layers (``fuse_parity_phases``
and ``schedule``), then emits:

* :class:`PhaseLayer` — a run of diagonal gates (Z, S, T, P, RZ, CZ, CP, CRZ, RZZ, MultiRZ,
  parity phases, global phase) as one phase vector φ = coefficients ``[B, T]`` @ pattern
  ``[T, 2^n]`` (+ a constant), computed in float64 and reduced modulo 2π before the
  exponential, so complex64 states stay accurate to ~1e-7 even when phases reach hundreds of
  radians.  Terms sharing a slot share one pattern row.
* :class:`HadamardLayer` — H on every qubit, H^{⊗n} = H^{⊗a} ⊗ H^{⊗b} ⊗ …: one dense GEMM up to
  6 qubits, else one GEMM per block of at most 5 qubits (4+4 at 8, 5+5 at 10, 4+4+4 at 12), so
  the work per amplitude is Σ 2^block, not 2^n.  On |0…0⟩ it is the uniform state.
* :class:`LocalLayer` — runs of single-qubit gates, each qubit's run multiplied into one 2×2
  (constant factors folded at compile time), applied per qubit by a reshaped contraction; on
  |0…0⟩ it builds the product state directly.
* :class:`PermutationLayer` — CX, CY, SWAP (and consecutive ones composed): a gather with a phase.
* :class:`GateLayer` — any other multi-qubit gate (CRX, CRY, …): a batched k-qubit matrix product.

Gradients and memory.  The program runs inside one ``torch.autograd.Function`` that saves only
its output state and the slot values.  Its backward is the adjoint method: walking the layers
backwards it recovers each layer's input by applying the layer's inverse to the state, applies
the layer's adjoint to the incoming gradient, and forms the gradients of the layer's parameters
(for phase layers Im(g·ψ̄) @ patternᵀ; for matrix layers g·xᴴ, pulled back to the angles by a
small local autograd over the 2×2/4×4 matrix construction).  So memory does not grow with the
number of gates or layers.  Double backward is not supported.

Memory formula.  Let D = 2^n, c the bytes of an amplitude (8 for complex64, 16 for complex128),
B the inputs and b = min(B, max_batch) the chunk the program runs on at once.  With S = B·D·c
(the batch's states) and s = b·D·c (one chunk's)::

    forward              ≈ S (output) + 4·s                      (working set of one chunk)
    forward + backward   ≈ S (output, kept for backward) + S (its gradient)
                           [+ S (initial_state's gradient)] + 8·s
    float64 phase work    inside these: 8·b·D bytes per phase layer, transient

e.g. complex64, n = 8, B = 196,608: S = 403 MB; backward peak ≈ 2·S + 8·s ≈ 4 GB without
chunking, ≈ 1 GB with max_batch = 16,384.  :func:`estimate_bytes` evaluates this formula and
:func:`max_batch_for` inverts it; ``simulate(..., max_batch=…)`` processes the batch in chunks of
that size (forward and backward), and by default picks the chunk from the free GPU memory (half
of it) or a 2 GiB working set on the CPU.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .statevector import DIAGONAL, Gate, _matrix, fuse_parity_phases, real_dtype, schedule

TWO_PI = 2 * math.pi
#: Working-set factors of the memory formula, in units of one chunk's states (b·D·c bytes).
FORWARD_WORK = 4
BACKWARD_WORK = 8
#: Working set used to pick the chunk on the CPU when max_batch is not given.
CPU_WORK_BYTES = 2 * 1024**3
#: Up to this many qubits H^{⊗n} is one dense GEMM; above, blocks of at most one qubit fewer.
HADAMARD_BLOCK = 6
CACHE_SIZE = 128


@dataclass(frozen=True)
class Slot:
    """A tensor parameter in a circuit's structure: index into the values the program is run with."""

    index: int


# ----------------------------------------------------------------------------------------------
# kernels


def _apply_2x2(state: torch.Tensor, matrix: torch.Tensor, qubit: int, num_qubits: int) -> torch.Tensor:
    """``matrix`` ([2, 2] or [b, 2, 2]) on ``qubit`` of ``state`` [b, 2^n], out of place."""
    b = state.shape[0]
    x = state.view(b, 2 ** (num_qubits - 1 - qubit), 2, 2**qubit)
    x0, x1 = x[:, :, 0], x[:, :, 1]
    if matrix.dim() == 2:
        m = [[matrix[i, j] for j in range(2)] for i in range(2)]
    else:
        m = [[matrix[:, i, j].view(b, 1, 1) for j in range(2)] for i in range(2)]
    out = torch.empty_like(x)
    for i in range(2):
        torch.mul(x0, m[i][0], out=out[:, :, i])
        out[:, :, i].addcmul_(x1, m[i][1])
    return out.view(b, -1)


def _grad_2x2(grad: torch.Tensor, before: torch.Tensor, qubit: int, num_qubits: int) -> torch.Tensor:
    """∂L/∂M [b, 2, 2] for y = M x on ``qubit``: Σ g_i · conj(x_j) over the other qubits."""
    b = grad.shape[0]
    shape = (b, 2 ** (num_qubits - 1 - qubit), 2, 2**qubit)
    return torch.einsum("blir,bljr->bij", grad.view(shape), before.view(shape).conj())


def _to_last(state: torch.Tensor, qubits: Sequence[int], num_qubits: int) -> torch.Tensor:
    """``state`` [b, 2^n] as [b, rest, 2^k] with the gate's qubits last (gate index little-endian)."""
    b = state.shape[0]
    axes = [num_qubits - q for q in reversed(qubits)]  # tensor axis of each qubit, most significant first
    last = list(range(num_qubits + 1 - len(qubits), num_qubits + 1))
    return state.reshape((b,) + (2,) * num_qubits).movedim(axes, last).reshape(b, -1, 2 ** len(qubits))


def _from_last(flat: torch.Tensor, qubits: Sequence[int], num_qubits: int) -> torch.Tensor:
    b = flat.shape[0]
    axes = [num_qubits - q for q in reversed(qubits)]
    last = list(range(num_qubits + 1 - len(qubits), num_qubits + 1))
    return flat.reshape((b,) + (2,) * num_qubits).movedim(last, axes).reshape(b, -1)


def _apply_k(state: torch.Tensor, matrix: torch.Tensor, qubits: Sequence[int], num_qubits: int) -> torch.Tensor:
    flat = _to_last(state, qubits, num_qubits)
    flat = flat @ matrix.transpose(-1, -2)  # [b, r, k] @ [(b,) k, k]
    return _from_last(flat, qubits, num_qubits)


# ----------------------------------------------------------------------------------------------
# layers


class Layer:
    """One step of a program: ``forward`` maps states [b, 2^n] to states; ``backward`` goes back.

    ``backward(after, grad, values, grads)`` returns ``(before, grad_before)`` — the layer's input
    state recovered by its inverse, and the gradient pulled back by its adjoint — and adds the
    gradients of the slots it uses into ``grads`` (a dict slot index -> tensor).
    """

    slots: tuple[int, ...] = ()

    def forward(self, state: torch.Tensor, values: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, after, grad, values, grads):  # pragma: no cover - every layer overrides it
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


def _accumulate(grads: dict[int, torch.Tensor], slot: int, value: torch.Tensor, grad: torch.Tensor) -> None:
    grad = grad.sum() if value.dim() == 0 and grad.dim() else grad
    grad = grad.to(value.dtype)
    grads[slot] = grad if slot not in grads else grads[slot] + grad


def _matrix_grads(built: list[torch.Tensor], leaves: list[torch.Tensor], matrix_grads: list[torch.Tensor],
                  slots: Sequence[int], values, grads) -> None:  # fmt: skip
    """Pull gradients of built matrices back to the slot values through their (recorded) construction."""
    pairs = [(m, g if m.dim() == g.dim() else g.sum(0))
             for m, g in zip(built, matrix_grads, strict=True) if m.requires_grad]  # fmt: skip
    if not pairs or not leaves:
        return
    found = torch.autograd.grad([m for m, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True)
    for slot, grad in zip(slots, found, strict=True):
        if grad is not None:
            _accumulate(grads, slot, values[slot], grad)


class PhaseLayer(Layer):
    """A run of diagonal gates: ψ ← ψ · exp(i·(coefficients @ pattern + Σ global terms + constant)).

    ``slots``/``pattern`` are the terms that vary over the basis ([T, D] float64); ``uniform`` the
    slots whose term is the same on every basis state (global phases), added per input as a scalar.
    """

    def __init__(self, slots: list[int], pattern: torch.Tensor | None, uniform: list[tuple[int, float]],
                 constant: torch.Tensor | None, dtype: torch.dtype) -> None:  # fmt: skip
        self.varying = tuple(slots)
        self.uniform = uniform
        self.slots = tuple(dict.fromkeys([*slots, *(s for s, _ in uniform)]))
        self.pattern = pattern  # float64 [T, D]
        self.pattern_t = pattern.T.to(real_dtype(dtype)).contiguous() if pattern is not None else None
        self.constant = constant  # float64 [D] or None
        self.dtype = dtype
        self.fixed = None if self.slots else _polar(constant, dtype)

    def rotation(self, values: Sequence[torch.Tensor], batch: int) -> torch.Tensor:
        if self.fixed is not None:
            return self.fixed
        phase = None
        if self.varying:
            columns = [values[s].to(torch.float64) for s in self.varying]
            if any(c.dim() for c in columns):
                coefficients = torch.stack([c.expand(batch) for c in columns], dim=-1)
            else:
                coefficients = torch.stack(columns)
            phase = coefficients @ self.pattern  # [b, D] or [D]
        if self.uniform:
            scalar = sum(values[s].to(torch.float64) * value for s, value in self.uniform)
            scalar = scalar.unsqueeze(-1) if scalar.dim() else scalar
            phase = scalar if phase is None else phase + scalar
        if self.constant is not None:
            phase = phase + self.constant
        return _polar(phase, self.dtype)

    def forward(self, state, values):
        return state * self.rotation(values, state.shape[0])

    def backward(self, after, grad, values, grads):
        rotation = self.rotation(values, after.shape[0]).conj()
        if self.slots:
            grad_phase = (grad * after.conj()).imag  # ∂L/∂φ = Im(g · conj(ψ)), in the states' real dtype
            if self.varying:
                grad_coefficients = grad_phase @ self.pattern_t  # [b, T]
                for t, slot in enumerate(self.varying):
                    _accumulate(grads, slot, values[slot], grad_coefficients[..., t])
            if self.uniform:
                total = grad_phase.sum(-1)
                for slot, value in self.uniform:
                    _accumulate(grads, slot, values[slot], total * value)
        return after * rotation, grad * rotation

    def describe(self) -> str:
        if not self.slots:
            return "phase(fixed)"
        return f"phase({len(self.varying)} terms" + (f", {len(self.uniform)} global)" if self.uniform else ")")


def _polar(phase: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """exp(i·phase) as ``dtype``: reduced modulo 2π in float64, then cast, cos and sin written in place."""
    angle = torch.remainder(phase, TWO_PI).to(real_dtype(dtype))
    out = torch.empty(*angle.shape, 2, dtype=angle.dtype, device=angle.device)
    torch.cos(angle, out=out[..., 0])
    torch.sin(angle, out=out[..., 1])
    return torch.view_as_complex(out)


class HadamardLayer(Layer):
    """H on every qubit as a product of dense Walsh–Hadamard blocks (each one GEMM)."""

    def __init__(self, num_qubits: int, dtype: torch.dtype, device: torch.device) -> None:
        count = 1 if num_qubits <= HADAMARD_BLOCK else math.ceil(num_qubits / (HADAMARD_BLOCK - 1))
        sizes = [num_qubits // count + (i < num_qubits % count) for i in range(count)]
        self.num_qubits = num_qubits
        self.blocks = []  # (low bit, size, matrix)
        low = 0
        for size in sizes:
            self.blocks.append((low, size, _walsh_hadamard(size, dtype, device)))
            low += size

    def transform(self, state: torch.Tensor) -> torch.Tensor:
        b = state.shape[0]
        for low, size, matrix in self.blocks:
            if low == 0:
                state = state.reshape(-1, 2**size) @ matrix  # symmetric: H^T = H
            else:
                state = torch.matmul(matrix, state.reshape(-1, 2**size, 2**low))
        return state.reshape(b, -1)

    def forward(self, state, values):
        return self.transform(state)

    def backward(self, after, grad, values, grads):
        return self.transform(after), self.transform(grad)  # real, symmetric and its own inverse

    def describe(self) -> str:
        return f"hadamard({'+'.join(str(size) for _, size, _ in self.blocks)})"


def walsh_hadamard_signs(num_qubits: int) -> torch.Tensor:
    """(−1)^popcount(i & j) as float64 ±1: H^{⊗n} times 2^{n/2}."""
    index = torch.arange(2**num_qubits)
    popcount = torch.zeros(2**num_qubits, 2**num_qubits, dtype=torch.int64)
    for k in range(num_qubits):
        popcount += ((index[:, None] >> k) & 1) * ((index[None, :] >> k) & 1)
    return 1.0 - 2.0 * (popcount % 2).to(torch.float64)


def _walsh_hadamard(num_qubits: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return (walsh_hadamard_signs(num_qubits) / math.sqrt(2**num_qubits)).to(device=device, dtype=dtype)


@dataclass
class _Factor:
    """One factor of a qubit's 2×2: a fixed matrix, or a gate whose parameters include slots."""

    fixed: torch.Tensor | None = None
    name: str = ""
    params: tuple = ()


class LocalLayer(Layer):
    """Runs of single-qubit gates on distinct qubits, each fused into one (batched) 2×2 matrix."""

    def __init__(self, runs: dict[int, list[Gate]], num_qubits: int, dtype: torch.dtype,
                 device: torch.device) -> None:  # fmt: skip
        self.num_qubits = num_qubits
        self.dtype = dtype
        self.device = device
        self.factors: dict[int, list[_Factor]] = {}
        slots: list[int] = []
        for qubit, run in runs.items():
            factors: list[_Factor] = []
            for gate in run:  # in circuit order; the matrix is the later factors times the earlier
                gate_slots = [p.index for p in gate.params if isinstance(p, Slot)]
                if gate_slots:
                    factors.append(_Factor(name=gate.name, params=gate.params))
                    slots.extend(s for s in gate_slots if s not in slots)
                else:
                    fixed = _matrix(Gate(gate.name, (qubit,), gate.params), torch.complex128, torch.device("cpu"))
                    if factors and factors[-1].fixed is not None:
                        factors[-1] = _Factor(fixed=fixed @ factors[-1].fixed)
                    else:
                        factors.append(_Factor(fixed=fixed))
            for factor in factors:
                if factor.fixed is not None:
                    factor.fixed = factor.fixed.to(device=device, dtype=dtype)
            self.factors[qubit] = factors
        self.slots = tuple(slots)

    def matrices(self, values: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
        out = {}
        for qubit, factors in self.factors.items():
            matrix = None
            for factor in factors:
                if factor.fixed is not None:
                    current = factor.fixed
                else:
                    params = tuple(values[p.index] if isinstance(p, Slot) else p for p in factor.params)
                    current = _matrix(Gate(factor.name, (qubit,), params), self.dtype, self.device)
                matrix = current if matrix is None else current @ matrix
            out[qubit] = matrix
        return out

    def forward(self, state, values):
        for qubit, matrix in self.matrices(values).items():
            state = _apply_2x2(state, matrix, qubit, self.num_qubits)
        return state

    def product_state(self, values: Sequence[torch.Tensor], batch: int) -> torch.Tensor:
        """The layer applied to |0…0⟩: ⊗_q M_q|0⟩, built by outer products (no pass over a dense state)."""
        matrices = self.matrices(values)
        zero = torch.tensor([1, 0], dtype=self.dtype, device=self.device)
        state = torch.ones(batch, 1, dtype=self.dtype, device=self.device)
        for qubit in reversed(range(self.num_qubits)):  # most significant first
            column = matrices[qubit][..., :, 0] if qubit in matrices else zero
            column = column.expand(batch, 2)
            state = (state.unsqueeze(-1) * column.unsqueeze(1)).reshape(batch, -1)
        return state

    def _leaves(self, values):
        leaves = [values[s].detach().requires_grad_() for s in self.slots]
        local = list(values)
        for slot, leaf in zip(self.slots, leaves, strict=True):
            local[slot] = leaf
        return leaves, local

    def backward(self, after, grad, values, grads):
        with torch.enable_grad():
            leaves, local = self._leaves(values)
            matrices = self.matrices(local)
        built, matrix_grads = [], []
        for qubit in reversed(list(matrices)):
            matrix = matrices[qubit]
            inverse = matrix.detach().conj().transpose(-1, -2)
            before = _apply_2x2(after, inverse, qubit, self.num_qubits)
            if matrix.requires_grad:
                built.append(matrix)
                matrix_grads.append(_grad_2x2(grad, before, qubit, self.num_qubits))
            grad = _apply_2x2(grad, inverse, qubit, self.num_qubits)
            after = before
        _matrix_grads(built, leaves, matrix_grads, self.slots, values, grads)
        return after, grad

    def product_backward(self, grad: torch.Tensor, values, grads) -> None:
        if not self.slots:
            return
        with torch.enable_grad():
            leaves, local = self._leaves(values)
            state = self.product_state(local, grad.shape[0])
            found = torch.autograd.grad(state, leaves, grad, allow_unused=True)
        for slot, grad_slot in zip(self.slots, found, strict=True):
            if grad_slot is not None:
                _accumulate(grads, slot, values[slot], grad_slot)

    def describe(self) -> str:
        batched = sum(any(f.fixed is None for f in fs) for fs in self.factors.values())
        return f"local({len(self.factors)} qubits, {batched} batched)"


class PermutationLayer(Layer):
    """A fixed monomial unitary (CX, CY, SWAP and products): ψ'[i] = phase[i] · ψ[source[i]]."""

    def __init__(self, source: torch.Tensor, phase: torch.Tensor | None, names: list[str]) -> None:
        self.source = source  # int64 [D]
        self.inverse = torch.argsort(source)
        self.phase = phase  # complex [D] or None
        self.names = names

    @classmethod
    def from_gate(cls, gate: Gate, num_qubits: int, dtype: torch.dtype, device: torch.device) -> PermutationLayer:
        matrix = _matrix(gate, torch.complex128, torch.device("cpu"))
        column = matrix.abs().argmax(dim=1)  # the one nonzero of each row
        value = matrix[torch.arange(matrix.shape[0]), column]
        index = torch.arange(2**num_qubits)
        row = torch.zeros_like(index)
        for j, q in enumerate(gate.qubits):
            row += ((index >> q) & 1) << j
        source = index.clone()
        for j, q in enumerate(gate.qubits):
            source &= ~(1 << q)
            source |= ((column[row] >> j) & 1) << q
        phase = value[row]
        fixed = None if torch.all(phase == 1) else phase.to(device=device, dtype=dtype)
        return cls(source.to(device), fixed, [gate.name])

    def then(self, other: PermutationLayer) -> PermutationLayer:
        """This layer followed by ``other``: ψ''[i] = p2[i]·p1[s2[i]]·ψ[s1[s2[i]]]."""
        source = self.source[other.source]
        if self.phase is None and other.phase is None:
            phase = None
        else:
            first = self.phase[other.source] if self.phase is not None else None
            phase = first if other.phase is None else (other.phase if first is None else other.phase * first)
        return PermutationLayer(source, phase, self.names + other.names)

    def forward(self, state, values):
        out = state[:, self.source]
        return out * self.phase if self.phase is not None else out

    def backward(self, after, grad, values, grads):
        if self.phase is not None:
            conj = self.phase.conj()
            after, grad = after * conj, grad * conj
        return after[:, self.inverse], grad[:, self.inverse]

    def describe(self) -> str:
        return f"permutation({'+'.join(self.names)})"


class GateLayer(Layer):
    """Any other gate: its (batched) 2^k×2^k matrix contracted with the state's k qubit axes."""

    def __init__(self, gate: Gate, num_qubits: int, dtype: torch.dtype, device: torch.device) -> None:
        self.gate = gate
        self.num_qubits = num_qubits
        self.dtype = dtype
        self.device = device
        self.slots = tuple(dict.fromkeys(p.index for p in gate.params if isinstance(p, Slot)))
        self.fixed = None if self.slots else _matrix(gate, dtype, device)

    def matrix(self, values) -> torch.Tensor:
        if self.fixed is not None:
            return self.fixed
        params = tuple(values[p.index] if isinstance(p, Slot) else p for p in self.gate.params)
        return _matrix(Gate(self.gate.name, self.gate.qubits, params), self.dtype, self.device)

    def forward(self, state, values):
        return _apply_k(state, self.matrix(values), self.gate.qubits, self.num_qubits)

    def backward(self, after, grad, values, grads):
        qubits, n = self.gate.qubits, self.num_qubits
        with torch.enable_grad():
            leaves = [values[s].detach().requires_grad_() for s in self.slots]
            local = list(values)
            for slot, leaf in zip(self.slots, leaves, strict=True):
                local[slot] = leaf
            matrix = self.matrix(local)
        conj = matrix.detach().conj()  # (M^H)^T
        after_flat, grad_flat = _to_last(after, qubits, n), _to_last(grad, qubits, n)
        before_flat = after_flat @ conj
        if self.slots:
            matrix_grad = grad_flat.transpose(1, 2) @ before_flat.conj()  # Σ_r g[r, i] conj(x[r, j])
            _matrix_grads([matrix], leaves, [matrix_grad], self.slots, values, grads)
        return _from_last(before_flat, qubits, n), _from_last(grad_flat @ conj, qubits, n)

    def describe(self) -> str:
        return f"gate({self.gate.name}{'*' if self.slots else ''})"


# ----------------------------------------------------------------------------------------------
# compiling


def _bits(num_qubits: int) -> torch.Tensor:
    index = torch.arange(2**num_qubits)
    return torch.stack([(index >> k) & 1 for k in range(num_qubits)]).to(torch.float64)


_FIXED_PHASES = {"z": math.pi, "s": math.pi / 2, "sdg": -math.pi / 2, "t": math.pi / 4, "tdg": -math.pi / 4}


def diagonal_pattern(gate: Gate, bits: torch.Tensor) -> tuple[float | None, torch.Tensor | None]:
    """A diagonal gate as (fixed coefficient or None, pattern): its phase on |b⟩ is coefficient·pattern[b].

    ``None`` as coefficient means the coefficient is the gate's (only) parameter.  The identity
    has no pattern.
    """
    name, q = gate.name, gate.qubits
    if name == "id":
        return 0.0, None
    if name in _FIXED_PHASES:
        return _FIXED_PHASES[name], bits[q[0]]
    if name == "cz":
        return math.pi, bits[q[0]] * bits[q[1]]
    if name == "p":
        return None, bits[q[0]]
    if name == "rz":
        return None, bits[q[0]] - 0.5
    if name == "cp":
        return None, bits[q[0]] * bits[q[1]]
    if name == "crz":
        return None, bits[q[0]] * (bits[q[1]] - 0.5)
    if name in ("rzz", "multirz", "parity_phase"):
        parity = torch.remainder(bits[list(q)].sum(dim=0), 2)
        return None, parity if name == "parity_phase" else parity - 0.5
    if name == "global_phase":  # PennyLane's GlobalPhase(φ) multiplies by exp(-iφ)
        return None, -torch.ones_like(bits[0])
    raise AssertionError(name)  # pragma: no cover - DIAGONAL lists the same gates


def _is_monomial(gate: Gate) -> bool:
    return gate.name in ("cx", "cy", "swap")


@dataclass
class Program:
    """A compiled circuit: its layers, run on states [b, 2^n] with the slot values of one call."""

    num_qubits: int
    dtype: torch.dtype
    device: torch.device
    layers: list[Layer]
    num_slots: int
    #: the fused kernels' form of the program, built on first use (:func:`~qra.featuremaps.fused_program.fused_spec`)
    fused: object | None = None

    def describe(self) -> list[str]:
        return [layer.describe() for layer in self.layers]

    def _init_layer(self, has_initial: bool) -> Layer | None:
        first = self.layers[0] if self.layers else None
        return first if not has_initial and isinstance(first, (HadamardLayer, LocalLayer)) else None

    def run(self, initial: torch.Tensor | None, values: Sequence[torch.Tensor], batch: int) -> torch.Tensor:
        dim = 2**self.num_qubits
        init = self._init_layer(initial is not None)
        layers = self.layers[1:] if init is not None else self.layers
        if initial is not None:
            state = initial
        elif isinstance(init, HadamardLayer):
            state = torch.full((batch, dim), 1 / math.sqrt(dim), dtype=self.dtype, device=self.device)
        elif isinstance(init, LocalLayer):
            state = init.product_state(values, batch)
        else:
            state = torch.zeros(batch, dim, dtype=self.dtype, device=self.device)
            state[:, 0] = 1
        for layer in layers:
            state = layer.forward(state, values)
        return state

    def backward(self, final: torch.Tensor, grad: torch.Tensor, values: Sequence[torch.Tensor],
                 has_initial: bool) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:  # fmt: skip
        """The gradient of the initial state and of every slot, from the final state and its gradient."""
        grads: dict[int, torch.Tensor] = {}
        init = self._init_layer(has_initial)
        layers = self.layers[1:] if init is not None else self.layers
        state = final
        for layer in reversed(layers):
            state, grad = layer.backward(state, grad, values, grads)
        if isinstance(init, LocalLayer):
            init.product_backward(grad, values, grads)
        return grad, grads


def compile_gates(gates: Sequence[Gate], num_qubits: int, dtype: torch.dtype, device: torch.device) -> Program:
    """Compile a structural gate list (tensor parameters replaced by :class:`Slot`) into a :class:`Program`."""
    bits = _bits(num_qubits)
    layers: list[Layer] = []
    runs: dict[int, list[Gate]] = {}
    terms: list[Gate] = []
    support: set[int] = set()
    num_slots = 1 + max((p.index for g in gates for p in g.params if isinstance(p, Slot)), default=-1)

    def emit(layer: Layer) -> None:
        if isinstance(layer, PermutationLayer) and layers and isinstance(layers[-1], PermutationLayer):
            layers[-1] = layers[-1].then(layer)
        else:
            layers.append(layer)

    def flush() -> None:
        nonlocal runs, terms, support
        if runs:
            if len(runs) == num_qubits and all(len(r) == 1 and r[0].name == "h" for r in runs.values()):
                emit(HadamardLayer(num_qubits, dtype, device))
            else:
                emit(LocalLayer(runs, num_qubits, dtype, device))
        if terms:
            emit(_phase_layer(terms, bits, dtype, device))
        runs, terms, support = {}, [], set()

    for gate in schedule(fuse_parity_phases(gates)):
        if gate.name in DIAGONAL:
            if gate.name != "id":
                terms.append(gate)
                support.update(gate.qubits)
        elif len(gate.qubits) == 1:
            if gate.qubits[0] in support:
                flush()
            runs.setdefault(gate.qubits[0], []).append(gate)
        else:
            flush()
            if _is_monomial(gate):
                emit(PermutationLayer.from_gate(gate, num_qubits, dtype, device))
            else:
                emit(GateLayer(gate, num_qubits, dtype, device))
    flush()
    return Program(num_qubits, dtype, device, layers, num_slots)


def _phase_layer(terms: list[Gate], bits: torch.Tensor, dtype: torch.dtype, device: torch.device) -> PhaseLayer:
    rows: dict[int, torch.Tensor] = {}
    constant = torch.zeros(bits.shape[1], dtype=torch.float64)
    for gate in terms:
        coefficient, pattern = diagonal_pattern(gate, bits)
        if pattern is None:
            continue
        if coefficient is None:
            param = gate.params[0]
            if isinstance(param, Slot):
                rows[param.index] = rows[param.index] + pattern if param.index in rows else pattern.clone()
                continue
            coefficient = float(param)
        constant += coefficient * pattern
    varying = {slot: row for slot, row in rows.items() if bool((row != row[0]).any())}
    uniform = [(slot, float(row[0])) for slot, row in rows.items() if slot not in varying and float(row[0]) != 0]
    pattern = torch.stack(list(varying.values())).to(device) if varying else None
    slotted = bool(varying or uniform)
    fixed = constant.to(device) if not slotted or bool(constant.any()) else None
    return PhaseLayer(list(varying), pattern, uniform, fixed, dtype)


# ----------------------------------------------------------------------------------------------
# the cache and the autograd function


_CACHE: OrderedDict[tuple, Program] = OrderedDict()


def structure(gates: Sequence[Gate]) -> tuple[list[Gate], list[torch.Tensor], tuple]:
    """The gates with tensor parameters replaced by slots, the tensors, and a hashable key."""
    structural, values, key = [], [], []
    for gate in gates:
        params, signature = [], []
        for param in gate.params:
            if isinstance(param, torch.Tensor):
                signature.append(("s", param.dim() > 0))
                params.append(Slot(len(values)))
                values.append(param)
            else:
                signature.append(float(param))
                params.append(float(param))
        structural.append(Gate(gate.name, gate.qubits, tuple(params)))
        key.append((gate.name, gate.qubits, tuple(signature)))
    return structural, values, tuple(key)


def program_for(gates: Sequence[Gate], num_qubits: int, dtype: torch.dtype,
                device: torch.device) -> tuple[Program, list[torch.Tensor]]:  # fmt: skip
    """The cached program for the circuit's structure, and the tensor values of this call's slots."""
    structural, values, key = structure(gates)
    full_key = (num_qubits, dtype, str(device), key)
    program = _CACHE.get(full_key)
    if program is None:
        program = compile_gates(structural, num_qubits, dtype, device)
        _CACHE[full_key] = program
        if len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(full_key)
    return program, values


def clear_cache() -> None:
    _CACHE.clear()


class _RunProgram(torch.autograd.Function):
    """The program as one autograd node that saves its output and slot values, with an adjoint backward."""

    @staticmethod
    def forward(ctx, program: Program, batch: int, chunk: int, initial: torch.Tensor | None, *values: torch.Tensor):
        if chunk >= batch:
            out = program.run(initial, values, batch)
        else:
            out = torch.empty(batch, 2**program.num_qubits, dtype=program.dtype, device=program.device)
            for start in range(0, batch, chunk):
                part = slice(start, min(start + chunk, batch))
                out[part] = program.run(
                    None if initial is None else initial[part],
                    [v[part] if v.dim() else v for v in values],
                    part.stop - part.start,
                )
        if out is initial:  # an empty program: autograd needs a distinct output
            out = out.clone()
        ctx.program, ctx.batch, ctx.chunk, ctx.has_initial = program, batch, chunk, initial is not None
        ctx.save_for_backward(out, *values)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        out, *values = ctx.saved_tensors
        program, batch, chunk = ctx.program, ctx.batch, ctx.chunk
        wanted = ctx.needs_input_grad[4:]
        grad_values: list[torch.Tensor | None] = [None] * len(values)
        grad_initial = torch.empty_like(out) if ctx.needs_input_grad[3] and chunk < batch else None
        for start in range(0, batch, chunk):
            part = slice(start, min(start + chunk, batch))
            local = [v[part] if v.dim() else v for v in values]
            g_init, grads = program.backward(out[part], grad[part].to(out.dtype), local, ctx.has_initial)
            if ctx.needs_input_grad[3]:
                if chunk >= batch:
                    grad_initial = g_init
                else:
                    grad_initial[part] = g_init
            for slot, g in grads.items():
                if not wanted[slot]:
                    continue
                if values[slot].dim() == 0:
                    grad_values[slot] = g if grad_values[slot] is None else grad_values[slot] + g
                else:
                    if grad_values[slot] is None:
                        grad_values[slot] = torch.zeros_like(values[slot])
                    grad_values[slot][part] += g
        return None, None, None, grad_initial, *grad_values


def run_program(program: Program, values: Sequence[torch.Tensor] | torch.Tensor, batch: int,
                initial: torch.Tensor | None = None, max_batch: int | None = None,
                implementation: str = "auto", keep_states: bool = True,
                expansion: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Run ``program`` on ``batch`` inputs: ``values`` are [batch] or 0-d tensors, or their columns as one
    ``[batch, S]`` tensor (a map's ``slot_values``); ``initial`` is [batch, 2^n].  With ``expansion``
    ``[S, S']`` (a map's ``slot_basis``), ``values`` ``[batch, S']`` stand for ``values @ expansion.T``;
    the fused kernels fold the expansion into their mixing matrix instead of forming that product.

    Phase–Hadamard programs (ZZ, IQP, …) run on the fused Triton kernels where they can
    (:mod:`qra.featuremaps.fused_program`; ``implementation`` ``auto``/``pytorch``/``fused``); their
    memory is the output states alone, so ``max_batch`` does not apply to them, and with
    ``keep_states=False`` their backward forms the states again instead of keeping them (the PyTorch
    engine ignores it: :class:`~qra.featuremaps.circuit.CircuitFeatureMap` checkpoints there).
    """
    from .fused_program import fused_spec, run_fused

    if expansion is not None and not isinstance(values, torch.Tensor):
        raise ValueError("an expansion takes the values as one [batch, S'] tensor, not a sequence of columns")
    spec = fused_spec(program, implementation, has_initial=initial is not None)
    if spec is not None:
        if isinstance(values, torch.Tensor):
            return run_fused(spec, values, keep_states, expansion)
        rows = [v.expand(batch) for v in values] or [torch.zeros(batch, device=program.device)]  # no slots: a dummy
        return run_fused(spec, torch.stack(rows).T, keep_states)
    if isinstance(values, torch.Tensor):
        values = (values if expansion is None else values @ expansion.T).unbind(1)
    chunk = max_batch if max_batch is not None else auto_max_batch(program.num_qubits, program.dtype, program.device)
    return _RunProgram.apply(program, batch, max(1, int(chunk)), initial, *values)


# ----------------------------------------------------------------------------------------------
# memory


def amplitude_bytes(dtype: torch.dtype) -> int:
    return 16 if dtype == torch.complex128 else 8


def estimate_bytes(num_qubits: int, batch: int, dtype: torch.dtype = torch.complex64, *, backward: bool = True,
                   max_batch: int | None = None, initial_state_grad: bool = False) -> int:  # fmt: skip
    """Peak bytes the engine needs to simulate ``batch`` circuits of ``num_qubits`` (see the module docstring).

    Forward: the output S = B·2^n·c plus a working set of 4 chunks' states; forward + backward: the
    output, its gradient (and the initial state's gradient) plus 8 chunks' states.  The chunk is
    ``min(batch, max_batch)``.  Parameters and cached patterns ([T, 2^n] float64) are not counted.
    """
    per_input = 2**num_qubits * amplitude_bytes(dtype)
    chunk = batch if max_batch is None else min(batch, max_batch)
    if not backward:
        return batch * per_input + FORWARD_WORK * chunk * per_input
    full = (3 if initial_state_grad else 2) * batch * per_input
    return full + BACKWARD_WORK * chunk * per_input


def max_batch_for(num_qubits: int, work_bytes: int, dtype: torch.dtype = torch.complex64) -> int:
    """The largest chunk whose working set (backward's, the larger) fits in ``work_bytes``."""
    return max(1, int(work_bytes // (BACKWARD_WORK * 2**num_qubits * amplitude_bytes(dtype))))


def auto_max_batch(num_qubits: int, dtype: torch.dtype, device: torch.device) -> int:
    """The default chunk: half the free GPU memory as working set on CUDA, 2 GiB on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max_batch_for(num_qubits, free // 2, dtype)
    return max_batch_for(num_qubits, CPU_WORK_BYTES, dtype)
