"""qra's statevector engine, compiled (``simulate``) against the earlier gate-by-gate engine (``reference_simulate``).

ZZ feature map (Qiskit's definition, reps = 2, full entanglement, the gates Qiskit's transpiler
emits: H, P, CX·P·CX), forward + backward, for n qubits and B inputs.  Reports the median time, the
bytes autograd saves for backward (unique storages seen by ``saved_tensors_hooks``) and, on CUDA,
the peak memory above the inputs.  Needs only torch and qra, so it runs on a bare GPU machine:

    PYTHONPATH=. python experiments/statevector_engine.py --qubits 4 6 8 --batch 16384
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch

from qra.featuremaps.compiler import estimate_bytes
from qra.featuremaps.statevector import Gate, reference_simulate, simulate


def zz_gates(x: torch.Tensor, reps: int = 2) -> list[Gate]:
    n = x.shape[-1]
    gates = []
    for _ in range(reps):
        gates += [Gate("h", (q,)) for q in range(n)]
        gates += [Gate("p", (q,), (2 * x[:, q],)) for q in range(n)]
        for i in range(n):
            for j in range(i + 1, n):
                gates += [Gate("cx", (i, j)), Gate("p", (j,), (2 * (math.pi - x[:, i]) * (math.pi - x[:, j]),)),
                          Gate("cx", (i, j))]  # fmt: skip
    return gates


def step(engine, x: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype, saved: dict | None = None) -> None:
    x = x.detach().requires_grad_()

    def pack(tensor):
        if saved is not None:
            storage = tensor.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    gates = zz_gates(x)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # what the engine itself saves
        states = engine(gates, x.shape[-1], dtype=dtype)
    (states * weights).real.sum().backward()


def measure(engine, n: int, batch: int, dtype: torch.dtype, device: torch.device, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(n)
    x = (torch.rand(batch, n, generator=generator, dtype=torch.float64) * 2 * math.pi).to(device)
    weights = torch.randn(batch, 2**n, generator=generator, dtype=dtype).to(device)
    saved: dict[int, int] = {}
    step(engine, x, weights, dtype, saved)  # warm-up (and compile) + saved bytes
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(engine, x, weights, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    out = {"ms": 1e3 * statistics.median(times), "saved_bytes": sum(saved.values())}
    if device.type == "cuda":
        out["peak_bytes"] = torch.cuda.max_memory_allocated() - base
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--dtype", choices=["complex64", "complex128"], default="complex64")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    rows = []
    for n in args.qubits:
        row = {"qubits": n, "batch": args.batch, "dtype": args.dtype, "state_bytes": args.batch * 2**n * dtype.itemsize,
               "estimate_bytes": estimate_bytes(n, args.batch, dtype)}  # fmt: skip
        row["compiled"] = measure(simulate, n, args.batch, dtype, device, args.repeats)
        if not args.skip_reference:
            row["reference"] = measure(reference_simulate, n, args.batch, dtype, device, args.repeats)
            x = torch.rand(256, n, dtype=torch.float64, device=device) * 2 * math.pi
            with torch.no_grad():
                difference = simulate(zz_gates(x), n, dtype=dtype) - reference_simulate(zz_gates(x), n, dtype=dtype)
                row["max_state_difference"] = float(difference.abs().max())
        rows.append(row)
        print(json.dumps(row), flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(json.dumps({"device": name, "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
