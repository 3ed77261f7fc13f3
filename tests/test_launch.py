"""qra.kernels._launch.launch_kernel: which calls reuse a compiled kernel and which go through Triton's JIT path.

A stand-in kernel records both paths, so these run without a GPU; the kernels' own tests (tests/test_kernels.py,
on the GPU machine) run every launch site through the launcher against the PyTorch path.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")

from triton import knobs

from qra.kernels import _launch


class _Param:
    def __init__(self, name: str, default: object = None, has_default: bool = False) -> None:
        self.name, self.default, self.has_default = name, default, has_default


class FakeKernel:
    """A JIT function's surface: ``params``, ``kernel[grid](*args, **meta)`` returning a compiled kernel whose
    ``run`` records the arguments the direct path passes."""

    def __init__(self, names: list[str], defaults: dict[str, object] | None = None) -> None:
        defaults = defaults or {}
        self.params = [_Param(n, defaults.get(n), n in defaults) for n in names]
        self.jit_calls: list[tuple] = []
        self.direct_calls: list[tuple] = []
        self.compiled = SimpleNamespace(run=self._run, function="function", packed_metadata="metadata")

    def _run(self, *args: object) -> None:
        self.direct_calls.append(args)

    def __getitem__(self, grid):
        def jit(*args: object, **meta: object) -> object:
            self.jit_calls.append((grid, args, meta))
            return self.compiled

        return jit


@pytest.fixture(autouse=True)
def cuda_stand_ins(monkeypatch):
    """Device 0 and stream 7 for the launcher's lookups; a clean cache; not under the interpreter."""
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 0, raising=False)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 7, raising=False)
    monkeypatch.setattr(_launch, "_INTERPRETING", False)
    monkeypatch.setattr(_launch, "_cache", {})


def _kernel() -> FakeKernel:
    return FakeKernel(["X", "OUT", "n", "scale", "seed", "BLOCK", "FLAG"], defaults={"FLAG": False})


def test_second_identical_call_runs_the_compiled_kernel_with_addresses_and_constexprs():
    kernel, x, out = _kernel(), torch.zeros(64), torch.zeros(64)
    for _ in range(2):
        _launch.launch_kernel(kernel, (3, 2), (x, out), (64, 0.5, 5), BLOCK=32, num_warps=4)
    assert len(kernel.jit_calls) == 1
    grid, args, meta = kernel.jit_calls[0]
    assert grid == (3, 2) and args == (x, out, 64, 0.5, 5) and meta == {"BLOCK": 32, "num_warps": 4}
    # grid padded to three dims, the stream, the handle and metadata, no launch metadata or hooks, then every
    # parameter in signature order: tensors as addresses, the constexprs given and the defaulted one
    assert kernel.direct_calls == [
        (3, 2, 1, 7, "function", "metadata", None, None, None, x.data_ptr(), out.data_ptr(), 64, 0.5, 5, 32, False)
    ]


@pytest.mark.parametrize(
    "change",
    ["dtype", "misaligned", "int_to_float", "int_to_bool", "value", "constexpr", "option"],
)
def test_a_call_triton_could_compile_differently_goes_through_the_jit_path(change):
    kernel = _kernel()
    base = torch.zeros(64)
    tensors, scalars, meta = (base, base), (1, 0.5, 5), {"BLOCK": 32, "num_warps": 4}
    _launch.launch_kernel(kernel, (1,), tensors, scalars, **meta)
    if change == "dtype":
        tensors = (base.double(), base)
    elif change == "misaligned":
        tensors = (base[1:], base)  # 4 bytes past a 16-byte boundary
    elif change == "int_to_float":
        scalars = (1.0, 0.5, 5)  # equal to 1 as a key, but a float to Triton
    elif change == "int_to_bool":
        scalars = (True, 0.5, 5)
    elif change == "value":
        scalars = (2, 0.5, 5)
    elif change == "constexpr":
        meta = {"BLOCK": 64, "num_warps": 4}
    else:
        meta = {"BLOCK": 32, "num_warps": 8}
    _launch.launch_kernel(kernel, (1,), tensors, scalars, **meta)
    assert len(kernel.jit_calls) == 2 and not kernel.direct_calls


def test_a_free_scalar_is_keyed_by_its_specialisation():
    kernel, x = _kernel(), torch.zeros(64)

    def call(seed: int) -> None:
        _launch.launch_kernel(kernel, (1,), (x, x), (64, 0.5, seed), free=(2,), BLOCK=32)

    call(5)
    call(7)  # neither 1 nor a multiple of 16: the same kernel, launched with the new seed
    assert len(kernel.jit_calls) == 1 and kernel.direct_calls[-1][13] == 7
    call(32)  # divisible by 16: Triton specialises on it
    call(1)
    assert len(kernel.jit_calls) == 3


def test_launch_hooks_and_the_interpreter_always_take_the_jit_path(monkeypatch):
    kernel, x = _kernel(), torch.zeros(64)

    def call() -> None:
        _launch.launch_kernel(kernel, (1,), (x, x), (64, 0.5, 5), BLOCK=32)

    call()

    def hook(metadata) -> None:
        pass

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        call()
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    monkeypatch.setattr(_launch, "_INTERPRETING", True)
    call()
    assert len(kernel.jit_calls) == 3 and not kernel.direct_calls
    monkeypatch.setattr(_launch, "_INTERPRETING", False)
    call()
    assert len(kernel.direct_calls) == 1


def test_a_parameter_neither_given_nor_defaulted_keeps_the_jit_path():
    kernel, x = FakeKernel(["X", "n", "BLOCK"]), torch.zeros(4)
    for _ in range(2):
        _launch.launch_kernel(kernel, (1,), (x,), (4,))  # BLOCK missing: Triton's own error or default applies
    assert len(kernel.jit_calls) == 2 and not kernel.direct_calls


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(_launch, "MAX_KEYS", 3)
    kernel, x = _kernel(), torch.zeros(64)
    for n in range(5):
        _launch.launch_kernel(kernel, (1,), (x, x), (n + 2, 0.5, 5), BLOCK=32)
    assert len(_launch._cache[kernel]) <= 3


def test_prepare_binds_the_launch_for_other_tensors_of_the_same_layout():
    kernel, x, out = _kernel(), torch.zeros(64), torch.zeros(64)
    prepared = _launch.prepare(kernel, (3,), (x, out), (64, 0.5, 5), BLOCK=32)
    assert len(kernel.jit_calls) == 1  # the call itself is issued
    y, other = torch.ones(64), torch.ones(64)
    prepared.launch((y, other))
    assert kernel.direct_calls == [
        (3, 1, 1, 7, "function", "metadata", None, None, None, y.data_ptr(), other.data_ptr(), 64, 0.5, 5, 32, False)
    ]


def test_prepare_binds_nothing_where_launches_must_take_the_jit_path(monkeypatch):
    kernel, x = _kernel(), torch.zeros(64)
    monkeypatch.setattr(_launch, "_INTERPRETING", True)
    assert _launch.prepare(kernel, (1,), (x, x), (64, 0.5, 5), BLOCK=32) is None
    monkeypatch.setattr(_launch, "_INTERPRETING", False)
    assert _launch.prepare(FakeKernel(["X", "n", "BLOCK"]), (1,), (x,), (4,)) is None  # no default for BLOCK


def test_plans_are_keyed_by_device_settings_and_every_input_layout(monkeypatch):
    plans = _launch.LaunchPlans(limit=100)
    x = torch.zeros(4, 8)
    first = plans.plan((x, None), 0.5)
    assert plans.plan((torch.ones(4, 8), None), 0.5) is first  # other values, the same layout
    others = [
        plans.plan((x, None), 0.25),  # another setting
        plans.plan((x.double(), None), 0.5),
        plans.plan((torch.zeros(8, 4).T, None), 0.5),  # same shape, other strides
        plans.plan((torch.zeros(33)[1:].view(4, 8), None), 0.5),  # off a 16-byte boundary
        plans.plan((x, x), 0.5),  # a tensor where there was none
    ]
    assert all(plan is not first for plan in others) and len({id(p) for p in others}) == len(others)
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 1, raising=False)
    assert plans.plan((x, None), 0.5) is not first


def test_an_unbound_plan_issues_nothing_and_binds_what_it_is_given(monkeypatch):
    kernel, x = _kernel(), torch.zeros(64)
    plan = _launch.LaunchPlans().plan((x,), 1.0)
    assert not plan.issue("k", (x, x))
    plan.bind("k", _launch.prepare(kernel, (1,), (x, x), (64, 0.5, 5), BLOCK=32))
    assert plan.issue("k", (x, x)) and len(kernel.direct_calls) == 1
    monkeypatch.setattr(_launch, "_INTERPRETING", True)  # no plan is kept while launches take the JIT path
    plans = _launch.LaunchPlans()
    assert plans.plan((x,), 1.0) is not plans.plan((x,), 1.0) and not plans._plans
