"""Launch shapes of the Fourier-feature passes side by side (``qra.kernels.fourier_map``).

Times the GPU's work (CUDA-graph replays, ``qra.experiment.bench.graph_time``) of the forward (φ of one
[B, H, N, d] tensor) and the backward (with and without the map's weight gradient) for rows per tile, warps and
programs per SM, at the attention benchmark's shape (B·N = 16,384, H = 12, d = 64, m = 128, bf16).  Run on the
GPU machine: ``python experiments/device/fourier_features_shapes.py``.
"""

from __future__ import annotations

import argparse

import torch
from profiling import search_ms

from qra.kernels import fourier_map
from qra.kernels.fourier_linear import Launch

CANDIDATES = [Launch(32, 8, per_sm=2), Launch(32, 8, per_sm=4), Launch(32, 4, per_sm=4), Launch(64, 8, per_sm=2),
              Launch(64, 4, per_sm=4), Launch(16, 4, per_sm=8), Launch(64, 4, per_sm=2), Launch(128, 8, per_sm=2),
              Launch(32, 4, per_sm=8), Launch(64, 8, per_sm=4)]  # fmt: skip


def sweep(length: int, device: torch.device) -> None:
    batch, heads, dim, features = max(1, 16_384 // length), 12, 64, 128
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, heads, length, dim, device=device, dtype=torch.bfloat16, generator=generator)
    weight = torch.randn(features, dim, device=device, generator=generator) / 8
    phase = torch.rand(features, device=device, generator=generator) * 6.283
    factors = torch.full((heads,), (2 / features) ** 0.5, device=device)
    grad = torch.randn(batch, heads, length, features, device=device, dtype=torch.bfloat16, generator=generator)
    defaults = fourier_map.FORWARD_LAUNCH, fourier_map.BACKWARD_LAUNCH
    print(f"== N = {length}, B = {batch}: GPU ms a call from CUDA-graph replays (defaults: forward {defaults[0]}, "
          f"backward {defaults[1]})")
    for launch in CANDIDATES:
        fourier_map.FORWARD_LAUNCH = fourier_map.BACKWARD_LAUNCH = launch
        row = []
        for weight_grad in (False, True):
            w = weight.clone().requires_grad_(weight_grad)
            leaf = x.clone().requires_grad_()

            def forward(w=w, leaf=leaf):
                return fourier_map.fused_fourier_features(leaf, w, phase, factors)

            def backward(w=w, leaf=leaf):
                torch.autograd.grad(forward(w, leaf), [leaf, w] if w.requires_grad else [leaf], grad)

            with torch.no_grad():
                time_forward = search_ms(forward)
            row.append(f"fwd+bwd{' with dW' if weight_grad else ''} {search_ms(backward):.3f}")
        print(f"   rows {launch.block:3d} warps {launch.warps} per SM {launch.per_sm}: fwd {time_forward:.3f}, "
              + ", ".join(row))  # fmt: skip
    fourier_map.FORWARD_LAUNCH, fourier_map.BACKWARD_LAUNCH = defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 32768])
    for length in parser.parse_args().lengths:
        sweep(length, torch.device("cuda"))


if __name__ == "__main__":
    main()
