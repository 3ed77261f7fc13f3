"""Whether a patched training step waits for its host, and where it makes the host wait for the GPU.

    python experiments/device/host_step.py [--model distilbert] [--variants baseline,rff-linear,rff-softmax]
        [--rounds 6] [--burst 10]

A step synchronised on its own costs the host's lead before the GPU starts plus whatever the GPU waits for the
host.  A training loop does not synchronise: the host issues step
i + 1 while the GPU runs step i, and host time costs nothing until the host is the slower side, or until
something in the step makes the host wait for the GPU.  Per variant (all built first, then timed in alternation,
the order rotated each round), medians over ``--rounds``:

    back to back   wall ms a step over a burst of ``--burst`` steps issued without synchronising, after one
                   untimed step (``qra.experiment.bench.time_steady``, ``qra bench train``'s throughput)
    synchronised   wall ms a step, the GPU synchronised after each step (``qra bench train``'s latency; its only
                   timing until round 18)
    host           wall ms a step of the same model at B = 1, N = 8, where the GPU's work is negligible:
                   the host's time to issue one step

and every CUDA call of one step that synchronises the host with the GPU
(``torch.cuda.set_sync_debug_mode``), with the Python stack that made it.  ``--profile K`` also prints, per
variant, the K functions with the most own host time (cProfile ``tottime``) over 20 host-only steps.
"""

from __future__ import annotations

import argparse
import statistics
import traceback
import warnings
from collections.abc import Callable

import torch
from profiling import host_profile

from qra.experiment.bench import time_once, time_steady
from qra.experiment.bench_train import train_step, train_step_model


def synchronising_calls(step: Callable[[], None]) -> list[str]:
    """The synchronising CUDA calls one ``step`` makes, each as its warning and the stack that issued it."""
    found: list[str] = []

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        if str(message).startswith("Synchronization debug mode is a prototype"):
            return  # said when the mode is switched on, not a synchronisation
        stack = "".join(traceback.format_stack(limit=14)[:-1])
        found.append(f"{str(message).splitlines()[0]}\n{stack}")

    with warnings.catch_warnings():  # restores showwarning too
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="distilbert")
    parser.add_argument("--variants", default="baseline,rff-linear,rff-softmax")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--profile", type=int, default=0, help="print the K functions with the most host time")
    args = parser.parse_args()
    device = torch.device("cuda")
    variants = args.variants.split(",")
    models = {name: train_step_model(args.model, name, 6, device) for name in variants}
    full = {name: train_step(model, device, args.batch_size, args.length) for name, model in models.items()}
    tiny = {name: train_step(model, device, 1, 8) for name, model in models.items()}
    for steps in (full, tiny):
        for step in steps.values():
            for _ in range(3):
                step()
    torch.cuda.synchronize()
    times: dict[str, dict[str, list[float]]] = {
        n: {"back to back": [], "synchronised": [], "host": []} for n in variants
    }
    for number in range(args.rounds):
        shift = number % len(variants)
        for name in variants[shift:] + variants[:shift]:
            times[name]["back to back"].append(time_steady(full[name], device, args.burst))
            times[name]["synchronised"].append(statistics.median(time_once(full[name], device) for _ in range(3)))
            times[name]["host"].append(statistics.median(time_once(tiny[name], device) for _ in range(3)))
    print(
        f"{args.model}, B = {args.batch_size}, N = {args.length} (host: B = 1, N = 8); medians over "
        f"{args.rounds} rounds, ms a step (ratio: baseline ms / variant ms)"
    )
    base = {kind: statistics.median(values) for kind, values in times[variants[0]].items()}
    for name in variants:
        cells = []
        for kind, values in times[name].items():
            ms = statistics.median(values)
            cells.append(f"{kind} {ms:7.2f} ({base[kind] / ms:.3f}x)")
        print(f"  {name:14s} " + "   ".join(cells))
    for name in variants:
        calls = synchronising_calls(full[name])
        print(f"\n== {name}: {len(calls)} synchronising CUDA call(s) in one step")
        for call in calls:
            print(call)
    for name in variants if args.profile else ():
        print(f"\n== {name}: host profile, 20 steps at B = 1, N = 8")
        print(host_profile(tiny[name], 20, args.profile))


if __name__ == "__main__":
    main()
