"""Choose the fused RFF linear-attention kernels' launch shapes on the GPU (``fourier_linear.FORWARD_LAUNCH``,
``BACKWARD_LAUNCH``): time candidates at the benchmark's shape, side by side with SDPA, in one run.

    python experiments/device/linear_tiles.py --output linear-tiles.json [--lengths 512,32768] [--map-grad]
        [--timing graph|wall]

``--timing graph`` (the default) times each candidate's GPU work, replayed from a CUDA graph
(``qra.experiment.bench.graph_time``); ``wall`` times calls as ``qra bench attention`` does, which at short
lengths is the host's time to issue them: round 12's search ran that way and could not tell the shapes apart.

W and the phases are fixed, as RFF's buffers are by default (the backward then skips their gradients);
``--map-grad`` makes them require grad, as a learned σ does.  Either way the search's forward + backward is
also timed once with the other setting, at the chosen shapes, so the map gradients' cost is in the file.

Coordinate search at the first length: forward candidates (forward alone), then backward candidates
(forward + backward, the forward at its best); then the best three of each, and the launch shapes before
this search, at every length; the approximate-trigonometry switch off and on at the chosen shapes.  A
candidate that does not fit the chip is reported.  The winners go into ``qra/kernels/fourier_linear.py`` by
hand, with this file's JSON committed beside the benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
import triton
from profiling import add_timing_option, search_ms
from triton.runtime.errors import OutOfResources

from qra.kernels import fourier_linear
from qra.kernels.fourier_linear import Launch

BEFORE = (Launch(64, 8, 3, 2), Launch(32, 8, 3, 2))  # round 3's shapes (warps from the tile-size rule)
FORWARD = [Launch(64, 8, 3, 2), Launch(64, 4, 3, 2), Launch(32, 4, 3, 2), Launch(32, 4, 3, 4), Launch(32, 4, 2, 8),
           Launch(64, 8, 2, 4), Launch(64, 4, 3, 8), Launch(32, 8, 3, 4), Launch(128, 8, 3, 2), Launch(16, 4, 3, 8),
           Launch(64, 8, 3, 8), Launch(32, 4, 3, 16)]  # fmt: skip
BACKWARD = [Launch(32, 8, 3, 2), Launch(32, 4, 3, 2), Launch(16, 4, 3, 4), Launch(32, 8, 2, 4), Launch(16, 4, 2, 8),
            Launch(64, 8, 3, 2), Launch(32, 4, 3, 8), Launch(16, 8, 3, 4), Launch(32, 8, 3, 8), Launch(16, 4, 3, 16),
            Launch(64, 8, 2, 4)]  # fmt: skip
# the kernels take 229-255 registers a thread at these shapes, so one 8-warp or two 4-warp programs fit an SM
# (experiments/kernel_registers.py); capped, more fit, at the price of spills
FORWARD += [Launch(64, 4, 3, 8, 128), Launch(32, 4, 3, 8, 128), Launch(64, 4, 3, 8, 168), Launch(128, 8, 3, 2, 128),
            Launch(32, 4, 3, 16, 128)]  # fmt: skip
BACKWARD += [Launch(32, 8, 3, 2, 128), Launch(32, 8, 3, 4, 128), Launch(32, 8, 3, 2, 168), Launch(16, 4, 3, 8, 128),
             Launch(16, 4, 3, 16, 128), Launch(32, 4, 3, 8, 128)]  # fmt: skip
# single bf16 products (round 17) use less shared memory: deeper and shallower pipelines
FORWARD += [Launch(64, 4, 4, 2), Launch(64, 4, 2, 2), Launch(64, 4, 3, 4)]
BACKWARD += [Launch(32, 8, 4, 2), Launch(32, 8, 2, 2), Launch(64, 8, 4, 2), Launch(32, 4, 4, 4)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="512,32768")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--map-grad", action="store_true", help="W and the phases require grad (a learned σ)")
    add_timing_option(parser)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    dev = torch.device("cuda")
    rows: list[dict] = []

    def shape(length: int, map_grad: bool = args.map_grad):
        torch.manual_seed(length)
        b, h, d = max(1, args.tokens // length), args.heads, args.head_dim
        q, k, v = (torch.randn(b, h, length, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))  # fmt: skip
        weight = (torch.randn(args.features, d, device=dev) / 8).requires_grad_(map_grad)
        phase = (torch.rand(args.features, device=dev) * 2 * torch.pi).requires_grad_(map_grad)
        scale = (2.0 / args.features) ** 0.5
        leaves = (q, k, v, weight, phase) if map_grad else (q, k, v)

        def forward() -> None:
            with torch.no_grad():
                fourier_linear.fused_fourier_linear_attention(q, k, v, weight, phase, scale)

        def forward_backward() -> None:
            out = fourier_linear.fused_fourier_linear_attention(q, k, v, weight, phase, scale)
            torch.autograd.grad(out.float().sum(), leaves)

        def sdpa(backward: bool) -> None:
            if backward:
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                torch.autograd.grad(out.float().sum(), (q, k, v))
            else:
                with torch.no_grad():
                    torch.nn.functional.scaled_dot_product_attention(q, k, v)

        return {"fwd": forward, "fwd_bwd": forward_backward, "map_grad": map_grad,
                "sdpa fwd": lambda: sdpa(False), "sdpa fwd_bwd": lambda: sdpa(True)}  # fmt: skip

    def median_ms(step) -> float:
        return search_ms(step, args.timing)

    def measure(length: int, steps, kind: str, forward: Launch, backward: Launch, label: str) -> float | None:
        fourier_linear.FORWARD_LAUNCH, fourier_linear.BACKWARD_LAUNCH = forward, backward
        row = {"N": length, "kind": kind, "label": label, "forward": asdict(forward), "backward": asdict(backward),
               "approximate_trig": fourier_linear.APPROXIMATE_TRIG, "map_grad": steps["map_grad"]}  # fmt: skip
        try:
            row["ms"] = median_ms(steps[kind])
        except (OutOfResources, RuntimeError) as error:
            row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
        rows.append(row)
        print(length, kind, label, forward, backward, row.get("ms", row.get("error")), flush=True)
        return row.get("ms")

    def ranked(kind: str, length: int, key: str) -> list[Launch]:
        done = [r for r in rows if r["N"] == length and r["kind"] == kind and r["label"] == "search" and "ms" in r]
        return [Launch(**r[key]) for r in sorted(done, key=lambda r: r["ms"])]

    first = lengths[0]
    steps = shape(first)
    references = {first: {name: median_ms(steps[name]) for name in ("sdpa fwd", "sdpa fwd_bwd")}}
    for candidate in FORWARD:
        measure(first, steps, "fwd", candidate, BEFORE[1], "search")
    best_forward = ranked("fwd", first, "forward")[:3]
    for candidate in BACKWARD:
        measure(first, steps, "fwd_bwd", best_forward[0], candidate, "search")
    best_backward = ranked("fwd_bwd", first, "backward")[:3]
    for length in lengths:
        steps = steps if length == first else shape(length)
        references.setdefault(length, {name: median_ms(steps[name]) for name in ("sdpa fwd", "sdpa fwd_bwd")})
        measure(length, steps, "fwd_bwd", *BEFORE, "before")
        for forward in best_forward:
            for backward in best_backward:
                measure(length, steps, "fwd_bwd", forward, backward, "finalists")
        for approximate in (False, True):
            fourier_linear.APPROXIMATE_TRIG = approximate
            for kind in ("fwd", "fwd_bwd"):
                measure(length, steps, kind, best_forward[0], best_backward[0], "trig")
        measure(length, shape(length, not args.map_grad), "fwd_bwd", best_forward[0], best_backward[0], "map grad")
        print(length, references[length], flush=True)
    result = {
        "command": "python experiments/device/linear_tiles.py " + " ".join(
            f"--{name.replace('_', '-')} {value}" for name, value in vars(args).items() if name != "output"),
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "commit": os.environ.get("QRA_GIT_COMMIT"), "dtype": "bfloat16", "timing": args.timing,
        "shape": {"tokens": args.tokens, "H": args.heads, "d": args.head_dim, "m": args.features},
        "candidates": rows, "sdpa_ms": references,
    }  # fmt: skip
    args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
