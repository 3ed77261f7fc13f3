"""Hedgehog's learnable map: its formula per head, gradients, patching in every mode, save/load, distillation."""

from __future__ import annotations

import pytest
import torch

import qra
from qra.experiment.distillation import _mismatch, distill_hedgehog
from qra.featuremaps.hedgehog import HedgehogFeatureMap

from .conftest import HEAD_DIM, HEADS


def test_formula_per_head_and_identity_start():
    torch.manual_seed(0)
    fm = HedgehogFeatureMap(3, heads=2)
    assert torch.equal(fm.weight, torch.eye(3).repeat(2, 1, 1)) and fm.dim == 6 and fm.is_linear
    with torch.no_grad():
        fm.weight[1] = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 0.5], [3.0, 0.0, 1.0]])
    x = torch.randn(2, 2, 5, 3)  # [B, H, N, d]
    features = fm(x)
    for head in range(2):
        projected = x[:, head] @ fm.weight[head].T
        expected = torch.cat([projected.softmax(-1), (-projected).softmax(-1)], dim=-1)
        torch.testing.assert_close(features[:, head], expected)
    manual = torch.exp(x[0, 0, 0]) / torch.exp(x[0, 0, 0]).sum()  # head 0 has W = I: softmax(x)
    torch.testing.assert_close(features[0, 0, 0, :3], manual)
    assert torch.allclose(features[..., :3].sum(-1), torch.ones(2, 2, 5))


def test_gradients_reach_every_head_and_shared_w_accepts_any_shape():
    fm = HedgehogFeatureMap(4, heads=3, bias=True)
    x = torch.randn(2, 3, 6, 4)
    (fm(x)[..., :4] * torch.randn(2, 3, 6, 4)).sum().backward()
    assert fm.weight.grad is not None and (fm.weight.grad.abs().sum(dim=(1, 2)) > 0).all()
    assert fm.bias.grad is not None
    assert HedgehogFeatureMap(4)(torch.randn(7, 4)).shape == (7, 8)  # heads=1: one W for any input


def test_wrong_heads_and_parameters_are_refused():
    with pytest.raises(ValueError, match="heads"):
        HedgehogFeatureMap(4, heads=3)(torch.randn(2, 2, 5, 4))
    with pytest.raises(ValueError, match="positive integer"):
        HedgehogFeatureMap(4, heads=0)
    model = qra.featuremaps.get("hedgehog", d_in=HEAD_DIM, heads=HEADS + 1)
    from .conftest import tiny_bert

    with pytest.raises(ValueError, match=f"model has {HEADS} attention heads"):
        qra.patch(tiny_bert(), model, layers=(5,))


def test_registered_and_patched_by_name_with_the_models_heads_in_every_mode(model_factory, padded_batch, tmp_path):
    assert "hedgehog" in qra.featuremaps.available()
    for mode in ("softmax", "normalized", "linear"):
        model = model_factory()
        qra.patch(model, "hedgehog", layers=(4, 5), mode=mode)
        assert model.config.qra["featuremap_params"]["heads"] == HEADS
        logits = model(**padded_batch).logits
        assert torch.isfinite(logits).all()
    with torch.no_grad():  # a trained W must survive the round trip
        for name, parameter in model.named_parameters():
            if name.endswith("featuremap.weight"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    logits = model(**padded_batch).logits
    model.save_pretrained(tmp_path / "saved")
    reloaded = qra.load_patched(tmp_path / "saved").eval()
    torch.testing.assert_close(reloaded(**padded_batch).logits, logits)


def test_distillation_brings_kernel_attention_closer_to_softmax_attention(padded_batch):
    from .conftest import tiny_bert

    model = tiny_bert()
    qra.patch(model, "hedgehog", layers=(4, 5), mode="linear")
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if "featuremap" not in name}
    batches = [padded_batch]
    before = _mismatch(model, batches)
    report = distill_hedgehog(model, batches, steps=40, lr=0.05)
    after = _mismatch(model, batches)
    assert set(before) == {4, 5}
    for layer in (4, 5):
        assert after[layer] < 0.8 * before[layer], (before, after)
    assert report["mismatch_after"]["4"] == pytest.approx(after[4])
    for name, parameter in model.named_parameters():  # only the maps changed
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name


def test_distillation_needs_trainable_map_parameters(padded_batch):
    from .conftest import tiny_bert

    model = tiny_bert()
    qra.patch(model, "rff", layers=(5,), featuremap_params={"m": 8})
    with pytest.raises(ValueError, match="has none"):
        distill_hedgehog(model, [padded_batch], steps=1)
