"""Triton kernels for phase–Hadamard circuits: the ZZ, IQP and Pauli-Z feature maps' states in one pass.

A compiled program of the form ``H, P₁, H, P₂, …, H, P_L`` on |0…0⟩ (every H a Hadamard on all
qubits, every P a run of diagonal gates) has the state

    ψ = D_L · Ĥ · D_{L-1} · … · Ĥ · D_1 · |+⟩^{⊗n},   D_l = diag exp(i·φ_l),  φ_l = C_l @ P_l,

where ``C_l`` ``[B, K]`` are the layer's coefficients (the circuit's angles, one column per slot)
and ``P_l`` ``[K, 2^n]`` its pattern, plus the layer's constant phases (see
:mod:`qra.featuremaps.compiler`).  One program of the forward kernel keeps a block of inputs' states
in registers through every layer and writes each state once; the PyTorch engine writes and reads
the batch's states several times per layer.  The backward is the adjoint method on the same
registers: it starts from the saved output (or forms it again) and its gradient, undoes each layer (Ĥ is
real, symmetric and its own inverse) and writes ∂L/∂φ_l = Im(g·ψ̄), which one cuBLAS product with the
patterns and the slots' mixing turns into the slot values' gradient.

Precision.  A phase reaches hundreds of radians (a ZZ map's 36 terms at 8 qubits), where one fp32
ulp is ~1e-5: formed naively in fp32 it costs complex64 states 1e-5.  So each coefficient c (reduced
modulo 4π) is split into a multiple of 2π/256 and a remainder, c = n·2π/256 + r with |r| ≤ π/256.
The patterns are half-integers, p = q/2, so Σ n·q is an integer (exact in fp32, ``ieee`` dots) whose
residue modulo 512 gives the large part of the phase exactly in [0, 2π); the remainders' part Σ r·q/2
is small.  Phases are then as accurate as the PyTorch engine's (float64 reduced modulo 2π, then fp32).
The split is one elementwise kernel after the float64 product of the slot values with the program's
mixing matrix (:func:`phase_coefficients`): it writes n as float16 (an integer below 512, exact) and r
as float32.  The forward saves that pair for the backward (6 bytes a column and input, fewer than the
slot values' 8 a slot), so the backward neither keeps nor recomputes float64 coefficients.
Cosines and sines are the hardware's approximate ones after a reduction to [−π, π] (:mod:`._trig`:
absolute error ~2⁻²⁰·⁵ ≈ 7e-7 a phase; the library functions' slow path for huge arguments made up
about half the kernels' instructions).  Ĥ's entries are ±1, exact in fp16, so the Walsh–Hadamard
products run on tensor cores with each fp32 operand split into two fp16 parts (hi + lo, 22 significant
bits); the sums accumulate in fp32.
Up to 7 qubits Ĥ is one dense [2^n, 2^n] product; at 8 it is Ĥ₄ ⊗ Ĥ₄, two products of 16×16 on
the state viewed as [16, 16].  States are complex64 ``[B, 2^n]``; 4 ≤ n ≤ 8.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import triton
import triton.language as tl

from ._trig import cos_sin, hardware_trig
from ._util import cdiv

TWO_PI = tl.constexpr(2 * math.pi)
FOUR_PI = tl.constexpr(4 * math.pi)
#: the coefficients' whole part is counted in units of 2π/256
UNIT = tl.constexpr(2 * math.pi / 256)


@triton.jit
def _split_kernel(coefficients_ptr, turns_ptr, rest_ptr, size, BLOCK: tl.constexpr):
    """c (float64) mod 4π = n·UNIT + r: n float16 (an integer below 512), r float32 with |r| ≤ UNIT/2."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < size
    c = tl.load(coefficients_ptr + offs, mask=mask, other=0.0)
    c = c - FOUR_PI * tl.floor(c / FOUR_PI)
    whole = tl.floor(c / UNIT + 0.5)
    tl.store(rest_ptr + offs, (c - whole * UNIT).to(tl.float32), mask=mask)
    tl.store(turns_ptr + offs, (whole - 512.0 * tl.floor(whole / 512.0)).to(tl.float16), mask=mask)


@triton.jit
def _dot_split(x, h):
    """x @ h for fp32 x and an fp16 matrix h of small integers, to ~fp32 precision (two fp16 products)."""
    hi = x.to(tl.float16)
    lo = (x - hi.to(tl.float32)).to(tl.float16)
    return tl.dot(lo, h, acc=tl.dot(hi, h))


@triton.jit
def _hadamard(x, h, BLOCK_B: tl.constexpr, DIM: tl.constexpr, FACTOR: tl.constexpr):
    """x [BLOCK_B, DIM] times the unnormalised Walsh–Hadamard matrix (h: dense, or one of its two Kronecker factors)."""
    if FACTOR == 0:
        y = _dot_split(x, h)
    else:  # amplitude index = high·FACTOR + low: transform the low qubits, then the high ones
        y = _dot_split(tl.reshape(x, (BLOCK_B * FACTOR, FACTOR)), h)
        y = tl.permute(tl.reshape(y, (BLOCK_B, FACTOR, FACTOR)), (0, 2, 1))
        y = _dot_split(tl.reshape(y, (BLOCK_B * FACTOR, FACTOR)), h)
        y = tl.permute(tl.reshape(y, (BLOCK_B, FACTOR, FACTOR)), (0, 2, 1))
        y = tl.reshape(y, (BLOCK_B, DIM))
    return y


@triton.jit
def _load_hadamard(h_ptr, SIZE: tl.constexpr):
    offs = tl.arange(0, SIZE)
    return tl.load(h_ptr + offs[:, None] * SIZE + offs[None, :])


@triton.jit
def _phases(turns_ptr, rest_ptr, q_ptr, const_ptr, rows, row_mask, batch, layer,
            K: tl.constexpr, DIM: tl.constexpr, BLOCK_B: tl.constexpr):  # fmt: skip
    """φ_l for a block of rows in [0, 2π + small): (Σ n·q mod 512)·2π/512 + constant, plus Σ r·q/2.

    Tensor-core products over 16 coefficients at a time: n and q are integers that tf32 holds exactly
    (so Σ n·q is exact in the fp32 accumulator), r·q runs as three tf32 products (tf32x3, ~fp32).
    """
    cols = tl.arange(0, DIM)
    ks = tl.arange(0, 16)
    whole = tl.zeros([BLOCK_B, DIM], dtype=tl.float32)
    small = tl.zeros([BLOCK_B, DIM], dtype=tl.float32)
    for k0 in range(0, K, 16):
        offs = (layer * K + k0 + ks)[None, :] * batch + rows[:, None]  # coefficients are stored [L, K, B]
        q = tl.load(q_ptr + (layer * K + k0 + ks)[:, None] * DIM + cols[None, :])
        turns = tl.load(turns_ptr + offs, mask=row_mask[:, None], other=0.0).to(tl.float32)
        whole = tl.dot(turns, q, acc=whole, input_precision="tf32")
        rest = tl.load(rest_ptr + offs, mask=row_mask[:, None], other=0.0)
        small = tl.dot(rest, q, acc=small, input_precision="tf32x3")
    whole = whole - 512.0 * tl.floor(whole / 512.0)
    base = whole * (TWO_PI / 512.0) + tl.load(const_ptr + layer * DIM + cols)[None, :]
    base = base - TWO_PI * tl.floor(base / TWO_PI)
    return base + 0.5 * small


@triton.jit
def _final_state(turns_ptr, rest_ptr, q_ptr, const_ptr, h, rows, row_mask, batch, norm,
                 LAYERS: tl.constexpr, K: tl.constexpr, DIM: tl.constexpr, FACTOR: tl.constexpr,
                 BLOCK_B: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """The program's output state (re, im) for a block of rows, in registers."""
    phi = _phases(turns_ptr, rest_ptr, q_ptr, const_ptr, rows, row_mask, batch, 0, K, DIM, BLOCK_B)
    cos, sin = cos_sin(phi, FAST)
    re = cos * norm  # D_1 |+⟩
    im = sin * norm
    for layer in tl.static_range(1, LAYERS):
        re = _hadamard(re, h, BLOCK_B, DIM, FACTOR) * norm
        im = _hadamard(im, h, BLOCK_B, DIM, FACTOR) * norm
        phi = _phases(turns_ptr, rest_ptr, q_ptr, const_ptr, rows, row_mask, batch, layer, K, DIM, BLOCK_B)
        cos, sin = cos_sin(phi, FAST)
        re, im = re * cos - im * sin, re * sin + im * cos
    return re, im


@triton.jit
def _forward_kernel(turns_ptr, rest_ptr, q_ptr, const_ptr, h_ptr, out_ptr, batch, norm,
                    LAYERS: tl.constexpr, K: tl.constexpr, DIM: tl.constexpr, FACTOR: tl.constexpr,
                    H_SIZE: tl.constexpr, BLOCK_B: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)  # 64-bit: B·2^(n+1) may pass 2^31
    row_mask = rows < batch
    h = _load_hadamard(h_ptr, H_SIZE)
    re, im = _final_state(turns_ptr, rest_ptr, q_ptr, const_ptr, h, rows, row_mask, batch, norm,
                          LAYERS, K, DIM, FACTOR, BLOCK_B, FAST)  # fmt: skip
    out = tl.reshape(tl.join(re, im), (BLOCK_B, 2 * DIM))  # complex64 as interleaved (re, im)
    offs = tl.arange(0, 2 * DIM)
    tl.store(out_ptr + rows[:, None] * (2 * DIM) + offs[None, :], out, mask=row_mask[:, None])


@triton.jit
def _load_complex(ptr, rows, row_mask, BLOCK_B: tl.constexpr, DIM: tl.constexpr):
    offs = tl.arange(0, 2 * DIM)
    x = tl.load(ptr + rows[:, None] * (2 * DIM) + offs[None, :], mask=row_mask[:, None], other=0.0)
    return tl.split(tl.reshape(x, (BLOCK_B, DIM, 2)))


@triton.jit
def _backward_kernel(turns_ptr, rest_ptr, q_ptr, const_ptr, h_ptr, out_ptr, grad_ptr, dphi_ptr, batch, count, norm,
                     LAYERS: tl.constexpr, K: tl.constexpr, DIM: tl.constexpr, FACTOR: tl.constexpr,
                     H_SIZE: tl.constexpr, BLOCK_B: tl.constexpr, FAST: tl.constexpr,
                     RECOMPUTE: tl.constexpr):  # fmt: skip
    """∂L/∂φ_l for ``count`` rows, written [count, L, 2^n]; coefficients strided by ``batch`` (the whole batch's).

    ``RECOMPUTE``: the output states are formed again in registers from the coefficients (``out_ptr`` unused).
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)  # 64-bit: B·2^(n+1) may pass 2^31
    row_mask = rows < count
    h = _load_hadamard(h_ptr, H_SIZE)
    cols = tl.arange(0, DIM)
    if RECOMPUTE:
        re, im = _final_state(turns_ptr, rest_ptr, q_ptr, const_ptr, h, rows, row_mask, batch, norm,
                              LAYERS, K, DIM, FACTOR, BLOCK_B, FAST)  # fmt: skip
    else:
        re, im = _load_complex(out_ptr, rows, row_mask, BLOCK_B, DIM)
    g_re, g_im = _load_complex(grad_ptr, rows, row_mask, BLOCK_B, DIM)
    for step in tl.static_range(LAYERS):
        layer = LAYERS - 1 - step
        # ∂L/∂φ = Im(g · conj(ψ)) on the state after the phase layer; its product with the pattern runs in cuBLAS
        dphi = g_im * re - g_re * im
        tl.store(dphi_ptr + (rows[:, None] * LAYERS + layer) * DIM + cols[None, :], dphi, mask=row_mask[:, None])
        if layer > 0:
            phi = _phases(turns_ptr, rest_ptr, q_ptr, const_ptr, rows, row_mask, batch, layer, K, DIM, BLOCK_B)
            cos, sin = cos_sin(phi, FAST)
            re, im = re * cos + im * sin, im * cos - re * sin  # ψ · exp(-iφ): the state before the phases
            g_re, g_im = g_re * cos + g_im * sin, g_im * cos - g_re * sin
            re = _hadamard(re, h, BLOCK_B, DIM, FACTOR) * norm
            im = _hadamard(im, h, BLOCK_B, DIM, FACTOR) * norm
            g_re = _hadamard(g_re, h, BLOCK_B, DIM, FACTOR) * norm
            g_im = _hadamard(g_im, h, BLOCK_B, DIM, FACTOR) * norm


#: (rows per program, warps) by 2^n.  Up to 7 qubits the largest blocks whose forward and backward compile without
#: register spills for sm_90 (ptxas -v on the kernels, 2 layers: 74–255 registers a thread), except at 6 qubits.
#: At 6 and 8 qubits the shapes timed fastest on an H200 (experiments/device/phase_program_shapes.py, 196,608 inputs,
#: results/bench/phase-program-shapes-h200.txt), forward / backward / backward forming the states:
#: 6 qubits, 32 rows on 4 warps: 0.127 / 0.380 / 0.480 ms (8 warps: 0.181 / 0.402 / 0.646), though the backward
#: spills 88 bytes; 8 qubits, 16 rows on 4 warps: 0.72 / 1.59 / 2.33 ms (8 warps: 1.24 / 1.91 / 2.77), though the
#: backward spills 468 bytes (712 forming the states)
LAUNCH_SHAPES = {16: (64, 4), 32: (32, 4), 64: (32, 4), 128: (16, 8), 256: (16, 4)}


def _launch_shape(dim: int) -> tuple[int, int]:
    return LAUNCH_SHAPES[dim]


#: elements per program of the split kernel
SPLIT_BLOCK = 1024


def phase_coefficients(values: torch.Tensor, mixing: torch.Tensor, layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' coefficients ``(n, r)``, each ``[L, K, B]``: n float16 integers in [0, 512), r float32.

    ``values`` ``[B, S]`` (any strides): the program's slot values; ``mixing`` ``[S, L·K]`` float64: coefficient
    column c = Σ_s values[s]·mixing[s, c], formed in float64 (one cuBLAS product) and split by one kernel
    into c mod 4π = n·2π/256 + r: 0.15 and 0.24 ms a call at 6 and 8 qubits (pennylane-zz, 196,608 inputs,
    H200) against 0.46 and 0.69 for the PyTorch ops it replaced; a kernel that also mixed the slots, in
    float64 registers, took 0.63 and 1.66 ms (``results/bench/circuit-kernel-profile.txt``).
    """
    coefficients = torch.mm(mixing.T, values.detach().to(torch.float64).T)  # [L·K, B], freed on return
    turns = torch.empty(coefficients.shape, dtype=torch.float16, device=values.device)
    rest = torch.empty(coefficients.shape, dtype=torch.float32, device=values.device)
    size = coefficients.numel()
    _split_kernel[(cdiv(size, SPLIT_BLOCK),)](coefficients, turns, rest, size, BLOCK=SPLIT_BLOCK, num_warps=4)
    batch = values.shape[0]
    return turns.view(layers, -1, batch), rest.view(layers, -1, batch)


def phase_program_forward(turns: torch.Tensor, rest: torch.Tensor, doubled_patterns: torch.Tensor,
                          constants: torch.Tensor, hadamard: torch.Tensor, factor: int) -> torch.Tensor:  # fmt: skip
    """States complex64 ``[B, 2^n]``.

    ``turns`` (float16), ``rest`` (float32) ``[L, K, B]``: each coefficient as n (an integer, in units
    of 2π/256) and the remainder r (:func:`phase_coefficients`); ``doubled_patterns`` ``[L, K, 2^n]``:
    2·pattern (integers); ``constants`` ``[L, 2^n]`` in [0, 2π); ``hadamard``, ``factor``:
    :func:`qra.featuremaps.fused_program.hadamard_operand`.
    """
    layers, k, batch = turns.shape
    dim = doubled_patterns.shape[-1]
    out = torch.empty(batch, dim, dtype=torch.complex64, device=turns.device)
    block, warps = _launch_shape(dim)
    _forward_kernel[(cdiv(batch, block),)](
        turns, rest, doubled_patterns, constants, hadamard, torch.view_as_real(out), batch, dim**-0.5,
        LAYERS=layers, K=k, DIM=dim, FACTOR=factor, H_SIZE=hadamard.shape[0], BLOCK_B=block, FAST=hardware_trig(),
        num_warps=warps,
    )  # fmt: skip
    return out


#: bytes of ∂L/∂φ (all layers, a chunk of rows) between the backward kernel and its product with the patterns
GRADIENT_CHUNK_BYTES = 2**26


def phase_program_backward(turns: torch.Tensor, rest: torch.Tensor, doubled_patterns: torch.Tensor,
                           constants: torch.Tensor, hadamard: torch.Tensor, factor: int, out: torch.Tensor | None,
                           grad: torch.Tensor, mixing: torch.Tensor | None = None,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:  # fmt: skip
    """∂L/∂values ``[B, S]`` for the slot values that ``mixing`` ``[S, L·K]`` mixes into the coefficients.

    ``out``: the forward's output states (complex64), or None to have the kernel form them again from the
    coefficients (one more forward pass in registers; nothing state-sized kept between forward and backward).
    ``grad``: their gradient.  ``mixing`` None: the identity, i.e. ∂L/∂coefficients ``[B, L·K]``.  In ``dtype``.

    Chunks of rows: the kernel writes ∂L/∂φ ``[rows, L·2^n]`` (fp32, at most ``GRADIENT_CHUNK_BYTES``, so memory
    does not grow with the layers or the batch) and one cuBLAS product with G = ½·mixing·patterns ``[S, L·2^n]``
    turns it into the values' gradient, in IEEE fp32 whatever the process's TF32
    setting.  In the kernel, as a tensor-core product ``[rows, 2^n] @ [2^n, 16]``, the pattern product held its
    left operand whole in every warp and took 2.7 of the backward's 3.8 ms at 8 qubits, 196,608 inputs on an
    H200 (``results/bench/phase-program-ab-h200.txt``); a row reduction per column was slower still.
    """
    layers, k, batch = rest.shape
    dim = doubled_patterns.shape[-1]
    block, warps = _launch_shape(dim)
    chunk = max(block, GRADIENT_CHUNK_BYTES // (4 * layers * dim) // block * block)
    if mixing is None:
        mixing = torch.eye(layers * k, dtype=torch.float64, device=rest.device)
    # ∂L/∂values = Σ_l ∂L/∂φ_l @ (P_lᵀ·½·mixing_lᵀ): φ_l = Σ_c c·P_l[c] and P = doubled / 2
    weights = torch.einsum("slk,lkj->slj", mixing.view(-1, layers, k).to(torch.float64) * 0.5,
                           doubled_patterns.to(torch.float64)).reshape(mixing.shape[0], layers * dim)  # fmt: skip
    weights = weights.to(torch.float32).T  # exact for dyadic slot weights (every shipped map's); else fp32-rounded
    dphi = torch.empty(min(chunk, batch), layers * dim, dtype=torch.float32, device=rest.device)
    grad = torch.view_as_real(grad.contiguous())
    states = grad if out is None else torch.view_as_real(out)  # unread when the kernel recomputes them
    result = torch.empty(batch, mixing.shape[0], dtype=dtype, device=rest.device)
    staging = None if dtype == torch.float32 else torch.empty(min(chunk, batch), mixing.shape[0], dtype=torch.float32,
                                                              device=rest.device)  # fmt: skip
    with exact_fp32_products():
        for start in range(0, batch, chunk):
            count = min(chunk, batch - start)
            _backward_kernel[(cdiv(count, block),)](
                turns[..., start:], rest[..., start:], doubled_patterns, constants, hadamard, states[start:],
                grad[start:], dphi, batch, count, dim**-0.5,
                LAYERS=layers, K=k, DIM=dim, FACTOR=factor, H_SIZE=hadamard.shape[0], BLOCK_B=block,
                FAST=hardware_trig(), RECOMPUTE=out is None, num_warps=warps,
            )  # fmt: skip
            rows = slice(start, start + count)
            if staging is None:
                torch.mm(dphi[:count], weights, out=result[rows])
            else:
                result[rows] = torch.mm(dphi[:count], weights, out=staging[:count])
    return result


@contextmanager
def exact_fp32_products() -> Iterator[None]:
    """float32 matrix products in IEEE fp32 inside the block, whatever ``torch.set_float32_matmul_precision`` says."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
