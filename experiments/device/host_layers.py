"""What a patched train step adds to the host's time, op by op and function by function.

    python experiments/device/host_layers.py [--model distilbert] [--variants baseline,rff-linear,rff-softmax]
        [--steps 30] [--functions 40]

The step of ``qra bench train`` at B = 1, N = 8, where the GPU's work is negligible and a step's wall time is the
host's time to issue it (``host_step.py``'s "host" column).  Per variant:

    host ms          median over ``--steps`` steps, each synchronised (all variants in alternation)
    ops / launches   aten ops and CUDA launches a step (torch.profiler, CPU activity, 10 steps)
    op table         the ops whose own host time a step differs most from the baseline's (count and µs a step)
    qra functions    cProfile, cumulative host time a step of the functions in qra's own files (20 steps)

The step's extra host time over the baseline is what a patched layer costs a training loop whenever the host is
the slower side (results/bench/README.md, round 18).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from profiling import profiled
from torch.profiler import ProfilerActivity, profile

from qra.experiment.bench_train import train_step, train_step_model

LAUNCH_NAMES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")


def host_ms(step: Callable[[], None]) -> float:
    """Wall ms of one step, the GPU idle before and synchronised after."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def op_table(step: Callable[[], None], steps: int = 10) -> dict[str, tuple[float, float]]:
    """op name -> (calls a step, own host µs a step), CPU activity only."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return {e.key: (e.count / steps, e.self_cpu_time_total / steps) for e in prof.key_averages()}


def qra_functions(step: Callable[[], None], steps: int, functions: int) -> str:
    """cProfile's cumulative table of qra's own functions (and the autograd Functions' apply), ms a step."""
    rows = []
    for (filename, line, name), (_, calls, _, cumulative, _) in profiled(step, steps).stats.items():
        if "/qra/" in filename or name in ("apply", "backward", "run_backward"):
            short = filename.split("/qra/")[-1] if "/qra/" in filename else filename.rsplit("/", 1)[-1]
            rows.append((cumulative / steps * 1e3, calls / steps, f"{short}:{line}({name})"))
    rows.sort(reverse=True)
    return "\n".join(f"  {ms:8.3f} ms  {calls:6.1f} calls  {where}" for ms, calls, where in rows[:functions])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="distilbert")
    parser.add_argument("--variants", default="baseline,rff-linear,rff-softmax")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--functions", type=int, default=40)
    parser.add_argument("--ops", type=int, default=30, help="op rows to print per variant")
    args = parser.parse_args()
    device = torch.device("cuda")
    variants = args.variants.split(",")
    steps = {name: train_step(train_step_model(args.model, name, 6, device), device, 1, 8) for name in variants}
    for step in steps.values():
        for _ in range(5):
            step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.steps):
        for name in variants:
            times[name].append(host_ms(steps[name]))
    print(f"{args.model}, host-only steps (B = 1, N = 8), {torch.cuda.get_device_name()}, torch {torch.__version__}")
    base_ms = statistics.median(times[variants[0]])
    for name in variants:
        ms = statistics.median(times[name])
        print(f"  {name:14s} host {ms:7.3f} ms a step (+{ms - base_ms:6.3f} over {variants[0]})")
    tables = {name: op_table(steps[name]) for name in variants}
    base = tables[variants[0]]
    for name in variants:
        table = tables[name]
        ops = sum(calls for key, (calls, _) in table.items() if not key.startswith(("cuda", "cu")))
        launches = sum(table.get(key, (0.0, 0.0))[0] for key in LAUNCH_NAMES)
        total = sum(us for _, us in table.values())
        print(f"\n== {name}: {ops:.0f} ops, {launches:.0f} CUDA launches, {total / 1e3:.3f} ms own host time a step")
        if name == variants[0]:
            continue
        keys = set(table) | set(base)
        diffs = sorted(keys, key=lambda k: -abs(table.get(k, (0, 0))[1] - base.get(k, (0, 0))[1]))
        print(f"  {'op':58s} {'calls':>7s} {'Δcalls':>7s} {'µs':>8s} {'Δµs':>8s}")
        for key in diffs[: args.ops]:
            calls, us = table.get(key, (0.0, 0.0))
            base_calls, base_us = base.get(key, (0.0, 0.0))
            print(f"  {key[:58]:58s} {calls:7.1f} {calls - base_calls:+7.1f} {us:8.1f} {us - base_us:+8.1f}")
    for name in variants[1:]:
        print(f"\n== {name}: qra's functions, cumulative host time a step (cProfile, 20 steps)")
        print(qra_functions(steps[name], 20, args.functions))


if __name__ == "__main__":
    main()
