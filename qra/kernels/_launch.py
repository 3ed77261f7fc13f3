"""Launching Triton kernels with less host time than ``kernel[grid](...)``: the compiled kernel, called directly.

At the attention benchmark's short lengths the host, not the GPU, sets the pace: a launch through Triton's
JIT path took 29 µs of host time on the H200's host, the compiled kernel's own launcher 8.8 µs
(``results/bench/launch-cost-h200-d16892a.txt``).  The difference is Triton binding and specialising every
argument, building a cache key and looking up the device and stream on each call.  Inside the fused linear
call's step a launch took 47 µs through :func:`launch_kernel` and 14 µs bound in a plan
(``results/bench/host-breakdown-h200-round13.txt``): per-argument Python is what a launch costs there.

:func:`launch_kernel` keeps, per kernel, the compiled kernel that Triton's JIT path chose for a *cache key finer
than Triton's own*: the arguments' exact values, each tensor's dtype and 16-byte alignment (Triton
specialises on those, on ints being 1 or divisible by 16, and on constexprs), the launch options and the
device.  Equal keys therefore imply Triton's own choice, so the handle only runs arguments it was compiled
for.  The first call for a key, a call under Triton's CPU interpreter or while ``torch.compile`` traces (it
knows Triton's own launches), and any call while a launch hook is installed (Triton's profiler) go through
the JIT path.  :func:`prepare` goes one step further for a caller that keys its own calls (a launch plan per
input shape): it returns the launch bound to its compiled kernel, to be issued again with new tensors only.
Tensors reach the compiled launcher as their addresses, which also skips its per-pointer
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

#: Triton picks its CPU interpreter when a kernel is decorated, i.e. at import; so is this read
_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
_RUNTIME = knobs.runtime


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
    enter, exit_ = _RUNTIME.launch_enter_hook, _RUNTIME.launch_exit_hook
    return bool(getattr(enter, "calls", enter)) or bool(getattr(exit_, "calls", exit_))


def direct_launches() -> bool:
    """Whether launches may bypass Triton's JIT path now: not under the interpreter, not while ``torch.compile``
    traces, no launch hook installed."""
    return not (_INTERPRETING or torch.compiler.is_compiling() or _hooks_installed())


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
    if callable(grid) or not direct_launches():
        kernel[grid](*tensors, *scalars, **meta)
        return
    device = torch._C._cuda_getDevice()
    key, addresses = _key(device, tensors, scalars, free, meta)
    known = _cache.get(kernel)
    compiled = None if known is None else known.get(key)
    if compiled is None or compiled is _DIRECT:
        _remember(kernel, key, kernel[grid](*tensors, *scalars, **meta), len(tensors) + len(scalars), meta)
        return
    x, y, z = (*grid, 1, 1)[:3]
    stream = torch._C._cuda_getCurrentRawStream(device)
    compiled.run(x, y, z, stream, compiled.function, compiled.metadata, None, None, None,
                 *addresses, *scalars, *compiled.constexprs)  # fmt: skip


def _key(device: int, tensors: Sequence, scalars: Sequence, free: Sequence[int], meta: dict) -> tuple[tuple, list]:
    """(the cache key of a launch, its tensors' addresses): see the module docstring."""
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
    return key, addresses


class Prepared:
    """One launch bound to its compiled kernel, everything fixed but its tensors: ``prepared.launch(tensors)``
    issues the kernel on the current stream with none of :func:`launch_kernel`'s per-call work.

    Made by :func:`prepare`.  Only valid for tensors of the dtypes and 16-byte alignments it was prepared with
    and while :func:`direct_launches` holds: the caller's own cache key must cover both.
    """

    __slots__ = ("constexprs", "device", "function", "grid", "metadata", "run", "scalars")

    def __init__(self, compiled: _Compiled, grid: Sequence[int], scalars: Sequence[object], device: int) -> None:
        self.run, self.function, self.metadata = compiled.run, compiled.function, compiled.metadata
        self.grid = tuple((*grid, 1, 1)[:3])
        self.scalars, self.constexprs, self.device = tuple(scalars), compiled.constexprs, device

    def launch(self, tensors: Sequence[torch.Tensor | None]) -> None:
        x, y, z = self.grid
        self.run(x, y, z, torch._C._cuda_getCurrentRawStream(self.device), self.function, self.metadata, None,
                 None, None, *[None if t is None else t.data_ptr() for t in tensors], *self.scalars,
                 *self.constexprs)  # fmt: skip


def prepare(kernel, grid: Sequence[int], tensors: Sequence[torch.Tensor | None], scalars: Sequence[object],
            **meta: object) -> Prepared | None:  # fmt: skip
    """:func:`launch_kernel` (this call is issued), and the same launch bound to its compiled kernel for later
    calls with other tensors of the same dtypes and alignments; None where it cannot be bound (the
    interpreter, ``torch.compile`` tracing, a launch hook, a kernel Triton gave no compiled form of)."""
    launch_kernel(kernel, grid, tensors, scalars, **meta)
    if callable(grid) or not direct_launches():
        return None
    device = torch._C._cuda_getDevice()
    compiled = _cache.get(kernel, {}).get(_key(device, tensors, scalars, (), meta)[0])
    return Prepared(compiled, grid, scalars, device) if isinstance(compiled, _Compiled) else None


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


def layout(t: torch.Tensor | None) -> tuple | None:
    """What a kernel's scalars and Triton's specialisation can depend on in a tensor argument: its shape,
    strides, dtype and 16-byte alignment."""
    return None if t is None else (t.shape, t.stride(), t.dtype, t.data_ptr() & 15 == 0)


class LaunchPlan:
    """The launches of one fused call for one input layout, each bound once (:func:`prepare`) and then issued
    with its tensors alone: no grid, scalar or constexpr is formed again, no argument specialised again.

    A caller issues a launch with ``plan.issue(name, tensors)`` and, where that returns False (not bound yet),
    launches it through :func:`prepare` and keeps the result with ``plan.bind(name, prepared)``.  A launch's
    name must say everything its scalars depend on beyond the plan's key (e.g. a gradient's layout).
    """

    __slots__ = ("_bound",)

    def __init__(self) -> None:
        self._bound: dict[object, Prepared] = {}

    def issue(self, name: object, tensors: Sequence[torch.Tensor | None]) -> bool:
        bound = self._bound.get(name)
        if bound is None:
            return False
        bound.launch(tensors)
        return True

    def bind(self, name: object, prepared: Prepared | None) -> None:
        if prepared is not None:
            self._bound[name] = prepared


class LaunchPlans:
    """A call site's plans, by the current device, the call's settings and its input tensors' :func:`layout`.

    Sound when the scalars of every launch in the plan are functions of these (the buffers the call allocates
    itself have layouts fixed by the inputs' shapes, and PyTorch's allocator aligns every block to 512 bytes).
    Bounded: cleared past ``limit`` keys.  While :func:`direct_launches` does not hold, an unbound plan that is
    never kept.
    """

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._plans: dict[tuple, LaunchPlan] = {}

    def plan(self, tensors: Sequence[torch.Tensor | None], *settings: object) -> LaunchPlan:
        if not direct_launches():
            return LaunchPlan()
        key = (torch._C._cuda_getDevice(), settings, *[layout(t) for t in tensors])
        found = self._plans.get(key)
        if found is None:
            if len(self._plans) >= self.limit:
                self._plans.clear()
            found = self._plans[key] = LaunchPlan()
        return found
