"""The fused Triton kernels (qra.kernels) against the PyTorch path of qra.attention.

The GPU tests skip without CUDA or triton; the CPU tests check that qra.kernels imports and falls
back without them.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from qra import kernels
from qra.attention import kernel_attention
from qra.featuremaps import FeatureMap
from qra.kernels import reference

requires_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernels.triton_available()), reason="needs CUDA and triton"
)
DTYPES = [torch.float32, torch.bfloat16]
RTOL = {torch.float32: 2e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}


class Identity(FeatureMap):
    """φ(x) = x: the features are given directly."""

    @property
    def dim(self) -> int:
        return self.d_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class StateIdentity(Identity):
    """φ(x) = x for complex states, with the fidelity |⟨x|y⟩|² as similarity."""

    is_linear = False

    def similarity(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        return (fx.conj() @ fy.transpose(-1, -2)).abs().square()


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = "", floor: float = 1e-4
) -> None:
    """max |a − e| ≤ rtol · max |e| + floor, with NaN anywhere a failure; complex as (re, im)."""
    if actual.is_complex():
        actual, expected = torch.view_as_real(actual.resolve_conj()), torch.view_as_real(expected.resolve_conj())
    actual, expected = actual.detach().float(), expected.detach().float()
    assert actual.shape == expected.shape, what
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rtol * scale + floor, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def make_mask(batch: int, n: int, device, all_padding_row: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    mask = torch.rand(batch, n, generator=g) > 0.3
    mask[:, 0] = True
    if all_padding_row and batch > 1:
        mask[0] = False  # a sequence whose keys are all padding
    return mask.to(device)


def leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=False)


# ------------------------------------------------------------------------------------------------ CPU


def test_fused_unavailable_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(1, 1, 4, 8)
    assert not kernels.fused_available(x, x, x)
    monkeypatch.setenv("QRA_DISABLE_FUSED", "1")
    assert not kernels.fused_available(x, x, x)


def test_imports_and_falls_back_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, qra.kernels as K\n"
        "assert not K.triton_available()\n"
        "x = torch.rand(2, 2, 5, 8); v = torch.randn(2, 2, 5, 4)\n"
        "assert not K.fused_available(x, x, v)\n"
        "assert K.linear_attention(x, x, v).shape == (2, 2, 5, 4)\n"
        "assert K.softmax_attention(x, x, v).shape == (2, 2, 5, 4)\n"
        "s = torch.randn(2, 2, 5, 4, dtype=torch.complex64)\n"
        "assert K.fidelity_attention(s, s, v, beta=2.0).shape == (2, 2, 5, 4)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cpu_fallback_matches_kernel_attention():
    torch.manual_seed(0)
    fq, fk = torch.rand(2, 3, 6, 8), torch.rand(2, 3, 7, 8)
    v = torch.randn(2, 3, 7, 4)
    mask = make_mask(2, 7, "cpu")
    expected, _ = kernel_attention(fq, fk, v, Identity(8), "linear", mask)
    torch.testing.assert_close(kernels.linear_attention(fq, fk, v, mask), expected)
    expected, _ = kernel_attention(fq, fk, v, Identity(8), "softmax", mask)
    torch.testing.assert_close(kernels.softmax_attention(fq, fk, v, mask), expected)
    sq, sk = torch.randn(2, 3, 6, 8, dtype=torch.complex64), torch.randn(2, 3, 7, 8, dtype=torch.complex64)
    beta = torch.tensor([0.5, 1.0, 2.0])
    expected, _ = kernel_attention(sq, sk, v, StateIdentity(8), "softmax", mask, beta=beta)
    torch.testing.assert_close(kernels.fidelity_attention(sq, sk, v, mask, beta), expected)


def test_fourier_features_cpu_path_and_errors():
    torch.manual_seed(0)
    x, weight, phase = torch.randn(2, 3, 5, 8), torch.randn(16, 8), torch.rand(16)
    beta = torch.tensor([0.5, 1.0, 2.0])
    expected = 0.25 * torch.cos(x @ weight.T + phase) * beta.view(1, 3, 1, 1)
    torch.testing.assert_close(kernels.fourier_features(x, weight, phase, 0.25, beta), expected)
    torch.testing.assert_close(kernels.fourier_features(x, weight, phase, 0.25), expected / beta.view(1, 3, 1, 1))
    with pytest.raises(ValueError, match=r"weight must be \[m, d=8\]"):
        kernels.fourier_features(x, weight[:, :4], phase, 0.25)
    with pytest.raises(ValueError, match="one value per head"):
        kernels.fourier_features(x, weight, phase, 0.25, torch.ones(2))
    with pytest.raises(ValueError, match=r"\[B, H, N, d\]"):
        kernels.fourier_features(x[0], weight, phase, 0.25)


def test_query_key_features_cpu_path_and_errors():
    """Without CUDA the pair is two single calls: the same numbers, and bad shapes say what they should be."""
    torch.manual_seed(0)
    q, k, weight, phase = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(16, 8), torch.rand(16)
    beta = torch.tensor([0.5, 1.0, 2.0])
    fq, fk = kernels.fourier_query_key_features(q, k, weight, phase, 0.25, beta)
    torch.testing.assert_close(fq, kernels.fourier_features(q, weight, phase, 0.25, beta))
    torch.testing.assert_close(fk, kernels.fourier_features(k, weight, phase, 0.25))
    fq, fk = kernels.exponential_query_key_features(q, k, weight / 4, 0.1, 0.25, beta)
    torch.testing.assert_close(fq, kernels.exponential_features(q, weight / 4, 0.1, 0.25, beta))
    torch.testing.assert_close(fk, kernels.exponential_features(k, weight / 4, 0.1, 0.25))
    with pytest.raises(ValueError, match=r"q \[B, H, Nq, d\] and k \[B, H, Nk, d\]"):
        kernels.fourier_query_key_features(q, k[:1], weight, phase, 0.25)
    with pytest.raises(ValueError, match=r"weight must be \[m, d=8\]"):
        kernels.exponential_query_key_features(q, k, weight[:, :4], 0.1, 0.25)
    with pytest.raises(ValueError, match=r"phase must be \[m=16\]"):
        kernels.fourier_query_key_features(q, k, weight, phase[:3], 0.25)


def check_temperature_updates(device: str) -> None:
    """A temperature β kept as a buffer is scaled once and reused while unchanged (``qra.versioned.VersionedMemo``): an
    in-place update (a loaded state dict) must show in the next call, and a learned β must get its gradient."""
    torch.manual_seed(0)
    x, weight, phase = torch.randn(2, 3, 5, 8), torch.randn(16, 8), torch.rand(16)
    x, weight, phase = x.to(device), weight.to(device), phase.to(device)
    beta = torch.tensor([0.5, 1.0, 2.0], device=device)
    base = 0.25 * torch.cos(x @ weight.T + phase)
    for scale_by in (1.0, 1.0, 3.0):
        beta.mul_(scale_by)
        got = kernels.fourier_features(x, weight, phase, 0.25, beta)
        torch.testing.assert_close(got, base * beta.view(1, 3, 1, 1), rtol=1e-4, atol=1e-5)
    beta.requires_grad_()
    kernels.fourier_features(x, weight, phase, 0.25, beta).sum().backward()
    torch.testing.assert_close(beta.grad, base.sum((0, 2, 3)), rtol=1e-4, atol=1e-4)


def test_fourier_features_follow_the_temperature_cpu():
    check_temperature_updates("cpu")


# ------------------------------------------------------------------------------------------------ GPU


def linear_inputs(b, h, nq, nk, m, dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    fq = (torch.rand(b, h, nq, m, generator=g) + 0.05).to("cuda", dtype)
    fk = (torch.rand(b, h, nk, m, generator=g) + 0.05).to("cuda", dtype)
    v = torch.randn(b, h, nk, dv, generator=g).to("cuda", dtype)
    return fq, fk, v


def check_linear(b, h, nq, nk, m, dv, dtype, mask):
    fq, fk, v = leaves(*linear_inputs(b, h, nq, nk, m, dv, dtype))
    assert kernels.fused_available(fq, fk, v, mask)
    out = kernels.linear_attention(fq, fk, v, mask)
    assert out.dtype == dtype and out.shape == (b, h, nq, dv)
    grad_out = torch.randn_like(out)
    got = grads(out, (fq, fk, v), grad_out)
    rq, rk, rv = leaves(fq, fk, v)
    expected, _ = kernel_attention(rq, rk, rv, Identity(m), "linear", mask)
    want = grads(expected, (rq, rk, rv), grad_out)
    assert_close(out, expected, RTOL[dtype], "out")
    for name, a, e in zip(("dfq", "dfk", "dv"), got, want, strict=True):
        assert_close(a, e, RTOL[dtype], name)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dv", [32, 64])
@pytest.mark.parametrize("m", [32, 64, 128, 256])
def test_linear_matches_pytorch(m, dv, dtype):
    check_linear(2, 3, 100, 100, m, dv, dtype, make_mask(2, 100, "cuda"))


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("nq", "nk"), [(1, 1), (17, 17), (333, 333), (5, 333), (333, 1)])
@pytest.mark.parametrize("masked", [False, True])
def test_linear_odd_lengths(nq, nk, dtype, masked):
    mask = make_mask(3, nk, "cuda", all_padding_row=nk > 1) if masked else None
    check_linear(3, 2, nq, nk, 64, 32, dtype, mask)


@requires_gpu
def test_linear_long_sequence_splits():
    # enough key blocks that the state is reduced by many programs with atomics
    check_linear(1, 2, 4099, 5000, 64, 64, torch.bfloat16, make_mask(1, 5000, "cuda", all_padding_row=False))


@requires_gpu
def test_linear_guard_and_noncontiguous():
    torch.manual_seed(1)
    x = torch.randn(2, 40, 3, 32, device="cuda")  # [B, N, H, m] viewed as [B, H, N, m]
    fq = x.transpose(1, 2).detach().requires_grad_()
    fk = torch.randn(2, 3, 40, 32, device="cuda", requires_grad=True)
    v = torch.randn(2, 3, 40, 32, device="cuda", requires_grad=True)
    with torch.no_grad():
        fq[0, 0, :3] = 0.0  # zero denominators take the +eps floor
    out = kernels.linear_attention(fq, fk, v, eps=1e-3)
    grad_out = torch.randn_like(out)
    got = grads(out, (fq, fk, v), grad_out)
    rq, rk, rv = leaves(fq, fk, v)
    expected, _ = kernel_attention(rq, rk, rv, Identity(32), "linear", eps=1e-3)
    want = grads(expected, (rq, rk, rv), grad_out)
    assert_close(out, expected, 1e-3, "out")
    for name, a, e in zip(("dfq", "dfk", "dv"), got, want, strict=True):
        assert_close(a, e, 1e-3, name)


def fourier_inputs(b, h, nq, nk, d, m, dv, dtype, sigma=8.0, seed=0):
    """Queries, keys, values and an RFF map's W = Ω/σ and phases; σ = 8 keeps the kernel's row sums
    (the denominators) well away from 0, where any two fp32 evaluations part ways."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=g).to("cuda", dtype)
    k = torch.randn(b, h, nk, d, generator=g).to("cuda", dtype)
    v = torch.randn(b, h, nk, dv, generator=g).to("cuda", dtype)
    weight = (torch.randn(m, d, generator=g) / sigma).cuda()
    phase = (torch.rand(m, generator=g) * 2 * torch.pi).cuda()
    return q, k, v, weight, phase


def off_boundary(t: torch.Tensor) -> torch.Tensor:
    """A leaf copy of ``t`` whose storage starts one element past a 16-byte boundary."""
    flat = torch.empty(t.numel() + 1, device=t.device, dtype=t.dtype)[1:]
    flat.copy_(t.detach().flatten())
    shifted = flat.view(t.shape).requires_grad_()
    assert shifted.data_ptr() % 16 != 0 and shifted.is_leaf
    return shifted


@pytest.fixture(params=["whole", "split"])
def sequence_programs(request, monkeypatch):
    """Both ways the fused RFF linear kernels share a sequence among programs (``SEQUENCE_PROGRAMS``): one program
    per (batch, head), or several per direction adding their sums by atomics."""
    from qra.kernels import fourier_linear

    monkeypatch.setattr(fourier_linear, "SEQUENCE_PROGRAMS", request.param)
    return request.param


def check_fourier_linear(b, h, nq, nk, d, m, dv, dtype, mask, map_grad=True, seed=0, shift_q=False):
    """The fused kernel against the PyTorch formula: output and the gradients of q, k, v and, with
    ``map_grad``, of W and the phases (without, as for RFF's fixed buffers, the kernels skip them).
    ``shift_q``: the queries off a 16-byte boundary (a layout Triton compiles apart)."""
    q, k, v, weight, phase = fourier_inputs(b, h, nq, nk, d, m, dv, dtype, seed=seed)
    wrt = leaves(q, k, v, weight, phase) if map_grad else leaves(q, k, v)
    if shift_q:
        wrt[0] = off_boundary(wrt[0])
    q, k, v = wrt[:3]
    if map_grad:
        weight, phase = wrt[3:]
    scale = (2.0 / m) ** 0.5
    out = kernels.fourier_linear_attention(q, k, v, weight, phase, scale, mask)
    assert out.dtype == dtype and out.shape == (b, h, nq, dv)
    grad_out = torch.randn_like(out)
    got = grads(out, wrt, grad_out)
    expected_inputs = leaves(*wrt)
    fixed_map = () if map_grad else (weight, phase)  # passed as they are, after q, k, v
    expected = reference.fourier_linear_attention(*expected_inputs, *fixed_map, scale, mask)
    want = grads(expected, expected_inputs, grad_out)
    assert_close(out, expected, RTOL[dtype], "out")
    names = ("dq", "dk", "dv", "dW", "dphase")[: len(wrt)]
    # with one key, out = v whatever q and k are: their gradients are rounding noise around 0
    checked = ("dv",) if nk == 1 else names
    for name, a, e in zip(names, got, want, strict=True):
        if name in checked:
            assert_close(a, e, RTOL[dtype], name)


@pytest.mark.skipif(not kernels.triton_available(), reason="needs triton")
def test_fourier_linear_whole_sequences_where_the_split_grid_gives_one_program(monkeypatch):
    """``auto`` runs a (batch, head) in one program exactly where the split kernels' grid would give it one program
    per direction anyway, up to 128 features; ``whole`` and ``split`` force either way (``whole`` up to 128
    features too); any other setting is refused, naming these."""
    from qra.kernels import fourier_linear

    def whole(lengths, groups, features=128):
        cpu = torch.device("cpu")  # counted as 4 SMs (qra.kernels._util.sm_count)
        return fourier_linear._whole_sequences(lengths, groups, features, cpu, fourier_linear.Launch(128, per_sm=2))

    assert whole((512, 512), 8)  # 8 (batch, head)s fill 2 programs × 4 SMs
    assert not whole((512, 512), 4)  # 4: each sequence over 2 programs
    assert not whole((128, 512), 4)  # the keys split, the queries not
    assert whole((100, 128), 1)  # one block each: one program either way
    assert whole((512, 512), 8, 100) and not whole((512, 512), 8, 256)  # too wide for the whole kernels
    monkeypatch.setattr(fourier_linear, "SEQUENCE_PROGRAMS", "split")
    assert not whole((512, 512), 8)
    monkeypatch.setattr(fourier_linear, "SEQUENCE_PROGRAMS", "whole")
    assert whole((5000, 5000), 1) and not whole((5000, 5000), 1, 256)
    monkeypatch.setattr(fourier_linear, "SEQUENCE_PROGRAMS", "sometimes")
    with pytest.raises(ValueError, match="accepted: 'auto', 'whole', 'split'"):
        whole((512, 512), 8)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dv", [32, 64])
@pytest.mark.parametrize(("d", "m"), [(32, 32), (32, 64), (64, 128), (64, 256)])
def test_fourier_linear_matches_pytorch(d, m, dv, dtype, sequence_programs):
    check_fourier_linear(2, 3, 100, 100, d, m, dv, dtype, make_mask(2, 100, "cuda"))


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_fourier_linear_repeated_calls_through_bound_launches(dtype, sequence_programs, monkeypatch):
    """Calls after the first of one input layout issue the launches bound at the first (qra.kernels._launch's
    plans): each call against the PyTorch path, with new data, between calls of other layouts (no padding,
    queries off a 16-byte boundary) and other backward variants (the map's gradients asked for)."""
    from qra.kernels import _launch, fourier_linear

    monkeypatch.setattr(fourier_linear, "_PLANS", _launch.LaunchPlans())  # this test's plans only
    mask = make_mask(2, 100, "cuda")
    calls = [(False, True, False), (False, True, False), (True, True, False), (False, False, False),
             (False, True, True), (False, True, False), (True, True, False), (False, True, True)]  # fmt: skip
    for seed, (map_grad, masked, shift_q) in enumerate(calls):
        check_fourier_linear(2, 3, 100, 100, 64, 128, 64, dtype, mask if masked else None, map_grad=map_grad,
                             seed=seed, shift_q=shift_q)  # fmt: skip
    if _launch.direct_launches():  # (under Triton's interpreter every launch takes its JIT path)
        bound = [len(plan._bound) for plan in fourier_linear._PLANS._plans.values()]
        # split: state, out and each backward kernel for the fixed and the learned map; whole: one forward and the
        # backward for each map
        assert bound and max(bound) == (6 if sequence_programs == "split" else 3)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("d", "m", "dv"), [(32, 64, 32), (64, 128, 64), (64, 256, 64)])
def test_fourier_linear_fixed_map_matches_pytorch(d, m, dv, dtype, sequence_programs):
    """W and the phases without grad (RFF's default): the kernels skip the map's gradients, the rest holds."""
    check_fourier_linear(2, 3, 100, 100, d, m, dv, dtype, make_mask(2, 100, "cuda"), map_grad=False)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("nq", "nk"), [(1, 1), (17, 17), (333, 333), (5, 333), (333, 1)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("map_grad", [True, False])
def test_fourier_linear_odd_lengths(nq, nk, dtype, masked, map_grad, sequence_programs):
    mask = make_mask(3, nk, "cuda", all_padding_row=nk > 1) if masked else None
    check_fourier_linear(3, 2, nq, nk, 48, 96, 32, dtype, mask, map_grad)


@requires_gpu
@pytest.mark.parametrize("map_grad", [True, False])
def test_fourier_linear_long_sequences(map_grad, sequence_programs):
    check_fourier_linear(1, 2, 4099, 5000, 64, 128, 64, torch.bfloat16, make_mask(1, 5000, "cuda", False), map_grad)


@requires_gpu
def test_fourier_linear_unverified_shapes_compute_features_first(monkeypatch):
    """bf16 with 64-wide q/k tiles and 32-wide values failed in the prologue kernel on the H200: such shapes
    must not reach it, and still give the reference's numbers through the fused linear kernel."""
    import qra.kernels.fourier_linear as fourier_linear

    def refuse(*args, **kwargs):
        raise AssertionError("an unverified shape reached the prologue kernel")

    monkeypatch.setattr(fourier_linear, "fused_fourier_linear_attention", refuse)
    assert not kernels.prologue_verified(torch.bfloat16, torch.bfloat16, torch.bfloat16, 64, 128, 32)
    check_fourier_linear(2, 3, 100, 100, 64, 128, 32, torch.bfloat16, make_mask(2, 100, "cuda"))


@requires_gpu
@pytest.mark.parametrize("sincos", [False, True])
def test_rff_linear_mode_runs_the_prologue_kernel(sincos, monkeypatch):
    """kernel_attention(rff, "linear", fused) computes φ in the kernel's tiles, gradients reaching σ."""
    from qra.featuremaps import get

    calls = []
    original = kernels.fourier_linear_attention
    monkeypatch.setattr(kernels, "fourier_linear_attention", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    fm = get("rff", d_in=64, m=128, sigma=8.0, sincos=sincos, learn_sigma=True).cuda()
    q, k, v, _, _ = fourier_inputs(2, 3, 77, 77, 64, 128, 64, torch.float32)
    q, k, v = leaves(q, k, v)
    mask = make_mask(2, 77, "cuda")
    out, _ = kernel_attention(q, k, v, fm, "linear", mask, implementation="fused")
    assert calls, "the fused linear mode did not take the Fourier prologue kernel"
    grad_out = torch.randn_like(out)
    got = grads(out, (q, k, v, fm.log_sigma), grad_out)
    expected, _ = kernel_attention(q, k, v, fm, "linear", mask, implementation="pytorch")
    want = grads(expected, (q, k, v, fm.log_sigma), grad_out)
    assert_close(out, expected, 2e-4, "out")
    for name, a, e in zip(("dq", "dk", "dv", "dlog_sigma"), got, want, strict=True):
        assert_close(a, e, 2e-4, name)


@requires_gpu
@pytest.mark.parametrize("split_products", [True, False])
def test_fourier_kernels_either_product_setting(split_products, sequence_programs, monkeypatch):
    """bf16 products with fp32 tiles (S, dS, g/d, dp) as hi + lo pairs or rounded once
    (``fourier_linear.SPLIT_PRODUCTS``): both settings' linear attention and feature pass match the PyTorch path,
    with the map's gradients and without."""
    from qra.kernels import fourier_linear

    monkeypatch.setattr(fourier_linear, "SPLIT_PRODUCTS", split_products)
    for map_grad in (True, False):
        check_fourier_linear(2, 3, 100, 100, 64, 128, 64, torch.bfloat16, make_mask(2, 100, "cuda"), map_grad)
    check_fourier_features(2, 3, 100, 64, 128, torch.bfloat16, torch.tensor([0.5, 1.0, 2.0], device="cuda"))


def assert_features_and_gradients(out, wrt, expected, expected_wrt, needed: dict[str, bool], rtol: float) -> None:
    """Features and the gradients named True in ``needed`` (in order) against the formula's."""
    grad_out = torch.randn_like(out)
    assert_close(out, expected, rtol, "features")
    names = [name for name, want in needed.items() if want]
    for name, a, e in zip(names, grads(out, wrt, grad_out), grads(expected, expected_wrt, grad_out), strict=True):
        assert_close(a, e, rtol, name)


def check_fourier_features(b, h, n, d, m, dtype, head_factor, strided=False, weight_grad=True, seed=0):
    """kernels.fourier_features against the fp32 PyTorch formula: φ and the gradients of x, W, the phases and
    the per-head factor (when it is a tensor); with ``weight_grad`` False W and the phases are constants."""
    q, _, _, weight, phase = fourier_inputs(b, h, n, 1, d, m, 1, dtype, sigma=2.0, seed=seed)
    if strided:  # [B, N, H, d] seen as [B, H, N, d], as a patched layer's queries are
        q = q.transpose(1, 2).contiguous().transpose(1, 2)
    scale = (2.0 / m) ** 0.5
    factor_grad = isinstance(head_factor, torch.Tensor)
    needed = {"dx": True, "dW": weight_grad, "dphase": weight_grad, "dfactor": factor_grad}

    def run(features):
        x, w, p = leaves(q, weight, phase)
        w.requires_grad_(weight_grad)
        p.requires_grad_(weight_grad)
        factor = leaves(head_factor)[0] if factor_grad else head_factor
        wrt = [t for t, want in zip((x, w, p, factor), needed.values(), strict=True) if want]
        return features(x, w, p, factor), wrt

    def formula(x, w, p, factor):
        factors = torch.as_tensor(1.0 if factor is None else factor, dtype=torch.float32, device=x.device)
        return reference.fourier_features(x, w, p, scale, factors.reshape(-1).expand(h))

    out, wrt = run(lambda x, w, p, factor: kernels.fourier_features(x, w, p, scale, factor))
    expected, expected_wrt = run(formula)
    assert out.dtype == dtype and out.shape == (b, h, n, m)
    assert_features_and_gradients(out, wrt, expected, expected_wrt, needed, RTOL[dtype])


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_fourier_features_repeated_calls_through_bound_launches(dtype):
    """Calls after the first of one input layout issue the feature pass's launches bound at the first (as the
    linear kernels' plans): each call against the PyTorch path, with new data, between calls of another layout
    (queries seen through a transpose) and other backward variants (W and the phases fixed; no factor gradient)."""
    from qra.kernels import _launch, fourier_map

    factors = torch.tensor([0.5, 1.0, 2.0], device="cuda")
    calls = [(False, True, factors), (False, True, factors), (True, True, factors), (False, False, factors),
             (False, True, 0.7), (False, True, factors), (True, True, factors), (False, False, 0.7)]  # fmt: skip
    for seed, (strided, weight_grad, head_factor) in enumerate(calls):
        check_fourier_features(2, 3, 100, 64, 128, dtype, head_factor, strided=strided, weight_grad=weight_grad,
                               seed=seed)  # fmt: skip
    if _launch.direct_launches():  # (under Triton's interpreter every launch takes its JIT path)
        bound = [len(plan._bound) for plan in fourier_map._PLANS._plans.values()]
        assert bound and max(bound) >= 3  # the forward and at least two backward variants of one layout


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("d", "m"), [(32, 32), (64, 128), (48, 96), (64, 256)])
def test_fourier_features_match_pytorch(d, m, dtype):
    check_fourier_features(2, 3, 100, d, m, dtype, torch.tensor([0.5, 1.0, 2.0], device="cuda"), strided=True)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 17, 333, 4099])
@pytest.mark.parametrize("head_factor", [None, 3.0, "scalar tensor"])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_fourier_features_odd_lengths_and_factors(n, head_factor, weight_grad, dtype):
    if head_factor == "scalar tensor":
        head_factor = torch.tensor(0.7, device="cuda")
    check_fourier_features(2, 2, n, 64, 128, dtype, head_factor, weight_grad=weight_grad)


@requires_gpu
def test_fourier_features_follow_the_temperature():
    check_temperature_updates("cuda")


def check_query_key_features(b, h, nq, nk, d, m, dtype, query_factor, exponential=False, weight_grad=True, seed=0):
    """kernels.fourier_query_key_features (or the exponential one) against two calls of the fp32 PyTorch formula:
    both outputs and the gradients of q, k, W, the phases (Fourier) and the queries' per-head factor.  The queries
    are seen through a transpose, as a patched layer's are, and the keys with their features at a stride (copied
    to rows at unit stride inside)."""
    from qra.featuremaps import get

    q, k, _, weight, phase = fourier_inputs(b, h, nq, nk, d, m, 1, dtype, sigma=2.0, seed=seed)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)
    k = k.transpose(2, 3).contiguous().transpose(2, 3)
    if exponential:
        prologue = get("performer", d_in=d, m=m).exponential_prologue()
        weight, eta, scale = prologue.weight.cuda(), prologue.norm_weight, prologue.scale
    else:
        eta, scale = None, (2.0 / m) ** 0.5
    factor_grad = isinstance(query_factor, torch.Tensor)
    params = (weight,) if exponential else (weight, phase)

    def run(features):
        x, y, *maps = leaves(q, k, *params)
        for t in maps:
            t.requires_grad_(weight_grad)
        factor = leaves(query_factor)[0] if factor_grad else query_factor
        wrt = [x, y, *(maps if weight_grad else []), *([factor] if factor_grad else [])]
        return features(x, y, maps, factor), wrt

    def fused(x, y, maps, factor):
        if exponential:
            return kernels.exponential_query_key_features(x, y, maps[0], eta, scale, factor)
        return kernels.fourier_query_key_features(x, y, *maps, scale, factor)

    def formula(x, y, maps, factor):
        factors = torch.as_tensor(1.0 if factor is None else factor, dtype=torch.float32, device=x.device)
        factors = factors.reshape(-1).expand(h)
        if exponential:
            return (reference.exponential_features(x, maps[0], eta, scale, factors),
                    reference.exponential_features(y, maps[0], eta, scale))  # fmt: skip
        return reference.fourier_features(x, *maps, scale, factors), reference.fourier_features(y, *maps, scale)

    (fq, fk), wrt = run(fused)
    (eq, ek), expected_wrt = run(formula)
    out_dtype = torch.float32 if exponential and dtype == torch.float16 else dtype
    assert fq.dtype == fk.dtype == out_dtype and fq.shape == (b, h, nq, m) and fk.shape == (b, h, nk, m)
    assert_close(fq, eq, RTOL[dtype], "query features")
    assert_close(fk, ek, RTOL[dtype], "key features")
    gq, gk = torch.randn_like(fq), torch.randn_like(fk)
    got = torch.autograd.grad((fq, fk), wrt, (gq, gk))
    want = torch.autograd.grad((eq, ek), expected_wrt, (gq.to(eq.dtype), gk.to(ek.dtype)))
    map_names = ["dW", "dphase"][: len(params)] if weight_grad else []
    names = ["dq", "dk", *map_names, *(["dfactor"] if factor_grad else [])]
    for name, a, e in zip(names, got, want, strict=True):
        assert_close(a, e, RTOL[dtype], name)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("exponential", [False, True])
@pytest.mark.parametrize(("nq", "nk"), [(1, 1), (17, 333), (100, 100), (4099, 64)])
@pytest.mark.parametrize("query_factor", [None, 3.0, "per head"])
def test_query_key_features_match_pytorch(nq, nk, query_factor, exponential, dtype):
    if query_factor == "per head":
        query_factor = torch.tensor([0.5, 1.0, 2.0], device="cuda")
    check_query_key_features(2, 3, nq, nk, 64, 128, dtype, query_factor, exponential)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("d", "m"), [(32, 32), (48, 96), (64, 256)])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_query_key_features_other_widths(d, m, weight_grad, dtype):
    check_query_key_features(2, 3, 77, 50, d, m, dtype, torch.tensor([0.5, 1.0, 2.0], device="cuda"),
                             weight_grad=weight_grad, seed=d)  # fmt: skip


@requires_gpu
def test_query_key_features_repeated_calls_through_bound_launches():
    """Repeated pair calls of one layout issue the launches bound at the first, with new data each time, between
    calls of other layouts and backward variants."""
    factors = torch.tensor([0.5, 1.0, 2.0], device="cuda")
    for seed, (nk, weight_grad, factor) in enumerate([(100, True, factors), (100, True, factors), (37, False, 0.7),
                                                      (100, False, factors), (100, True, factors)]):  # fmt: skip
        check_query_key_features(2, 3, 100, nk, 64, 128, torch.bfloat16, factor, weight_grad=weight_grad, seed=seed)


def check_exponential_features(b, h, n, d, m, dtype, head_factor, stabilizer, mask=None, weight_grad=True):
    """kernels.exponential_features against the fp32 PyTorch formula (a FAVOR+ map's W and η): φ and the
    gradients of x, W (when ``weight_grad``) and the per-head factor (when it is a tensor)."""
    from qra.featuremaps import get

    prologue = get("performer", d_in=d, m=m).exponential_prologue()
    q = fourier_inputs(b, h, n, 1, d, m, 1, dtype)[0].transpose(1, 2).contiguous().transpose(1, 2)
    scale = 1.0 if stabilizer != "none" else prologue.scale
    factor_grad = isinstance(head_factor, torch.Tensor)
    needed = {"dx": True, "dW": weight_grad, "dfactor": factor_grad}

    def run(features):
        x, w = leaves(q, prologue.weight.cuda())
        w.requires_grad_(weight_grad)
        factor = leaves(head_factor)[0] if factor_grad else head_factor
        wrt = [t for t, want in zip((x, w, factor), needed.values(), strict=True) if want]
        return features(x, w, factor), wrt

    def formula(x, w, factor):
        factors = torch.as_tensor(1.0 if factor is None else factor, dtype=torch.float32, device=x.device)
        return reference.exponential_features(x, w, prologue.norm_weight, scale, factors.reshape(-1).expand(h),
                                              stabilizer, mask)  # fmt: skip

    out, wrt = run(lambda x, w, factor: kernels.exponential_features(x, w, prologue.norm_weight, scale, factor,
                                                                     stabilizer, mask))  # fmt: skip
    expected, expected_wrt = run(formula)
    assert out.dtype == (torch.float32 if dtype == torch.float16 else dtype) and out.shape == (b, h, n, m)
    assert_features_and_gradients(out, wrt, expected, expected_wrt, needed, RTOL[dtype])


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stabilizer", ["none", "row", "sequence"])
@pytest.mark.parametrize(("d", "m"), [(32, 32), (64, 128), (48, 96), (64, 256)])
def test_exponential_features_match_pytorch(d, m, stabilizer, dtype):
    mask = make_mask(2, 100, "cuda") if stabilizer == "sequence" else None
    check_exponential_features(2, 3, 100, d, m, dtype, torch.tensor([0.5, 1.0, 2.0], device="cuda"), stabilizer,
                               mask)  # fmt: skip


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 17, 4099])
@pytest.mark.parametrize("stabilizer", ["none", "row", "sequence"])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_exponential_features_odd_lengths(n, stabilizer, weight_grad, dtype):
    mask = make_mask(2, n, "cuda") if stabilizer == "sequence" and n > 1 else None
    check_exponential_features(2, 2, n, 64, 128, dtype, 3.0 if stabilizer == "none" else None, stabilizer, mask,
                               weight_grad)  # fmt: skip


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["softmax", "linear"])
@pytest.mark.parametrize("stabilize", [True, False])
def test_performer_modes_run_the_feature_pass(mode, stabilize, dtype, monkeypatch):
    """kernel_attention(performer) with the exponential pass on takes φ from it (softmax: then SDPA, with a
    per-head β; linear: with the stabilisers, then the linear kernel): the PyTorch path's outputs and gradients,
    with a padding mask (in linear mode a sequence without any real key too)."""
    from qra.featuremaps import get
    from qra.kernels import fourier_map

    monkeypatch.setenv("QRA_EXPONENTIAL_PASS", "1")
    calls = []  # the operands of each Triton feature pass: 2 where queries and keys share one
    original = fourier_map.fused_exponential_features
    monkeypatch.setattr(fourier_map, "fused_exponential_features",
                        lambda *a: calls.append(1 + (len(a) > 6 and a[6] is not None)) or original(*a))  # fmt: skip
    fm = get("performer", d_in=64, m=128, stabilize=stabilize).cuda()
    q, k, v, _, _ = fourier_inputs(2, 3, 77, 77, 64, 128, 64, dtype)
    mask = make_mask(2, 77, "cuda", all_padding_row=mode == "linear")
    results = []
    for implementation in ("auto", "pytorch"):
        inputs = leaves(q, k, v, torch.tensor([0.5, 1.0, 2.0], device="cuda"))
        beta = inputs[3] if mode == "softmax" else None
        out, _ = kernel_attention(*inputs[:3], fm, mode, mask, beta=beta, implementation=implementation)
        wrt = inputs if mode == "softmax" else inputs[:3]
        results.append((out, grads(out.float().square().sum(), wrt, None)))
    # stabilised features are computed apart (each its own stabiliser), else queries and keys in one pass
    assert calls == ([1, 1] if mode == "linear" and stabilize else [2]), (
        f"the default {mode} path did not take the exponential feature pass for queries and keys: {calls}"
    )
    (out, got), (expected, want) = results
    assert_close(out, expected, RTOL[dtype], "out")
    for name, a, e in zip(("dq", "dk", "dv", "dbeta"), got, want, strict=False):
        assert_close(a, e, 5 * RTOL[dtype], name)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sincos", [False, True])
def test_rff_softmax_mode_runs_the_feature_pass(sincos, dtype, monkeypatch):
    """kernel_attention(rff, "softmax") by default takes φ from the Triton feature pass and SDPA: the PyTorch
    path's outputs and gradients, the learnable σ's and per-head β's included, with a padding mask."""
    from qra.featuremaps import get
    from qra.kernels import fourier_map

    calls = []  # the operands of each Triton feature pass
    original = fourier_map.fused_fourier_features
    monkeypatch.setattr(fourier_map, "fused_fourier_features",
                        lambda *a: calls.append(1 + (len(a) > 4 and a[4] is not None)) or original(*a))  # fmt: skip
    fm = get("rff", d_in=64, m=128, sigma=8.0, sincos=sincos, learn_sigma=True).cuda()
    q, k, v, _, _ = fourier_inputs(2, 3, 77, 77, 64, 128, 64, dtype)
    mask = make_mask(2, 77, "cuda", all_padding_row=False)
    results = []
    for implementation in ("auto", "pytorch"):
        inputs = leaves(q, k, v, torch.tensor([0.5, 1.0, 2.0], device="cuda"))
        out, _ = kernel_attention(*inputs[:3], fm, "softmax", mask, beta=inputs[3], implementation=implementation)
        results.append((out, grads(out.float().square().sum(), (*inputs, fm.log_sigma), None)))
    assert calls == [2], f"the default softmax path did not take one Fourier feature pass for queries and keys: {calls}"
    (out, got), (expected, want) = results
    assert_close(out, expected, RTOL[dtype], "out")
    for name, a, e in zip(("dq", "dk", "dv", "dbeta", "dlog_sigma"), got, want, strict=True):
        assert_close(a, e, 5 * RTOL[dtype], name)


def softmax_inputs(b, h, nq, nk, m, dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    fq = (torch.randn(b, h, nq, m, generator=g) * m**-0.25).to("cuda", dtype)
    fk = (torch.randn(b, h, nk, m, generator=g) * m**-0.25).to("cuda", dtype)
    v = torch.randn(b, h, nk, dv, generator=g).to("cuda", dtype)
    return fq, fk, v


def check_softmax(b, h, nq, nk, m, dv, dtype, mask):
    fq, fk, v = leaves(*softmax_inputs(b, h, nq, nk, m, dv, dtype))
    out = kernels.softmax_attention(fq, fk, v, mask)
    assert out.dtype == dtype and out.shape == (b, h, nq, dv)
    grad_out = torch.randn_like(out)
    got = grads(out, (fq, fk, v), grad_out)
    rq, rk, rv = leaves(fq, fk, v)
    # return_weights takes the explicit fp32 path (SDPA's backward is NaN for rows without keys)
    expected, _ = kernel_attention(rq, rk, rv, Identity(m), "softmax", mask, return_weights=True)
    want = grads(expected, (rq, rk, rv), grad_out)
    assert_close(out, expected, RTOL[dtype], "out")
    for name, a, e in zip(("dfq", "dfk", "dv"), got, want, strict=True):
        assert_close(a, e, RTOL[dtype], name)
    if mask is not None and not mask[0].any():
        assert (out[0] == 0).all()
        assert (got[0][0] == 0).all() and (got[1][0] == 0).all() and (got[2][0] == 0).all()


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dv", [32, 64])
@pytest.mark.parametrize("m", [32, 64, 128, 256])
def test_softmax_matches_pytorch(m, dv, dtype):
    check_softmax(2, 3, 100, 100, m, dv, dtype, make_mask(2, 100, "cuda"))


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("nq", "nk"), [(1, 1), (17, 17), (333, 333), (5, 333), (333, 1)])
@pytest.mark.parametrize("masked", [False, True])
def test_softmax_odd_lengths(nq, nk, dtype, masked):
    mask = make_mask(3, nk, "cuda", all_padding_row=nk > 1) if masked else None
    check_softmax(3, 2, nq, nk, 128, 64, dtype, mask)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_dropout_uses_one_mask(dtype):
    b, h, n, m, dv, p = 2, 3, 77, 64, 32, 0.3
    fq, fk, v = leaves(*softmax_inputs(b, h, n, n, m, dv, dtype))
    mask = make_mask(b, n, "cuda")
    out = kernels.softmax_attention(fq, fk, v, mask, dropout_p=p, seed=1234)
    grad_out = torch.randn_like(out)
    got = grads(out, (fq, fk, v), grad_out)
    keep = kernels.dropout_keep_mask(1234, b, h, n, n, p, "cuda")
    assert abs(keep.float().mean().item() - (1 - p)) < 0.01
    rq, rk, rv = leaves(fq, fk, v)
    expected = reference.softmax_attention(rq, rk, rv, mask, p, keep=keep)
    want = grads(expected, (rq, rk, rv), grad_out)
    assert_close(out, expected, RTOL[dtype], "out")
    for name, a, e in zip(("dfq", "dfk", "dv"), got, want, strict=True):
        assert_close(a, e, RTOL[dtype], name)
    # another seed, another mask; the default seed follows torch's generator
    assert not torch.equal(out, kernels.softmax_attention(fq, fk, v, mask, dropout_p=p, seed=99))
    torch.manual_seed(5)
    first = kernels.softmax_attention(fq, fk, v, mask, dropout_p=p)
    torch.manual_seed(5)
    assert torch.equal(first, kernels.softmax_attention(fq, fk, v, mask, dropout_p=p))


@requires_gpu
def test_softmax_dropout_is_unbiased():
    b, h, n, m, dv, p, draws = 1, 2, 64, 32, 32, 0.25, 400
    fq, fk, v = softmax_inputs(b, h, n, n, m, dv, torch.float32)
    plain = kernels.softmax_attention(fq, fk, v)
    outs = torch.stack([kernels.softmax_attention(fq, fk, v, dropout_p=p, seed=s) for s in range(draws)])
    mean, spread = outs.mean(0), outs.std(0) / draws**0.5
    z = (mean - plain) / spread.clamp_min(1e-6)
    assert z.abs().mean().item() < 1.0  # ≈ 0.8 for an unbiased estimate
    assert z.abs().max().item() < 6.0


def states(b, h, n, dim, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.complex(torch.randn(b, h, n, dim, generator=g), torch.randn(b, h, n, dim, generator=g))
    return (s / s.abs().square().sum(-1, keepdim=True).sqrt()).to("cuda")


def fidelity_against_oracle(b, h, nq, nk, dim, dv, dtype, masked=True, grad_scale=1.0, module=None):
    """The fused fidelity kernel's output and gradients (states, v, β) and the fp32 PyTorch path's, on the same
    draws every run: ``kernels.fidelity_attention``, or ``module.fused_fidelity_attention`` (a copy of
    ``qra.kernels.fidelity``, for experiments/device/fidelity_planes_checks.py)."""
    from qra.kernels import fidelity

    torch.manual_seed(7)  # v and dO: the same draws every run
    sq, sk = states(b, h, nq, dim, 0), states(b, h, nk, dim, 1)
    v = torch.randn(b, h, nk, dv, device="cuda").to(dtype)
    beta = torch.tensor([4.0, 16.0, 32.0][:h], device="cuda")
    mask = make_mask(b, nk, "cuda", all_padding_row=nk > 1) if masked else None
    sq, sk, v, beta = leaves(sq, sk, v, beta)
    attention = kernels.fidelity_attention if module is None else module.fused_fidelity_attention
    out = attention(sq, sk, v, mask, beta)
    grad_out = torch.randn_like(out) * grad_scale
    got = grads(out, (sq, sk, v, beta), grad_out)
    # the kernel packs the states of 16-bit values in float16 from 5 qubits on (its docstring): so does the oracle
    # (an earlier module without that rule packs them in float16 at every width)
    half_planes = getattr(module or fidelity, "_half_planes", lambda half, width: half)
    if half_planes(dtype != torch.float32, fidelity.plane_width(dim)):
        sq, sk = (torch.complex(s.real.half().float(), s.imag.half().float()) for s in (sq, sk))
    rq, rk, rv, rb = leaves(sq, sk, v.float(), beta)
    expected, _ = kernel_attention(rq, rk, rv, StateIdentity(dim), "softmax", mask, beta=rb)
    return out, got, expected, grads(expected, (rq, rk, rv, rb), grad_out.float())


def check_fidelity(b, h, nq, nk, dim, dv, dtype, masked=True, grad_scale=1.0):
    """The fused fidelity kernel (it must not fall back) against the fp32 PyTorch path: output, all gradients."""
    out, got, expected, want = fidelity_against_oracle(b, h, nq, nk, dim, dv, dtype, masked, grad_scale)
    assert out.dtype == dtype and out.shape == (b, h, nq, dv)
    assert_close(out, expected, RTOL[dtype], "out")
    for name, a, e in zip(("dstates_q", "dstates_k", "dv", "dbeta"), got, want, strict=True):
        assert a.dtype == (dtype if name == "dv" else e.dtype), name
        # relative to the gradient's own scale, with a floor in the gradients' unit (N = 1: exactly 0)
        assert_close(a, e, RTOL[dtype], name, floor=1e-4 * grad_scale)


@requires_gpu
@pytest.mark.parametrize(("dim", "width"), [(64, 64), (6, 16), (20, 32)])
def test_fidelity_packing_gives_the_three_planes_and_the_largest_norm(dim, width):
    """One pass packs complex states, strided ones too, as three planes of rows, each zero-padded from D:
    queries (Re − Im, Re, Im), keys (Re, Im − Re, Re + Im); and raises the norm buffer to the largest
    squared ‖ψ‖."""
    from qra.kernels import fidelity

    g = torch.Generator().manual_seed(5)
    base = torch.complex(torch.randn(2, 7, 3, dim, generator=g), torch.randn(2, 7, 3, dim, generator=g)).cuda()
    for s in (base.transpose(1, 2), base.transpose(1, 2).contiguous() * 3.0):  # [B, H, N, D], strided and not
        re, im = s.real.reshape(6, 7, dim), s.imag.reshape(6, 7, dim)
        for keys, planes in ((False, (re - im, re, im)), (True, (re, im - re, re + im))):
            norm = torch.full((1,), 0.5, device="cuda")
            rows = fidelity.pack_states(s, width, torch.float16, norm, keys=keys)
            want = torch.zeros(6, 7, 3, width, device="cuda")
            for index, plane in enumerate(planes):
                want[:, :, index, :dim] = plane
            assert torch.equal(rows, want.reshape(6, 7, 3 * width).half())
            torch.testing.assert_close(norm, s.abs().square().sum(-1).amax().reshape(1))


@requires_gpu
def test_fidelity_overlap_planes_give_the_complex_overlap():
    """The three plane products (k₁ + k₃, k₁ + k₂) of packed rows are Re and Im of ⟨ψq|ψk⟩ = Σ conj(q)·k."""
    from qra.kernels import fidelity

    sq, sk = states(1, 2, 9, 12, 0), states(1, 2, 11, 12, 1)
    scratch = torch.zeros(2, device="cuda")
    q = fidelity.pack_states(sq, 16, torch.float32, scratch[:1]).view(2, 9, 3, 16).double()
    k = fidelity.pack_states(sk, 16, torch.float32, scratch[1:], keys=True).view(2, 11, 3, 16).double()
    products = [q[:, :, t] @ k[:, :, t].transpose(1, 2) for t in range(3)]
    overlap = torch.einsum("hid,hjd->hij", sq[0].conj().cdouble(), sk[0].cdouble())
    torch.testing.assert_close(products[0] + products[2], overlap.real, atol=1e-6, rtol=0)
    torch.testing.assert_close(products[0] + products[1], overlap.imag, atol=1e-6, rtol=0)


@requires_gpu
def test_fidelity_gradient_scales_are_powers_of_two_under_the_bound():
    """Per head a power of two S with GRADIENT_RANGE/2 < bound·S ≤ GRADIENT_RANGE over 36 decades of bounds
    (2^60 for 0), bound = 4√2|β|·‖ψq‖‖ψk‖·‖dO‖·max‖v‖·keep_scale (fidelity.gradient_scale)."""
    from qra.kernels import fidelity

    from .fidelity_scale_kernel import gradient_scales_kernel

    beta = torch.tensor([-40.0, 2.0, 0.5], device="cuda")
    limit = fidelity.GRADIENT_RANGE.value
    for grad_norm in (0.0, 1e-24, 1e-6, 1.0, 1e12):
        norms_qk = torch.tensor([1.0, 0.98], device="cuda")  # squared: ψq, ψk
        norms_ov = torch.tensor([grad_norm, 7.5], device="cuda")  # dO, v
        scales = torch.empty(3, device="cuda")
        gradient_scales_kernel[(1,)](norms_qk, norms_ov, beta, scales, 3, 1.25, BH=4)
        for head, scale in enumerate(scales.tolist()):
            assert scale == 2.0 ** round(math.log2(scale))
            bound = 4 * math.sqrt(2) * 1.25 * abs(beta[head].item()) * math.sqrt(1.0 * 0.98 * grad_norm * 7.5)
            assert scale == 2.0**60 if grad_norm == 0.0 else limit / 2 < bound * scale <= limit


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fidelity_takes_strided_states(dtype, no_fallback):
    """States as a map returns them ([B, N, H, D] seen as [B, H, N, D], and every other amplitude) give the same
    output and gradients as contiguous copies."""
    g = torch.Generator().manual_seed(6)
    wide = torch.complex(torch.randn(2, 40, 3, 128, generator=g), torch.randn(2, 40, 3, 128, generator=g)).cuda()
    sq = wide[..., ::2].transpose(1, 2)
    sk = wide[..., 1::2].transpose(1, 2)
    v = torch.randn(2, 3, 40, 32, device="cuda").to(dtype)
    views = leaves(sq, sk, v)
    copies = leaves(sq.contiguous(), sk.contiguous(), v)
    out = kernels.fidelity_attention(*views, None, 2.0)
    expected = kernels.fidelity_attention(*copies, None, 2.0)
    torch.testing.assert_close(out, expected)
    grad_out = torch.randn_like(out)
    for a, e in zip(grads(out, views, grad_out), grads(expected, copies, grad_out), strict=True):
        torch.testing.assert_close(a, e)


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fidelity_saves_kept_states_instead_of_packed_rows(dtype, no_fallback):
    """states_kept: the same outputs and gradients (dropout and a padding mask included), and the packed rows
    (three planes: 6 bytes an amplitude, token and head with 16-bit values; 12 with float32) are not held
    until backward."""
    b, h, nq, nk, dim = 2, 3, 37, 29, 32  # 32 amplitudes: float16 planes for 16-bit values
    sq, sk = states(b, h, nq, dim, 0), states(b, h, nk, dim, 1)
    v = torch.randn(b, h, nk, 32, device="cuda").to(dtype)
    mask = make_mask(b, nk, "cuda")
    results, held = [], []
    for kept in (False, True):
        inputs = leaves(sq, sk, v, torch.tensor([2.0, 4.0, 8.0], device="cuda"))
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t) or t, lambda t: t):
            out = kernels.fidelity_attention(*inputs[:3], mask, inputs[3], 0.2, seed=3, states_kept=kept)
        own = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
        for leaf in inputs:
            own.pop(leaf.untyped_storage().data_ptr(), None)
        held.append(sum(own.values()))
        results.append((out, grads(out, inputs, torch.ones_like(out))))
    assert held[0] - held[1] == b * h * (nq + nk) * dim * (12 if dtype == torch.float32 else 6)
    (out, got), (out_kept, got_kept) = results
    assert torch.equal(out_kept, out)
    for name, a, e in zip(("dstates_q", "dstates_k", "dv", "dbeta"), got_kept, got, strict=True):
        assert_close(a, e, 1e-6, name)  # the same kernels on the same rows; dβ sums with atomics


@pytest.fixture
def no_fallback(monkeypatch):
    """Make the PyTorch fallback of kernels.fidelity_attention an error: the kernel must take the inputs."""

    def refuse(*args, **kwargs):
        raise AssertionError("fidelity_attention fell back to its PyTorch path")

    monkeypatch.setattr(kernels.reference, "fidelity_attention", refuse)


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [4, 16, 64, 128, 256])
@pytest.mark.parametrize(("nq", "nk"), [(1, 1), (100, 100), (17, 333)])
def test_fidelity_matches_pytorch(dim, dtype, nq, nk, request):
    if dtype == torch.float32 and dim > kernels.MAX_FLOAT32_STATE_DIM:
        check_fidelity(2, 3, nq, nk, dim, 64, dtype)  # the PyTorch path (test_fidelity_float32_limit)
        return
    request.getfixturevalue("no_fallback")
    check_fidelity(2, 3, nq, nk, dim, 64, dtype)


@requires_gpu
def test_fidelity_float32_limit(monkeypatch):
    """float32 values with more than MAX_FLOAT32_STATE_DIM amplitudes take the PyTorch path; 16-bit ones do not."""
    from qra.kernels import fidelity

    calls = []
    monkeypatch.setattr(fidelity, "fused_fidelity_attention", lambda *a, **k: calls.append(1) or a[2][..., :0, :])
    dim = 2 * kernels.MAX_FLOAT32_STATE_DIM
    sq, sk = states(1, 2, 5, dim, 0), states(1, 2, 5, dim, 1)
    kernels.fidelity_attention(sq, sk, torch.randn(1, 2, 5, 8, device="cuda"))
    assert calls == []
    kernels.fidelity_attention(sq, sk, torch.randn(1, 2, 5, 8, device="cuda", dtype=torch.bfloat16))
    assert calls == [1]


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("nq", "nk"), [(1, 1), (17, 17), (333, 5), (5, 333)])
@pytest.mark.parametrize("dv", [32, 64, 128])
def test_fidelity_odd_lengths_and_value_dims(nq, nk, dv, dtype, no_fallback):
    check_fidelity(3, 2, nq, nk, 64, dv, dtype, masked=nk > 1)


@requires_gpu
@pytest.mark.parametrize("grad_scale", [1e-9, 1e-4, 1e4])
def test_fidelity_gradients_keep_their_precision_at_any_scale(grad_scale, no_fallback):
    """16-bit values: the gradient products run in float16 on power-of-two scaled operands; tiny (bf16
    training without loss scaling) and large gradients must neither underflow nor overflow."""
    check_fidelity(2, 3, 64, 64, 64, 64, torch.bfloat16, grad_scale=grad_scale)


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [None, 3.0, "scalar-tensor"])
def test_fidelity_beta_forms_and_dropout(beta, dtype):
    b, h, n, dim, dv, p = 2, 2, 50, 64, 32, 0.2
    sq, sk = states(b, h, n, dim, 2), states(b, h, n, dim, 3)
    v = torch.randn(b, h, n, dv, device="cuda").to(dtype)
    if beta == "scalar-tensor":
        beta = torch.tensor(8.0, device="cuda", requires_grad=True)
    inputs = leaves(sq, sk, v)
    out = kernels.fidelity_attention(*inputs, None, beta, p, seed=77)
    grad_out = torch.randn_like(out)
    wrt = [*inputs, beta] if isinstance(beta, torch.Tensor) else inputs
    got = grads(out, wrt, grad_out)
    keep = kernels.dropout_keep_mask(77, b, h, n, n, p, "cuda")
    ref_inputs = leaves(sq, sk, v.float())
    ref_beta = beta.detach().clone().requires_grad_() if isinstance(beta, torch.Tensor) else beta
    expected = reference.fidelity_attention(*ref_inputs, None, ref_beta, p, keep=keep)
    ref_wrt = [*ref_inputs, ref_beta] if isinstance(beta, torch.Tensor) else ref_inputs
    want = grads(expected, ref_wrt, grad_out.float())
    rtol = 1e-4 if dtype == torch.float32 else RTOL[dtype]
    assert_close(out, expected, rtol, "out")
    for a, e in zip(got, want, strict=True):
        assert a.shape == e.shape
        assert_close(a, e, rtol, "grad")
