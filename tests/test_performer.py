"""FAVOR+ positive random features against the exact softmax kernel."""

from __future__ import annotations

import pytest
import torch

from qra import kernel_attention
from qra.featuremaps import PositiveRandomFeatures, get


def points(n: int = 30, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.5


def softmax_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.exp(x @ y.T / x.shape[-1] ** 0.5)


def relative_error(fm: PositiveRandomFeatures, x: torch.Tensor) -> float:
    fm = fm.double()
    estimate = fm.similarity(fm(x), fm(x))
    exact = softmax_kernel(x, x)
    return ((estimate - exact).abs() / exact).mean().item()


def test_features_are_positive_and_match_the_formula():
    fm = PositiveRandomFeatures(d_in=16, m=64, stabilize=False).double()
    x = points()
    scaled = x * 16**-0.25
    expected = torch.exp(scaled @ fm.omega.double().T - scaled.square().sum(-1, keepdim=True) / 2) / 8
    torch.testing.assert_close(fm(x), expected, rtol=1e-12, atol=0)
    assert (fm(x) > 0).all()


def test_unstabilised_features_approximate_the_softmax_kernel_better_with_more_features():
    x = points()
    errors = [
        sum(relative_error(PositiveRandomFeatures(16, m=m, seed=s, stabilize=False), x) for s in range(4)) / 4
        for m in (16, 256, 4096)
    ]
    assert errors[2] < 0.05
    assert errors[0] > 2 * errors[1] > 4 * errors[2]


def test_log_features_are_the_log_of_the_features_when_stabilising():
    x = points().view(3, 10, 16)
    fm = PositiveRandomFeatures(d_in=16, m=32).double()
    torch.testing.assert_close(fm.log_features(x).exp(), fm(x))
    assert PositiveRandomFeatures(d_in=16, m=32, stabilize=False).log_features(x) is None


@pytest.mark.parametrize("mode", ["normalized", "linear"])
def test_stabiliser_cancels_in_normalised_modes(mode):
    q, k, v = (torch.randn(2, 3, 10, 16, dtype=torch.float64) for _ in range(3))
    outputs = [
        kernel_attention(q, k, v, get("performer", d_in=16, stabilize=s).double(), mode=mode)[0] for s in (False, True)
    ]
    torch.testing.assert_close(outputs[0], outputs[1])


def test_stabiliser_keeps_large_inputs_from_underflowing_in_float32():
    # Queries and keys share a large common component (as real attention inputs often do):
    # ‖x'‖²/2 ≈ 70, so the unstabilised kernel values (~e^-140) underflow float32 to 0.
    generator = torch.Generator().manual_seed(0)
    offset = torch.randn(16, generator=generator, dtype=torch.float64)
    offset = offset / offset.norm() * 24
    q, k, v = (offset + torch.randn(1, 2, 12, 16, generator=generator, dtype=torch.float64) for _ in range(3))
    exact = kernel_attention(
        q, k, v, get("performer", d_in=16, stabilize=False).double(), mode="normalized", eps=1e-300
    )[0]
    stable = kernel_attention(q.float(), k.float(), v.float(), get("performer", d_in=16), mode="normalized")[0]
    unstable = kernel_attention(
        q.float(), k.float(), v.float(), get("performer", d_in=16, stabilize=False), mode="normalized"
    )[0]
    torch.testing.assert_close(stable.double(), exact, rtol=1e-3, atol=1e-3)
    assert (unstable.double() - exact).abs().max() > 0.1


def test_bfloat16_inputs_give_bfloat16_features():
    fm = PositiveRandomFeatures(d_in=16, m=32)
    x = points().float().view(3, 10, 16)
    assert fm(x.bfloat16()).dtype == torch.bfloat16
    torch.testing.assert_close(fm(x.bfloat16()).float(), fm(x), rtol=2e-2, atol=1e-3)


def log_space_reference(fm: PositiveRandomFeatures, q, k, v, keep):
    """Normalised performer attention computed from log features in float64: no guard, no underflow."""
    log_q, log_k = fm.double()._log_features(q.double()), fm.double()._log_features(k.double())
    log_scores = torch.logsumexp(log_q.unsqueeze(-2) + log_k.unsqueeze(-3), dim=-1)  # log Σ_r φ_r(q)φ_r(k)
    log_scores = log_scores.masked_fill(~keep[:, None, None, :], float("-inf"))
    return torch.softmax(log_scores, dim=-1) @ v.double()


@pytest.mark.parametrize("mode", ["linear", "normalized"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_large_query_and_key_norms_stay_normalised(mode, dtype):
    """‖q‖, ‖k‖ ≈ 20 at d = 16: the guard scales with the stabiliser, rows still sum to one."""
    generator = torch.Generator().manual_seed(1)
    q, k = (torch.randn(2, 3, 8, 16, generator=generator, dtype=dtype) * 5 for _ in range(2))
    v = torch.randn(2, 3, 8, 4, generator=generator, dtype=dtype)
    keep = torch.ones(2, 8, dtype=torch.bool)
    keep[1, 6:] = False
    fm = get("performer", d_in=16, m=64).to(dtype)
    out, weights = kernel_attention(q, k, v, fm, mode, key_padding_mask=keep, return_weights=True)
    expected = log_space_reference(fm, q, k, v, keep)
    tolerance = 1e-9 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(weights.sum(-1).double(), torch.ones(2, 3, 8, dtype=torch.float64), rtol=0, atol=1e-5)


def test_exponential_prologue_gives_the_maps_features_and_its_stabilised_features():
    """The prologue's formula (the fused kernels' input) is the map's φ, and with the stabilisers the features the
    PyTorch linear mode uses (each query's and each sequence's real keys' max subtracted)."""
    from qra.attention import _stabilised_features
    from qra.kernels.reference import exponential_features

    fm = get("performer", d_in=16, m=32).double()
    prologue = fm.exponential_prologue()
    assert prologue.stabilize
    generator = torch.Generator().manual_seed(2)
    q, k = (torch.randn(2, 3, 9, 16, generator=generator, dtype=torch.float64) * 2 for _ in range(2))
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 5:] = False
    weight, eta = prologue.weight.double(), prologue.norm_weight
    torch.testing.assert_close(exponential_features(q, weight, eta, prologue.scale), fm(q), rtol=1e-12, atol=0)
    expected_q, expected_k = _stabilised_features(fm, q, k, keep)
    torch.testing.assert_close(exponential_features(q, weight, eta, 1.0, stabilizer="row"), expected_q)
    got_k = exponential_features(k, weight, eta, 1.0, stabilizer="sequence", key_padding_mask=keep)
    torch.testing.assert_close(got_k, expected_k)
    assert not get("performer", d_in=16, stabilize=False).exponential_prologue().stabilize


def test_subclasses_that_change_the_features_have_no_exponential_prologue():
    class Doubled(PositiveRandomFeatures):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    assert Doubled(d_in=8).exponential_prologue() is None
    assert PositiveRandomFeatures(d_in=8).exponential_prologue() is not None


def test_exponential_features_cpu_path_and_errors():
    from qra import kernels

    fm = get("performer", d_in=8, m=16)
    prologue = fm.exponential_prologue()
    x = torch.randn(2, 3, 5, 8)
    beta = torch.tensor([0.5, 1.0, 2.0])
    got = kernels.exponential_features(x, prologue.weight, prologue.norm_weight, prologue.scale, beta)
    torch.testing.assert_close(got, fm(x) * beta.view(1, 3, 1, 1))
    with pytest.raises(ValueError, match="unknown stabilizer 'max'; expected one of none, row, sequence"):
        kernels.exponential_features(x, prologue.weight, 0.5, 1.0, stabilizer="max")
    with pytest.raises(ValueError, match=r"key_padding_mask must be \[B, N\]"):
        kernels.exponential_features(x, prologue.weight, 0.5, 1.0, key_padding_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"weight must be \[m, d=8\]"):
        kernels.exponential_features(x, prologue.weight[:, :4], 0.5, 1.0)


@pytest.mark.parametrize("mode", ["linear", "normalized"])
def test_a_sequence_without_real_keys_attends_to_nothing(mode):
    """The keys' stabiliser is −inf for a sequence whose keys are all padding; that sequence's output is 0 and its
    gradients finite, not inf · 0 = NaN."""
    q, k, v = (torch.randn(2, 3, 6, 16, requires_grad=True) for _ in range(3))
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[0] = False
    out, _ = kernel_attention(q, k, v, get("performer", d_in=16, m=32), mode, key_padding_mask=keep)
    assert torch.isfinite(out).all() and (out[0] == 0).all()
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(out.square().sum(), (q, k, v)))
