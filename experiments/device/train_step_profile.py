"""Where one patched training step's time goes on the GPU: ``qra bench train``'s step under torch.profiler.

    python experiments/device/train_step_profile.py [--model distilbert] [--variant pennylane-zz-native]

Prints the step's wall time, the summed time of its GPU kernels (their gap to the wall time is time the
GPU waits for the host), and the operators with the most GPU time, for the variant and the unpatched
baseline side by side.  Three profiled steps after three warm-up steps.  ``--gaps K`` also prints the GPU's idle
time between kernels inside a step and its K longest gaps, with the kernels on either side: where the GPU
waited for the host.
"""

from __future__ import annotations

import argparse

import torch
from profiling import profile_step_with_gaps

from qra.experiment.bench_train import train_step, train_step_model


def report(model_name: str, variant: str, batch: int, length: int, rows: int, gaps: int) -> None:
    device = torch.device("cuda")
    step = train_step(train_step_model(model_name, variant, 6, device), device, batch, length)
    wall, kernels, events, idle = profile_step_with_gaps(step, calls=3, warmup=3, top=gaps)
    print(f"\n=== {model_name} {variant}: step {wall:.1f} ms wall (unprofiled), GPU kernels {kernels:.1f} ms a step")
    if gaps:
        print(f"GPU idle (profiled, each step synchronised): {idle['lead_ms']:.2f} ms before its first kernel, "
              f"{idle['idle_ms']:.2f} ms between kernels; longest gaps (µs, before, after):")  # fmt: skip
        for gap in idle["gaps"]:
            print("   ", gap)
    print(events.table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=70))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="distilbert")
    parser.add_argument("--variant", default="pennylane-zz-native")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--gaps", type=int, default=0, help="print the GPU's idle time and its longest gaps")
    args = parser.parse_args()
    for variant in ("baseline", args.variant):
        report(args.model, variant, args.batch_size, args.length, args.rows, args.gaps)


if __name__ == "__main__":
    main()
