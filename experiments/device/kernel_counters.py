"""One forward + backward of an attention benchmark row, for Nsight Compute to read its kernels' hardware counters.

    ncu --clock-control none --profile-from-start off --set full -o ROW \\
        python experiments/device/kernel_counters.py --row linear-fused [--length 512] [--forward-only]
    ncu --import ROW.ncu-rep --page raw --csv > ROW.csv; python experiments/device/ncu_summary.py ROW.csv

The row (a name from ``qra bench attention``) runs at the benchmark's shape (B·N = 16,384, H = 12, d = 64,
m = 128, bf16) three times unprofiled, so that Triton compiles and autotuning settles, and then once between
``cudaProfilerStart`` and ``cudaProfilerStop``: with ``--profile-from-start off`` ncu profiles exactly that
call's kernels; ``ncu_summary.py`` condenses the export.
"""

from __future__ import annotations

import torch
from profiling import benchmark_rows, shape_parser


def run_row(row: str, length: int, tokens: int, heads: int, forward_only: bool) -> None:
    """Three unprofiled calls of ``row``, then one between the profiler's start and stop."""
    ((name, attention, leaves),) = benchmark_rows([row], length, tokens, heads)

    def step() -> None:
        if forward_only:
            with torch.no_grad():
                attention(*leaves)
        else:
            attention(*leaves).float().sum().backward()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"{name}, N = {length}: one {'forward' if forward_only else 'forward + backward'} profiled")


def main() -> None:
    parser = shape_parser()
    parser.add_argument("--row", default="linear-fused")
    parser.add_argument("--forward-only", action="store_true")
    args = parser.parse_args()
    run_row(args.row, args.length, args.tokens, args.heads, args.forward_only)


if __name__ == "__main__":
    main()
