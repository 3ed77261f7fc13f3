"""The fused RFF linear attention of this tree against another version of its module, side by side in one process.

    python experiments/device/linear_ab.py --other OLD.py --output linear-ab.json [--lengths 512,32768]
        [--rounds 3] [--forward 128,8,3,2 64,4,3,2] [--whole-forward 128,8,3,2 ...] [--whole-backward 32,8,3,2 ...]

``OLD.py`` is a copy of ``qra/kernels/fourier_linear.py`` from another commit (``git show REV:qra/kernels/
fourier_linear.py > OLD.py``); it is imported as a sibling of ``qra.kernels.fourier_linear``, so that its relative
imports resolve to this tree's helpers.  Each round times, at the attention benchmark's shape (B·N = 16,384,
H = 12, d = 64, m = 128, bf16, fixed W and phases), the forward alone and the forward + backward of the
benchmark's loss (``out.float().sum()``) for SDPA, the other module at its own launch shapes, this tree's split
kernels at each ``--forward`` launch shape (rows, warps, stages, programs per SM; the first is its default) and, at
lengths where ``SEQUENCE_PROGRAMS = "auto"`` takes whole sequences, its one-program-per-sequence kernels at each
``--whole-forward`` and ``--whole-backward`` shape, in GPU ms from CUDA-graph replays (``profiling.search_ms``).
Rounds alternate the contenders, so that drift touches each alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch
import triton
from profiling import load_sibling, search_ms

from qra.kernels import fourier_linear
from qra.kernels.fourier_linear import Launch


def contenders_at(
    length: int, other, shapes: list[Launch], whole: tuple[list[Launch], list[Launch]]
) -> dict[str, dict]:
    """Every contender's forward and forward + backward steps at the benchmark's shape for ``length``: SDPA, the other
    module, this tree's split kernels at each forward shape and, where ``auto`` takes whole sequences at this length,
    its one-program-per-sequence kernels at each of ``whole`` = (forward shapes, backward shapes), one coordinate
    at a time (the other at its first shape)."""
    dev = torch.device("cuda")
    torch.manual_seed(length)
    b, h, d, m = max(1, 16_384 // length), 12, 64, 128
    q, k, v = (torch.randn(b, h, length, d, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    weight, phase = torch.randn(m, d, device=dev) / 8, torch.rand(m, device=dev) * 2 * torch.pi
    scale = (2.0 / m) ** 0.5

    def steps(attention) -> dict:
        def forward() -> None:
            with torch.no_grad():
                attention(q, k, v)

        def forward_backward() -> None:
            torch.autograd.grad(attention(q, k, v).float().sum(), (q, k, v))

        return {"fwd": forward, "fwd_bwd": forward_backward}

    def fused(module, **settings):  # the module's settings, set before each call (contenders share the module)
        def attention(q, k, v):
            for name, value in settings.items():
                setattr(module, name, value)
            return module.fused_fourier_linear_attention(q, k, v, weight, phase, scale)

        return attention

    contenders = {"sdpa": steps(torch.nn.functional.scaled_dot_product_attention),
                  f"other {other.FORWARD_LAUNCH}": steps(fused(other))}  # fmt: skip
    for launch in shapes:
        contenders[f"this split {launch}"] = steps(
            fused(fourier_linear, FORWARD_LAUNCH=launch, SEQUENCE_PROGRAMS="split")
        )
    fourier_linear.SEQUENCE_PROGRAMS, fourier_linear.FORWARD_LAUNCH = "auto", shapes[0]
    if not fourier_linear._whole_sequences((length, length), b * h, m, dev, shapes[0]):
        return contenders
    forwards, backwards = whole
    pairs = [(f, backwards[0]) for f in forwards] + [(forwards[0], w) for w in backwards[1:]]
    for forward, backward in pairs:
        contenders[f"this whole {forward} / {backward}"] = steps(fused(
            fourier_linear, FORWARD_LAUNCH=shapes[0], SEQUENCE_PROGRAMS="whole", WHOLE_FORWARD_LAUNCH=forward,
            WHOLE_BACKWARD_LAUNCH=backward))  # fmt: skip
    return contenders


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", type=Path, required=True)
    parser.add_argument("--lengths", default="512,32768")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forward", nargs="+", default=["128,8,3,2"])
    parser.add_argument("--whole-forward", nargs="+", default=["128,8,3,2"])
    parser.add_argument("--whole-backward", nargs="+", default=["32,8,3,2"])
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    other = load_sibling(args.other, "_other_fourier_linear")
    shapes = [Launch(*map(int, text.split(","))) for text in args.forward]
    whole = tuple(
        [Launch(*map(int, text.split(","))) for text in texts] for texts in (args.whole_forward, args.whole_backward)
    )
    rows: list[dict] = []
    for length in map(int, args.lengths.split(",")):
        contenders = contenders_at(length, other, shapes, whole)
        times = {(name, kind): [] for name in contenders for kind in ("fwd", "fwd_bwd")}
        for number in range(args.rounds):
            names = list(contenders)
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                for kind, step in contenders[name].items():
                    times[name, kind].append(search_ms(step))
        for (name, kind), values in times.items():
            median = statistics.median(values)
            rows.append({"N": length, "contender": name, "kind": kind, "ms": values, "median": median})
            print(f"N = {length:6d} {kind:8s} {name:70s} {median:.4f} ms  {values}", flush=True)
    result = {
        "command": "python experiments/device/linear_ab.py " + " ".join(
            f"--{name.replace('_', '-')} {' '.join(value) if isinstance(value, list) else value}"
            for name, value in vars(args).items() if name != "output"),
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "commit": os.environ.get("QRA_GIT_COMMIT"), "dtype": "bfloat16", "timing": "graph",
        "rows": rows,
    }  # fmt: skip
    args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
