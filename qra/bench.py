"""Benchmarks that write their results: ``qra bench featuremaps``.

Timings are medians over repeats after warm-up, with CUDA events and synchronisation on a GPU.
Ratios mean something when measured side by side in one run; absolute times only with the
device named, which every results file records.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .featuremaps import get
from .provenance import provenance, write_json_atomic


@dataclass
class Timing:
    median_ms: float
    peak_bytes: int | None


def time_it(step: Callable[[], None], device: torch.device, repeats: int = 5, warmup: int = 2) -> Timing:
    """Median wall time of ``step`` in ms (CUDA events on a GPU) and its peak GPU memory."""
    for _ in range(warmup):
        step()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        return Timing(statistics.median(times), torch.cuda.max_memory_allocated(device))
    for _ in range(repeats):
        begin = time.perf_counter()
        step()
        times.append((time.perf_counter() - begin) * 1000)
    return Timing(statistics.median(times), None)


@dataclass(frozen=True)
class FeatureMapImpl:
    """One way to compute ZZ-map states: a registered map and engine, and how many inputs it may run."""

    label: str
    featuremap: str
    engine: str
    differentiable: bool
    runs_on_cpu_only: bool = False


FEATUREMAP_IMPLS = (
    FeatureMapImpl("qra native (PennyLane tape)", "pennylane-zz", "native", True),
    FeatureMapImpl("qra native (Qiskit circuit)", "qiskit-zz", "native", True),
    FeatureMapImpl("PennyLane default.qubit", "pennylane-zz", "pennylane", True),
    FeatureMapImpl("Qiskit Statevector (per input)", "qiskit-zz", "statevector", False, runs_on_cpu_only=True),
    FeatureMapImpl("Qiskit Aer (batched binds)", "qiskit-zz", "aer", False, runs_on_cpu_only=True),
)


def _input_cap(impl: FeatureMapImpl, device: torch.device, caps: dict[str, int]) -> int | None:
    if impl.engine in ("statevector", "aer"):
        return caps[impl.engine]
    if impl.engine == "pennylane" and device.type == "cpu":
        return caps["pennylane-cpu"]
    return None


def bench_featuremaps(
    qubits: list[int],
    inputs: list[int],
    device: torch.device,
    repeats: int = 5,
    caps: dict[str, int] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """ZZ-map states (reps=2), forward and forward+backward, for every implementation.

    Implementations that would take minutes (Qiskit per input, PennyLane on a CPU) run on the
    first ``caps[...]`` inputs and are extrapolated linearly; their rows say so.
    """
    caps = {"statevector": 256, "aer": 2048, "pennylane-cpu": 8192} | (caps or {})
    rows = []
    for q in qubits:
        for count in inputs:
            for impl in FEATUREMAP_IMPLS:
                run_device = torch.device("cpu") if impl.runs_on_cpu_only else device
                cap = _input_cap(impl, device, caps)
                measured = min(count, cap) if cap else count
                fm = get(impl.featuremap, d_in=q, qubits=q, projection="identity", engine=impl.engine).to(run_device)
                x = torch.rand(measured, q, device=run_device) * 2 * torch.pi
                passes = ("fwd", "fwd_bwd") if impl.differentiable else ("fwd",)
                for kind in passes:
                    progress(f"{impl.label}: {q} qubits, {count} inputs, {kind}")

                    def step(fm=fm, x=x, kind=kind) -> None:
                        if kind == "fwd":
                            with torch.no_grad():
                                fm.states(x)
                        else:
                            leaf = x.detach().requires_grad_()
                            states = fm.states(leaf)
                            (states.real.sum() + states.imag.sum()).backward()

                    reps = repeats if measured == count else max(1, repeats // 2)
                    timing = time_it(step, run_device, repeats=reps, warmup=1)
                    scale = count / measured
                    rows.append({
                        "impl": impl.label, "featuremap": impl.featuremap, "engine": impl.engine, "qubits": q,
                        "inputs": count, "measured_inputs": measured, "extrapolated": measured != count,
                        "pass": kind, "ms": timing.median_ms * scale, "ms_per_input": timing.median_ms / measured,
                        "peak_bytes": timing.peak_bytes if measured == count else None,
                        "device": provenance(run_device)["device"], "torch": torch.__version__,
                    })  # fmt: skip
                del fm, x
                if run_device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def add_speedups(rows: list[dict[str, Any]], reference: str = "qra native (PennyLane tape)") -> None:
    """Each row's ``x_slower_than_native``: its time over qra native's for the same case."""
    native = {(r["qubits"], r["inputs"], r["pass"]): r["ms"] for r in rows if r["impl"] == reference}
    for row in rows:
        base = native.get((row["qubits"], row["inputs"], row["pass"]))
        row["x_slower_than_native"] = row["ms"] / base if base else None


def write_results(path: Path, rows: list[dict[str, Any]], device: torch.device, settings: dict[str, Any]) -> Path:
    return write_json_atomic(path, {"provenance": provenance(device), "settings": settings, "rows": rows})
