"""What the device scripts' profiles share: the attention benchmark's rows at its shape, a step's unprofiled wall
time, then the same step under torch.profiler."""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from qra.experiment.bench import attention_impls, attention_inputs, graph_time, time_it
from qra.kernels import fourier_linear

HEAD_DIM, FEATURES = 64, 128  # the attention benchmark's d and m


def load_sibling(path: Path, name: str) -> ModuleType:
    """The module at ``path`` (another commit's copy of a kernels module) imported as ``qra.kernels.<name>``, so
    that its relative imports resolve to this tree's helpers: the side-by-side scripts' other contender."""
    qualified = f"qra.kernels.{name}"
    spec = importlib.util.spec_from_file_location(qualified, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def shape_parser() -> argparse.ArgumentParser:
    """A parser with the benchmark's shape options, ``--length`` N, ``--tokens`` B·N and ``--heads`` H, that
    every profile script takes; each adds its own."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--heads", type=int, default=12)
    return parser


def add_timing_option(parser: argparse.ArgumentParser) -> None:
    """``--timing graph|wall`` for a shape search: the GPU's own time (the default) or the benchmark's wall time."""
    parser.add_argument("--timing", choices=("graph", "wall"), default="graph",
                        help="GPU time from CUDA-graph replays, or the benchmark's wall time")  # fmt: skip


def search_ms(step: Callable[[], object], timing: str = "graph") -> float:
    """A shape search's time for one call of ``step`` on CUDA: GPU ms from CUDA-graph replays (``graph``,
    :func:`qra.experiment.bench.graph_time`, compiled outside the capture first) or the benchmark's wall ms
    (``wall``, which at short lengths is the host's time to issue the call).  RuntimeError when the step cannot
    be captured, so that a search reports the candidate instead of ranking it."""
    device = torch.device("cuda")
    if timing == "wall":
        return time_it(step, device, repeats=20, warmup=3).median_ms
    time_it(step, device, repeats=1, warmup=2)
    ms = graph_time(step, device, repeats=10)
    if ms is None:
        raise RuntimeError("the step could not be captured in a CUDA graph")
    return ms


def benchmark_rows(
    names: list[str], length: int, tokens: int, heads: int, qubits: int = 6
) -> Iterator[tuple[str, Callable[..., torch.Tensor], list[torch.Tensor]]]:
    """(name, attention, its inputs as leaves) for rows of ``qra bench attention`` at the benchmark's shape:
    B = tokens // length, bf16, on CUDA; ``qubits`` sizes the fidelity rows' states."""
    impls = attention_impls(torch.device("cuda"), FEATURES, HEAD_DIM, qubits, compile_paths=False)
    for name in names:
        mode, _, attention = impls[name]
        yield name, attention, benchmark_leaves(mode, length, tokens, heads, qubits)


def benchmark_leaves(mode: str | None, length: int, tokens: int, heads: int, qubits: int = 6) -> list[torch.Tensor]:
    """A benchmark row's inputs (``mode`` as in :func:`qra.experiment.bench.attention_impls`) at its shape,
    B = tokens // length, bf16, on CUDA, as leaves that require grad."""
    drawn = attention_inputs(mode, max(1, tokens // length), heads, length, HEAD_DIM, FEATURES, qubits,
                             torch.device("cuda"), torch.bfloat16)  # fmt: skip
    return [t.requires_grad_() for t in drawn]


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


def interleaved_issue_us(
    steps: dict[str, Callable[[], object]], calls: int, warmup: int = 10,
    synchronize: Callable[[], None] = torch.cuda.synchronize,
) -> dict[str, list[float]]:  # fmt: skip
    """Host µs to issue each step, the GPU synchronised before it, not after: the time a benchmark's CUDA events
    enclose when the host is the slower side.  ``warmup`` calls of each first, then ``calls`` rounds of every step
    once, so that a drift of the host's pace touches each alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(calls):
        for name, step in steps.items():
            synchronize()
            start = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - start) * 1e6)
    synchronize()
    return times


def quartile_table(times: dict[str, list[float]]) -> str:
    """min / 25th percentile / median of each row's values, as text."""
    lines = [f"{'':28s} {'min':>8s} {'p25':>8s} {'median':>8s}"]
    for name, values in times.items():
        quartiles = statistics.quantiles(values, n=4)
        lines.append(f"{name:28s} {min(values):8.1f} {quartiles[0]:8.1f} {quartiles[1]:8.1f}")
    return "\n".join(lines)


def profiled(step: Callable[[], object], calls: int, stream: io.StringIO | None = None) -> pstats.Stats:
    """cProfile's statistics of ``calls`` calls of ``step``, the GPU synchronised once, after them."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        step()
    torch.cuda.synchronize()
    profiler.disable()
    return pstats.Stats(profiler, stream=stream)


def host_profile(step: Callable[[], object], calls: int, functions: int) -> str:
    """The ``functions`` with the most own host time (``tottime``) over ``calls`` calls of ``step``, as text."""
    text = io.StringIO()
    profiled(step, calls, text).sort_stats("tottime").print_stats(functions)
    return text.getvalue()


def profile_step(step: Callable[[], object], calls: int, warmup: int) -> tuple[float, float, object]:
    """(wall ms a call without the profiler, GPU-kernel ms a call, the profiler's key averages) on CUDA.

    The kernel time sums the kernels' own rows only (operator rows repeat their kernels' time); its gap to
    the wall time is time the GPU waited for the host.
    """
    wall = wall_ms(step, calls, warmup)
    events = _profiled(step, calls, each_synchronised=False).key_averages()
    return wall, _kernel_ms(events, calls), events


def profile_step_with_gaps(
    step: Callable[[], object], calls: int, warmup: int, top: int
) -> tuple[float, float, object, dict]:
    """:func:`profile_step`'s three results and where the GPU sat idle while the profiled calls ran, each call
    synchronised as ``qra bench train`` times it: ``{"lead_ms": from a call's start to its first kernel,
    "idle_ms": between its kernels, both per call, "gaps": the ``top`` longest as (µs, kernel before, kernel
    after)}``.  The profiler adds host time of its own to every operator, so gaps are read against the unpatched
    step's under it."""
    wall = wall_ms(step, calls, warmup)
    prof = _profiled(step, calls, each_synchronised=True)
    events = prof.key_averages()
    return wall, _kernel_ms(events, calls), events, idle_gaps(prof.events(), calls, top)


_CALL = "profiled call"


def _profiled(step: Callable[[], object], calls: int, each_synchronised: bool) -> profile:
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            with record_function(_CALL):
                step()
                if each_synchronised:
                    torch.cuda.synchronize()
        torch.cuda.synchronize()
    return prof


def _kernel_ms(events, calls: int) -> float:
    """GPU-kernel ms a call: the device rows, without the profiled-call range the profiler also lists there."""
    kernels = (e for e in events if e.device_type == DeviceType.CUDA and e.key != _CALL)
    return sum(e.self_device_time_total for e in kernels) / calls / 1000


def idle_gaps(events, calls: int, top: int) -> dict:
    """The GPU's idle time in each profiled call (a CPU range named ``_CALL``, synchronised at its end): from the
    call's start to its first kernel (lead) and between its kernels (overlapping kernels merged), per call, and
    the ``top`` longest gaps between kernels with the kernels on either side."""
    windows = [e.time_range for e in events if e.name == _CALL and e.device_type == DeviceType.CPU]
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                     if e.device_type == DeviceType.CUDA and e.name != _CALL)  # fmt: skip
    lead, gaps = 0.0, []
    for window in windows:
        inside = [k for k in kernels if window.start <= k[0] <= window.end]
        if not inside:
            continue
        lead += inside[0][0] - window.start
        busy_until, last = inside[0][1], inside[0][2]
        for start, end, name in inside[1:]:
            if start > busy_until:
                gaps.append((start - busy_until, last, name))
            if end > busy_until:
                busy_until, last = end, name
    gaps.sort(key=lambda gap: gap[0], reverse=True)
    return {"lead_ms": lead / calls / 1000, "idle_ms": sum(gap[0] for gap in gaps) / calls / 1000,
            "gaps": [(round(us, 1), before[:60], after[:60]) for us, before, after in gaps[:top]]}  # fmt: skip


def output_kernel_call(length: int, tokens: int, heads: int) -> tuple[tuple, list, list, dict, dict]:
    """One launch of the fused linear output kernel at the benchmark's shape, to time launching it:
    (grid, tensors, scalars, constexprs, launch options)."""
    batch, dev = max(1, tokens // length), torch.device("cuda")
    q = torch.randn(batch, heads, length, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    weight, bias = torch.randn(FEATURES, HEAD_DIM, device=dev) / 8, torch.rand(FEATURES, device=dev)
    state = torch.zeros(batch * heads, FEATURES, HEAD_DIM, device=dev)
    z = torch.ones(batch * heads, FEATURES, device=dev)
    out = torch.empty(batch, heads, length, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    launch = fourier_linear.FORWARD_LAUNCH
    meta = fourier_linear._meta(q.dtype, HEAD_DIM, FEATURES, HEAD_DIM, launch)
    options = {name: meta.pop(name) for name in ("num_warps", "num_stages", "maxnreg") if name in meta}
    grid, per = fourier_linear._grid(length, batch * heads, dev, launch)
    tensors = [q, weight, bias, state, z, out]
    scalars = [*q.stride(), *out.stride(), heads, length, HEAD_DIM, FEATURES, HEAD_DIM, per, 0.125, 1e-6]
    return grid, tensors, scalars, meta, options
