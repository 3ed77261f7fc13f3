"""The Fourier feature passes of this tree against another version of their module, side by side in one process.

    python experiments/device/feature_pass_ab.py --other OLD.py --output feature-pass-ab.json [--lengths 512,32768]
        [--rounds 3] [--forward 64,4,3,3 ...] [--backward 64,4,3,2 ...]

``OLD.py`` is a copy of ``qra/kernels/fourier_map.py`` from another commit (``git show REV:qra/kernels/
fourier_map.py > OLD.py``), imported as a sibling of ``qra.kernels.fourier_map`` so that its relative imports
resolve to this tree's helpers. At the attention benchmark's shape (B·N = 16,384, H = 12, d = 64, m = 128, bf16;
queries and keys seen through a transpose, as a patched layer's are; a per-head temperature on the queries) each
round times, for the other module's two calls (queries, keys), this tree's two single calls and its one call for
both at each ``--forward`` / ``--backward`` launch shape (rows, warps, stages, programs per SM and optionally a
register cap; the first is the default, the others varied one coordinate at a time): the forward, and the forward +
backward with given output gradients, in GPU ms from CUDA-graph replays and in wall ms (which at short lengths is
the host's time to issue the calls). The softmax mode's whole attention (the features, then SDPA at m = 128, as
``qra.attention`` runs it) is timed with either module too, beside SDPA at d = 64. Rounds alternate the contenders,
so that drift touches each alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from profiling import load_sibling, search_ms

from qra.kernels import fourier_map
from qra.kernels.fourier_linear import Launch


def parse_launch(text: str) -> Launch:
    """rows,warps,stages,programs per SM[,register cap]"""
    block, warps, stages, per_sm, *cap = (int(v) for v in text.split(","))
    return Launch(block, warps, stages=stages, per_sm=per_sm, max_registers=cap[0] if cap else None)


def contenders_at(length: int, other, forward: list[Launch], backward: list[Launch]) -> dict[str, dict]:
    """Every contender's forward and forward + backward steps at the benchmark's shape for ``length``."""
    dev = torch.device("cuda")
    torch.manual_seed(length)
    b, h, d, m = max(1, 16_384 // length), 12, 64, 128

    def layer_view() -> torch.Tensor:  # [B, N, H, d] seen as [B, H, N, d]
        x = torch.randn(b, length, h, d, device=dev, dtype=torch.bfloat16)
        return x.transpose(1, 2).requires_grad_()

    q, k, v = layer_view(), layer_view(), layer_view()
    weight, phase = torch.randn(m, d, device=dev) / 8, torch.rand(m, device=dev) * 2 * torch.pi
    scale = (2.0 / m) ** 0.5
    query_factors = scale * torch.linspace(0.5, 2.0, h, device=dev)
    key_factors = torch.full((h,), scale, device=dev)
    grads = [torch.randn(b, h, length, m, device=dev, dtype=torch.bfloat16) for _ in range(2)]
    v_grad = torch.randn(b, h, length, d, device=dev, dtype=torch.bfloat16)

    def two_calls(module):
        return lambda: (module.fused_fourier_features(q, weight, phase, query_factors),
                        module.fused_fourier_features(k, weight, phase, key_factors))  # fmt: skip

    def pair(fwd: Launch, bwd: Launch):
        def features():
            fourier_map.FORWARD_LAUNCH, fourier_map.BACKWARD_LAUNCH = fwd, bwd
            return fourier_map.fused_fourier_features(q, weight, phase, query_factors, k, key_factors)

        return features

    def steps(features) -> dict:
        def fwd() -> None:
            with torch.no_grad():
                features()

        def fwd_bwd() -> None:
            torch.autograd.grad(features(), (q, k), grads)

        return {"fwd": fwd, "fwd_bwd": fwd_bwd}

    def attention(features) -> dict:  # the softmax mode's call: features, then SDPA over them
        def fwd_bwd() -> None:
            fq, fk = features()
            out = F.scaled_dot_product_attention(fq, fk, v, scale=1.0)
            torch.autograd.grad(out, (q, k, v), v_grad)

        return {"fwd_bwd": fwd_bwd}

    defaults = forward[0], backward[0]

    def this_two_calls():
        fourier_map.FORWARD_LAUNCH, fourier_map.BACKWARD_LAUNCH = defaults
        return two_calls(fourier_map)()

    contenders = {"features: other, two calls": steps(two_calls(other)),
                  "features: this, two calls": steps(this_two_calls)}  # fmt: skip
    shapes = [(f, defaults[1]) for f in forward] + [(defaults[0], w) for w in backward[1:]]
    for fwd, bwd in shapes:
        contenders[f"features: this, one call, fwd {fwd}, bwd {bwd}"] = steps(pair(fwd, bwd))
    contenders["softmax attention: other's features"] = attention(two_calls(other))
    contenders["softmax attention: this tree's features"] = attention(pair(*defaults))
    contenders["sdpa at d = 64"] = {"fwd_bwd": lambda: torch.autograd.grad(
        F.scaled_dot_product_attention(q, k, v), (q, k, v), v_grad)}  # fmt: skip
    return contenders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--other", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--lengths", default="512,32768")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forward", nargs="+", default=["64,4,3,2"])
    parser.add_argument("--backward", nargs="+", default=["64,4,3,2"])
    args = parser.parse_args()
    other = load_sibling(args.other, "_other_fourier_map")
    forward, backward = [parse_launch(t) for t in args.forward], [parse_launch(t) for t in args.backward]
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "commit": os.environ.get("QRA_GIT_COMMIT", "unknown"), "other": args.other.name,
               "lengths": {}}  # fmt: skip
    for length in (int(n) for n in args.lengths.split(",")):
        contenders = contenders_at(length, other, forward, backward)
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in contenders}
        for number in range(args.rounds):
            names = list(contenders)
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                for step, call in contenders[name].items():
                    for timing in ("graph", "wall"):
                        samples[name].setdefault(f"{step} {timing}", []).append(search_ms(call, timing))
        medians = {name: {key: statistics.median(v) for key, v in times.items()} for name, times in samples.items()}
        results["lengths"][length] = {"median_ms": medians, "rounds_ms": samples}
        print(f"== N = {length}: medians of {args.rounds} rounds, ms (GPU from graph replays; wall)")
        for name, times in medians.items():
            print(f"   {name}: " + ", ".join(f"{key} {value:.4f}" for key, value in times.items()))
    fourier_map.FORWARD_LAUNCH, fourier_map.BACKWARD_LAUNCH = forward[0], backward[0]
    args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
