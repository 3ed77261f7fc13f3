"""One forward + backward of an attention benchmark row, for Nsight Compute to read its kernels' hardware counters.

    ncu --clock-control none --profile-from-start off --set full -o ROW \\
        python experiments/device/kernel_counters.py --row linear-fused [--length 512] [--forward-only]
    python experiments/device/kernel_counters.py --summarise ROW.csv   (ncu --import ROW.ncu-rep --page raw --csv)

The row (a name from ``qra bench attention``) runs at the benchmark's shape (B·N = 16,384, H = 12, d = 64,
m = 128, bf16) three times unprofiled, so that Triton compiles and autotuning settles, and then once between
``cudaProfilerStart`` and ``cudaProfilerStop``: with ``--profile-from-start off`` ncu profiles exactly that
call's kernels.  ``--summarise`` prints, per kernel, what says where its time goes: duration, issue-slot and
tensor-pipe use, occupancy, registers, local-memory (spill) traffic and the leading warp stall reasons.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import torch
from profiling import benchmark_rows, shape_parser

#: metrics of ncu's ``full`` set that the summary prints, with short names
SUMMARY_METRICS = {
    "gpu__time_duration.sum": "duration",
    "launch__grid_size": "programs",
    "launch__registers_per_thread": "registers",
    "launch__occupancy_limit_registers": "blocks/SM by registers",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "occupancy %",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed": "SM throughput %",
    "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed": "memory throughput %",
    "smsp__issue_active.avg.pct_of_peak_sustained_active": "issue slots busy %",
    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active": "tensor pipe (mma) %",
    "sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active": "tensor pipe (wgmma) %",
    "sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active": "XU pipe (cos/sin) %",
    "sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active": "FMA pipe %",
    "sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active": "ALU pipe %",
    "l1tex__t_bytes_pipe_lsu_mem_local_op_ld.sum": "local loads (bytes)",
    "l1tex__t_bytes_pipe_lsu_mem_local_op_st.sum": "local stores (bytes)",
    "dram__bytes_read.sum": "DRAM read (bytes)",
    "dram__bytes_write.sum": "DRAM written (bytes)",
}
#: the warp stall reasons, as ncu's WarpStateStats section names them (warps stalled per issued instruction)
STALL_PATTERN = re.compile(r"smsp__average_warps_issue_stalled_(\w+)_per_issue_active\.ratio")
STALLS_SHOWN = 6


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


def summarise(path: Path) -> str:
    """Per kernel of an ncu raw CSV export: :data:`SUMMARY_METRICS` and the leading stall reasons."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, units, kernels = rows[0], rows[1], rows[2:]
    column = {name: i for i, name in enumerate(header)}
    lines = []
    for values in kernels:
        lines.append(f"== {values[column['Kernel Name']][:100]}")
        for metric, label in SUMMARY_METRICS.items():
            if metric in column:
                lines.append(f"  {label:28s} {values[column[metric]]} {units[column[metric]]}")
        stalls = []
        for metric, i in column.items():
            reason = STALL_PATTERN.fullmatch(metric)
            if reason and reason.group(1) != "not_selected":
                stalls.append((float(values[i].replace(",", "") or 0), reason.group(1)))
        stalls.sort(reverse=True)
        leading = ", ".join(f"{reason} {value:.2f}" for value, reason in stalls[:STALLS_SHOWN])
        lines.append(f"  stalls (warps per issued instruction): {leading}")
    return "\n".join(lines)


def main() -> None:
    parser = shape_parser()
    parser.add_argument("--row", default="linear-fused")
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--summarise", type=Path, help="print the summary of an ncu raw CSV export instead")
    args = parser.parse_args()
    if args.summarise:
        print(summarise(args.summarise))
    else:
        run_row(args.row, args.length, args.tokens, args.heads, args.forward_only)


if __name__ == "__main__":
    main()
