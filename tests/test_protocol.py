"""The protocol as configuration: --freeze, warm-up, eager attention, seed-only data order, the protocol's
perturbations, per-review predictions; and the protocol sweep config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import qra
from qra.experiment.config import TrainConfig, parse_freeze
from qra.experiment.models import freeze, load_classifier
from qra.experiment.robustness import SynonymTable, adjective_swap, content_word_dropout, parse_settings, perturb
from qra.experiment.runs import RunDirectory
from qra.experiment.training import SeededLengthGroupedSampler

from .conftest import ScaledIdentity, tiny_bert, tiny_distilbert
from .test_train_cli import invoke, train_args

ROOT = Path(__file__).resolve().parents[1]


def test_freeze_spec_is_parsed_canonically_and_bad_specs_say_what_is_accepted():
    assert parse_freeze("embeddings,0-3") == ["embeddings", 0, 1, 2, 3]
    assert parse_freeze(["3", "Embeddings", "0-1", 1]) == ["embeddings", 0, 1, 3]
    assert parse_freeze("") == [] and parse_freeze(None) == []
    assert TrainConfig(freeze="embeddings,0-3", output_dir="x").freeze == ["embeddings", 0, 1, 2, 3]
    for bad in ("embedding", "3-1", "a-b", "-1"):
        with pytest.raises(ValueError, match="'embeddings', a layer index"):
            parse_freeze(bad)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("warmup_ratio", 1.0, "in \\[0, 1\\)"), ("attn_implementation", "flash", "sdpa, eager"),
    ("data_order", "random", "trainer, seed"), ("calibrate_angle_scale", "yes", "off, fixed, learned"),
])  # fmt: skip
def test_protocol_settings_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(output_dir="x", **{field: value})
    with pytest.raises(ValueError, match="baseline"):
        TrainConfig(featuremap="none", distill_steps=5, output_dir="x")


def test_freeze_keeps_the_classifier_and_kernel_parameters_trainable():
    for model in (tiny_bert(), tiny_distilbert()):
        qra.patch(model, "rff", layers=(3, 5), featuremap_params={"m": 8, "learn_sigma": True}, learn_beta=True)
        counts = freeze(model, parse_freeze("embeddings,0-3"))
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        assert any("embeddings" in name for name in frozen)
        layer = "encoder.layer" if "bert.encoder.layer.0.attention.self.query.weight" in dict(
            model.named_parameters()) else "transformer.layer"  # fmt: skip
        assert all(not name.split(f"{layer}.")[1].startswith(("4.", "5.")) for name in frozen if layer in name)
        assert any(f"{layer}.3.attention" in name and "qra_attention" in name for name in trainable)  # L3's kernel
        assert not any(f"{layer}.3." in name and "qra_attention" not in name for name in trainable)
        assert any(f"{layer}.4." in name for name in trainable)
        assert any("classifier" in name for name in trainable)
        assert counts["trainable_parameters"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="has 6 encoder layers"):
        freeze(tiny_bert(), [7])


def test_an_eager_encoder_loads_and_patches(tiny_model_dir):
    model = load_classifier(str(tiny_model_dir), attn_implementation="eager").eval()
    assert model.config._attn_implementation == "eager"
    batch = {"input_ids": torch.tensor([[2, 7, 9, 11, 3, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]])}
    stock = model(**batch).logits
    qra.patch(model, ScaledIdentity(8), layers=(4, 5))  # ScaledIdentity's softmax-mode attention is standard attention
    assert model.config._attn_implementation == "qra_eager"
    torch.testing.assert_close(model(**batch).logits, stock, atol=1e-5, rtol=1e-5)


def test_the_seeded_order_depends_on_seed_and_epoch_only():
    lengths = list(np.random.default_rng(0).integers(5, 200, size=300))

    def order(seed, epoch, noise):
        torch.manual_seed(noise)  # the global RNG (what the Trainer's sampler draws from) must not matter
        torch.rand(noise + 1)
        sampler = SeededLengthGroupedSampler(16, lengths, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(13, 0, 1) == order(13, 0, 99)
    assert sorted(order(13, 0, 1)) == list(range(300))
    assert order(13, 1, 1) != order(13, 0, 1) and order(42, 0, 1) != order(13, 0, 1)


def test_content_word_dropout_keeps_stopwords_and_adjective_swap_swaps_adjectives_only():
    text = "The movie was a great and wonderful film, but the plot was slow."
    dropped = content_word_dropout(text, 1.0, np.random.default_rng(0))
    assert dropped.split() == ["The", "was", "a", "and", "but", "the", "was"]  # every non-stopword gone
    assert content_word_dropout(text, 0.0, np.random.default_rng(0)) == text
    table = SynonymTable({"movie": ["picture"], "great": ["big"]},
                         adjectives={"great": ["outstanding"], "wonderful": ["marvelous"], "slow": []})  # fmt: skip
    swapped = adjective_swap(text, 1.0, np.random.default_rng(0), table)
    assert swapped == "The movie was a outstanding and marvelous film, but the plot was slow."  # slow: no synonym
    perturbed = perturb([text] * 3, "adjective-swap", 0.5, seed=1, synonyms=table)
    assert all("movie" in t and "plot" in t for t in perturbed)
    assert parse_settings(["content-word-dropout=0.05", "adjective-swap=1"]) == {
        "content-word-dropout": [0.05], "adjective-swap": [1.0]}  # fmt: skip


def test_protocol_training_writes_predictions_and_records_its_settings(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    result = invoke(train_args(tiny_model_dir, tiny_data_dir, out, "--featuremap", "hedgehog", "--mode", "linear",
                               "--freeze", "embeddings,0-3", "--warmup-ratio", "0.1", "--attn-implementation", "eager",
                               "--data-order", "seed", "--distill-steps", "3", "--seed", "13"))  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["freeze"] == ["embeddings", 0, 1, 2, 3] and record["config"]["warmup_ratio"] == 0.1
    assert record["model"]["attn_implementation"] == "eager"
    assert record["model"]["trainable_parameters"] < record["model"]["parameters"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["distillation"]["mismatch_after"]) == {"4", "5"}
    predictions = RunDirectory(out).predictions()
    assert len(predictions["correct"]) == 24 and predictions["test_set_digest"].shape == (32,)
    assert np.mean(predictions["correct"]) == pytest.approx(metrics["accuracy"])
    with np.load(out / "predictions.npz") as stored:  # no labels or predicted classes: they would be the data's
        assert set(stored.files) == {"correct", "test_set_digest"}
    from qra.experiment.training import _training_arguments

    args = _training_arguments(TrainConfig(warmup_ratio=0.06, output_dir=str(out)), out, torch.device("cpu"))
    assert args.get_warmup_steps(1000) == 60  # a ratio of the training steps


def test_the_protocol_sweep_config_has_the_full_grid():
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        from sweep import load_plan
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    study, plan = load_plan(ROOT / "experiments" / "configs" / "protocol.yaml")
    assert len({job.run_dir for job in plan}) == len(plan)  # no run trained twice
    grid = [job.config for job in plan if job.config.featuremap == "rff" and job.config.max_length == 256
            and job.config.mode == "softmax" and job.config.beta == 1.0]  # fmt: skip
    settings = {(c.featuremap_params["m"], c.featuremap_params["sigma"], tuple(c.layers)) for c in grid}
    assert settings >= {(m, s, layers) for m in (64, 128, 256) for s in (0.5, 1.0, 2.0) for layers in ((5,), (4, 5))}
    baselines = {(c.attn_implementation, c.max_length) for c in (j.config for j in plan) if c.is_baseline}
    assert baselines == {("sdpa", 256), ("eager", 256), ("sdpa", 512), ("eager", 512)}
    for job in plan:
        c = job.config
        assert c.freeze == ["embeddings", 0, 1, 2, 3] and c.lr == 2e-5 and c.epochs == 3 and c.data_order == "seed"
        assert c.warmup_ratio == 0.06 and c.weight_decay == 0.01
    seeds = {}
    for job in plan:
        seeds.setdefault(job.run_dir.parent.name, set()).add(job.config.seed)
    assert {13, 42, 1234} <= seeds["baseline-sdpa"] and len(seeds["baseline-sdpa"]) >= 5
    for arm in ("hedgehog", "performer", "quantum-calibrated", "rff-m128-s1-L45", "rff-best"):
        assert len(seeds[arm]) >= 5, arm
    assert study["robustness"]["content-word-dropout"] == [0.05] and "adjective-swap" in study["robustness"]
