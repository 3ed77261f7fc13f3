"""Where the attention benchmark's time goes on the GPU: rows of ``qra bench attention`` under torch.profiler.

    python experiments/device/attention_profile.py --rows sdpa,linear-fused,fidelity-fused [--length 512]

For each row: forward + backward at the benchmark's shape (B·N = 16,384, H = 12, d = 64, m = 128, bf16),
its wall time per call, the summed time of its GPU kernels (the gap is the GPU waiting for the host), and
the kernels and operators with the most GPU time.  Ten profiled calls after five warm-up calls.
"""

from __future__ import annotations

import torch
from profiling import benchmark_rows, profile_step, shape_parser

CALLS = 10


def report(name: str, attention, leaves: list[torch.Tensor], length: int, rows: int) -> None:
    def step() -> None:
        attention(*leaves).float().sum().backward()

    wall, kernels, events = profile_step(step, CALLS, warmup=5)
    print(f"\n=== {name}, N = {length}: fwd+bwd {wall:.3f} ms wall (unprofiled), GPU kernels {kernels:.3f} ms a call")
    print(events.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=80))


def main() -> None:
    parser = shape_parser()
    parser.add_argument("--rows", default="sdpa,linear-fused,fidelity-fused")
    parser.add_argument("--qubits", type=int, default=6)
    parser.add_argument("--table-rows", type=int, default=25)
    args = parser.parse_args()
    for name, attention, leaves in benchmark_rows(args.rows.split(","), args.length, args.tokens, args.heads,
                                                  args.qubits):  # fmt: skip
        report(name, attention, leaves, args.length, args.table_rows)


if __name__ == "__main__":
    main()
