"""Run phase–Hadamard programs (ZZ, IQP, Pauli-Z maps) on the fused Triton kernels of :mod:`qra.kernels.phase_program`.

:func:`~qra.featuremaps.compiler.run_program` asks :func:`fused_spec` whether a compiled program can
run on them: a program ``H, P₁, H, P₂, …, H, P_L`` from |0…0⟩ (no initial state), complex64, on
CUDA (or on the CPU under Triton's interpreter), 4–8 qubits.  The spec — every phase layer's pattern
rows (one coefficient column per slot) and constant phases — is built once per program and kept on
it.  Everything else runs on the PyTorch engine.

``QRA_ENGINE_IMPLEMENTATION`` (``auto``, ``pytorch``, ``fused``) or ``simulate(..., implementation=…)``
chooses: ``auto`` takes the kernels where they apply, ``pytorch`` never, ``fused`` raises where they
cannot run.  ``QRA_DISABLE_FUSED=1`` turns them off as it does the attention kernels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from .compiler import HadamardLayer, PhaseLayer, Program, walsh_hadamard_signs

#: qubit counts the kernels take: tl.dot needs 16-wide operands, and 2^8 amplitudes per row fill the registers
MIN_QUBITS, MAX_QUBITS = 4, 8
#: above this many qubits Ĥ is applied as Ĥ₄ ⊗ Ĥ₄ (the dense fp16 matrix would not fit in shared memory)
DENSE_HADAMARD_QUBITS = 7
IMPLEMENTATIONS = ("auto", "pytorch", "fused")
IMPLEMENTATION_ENV = "QRA_ENGINE_IMPLEMENTATION"
FOUR_PI = 4 * math.pi
TWO_PI = 2 * math.pi


@dataclass(frozen=True)
class FusedSpec:
    """A program as the kernels take it: per phase layer, K pattern rows and the slots' weights on them."""

    doubled_patterns: torch.Tensor  # fp32 [L, K, 2^n]: 2·pattern, integers; zero rows past a layer's columns
    constants: torch.Tensor  # fp32 [L, 2^n], in [0, 2π)
    mixing: torch.Tensor  # float64 [S, L·K]: coefficient column c = Σ_s values[s]·mixing[s, c]
    hadamard: torch.Tensor  # fp16 ±1
    factor: int


def resolve_implementation(implementation: str = "auto") -> str:
    """The engine implementation in force: the environment's, else the argument (both validated)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; accepted: {', '.join(IMPLEMENTATIONS)}")
    forced = os.environ.get(IMPLEMENTATION_ENV, "")
    if forced and forced not in IMPLEMENTATIONS:
        raise ValueError(f"{IMPLEMENTATION_ENV}={forced!r}; accepted: {', '.join(IMPLEMENTATIONS)}")
    return forced or implementation


@contextmanager
def forced_implementation(implementation: str) -> Iterator[None]:
    """Run the block with ``QRA_ENGINE_IMPLEMENTATION`` set (benchmarks compare the two engines in one process)."""
    resolve_implementation(implementation)
    previous = os.environ.get(IMPLEMENTATION_ENV)
    os.environ[IMPLEMENTATION_ENV] = implementation
    try:
        yield
    finally:
        if previous is None:
            del os.environ[IMPLEMENTATION_ENV]
        else:
            os.environ[IMPLEMENTATION_ENV] = previous


def engine_path(gates: Sequence, num_qubits: int, dtype: torch.dtype, device: torch.device) -> str:
    """``fused`` or ``pytorch``: which engine :func:`~qra.featuremaps.statevector.simulate` takes for these gates."""
    from .compiler import program_for

    program, _ = program_for(gates, num_qubits, dtype, device)
    return "fused" if fused_spec(program) is not None else "pytorch"


def hadamard_operand(num_qubits: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """The fp16 ±1 matrix the kernels multiply by, and its Kronecker factor size (0: the matrix is dense)."""
    if num_qubits <= DENSE_HADAMARD_QUBITS:
        return walsh_hadamard_signs(num_qubits).to(device=device, dtype=torch.float16), 0
    if num_qubits % 2:
        raise ValueError(f"the factorised Hadamard needs an even qubit count, got {num_qubits}")
    half = num_qubits // 2
    return walsh_hadamard_signs(half).to(device=device, dtype=torch.float16), 2**half


def _structure_fits(program: Program) -> bool:
    layers = program.layers
    if not MIN_QUBITS <= program.num_qubits <= MAX_QUBITS or program.dtype != torch.complex64 or not layers:
        return False
    if len(layers) % 2:
        return False
    return all(isinstance(layer, HadamardLayer if i % 2 == 0 else PhaseLayer) for i, layer in enumerate(layers))


def _devices_ok(program: Program) -> bool:
    from ..kernels import fused_device

    return fused_device(program.device)


#: the kernels form Σ n·(2·pattern) exactly in fp32 with n < 512: the sum must stay below 2^24
EXACT_LIMIT = 2**24


def _build_spec(program: Program) -> FusedSpec | None:
    """The kernels' form of the program, or None when a pattern is not half-integer (never for the shipped gates)."""
    dim = 2**program.num_qubits
    phase_layers = program.layers[1::2]
    rows_per_layer, weights_per_layer = [], []
    constants = torch.zeros(len(phase_layers), dim, dtype=torch.float64)
    for index, layer in enumerate(phase_layers):
        rows = [row.cpu().to(torch.float64) for row in layer.pattern] if layer.varying else []
        weights = [{slot: 1.0} for slot in layer.varying]
        if layer.uniform:  # the global phases: one column of ones, its coefficient Σ value·weight
            rows.append(torch.ones(dim, dtype=torch.float64))
            weights.append(dict(layer.uniform))
        rows_per_layer.append(rows)
        weights_per_layer.append(weights)
        if layer.constant is not None:
            constants[index] = torch.remainder(layer.constant.cpu().to(torch.float64), TWO_PI)
    width = 16 * max(1, -(-max(len(rows) for rows in rows_per_layer) // 16))  # the kernels take 16 at a time
    doubled = torch.zeros(len(phase_layers), width, dim, dtype=torch.float64)
    mixing = torch.zeros(max(program.num_slots, 1), len(phase_layers) * width, dtype=torch.float64)
    for index, (rows, weights) in enumerate(zip(rows_per_layer, weights_per_layer, strict=True)):
        for j, (row, weight) in enumerate(zip(rows, weights, strict=True)):
            doubled[index, j] = 2 * row
            for slot, value in weight.items():
                mixing[slot, index * width + j] += value
    # the uniform columns' weights are half-integers too, so every coefficient may be reduced modulo 4π
    if not torch.equal(doubled, doubled.round()) or not torch.equal(2 * mixing, (2 * mixing).round()):
        return None
    if 512 * doubled.abs().sum(1).max() >= EXACT_LIMIT:
        return None
    hadamard, factor = hadamard_operand(program.num_qubits, program.device)
    as_fp32 = {"device": program.device, "dtype": torch.float32}
    return FusedSpec(doubled.to(**as_fp32), constants.to(**as_fp32), mixing.to(program.device), hadamard, factor)


def fused_spec(program: Program, implementation: str = "auto", has_initial: bool = False) -> FusedSpec | None:
    """The program's kernel spec when it will run on the fused kernels (cached on it), else None."""
    implementation = resolve_implementation(implementation)
    if implementation == "pytorch":
        return None
    fits = not has_initial and _structure_fits(program) and _devices_ok(program)
    if not fits:
        if implementation == "fused":
            initial = " with an initial state" if has_initial else ""
            raise ValueError(
                "implementation='fused': the fused circuit kernels take programs H, P, H, P, … (Hadamard layers and "
                "diagonal-gate layers) from |0…0⟩ (no initial state), complex64, 4–8 qubits, on CUDA with Triton; "
                f"this program is {program.describe()}{initial} on {program.num_qubits} qubits, {program.dtype}, "
                f"{program.device}"
            )
        return None
    if program.fused is None:
        program.fused = _build_spec(program) or False  # False: built, and not expressible
    if program.fused is False and implementation == "fused":
        raise ValueError("implementation='fused': this program's phase patterns are not half-integers")
    return program.fused or None


#: the coefficients' whole part is counted in units of 2π/256
UNIT = TWO_PI / 256


def coefficients_reference(spec: FusedSpec, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column's coefficient c modulo 4π as (n, r) with c = n·2π/256 + r, both [L, K, B] fp32 (n an integer < 512).

    The split :func:`qra.kernels.phase_program.phase_coefficients` makes in one kernel, in PyTorch:
    the tests' statement of it and their oracle for the kernel.  ``values`` ``[B, S]``: the slot values.
    """
    layers, width = spec.doubled_patterns.shape[:2]
    coefficients = torch.mm(spec.mixing.T, values.detach().to(torch.float64).T)  # [L·K, B]
    coefficients.remainder_(FOUR_PI)
    whole = torch.round(coefficients / UNIT)
    rest = coefficients.sub_(whole, alpha=UNIT).to(torch.float32)
    return whole.remainder_(512).to(torch.float32).reshape(layers, width, -1), rest.reshape(layers, width, -1)


class _FusedProgram(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: FusedSpec, values: torch.Tensor, keep_states: bool):
        from ..kernels.phase_program import phase_coefficients, phase_program_forward

        turns, rest = phase_coefficients(values, spec.mixing, spec.doubled_patterns.shape[0])  # detaches them
        out = phase_program_forward(turns, rest, spec.doubled_patterns, spec.constants, spec.hadamard, spec.factor)
        ctx.spec = spec
        ctx.values_dtype = values.dtype
        # the split coefficients (6 bytes a column), not the slot values (8 a slot, and the split again in backward);
        # without the states the backward kernel forms them again from the coefficients
        ctx.save_for_backward(out if keep_states else None, turns, rest)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        from ..kernels.phase_program import phase_program_backward

        spec = ctx.spec
        out, turns, rest = ctx.saved_tensors
        grad = grad.to(torch.complex64).resolve_conj()
        grad_values = phase_program_backward(turns, rest, spec.doubled_patterns, spec.constants, spec.hadamard,
                                             spec.factor, out, grad, spec.mixing, ctx.values_dtype)  # fmt: skip
        return None, grad_values, None


def run_fused(spec: FusedSpec, values: torch.Tensor, keep_states: bool = True,
              expansion: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """The program's states complex64 ``[B, 2^n]`` from the kernels, differentiable in ``values`` ``[B, S]``.

    ``keep_states=False``: the backward forms the states again inside its kernel from the saved phase
    coefficients (6 bytes a column and input) instead of keeping them (2^n·8 bytes an input).
    ``expansion`` ``[S, S']``: ``values`` are ``[B, S']`` and the slot values ``values @ expansion.T``;
    the expansion is folded into the mixing matrix (coefficients = values @ (expansionᵀ·mixing)).
    """
    if expansion is not None:
        if expansion.shape != (spec.mixing.shape[0], values.shape[1]):
            raise ValueError(f"expansion {tuple(expansion.shape)} does not take values {tuple(values.shape)} to the "
                             f"program's {spec.mixing.shape[0]} slots")  # fmt: skip
        spec = replace(spec, mixing=expansion.T.to(spec.mixing) @ spec.mixing)
    return _FusedProgram.apply(spec, values, keep_states)
