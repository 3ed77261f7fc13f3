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

from ..featuremaps import get
from .provenance import device_name, provenance, write_json_atomic


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
    """One way to compute ZZ-map states: a registered map, its engine and simulator, and how it may run.

    ``simulator`` names the framework simulator for ``engine="framework"`` (the map's ``device``
    parameter) and the row's ``engine`` column: ``native``, ``pennylane``, ``statevector`` or ``aer``.
    """

    label: str
    featuremap: str
    engine: str
    differentiable: bool
    simulator: str | None = None
    runs_on_cpu_only: bool = False

    @property
    def params(self) -> dict[str, str]:
        return {"engine": self.engine} | ({"device": self.simulator} if self.simulator else {})

    @property
    def name(self) -> str:
        """The implementation as the rows name it: ``native`` or the framework simulator's short name."""
        return "native" if self.engine == "native" else self.simulator.split(".")[0].replace("default", "pennylane")


FEATUREMAP_IMPLS = (
    FeatureMapImpl("qra native (PennyLane tape)", "pennylane-zz", "native", True),
    FeatureMapImpl("qra native (Qiskit circuit)", "qiskit-zz", "native", True),
    FeatureMapImpl("PennyLane default.qubit", "pennylane-zz", "framework", True, "default.qubit"),
    FeatureMapImpl("Qiskit Statevector (per input)", "qiskit-zz", "framework", False, "statevector", True),
    FeatureMapImpl("Qiskit Aer (batched binds)", "qiskit-zz", "framework", False, "aer", True),
)


def _input_cap(impl: FeatureMapImpl, device: torch.device, caps: dict[str, int]) -> int | None:
    if impl.name in ("statevector", "aer"):
        return caps[impl.name]
    if impl.name == "pennylane" and device.type == "cpu":
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
                fm = get(impl.featuremap, d_in=q, qubits=q, projection="identity", **impl.params).to(run_device)
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
                        "impl": impl.label, "featuremap": impl.featuremap, "engine": impl.name, "qubits": q,
                        "inputs": count, "measured_inputs": measured, "extrapolated": measured != count,
                        "pass": kind, "ms": timing.median_ms * scale, "ms_per_input": timing.median_ms / measured,
                        "peak_bytes": timing.peak_bytes if measured == count else None,
                        "device": device_name(run_device), "torch": torch.__version__,
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


def _is_out_of_memory(error: RuntimeError) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def bench_attention(
    lengths: list[int],
    tokens: int,
    heads: int,
    head_dim: int,
    features: int,
    device: torch.device,
    dtype: torch.dtype,
    repeats: int = 5,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """SDPA against qra kernel attention (RFF, each mode) at B·N = ``tokens``; fwd and fwd+bwd."""
    from ..attention import MODES, kernel_attention

    rows = []
    featuremap = get("rff", d_in=head_dim, m=features).to(device)
    for length in lengths:
        batch = max(1, tokens // length)
        shape = (batch, heads, length, head_dim)
        inputs = tuple(torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
        impls: dict[str, Callable[..., torch.Tensor]] = {
            "sdpa": lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v)
        }
        for mode in MODES:
            impls[mode] = lambda q, k, v, mode=mode: kernel_attention(q, k, v, featuremap, mode)[0]
        for impl, attention in impls.items():
            row = {"impl": impl, "mode": None if impl == "sdpa" else impl, "N": length, "B": batch, "H": heads,
                   "d": head_dim, "m": None if impl == "sdpa" else features, "dtype": str(dtype).removeprefix("torch."),
                   "device": device_name(device), "torch": torch.__version__}  # fmt: skip
            for kind in ("fwd", "fwd_bwd"):
                progress(f"attention {impl}, N={length}, {kind}")

                def step(attention=attention, kind=kind, inputs=inputs) -> None:
                    if kind == "fwd":
                        with torch.no_grad():
                            attention(*inputs)
                        return
                    leaves = [t.detach().requires_grad_() for t in inputs]
                    attention(*leaves).float().sum().backward()

                try:
                    timing = time_it(step, device, repeats=repeats, warmup=2)
                    row[f"{kind}_ms"], row[f"{kind}_peak_bytes"] = timing.median_ms, timing.peak_bytes
                except RuntimeError as error:
                    if not _is_out_of_memory(error):
                        raise
                    row[f"{kind}_ms"], row[f"{kind}_peak_bytes"], row["oom"] = None, None, True
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            row["peak_bytes"] = row.get("fwd_bwd_peak_bytes")
            rows.append(row)
        del inputs
    reference = {r["N"]: r for r in rows if r["impl"] == "sdpa"}
    for row in rows:
        base = reference.get(row["N"], {})
        for kind in ("fwd", "fwd_bwd"):
            ours, theirs = row.get(f"{kind}_ms"), base.get(f"{kind}_ms")
            row[f"{kind}_vs_sdpa"] = ours / theirs if ours and theirs else None
    return rows


def _train_step_model(variant: str, layers: int, device: torch.device) -> torch.nn.Module:
    """A DistilBERT-base-shaped classifier with random weights, patched as ``variant`` says."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from ..patching import DEFAULT_LAYERS, patch

    torch.manual_seed(0)
    config = DistilBertConfig(n_layers=layers, num_labels=2, attn_implementation="sdpa")
    model = DistilBertForSequenceClassification(config).to(device)
    head_dim = config.dim // config.n_heads
    variants = {
        "baseline": None,
        "rff-softmax": ("rff", {"m": 128}, "softmax"),
        "rff-linear": ("rff", {"m": 128}, "linear"),
        "pennylane-zz-native": ("pennylane-zz", {"qubits": 6, "engine": "native"}, "softmax"),
    }
    if variants[variant] is not None:
        name, params, mode = variants[variant]
        patch(model, get(name, d_in=head_dim, **params).to(device), layers=DEFAULT_LAYERS, mode=mode)
    return model


TRAIN_VARIANTS = ("baseline", "rff-softmax", "rff-linear", "pennylane-zz-native")


def bench_train(
    device: torch.device,
    batch: int = 32,
    length: int = 512,
    layers: int = 6,
    variants: tuple[str, ...] = TRAIN_VARIANTS,
    repeats: int = 10,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """One AdamW training step (bf16 autocast on GPU) of DistilBERT-base shape, baseline vs patched L4,L5."""
    rows = []
    for variant in variants:
        progress(f"train step {variant}")
        model = _train_step_model(variant, layers, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        input_ids = torch.randint(1000, 30000, (batch, length), device=device)
        labels = torch.randint(0, 2, (batch,), device=device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

        def step(model=model, optimizer=optimizer, input_ids=input_ids, labels=labels, autocast=autocast) -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = model(input_ids=input_ids, labels=labels).loss
            loss.backward()
            optimizer.step()

        row = {"variant": variant, "B": batch, "N": length, "layers": layers,
               "device": device_name(device), "torch": torch.__version__}  # fmt: skip
        try:
            timing = time_it(step, device, repeats=repeats, warmup=3)
            row |= {"step_ms": timing.median_ms, "samples_per_second": batch / timing.median_ms * 1000,
                    "peak_bytes": timing.peak_bytes}  # fmt: skip
        except RuntimeError as error:
            if not _is_out_of_memory(error):
                raise
            row |= {"step_ms": None, "samples_per_second": None, "peak_bytes": None, "oom": True}
        rows.append(row)
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = next((r for r in rows if r["variant"] == "baseline"), None)
    for row in rows:
        ok = base and base.get("samples_per_second") and row.get("samples_per_second")
        row["throughput_vs_baseline"] = row["samples_per_second"] / base["samples_per_second"] if ok else None
    return rows
