"""Choose the fidelity kernels' tiles on the GPU: time each candidate (BM, BN, warps, stages) of the forward,
the key-block and the query-block backward kernels at one shape, side by side with SDPA and the PyTorch path.

    python experiments/device/fidelity_tiles.py --output fidelity-tiles.json [--length 512 --qubits 6]
        [--timing graph|wall]

``--timing graph`` (the default) times the GPU's work, replayed from a CUDA graph
(``qra.experiment.bench.graph_time``); ``wall`` times calls as ``qra bench attention`` does.

Coordinate search: forward candidates alone; then key-block candidates with the query-block kernel at
its current tiles, and query-block candidates with the key-block kernel at its current tiles.  A
candidate that does not fit the chip is reported, not replaced by smaller tiles.  The winners go into
``qra/kernels/fidelity.py`` by hand, with this file's JSON committed beside the benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import triton
from profiling import add_timing_option, search_ms
from triton.runtime.errors import OutOfResources

from qra.kernels import fidelity, reference

FORWARD = [(128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 2), (64, 64, 4, 3), (64, 32, 4, 3), (128, 128, 8, 2)]
KEY_BLOCK = [(32, 64, 8, 2), (16, 64, 4, 3), (32, 64, 4, 3), (64, 32, 8, 3), (64, 64, 8, 2), (32, 128, 8, 2),
             (32, 64, 4, 2), (32, 32, 4, 3), (16, 64, 4, 2)]  # fmt: skip
QUERY_BLOCK = [(64, 32, 8, 2), (64, 64, 8, 2), (128, 32, 8, 2), (64, 16, 4, 2), (64, 32, 4, 2), (128, 64, 8, 2),
               (128, 64, 8, 3), (128, 32, 4, 2), (64, 64, 4, 2)]  # fmt: skip


def strict_launch(kernel, grid_of, tensors, scalars, bm, bn, warps, stages, **meta):
    """fidelity._launch without its fallback to small tiles: a candidate that does not fit must say so."""
    kernel[grid_of(bm, bn)](*tensors, *scalars, BM=bm, BN=bn, num_warps=warps, num_stages=stages, **meta)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--qubits", type=int, default=6)
    parser.add_argument("--value-dim", type=int, default=64)
    add_timing_option(parser)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    batch, n, heads, dim = args.tokens // args.length, args.length, args.heads, 2**args.qubits
    dev = "cuda"

    def state() -> torch.Tensor:
        s = torch.randn(batch, heads, n, dim, dtype=torch.complex64, device=dev)
        return s / torch.linalg.vector_norm(s, dim=-1, keepdim=True)

    sq, sk = state(), state()
    v = torch.randn(batch, heads, n, args.value_dim, device=dev, dtype=torch.bfloat16)
    beta = torch.full((heads,), 8.0, device=dev)
    key = (fidelity.plane_width(dim), True)
    fidelity._launch = strict_launch

    def forward() -> None:
        with torch.no_grad():
            fidelity.fused_fidelity_attention(sq, sk, v, None, beta)

    grad = torch.randn(batch, heads, n, args.value_dim, device=dev, dtype=torch.bfloat16)

    def forward_backward() -> None:  # fresh leaves each call: a graph kept alive between calls breaks capture
        leaves = [t.detach().requires_grad_() for t in (sq, sk, v)]
        result = fidelity.fused_fidelity_attention(*leaves, None, beta)
        torch.autograd.grad(result, leaves, grad)

    def pytorch_forward_backward() -> None:
        leaves = [t.detach().requires_grad_() for t in (sq, sk, v)]
        torch.autograd.grad(reference.fidelity_attention(*leaves, None, beta), leaves, grad)

    rows = []

    def median_ms(step) -> float:
        return search_ms(step, args.timing)

    def measure(kernel: str, tiles, step) -> None:
        try:
            ms = median_ms(step)
        except (OutOfResources, RuntimeError) as error:
            rows.append({"kernel": kernel, "tiles": tiles, "error": f"{type(error).__name__}: {str(error)[:200]}"})
            print(kernel, tiles, "FAILED", type(error).__name__, flush=True)
            return
        rows.append({"kernel": kernel, "tiles": tiles, "ms": ms})
        print(kernel, tiles, f"{ms:.3f} ms", flush=True)

    def best(kernel: str):
        done = [r for r in rows if r["kernel"] == kernel and "ms" in r]
        return tuple(min(done, key=lambda r: r["ms"])["tiles"]) if done else None

    for tiles in FORWARD:
        fidelity.FORWARD_TILES[key] = tiles
        measure("forward", tiles, forward)
    fidelity.FORWARD_TILES[key] = best("forward") or fidelity.FORWARD_TILES[key]
    for tiles in KEY_BLOCK:
        fidelity.BACKWARD_KV_TILES[key] = tiles
        measure("forward+backward, key-block tiles", tiles, forward_backward)
    fidelity.BACKWARD_KV_TILES[key] = best("forward+backward, key-block tiles") or fidelity.BACKWARD_KV_TILES[key]
    for tiles in QUERY_BLOCK:
        fidelity.BACKWARD_Q_TILES[key] = tiles
        measure("forward+backward, query-block tiles", tiles, forward_backward)
    fidelity.BACKWARD_Q_TILES[key] = best("forward+backward, query-block tiles") or fidelity.BACKWARD_Q_TILES[key]

    # the references, in the same run: SDPA at head dim 64, and the PyTorch path of the same fidelity attention
    q, k = (torch.randn(batch, heads, n, 64, device=dev, dtype=torch.bfloat16) for _ in range(2))

    def sdpa(backward: bool) -> None:
        leaves = [t.detach().requires_grad_(backward) for t in (q, k, v)]
        out = torch.nn.functional.scaled_dot_product_attention(*leaves)
        if backward:
            torch.autograd.grad(out, leaves, grad)

    references = {
        "sdpa fwd": lambda: sdpa(False),
        "sdpa fwd+bwd": lambda: sdpa(True),
        "fidelity fused fwd (chosen tiles)": forward,
        "fidelity fused fwd+bwd (chosen tiles)": forward_backward,
        "fidelity pytorch fwd+bwd": pytorch_forward_backward,
    }
    timings = {name: median_ms(step) for name, step in references.items()}
    for name, ms in timings.items():
        print(name, f"{ms:.3f} ms", flush=True)
    chosen = {"forward": fidelity.FORWARD_TILES[key], "key_block": fidelity.BACKWARD_KV_TILES[key],
              "query_block": fidelity.BACKWARD_Q_TILES[key]}  # fmt: skip
    print("chosen", chosen, flush=True)
    result = {
        "command": "python experiments/device/fidelity_tiles.py " + " ".join(
            f"--{name.replace('_', '-')} {value}" for name, value in vars(args).items() if name != "output"),
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "commit": os.environ.get("QRA_GIT_COMMIT"), "timing": args.timing,
        "shape": {"B": batch, "H": heads, "N": n, "qubits": args.qubits, "dv": args.value_dim, "dtype": "bfloat16"},
        "candidates": rows, "chosen": chosen, "references_ms": timings,
    }  # fmt: skip
    args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
