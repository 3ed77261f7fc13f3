"""Phase-program kernel versions side by side in one process: this checkout's against older copies of it.

    git show 2f2b0a4:qra/kernels/phase_program.py > old.py
    python experiments/device/phase_program_ab.py --variant before=old.py [--variant NAME=PATH ...]

Each variant is a copy of ``qra/kernels/phase_program.py``, loaded inside the ``qra.kernels`` package (its
relative imports resolve there).  For the pennylane-zz map's compiled program (reps = 2) at 6 and 8 qubits
and 196,608 inputs (one patched layer's queries at B = 32, N = 512, H = 12): each version's forward and
backward kernels on the same coefficients (a version whose kernels take float32 whole parts gets them so),
timed in turns (this checkout, the variants, this checkout again: the repeat shows the drift), and each
variant's largest difference from this checkout's states and coefficient gradients.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect

import torch
from profiling import wall_ms

import qra.kernels.phase_program as this_module
from qra.featuremaps import fused_program, get

INPUTS = 196_608


def load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(f"qra.kernels._ab_{name}", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "qra.kernels"
    spec.loader.exec_module(module)
    return module


def operands(qubits: int, device: torch.device) -> tuple[tuple, torch.Tensor]:
    """The kernels' arguments for the map's program on random inputs, and a random output gradient."""
    fm = get("pennylane-zz", d_in=qubits, qubits=qubits, projection="identity", engine="native").to(device)
    x = torch.rand(INPUTS, qubits, device=device) * 2 * torch.pi
    angles = fm.angles(x)
    values = fm.slot_values(angles)
    program = fm._checked_program(angles, values, torch.complex64)
    spec = fused_program.fused_spec(program)
    turns, rest = this_module.phase_coefficients(values, spec.mixing, spec.doubled_patterns.shape[0])
    args = (turns, rest, spec.doubled_patterns, spec.constants, spec.hadamard, spec.factor)
    grad = torch.randn(INPUTS, 2**qubits, dtype=torch.complex64, device=device)
    return args, grad


def adapted(module, args: tuple) -> tuple:
    """``args`` as ``module``'s kernels take them: float32 whole parts for versions before float16 ones."""
    takes_half = "phase_coefficients" in inspect.getsource(module)
    return args if takes_half else (args[0].float(), *args[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", action="append", default=[], help="NAME=PATH of a phase_program.py copy")
    parser.add_argument("--qubits", type=int, nargs="+", default=[6, 8])
    args = parser.parse_args()
    device = torch.device("cuda")
    versions = {"this checkout": this_module}
    for spec in args.variant:
        name, _, path = spec.partition("=")
        versions[name] = load(name, path)
    order = [*versions, "this checkout"]
    for qubits in args.qubits:
        base, grad = operands(qubits, device)
        print(f"== pennylane-zz, {qubits} qubits, {INPUTS:,} inputs (ms a call: wall, back to back, 20 calls)")
        reference = None
        for name in order:
            module = versions[name]
            call = adapted(module, base)
            out = module.phase_program_forward(*call)
            dc = module.phase_program_backward(*call, out, grad)
            forward = wall_ms(lambda m=module, c=call: m.phase_program_forward(*c), calls=20)
            backward = wall_ms(lambda m=module, c=call, o=out, g=grad: m.phase_program_backward(*c, o, g), calls=20)
            if reference is None:
                reference = (out, dc)
            state_error = (out - reference[0]).abs().max().item()
            grad_error = ((dc - reference[1]).abs().max() / reference[1].abs().max()).item()
            print(f"   {name:16s} forward {forward:7.3f}  backward {backward:7.3f}  "
                  f"max |Δψ| {state_error:.2e}  max |Δ∂c| / max |∂c| {grad_error:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
