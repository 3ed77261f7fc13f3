"""The report's figures (matplotlib, PNG): accuracy, entropy, distance, robustness, attention maps."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .labels import label, report_layers
from .metrics import DISTANCE_BIN_EDGES


def _labels(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [label(row) for row in rows]


def plot_accuracy(rows: Sequence[dict[str, Any]], path: Path) -> None:
    labels = _labels(rows)
    errors = [row["accuracy_ci95"] or 0.0 for row in rows]
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    axis.bar(range(len(rows)), [row["accuracy_mean"] for row in rows], yerr=errors, capsize=4, color="tab:blue")
    axis.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    low = min(row["accuracy_mean"] - e for row, e in zip(rows, errors, strict=True))
    axis.set_ylim(max(0.0, low - 0.02), 1.0)
    axis.set_ylabel("test accuracy (mean ± 95% CI)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_entropy(rows: Sequence[dict[str, Any]], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    for row, name in zip(rows, _labels(rows), strict=True):
        values = row["attention_entropy_normalized_mean"]
        axis.plot(range(len(values)), values, marker="o", label=name)
    axis.set_xlabel("layer")
    axis.set_ylabel("attention entropy / log(keys)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_distance(rows: Sequence[dict[str, Any]], path: Path) -> None:
    edges = rows[0].get("attention_distance_bin_edges", DISTANCE_BIN_EDGES)
    bins = [f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)]
    bins.append(f"{edges[-1]}+")
    layers = report_layers(rows)
    figure, axes = plt.subplots(1, len(layers), figsize=(11, 4), sharey=True, squeeze=False)
    axes = axes[0]
    width = 0.8 / max(1, len(rows))
    for axis, layer in zip(axes, layers, strict=True):
        for i, (row, name) in enumerate(zip(rows, _labels(rows), strict=True)):
            histogram = row["attention_distance_histogram_mean"]
            if layer < len(histogram) and histogram[layer] is not None:
                axis.bar(np.arange(len(bins)) + i * width, histogram[layer], width=width, label=name)
        axis.set_xticks(np.arange(len(bins)) + 0.4 - width / 2, bins, rotation=45, fontsize=7)
        axis.set_title(f"layer {layer}: attention mass by |i − j|")
    axes[0].set_ylabel("fraction of attention")
    axes[-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_robustness(rows: Sequence[dict[str, Any]], path: Path) -> None:
    kinds = sorted({setting.split("=")[0] for row in rows for setting in row["robustness"]})
    figure, axes = plt.subplots(1, max(1, len(kinds)), figsize=(5 * max(1, len(kinds)), 4), squeeze=False)
    for axis, kind in zip(axes[0], kinds or ["(none)"], strict=True):
        for row, name in zip(rows, _labels(rows), strict=True):
            points = sorted(
                (float(setting.split("=")[1]), value["accuracy_mean"])
                for setting, value in row["robustness"].items()
                if setting.startswith(kind + "=")
            )
            if points:
                rates, accuracies = zip(*[(0.0, row["accuracy_mean"]), *points], strict=True)
                axis.plot(rates, accuracies, marker="o", label=name)
        axis.set_title(kind)
        axis.set_xlabel("rate")
        axis.set_ylabel("test accuracy")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_attention_maps(rows: Sequence[dict[str, Any]], runs: Sequence[Any], path: Path) -> None:
    """Head-averaged maps of one review in the patched layers, one row per configuration (its first seed)."""
    examples = []
    for row, name in zip(rows, _labels(rows), strict=True):
        file = Path(row["runs"][0]) / "attention_example.npz"
        if file.is_file():
            examples.append((name, np.load(file)["maps"]))
    if not examples:
        return
    layers = report_layers(rows)
    figure, axes = plt.subplots(len(examples), len(layers), figsize=(8, 3.8 * len(examples)), squeeze=False)
    # one colour scale per layer, shared by all configurations, so flat attention looks flat
    top = {
        layer: max(float(maps[layer].max()) for _, maps in examples if layer < len(maps)) for layer in layers
    }
    for (name, maps), axis_row in zip(examples, axes, strict=True):
        for axis, layer in zip(axis_row, layers, strict=True):
            if layer < len(maps):
                image = axis.imshow(maps[layer], cmap="viridis", vmin=0.0, vmax=top[layer])
                figure.colorbar(image, ax=axis, fraction=0.046)
            axis.set_title(f"{name}\nlayer {layer}", fontsize=8)
            axis.set_xlabel("key")
            axis.set_ylabel("query")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_all(rows: Sequence[dict[str, Any]], runs: Sequence[Any], out: Path) -> None:
    plot_accuracy(rows, out / "accuracy.png")
    plot_entropy(rows, out / "entropy.png")
    plot_distance(rows, out / "distance.png")
    plot_robustness(rows, out / "robustness.png")
    plot_attention_maps(rows, runs, out / "attention_maps.png")
