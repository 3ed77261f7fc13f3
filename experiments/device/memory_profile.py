"""What is alive on the GPU at a training step's peak: ``qra bench train``'s step under PyTorch's allocator history.

    python experiments/device/memory_profile.py [--model minilm] [--variant pennylane-zz-native ...]

For the unpatched baseline and each variant: the step's peak (``torch.cuda.max_memory_allocated``), then
the allocations alive at that moment, replayed from the allocator's trace (recorded from before the model
is built, so parameters and optimizer state are in it) and grouped by the innermost frame in qra,
transformers or torch.autograd that made them.  The groups say which tensors make a variant's excess
over the baseline, which is what the memory target of issue 16 needs to know.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from qra.experiment.bench_train import train_step, train_step_model

#: frames that name who asked for the memory (checked innermost first)
OWNERS = ("/qra/", "/transformers/", "torch/optim/", "torch/autograd/")


def _owner(frames: list[dict]) -> str:
    for frame in frames:
        name = frame.get("filename", "")
        if any(owner in name for owner in OWNERS):
            short = name.split("site-packages/")[-1].split("/qra/")[-1]
            return f"{short}:{frame.get('line')} {frame.get('name')}"
    return "(other: " + (frames[0].get("name", "?") if frames else "no frames") + ")"


def live_at_peak(snapshot: dict, start: int) -> tuple[int, dict[str, list[int]]]:
    """(peak bytes, owner → sizes of the blocks alive then) from the allocator's event trace of device 0.

    Every event is replayed (so blocks allocated earlier count while alive); the peak is sought from
    event ``start`` on: the step being measured.
    """
    live: dict[int, tuple[int, str]] = {}
    total = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for index, event in enumerate(snapshot["device_traces"][0]):
        action, addr, size = event["action"], event["addr"], event["size"]
        if action == "alloc":
            live[addr] = (size, _owner(event.get("frames", [])))
            total += size
            if index >= start and total > peak:
                peak, at_peak = total, dict(live)
        elif action == "free_completed" and addr in live:
            total -= live.pop(addr)[0]
    groups: dict[str, list[int]] = defaultdict(list)
    for size, owner in at_peak.values():
        groups[owner].append(size)
    return peak, groups


def report(model_name: str, variant: str, batch: int, length: int, rows: int) -> None:
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=2_000_000)
    step = train_step(train_step_model(model_name, variant, 6, device), device, batch, length)
    for _ in range(3):  # the optimizer's state exists from the first step on
        step()
    torch.cuda.synchronize()
    start = len(torch.cuda.memory._snapshot()["device_traces"][0])
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak_allocated = torch.cuda.max_memory_allocated()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak, groups = live_at_peak(snapshot, start)
    print(f"\n=== {model_name} {variant}: max_memory_allocated in the 4th step {peak_allocated / 2**20:.0f} MiB; "
          f"traced peak {peak / 2**20:.0f} MiB")  # fmt: skip
    ranked = sorted(groups.items(), key=lambda item: -sum(item[1]))
    for owner, sizes in ranked[:rows]:
        print(f"  {sum(sizes) / 2**20:9.1f} MiB  {len(sizes):5d} blocks (largest {max(sizes) / 2**20:7.1f})  {owner}")
    del step
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--rows", type=int, default=30)
    args = parser.parse_args()
    for variant in ("baseline", *(args.variant or ["pennylane-zz-native"])):
        report(args.model, variant, args.batch_size, args.length, args.rows)


if __name__ == "__main__":
    main()
