"""Where a ZZ-map states call spends its time on the GPU: the whole call against the circuit kernels alone.

For pennylane-zz (gate parameters from ``slot_values``) and qiskit-zz (from the gate list) at 6 and 8
qubits, 196,608 inputs (one patched layer's queries at B = 32, N = 512, H = 12): the fused kernels'
forward and backward on prepared coefficients, the coefficient preparation, and the map's states
forward and forward + backward on the fused kernels (``auto``) and on the PyTorch engine.  Run on the
GPU machine: ``python experiments/device/circuit_profile.py`` (medians of 10 after 3 warm-ups).
``--table`` also prints torch.profiler's operator table of the forward + backward on the fused kernels:
which of its GPU time is the kernels and which the PyTorch work around them.
"""

from __future__ import annotations

import argparse

import torch
from profiling import profile_step, wall_ms

from qra.experiment.bench import amplitude_sum
from qra.featuremaps import fused_program, get
from qra.featuremaps.compiler import program_for
from qra.kernels.phase_program import phase_coefficients, phase_program_backward, phase_program_forward

INPUTS = 196_608


def profile(name: str, qubits: int, device: torch.device, table: bool = False) -> dict[str, float]:
    fm = get(name, d_in=qubits, qubits=qubits, projection="identity", engine="native").to(device)
    x = torch.rand(INPUTS, qubits, device=device) * 2 * torch.pi
    program, values = program_for(fm.gates(fm.angles(x)), qubits, torch.complex64, device)
    spec = fused_program.fused_spec(program)
    matrix = torch.stack([v.expand(INPUTS) for v in values], dim=1)
    layers = spec.doubled_patterns.shape[0]
    turns, rest = phase_coefficients(matrix, spec.mixing, layers)
    args = (turns, rest, spec.doubled_patterns, spec.constants, spec.hadamard, spec.factor)
    out = phase_program_forward(*args)
    grad = torch.randn_like(out)

    def forward(implementation: str) -> None:
        with torch.no_grad(), fused_program.forced_implementation(implementation):
            fm.states(x)

    def forward_backward(implementation: str, loss=amplitude_sum) -> None:
        leaf = x.detach().requires_grad_()
        with fused_program.forced_implementation(implementation):
            loss(fm.states(leaf)).backward()

    def real_plus_imaginary(states: torch.Tensor) -> torch.Tensor:  # the benchmark's loss in rounds 1–7
        return states.real.sum() + states.imag.sum()

    if table:
        wall, kernels, events = profile_step(lambda: forward_backward("auto"), calls=10, warmup=3)
        print(f"   fwd+bwd (auto): {wall:.3f} ms wall, GPU kernels {kernels:.3f} ms a call (10 profiled calls below)")
        print(events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))
    return {
        "kernel fwd": wall_ms(lambda: phase_program_forward(*args)),
        # as _FusedProgram calls it: into the gate parameters' float64 gradient (rows "kernel bwd" in files before
        # round 8's last commits took the coefficients' gradient, an identity mixing as wide as the coefficients)
        "kernel bwd (gate parameters)": wall_ms(
            lambda: phase_program_backward(*args, out, grad, spec.mixing, torch.float64)
        ),
        "coefficient prep": wall_ms(lambda: phase_coefficients(matrix, spec.mixing, layers)),
        "states fwd (auto)": wall_ms(lambda: forward("auto")),
        "states fwd (pytorch engine)": wall_ms(lambda: forward("pytorch")),
        "states fwd+bwd (auto)": wall_ms(lambda: forward_backward("auto")),
        "states fwd+bwd (auto), real+imag loss": wall_ms(lambda: forward_backward("auto", real_plus_imaginary)),
        "states fwd+bwd (pytorch engine)": wall_ms(lambda: forward_backward("pytorch")),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--qubits", type=int, nargs="+", default=[6, 8])
    parser.add_argument("--maps", nargs="+", default=["pennylane-zz", "qiskit-zz"])
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda")
    for qubits in args.qubits:
        for name in args.maps:
            print(f"== {name} {qubits} qubits, {INPUTS} inputs")
            for what, ms in profile(name, qubits, device, args.table).items():
                print(f"   {what:32s} {ms:8.3f} ms")


if __name__ == "__main__":
    main()
