"""How long the host takes to issue one attention call: where the short-sequence rows lose to SDPA.

    python experiments/device/host_overhead.py [--rows sdpa,linear-fused,softmax-fused] [--length 512]

For each row of ``qra bench attention`` at the benchmark's shape: the CPU time to issue the forward, the
backward and both (``time.perf_counter`` around the call, the GPU synchronised outside the timed span, median
of 50 calls), beside the same call's wall time with a synchronisation (the benchmark's measure).  Then single
operations the fused linear call is made of: one launch of its output kernel with the call's arguments, a
zero-filled buffer, an empty one.  When the issue time is close to the wall time the row is host-bound.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from profiling import benchmark_rows, output_kernel_call, shape_parser

from qra.kernels import fourier_linear

CALLS = 50


def issue_ms(step: Callable[[], object], synchronised: bool = False) -> float:
    """Median ms to issue ``step`` (or, ``synchronised``, to issue and finish it)."""
    times = []
    for call in range(CALLS + 5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if synchronised:
            torch.cuda.synchronize()
        if call >= 5:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def row_issue_times(attention: Callable[..., torch.Tensor], leaves: list[torch.Tensor]) -> dict[str, float]:
    """Median issue ms of one row's forward, backward, both, and both with a synchronisation."""
    held = {}

    def forward() -> None:
        held["loss"] = attention(*leaves).float().sum()

    def backward() -> None:
        held.pop("loss").backward()

    def both() -> None:
        forward()
        backward()

    fwd, bwd = [], []
    for call in range(CALLS + 5):  # forward and backward issue times, each call's pair in turn
        for step, times in ((forward, fwd), (backward, bwd)):
            torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if call >= 5:
                times.append((time.perf_counter() - start) * 1000)
    return {"fwd": statistics.median(fwd), "bwd": statistics.median(bwd), "fwd+bwd": issue_ms(both),
            "wall": issue_ms(both, synchronised=True)}  # fmt: skip


def attention_rows(names: list[str], length: int, tokens: int, heads: int) -> None:
    for name, attention, leaves in benchmark_rows(names, length, tokens, heads):
        ms = row_issue_times(attention, leaves)
        print(f"{name:24s} N = {length}: issue fwd {ms['fwd']:.3f} ms, bwd {ms['bwd']:.3f}, "
              f"fwd+bwd {ms['fwd+bwd']:.3f}; wall with sync {ms['wall']:.3f} ms", flush=True)  # fmt: skip


def single_operations(length: int, tokens: int, heads: int) -> None:
    """The issue cost of one Triton launch of the linear output kernel and of the buffers around it."""
    grid, tensors, scalars, meta, options = output_kernel_call(length, tokens, heads)
    out, dev = tensors[-1], tensors[0].device

    def launch_out() -> None:
        fourier_linear._out_kernel[grid](*tensors, *scalars, **meta, **options)

    operations = {
        "one Triton launch (_out_kernel)": launch_out,
        "torch.zeros of S and z": lambda: torch.zeros(tensors[3].numel() + tensors[4].numel(), device=dev),
        "torch.empty of the output": lambda: torch.empty_like(out),
    }
    for label, step in operations.items():
        print(f"{label:34s} issue {issue_ms(step) * 1000:.1f} µs", flush=True)


def main() -> None:
    parser = shape_parser()
    parser.add_argument("--rows", default="sdpa,linear-fused,softmax-fused")
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), torch.__version__)
    attention_rows(args.rows.split(","), args.length, args.tokens, args.heads)
    single_operations(args.length, args.tokens, args.heads)


if __name__ == "__main__":
    main()
