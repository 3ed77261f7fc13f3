"""Launching Triton kernels with less host time than ``kernel[grid](...)``: the compiled kernel, called directly.

At the attention benchmark's short lengths the host, not the GPU, sets the pace: a launch through Triton's
JIT path took 29 µs of host time on the H200's host, the compiled kernel's own launcher 8.8 µs
(``results/bench/launch-cost-h200-d16892a.txt``).  The difference is Triton binding and specialising every
argument, building a cache key and looking up the device and stream on each call.

:func:`launch_kernel` keeps, per kernel, the compiled kernel that Triton's JIT path chose for a *cache key finer
than Triton's own*: the arguments' exact values, each tensor's dtype and 16-byte alignment (Triton
specialises on those, on ints being 1 or divisible by 16, and on constexprs), the launch options and the
device.  Equal keys therefore imply Triton's own choice, so the handle only runs arguments it was compiled
for.  The first call for a key, a call under Triton's CPU interpreter or while ``torch.compile`` traces (it
knows Triton's own launches), and any call while a launch hook is installed (Triton's profiler) go through
the JIT path.  Tensors reach the compiled launcher as their addresses, which also skips its per-pointer
``cuPointerGetAttribute``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from triton import knobs

#: cached compiled kernels per kernel; cleared past this many keys (distinct shapes) so memory stays bounded
MAX_KEYS = 512

_DIRECT = object()  # the JIT path returned no compiled kernel (the interpreter): never cache this key


class _Compiled:
    """A compiled kernel's launcher and what it needs besides the call's arguments."""

    __slots__ = ("constexprs", "function", "metadata", "run")

    def __init__(self, compiled, constexprs: tuple) -> None:
        self.run = compiled.run
        self.function = compiled.function
        self.metadata = compiled.packed_metadata
        self.constexprs = constexprs


_cache: dict[object, dict[tuple, _Compiled]] = {}


def _hooks_installed() -> bool:
    """Whether a launch hook is set (Triton's profiler): its launches must go through the JIT path."""
    runtime = knobs.runtime
    return any(getattr(hook, "calls", hook) for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook))


def _trailing_values(kernel, given: int, meta: dict) -> tuple | None:
    """The values of the kernel's parameters after the ``given`` positional ones, in signature order (the
    compiled launcher takes every parameter, constexprs too), or None when one is neither given nor
    defaulted."""
    values = []
    for param in kernel.params[given:]:
        if param.name in meta:
            values.append(meta[param.name])
        elif param.has_default:
            values.append(param.default)
        else:
            return None
    return tuple(values)


def _int_specialisation(value: object) -> object:
    """What Triton specialises an int argument on (being 1, divisibility by 16, fitting 32 bits); a float or
    bool as such (Triton does not specialise on their values)."""
    if value.__class__ is int:
        return value == 1, value % 16 == 0, -(2**31) <= value < 2**31
    return value.__class__


def launch_kernel(kernel, grid: Sequence[int], tensors: Sequence[torch.Tensor | None], scalars: Sequence[object],
           free: Sequence[int] = (), **meta: object) -> None:  # fmt: skip
    """``kernel[grid](*tensors, *scalars, **meta)`` through the compiled kernel when this exact call was seen
    before (module docstring).

    ``tensors``: the kernel's leading pointer parameters (None for an absent one); ``scalars``: the ints and
    floats after them; ``meta``: the remaining parameters (constexprs) and launch options such as
    ``num_warps``, by name.  ``free``: positions in ``scalars`` whose value changes from call to call (a
    dropout seed), keyed by what Triton specialises them on instead of their value.
    """
    if os.environ.get("TRITON_INTERPRET") == "1" or callable(grid) or torch.compiler.is_compiling():
        kernel[grid](*tensors, *scalars, **meta)
        return
    device = torch._C._cuda_getDevice()
    addresses = [None if t is None else t.data_ptr() for t in tensors]
    exact = tuple(_int_specialisation(v) if i in free else v for i, v in enumerate(scalars)) if free else scalars
    # the scalars' types too: 1, 1.0 and True are equal keys but different arguments to Triton
    key = (
        device,
        tuple(meta.items()),
        tuple(exact),
        tuple(map(type, scalars)),
        *[None if t is None else t.dtype for t in tensors],
        *[a is None or a & 15 == 0 for a in addresses],
    )
    known = _cache.get(kernel)
    compiled = None if known is None else known.get(key)
    if compiled is None or compiled is _DIRECT or _hooks_installed():
        _remember(kernel, key, kernel[grid](*tensors, *scalars, **meta), len(tensors) + len(scalars), meta)
        return
    x, y, z = (*grid, 1, 1)[:3]
    stream = torch._C._cuda_getCurrentRawStream(device)
    compiled.run(x, y, z, stream, compiled.function, compiled.metadata, None, None, None,
                 *addresses, *scalars, *compiled.constexprs)  # fmt: skip


def _remember(kernel, key: tuple, compiled, given: int, meta: dict) -> None:
    """Keep the compiled kernel the JIT path launched for ``key`` (or mark the key as JIT-only)."""
    known = _cache.setdefault(kernel, {})
    if len(known) >= MAX_KEYS:
        known.clear()
    trailing = _trailing_values(kernel, given, meta)
    if trailing is None or not all(hasattr(compiled, name) for name in ("run", "function", "packed_metadata")):
        known[key] = _DIRECT
        return
    known[key] = _Compiled(compiled, trailing)
