"""What one Triton launch costs the host, piece by piece: why a launch of a qra kernel takes tens of µs.

    python experiments/device/launch_cost.py [--length 512]

Triton's generated launcher turns every tensor argument into a device pointer by calling its ``data_ptr()``
and then ``cuPointerGetAttribute`` on it, a driver call per pointer on each launch; an int argument is taken
as the pointer itself.  This times, at the attention benchmark's shape, the linear output kernel (six
pointers) launched (1) through ``kernel[grid](...)``, (2) through qra's launcher
(:func:`qra.kernels._launch.launch_kernel`), (3) through the compiled kernel's handle with the same tensors
and (4) with the tensors' ``data_ptr()`` ints, beside one ``cuPointerGetAttribute`` call alone (ctypes), the
tensors' ``data_ptr()`` calls, a stream lookup, one small PyTorch kernel and an empty Python call.  Median µs of host
time over 200 calls, the GPU synchronised outside the timed span every 20 calls.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable

import torch
from profiling import output_kernel_call, shape_parser
from triton.runtime import driver

from qra.kernels import fourier_linear
from qra.kernels._launch import launch_kernel

CALLS, BURST = 200, 20


def issue_us(step: Callable[[], object]) -> float:
    """Median µs of host time per call of ``step``, timed in bursts so the GPU's queue never fills."""
    times = []
    for _ in range(5):
        step()
    for _ in range(CALLS // BURST):
        torch.cuda.synchronize()
        for _ in range(BURST):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = shape_parser()
    args = parser.parse_args()
    grid, tensors, scalars, meta, options = output_kernel_call(args.length, args.tokens, args.heads)
    dev = tensors[0].device
    compiled = fourier_linear._out_kernel[grid](*tensors, *scalars, **meta, **options)
    constexprs = [meta[name] for name in fourier_linear._out_kernel.arg_names[len(tensors) + len(scalars) :]]
    stream = driver.active.get_current_stream(driver.active.get_current_device())
    run = compiled.run  # the generated C launcher

    def through_handle(pointers: list[object]) -> Callable[[], None]:
        def step() -> None:
            run(grid[0], grid[1], 1, stream, compiled.function, compiled.packed_metadata, None, None, None,
                *pointers, *scalars, *constexprs)  # fmt: skip

        return step

    libcuda = ctypes.CDLL("libcuda.so.1")
    resolved, address = ctypes.c_uint64(), ctypes.c_uint64(tensors[0].data_ptr())

    def pointer_attribute() -> None:
        libcuda.cuPointerGetAttribute(ctypes.byref(resolved), 2, address)  # CU_POINTER_ATTRIBUTE_DEVICE_POINTER

    def jit_path() -> None:
        fourier_linear._out_kernel[grid](*tensors, *scalars, **meta, **options)

    small = torch.zeros(16, device=dev)
    operations = {
        "kernel[grid](...) (Triton's JIT path)": jit_path,
        "qra.kernels._launch.launch_kernel": lambda: launch_kernel(
            fourier_linear._out_kernel, grid, tensors, scalars, **meta, **options
        ),
        "compiled handle, tensor pointers": through_handle(tensors),
        "compiled handle, int pointers": through_handle([t.data_ptr() for t in tensors]),
        "cuPointerGetAttribute, one call": pointer_attribute,
        "tensor.data_ptr(), six calls": lambda: [t.data_ptr() for t in tensors],
        "torch.cuda.current_stream()": torch.cuda.current_stream,
        "small.add_(1) (one PyTorch kernel)": lambda: small.add_(1),
        "an empty Python call": lambda: None,
    }
    print(torch.cuda.get_device_name(), torch.__version__, f"N = {args.length}, B = {tensors[0].shape[0]}", flush=True)
    for label, step in operations.items():
        print(f"{label:44s} {issue_us(step):8.1f} µs", flush=True)


if __name__ == "__main__":
    main()
