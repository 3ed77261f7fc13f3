"""A batched, differentiable statevector simulator in plain torch (CPU and CUDA).

Quantum feature maps at attention scale simulate one small circuit per query and key vector:
hundreds of thousands of circuits of a few qubits per step.  Frameworks simulate them one by
one or with Python-level broadcasting; this engine runs the whole batch as tensor operations,
differentiably, with no quantum dependency, so the PennyLane and Qiskit backends can hand it the
circuits they build and train on it.

Conventions (Qiskit's): qubit k is bit k of the basis-state index (little-endian).  A gate on
qubits (q0, q1, ...) has its matrix indexed by Σ_j bit(q_j)·2^j, so ``Gate("cx", (c, t))`` has
control c and target t.  Gate parameters are Python floats or tensors of any common batch shape.

Speed and memory: :func:`simulate` compiles the gate list once per circuit structure (see
:mod:`qra.featuremaps.compiler`) into a few fused layers — runs of diagonal gates as one phase
vector (a float64 matrix product, reduced modulo 2π before the exponential, so complex64 states
stay accurate to ~1e-7 even when phases reach hundreds of radians), Hadamard layers as blocked
Walsh–Hadamard GEMMs, runs of single-qubit gates as one 2×2 per qubit, CX/CY/SWAP as gathers —
and runs them in one autograd node whose backward is the adjoint method, so memory grows with
B·2^n, not with the number of gates.  The memory formula is in the compiler's docstring
(:func:`~qra.featuremaps.compiler.estimate_bytes`); ``max_batch`` chunks large batches.
:func:`reference_simulate` is the earlier gate-by-gate engine, kept as a plain-autograd reference.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

import torch

Param = float | torch.Tensor

#: Gates the engine simulates, with their number of qubits and parameters.
GATES: dict[str, tuple[int, int]] = {
    "id": (1, 0), "h": (1, 0), "x": (1, 0), "y": (1, 0), "z": (1, 0), "s": (1, 0), "sdg": (1, 0),
    "t": (1, 0), "tdg": (1, 0), "sx": (1, 0), "sxdg": (1, 0),
    "rx": (1, 1), "ry": (1, 1), "rz": (1, 1), "p": (1, 1), "u": (1, 3),
    "cx": (2, 0), "cy": (2, 0), "cz": (2, 0), "swap": (2, 0),
    "rzz": (2, 1), "cp": (2, 1), "crz": (2, 1), "crx": (2, 1), "cry": (2, 1),
    "multirz": (-1, 1), "parity_phase": (-1, 1), "global_phase": (0, 1),
}  # fmt: skip
DIAGONAL = frozenset(
    {"id", "z", "s", "sdg", "t", "tdg", "rz", "p", "cz", "rzz", "cp", "crz", "multirz", "parity_phase", "global_phase"}
)


@dataclass(frozen=True)
class Gate:
    """One gate: a name from :data:`GATES`, the qubits it acts on, and its parameters."""

    name: str
    qubits: tuple[int, ...]
    params: tuple[Param, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in GATES:
            raise ValueError(f"the statevector engine has no gate {self.name!r}; it simulates: {', '.join(GATES)}")
        arity, count = GATES[self.name]
        if arity >= 0 and len(self.qubits) != arity:
            raise ValueError(f"gate {self.name!r} acts on {arity} qubit(s), got {self.qubits}")
        if len(self.params) != count:
            raise ValueError(f"gate {self.name!r} takes {count} parameter(s), got {len(self.params)}")


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.complex128 else torch.float32


@cache
def _bits(num_qubits: int, device: torch.device) -> torch.Tensor:
    """``bits[k, i]`` = bit k of basis index i, as float64."""
    index = torch.arange(2**num_qubits, device=device)
    return torch.stack([(index >> k) & 1 for k in range(num_qubits)]).to(torch.float64)


@cache
def _walsh_hadamard(num_qubits: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """H^{⊗n} as a dense (symmetric) matrix: the Sylvester construction."""
    matrix = torch.ones(1, 1, dtype=torch.float64)
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / math.sqrt(2)
    for _ in range(num_qubits):
        matrix = torch.kron(matrix, h)
    return matrix.to(device=device, dtype=dtype)


def _as_tensor(param: Param, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(param, dtype=torch.float64, device=device) if not isinstance(param, torch.Tensor) else param


def _diagonal_term(gate: Gate, bits: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A diagonal gate as (coefficient, pattern): its phase on |b⟩ is coefficient · pattern[b] (float64).

    The coefficient is 0-d for fixed gates and [B] for batched angles, so a run of diagonal gates
    becomes one matrix product [B, T] @ [T, 2^n] instead of T passes over the state.
    """
    q = gate.qubits
    name = gate.name
    constant = {"z": math.pi, "s": math.pi / 2, "sdg": -math.pi / 2, "t": math.pi / 4, "tdg": -math.pi / 4}
    if name == "id":
        return torch.zeros((), dtype=torch.float64, device=device), bits[0]
    if name in constant:
        return torch.tensor(constant[name], dtype=torch.float64, device=device), bits[q[0]]
    if name == "cz":
        return torch.tensor(math.pi, dtype=torch.float64, device=device), bits[q[0]] * bits[q[1]]
    theta = _as_tensor(gate.params[0], device).to(torch.float64)
    if name == "p":
        pattern = bits[q[0]]
    elif name == "rz":
        pattern = bits[q[0]] - 0.5
    elif name == "cp":
        pattern = bits[q[0]] * bits[q[1]]
    elif name == "crz":
        pattern = bits[q[0]] * (bits[q[1]] - 0.5)
    elif name in ("rzz", "multirz", "parity_phase"):
        parity = torch.remainder(bits[list(q)].sum(dim=0), 2)
        pattern = parity if name == "parity_phase" else parity - 0.5
    elif name == "global_phase":  # PennyLane's GlobalPhase(φ) multiplies by exp(-iφ)
        pattern = -torch.ones_like(bits[0])
    else:  # pragma: no cover - DIAGONAL and this function list the same gates
        raise AssertionError(name)
    return theta, pattern


def _matrix(gate: Gate, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The gate's unitary, [2^t, 2^t] or [*batch, 2^t, 2^t], little-endian in its qubit list."""
    name = gate.name
    fixed = {
        "h": [[1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(2), -1 / math.sqrt(2)]],
        "x": [[0, 1], [1, 0]],
        "y": [[0, -1j], [1j, 0]],
        "sx": [[(1 + 1j) / 2, (1 - 1j) / 2], [(1 - 1j) / 2, (1 + 1j) / 2]],
        "sxdg": [[(1 - 1j) / 2, (1 + 1j) / 2], [(1 + 1j) / 2, (1 - 1j) / 2]],
        # two-qubit gates on (control, target): index = b_control + 2·b_target
        "cx": [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0]],
        "cy": [[1, 0, 0, 0], [0, 0, 0, -1j], [0, 0, 1, 0], [0, 1j, 0, 0]],
        "swap": [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]],
    }
    if name in fixed:
        return torch.tensor(fixed[name], dtype=dtype, device=device)
    params = [_as_tensor(p, device).to(real_dtype(dtype)) for p in gate.params]
    half = params[0] / 2
    c, s = torch.cos(half).to(dtype), torch.sin(half).to(dtype)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    if name in ("rx", "crx"):
        block = [[c, -1j * s], [-1j * s, c]]
    elif name in ("ry", "cry"):
        block = [[c, -s], [s, c]]
    elif name == "u":
        phi, lam = (torch.polar(torch.ones_like(p), p).to(dtype) for p in params[1:])
        block = [[c, -lam * s], [phi * s, phi * lam * c]]
    else:  # pragma: no cover
        raise AssertionError(name)
    if name in ("crx", "cry"):  # controlled on the first qubit: acts where b_control = 1 (odd indices)
        rows = [
            [one, zero, zero, zero],
            [zero, block[0][0], zero, block[0][1]],
            [zero, zero, one, zero],
            [zero, block[1][0], zero, block[1][1]],
        ]
    else:
        rows = block
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def _apply_matrix(state: torch.Tensor, matrix: torch.Tensor, qubits: Sequence[int], num_qubits: int) -> torch.Tensor:
    """Apply a (batched) matrix to ``qubits`` of ``state`` [B, 2^n]."""
    batch = state.shape[0]
    tensor = state.reshape((batch,) + (2,) * num_qubits)
    axes = [1 + num_qubits - 1 - q for q in reversed(qubits)]  # most significant gate bit first
    moved = tensor.movedim(axes, list(range(num_qubits + 1 - len(qubits), num_qubits + 1)))
    shape = moved.shape
    flat = moved.reshape(batch, -1, 2 ** len(qubits))
    if matrix.dim() == 2:
        flat = flat @ matrix.T
    else:
        flat = torch.einsum("brj,bij->bri", flat, matrix.reshape(batch, *matrix.shape[-2:]))
    moved = flat.reshape(shape)
    return moved.movedim(list(range(num_qubits + 1 - len(qubits), num_qubits + 1)), axes).reshape(batch, -1)


def fuse_parity_phases(gates: Sequence[Gate]) -> list[Gate]:
    """Rewrite CX ladders around a phase into one diagonal gate, as circuits decomposed to CX show them.

    ``cx(c1,t) … cx(ck,t) · P(θ)_t · cx(ck,t) … cx(c1,t)`` multiplies |b⟩ by exp(iθ·(b_c1 ⊕ … ⊕ b_t)):
    a ``parity_phase``.  With RZ(θ) in the middle it is MultiRZ(θ) on the same qubits.  This is how
    Qiskit writes ZZ-type feature maps; fused, they run on the diagonal fast path.
    """
    out: list[Gate] = []
    i = 0
    while i < len(gates):
        gate = gates[i]
        if gate.name == "cx":
            target = gate.qubits[1]
            j = i
            while j < len(gates) and gates[j].name == "cx" and gates[j].qubits[1] == target:
                j += 1
            ladder = gates[i:j]
            middle = gates[j] if j < len(gates) else None
            if middle is not None and middle.name in ("p", "rz") and middle.qubits == (target,):
                for k in range(len(ladder), 0, -1):  # longest matching ladder first
                    closing = gates[j + 1 : j + 1 + k]
                    if [g.qubits for g in closing] == [g.qubits for g in reversed(ladder[-k:])] and all(
                        g.name == "cx" for g in closing
                    ):
                        out.extend(ladder[:-k])
                        controls = tuple(g.qubits[0] for g in ladder[-k:])
                        fused = "parity_phase" if middle.name == "p" else "multirz"
                        out.append(Gate(fused, (*controls, target), middle.params))
                        i = j + 1 + k
                        break
                else:
                    out.append(gate)
                    i += 1
                continue
        out.append(gate)
        i += 1
    return out


def schedule(gates: Sequence[Gate]) -> list[Gate]:
    """Reorder gates into layers, diagonal gates after the layer they follow, keeping the circuit's unitary.

    Compilers list gates qubit by qubit, so a Hadamard of the next repetition often comes before
    the last phase gates of this one.  Each non-diagonal gate goes one layer after everything
    before it on its qubits; a diagonal gate goes right after the last non-diagonal gate on its
    qubits (diagonal gates commute with each other).  Sorting by (layer, diagonal-last) keeps the
    order of every pair of gates that do not commute, and turns ZZ/IQP circuits into "Hadamard
    layer, diagonal block" repetitions — the engine's fast path.
    """
    level: dict[int, int] = {}  # latest layer used on a qubit
    last_mixing: dict[int, int] = {}  # layer of the latest non-diagonal gate on a qubit
    keyed = []
    for position, gate in enumerate(gates):
        if gate.name in DIAGONAL:
            layer = max((last_mixing.get(q, 0) for q in gate.qubits), default=0)
            key = (layer, 1, position)
        else:
            layer = max((level.get(q, 0) for q in gate.qubits), default=0) + 1
            key = (layer, 0, position)
            for q in gate.qubits:
                last_mixing[q] = layer
        for q in gate.qubits:
            level[q] = max(level.get(q, 0), layer)
        keyed.append((key, gate))
    return [gate for _, gate in sorted(keyed, key=lambda item: item[0])]


def _batch_shape(gates: Iterable[Gate]) -> torch.Size:
    shapes = [p.shape for gate in gates for p in gate.params if isinstance(p, torch.Tensor)]
    return torch.broadcast_shapes(*shapes) if shapes else torch.Size()


def simulate(
    gates: Sequence[Gate],
    num_qubits: int,
    dtype: torch.dtype = torch.complex128,
    device: torch.device | str | None = None,
    batch_shape: Sequence[int] | None = None,
    initial_state: torch.Tensor | None = None,
    *,
    max_batch: int | None = None,
    implementation: str = "auto",
) -> torch.Tensor:
    """The states ``[*batch, 2^n]`` that ``gates`` prepare from |0…0⟩, one per batch element.

    ``batch_shape`` defaults to the broadcast shape of the tensor parameters (and of
    ``initial_state[..., 2^n]``, which replaces |0…0⟩ when given).  Gradients flow to every tensor
    parameter (and to ``initial_state``).  The circuit is compiled once per structure and cached;
    the batch runs in chunks of at most ``max_batch`` inputs (default: what fits, see
    :func:`~qra.featuremaps.compiler.auto_max_batch`), forward and backward.  ``implementation``
    (``auto``, ``pytorch``, ``fused``) chooses whether phase–Hadamard circuits run on the fused Triton
    kernels (:mod:`qra.featuremaps.fused_program`).
    """
    from .compiler import program_for, run_program

    device, shape, batch, initial = _prepare(gates, num_qubits, dtype, device, batch_shape, initial_state)
    check_memory(num_qubits, batch, dtype, device)
    program, values = program_for(gates, num_qubits, dtype, device)
    values = [v if v.dim() == 0 else v.expand(shape).reshape(batch) for v in values]
    state = run_program(program, values, batch, initial, max_batch, implementation)
    return state.reshape(*shape, 2**num_qubits)


def format_bytes(count: float) -> str:
    """``17592186044416`` -> ``"16.0 TiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError  # pragma: no cover


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: the GPU's (counting torch's cached blocks), or the machine's available RAM."""
    if device.type == "cuda":  # what the driver has free, plus what torch's allocator holds unused
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    try:
        with open("/proc/meminfo") as info:
            fields = dict(line.split(":", 1) for line in info)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


#: simulations whose states need less than this are not checked against free memory
MEMORY_CHECK_BYTES = 2**30


def check_memory(num_qubits: int, batch: int, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse, with the numbers, a simulation whose states alone cannot fit: chunking shrinks the
    working set, but every input's output state must exist at once."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    needed = batch * 2**num_qubits * itemsize
    if needed < MEMORY_CHECK_BYTES:  # the check asks the driver or the OS: keep it off the everyday hot path
        return
    free = available_bytes(device)
    if needed > free:
        raise MemoryError(
            f"{batch:,} states of {num_qubits} qubits ({dtype}) need {format_bytes(needed)}, but {device} has "
            f"{format_bytes(free)} free; use fewer qubits, a smaller batch, or complex64"
        )


def _prepare(gates, num_qubits, dtype, device, batch_shape, initial_state):
    """Validate the call; its device, batch shape, flat batch size and flat initial state (or None)."""
    if dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"dtype must be torch.complex64 or torch.complex128, got {dtype}")
    for gate in gates:
        if any(not 0 <= q < num_qubits for q in gate.qubits) or len(set(gate.qubits)) != len(gate.qubits):
            raise ValueError(f"gate {gate} acts outside qubits 0..{num_qubits - 1} or repeats a qubit")
    tensors = [p for gate in gates for p in gate.params if isinstance(p, torch.Tensor)]
    device = torch.device(device) if device is not None else (tensors[0].device if tensors else torch.device("cpu"))
    shape = torch.Size(batch_shape) if batch_shape is not None else _batch_shape(gates)
    if initial_state is not None:
        shape = torch.broadcast_shapes(shape, initial_state.shape[:-1])
    batch = math.prod(shape)
    dim = 2**num_qubits
    if initial_state is not None:
        initial_state = initial_state.to(device=device, dtype=dtype).expand(*shape, dim).reshape(batch, dim)
    return device, shape, batch, initial_state


def reference_simulate(
    gates: Sequence[Gate],
    num_qubits: int,
    dtype: torch.dtype = torch.complex128,
    device: torch.device | str | None = None,
    batch_shape: Sequence[int] | None = None,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`simulate`'s earlier engine: gate by gate (with phase/Hadamard fusion), plain torch autograd.

    Every operation is recorded by autograd, so backward keeps about one copy of the states per
    gate; it is the reference the compiled engine is tested and benchmarked against.
    """
    device, shape, batch, initial_state = _prepare(gates, num_qubits, dtype, device, batch_shape, initial_state)
    dim = 2**num_qubits
    bits = _bits(num_qubits, device)

    def flat(param: Param) -> Param:
        if not isinstance(param, torch.Tensor) or param.dim() == 0:
            return param
        return param.expand(shape).reshape(batch)

    # The pending block is "a layer of Hadamards, then a diagonal": a Hadamard on qubit q joins it
    # when the diagonal does not touch q yet (they commute), so interleaved H/RZ templates fuse too.
    state: torch.Tensor | None = None  # None means |0…0⟩, not yet materialised
    if initial_state is not None:
        state = initial_state
    hadamards: list[int] = []
    terms: list[tuple[torch.Tensor, torch.Tensor]] = []  # pending diagonal gates as (coefficient, pattern)
    phase_support: set[int] = set()

    def zero_state() -> torch.Tensor:
        zero = torch.zeros(batch, dim, dtype=dtype, device=device)
        zero[:, 0] = 1
        return zero

    def flush() -> None:
        nonlocal state, hadamards, terms, phase_support
        if len(hadamards) == num_qubits and state is None:
            state = torch.full((batch, dim), 1 / math.sqrt(dim), dtype=dtype, device=device)
        elif len(hadamards) == num_qubits:
            state = state @ _walsh_hadamard(num_qubits, device, dtype)
        elif hadamards:
            state = zero_state() if state is None else state
            for q in hadamards:
                state = _apply_matrix(state, _matrix(Gate("h", (q,)), dtype, device), (q,), num_qubits)
        if terms:
            batched = any(coefficient.dim() for coefficient, _ in terms)
            coefficients = torch.stack([c.expand(batch) if batched else c for c, _ in terms], dim=-1)
            phase = coefficients @ torch.stack([pattern for _, pattern in terms])  # float64 [B, 2^n] or [2^n]
            angle = torch.remainder(phase, 2 * math.pi).to(real_dtype(dtype))  # reduce in float64, then cast
            rotation = torch.polar(torch.ones_like(angle), angle)
            state = (zero_state() if state is None else state) * rotation
        hadamards, terms, phase_support = [], [], set()

    for gate in schedule(fuse_parity_phases(gates)):
        params = tuple(map(flat, gate.params))
        if gate.name == "h":
            q = gate.qubits[0]
            if q in hadamards or q in phase_support:
                flush()
            hadamards.append(q)
        elif gate.name in DIAGONAL:
            terms.append(_diagonal_term(Gate(gate.name, gate.qubits, params), bits, device))
            phase_support.update(gate.qubits)
        else:
            flush()
            current = zero_state() if state is None else state
            matrix = _matrix(Gate(gate.name, gate.qubits, params), dtype, device)
            state = _apply_matrix(current, matrix, gate.qubits, num_qubits)
    flush()
    if state is None:
        state = zero_state()
    return state.reshape(*shape, dim)
