"""Temperature calibration: each patched head's softmax β set so its attention is as sharp as the layer's own."""

from __future__ import annotations

import pytest
import torch

import qra
from qra.experiment.config import TrainConfig
from qra.experiment.distillation import softmax_attention
from qra.experiment.metrics import row_entropies
from qra.experiment.qk_scale import record_layer_inputs, recording_kernel_inputs
from qra.experiment.temperature import calibrate_temperature, search_temperature

from .conftest import tiny_bert, two_batches


def entropy_per_head(weights, keep):
    """Mean normalised entropy per head over real queries, computed directly from the definition."""
    keep = torch.ones(weights.shape[0], weights.shape[2], dtype=torch.bool) if keep is None else keep.bool()
    _, normalized = row_entropies(weights.float(), keep)
    return torch.stack([normalized[:, h][keep].mean() for h in range(weights.shape[1])])


def test_search_finds_each_heads_temperature():
    # entropy 1/(1+β) per head: targets 0.5 and 0.1 are met at β = 1 and β = 9
    found = search_temperature(lambda beta: 1 / (1 + beta), torch.tensor([0.5, 0.1]))
    torch.testing.assert_close(found, torch.tensor([1.0, 9.0]), rtol=1e-5, atol=1e-6)
    # a target flatter than the smallest β allows, or sharper than the largest, ends at the range's edge
    edges = search_temperature(lambda beta: 1 / (1 + beta), torch.tensor([1.0, 0.0]))
    assert edges[0] < 2e-3 and edges[1] > 5e5


@pytest.mark.parametrize("featuremap,params", [("rff", {"m": 32, "sigma": 8.0}),
                                                ("pennylane-zz", {"qubits": 3, "engine": "native"})])  # fmt: skip
def test_calibrated_attention_is_as_sharp_as_the_layers_own(padded_batch, featuremap, params):
    if featuremap == "pennylane-zz":
        pytest.importorskip("qra_pennylane")
    model = tiny_bert()
    with torch.no_grad():  # a pretrained layer attends sharply; a random tiny one would not
        for layer in (4, 5):
            model.bert.encoder.layer[layer].attention.self.query.weight.mul_(30.0)
    qra.patch(model, featuremap, layers=(4, 5), featuremap_params=params, learn_beta=True)
    model.eval()
    data = two_batches(padded_batch)
    result = calibrate_temperature(model, data, learn=False)
    assert set(result["layers"]) == {"4", "5"}
    with recording_kernel_inputs(model) as (kernels, _):
        kernels = dict(kernels)
    for layer in (4, 5):
        record = result["layers"][str(layer)]
        kernel = kernels[layer]
        assert not kernel.beta.requires_grad  # learn=False froze it
        torch.testing.assert_close(kernel.beta.detach(), torch.tensor(record["beta"]))
        recorded = record_layer_inputs(model, data, layer)
        # what the layer's kernel attention does now, measured independently of the calibration's code
        total_kernel, total_softmax, count = 0, 0, 0
        for q, k, keep in recorded:
            values = q.new_zeros(*q.shape[:-1], 1)
            _, weights = kernel(q, k, values, key_padding_mask=keep, return_weights=True)
            real = int(torch.ones(q.shape[0], q.shape[2]).sum() if keep is None else keep.sum())
            total_kernel = total_kernel + entropy_per_head(weights, keep) * real
            total_softmax = total_softmax + entropy_per_head(softmax_attention(q, k, keep), keep) * real
            count += real
        torch.testing.assert_close(total_kernel / count, total_softmax / count, atol=2e-3, rtol=0)
        torch.testing.assert_close(torch.tensor(record["entropy"]), total_kernel / count, atol=1e-4, rtol=0)
        assert min(record["entropy_before"]) > max(record["entropy"])  # at β = 1 it was flatter than the layer


def test_calibration_refuses_modes_without_a_temperature(padded_batch):
    model = tiny_bert()
    qra.patch(model, "rff", layers=(5,), featuremap_params={"m": 16}, mode="linear")
    with pytest.raises(ValueError, match="sets softmax mode's β; this model's kernel attention runs mode linear"):
        calibrate_temperature(model, two_batches(padded_batch))


@pytest.mark.parametrize(
    "settings,message",
    [({"featuremap": "none", "calibrate_temperature": "fixed"}, "the baseline"),
     ({"featuremap": "rff", "mode": "linear", "calibrate_temperature": "fixed"}, "--mode linear has none"),
     ({"featuremap": "rff", "calibrate_temperature": "learned"}, "needs --learn-beta"),
     ({"featuremap": "rff", "calibrate_temperature": "fixed", "learn_beta": True}, "takes no --learn-beta"),
     ({"featuremap": "rff", "calibrate_temperature": "sharp"}, "takes off, fixed, learned")],
)  # fmt: skip
def test_config_says_what_temperature_calibration_needs(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(output_dir=str(tmp_path / "run"), **settings)
