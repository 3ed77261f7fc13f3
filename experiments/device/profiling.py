"""What the device scripts' profiles share: a step's unprofiled wall time, then the same step under torch.profiler."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


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
