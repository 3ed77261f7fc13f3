"""The GPU's achievable memory bandwidth, measured: what a pass that only streams its operands can reach.

    python experiments/device/memory_bandwidth.py [--megabytes 64 256 1024]

Why: the RFF softmax mode's feature passes must move a fixed number of bytes a call (x read, φ written; x and dφ
read, dx written), so their floor is those bytes over the bandwidth a streaming kernel actually gets, not the card's
rating (results/bench/README.md, the softmax row).  For each size, a device-to-device copy (``Tensor.copy_``, read +
write) and a read-only reduction (``Tensor.sum`` over bf16) are timed in GPU ms from CUDA-graph replays
(:func:`qra.experiment.bench.graph_time`); bytes moved / time gives TB/s.  Sizes above the L2 cache (50 MB on an
H200) measure DRAM.
"""

from __future__ import annotations

import argparse

import torch

from qra.experiment.bench import graph_time


def measure(megabytes: int, device: torch.device) -> str:
    """One size's line: the copy's and the reduction's GPU ms and TB/s."""
    elements = megabytes * 2**20 // 2
    source = torch.randn(elements, device=device, dtype=torch.bfloat16)
    target = torch.empty_like(source)
    total = torch.empty((), device=device, dtype=torch.float32)
    copy_ms = graph_time(lambda: target.copy_(source), device, repeats=10)
    read_ms = graph_time(lambda: torch.sum(source, dim=0, dtype=torch.float32, out=total), device, repeats=10)
    size = elements * 2
    return (f"   {megabytes:5d} MiB: copy {copy_ms:.4f} ms = {2 * size / copy_ms / 1e9:.2f} TB/s (read + write); "
            f"sum {read_ms:.4f} ms = {size / read_ms / 1e9:.2f} TB/s (read)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, nargs="+", default=[64, 256, 1024])
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: GPU ms from CUDA-graph replays")
    for megabytes in args.megabytes:
        print(measure(megabytes, device))


if __name__ == "__main__":
    main()
