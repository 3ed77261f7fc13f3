"""Benchmarks that write their results: ``qra bench featuremaps | attention`` (``train``: :mod:`.bench_train`).

Each benchmark is a list of :class:`Case` s; the CLI runs them with a progress bar (count and
time left) and writes the JSON after every finished case, so a stopped benchmark keeps what it
measured.  Timings are medians over repeats after warm-up, with CUDA events and synchronisation
on a GPU.  Ratios mean something when measured side by side in one run; absolute times only with
the device named, which every results file records.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..attention import MODES, kernel_attention
from ..featuremaps import FeatureMap, get
from .provenance import device_name, provenance, write_json_atomic

Row = dict[str, Any]


@dataclass(frozen=True)
class Case:
    """One measured case: what it is (for the progress bar) and how to measure it (its rows)."""

    description: str
    measure: Callable[[], list[Row]]


@dataclass
class Timing:
    median_ms: float
    peak_bytes: int | None


def time_once(step: Callable[[], None], device: torch.device) -> float:
    """Wall ms of one call of ``step``: CUDA events around it and a synchronisation after it on a GPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    begin = time.perf_counter()
    step()
    return (time.perf_counter() - begin) * 1000


def time_steady(step: Callable[[], None], device: torch.device, calls: int) -> float:
    """Wall ms a call of ``step`` issued back to back, as a training loop issues its steps: one call untimed (the
    host gets ahead of the GPU where it can), then ``calls`` calls between CUDA events, one synchronisation at the
    end.  The host's time to issue a call is hidden behind the GPU's work and counts only where it is longer."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        step()
        start.record()
        for _ in range(calls):
            step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / calls
    step()
    begin = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - begin) * 1000 / calls


def time_it(step: Callable[[], None], device: torch.device, repeats: int = 5, warmup: int = 2) -> Timing:
    """Median wall time of ``step`` in ms (CUDA events on a GPU) and its peak GPU memory."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = [time_once(step, device) for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return Timing(statistics.median(times), peak)


def graph_time(step: Callable[[], None], device: torch.device, repeats: int = 5, replays: int = 10) -> float | None:
    """Median GPU ms of ``step`` replayed from a CUDA graph: the device's own time for it, with no host issue time.

    :func:`time_it`'s events enclose the host's time to issue a call whenever that is longer than the GPU's
    work, as it is for short attention calls on a busy host, so its rows move with the host's speed; a graph
    replays the same kernels with none of that.  Each sample replays the graph ``replays`` times back to back.
    None on the CPU, or where the step cannot be captured (an op that synchronises, a compiled function).
    """
    if device.type != "cuda":
        return None
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # capture wants the step's lazy state (caches, plans) made on a side stream
        step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
    except RuntimeError as error:
        _end_failed_capture(device)
        warnings.warn(f"no GPU time: the step could not be captured in a CUDA graph ({error})", stacklevel=2)
        return None
    times = []
    try:
        graph.replay()
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(replays):
                graph.replay()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / replays)
    finally:
        del graph
        torch.cuda.empty_cache()
    return statistics.median(times)


def _end_failed_capture(device: torch.device) -> None:
    """Give the default CUDA generator back after a failed capture.

    PyTorch's capture end raises before it takes its generators out of capture mode, after which every draw
    from the default generator (``torch.randn``, dropout) fails with "Offset increment outside graph capture"
    (measured on the H200: ``results/bench/graph-capture-probe-h200-round14.txt``); a capture that ends
    cleanly takes them out again."""
    scratch = torch.zeros(1, device=device)
    with torch.cuda.graph(torch.cuda.CUDAGraph()):
        scratch.add_(1)


@dataclass(frozen=True)
class FeatureMapImpl:
    """One way to compute ZZ-map states: a registered map with its engine settings, and how it may run.

    ``engine`` is the row's short name (``native``, ``reference``, ``tensorcircuit``, ``pennylane``,
    ``lightning``, ``statevector``, ``aer``); ``cap`` names the input cap of slow implementations (see
    :data:`DEFAULT_CAPS`); ``states_via`` says who computes the states: the map itself (``map``: the fused
    circuit kernels where they apply), qra's compiled engine without them (``pytorch-engine``), qra's
    earlier gate-by-gate engine on the map's gates (``reference``) or tensorcircuit-ng
    (``tensorcircuit``: its PyTorch backend, vmapped over the batch, on the same device).
    """

    label: str
    featuremap: str
    engine: str
    params: dict[str, str]
    differentiable: bool
    runs_on_cpu_only: bool = False
    cap: str | None = None
    states_via: str = "map"
    requires: str | None = None  # a module the implementation needs; the row is skipped without it


FEATUREMAP_IMPLS = (
    FeatureMapImpl("qra native (PennyLane tape)", "pennylane-zz", "native", {"engine": "native"}, True),
    FeatureMapImpl("qra native (Qiskit circuit)", "qiskit-zz", "native", {"engine": "native"}, True),
    FeatureMapImpl("qra native, PyTorch engine (PennyLane tape)", "pennylane-zz", "native-pytorch",
                   {"engine": "native"}, True, states_via="pytorch-engine"),
    FeatureMapImpl("qra reference engine (gate by gate)", "pennylane-zz", "reference", {"engine": "native"}, True,
                   states_via="reference"),
    FeatureMapImpl("tensorcircuit-ng (PyTorch backend, vmap)", "qiskit-zz", "tensorcircuit", {"engine": "native"},
                   True, states_via="tensorcircuit", requires="tensorcircuit"),
    FeatureMapImpl("PennyLane default.qubit", "pennylane-zz", "pennylane",
                   {"engine": "framework", "device": "default.qubit"}, True, cap="pennylane-cpu"),
    # lightning's adjoint method differentiates expectation values, not states: forward only here
    FeatureMapImpl("PennyLane lightning.qubit", "pennylane-zz", "lightning",
                   {"engine": "framework", "device": "lightning.qubit"}, False, runs_on_cpu_only=True,
                   cap="lightning", requires="pennylane_lightning"),
    FeatureMapImpl("Qiskit Statevector (per input)", "qiskit-zz", "statevector",
                   {"engine": "framework", "device": "statevector"}, False, runs_on_cpu_only=True, cap="statevector"),
    FeatureMapImpl("Qiskit Aer (batched binds)", "qiskit-zz", "aer", {"engine": "framework", "device": "aer"}, False,
                   runs_on_cpu_only=True, cap="aer", requires="qiskit_aer"),
)  # fmt: skip
#: inputs actually timed for the slow implementations (the rest extrapolated linearly)
DEFAULT_CAPS = {"statevector": 256, "aer": 2048, "pennylane-cpu": 8192, "lightning": 256}


def _input_cap(impl: FeatureMapImpl, device: torch.device, caps: dict[str, int]) -> int | None:
    if impl.cap == "pennylane-cpu" and device.type != "cpu":
        return None  # PennyLane default.qubit runs on the GPU at full size
    return caps[impl.cap] if impl.cap else None


def _states_function(impl: FeatureMapImpl, fm: FeatureMap) -> Callable[[torch.Tensor], torch.Tensor]:
    if impl.states_via == "map":
        return fm.states
    if impl.states_via == "tensorcircuit":
        return lambda x: tensorcircuit_zz_states(fm.angles(x).float(), reps=2)
    from ..featuremaps.statevector import reference_simulate, simulate

    def states(x: torch.Tensor) -> torch.Tensor:
        angles = fm.angles(x).reshape(-1, fm.qubits)
        if impl.states_via == "pytorch-engine":
            return simulate(fm.gates(angles), fm.qubits, dtype=torch.complex64, device=x.device,
                            implementation="pytorch")  # fmt: skip
        return reference_simulate(fm.gates(angles), fm.qubits, dtype=torch.complex64, device=x.device)

    return states


def tensorcircuit_zz_states(angles: torch.Tensor, reps: int = 2) -> torch.Tensor:
    """Qiskit's ZZ feature map (H, P(2x_i), CX·P(2(π−x_i)(π−x_j))·CX) in tensorcircuit-ng, vmapped over the batch.

    The peer a user would pick for batched, differentiable circuits in PyTorch.  Its wire 0 is the most
    significant bit, so qra's qubit k is its wire n−1−k: the states come out in qra's (Qiskit's) order.
    """
    import tensorcircuit as tc

    tc.set_backend("pytorch")
    tc.set_dtype("complex64")
    n = angles.shape[-1]

    def state(x: torch.Tensor) -> torch.Tensor:
        circuit = tc.Circuit(n)
        for _ in range(reps):
            for k in range(n):
                circuit.h(n - 1 - k)
            for k in range(n):
                circuit.phase(n - 1 - k, theta=2 * x[k])
            for i in range(n):
                for j in range(i + 1, n):
                    circuit.cnot(n - 1 - i, n - 1 - j)
                    circuit.phase(n - 1 - j, theta=2 * (math.pi - x[i]) * (math.pi - x[j]))
                    circuit.cnot(n - 1 - i, n - 1 - j)
        return circuit.state()

    with torch.device(angles.device):  # its initial state is made on torch's default device
        return tc.backend.vmap(state, vectorized_argnums=0)(angles)


def featuremap_cases(
    qubits: list[int], inputs: list[int], device: torch.device, repeats: int = 5, caps: dict[str, int] | None = None
) -> list[Case]:
    """ZZ-map states (reps=2), forward and forward+backward, for every implementation installed.

    Implementations that would take minutes (Qiskit per input, PennyLane on a CPU, lightning) run
    on the first ``caps[...]`` inputs and are extrapolated linearly; their rows say so.
    """
    import importlib.util

    caps = DEFAULT_CAPS | (caps or {})
    impls = [i for i in FEATUREMAP_IMPLS if i.requires is None or importlib.util.find_spec(i.requires)]

    def case(impl: FeatureMapImpl, q: int, count: int) -> Case:
        return Case(f"{impl.label}: {q} qubits, {count:,} inputs",
                    lambda: _featuremap_rows(impl, q, count, device, repeats, caps))  # fmt: skip

    return [case(impl, q, count) for q in qubits for count in inputs for impl in impls]


#: the scalar whose gradient the featuremaps benchmark's forward + backward rows take, for every implementation
FEATUREMAP_LOSS = "view_as_real(states).sum()"


def amplitude_sum(states: torch.Tensor) -> torch.Tensor:
    """Σ (Re + Im) over every amplitude, as one reduction: its backward hands the map one tensor of ones.

    The same value and gradient as ``states.real.sum() + states.imag.sum()`` (rounds 1–7), whose backward
    filled two zero copies of the states, wrote the ones into each and added them: the benchmark's cost
    rather than any simulator's, 0.70 ms of a 4.84 ms call at 8 qubits and 196,608 inputs on an H200
    (``results/bench/circuit-kernel-profile.txt``).
    """
    return torch.view_as_real(states.resolve_conj()).sum()


def _featuremap_rows(
    impl: FeatureMapImpl, q: int, count: int, device: torch.device, repeats: int, caps: dict[str, int]
) -> list[Row]:
    run_device = torch.device("cpu") if impl.runs_on_cpu_only else device
    cap = _input_cap(impl, device, caps)
    measured = min(count, cap) if cap else count
    fm = get(impl.featuremap, d_in=q, qubits=q, projection="identity", **impl.params).to(run_device)
    states = _states_function(impl, fm)
    x = torch.rand(measured, q, device=run_device) * 2 * torch.pi
    rows = []
    for kind in ("fwd", "fwd_bwd") if impl.differentiable else ("fwd",):

        def step(kind=kind) -> None:
            if kind == "fwd":
                with torch.no_grad():
                    states(x)
            else:
                leaf = x.detach().requires_grad_()
                amplitude_sum(states(leaf)).backward()

        reps = repeats if measured == count else max(1, repeats // 2)
        row = {"impl": impl.label, "featuremap": impl.featuremap, "engine": impl.engine, "qubits": q, "inputs": count,
               "measured_inputs": measured, "extrapolated": measured != count, "pass": kind,
               "engine_path": _engine_path(impl, fm, x), "device": device_name(run_device),
               "torch": torch.__version__}  # fmt: skip
        try:
            timing = time_it(step, run_device, repeats=reps, warmup=1)
        except (RuntimeError, ValueError, TypeError) as error:
            if not is_out_of_memory(error) and impl.requires is None:
                raise  # qra's own rows must run; a peer that fails is recorded, not fatal
            failure = {"oom": True} if is_out_of_memory(error) else {"error": f"{type(error).__name__}: {error}"}
            rows.append(row | {"ms": None, "ms_per_input": None, "peak_bytes": None, **failure})
            continue
        rows.append(row | {"ms": timing.median_ms * count / measured, "ms_per_input": timing.median_ms / measured,
                           "peak_bytes": timing.peak_bytes if measured == count else None})  # fmt: skip
    return rows


def _engine_path(impl: FeatureMapImpl, fm: FeatureMap, x: torch.Tensor) -> str | None:
    """For qra's compiled-engine rows, whether the fused circuit kernels or the PyTorch engine ran."""
    if impl.states_via == "pytorch-engine":
        return "pytorch"
    if impl.states_via != "map" or impl.params.get("engine") != "native":
        return None
    return map_engine_path(fm, x.device)


def map_engine_path(fm: FeatureMap, device: torch.device) -> str:
    """``fused`` or ``pytorch``: the engine a circuit map's states take on ``device`` (complex64)."""
    from ..featuremaps.fused_program import engine_path

    angles = fm.angles(torch.zeros(1, fm.d_in, device=device))
    return engine_path(fm.gates(angles), fm.qubits, torch.complex64, device)


def add_speedups(rows: list[Row], reference: str = "qra native (PennyLane tape)") -> list[Row]:
    """Each row's ``x_slower_than_native``: its time over qra native's for the same case."""
    native = {(r["qubits"], r["inputs"], r["pass"]): r["ms"] for r in rows if r["impl"] == reference}
    for row in rows:
        base = native.get((row["qubits"], row["inputs"], row["pass"]))
        row["x_slower_than_native"] = row["ms"] / base if base and row["ms"] else None
    return rows


def write_results(
    path: Path, rows: list[Row], device: torch.device, settings: dict[str, Any], complete: bool = True
) -> Path:
    """The benchmark's JSON: provenance, settings, rows, and whether every case has been measured."""
    payload = {"provenance": provenance(device), "settings": settings, "complete": complete, "rows": rows}
    return write_json_atomic(path, payload)


def is_out_of_memory(error: RuntimeError) -> bool:
    """Whether a benchmark step's error is the device running out of memory (a row to record, not a failure)."""
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class StatesAsFeatures(FeatureMap):
    """Given statevectors, stored as real pairs ``[..., 2·2^n]``, as a circuit map's features: the
    attention benchmark's fidelity rows time the attention on states alone, not their simulation."""

    is_linear = False
    is_fidelity = True

    @property
    def dim(self) -> int:
        return self.d_in // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())

    def similarity(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        overlap = fx @ fy.conj().transpose(-1, -2)
        return overlap.real.square() + overlap.imag.square()


def _sdpa_with(backend: str | None) -> Callable[..., torch.Tensor]:
    """SDPA with PyTorch's own choice of kernel (``None``) or a named backend (flash, cudnn, efficient)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}  # fmt: skip

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if backend is None:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        with sdpa_kernel(backends[backend]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    return attention


def attention_impls(
    device: torch.device, features: int, head_dim: int, qubits: int, compile_paths: bool
) -> dict[str, tuple[str | None, str, Callable[..., torch.Tensor]]]:
    """name -> (mode, path, attention(q, k, v)) for every row of the attention benchmark."""
    impls: dict[str, tuple[str | None, str, Callable[..., torch.Tensor]]] = {"sdpa": (None, "sdpa", _sdpa_with(None))}
    if device.type == "cuda":
        for backend in ("flash", "cudnn"):
            impls[f"sdpa-{backend}"] = (None, f"sdpa-{backend}", _sdpa_with(backend))
    rff = get("rff", d_in=head_dim, m=features).to(device)
    states = StatesAsFeatures(2 * 2**qubits).to(device)
    for mode in (*MODES, "fidelity"):
        fm, name = (states, "softmax") if mode == "fidelity" else (rff, mode)
        for path in ("fused", "pytorch", "compiled"):
            if path == "fused" and (device.type != "cuda" or mode == "normalized"):
                continue  # the fused kernels need CUDA; normalized mode has none
            if path == "compiled" and (not compile_paths or mode != "linear"):
                continue  # softmax already runs through SDPA; one compiled row shows what compile does

            def attention(q, k, v, fm=fm, name=name, path=path):
                implementation = "fused" if path == "fused" else "pytorch"
                return kernel_attention(q, k, v, fm, name, implementation=implementation)[0]

            compiled = torch.compile(attention, dynamic=True) if path == "compiled" else attention
            impls[f"{mode}-{path}"] = (mode, path, compiled)
    performer = get("performer", d_in=head_dim, m=features).to(device)
    for mode in ("softmax", "linear"):  # FAVOR+ features: the exponential prologue's Triton pass, or PyTorch ops
        for path in ("fused", "pytorch") if device.type == "cuda" else ("pytorch",):

            def attention(q, k, v, mode=mode, path=path):
                implementation = "fused" if path == "fused" else "pytorch"
                return kernel_attention(q, k, v, performer, mode, implementation=implementation)[0]

            impls[f"performer-{mode}-{path}"] = (mode, path, attention)
    if device.type == "cuda":
        from .. import kernels

        # the fused linear kernel alone, on given features: what φ costs is the difference
        impls["linear-kernel"] = ("linear-kernel", "kernel", lambda fq, fk, v: kernels.linear_attention(fq, fk, v))
        # the same kernel fed φ(q), φ(k) computed first (the fused path before the prologue was fused into it)
        impls["linear-features"] = ("linear", "features", lambda q, k, v: kernels.linear_attention(rff(q), rff(k), v))
    return impls


def attention_cases(
    lengths: list[int],
    tokens: int,
    heads: int,
    head_dim: int,
    features: int,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int = 5,
    qubits: int = 6,
    compile_paths: bool = True,
    only: list[str] | None = None,
) -> list[Case]:
    """SDPA (default choice, flash, cuDNN) against qra kernel attention at B·N = ``tokens``.

    Every mode with RFF features (m = ``features``) on the fused kernels, the PyTorch path and
    ``torch.compile`` of the PyTorch path; the softmax and linear modes with FAVOR+ features (performer);
    the fidelity softmax on given ``qubits``-qubit states (their simulation not timed).  Forward and
    forward + backward, peak memory.
    ``only``: the rows to measure (all by default).
    """
    impls = attention_impls(device, features, head_dim, qubits, compile_paths)
    if only:
        if unknown := sorted(set(only) - set(impls)):
            raise ValueError(f"unknown attention rows {', '.join(unknown)}; accepted: {', '.join(impls)}")
        impls = {name: impl for name, impl in impls.items() if name in only}

    def case(name: str, length: int) -> Case:
        return Case(f"attention {name}, N={length:,}",
                    lambda: [_attention_row(name, impls[name], length, tokens, heads, head_dim, features, qubits,
                                            device, dtype, repeats)])  # fmt: skip

    return [case(name, length) for length in lengths for name in impls]


def _attention_row(
    name: str,
    impl: tuple[str | None, str, Callable[..., torch.Tensor]],
    length: int,
    tokens: int,
    heads: int,
    head_dim: int,
    features: int,
    qubits: int,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int,
) -> Row:
    mode, path, attention = impl
    batch = max(1, tokens // length)
    inputs = attention_inputs(mode, batch, heads, length, head_dim, features, qubits, device, dtype)
    row = {"impl": name, "mode": mode, "path": path, "N": length, "B": batch, "H": heads, "d": head_dim,
           "m": None if mode is None else (2**qubits if mode == "fidelity" else features),  # features per q/k
           "dtype": str(dtype).removeprefix("torch."), "device": device_name(device),
           "torch": torch.__version__}  # fmt: skip
    if name.startswith("performer-"):  # whether the fused rows took FAVOR+ features from the Triton pass
        from .. import kernels

        row["exponential_pass"] = kernels.exponential_pass_enabled()
    for kind in ("fwd", "fwd_bwd"):

        def step(kind=kind) -> None:
            if kind == "fwd":
                with torch.no_grad():
                    attention(*inputs)
                return
            leaves = [t.detach().requires_grad_() for t in inputs]
            attention(*leaves).float().sum().backward()

        try:
            timing = time_it(step, device, repeats=repeats, warmup=2)
            row[f"{kind}_ms"], row[f"{kind}_peak_bytes"] = timing.median_ms, timing.peak_bytes
            if path != "compiled":  # a compiled function's own graphs and guards do not capture
                row[f"{kind}_gpu_ms"] = graph_time(step, device, repeats=repeats)
        except (RuntimeError, ValueError) as error:
            if not is_out_of_memory(error) and "cannot take these inputs" not in str(error):
                raise
            row[f"{kind}_ms"], row[f"{kind}_peak_bytes"] = None, None
            row["error"] = "out of memory" if is_out_of_memory(error) else str(error)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    row["peak_bytes"] = row.get("fwd_bwd_peak_bytes")
    return row


def attention_inputs(
    mode: str | None,
    batch: int,
    heads: int,
    length: int,
    head_dim: int,
    features: int,
    qubits: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, v) for one attention-benchmark row, seeded by the length: head_dim-wide queries and keys, except
    normalised states as real pairs (fidelity) and positive m-wide features (the linear kernel on given φ)."""
    generator = torch.Generator(device=device).manual_seed(length)
    query_dim = {"fidelity": 2 * 2**qubits, "linear-kernel": features}.get(mode, head_dim)

    def draw(dim: int) -> torch.Tensor:
        return torch.randn((batch, heads, length, dim), device=device, dtype=dtype, generator=generator)

    if mode == "fidelity":  # normalised states, as real pairs
        q, k = (torch.nn.functional.normalize(draw(query_dim).float(), dim=-1) for _ in range(2))
    elif mode == "linear-kernel":  # positive features, as a dot-product map's after its stabiliser
        q, k = draw(query_dim).abs(), draw(query_dim).abs()
    else:
        q, k = draw(query_dim), draw(query_dim)
    return q, k, draw(head_dim)


def add_sdpa_ratios(rows: list[Row]) -> list[Row]:
    """Each row's time over SDPA's (PyTorch's default choice) at the same N: ``fwd_vs_sdpa``, ``fwd_bwd_vs_sdpa``
    from the wall times, ``fwd_gpu_vs_sdpa``, ``fwd_bwd_gpu_vs_sdpa`` from the GPU times (:func:`graph_time`)."""
    reference = {r["N"]: r for r in rows if r["impl"] == "sdpa"}
    for row in rows:
        base = reference.get(row["N"], {})
        for kind in ("fwd", "fwd_bwd", "fwd_gpu", "fwd_bwd_gpu"):
            ours, theirs = row.get(f"{kind}_ms"), base.get(f"{kind}_ms")
            row[f"{kind}_vs_sdpa"] = ours / theirs if ours and theirs else None
    return rows
