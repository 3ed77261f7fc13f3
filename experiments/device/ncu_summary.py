"""What says where each kernel's time goes, from an Nsight Compute raw CSV export (no GPU needed).

    ncu --import ROW.ncu-rep --page raw --csv > ROW.csv; python experiments/device/ncu_summary.py ROW.csv

Per kernel: duration, grid, registers and the occupancy they allow, SM and memory throughput, issue-slot and pipe
use (tensor cores, the transcendental XU pipe, FMA, ALU), local-memory (spill) traffic, DRAM bytes, and the leading
warp stall reasons.  A metric the export lacks (another ncu section set or version) is left out.
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", type=Path, help="ncu --page raw --csv output")
    print(summarise(parser.parse_args().export))


if __name__ == "__main__":
    main()
