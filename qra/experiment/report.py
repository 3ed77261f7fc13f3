"""Aggregate run directories across seeds into ``summary.json``, a README table and plots.

Runs are grouped by (model, feature map, its parameters, mode, layers); each group reports means,
standard deviations and 95% confidence intervals (Student's t over seeds).  The layers the
tables and plots show per layer are the runs' own patched layers (:func:`~qra.experiment.labels.report_layers`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from .config import BASELINE
from .labels import PROTOCOL_DEFAULTS, label, report_layers
from .plots import PLOTS, plot_all
from .provenance import write_json_atomic, write_text_atomic
from .runs import FailedRecord, FinishedRecord, find_failed, find_finished, read_notes
from .verdicts import CRITERIA, comparisons, is_protocol_study, markdown_section, paired_tests_by_row

#: the protocol's verdicts (Win A/B/C) and paired tests, written when the runs include protocol runs
VERDICTS_FILE = "verdicts.json"

#: the training budget; runs that differ in it are different configurations
BUDGET_FIELDS = ("epochs", "max_train_samples", "max_eval_samples", "max_length", "batch_size", "lr")


class Run(FinishedRecord):
    """A finished run as the report groups it: by configuration and training budget."""

    @property
    def budget(self) -> dict[str, Any]:
        """What the run was trained and tested on; runs group only with runs of the same budget.  The protocol's
        settings (``--freeze``, ``--attn-implementation``, …) are part of it where they are not at their defaults."""
        return {name: self.config.get(name) for name in BUDGET_FIELDS} | self.protocol_settings

    @property
    def protocol_settings(self) -> dict[str, Any]:
        """The run's protocol settings that are not at their defaults (none for runs made before they existed)."""
        found = {name: self.config.get(name, default) for name, default in PROTOCOL_DEFAULTS.items()}
        return {name: value for name, value in found.items() if value != PROTOCOL_DEFAULTS[name]}

    @property
    def key(self) -> tuple:
        c = self.config
        budget = json.dumps(self.budget, sort_keys=True)
        if self.is_baseline:
            return (c["model"], BASELINE, "{}", None, None, budget)
        params = json.dumps(self.featuremap_params, sort_keys=True)
        beta = c.get("beta", 1.0)
        mode = c["mode"] + (f" β={beta:g}" if beta != 1.0 else "") + (" learned-β" if c.get("learn_beta") else "")
        if c.get("kernel_implementation", "auto") != "auto":  # a forced path is its own row (e.g. a rerun on kernels)
            mode += f" ({c['kernel_implementation']})"
        return (c["model"], c["featuremap"], params, mode, tuple(c["layers"]), budget)

    @property
    def had_device_to_itself(self) -> bool:
        """False for runs trained beside others on one GPU: their speed is not the configuration's."""
        return self.record.get("training", {}).get("runs_sharing_device", 1) == 1


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Finished runs (config.json and metrics.json present) under the given directories, recursively."""
    return [Run(found.path, found.config, found.record, found.metrics) for found in find_finished(paths)]


def mean_std_ci(values: Sequence[float]) -> tuple[float, float, float | None]:
    """Mean, sample standard deviation, and the half-width of the 95% t confidence interval (None for n = 1)."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    mean = float(array.mean())
    if n < 2:
        return mean, 0.0, None
    std = float(array.std(ddof=1))
    return mean, std, float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def _per_layer_mean(runs: Sequence[Run], extract) -> list[float | None]:
    columns = [extract(run.metrics) for run in runs]
    layers = max(len(c) for c in columns)
    means = []
    for layer in range(layers):
        values = [c[layer] for c in columns if layer < len(c) and c[layer] is not None]
        means.append(float(np.mean(values)) if values else None)
    return means


def _geometric_mean(values: Iterable[float]) -> float | None:
    logs = [math.log(value) for value in values if value and value > 0]
    return math.exp(sum(logs) / len(logs)) if logs else None


def starting_temperature(run: Run) -> float | None:
    """The softmax temperature β the patched heads started training with: the geometric mean of the calibrated
    β over heads and layers (``--calibrate-temperature``), else the configured β; None outside softmax mode.
    Learned β moves during training and is not on record; the start is what the configuration chose."""
    if run.is_baseline or run.config.get("mode", "softmax") != "softmax":
        return None
    calibration = run.metrics.get("temperature_calibration")
    if calibration:
        return _geometric_mean(beta for layer in calibration["layers"].values() for beta in layer["beta"])
    return float(run.config.get("beta", 1.0))


def kernel_bandwidth(run: Run) -> tuple[str, float] | None:
    """The kernel's bandwidth: a circuit map's calibrated angle scale (geometric mean over layers), or an RBF
    map's σ; None for maps without one (performer, hedgehog) and for uncalibrated circuit maps."""
    calibration = run.metrics.get("angle_scale_calibration")
    if calibration:
        return "angle scale", _geometric_mean(layer["angle_scale"] for layer in calibration["layers"].values())
    sigma = None if run.is_baseline else run.featuremap_params.get("sigma")
    return ("σ", float(sigma)) if isinstance(sigma, (int, float)) else None


def group_runs(runs: Sequence[Run]) -> list[tuple[tuple, list[Run]]]:
    """The runs by configuration (:attr:`Run.key`), each group sorted by seed, baseline groups first."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.key].append(run)
    for members in groups.values():
        members.sort(key=lambda run: run.config["seed"])
    return sorted(groups.items(), key=lambda item: (item[0][1] != BASELINE, str(item[0])))


def summarise(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per configuration, in a stable order (baseline first)."""
    rows = []
    for key, members in group_runs(runs):
        model, featuremap, params, mode, layers, budget = key
        accuracy = mean_std_ci([r.metrics["accuracy"] for r in members])
        f1 = mean_std_ci([r.metrics["f1"] for r in members])
        memory = [r.metrics.get("peak_gpu_memory_bytes") for r in members]
        speed = [r.metrics["train_samples_per_second"] for r in members
                 if r.had_device_to_itself and r.metrics.get("train_samples_per_second") is not None]  # fmt: skip
        robustness: dict[str, dict[str, float]] = {}
        settings = sorted({s for r in members for s in r.metrics.get("robustness", {}) if s != "clean"})
        for setting in settings:
            results = [r.metrics["robustness"][setting] for r in members if setting in r.metrics.get("robustness", {})]
            robustness[setting] = {
                "accuracy_mean": float(np.mean([x["accuracy"] for x in results])),
                "drop_mean": float(np.mean([x["accuracy_drop"] for x in results])),
                "n_seeds": len(results),
            }
        bandwidths = [kernel_bandwidth(r) for r in members]
        rows.append({
            "temperature_start": _geometric_mean(filter(None, (starting_temperature(r) for r in members))),
            "bandwidth": ({"name": bandwidths[0][0], "value": _geometric_mean(b[1] for b in bandwidths)}
                          if None not in bandwidths else None),
            "featuremap": featuremap, "params": json.loads(params), "mode": mode,
            "layers": list(layers) if layers else None, "model": model,
            "device": members[0].record.get("device"), "seeds": [r.config["seed"] for r in members],
            "n_seeds": len(members),
            "accuracy_mean": accuracy[0], "accuracy_std": accuracy[1], "accuracy_ci95": accuracy[2],
            "f1_mean": f1[0], "f1_std": f1[1], "f1_ci95": f1[2],
            "peak_gpu_memory_bytes_mean": float(np.mean(memory)) if None not in memory else None,
            "train_samples_per_second_mean": float(np.mean(speed)) if speed else None,
            "train_samples_per_second_runs": len(speed),
            "budget": json.loads(budget),
            "attention_entropy_mean": _per_layer_mean(members, lambda m: m["attention_entropy"]["mean"]),
            "attention_entropy_normalized_mean": _per_layer_mean(
                members, lambda m: m["attention_entropy"]["normalized"]
            ),
            "attention_distance_mean": _per_layer_mean(members, lambda m: m["attention_distance"]["mean"]),
            # signed (linear RFF) attention only; absent from records made before it was measured
            "attention_negative_mass_mean": _per_layer_mean(members, lambda m: m.get("attention_negative_mass") or []),
            "attention_distance_bin_edges": members[0].metrics["attention_distance"]["bin_edges"],
            "attention_distance_histogram_mean": [
                np.mean([r.metrics["attention_distance"]["histogram"][layer] for r in members], axis=0).tolist()
                for layer in range(len(members[0].metrics["attention_distance"]["histogram"]))
            ],
            "robustness": robustness,
            "runs": [str(r.path) for r in members],
            "commands": sorted({r.record.get("command", "") for r in members}),
            "commits": sorted({str(r.record.get("commit")) for r in members}),
        })  # fmt: skip
    return rows


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def markdown(
    rows: Sequence[dict[str, Any]], runs: Sequence[Run], notes: str = "", failed: Sequence[FailedRecord] = (),
    verdicts: Sequence[str] = (),
) -> str:
    """The README: the author's notes (conclusions) if any, the protocol's verdicts with their paired tests and
    power (when the runs include protocol runs: the answer comes first), the table of measurements, robustness,
    the failed runs (if any, never averaged in), the plots, how to reproduce it."""
    models = sorted({row["model"] for row in rows})
    shown = report_layers(rows)
    layer_names = " / ".join(f"L{layer}" for layer in shown)
    devices = sorted({str(row["device"]) for row in rows})
    lines = [
        "# Results",
        "",
        *([notes.strip(), ""] if notes.strip() else []),
        *([*list(verdicts)[1:], ""] if verdicts else []),  # [1:]: the section's leading blank line
        *(["## Measurements", ""] if notes.strip() or verdicts else []),
        f"Model(s): {', '.join(models)}. Device(s): {', '.join(devices)}.",
        f"{len(runs)} runs in {len(rows)} configurations.",
        "Means over seeds; ± is the 95% confidence interval (Student's t) where there are ≥ 2 seeds.",
        "Train samples/s counts only runs that had their GPU to themselves (– where every seed shared one",
        "with other runs); `qra bench train` compares speed side by side.",
        "",
        "| configuration | seeds | accuracy | F1 | peak GPU memory (GiB) | train samples/s "
        f"| entropy {layer_names} (normalised) | mean distance {layer_names} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ci = f" ± {row['accuracy_ci95']:.4f}" if row["accuracy_ci95"] is not None else ""
        memory = row["peak_gpu_memory_bytes_mean"]
        entropy = row["attention_entropy_normalized_mean"]
        distance = row["attention_distance_mean"]
        pick = lambda values, i: values[i] if i < len(values) else None  # noqa: E731
        gib = memory / 2**30 if memory else None
        lines.append(
            f"| {label(row)} | {row['n_seeds']} | {row['accuracy_mean']:.4f}{ci} | {row['f1_mean']:.4f} "
            f"| {_fmt(gib, '.2f')} | {_fmt(row['train_samples_per_second_mean'], '.1f')} "
            f"| {' / '.join(_fmt(pick(entropy, layer), '.3f') for layer in shown)} "
            f"| {' / '.join(_fmt(pick(distance, layer), '.1f') for layer in shown)} |"
        )
    settings = sorted({s for row in rows for s in row["robustness"]})
    if settings:
        lines += ["", "## Robustness (accuracy, and drop from clean)", "",
                  "| configuration | " + " | ".join(settings) + " |", "| --- |" + " --- |" * len(settings)]  # fmt: skip
        for row in rows:
            cells = [
                f"{row['robustness'][s]['accuracy_mean']:.4f} ({row['robustness'][s]['drop_mean']:+.4f})"
                if s in row["robustness"] else "–"
                for s in settings
            ]  # fmt: skip
            lines.append(f"| {label(row)} | " + " | ".join(cells) + " |")
    if failed:
        lines += ["", "## Failed runs", "", "Stopped with an error (their `failed.json`); not in the tables or plots.",
                  "", "| run | feature map | reason |", "| --- | --- | --- |"]  # fmt: skip
        for record in failed:
            reason = record.reason.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {record.path} | {record.config.get('featuremap', '?')} | {reason} |")
    lines += ["", "## Plots", ""]
    lines += [f"![{name}]({name}.png)" for name in PLOTS]
    lines += ["", "## Reproduce", "", "```bash"]
    lines += sorted({command for row in rows for command in row["commands"]})
    lines += ["```", "", f"Commits: {', '.join(sorted({c for row in rows for c in row['commits']}))}", ""]
    return "\n".join(lines)


def write_report(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """``summary.json``, ``README.md`` and the plots for the runs under ``run_dirs``, into ``out``.

    A hand-written ``NOTES.md`` in ``out`` (the conclusions) is kept at the top of the README, so the
    report can be regenerated as runs are added without losing them.
    """
    out = Path(out)
    runs = load_runs(run_dirs)
    rows = summarise(runs)
    groups = [members for _, members in group_runs(runs)]
    found = comparisons(rows, groups) if is_protocol_study(groups) else []
    for index, tests in paired_tests_by_row(rows, found).items():
        rows[index]["paired_tests"] = tests  # only groups with paired runs: other summaries stay as they were
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "summary.json", rows)
    if found:
        write_json_atomic(out / VERDICTS_FILE, {"criteria": CRITERIA, "comparisons": found})
    plot_all(rows, runs, out)
    notes = read_notes(out)
    write_text_atomic(out / "README.md", markdown(rows, runs, notes, find_failed(run_dirs),
                                                  markdown_section(found) if found else ()))  # fmt: skip
    return out
