"""The attention modes' fused paths on CUDA against their PyTorch paths, inside patched models.

Kernel-level checks (every shape, dtype and gradient) are in test_kernels.py; these check the
dispatch: which path runs, and that a patched layer gives the same outputs and gradients on both.
"""

from __future__ import annotations

import pytest
import torch

from qra import KernelAttention, kernel_attention, kernels
from qra.featuremaps import get

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
pytest.importorskip("triton")


def inputs(dtype, heads=4, n=77, d=16, batch=2):
    generator = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(batch, heads, n, d, device="cuda", dtype=dtype, generator=generator) for _ in range(3))
    keep = torch.ones(batch, n, dtype=torch.bool, device="cuda")
    keep[1, 50:] = False
    return q, k, v, keep


def gradients(fm, mode, implementation, q, k, v, keep, beta=None):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, _ = kernel_attention(*leaves, fm, mode, key_padding_mask=keep, beta=beta, implementation=implementation)
    params = [p for p in fm.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.float().square().sum(), [*leaves, *params])
    return out, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_mode_takes_the_fused_path_by_default_and_agrees(dtype):
    fm = get("rff", d_in=16, m=64, sigma=2.0, learn_sigma=True).cuda()
    q, k, v, keep = inputs(dtype)
    layer = KernelAttention(fm, num_heads=4, mode="linear").cuda()
    layer(q, k, v, key_padding_mask=keep)
    assert layer.last_path == "fused"
    fused, fused_grads = gradients(fm, "linear", "auto", q, k, v, keep)
    plain, plain_grads = gradients(fm, "linear", "pytorch", q, k, v, keep)
    tolerance = 2e-3 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(fused.float(), plain.float(), rtol=tolerance, atol=tolerance)
    for a, b in zip(fused_grads, plain_grads, strict=True):  # q, k, v and σ
        torch.testing.assert_close(a.float(), b.float(), rtol=tolerance * 5, atol=tolerance * 5)


@pytest.mark.parametrize(("name", "params"), [("rff", {"m": 64}), ("pennylane-zz", {"qubits": 4, "engine": "native"})])
def test_softmax_on_the_fused_kernels_equals_the_pytorch_path(name, params):
    if name.startswith("pennylane"):
        pytest.importorskip("qra_pennylane")
    fm = get(name, d_in=16, **params).cuda()
    q, k, v, keep = inputs(torch.float32)
    beta = torch.tensor([1.0, 2.0, 4.0, 8.0], device="cuda", requires_grad=True)
    fused, fused_grads = gradients(fm, "softmax", "fused", q, k, v, keep, beta)
    plain, plain_grads = gradients(fm, "softmax", "pytorch", q, k, v, keep, beta)
    torch.testing.assert_close(fused, plain, rtol=2e-3, atol=2e-3)
    for a, b in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_circuit_map_takes_the_fidelity_kernel_by_default_and_agrees(dtype):
    pytest.importorskip("qra_pennylane")
    fm = get("pennylane-zz", d_in=16, qubits=4, engine="native").cuda()
    q, k, v, keep = inputs(dtype)
    layer = KernelAttention(fm, num_heads=4, mode="softmax").cuda()
    layer(q, k, v, key_padding_mask=keep)
    assert layer.last_path == "fused"
    beta = torch.tensor([1.0, 2.0, 4.0, 8.0], device="cuda", requires_grad=True)
    fused, fused_grads = gradients(fm, "softmax", "auto", q, k, v, keep, beta)
    plain, plain_grads = gradients(fm, "softmax", "pytorch", q, k, v, keep, beta)
    tolerance = 2e-3 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(fused.float(), plain.float(), rtol=tolerance, atol=tolerance)
    for a, b in zip(fused_grads, plain_grads, strict=True):  # q, k, v and the map's parameters
        scale = b.float().abs().max().item()
        assert (a.float() - b.float()).abs().max().item() <= 5 * tolerance * scale, (a.shape, scale)


def test_recomputed_states_on_the_circuit_kernels_give_the_same_gradients():
    """recompute_states with the fused circuit and fidelity kernels: the same outputs and gradients as keeping
    the states (the circuit's backward kernel forms the states again from the phase coefficients)."""
    pytest.importorskip("qra_pennylane")
    q, k, v, keep = inputs(torch.bfloat16)
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)
        fm = get("pennylane-zz", d_in=16, qubits=6, engine="native", recompute_states=recompute).cuda()
        results.append(gradients(fm, "softmax", "auto", q, k, v, keep))
    (out_a, grads_a), (out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(b, a)


def test_circuit_maps_let_the_fidelity_kernel_save_their_states(monkeypatch):
    """A circuit map whose adjoint keeps its states has the fidelity kernel save those instead of packed copies;
    with recompute_states, which keeps none, the kernel keeps its own."""
    pytest.importorskip("qra_pennylane")
    seen = []
    original = kernels.fidelity_attention

    def recording(*args, **kwargs):
        seen.append(kwargs["states_kept"])
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "fidelity_attention", recording)
    q, k, v, keep = inputs(torch.bfloat16)
    for recompute in (False, True):
        fm = get("pennylane-zz", d_in=16, qubits=6, engine="native", recompute_states=recompute).cuda()
        gradients(fm, "softmax", "auto", q, k, v, keep)
    assert seen == [True, False]


def test_a_patched_model_on_both_paths():
    from transformers import BertConfig, BertForSequenceClassification

    import qra

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=128, attn_implementation="sdpa")  # fmt: skip
    model = BertForSequenceClassification(config).cuda().eval()
    ids = torch.randint(5, 100, (2, 40), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    logits = {}
    for implementation in ("auto", "pytorch"):
        qra.patch(model, "rff", layers=(1, 2), mode="linear", featuremap_params={"m": 32},
                  implementation=implementation)  # fmt: skip
        with torch.no_grad():
            logits[implementation] = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits["auto"], logits["pytorch"], rtol=1e-3, atol=1e-3)
