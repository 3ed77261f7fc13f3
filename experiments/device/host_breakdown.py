"""Where the host's time goes when it issues the fused RFF linear call, by subtraction of stand-ins.

    python experiments/device/host_breakdown.py [--length 512] [--calls 300]

Each line is the host time to issue one step (the GPU synchronised before, not after: the time the benchmark's
CUDA events enclose when the host is the slower side), minimum / 25th percentile / median over ``--calls``:
    sdpa step                    fresh leaves, SDPA's forward, the benchmark's ``.float().sum()`` and backward
    linear step                  the same with qra's fused linear attention (kernel_attention, RFF, linear mode)
    linear step, no launches     the same with its bound launches (qra.kernels._launch) replaced by a no-op
    linear Function only         the autograd Function alone (prologue and dispatch skipped), forward + backward
    identity Function step       an autograd Function that returns its input: the Function and benchmark overhead
    plain step                   ``(v * 1).float().sum().backward()``: the benchmark's own ops
The host's share of a piece is the difference of two lines; all lines come from one process, interleaved in
rounds so that a drift of the host's speed touches each alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from profiling import benchmark_rows, interleaved_issue_us, quartile_table, shape_parser

from qra.kernels import _launch, fourier_linear


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def main() -> None:
    parser = shape_parser()
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    (_, linear, (q, k, v)), = benchmark_rows(["linear-fused"], args.length, args.tokens, args.heads)  # fmt: skip
    from qra.featuremaps import get

    rff = get("rff", d_in=q.shape[-1], m=128).to(q.device)
    prologue = rff.fourier_prologue()

    def leaves() -> list[torch.Tensor]:  # fresh leaves each step, as the benchmark's step makes them
        return [t.detach().requires_grad_() for t in (q, k, v)]

    def sdpa() -> None:
        F.scaled_dot_product_attention(*leaves()).float().sum().backward()

    def linear_step() -> None:
        linear(*leaves()).float().sum().backward()

    def function_only() -> None:
        out = fourier_linear._FourierLinearAttention.apply(*leaves(), prologue.weight, prologue.phase, None,
                                                           prologue.scale, 1e-6, True)  # fmt: skip
        out.float().sum().backward()

    def identity() -> None:
        _Identity.apply(leaves()[2]).float().sum().backward()

    def plain() -> None:
        (leaves()[2] * 1).float().sum().backward()

    bound_launch = _launch.Prepared.launch

    def no_launches() -> None:  # after the warm-up every launch of the call is a bound one
        _launch.Prepared.launch = lambda self, tensors: None
        try:
            linear_step()
        finally:
            _launch.Prepared.launch = bound_launch

    steps: dict[str, Callable[[], None]] = {
        "sdpa step": sdpa,
        "linear step": linear_step,
        "linear step, no launches": no_launches,
        "linear Function only": function_only,
        "identity Function step": identity,
        "plain step": plain,
    }
    times = interleaved_issue_us(steps, args.calls)
    print(torch.cuda.get_device_name(), torch.__version__, f"N = {args.length}, {args.calls} calls; host µs to issue",
          flush=True)  # fmt: skip
    print(quartile_table(times), flush=True)
    inside_the_launcher(linear_step, args.calls)


def inside_the_launcher(step: Callable[[], None], calls: int) -> None:
    """Median µs a launch spends in its bound launch (``Prepared.launch``) and, within it, in the compiled
    kernel's own launcher, and how many launches were not bound (went through ``prepare``), over ``calls`` steps."""
    spent: dict[str, list[float]] = {"Prepared.launch": [], "compiled launcher (run)": []}
    unbound = [0]
    bound_launch, original_prepare = _launch.Prepared.launch, fourier_linear.prepare

    def counting_prepare(*args, **kwargs):
        unbound[0] += 1
        return original_prepare(*args, **kwargs)

    def timed(self, tensors) -> None:
        run = self.run

        def inner(*args) -> None:
            begin = time.perf_counter()
            run(*args)
            spent["compiled launcher (run)"].append((time.perf_counter() - begin) * 1e6)

        self.run = inner
        start = time.perf_counter()
        try:
            bound_launch(self, tensors)
            spent["Prepared.launch"].append((time.perf_counter() - start) * 1e6)
        finally:
            self.run = run

    _launch.Prepared.launch, fourier_linear.prepare = timed, counting_prepare
    try:
        for _ in range(calls):
            torch.cuda.synchronize()
            step()
    finally:
        _launch.Prepared.launch, fourier_linear.prepare = bound_launch, original_prepare
    torch.cuda.synchronize()
    for name, values in spent.items():
        print(f"{name:28s} median {statistics.median(values):8.1f} µs over {len(values)} launches", flush=True)
    print(f"launches not yet bound (through prepare): {unbound[0]} of {4 * calls}", flush=True)


if __name__ == "__main__":
    main()
