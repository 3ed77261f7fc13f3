"""Attention metrics on hand-made attention matrices, and classification metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qra.experiment.metrics import DISTANCE_BIN_EDGES, AttentionStatistics, classification_metrics, distance_bins


def batch_of(rows: torch.Tensor, heads: int = 2) -> torch.Tensor:
    return rows.expand(1, heads, *rows.shape).clone()


def test_uniform_attention_has_entropy_log_n_and_one_normalised():
    n = 8
    statistics = AttentionStatistics(1)
    statistics.update(0, batch_of(torch.full((n, n), 1 / n)), torch.ones(1, n, dtype=torch.bool))
    result = statistics.result()["attention_entropy"]
    assert result["mean"][0] == pytest.approx(math.log(n), rel=1e-6)
    assert result["normalized"][0] == pytest.approx(1.0, rel=1e-6)


def test_one_hot_attention_has_zero_entropy_and_exact_distances():
    n = 6
    weights = torch.zeros(n, n)
    weights[torch.arange(n), torch.zeros(n, dtype=torch.long)] = 1.0  # every query attends to token 0
    statistics = AttentionStatistics(1)
    statistics.update(0, batch_of(weights), torch.ones(1, n, dtype=torch.bool))
    result = statistics.result()
    assert result["attention_entropy"]["mean"][0] == 0.0
    # distances 0,1,2,3,4,5 -> bins [0], [1], [2-3], [2-3], [4-7], [4-7]
    expected = np.zeros(len(DISTANCE_BIN_EDGES))
    np.add.at(expected, [0, 1, 2, 2, 3, 3], 1 / n)
    np.testing.assert_allclose(result["attention_distance"]["histogram"][0], expected, atol=1e-7)
    assert result["attention_distance"]["mean"][0] == pytest.approx(sum(range(n)) / n)


def test_padding_queries_are_excluded_and_keys_counted_per_sequence():
    # 4 real tokens, 2 padded: real queries attend uniformly to the real keys; padded rows hold junk.
    weights = torch.zeros(6, 6)
    weights[:4, :4] = 0.25
    weights[4:, 0] = 1.0
    statistics = AttentionStatistics(1)
    statistics.update(0, batch_of(weights), torch.tensor([[True] * 4 + [False] * 2]))
    result = statistics.result()["attention_entropy"]
    assert result["mean"][0] == pytest.approx(math.log(4), rel=1e-6)
    assert result["normalized"][0] == pytest.approx(1.0, rel=1e-6)


def test_signed_weights_use_their_magnitudes_and_record_the_negative_share():
    """Linear RFF attention can give rows like (1.5, −0.5): entropy of |w|/Σ|w|, negative mass 0.25."""
    weights = torch.tensor([[1.5, -0.5], [0.5, 0.5]])
    statistics = AttentionStatistics(1)
    statistics.update(0, batch_of(weights), torch.ones(1, 2, dtype=torch.bool))
    result = statistics.result()
    p = torch.tensor([0.75, 0.25])
    signed_row = -(p * p.log()).sum().item()
    assert result["attention_entropy"]["mean"][0] == pytest.approx((signed_row + math.log(2)) / 2, rel=1e-6)
    assert result["attention_negative_mass"][0] == pytest.approx(0.25 / 2)
    assert result["attention_distance"]["mean"][0] == pytest.approx((0.25 + 0.5) / 2)  # row 0: |w| at distance 1


def test_distance_bins_are_log_spaced():
    bins = distance_bins(600)
    assert bins[0, 0] == 0 and bins[0, 1] == 1 and bins[0, 3] == 2 and bins[0, 4] == 3
    assert bins[0, 511] == 9 and bins[0, 512] == 10 and bins[0, 599] == 10


def test_statistics_average_over_batches_and_layers_stay_separate():
    statistics = AttentionStatistics(2)
    uniform = batch_of(torch.full((4, 4), 0.25))
    statistics.update(0, uniform, torch.ones(1, 4, dtype=torch.bool))
    statistics.update(0, batch_of(torch.eye(4)), torch.ones(1, 4, dtype=torch.bool))
    result = statistics.result()
    assert result["attention_entropy"]["mean"][0] == pytest.approx(math.log(4) / 2, rel=1e-6)
    assert result["attention_entropy"]["mean"][1] is None


def test_classification_metrics():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([1, 0, 0, 1])
    assert classification_metrics(logits, labels) == {"accuracy": 0.5, "f1": 0.5}
