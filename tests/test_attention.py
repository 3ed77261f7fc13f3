"""Kernel attention against a float64 reference written from the formulas, loop by loop."""

from __future__ import annotations

import pytest
import torch

from qra import KernelAttention, kernel_attention
from qra.featuremaps import get

from .conftest import GaussianKernelMap

B, H, N, D = 2, 3, 7, 8
MODES = ("softmax", "normalized", "linear")


def inputs(seed: int = 0, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, D, generator=generator, dtype=torch.float64) for _ in range(3))
    keep = torch.ones(B, N, dtype=torch.bool)
    keep[1, 4:] = False
    return q.to(dtype), k.to(dtype), v.to(dtype), keep


def reference(q, k, v, fm, mode, keep, beta, eps=1e-6):
    """Attention per (batch, head, query), in float64, straight from the definitions."""
    fm = fm.double()
    out = torch.zeros((*q.shape[:-1], v.shape[-1]), dtype=torch.float64)
    weights = torch.zeros((*q.shape[:-1], k.shape[2]), dtype=torch.float64)
    for b in range(q.shape[0]):
        real = [j for j in range(k.shape[2]) if keep[b, j]]
        for h in range(q.shape[1]):
            for i in range(q.shape[2]):
                s = torch.stack(
                    [
                        fm.similarity(fm(q[b, h, i : i + 1].double()), fm(k[b, h, j : j + 1].double()))[0, 0]
                        for j in real
                    ]
                )
                if mode == "softmax":
                    a = torch.softmax(beta[h] * s, dim=0)
                elif mode == "normalized":
                    a = s.clamp_min(0) / max(s.clamp_min(0).sum().item(), eps)
                else:
                    total = s.sum().item()
                    a = s / (total if abs(total) >= eps else (eps if total >= 0 else -eps))
                weights[b, h, i, real] = a
                out[b, h, i] = a @ v[b, h, real].double()
    return out, weights


MAPS = {
    "rff": lambda: get("rff", d_in=D, m=64, sigma=2.0, seed=1),
    "rff-sincos-orthogonal": lambda: get("rff", d_in=D, m=64, sigma=2.0, sincos=True, orthogonal=True),
    "performer": lambda: get("performer", d_in=D, m=64),
}


@pytest.mark.parametrize("map_name", sorted(MAPS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("with_weights", [True, False], ids=["weights", "fused"])
def test_every_mode_equals_the_float64_reference(map_name, mode, with_weights):
    # without weights, softmax mode runs through SDPA and linear mode never forms the matrix
    fm = MAPS[map_name]()
    q, k, v, keep = inputs()
    beta = torch.tensor([1.0, 3.0, 0.5])
    out, weights = kernel_attention(q, k, v, fm, mode, keep, beta=beta, return_weights=with_weights)
    expected_out, expected_weights = reference(q, k, v, fm, mode, keep, beta)
    if with_weights:
        torch.testing.assert_close(weights.double(), expected_weights, rtol=1e-4, atol=1e-5)
    else:
        assert weights is None
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["softmax", "normalized"])
def test_maps_with_their_own_similarity_are_supported(mode):
    fm = GaussianKernelMap(D, sigma=3.0)
    q, k, v, keep = inputs()
    out, weights = kernel_attention(q, k, v, fm, mode, keep, return_weights=True)
    expected_out, expected_weights = reference(q, k, v, fm, mode, keep, torch.ones(H))
    torch.testing.assert_close(weights.double(), expected_weights, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-4, atol=1e-5)


def test_linear_mode_equals_the_quadratic_evaluation_of_the_same_formula():
    fm = get("rff", d_in=D, m=256, sigma=2.0)
    q, k, v, keep = (t.double() if t.is_floating_point() else t for t in inputs())
    fm = fm.double()
    out, weights = kernel_attention(q, k, v, fm, "linear", keep, return_weights=True)
    scores = fm(q) @ fm(k).transpose(-1, -2) * keep[:, None, None, :]
    quadratic = (scores / scores.sum(-1, keepdim=True)) @ v
    torch.testing.assert_close(out, quadratic, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(weights @ v, quadratic, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("map_name", sorted(MAPS))
@pytest.mark.parametrize("mode", MODES)
def test_masked_keys_get_exactly_zero_weight_and_cannot_leak(map_name, mode):
    fm = MAPS[map_name]()
    q, k, v, keep = inputs()
    out, weights = kernel_attention(q, k, v, fm, mode, keep, return_weights=True)
    assert torch.all(weights[1, :, :, 4:] == 0)
    # Whatever sits at the padded positions, real outputs do not change.
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 4:] = 100.0
    v2[1, :, 4:] = -50.0
    out2, _ = kernel_attention(q, k2, v2, fm, mode, keep)
    torch.testing.assert_close(out2, out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_padding_invariance(mode):
    fm = get("performer", d_in=D)
    q, k, v, keep = inputs()
    out, _ = kernel_attention(q, k, v, fm, mode, keep)
    alone, _ = kernel_attention(q[1:, :, :4], k[1:, :, :4], v[1:, :, :4], fm, mode)
    torch.testing.assert_close(out[1:, :, :4], alone, rtol=1e-5, atol=1e-6)


def test_softmax_temperature_is_per_head():
    fm = get("rff", d_in=D, m=32)
    q, k, v, _ = inputs()
    _, cold = kernel_attention(q, k, v, fm, "softmax", beta=torch.tensor([1.0, 1.0, 20.0]), return_weights=True)
    _, warm = kernel_attention(q, k, v, fm, "softmax", beta=1.0, return_weights=True)
    torch.testing.assert_close(cold[:, :2], warm[:, :2])
    assert cold[:, 2].max() > warm[:, 2].max()


def test_gradients_flow_to_queries_keys_values_and_learned_knobs():
    fm = get("rff", d_in=D, m=32, learn_sigma=True)
    attention = KernelAttention(fm, num_heads=H, mode="softmax", learn_beta=True)
    q, k, v, keep = inputs()
    for tensor in (q, k, v):
        tensor.requires_grad_()
    attention(q, k, v, keep)[0].square().sum().backward()
    for grad in (q.grad, k.grad, v.grad, attention.beta.grad, fm.log_sigma.grad):
        assert grad is not None and grad.abs().sum() > 0


def test_bfloat16_inputs_give_bfloat16_outputs_close_to_float32():
    fm = get("rff", d_in=D, m=64, sigma=2.0)
    q, k, v, keep = inputs()
    for mode in MODES:
        low = kernel_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), fm, mode, keep)[0]
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), kernel_attention(q, k, v, fm, mode, keep)[0], rtol=0.05, atol=0.05)


def test_dropout_only_when_asked():
    fm = get("rff", d_in=D, m=32)
    q, k, v, _ = inputs()
    torch.manual_seed(0)
    _, dropped = kernel_attention(q, k, v, fm, "softmax", dropout_p=0.5, return_weights=True)
    assert (dropped == 0).float().mean() > 0.3


def test_linear_mode_refuses_maps_that_cannot_factor():
    q, k, v, _ = inputs()
    with pytest.raises(ValueError, match="is_linear"):
        kernel_attention(q, k, v, GaussianKernelMap(D), "linear")
    with pytest.raises(ValueError, match="is_linear"):
        KernelAttention(GaussianKernelMap(D), num_heads=H, mode="linear")


def test_bad_mode_and_shapes_are_explained():
    fm = get("rff", d_in=D)
    q, k, v, keep = inputs()
    with pytest.raises(ValueError, match="accepted: softmax, normalized, linear"):
        kernel_attention(q, k, v, fm, "cosine")
    with pytest.raises(ValueError, match="d_in=8"):
        kernel_attention(q[..., :4], k[..., :4], v, fm)
    with pytest.raises(ValueError, match="key_padding_mask"):
        kernel_attention(q, k, v, fm, key_padding_mask=keep[:, :3])


def test_normalized_mode_in_blocks_of_queries_equals_the_whole_matrix(monkeypatch):
    import qra.attention as attention

    fm = get("rff", d_in=8, m=16, sigma=2.0).double()
    q, k, v = (torch.randn(2, 3, 37, 8, dtype=torch.float64) for _ in range(3))
    keep = torch.ones(2, 37, dtype=torch.bool)
    keep[1, 30:] = False
    whole, weights = kernel_attention(q, k, v, fm, "normalized", key_padding_mask=keep, return_weights=True)
    monkeypatch.setattr(attention, "NORMALIZED_BLOCK_ELEMENTS", 2 * 3 * 37 * 5)  # 5 queries a block
    blocked, none = kernel_attention(q, k, v, fm, "normalized", key_padding_mask=keep)
    assert none is None
    torch.testing.assert_close(blocked, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(blocked, weights @ v)


def test_the_pytorch_path_runs_without_cuda_and_fused_is_refused_clearly(monkeypatch):
    torch.manual_seed(0)
    fm = get("rff", d_in=8, m=16)
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    layer = KernelAttention(fm, num_heads=2, mode="linear")
    layer(q, k, v)
    assert layer.last_path == "pytorch"
    with pytest.raises(ValueError, match="implementation='fused': the fused kernels cannot take these inputs"):
        kernel_attention(q, k, v, fm, "linear", implementation="fused")
    # asking for the weights (attention metrics) takes the PyTorch path whatever the setting: no error
    out, weights = kernel_attention(q, k, v, fm, "linear", return_weights=True, implementation="fused")
    torch.testing.assert_close(out, weights @ v, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown implementation 'triton'; accepted: auto, pytorch, fused"):
        KernelAttention(fm, num_heads=2, implementation="triton")
    monkeypatch.setenv("QRA_ATTENTION_IMPLEMENTATION", "fast")
    with pytest.raises(ValueError, match="QRA_ATTENTION_IMPLEMENTATION='fast'"):
        layer(q, k, v)


def test_normalized_blocks_give_the_whole_matrix_gradients(monkeypatch):
    import qra.attention as attention

    fm = get("rff", d_in=8, m=16, sigma=2.0, learn_sigma=True).double()
    q, k, v = (torch.randn(1, 2, 23, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    grads = []
    for block in (attention.NORMALIZED_BLOCK_ELEMENTS, 2 * 23 * 4):
        monkeypatch.setattr(attention, "NORMALIZED_BLOCK_ELEMENTS", block)
        out, _ = kernel_attention(q, k, v, fm, "normalized")
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v, fm.log_sigma)))
    for whole, blocked in zip(*grads, strict=True):
        torch.testing.assert_close(blocked, whole, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("map_name", "params", "by_default"),
    [("rff", {}, True), ("rff", {"sincos": True, "learn_sigma": True}, True), ("performer", {}, True),
     ("performer", {"stabilize": False}, True), ("hedgehog", {"heads": 2}, False)],
)  # fmt: skip
def test_softmax_prefers_the_fused_path_for_prologue_and_circuit_maps(map_name, params, by_default, monkeypatch):
    """auto takes the fused softmax for maps with a Fourier or exponential prologue (features from one Triton pass,
    then SDPA; the exponential one unless switched off) and for circuit maps (the fidelity kernel); other dot-product
    maps keep SDPA over PyTorch's features."""
    from qra.attention import ATTENTION_MODES, attention_inputs

    monkeypatch.setenv("QRA_EXPONENTIAL_PASS", "1")
    fm = get(map_name, d_in=8, **params)
    q = k = v = torch.randn(1, 2, 5, 8)
    inputs = attention_inputs(q, k, v, fm, "softmax", None, None, 0.0, False, 1e-6)
    assert ATTENTION_MODES["softmax"].fused_by_default(inputs) is by_default
    assert inputs.has_prologue is by_default
    assert (inputs.fourier_prologue is not None) is (map_name == "rff")
    assert (inputs.exponential_prologue is not None) is (map_name == "performer")
    assert inputs.fourier_prologue is inputs.fourier_prologue  # formed once a call
    assert inputs.exponential_prologue is inputs.exponential_prologue
    monkeypatch.setenv("QRA_EXPONENTIAL_PASS", "0")
    inputs = attention_inputs(q, k, v, fm, "softmax", None, None, 0.0, False, 1e-6)
    assert inputs.exponential_prologue is None and inputs.has_prologue is (map_name == "rff")


def test_the_exponential_pass_follows_its_default_and_the_environment(monkeypatch):
    """FAVOR+ maps take the Triton feature pass by default (verified and measured on an H200); the environment
    variable switches it either way."""
    from qra import kernels

    monkeypatch.delenv("QRA_EXPONENTIAL_PASS", raising=False)
    assert kernels.exponential_pass_enabled() is kernels.EXPONENTIAL_PASS_BY_DEFAULT is True
    monkeypatch.setenv("QRA_EXPONENTIAL_PASS", "1")
    assert kernels.exponential_pass_enabled()
    monkeypatch.setenv("QRA_EXPONENTIAL_PASS", "0")
    assert not kernels.exponential_pass_enabled()


def test_a_circuit_map_prefers_the_fidelity_kernel():
    pytest.importorskip("qra_pennylane")
    from qra.attention import ATTENTION_MODES, attention_inputs

    fm = get("pennylane-zz", d_in=8, qubits=2)
    q = k = v = torch.randn(1, 2, 5, 8)
    inputs = attention_inputs(q, k, v, fm, "softmax", None, None, 0.0, False, 1e-6)
    assert ATTENTION_MODES["softmax"].fused_by_default(inputs) and inputs.fourier_prologue is None
