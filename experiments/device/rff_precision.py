"""What the RFF kernels' split bf16 products cost and buy: GPU time and error, side by side, in one run.

    python experiments/device/rff_precision.py --output rff-precision.json [--lengths 512,32768]

With bf16 inputs the fused RFF kernels (:mod:`qra.kernels.fourier_linear`, the linear mode; and
:mod:`qra.kernels.fourier_map`, the feature pass the softmax mode hands to SDPA) can enter their fp32
intermediates (S, dS, g/d, dp) into tensor-core products as bf16 hi + lo pairs (``SPLIT_PRODUCTS``), two
products where one would do, or rounded to bf16 once.  For both settings this times
``qra bench attention``'s rows (``linear-fused``, ``softmax-fused``, next to ``sdpa``; forward + backward of
``out.float().sum()``, GPU ms from CUDA-graph replays) and the feature pass alone, and measures the errors of the
output and of every gradient against a float64 evaluation of the same formula, beside the errors of the PyTorch
path a user gets without the kernels (bf16 inputs, fp32 math) and of SDPA's own bf16 result against float64.
Errors: max |a − e| / max |e| and ‖a − e‖ / ‖e‖ per tensor, at σ = 8 and σ = 2.  (Round 17's run, at 3007596,
also tried W rounded once in the angles' product; that setting failed the tests' bf16 tolerance and is gone.)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import triton
from profiling import FEATURES, HEAD_DIM, benchmark_rows, search_ms

from qra import kernels
from qra.kernels import fourier_linear, reference

SETTINGS = (True, False)  # SPLIT_PRODUCTS


def errors(actual: list[torch.Tensor], expected: list[torch.Tensor], names: tuple[str, ...]) -> dict:
    """{name: {"max": max-abs error over max |e|, "rms": ‖a − e‖ / ‖e‖}} against float64 ``expected``."""
    out = {}
    for name, a, e in zip(names, actual, expected, strict=True):
        diff = a.double() - e
        out[name] = {"max": (diff.abs().max() / e.abs().max()).item(), "rms": (diff.norm() / e.norm()).item()}
    return out


def evaluated(function, inputs: list[torch.Tensor], grad_out: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """[output, its gradients with respect to ``inputs``] for the upstream ``grad_out``: the [B, H, N, ·] inputs in
    ``dtype``, the others (a per-head factor) in float32, or everything in float64."""
    exact = dtype == torch.float64
    leaves = [t.detach().to(dtype if exact or t.dim() == 4 else torch.float32).requires_grad_() for t in inputs]
    out = function(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad_out.to(out.dtype))]


def linear_errors(batch: int, heads: int, length: int, sigma: float) -> dict:
    """The fused linear attention (current settings), and the PyTorch path, against float64, with a padding mask."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(batch, heads, length, HEAD_DIM, device="cuda", generator=g) for _ in range(3))
    weight = torch.randn(FEATURES, HEAD_DIM, device="cuda", generator=g) / sigma
    phase = torch.rand(FEATURES, device="cuda", generator=g) * 2 * torch.pi
    lengths = torch.randint(length // 4, length + 1, (batch, 1), device="cuda", generator=g)
    mask = torch.arange(length, device="cuda")[None, :] < lengths  # padded sequences, as in a batch of reviews
    grad_out = torch.randn(batch, heads, length, HEAD_DIM, device="cuda", generator=g)
    scale = (2.0 / FEATURES) ** 0.5
    q, k, v = (t.bfloat16().double() for t in (q, k, v))  # the bf16 inputs every evaluation sees

    def fused(q, k, v):
        return kernels.fourier_linear_attention(q, k, v, weight, phase, scale, mask)

    def pytorch(q, k, v):
        in_float64 = q.dtype == torch.float64
        return reference.fourier_linear_attention(q, k, v, *(t.double() if in_float64 else t for t in (weight, phase)),
                                                  scale, mask)  # fmt: skip

    exact = evaluated(pytorch, [q, k, v], grad_out, torch.float64)
    names = ("out", "dq", "dk", "dv")
    return {"fused": errors(evaluated(fused, [q, k, v], grad_out, torch.bfloat16), exact, names),
            "pytorch": errors(evaluated(pytorch, [q, k, v], grad_out, torch.bfloat16), exact, names)}  # fmt: skip


def feature_errors(batch: int, heads: int, length: int, sigma: float) -> dict:
    """The fused feature pass with a per-head factor that requires grad (the softmax temperature), and the PyTorch
    path, against float64."""
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(batch, heads, length, HEAD_DIM, device="cuda", generator=g).bfloat16().double()
    weight = torch.randn(FEATURES, HEAD_DIM, device="cuda", generator=g) / sigma
    phase = torch.rand(FEATURES, device="cuda", generator=g) * 2 * torch.pi
    beta = 1.0 + torch.rand(heads, device="cuda", generator=g)
    grad_out = torch.randn(batch, heads, length, FEATURES, device="cuda", generator=g)
    scale = (2.0 / FEATURES) ** 0.5

    def fused(x, beta):
        return kernels.fourier_features(x, weight, phase, scale, beta)

    def pytorch(x, beta):
        in_float64 = x.dtype == torch.float64
        return reference.fourier_features(x, *(t.double() if in_float64 else t for t in (weight, phase)), scale, beta)

    exact = evaluated(pytorch, [x, beta.double()], grad_out, torch.float64)
    names = ("features", "dx", "dbeta")
    fused_run = evaluated(fused, [x, beta], grad_out, torch.bfloat16)
    return {"fused": errors(fused_run, exact, names),
            "pytorch": errors(evaluated(pytorch, [x, beta], grad_out, torch.bfloat16), exact, names)}  # fmt: skip


def sdpa_errors(batch: int, heads: int, length: int) -> dict:
    """SDPA's bf16 result against its own float64 evaluation: the error users accept from softmax attention."""
    g = torch.Generator(device="cuda").manual_seed(2)
    q, k, v, grad_out = (torch.randn(batch, heads, length, HEAD_DIM, device="cuda", generator=g) for _ in range(4))
    q, k, v = (t.bfloat16().double() for t in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    exact = evaluated(sdpa, [q, k, v], grad_out, torch.float64)
    return errors(evaluated(sdpa, [q, k, v], grad_out, torch.bfloat16), exact, ("out", "dq", "dk", "dv"))


def feature_pass_step(length: int, tokens: int, heads: int):
    """One forward + backward of the fused feature pass at the benchmark's shape, β requiring grad."""
    x = torch.randn(max(1, tokens // length), heads, length, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    x.requires_grad_()
    weight, phase = torch.randn(FEATURES, HEAD_DIM, device="cuda") / 8, torch.rand(FEATURES, device="cuda") * 6.28
    beta = torch.ones(heads, device="cuda", requires_grad=True)

    def step() -> None:
        out = kernels.fourier_features(x, weight, phase, (2.0 / FEATURES) ** 0.5, beta)
        torch.autograd.grad(out.float().sum(), (x, beta))

    return step


def timed_rows(length: int, tokens: int, heads: int) -> dict:
    """GPU ms of the benchmark's rows and of the feature pass, forward + backward, at the current settings."""
    times = {}
    for name, attention, leaves in benchmark_rows(["sdpa", "linear-fused", "softmax-fused"], length, tokens, heads):

        def step(attention=attention, leaves=leaves) -> None:
            torch.autograd.grad(attention(*leaves).float().sum(), leaves)

        times[name] = search_ms(step)
    times["feature-pass"] = search_ms(feature_pass_step(length, tokens, heads))
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="512,32768")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds over the two settings")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    result = {
        "command": "python experiments/device/rff_precision.py " + " ".join(
            f"--{name.replace('_', '-')} {value}" for name, value in vars(args).items() if name != "output"),
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
        "commit": os.environ.get("QRA_GIT_COMMIT"), "dtype": "bfloat16", "timing": "graph",
        "shape": {"tokens": args.tokens, "H": args.heads, "d": HEAD_DIM, "m": FEATURES},
        "errors": {"sdpa": sdpa_errors(4, args.heads, 512)}, "times": [],
    }  # fmt: skip
    for split_products in SETTINGS:
        fourier_linear.SPLIT_PRODUCTS = split_products
        label = f"products {'pair' if split_products else 'single'}"
        result["errors"][label] = {
            f"sigma {sigma:g}": {"linear": linear_errors(4, args.heads, 512, sigma),
                                 "features": feature_errors(4, args.heads, 512, sigma)}
            for sigma in (8.0, 2.0)
        }  # fmt: skip
        print(label, json.dumps(result["errors"][label]["sigma 8"]), flush=True)
    for round_ in range(args.rounds):
        for length in lengths:
            for split_products in SETTINGS:
                fourier_linear.SPLIT_PRODUCTS = split_products
                row = {"round": round_, "N": length, "split_products": split_products,
                       "ms": timed_rows(length, args.tokens, args.heads)}  # fmt: skip
                result["times"].append(row)
                print(json.dumps(row), flush=True)
    args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
