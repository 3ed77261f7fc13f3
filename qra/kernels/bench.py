"""Quick timing of the fused kernels against SDPA: ``python -m qra.kernels.bench`` (CUDA only).

Forward + backward, bf16, B·N = 16,384 tokens (B = 1 beyond), H = 12, d = 64, m = 128.
"""

from __future__ import annotations

import sys

import torch
from torch.nn import functional as F


def _time(fn, *inputs) -> float:
    import triton.testing

    def step():
        out = fn(*inputs)
        torch.autograd.grad(out, inputs, torch.ones_like(out))

    return triton.testing.do_bench(step, warmup=10, rep=50)


def main(lengths=(512, 2048, 32768)) -> None:
    from . import fidelity_attention, linear_attention, softmax_attention

    dev, dt, heads, d, m = "cuda", torch.bfloat16, 12, 64, 128
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  fwd+bwd ms, bf16, H={heads} d={d} m={m}")
    for n in lengths:
        b = max(1, 16384 // n)

        def rand(*shape, dtype=dt, b=b, n=n):
            return torch.randn(b, heads, n, *shape, device=dev, dtype=dtype).requires_grad_()

        q, k, v = rand(d), rand(d), rand(d)
        fq, fk = (rand(m).detach().abs() * 0.1).requires_grad_(), (rand(m).detach().abs() * 0.1).requires_grad_()
        row = {"sdpa": _time(F.scaled_dot_product_attention, q, k, v)}
        row["linear"] = _time(linear_attention, fq, fk, v)
        row["softmax"] = _time(softmax_attention, fq, fk, v)
        if n <= 2048:
            sq, sk = rand(64, dtype=torch.complex64), rand(64, dtype=torch.complex64)
            row["fidelity_6q"] = _time(lambda a, c, w: fidelity_attention(a, c, w, beta=8.0), sq, sk, v)
        sdpa = row["sdpa"]
        print(f"N={n:6d} B={b:3d} " + "  ".join(f"{key} {ms:.3f} ({ms / sdpa:.2f}x)" for key, ms in row.items()))
        sys.stdout.flush()


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or (512, 2048, 32768))
