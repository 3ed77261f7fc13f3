"""SDPA's backends when queries and keys are wider than values: which one the RFF softmax mode should call.

The softmax mode hands SDPA β·φ(q), φ(k) of m = 128 features and values of d = 64.  PyTorch's flash backend needs
one head dim for all three; cuDNN and the memory-efficient backend may take unequal ones, and zero-padding the
values to m makes flash possible at the price of wider value products.  This times each choice, forward +
backward, against SDPA at d = 64 (the attention being replaced), with and without a key padding mask, at the
attention benchmark's shapes (B·N = 16,384, H = 12, bf16).  Run on the GPU machine:
``python experiments/device/sdpa_head_dims.py``.
"""

from __future__ import annotations

import argparse

import torch
from profiling import wall_ms
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"default": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "flash": SDPBackend.FLASH_ATTENTION}  # fmt: skip


def attention(backend: str, pad_values: bool):
    def call(q, k, v, mask):
        values = F.pad(v, (0, q.shape[-1] - v.shape[-1])) if pad_values else v
        if BACKENDS[backend] is None:
            out = F.scaled_dot_product_attention(q, k, values, attn_mask=mask, scale=1.0)
        else:
            with sdpa_kernel(BACKENDS[backend]):
                out = F.scaled_dot_product_attention(q, k, values, attn_mask=mask, scale=1.0)
        return out[..., : v.shape[-1]]

    return call


def timed(call, q, k, v, mask) -> str:
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]

    def step():
        call(*leaves, mask).float().sum().backward()

    try:
        return f"{wall_ms(step):7.3f}"
    except RuntimeError as failure:
        return f"  ({str(failure).splitlines()[0][:60]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 32768])
    parser.add_argument("--features", type=int, default=128)
    arguments = parser.parse_args()
    device, dtype, heads, head_dim = torch.device("cuda"), torch.bfloat16, 12, 64
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; wall ms a forward + backward call "
          f"(medians of 10 after 3 warm-ups), q, k [B, 12, N, {arguments.features}], v [B, 12, N, {head_dim}], bf16")
    for length in arguments.lengths:
        batch = max(1, 16_384 // length)
        generator = torch.Generator(device=device).manual_seed(length)
        shape = (batch, heads, length)
        q, k, v, q64, k64 = (torch.randn(*shape, width, device=device, dtype=dtype, generator=generator)
                             for width in (arguments.features, arguments.features, head_dim, head_dim, head_dim))
        keep = torch.ones(batch, length, dtype=torch.bool, device=device)
        keep[: batch // 2, length * 3 // 4 :] = False
        for masked in (False, True):
            mask = keep[:, None, None, :] if masked else None
            print(f"== N = {length}, B = {batch}, {'key padding mask' if masked else 'no mask'}")
            baseline = timed(attention("default", False), q64, k64, v, mask)
            print(f"   SDPA at d = {head_dim}, default backend: {baseline}")
            for backend in BACKENDS:
                for pad in (False, True):
                    label = f"{backend}{', values padded' if pad else ''}"
                    print(f"   m = {arguments.features}, {label:26s}: {timed(attention(backend, pad), q, k, v, mask)}")


if __name__ == "__main__":
    main()
