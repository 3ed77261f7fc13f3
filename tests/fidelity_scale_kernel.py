"""A test-only Triton kernel that stores fidelity.gradient_scale per head (the backward kernels compute it
inline, so nothing else exposes it).  Imported by the GPU tests only: it needs Triton."""

import triton
import triton.language as tl

from qra.kernels.fidelity import gradient_scale


@triton.jit
def gradient_scales_kernel(NORMS_QK, NORMS_OV, BETA, OUT, H, keep_scale, BH: tl.constexpr):
    offs = tl.arange(0, BH)
    beta = tl.load(BETA + offs, mask=offs < H, other=0.0)
    tl.store(OUT + offs, gradient_scale(NORMS_QK, NORMS_OV, beta, keep_scale), mask=offs < H)
