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
