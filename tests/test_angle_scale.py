"""Angle-scale calibration of circuit maps: the median query–key fidelity of each patched layer near 0.5."""

from __future__ import annotations

import math

import pytest
import torch

import qra
from qra.experiment.angle_scale import (
    _unscaled_angles,
    calibrate_angle_scale,
    current_angle_scale,
    median_fidelity,
)
from qra.experiment.qk_scale import recording_kernel_inputs

from .conftest import HEAD_DIM, tiny_bert, two_batches

pytest.importorskip("qra_pennylane")


def zz_model(**params):
    model = tiny_bert()
    qra.patch(model, "pennylane-zz", layers=(4, 5), featuremap_params={"qubits": 3, "engine": "native", **params})
    return model


def layer_fidelities(model, data):
    found = {}
    with torch.no_grad(), recording_kernel_inputs(model) as (kernels, recorded):
        inputs = {}
        for batch in data:
            model(**batch)
            for layer, entry in recorded.items():
                inputs.setdefault(layer, []).append(entry)
    for layer, entries in inputs.items():
        fm = kernels[layer].featuremap
        found[layer] = median_fidelity(fm, _unscaled_angles(fm, entries, seed=0), current_angle_scale(fm))
    return found


def test_calibration_puts_the_median_fidelity_near_one_half(padded_batch):
    model = zz_model(angle_scale=20.0)  # far too large: fidelities concentrate near 2^-3
    data = two_batches(padded_batch)
    before = layer_fidelities(model, data)
    assert all(value < 0.35 for value in before.values()), before
    result = calibrate_angle_scale(model, data, target=0.5, tolerance=0.01)
    after = layer_fidelities(model, data)
    assert set(result["layers"]) == {"4", "5"}
    for layer in (4, 5):
        assert after[layer] == pytest.approx(0.5, abs=0.011)
        assert result["layers"][str(layer)]["median_fidelity"] == pytest.approx(after[layer])
        assert result["layers"][str(layer)]["angle_scale"] < 20.0
    assert torch.isfinite(model(**padded_batch).logits).all()


def test_a_learned_scale_is_a_parameter_saved_with_the_model(padded_batch, tmp_path):
    model = zz_model(learn_angle_scale=True)
    fm = model.bert.encoder.layer[5].attention.self.qra_attention.featuremap
    assert isinstance(fm.log_angle_scale, torch.nn.Parameter) and fm.log_angle_scale.item() == 0.0
    x = torch.randn(5, HEAD_DIM)
    angles = fm.angles(x)
    with torch.no_grad():
        fm.log_angle_scale.fill_(math.log(2.0))
    torch.testing.assert_close(fm.angles(x), 2 * angles)
    fm.angles(x).sum().backward()
    assert fm.log_angle_scale.grad is not None
    calibrate_angle_scale(model, two_batches(padded_batch), learn=False)
    assert not fm.log_angle_scale.requires_grad
    scale = current_angle_scale(fm)
    logits = model(**padded_batch).logits
    model.save_pretrained(tmp_path / "saved")
    reloaded = qra.load_patched(tmp_path / "saved").eval()
    again = reloaded.bert.encoder.layer[5].attention.self.qra_attention.featuremap
    assert current_angle_scale(again) == pytest.approx(scale)
    torch.testing.assert_close(reloaded(**padded_batch).logits, logits)


def test_calibration_refuses_models_without_circuit_maps(padded_batch):
    model = tiny_bert()
    qra.patch(model, "rff", layers=(5,), featuremap_params={"m": 8})
    with pytest.raises(ValueError, match="circuit"):
        calibrate_angle_scale(model, [padded_batch])
    with pytest.raises(ValueError, match="angle_scale > 0"):
        qra.featuremaps.get("pennylane-zz", d_in=HEAD_DIM, qubits=3, angle_scale=0.0, learn_angle_scale=True)
