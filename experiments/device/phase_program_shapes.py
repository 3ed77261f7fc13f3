"""Launch shapes of the circuit kernels side by side: rows per program and warps, forward and backward.

``qra.kernels.phase_program.LAUNCH_SHAPES`` holds, per state size, the largest row block whose kernels
compile for sm_90 without register spills; this times other blocks and warp counts on the pennylane-zz
program (196,608 inputs, one patched layer's queries) to show whether that choice limits the kernels.
Run on the GPU machine: ``python experiments/device/phase_program_shapes.py --qubits 6 8``.
"""

from __future__ import annotations

import argparse

import torch
from profiling import wall_ms

from qra.featuremaps import fused_program, get
from qra.featuremaps.compiler import program_for
from qra.kernels import phase_program

INPUTS = 196_608
CANDIDATES = [(16, 4), (16, 8), (16, 16), (32, 4), (32, 8), (32, 16), (64, 8)]


def sweep(qubits: int, device: torch.device) -> None:
    fm = get("pennylane-zz", d_in=qubits, qubits=qubits, projection="identity", engine="native").to(device)
    x = torch.rand(INPUTS, qubits, device=device) * 2 * torch.pi
    program, values = program_for(fm.gates(fm.angles(x)), qubits, torch.complex64, device)
    spec = fused_program.fused_spec(program)
    matrix = torch.stack([v.expand(INPUTS) for v in values], dim=1)
    turns, rest = phase_program.phase_coefficients(matrix, spec.mixing, spec.doubled_patterns.shape[0])
    args = (turns, rest, spec.doubled_patterns, spec.constants, spec.hadamard, spec.factor)
    grad = torch.randn(INPUTS, 2**qubits, dtype=torch.complex64, device=device)
    default = phase_program.LAUNCH_SHAPES[2**qubits]
    reference = phase_program.phase_program_forward(*args)
    print(f"== pennylane-zz {qubits} qubits, {INPUTS} inputs (default shape {default})")
    for shape in CANDIDATES:
        phase_program.LAUNCH_SHAPES[2**qubits] = shape
        try:
            out = phase_program.phase_program_forward(*args)
            error = (out - reference).abs().max().item()
            forward = wall_ms(lambda: phase_program.phase_program_forward(*args))
            backward = wall_ms(lambda out=out: phase_program.phase_program_backward(*args, out, grad, spec.mixing))
            recompute = wall_ms(lambda: phase_program.phase_program_backward(*args, None, grad, spec.mixing))
        except Exception as failure:  # a shape that does not compile (shared memory, registers) is a row too
            print(f"   rows {shape[0]:3d} warps {shape[1]:2d}: {type(failure).__name__}: {str(failure)[:80]}")
            continue
        print(f"   rows {shape[0]:3d} warps {shape[1]:2d}: forward {forward:.3f} ms, backward {backward:.3f} ms, "
              f"backward forming the states {recompute:.3f} ms (states differ by {error:.1e})")
    phase_program.LAUNCH_SHAPES[2**qubits] = default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--qubits", type=int, nargs="+", default=[6, 8])
    arguments = parser.parse_args()
    for qubits in arguments.qubits:
        sweep(qubits, torch.device("cuda"))


if __name__ == "__main__":
    main()
