"""What the device scripts' profiles share: the attention benchmark's rows at its shape, a step's unprofiled wall
time, then the same step under torch.profiler."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from qra.experiment.bench import attention_impls, attention_inputs

HEAD_DIM, FEATURES = 64, 128  # the attention benchmark's d and m


def benchmark_rows(
    names: list[str], length: int, tokens: int, heads: int, qubits: int = 6
) -> Iterator[tuple[str, Callable[..., torch.Tensor], list[torch.Tensor]]]:
    """(name, attention, its inputs as leaves) for rows of ``qra bench attention`` at the benchmark's shape:
    B = tokens // length, bf16, on CUDA; ``qubits`` sizes the fidelity rows' states."""
    device = torch.device("cuda")
    impls = attention_impls(device, FEATURES, HEAD_DIM, qubits, compile_paths=False)
    for name in names:
        mode, _, attention = impls[name]
        drawn = attention_inputs(mode, max(1, tokens // length), heads, length, HEAD_DIM, FEATURES, qubits, device,
                                 torch.bfloat16)  # fmt: skip
        yield name, attention, [t.requires_grad_() for t in drawn]


def wall_ms(step: Callable[[], object], calls: int = 10, warmup: int = 3) -> float:
    """Wall ms a call of ``step`` on CUDA, back to back (the GPU kept busy: host and device overlap)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1000


def profile_step(step: Callable[[], object], calls: int, warmup: int) -> tuple[float, float, object]:
    """(wall ms a call without the profiler, GPU-kernel ms a call, the profiler's key averages) on CUDA.

    The kernel time sums the kernels' own rows only (operator rows repeat their kernels' time); its gap to
    the wall time is time the GPU waited for the host.
    """
    wall = wall_ms(step, calls, warmup)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / calls / 1000
    return wall, kernels, events
