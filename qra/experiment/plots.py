"""The report's figures (matplotlib, PNG): accuracy, entropy, entropy against the kernel's temperature and
bandwidth, distance, robustness, attention maps."""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .config import BASELINE
from .labels import label, report_layers
from .metrics import DISTANCE_BIN_EDGES, mean_over_layers

#: the report's figures, in the README's order (``NAME.png``)
PLOTS = ("accuracy", "entropy", "entropy_vs_scale", "distance", "robustness", "attention_maps")
#: the accuracy axis spans at least this much, so that differences of a few tenths of a point look that small
MIN_ACCURACY_SPAN = 0.10
#: line styles and markers cycled with the colours, so that configurations with identical values stay apart
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
#: how far apart identical lines are drawn, in layers (0.35 spread over all configurations)
X_SPREAD = 0.35


def _labels(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [label(row) for row in rows]


def _label_inches(labels: Sequence[str], fontsize: float) -> float:
    """About how wide the longest label is when drawn (0.6 em per character)."""
    return max((len(text) for text in labels), default=0) * 0.6 * fontsize / 72


def _save(figure: plt.Figure, path: Path, dpi: int = 120) -> None:
    figure.savefig(path, dpi=dpi)
    plt.close(figure)


def accuracy_limits(lows: Sequence[float], highs: Sequence[float]) -> tuple[float, float]:
    """Limits that show every interval with a margin and span at least :data:`MIN_ACCURACY_SPAN` (within [0, 1])."""
    low, high = min(lows), max(highs)
    margin = max(0.1 * (high - low), 0.005)
    low, high = low - margin, high + margin
    if high - low < MIN_ACCURACY_SPAN:
        middle = (low + high) / 2
        low, high = middle - MIN_ACCURACY_SPAN / 2, middle + MIN_ACCURACY_SPAN / 2
    if low < 0.0:
        low, high = 0.0, max(high - low, MIN_ACCURACY_SPAN)
    if high > 1.0:
        low, high = max(0.0, min(low, 1.0 - MIN_ACCURACY_SPAN)), 1.0
    return low, high


def accuracy_figure(rows: Sequence[dict[str, Any]]) -> plt.Figure:
    """Each configuration's mean accuracy as a point with its 95% CI (a point, not a bar: the axis need not
    start at 0), configurations down the side so that long names stay readable, the baseline as a line."""
    labels = _labels(rows)
    means = [row["accuracy_mean"] for row in rows]
    errors = [row["accuracy_ci95"] or 0.0 for row in rows]
    fontsize = 8
    width = 4.5 + _label_inches(labels, fontsize)
    figure, axis = plt.subplots(figsize=(width, 1.0 + 0.3 * len(rows)))
    positions = np.arange(len(rows))[::-1]  # the first configuration (the baseline) on top
    axis.errorbar(means, positions, xerr=errors, fmt="o", color="tab:blue", ecolor="tab:blue", capsize=3)
    for mean, error, position in zip(means, errors, positions, strict=True):
        axis.annotate(f"{mean:.4f}", (mean + error, position), xytext=(4, 0), textcoords="offset points",
                      va="center", fontsize=7)  # fmt: skip
    baseline = [row for row in rows if row["featuremap"] == BASELINE]
    if baseline:
        axis.axvline(baseline[0]["accuracy_mean"], color="grey", linestyle="--", linewidth=0.8, label="baseline mean")
        axis.legend(fontsize=7, loc="lower left")
    axis.set_yticks(positions, labels, fontsize=fontsize)
    axis.set_ylim(-0.7, len(rows) - 0.3)
    low, high = accuracy_limits([m - e for m, e in zip(means, errors, strict=True)],
                                [m + e for m, e in zip(means, errors, strict=True)])  # fmt: skip
    axis.set_xlim(low, high + 0.12 * (high - low))  # room for the value labels
    axis.set_xlabel(f"test accuracy (mean ± 95% CI; axis spans ≥ {MIN_ACCURACY_SPAN:g})")
    axis.grid(axis="x", linewidth=0.3)
    figure.tight_layout()
    return figure


def plot_accuracy(rows: Sequence[dict[str, Any]], path: Path) -> None:
    _save(accuracy_figure(rows), path)


def _line_style(index: int) -> dict[str, Any]:
    """Colour, marker and line style of the index-th configuration: no two of the first 40 alike."""
    return {"color": f"C{index % 10}", "marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINE_STYLES[(index // 10) % len(LINE_STYLES)]}  # fmt: skip


def _offsets(count: int) -> np.ndarray:
    """Small x offsets (in layers) that draw identical lines side by side instead of on top of each other."""
    return np.linspace(-X_SPREAD / 2, X_SPREAD / 2, count) if count > 1 else np.zeros(count)


def _legend_outside(figure: plt.Figure, handles: list, labels: list[str], anchor_axis: Any) -> None:
    """One legend for the figure, to the right of the plots, never over the data."""
    figure.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  bbox_transform=anchor_axis.transAxes, frameon=False)  # fmt: skip


def _fit_legend(figure: plt.Figure, labels: Sequence[str], fontsize: float = 7) -> None:
    """Widen the figure by the legend's width and keep the plots in the part left of it."""
    plots_width = figure.get_figwidth()
    legend_width = _label_inches(labels, fontsize) + 0.6
    figure.set_figwidth(plots_width + legend_width)
    figure.tight_layout(rect=(0, 0, plots_width / (plots_width + legend_width), 1))


def entropy_figure(rows: Sequence[dict[str, Any]]) -> plt.Figure:
    """Normalised attention entropy per layer; every configuration has its own colour, marker and line style,
    and a small sideways offset, so that configurations with identical values all stay visible."""
    labels = _labels(rows)
    height = max(4.0, 0.16 * len(rows))
    figure, axis = plt.subplots(figsize=(6, height))
    offsets = _offsets(len(rows))
    for index, (row, name) in enumerate(zip(rows, labels, strict=True)):
        values = np.array([np.nan if v is None else v for v in row["attention_entropy_normalized_mean"]], float)
        axis.plot(np.arange(len(values)) + offsets[index], values, label=name, markersize=4, linewidth=1,
                  alpha=0.9, **_line_style(index))  # fmt: skip
    axis.set_xlabel(f"layer (configurations drawn up to ±{X_SPREAD / 2:g} apart)")
    axis.set_ylabel("attention entropy / log(keys)")
    axis.set_xticks(range(max((len(r["attention_entropy_normalized_mean"]) for r in rows), default=0)))
    axis.grid(linewidth=0.3)
    handles, names = axis.get_legend_handles_labels()
    _legend_outside(figure, handles, names, axis)
    _fit_legend(figure, labels)
    return figure


def plot_entropy(rows: Sequence[dict[str, Any]], path: Path) -> None:
    _save(entropy_figure(rows), path)


def entropy_vs_scale_figure(rows: Sequence[dict[str, Any]]) -> plt.Figure:
    """How flat kernel attention is against what sets its sharpness: the softmax temperature β each run started
    with (left) and the kernel's bandwidth, an RBF map's σ or a circuit map's angle scale (right).  Each point
    is a configuration's mean normalised entropy over its patched layers; dashed lines are the baselines'
    entropy over the same layers, the sharpness a kernel arm would need to match."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    kernel_rows = [row for row in rows if row["featuremap"] != BASELINE and row["layers"]]
    layers = sorted({layer for row in kernel_rows for layer in row["layers"]})
    families = sorted({row["featuremap"] for row in kernel_rows})
    colours = {family: f"C{index % 10}" for index, family in enumerate(families)}
    panels = (("temperature_start", "β at the start of training (calibrated or configured)"),
              ("bandwidth", "bandwidth: σ (RBF maps) or angle scale (circuit maps, calibrated)"))  # fmt: skip
    for axis, (field, title) in zip(axes, panels, strict=True):
        plotted = set()
        for row in kernel_rows:
            value = row.get(field)
            value = value["value"] if isinstance(value, dict) else value
            entropy = mean_over_layers(row["attention_entropy_normalized_mean"], row["layers"])
            if value is None or entropy is None:
                continue
            marker = "s" if isinstance(row.get(field), dict) and row[field]["name"] == "angle scale" else "o"
            family = row["featuremap"]
            axis.scatter([value], [entropy], color=colours[family], marker=marker, s=28, alpha=0.8,
                         label=None if family in plotted else family)  # fmt: skip
            plotted.add(family)
        for index, row in enumerate(r for r in rows if r["featuremap"] == BASELINE):
            entropy = mean_over_layers(row["attention_entropy_normalized_mean"], layers)
            if entropy is not None:
                axis.axhline(entropy, color="0.4", linestyle=LINE_STYLES[index % len(LINE_STYLES)], linewidth=0.8,
                             label=f"{label(row)} (L{','.join(map(str, layers))})")  # fmt: skip
        if plotted:
            axis.set_xscale("log")
        else:
            axis.text(0.5, 0.5, "no configuration has one", ha="center", va="center", transform=axis.transAxes)
        axis.set_xlabel(title, fontsize=9)
        axis.set_ylabel("attention entropy / log(keys), patched layers")
        axis.grid(linewidth=0.3)
    legend = {}  # one legend below both panels, never over the points
    for axis in axes:
        legend |= dict(zip(*reversed(axis.get_legend_handles_labels()), strict=True))
    if legend:
        figure.legend(list(legend.values()), list(legend), fontsize=7, loc="lower center", ncol=3, frameon=False)
    figure.tight_layout(rect=(0, 0.06 + 0.035 * math.ceil(len(legend) / 3), 1, 1))
    return figure


def plot_entropy_vs_scale(rows: Sequence[dict[str, Any]], path: Path) -> None:
    _save(entropy_vs_scale_figure(rows), path)


def distance_figure(rows: Sequence[dict[str, Any]]) -> plt.Figure:
    edges = rows[0].get("attention_distance_bin_edges", DISTANCE_BIN_EDGES)
    bins = [f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)]
    bins.append(f"{edges[-1]}+")
    layers = report_layers(rows)
    labels = _labels(rows)
    figure, axes = plt.subplots(1, len(layers), figsize=(5.5 * len(layers), 4), sharey=True, squeeze=False)
    axes = axes[0]
    width = 0.8 / max(1, len(rows))
    for axis, layer in zip(axes, layers, strict=True):
        for i, (row, name) in enumerate(zip(rows, labels, strict=True)):
            histogram = row["attention_distance_histogram_mean"]
            if layer < len(histogram) and histogram[layer] is not None:
                axis.bar(np.arange(len(bins)) + i * width, histogram[layer], width=width, label=name,
                         color=f"C{i % 10}", hatch=(None, "//", "..", "xx")[(i // 10) % 4])  # fmt: skip
        axis.set_xticks(np.arange(len(bins)) + 0.4 - width / 2, bins, rotation=45, fontsize=7)
        axis.set_title(f"layer {layer}: attention mass by |i − j|")
    axes[0].set_ylabel("fraction of attention")
    handles, names = axes[0].get_legend_handles_labels()
    _legend_outside(figure, handles, names, axes[-1])
    _fit_legend(figure, labels)
    return figure


def plot_distance(rows: Sequence[dict[str, Any]], path: Path) -> None:
    _save(distance_figure(rows), path)


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


def attention_maps_figure(rows: Sequence[dict[str, Any]]) -> plt.Figure | None:
    """Head-averaged maps of one review in the report's layers, one row per configuration (its first seed).

    Each panel has its own colour scale, from its smallest to its largest weight (annotated on the panel,
    with the uniform weight 1/keys): a kernel layer's near-uniform weights would be a dark square on a
    peaked layer's scale, and a flat square on a scale from 0.
    """
    examples = []
    for row, name in zip(rows, _labels(rows), strict=True):
        file = Path(row["runs"][0]) / "attention_example.npz"
        if file.is_file():
            examples.append((name, np.load(file)["maps"]))
    if not examples:
        return None
    layers = report_layers(rows)
    figure, axes = plt.subplots(len(examples), len(layers), figsize=(4.2 * len(layers), 3.8 * len(examples)),
                                squeeze=False)  # fmt: skip
    for (name, maps), axis_row in zip(examples, axes, strict=True):
        for axis, layer in zip(axis_row, layers, strict=True):
            if layer < len(maps):
                weights = maps[layer]
                low, high = float(weights.min()), float(weights.max())
                high = high if high > low else low + 1e-12
                image = axis.imshow(weights, cmap="viridis", vmin=low, vmax=high)
                figure.colorbar(image, ax=axis, fraction=0.046)
                keys = weights.shape[-1]
                axis.text(0.02, 0.98, f"own scale {low:.3g}–{high:.3g}\n(uniform = {1 / keys:.3g})",
                          transform=axis.transAxes,
                          va="top", ha="left", fontsize=6, color="white",
                          bbox={"facecolor": "black", "alpha": 0.5, "linewidth": 0})  # fmt: skip
            axis.set_title("\n".join([*textwrap.wrap(name, 48), f"layer {layer}"]), fontsize=7)
            axis.set_xlabel("key")
            axis.set_ylabel("query")
    figure.suptitle("head-averaged attention of one review; each panel on its own colour scale", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.25 / figure.get_figheight()))
    return figure


#: the attention-maps figure's size in pixels at most: one row of panels per configuration made a 29-row
#: report's figure 7.4 MB at full resolution; the resolution falls as rows are added instead
ATTENTION_MAPS_PIXELS = 2.5e6


def plot_attention_maps(rows: Sequence[dict[str, Any]], runs: Sequence[Any], path: Path) -> None:
    figure = attention_maps_figure(rows)
    if figure is not None:
        width, height = figure.get_size_inches()
        _save(figure, path, dpi=min(110, int(math.sqrt(ATTENTION_MAPS_PIXELS / (width * height)))))


def plot_all(rows: Sequence[dict[str, Any]], runs: Sequence[Any], out: Path) -> None:
    plot_accuracy(rows, out / "accuracy.png")
    plot_entropy(rows, out / "entropy.png")
    plot_entropy_vs_scale(rows, out / "entropy_vs_scale.png")
    plot_distance(rows, out / "distance.png")
    plot_robustness(rows, out / "robustness.png")
    plot_attention_maps(rows, runs, out / "attention_maps.png")
