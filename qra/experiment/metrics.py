"""The seed's metrics: accuracy/F1, and per-layer attention entropy and attention-distance bias.

Attention metrics are averaged over heads and real (non-padding) queries; padded keys carry no
weight and padded queries are skipped.  Signed weights — linear attention with a map whose
features can be negative, such as RFF's cosines, whose kernel estimates dip below zero — are not
a distribution: for a row with negative weights, entropy and distances use |w|/Σ|w|, and
``attention_negative_mass`` records the share of Σ|w| that is negative.  Distances |i−j| fall into log-spaced bins
[0,1), [1,2), [2,4), [4,8), …, so the histogram shows how local each layer's attention is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score


class NonFiniteError(ValueError):
    """A loss, logits or attention weights that are NaN or infinite: the run's results would be meaningless."""


#: left edges of the distance bins; the last bin is open-ended
DISTANCE_BIN_EDGES: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and F1 of the positive class (label 1); an error for non-finite logits (argmax would hide them)."""
    logits = np.asarray(logits)
    if not np.isfinite(logits).all():
        bad = int((~np.isfinite(logits)).any(axis=-1).sum()) if logits.ndim > 1 else int((~np.isfinite(logits)).sum())
        raise NonFiniteError(f"the model's logits are NaN or infinite for {bad} of {len(logits)} reviews")
    predictions = logits.argmax(axis=-1)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1": float(f1_score(labels, predictions, pos_label=1, zero_division=0)),
    }


def mean_over_layers(values: Sequence[float | None], layers: Sequence[int]) -> float | None:
    """Mean of a per-layer measurement over ``layers`` (e.g. the patched ones), skipping layers not measured."""
    chosen = [values[layer] for layer in layers if layer < len(values) and values[layer] is not None]
    return float(np.mean(chosen)) if chosen else None


def token_distances(length: int, device: torch.device | None = None) -> torch.Tensor:
    """``distances[i, j] = |i − j|`` for a sequence of ``length`` tokens."""
    position = torch.arange(length, device=device)
    return (position[:, None] - position[None, :]).abs()


def distance_bins(length: int, device: torch.device | None = None) -> torch.Tensor:
    """``bins[i, j]``: the index of the distance bin of |i − j|."""
    edges = torch.tensor(DISTANCE_BIN_EDGES, device=device)
    return torch.bucketize(token_distances(length, device), edges, right=True) - 1


@dataclass
class LayerAccumulator:
    """Running sums for one layer: entropy, normalised entropy, distance mass per bin, mean distance."""

    entropy: float = 0.0
    normalized_entropy: float = 0.0
    distance: float = 0.0
    negative_mass: float = 0.0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(len(DISTANCE_BIN_EDGES)))
    rows: int = 0


def row_entropies(weights: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy of each attention row ``weights[B, H, N, N]`` (non-negative, rows summing to 1) and that entropy
    over log(real keys) — 1 for uniform attention over a sequence's real tokens (``keep[B, N]``); ``[B, H, N]``."""
    plogp = torch.where(weights > 0, weights * weights.clamp_min(1e-30).log(), torch.zeros_like(weights))
    entropy = -plogp.sum(-1)
    keys = keep.sum(-1).clamp_min(1).float()  # real keys per sequence
    log_keys = keys.log()[:, None, None].expand_as(entropy)
    normalized = torch.where(log_keys > 0, entropy / log_keys.clamp_min(1e-30), torch.zeros_like(entropy))
    return entropy, normalized


class AttentionStatistics:
    """Accumulate entropy and distance statistics of attention maps, layer by layer, batch by batch."""

    def __init__(self, num_layers: int) -> None:
        self.layers = [LayerAccumulator() for _ in range(num_layers)]

    @torch.no_grad()
    def update(self, layer: int, weights: torch.Tensor, padding_mask: torch.Tensor) -> None:
        """Add attention ``weights[B, H, N, N]`` of one batch; ``padding_mask[B, N]`` is True for real tokens."""
        weights = weights.float()
        magnitude = weights.abs()
        total = magnitude.sum(-1, keepdim=True).clamp_min(1e-30)
        negative_mass = (magnitude - weights).sum(-1) / (2 * total.squeeze(-1))  # Σ max(−w, 0) / Σ|w|
        weights = torch.where((weights < 0).any(-1, keepdim=True), magnitude / total, weights)
        keep = padding_mask.to(device=weights.device, dtype=torch.bool)
        batch, heads, length, _ = weights.shape
        real_queries = keep[:, None, :].expand(batch, heads, length)  # [B, H, N]
        entropy, normalized = row_entropies(weights, keep)
        bins = distance_bins(length, weights.device)
        distances = token_distances(length, weights.device).float()
        mass = torch.zeros(batch, heads, length, len(DISTANCE_BIN_EDGES), device=weights.device)
        mass.scatter_add_(-1, bins.expand(batch, heads, length, length), weights)
        mean_distance = (weights * distances).sum(-1)
        accumulator = self.layers[layer]
        accumulator.entropy += entropy[real_queries].sum().item()
        accumulator.normalized_entropy += normalized[real_queries].sum().item()
        accumulator.distance += mean_distance[real_queries].sum().item()
        accumulator.negative_mass += negative_mass[real_queries].sum().item()
        accumulator.histogram += mass[real_queries].sum(0).cpu().numpy()
        accumulator.rows += int(real_queries.sum().item())

    def result(self) -> dict[str, Any]:
        """``{"attention_entropy": {...}, "attention_distance": {...}}`` with one entry per layer."""

        def mean(total: float, rows: int) -> float | None:
            return total / rows if rows else None

        return {
            "attention_entropy": {
                "mean": [mean(a.entropy, a.rows) for a in self.layers],
                "normalized": [mean(a.normalized_entropy, a.rows) for a in self.layers],
            },
            "attention_distance": {
                "bin_edges": list(DISTANCE_BIN_EDGES),
                "histogram": [(a.histogram / a.rows).tolist() if a.rows else None for a in self.layers],
                "mean": [mean(a.distance, a.rows) for a in self.layers],
            },
            "attention_negative_mass": [mean(a.negative_mass, a.rows) for a in self.layers],
        }
