"""Where the host's time goes when it issues the fused RFF linear call, by subtraction of stand-ins.

    python experiments/device/host_breakdown.py [--length 512] [--calls 300]

Each line is the host time to issue one step (the GPU synchronised before, not after: the time the benchmark's
CUDA events enclose when the host is the slower side), minimum / 25th percentile / median over ``--calls``:
    sdpa step                    fresh leaves, SDPA's forward, the benchmark's ``.float().sum()`` and backward
    linear step                  the same with qra's fused linear attention (kernel_attention, RFF, linear mode)
    linear step, no launches     the same with qra's kernel launcher replaced by a no-op: all but the launches
    linear Function only         the autograd Function alone (prologue and dispatch skipped), forward + backward
    identity Function step       an autograd Function that returns its input: the Function and benchmark overhead
    plain step                   ``(v * 1).float().sum().backward()``: the benchmark's own ops
The host's share of a piece is the difference of two lines; all lines come from one process, interleaved in
rounds so that a drift of the host's speed touches each alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from profiling import benchmark_rows

from qra.kernels import fourier_linear


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--heads", type=int, default=12)
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

    launcher = fourier_linear.launch_kernel

    def no_launches() -> None:
        fourier_linear.launch_kernel = lambda *a, **kw: None
        try:
            linear_step()
        finally:
            fourier_linear.launch_kernel = launcher

    steps: dict[str, Callable[[], None]] = {
        "sdpa step": sdpa,
        "linear step": linear_step,
        "linear step, no launches": no_launches,
        "linear Function only": function_only,
        "identity Function step": identity,
        "plain step": plain,
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():
        for _ in range(10):
            step()
    for _ in range(args.calls):  # rounds: each step once a round
        for name, step in steps.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - start) * 1e6)
    torch.cuda.synchronize()
    print(torch.cuda.get_device_name(), torch.__version__, f"N = {args.length}, {args.calls} calls; host µs to issue",
          flush=True)  # fmt: skip
    print(f"{'':28s} {'min':>8s} {'p25':>8s} {'median':>8s}")
    for name, values in times.items():
        quartiles = statistics.quantiles(values, n=4)
        print(f"{name:28s} {min(values):8.1f} {quartiles[0]:8.1f} {quartiles[1]:8.1f}", flush=True)
    inside_the_launcher(linear_step, args.calls)


def inside_the_launcher(step: Callable[[], None], calls: int) -> None:
    """Median µs a launch spends in qra's launcher, in the compiled kernel's own launcher within it, and how many
    launches took Triton's JIT path, over ``calls`` steps (each step's four launches)."""
    from qra.kernels import _launch

    spent: dict[str, list[float]] = {"launch_kernel": [], "compiled launcher (run)": []}
    jit_paths = [0]
    original_remember = _launch._remember

    def counting_remember(*a, **kw):
        jit_paths[0] += 1
        return original_remember(*a, **kw)

    def timed(kernel, grid, tensors, scalars, free=(), **meta):
        key_cache = _launch._cache.get(kernel, {})
        runs = {id(c): c.run for c in key_cache.values() if isinstance(c, _launch._Compiled)}
        inner = []
        for compiled in key_cache.values():
            if isinstance(compiled, _launch._Compiled):
                original = runs[id(compiled)]

                def run(*a, original=original):
                    begin = time.perf_counter()
                    original(*a)
                    inner.append((time.perf_counter() - begin) * 1e6)

                compiled.run = run
        start = time.perf_counter()
        try:
            _launch.launch_kernel(kernel, grid, tensors, scalars, free, **meta)
            spent["launch_kernel"].append((time.perf_counter() - start) * 1e6)
        finally:
            for compiled in key_cache.values():
                if isinstance(compiled, _launch._Compiled):
                    compiled.run = runs[id(compiled)]
        spent["compiled launcher (run)"].extend(inner)

    _launch._remember = counting_remember
    fourier_linear.launch_kernel = timed
    try:
        for _ in range(calls):
            torch.cuda.synchronize()
            step()
    finally:
        fourier_linear.launch_kernel = _launch.launch_kernel
        _launch._remember = original_remember
    torch.cuda.synchronize()
    for name, values in spent.items():
        print(f"{name:28s} median {statistics.median(values):8.1f} µs over {len(values)} launches", flush=True)
    print(f"launches through Triton's JIT path: {jit_paths[0]} of {4 * calls}", flush=True)


if __name__ == "__main__":
    main()
