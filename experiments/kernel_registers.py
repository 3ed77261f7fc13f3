"""Registers, spills and shared memory of the fused RFF linear-attention kernels for sm_90, without a GPU.

    python experiments/kernel_registers.py [--kernels state,out,whole,bwd_q,bwd_k,whole_bwd]
        [--shapes 32,8,3 64,4,3,128] [--products pair single]

Each shape is rows per tile, warps, pipeline stages and optionally a register cap (Triton's ``maxnreg``).  Triton
compiles the kernel for an H100/H200 (``GPUTarget("cuda", 90, 32)``) at the attention benchmark's sizes (d = 64,
m = 128, value dim 64, bf16) and the ptxas that ships with Triton reports what the binary uses; no device is
needed, so launch shapes can be screened for occupancy before the GPU machine times them.  ``--products``: the
kernels' bf16 products of fp32 tiles as hi + lo pairs or single (``SPLIT_PRODUCTS``).
An SM has 65,536 registers: a thread using 255 leaves room for one 8-warp or two 4-warp programs.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from qra.kernels import fourier_linear

BF16, FP32, BYTE = "*bf16", "*fp32", "*u8"
KERNELS = {
    "state": (fourier_linear._state_kernel, dict(K=BF16, V=BF16, MASK=BYTE, W=FP32, B=FP32, S=FP32, Z=FP32),
              dict(HAS_MASK=False)),
    "out": (fourier_linear._out_kernel, dict(Q=BF16, W=FP32, B=FP32, S=FP32, Z=FP32, OUT=BF16), {}),
    "bwd_q": (fourier_linear._bwd_q_kernel, dict(Q=BF16, G=BF16, W=FP32, B=FP32, S=FP32, Z=FP32, DQ=BF16, DS=FP32,
                                                 DZ=FP32, DW=FP32, DB=FP32), dict(WEIGHT_GRAD=False)),
    "bwd_k": (fourier_linear._bwd_k_kernel, dict(K=BF16, V=BF16, MASK=BYTE, W=FP32, B=FP32, DS=FP32, DZ=FP32, DK=BF16,
                                                 DV_=BF16, DW=FP32, DB=FP32), dict(HAS_MASK=False, WEIGHT_GRAD=False)),
    "whole": (fourier_linear._whole_forward_kernel, dict(Q=BF16, K=BF16, V=BF16, MASK=BYTE, W=FP32, B=FP32, S=FP32,
                                                         Z=FP32, OUT=BF16), dict(HAS_MASK=False, STORE_STATE=True)),
    "whole_bwd": (fourier_linear._whole_backward_kernel, dict(Q=BF16, K=BF16, V=BF16, MASK=BYTE, G=BF16, W=FP32,
                                                              B=FP32, S=FP32, Z=FP32, DQ=BF16, DK=BF16, DV_=BF16,
                                                              DW=FP32, DB=FP32), dict(HAS_MASK=False,
                                                                                      WEIGHT_GRAD=False)),
}  # fmt: skip
SIZES = dict(BD=64, BF=128, BV=64, LOWP=True, PREC="tf32", FAST=True)
PRODUCTS = {"pair": True, "single": False}
FLOAT_SCALARS = ("scale", "eps")


def resources(
    name: str, block: int, warps: int, stages: int, max_registers: int | None, split_products: bool = False
) -> dict:
    """ptxas's registers a thread and spill bytes, Triton's shared memory bytes, and whether wgmma is used."""
    kernel, pointers, flags = KERNELS[name]
    constexprs = dict(SIZES, BN=block, SPLIT_PRODUCTS=split_products, **flags)
    signature = {p.name: "constexpr" if p.name in constexprs else pointers.get(p.name) or
                 ("fp32" if p.name in FLOAT_SCALARS else "i32") for p in kernel.params}  # fmt: skip
    options = dict(num_warps=warps, num_stages=stages, **({"maxnreg": max_registers} if max_registers else {}))
    compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                              options=options)  # fmt: skip
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
        ptx.write(compiled.asm["ptx"])
        ptx.flush()
        report = subprocess.run([ptxas, "-arch=sm_90a", "-v", ptx.name, "-o", os.devnull], capture_output=True,
                                text=True, check=True).stderr  # fmt: skip
    spills = re.search(r"(\d+) bytes spill stores", report)
    return {"registers": int(re.search(r"Used (\d+) registers", report).group(1)),
            "spill_bytes": int(spills.group(1)) if spills else 0, "shared_bytes": compiled.metadata.shared,
            "wgmma": "wgmma" in compiled.asm["ptx"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument("--shapes", nargs="+", default=["32,8,3", "64,4,3", "128,8,3", "32,8,3,128"])
    parser.add_argument("--products", nargs="+", default=["single"], choices=tuple(PRODUCTS))
    args = parser.parse_args()
    for name in args.kernels.split(","):
        for shape in args.shapes:
            block, warps, stages, *cap = (int(value) for value in shape.split(","))
            for products in args.products:
                found = resources(name, block, warps, stages, cap[0] if cap else None, PRODUCTS[products])
                print(f"{name:6s} rows {block:3d} warps {warps} stages {stages} cap {cap[0] if cap else '-':>3} "
                      f"products {products}: {found}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
