"""Random Fourier features against the exact RBF kernel."""

from __future__ import annotations

import math

import pytest
import torch

from qra.featuremaps import RandomFourierFeatures, get


def rbf(x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    return torch.exp(-torch.cdist(x, y).square() / (2 * sigma**2))


def points(n: int = 40, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.4


def mean_squared_error(fm: RandomFourierFeatures, x: torch.Tensor, sigma: float) -> float:
    fm = fm.double()
    features = fm(x)
    return (fm.similarity(features, features) - rbf(x, x, sigma)).square().mean().item()


def test_features_match_the_formula_exactly():
    fm = RandomFourierFeatures(d_in=16, m=64, sigma=1.5, seed=3).double()
    x = points()
    expected = math.sqrt(2 / 64) * torch.cos(x @ fm.omega.double().T / 1.5 + fm.phase.double())
    # σ is stored as float32 log σ, hence 1e-7 rather than 1e-15.
    torch.testing.assert_close(fm(x), expected, rtol=0, atol=1e-7)


def test_sincos_features_have_unit_norm():
    # cos² + sin² = 1 per frequency, so φ(x)·φ(x) = 1 = k(x, x) exactly.
    fm = RandomFourierFeatures(d_in=16, m=32, sincos=True).double()
    features = fm(points())
    torch.testing.assert_close(features.square().sum(-1), torch.ones(40, dtype=torch.float64))


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("sincos", [False, True])
def test_approximates_rbf_kernel(sigma, sincos):
    x = points()
    fm = RandomFourierFeatures(d_in=16, m=8192, sigma=sigma, seed=0, sincos=sincos).double()
    features = fm(x)
    error = (fm.similarity(features, features) - rbf(x, x, sigma)).abs().max().item()
    assert error < 0.06


def test_error_shrinks_with_m():
    x = points()
    errors = [
        sum(mean_squared_error(RandomFourierFeatures(16, m=m, seed=seed), x, 1.0) for seed in range(5)) / 5
        for m in (16, 128, 1024)
    ]
    assert errors[0] > 4 * errors[1] > 16 * errors[2]  # MSE ∝ 1/m


@pytest.mark.parametrize(("sincos", "at_most"), [(True, 0.3), (False, 0.9)])
def test_orthogonal_draws_lower_the_error(sincos, at_most):
    # Orthogonality removes the variance of the frequencies' directions; with random phases the
    # phase noise dominates (measured over these 20 seeds: 0.17x with sincos, 0.85x with phases).
    x = points(d=16)

    def total_error(orthogonal: bool) -> float:
        return sum(
            mean_squared_error(
                RandomFourierFeatures(16, m=64, sigma=2.0, seed=s, sincos=sincos, orthogonal=orthogonal), x, 2.0
            )
            for s in range(20)
        )

    assert total_error(True) < at_most * total_error(False)


def test_orthogonal_blocks_are_orthogonal():
    fm = RandomFourierFeatures(d_in=8, m=20, orthogonal=True)
    block = fm.omega[:8].double()
    gram = block @ block.T
    off_diagonal = gram - torch.diag(torch.diagonal(gram))
    assert off_diagonal.abs().max() < 1e-5
    assert fm.omega.shape == (20, 8)


def test_same_seed_same_function_other_seed_other_function():
    x = points().float()
    first, again, other = (get("rff", d_in=16, m=64, seed=s) for s in (7, 7, 8))
    assert torch.equal(first(x), again(x))
    assert not torch.allclose(first(x), other(x))


def test_state_dict_round_trip_restores_the_draws(tmp_path):
    from safetensors.torch import load_file, save_file

    fm = get("rff", d_in=16, m=64, seed=11, learn_sigma=True)
    with torch.no_grad():
        fm.log_sigma.fill_(0.3)  # a "trained" value
    save_file(fm.state_dict(), tmp_path / "fm.safetensors")
    fresh = get("rff", d_in=16, m=64, seed=0, learn_sigma=True)
    fresh.load_state_dict(load_file(tmp_path / "fm.safetensors"))
    x = points().float()
    assert torch.equal(fresh(x), fm(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_output_follows_input_dtype(dtype):
    fm = RandomFourierFeatures(d_in=16, m=32)
    x = points().to(dtype)
    features = fm(x)
    assert features.dtype == dtype
    reference = fm.double()(x.double())
    tolerance = {torch.float32: 1e-6, torch.float64: 1e-12}.get(dtype, 1e-2)
    torch.testing.assert_close(features.double(), reference, rtol=0, atol=tolerance)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_output_follows_input_device():
    fm = RandomFourierFeatures(d_in=16, m=32).cuda()
    x = points().float()
    torch.testing.assert_close(fm(x.cuda()).cpu(), fm.cpu()(x), rtol=0, atol=1e-5)


def test_gradients_reach_inputs_and_learned_sigma():
    fm = RandomFourierFeatures(d_in=16, m=32, learn_sigma=True)
    x = points().float().requires_grad_()
    fm(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert fm.log_sigma.grad is not None and fm.log_sigma.grad.abs() > 0
    torch.testing.assert_close(fm.sigma, torch.tensor(1.0))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"m": 0}, "m must be a positive integer"),
        ({"sigma": 0.0}, "sigma must be a finite number > 0"),
        ({"sigma": float("inf")}, "sigma must be a finite number > 0, got inf"),
        ({"sigma": float("nan")}, "sigma must be a finite number > 0, got nan"),
        ({"m": 7, "sincos": True}, "even m"),
    ],
)
def test_bad_parameters_are_explained(params, message):
    with pytest.raises(ValueError, match=message):
        get("rff", d_in=16, **params)


@pytest.mark.parametrize("sincos", [False, True])
def test_fourier_prologue_describes_the_features_and_their_sigma_gradient(sincos):
    """The fused linear kernel computes φ from fourier_prologue() alone: it must be φ, gradients to σ included."""
    from qra.kernels.reference import fourier_features

    fm = RandomFourierFeatures(d_in=16, m=64, sigma=1.7, seed=5, sincos=sincos, learn_sigma=True)
    x = points(d=16).float().requires_grad_()
    prologue = fm.fourier_prologue()
    assert prologue is not None and prologue.weight.shape == (64, 16) and prologue.phase.shape == (64,)
    from_prologue = fourier_features(x, prologue.weight, prologue.phase, prologue.scale)
    direct = fm(x)
    torch.testing.assert_close(from_prologue, direct, rtol=0, atol=2e-6)
    upstream = torch.randn_like(direct)
    got = torch.autograd.grad(from_prologue, (x, fm.log_sigma), upstream)
    want = torch.autograd.grad(direct, (x, fm.log_sigma), upstream)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_subclass_with_its_own_features_has_no_prologue():
    class Shifted(RandomFourierFeatures):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) + 1.0

    assert Shifted(d_in=8, m=16).fourier_prologue() is None
    assert RandomFourierFeatures(d_in=8, m=16).fourier_prologue() is not None


def _prologue_matches_features(fm: RandomFourierFeatures) -> None:
    from qra.kernels.reference import fourier_features

    x = points(d=8).float()
    prologue = fm.fourier_prologue()
    torch.testing.assert_close(fourier_features(x, prologue.weight, prologue.phase, prologue.scale), fm(x),
                               rtol=0, atol=2e-6)  # fmt: skip


@pytest.mark.parametrize("sincos", [False, True])
def test_fixed_prologue_is_formed_once_and_again_after_any_change(sincos):
    """A fixed σ's prologue is kept between calls (no launches spent on Ω/σ each call), and never stale: an in-place
    update (optimiser step, load_state_dict), a new σ buffer or a .to() rebuilds it."""
    fm = RandomFourierFeatures(d_in=8, m=16, sigma=1.3, seed=2, sincos=sincos)
    first = fm.fourier_prologue()
    assert fm.fourier_prologue() is first
    with torch.no_grad():
        fm.omega.mul_(1.5)
    assert fm.fourier_prologue() is not first
    _prologue_matches_features(fm)
    fm.load_state_dict({**fm.state_dict(), "log_sigma": torch.tensor(0.7)})
    _prologue_matches_features(fm)
    kept = fm.fourier_prologue()
    fm.log_sigma = torch.tensor(0.2)  # a new buffer object, whose version may equal the old one's
    assert fm.fourier_prologue() is not kept
    _prologue_matches_features(fm)
    kept = fm.fourier_prologue()
    assert fm.double().fourier_prologue() is not kept
    if not sincos:
        with torch.no_grad():
            fm.phase.add_(0.25)
        _prologue_matches_features(fm)


def test_learned_sigma_prologue_is_formed_each_call_with_its_graph():
    fm = RandomFourierFeatures(d_in=8, m=16, learn_sigma=True)
    first, second = fm.fourier_prologue(), fm.fourier_prologue()
    assert first is not second and first.weight.requires_grad
    with torch.no_grad():  # nothing to differentiate: kept, and without a graph
        assert fm.fourier_prologue() is fm.fourier_prologue()
    with torch.inference_mode():
        assert not fm.fourier_prologue().weight.requires_grad
    assert fm.fourier_prologue().weight.requires_grad
