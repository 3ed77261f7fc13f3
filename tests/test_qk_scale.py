"""Query–key distance measurement: real tokens only, one row per layer, the model left as it was."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from qra.experiment.models import load_classifier
from qra.experiment.qk_scale import query_key_distances, recording_queries_and_keys


def test_distances_per_layer_and_the_model_is_restored(tiny_model_dir):
    model = load_classifier(str(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["the movie was great", "boring plot and weak acting in this film"]
    result = query_key_distances(model, tokenizer, texts, max_length=32)
    assert [row["layer"] for row in result["layers"]] == list(range(6))
    for row in result["layers"]:
        assert 0 < row["q05"] <= row["q25"] <= row["q50"] <= row["q75"] <= row["q95"]
        # real tokens only: 6 and 10 tokens (with [CLS]/[SEP]) give 6² + 10² pairs per head, 4 heads
        assert row["pairs"] == 4 * (6**2 + 10**2)
    assert model.config._attn_implementation == "sdpa"


def test_recorded_queries_are_the_layer_projections(tiny_model_dir):
    model = load_classifier(str(tiny_model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = tokenizer(["the movie was great"], return_tensors="pt")
    hidden = {}
    layer = model.distilbert.transformer.layer[2]
    handle = layer.register_forward_pre_hook(lambda module, args: hidden.setdefault("x", args[0]))
    with torch.no_grad(), recording_queries_and_keys(model) as modules:
        model(**batch)
        query, _ = modules[2]._qra_recorded
    handle.remove()
    expected = layer.attention.q_lin(hidden["x"]).view(1, -1, 4, 8).transpose(1, 2)
    torch.testing.assert_close(query, expected)
