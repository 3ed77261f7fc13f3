"""The protocol's acceptance criteria (Win A, B, C) and the paired tests, for every arm against every baseline.

The seed's pre-registered protocol (viklogit/qra_attention, ``docs/protocol.md``) accepts kernel attention
if one win holds; here each is made concrete:

- **Win A** — accuracy or F1 higher by ≥ +0.5 points (the protocol expects +0.5 to +1.5; more also counts),
  mean over the paired seeds.  The paired t-test's p is reported beside it.
- **Win B** — the same accuracy (|Δ| ≤ 0.3 points, mean over seeds) with ≥ 15% less peak GPU memory, at
  max length 512 (the stress runs); other lengths are not judged.
- **Win C** — the same accuracy (|Δ| ≤ 0.3 points) and either better robustness — a smaller accuracy drop
  under a perturbation, lower by a paired t-test over seeds (p < 0.05) — or better long-range attention — a
  larger mean attention distance in the patched layers (paired t, p < 0.05) with attention no flatter than
  the baseline's (normalised entropy not higher), so that uniform attention does not count as long-range.

An arm is compared with each baseline group (SDPA and eager attention) trained on the same budget and
protocol settings; seeds pair runs (same data order with ``--data-order seed``).  The paired tests of
accuracy are McNemar's test per seed on the stored per-review predictions, a paired t-test over seeds and
TOST equivalence within ±0.5 points (:mod:`qra.experiment.stats`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import BASELINE
from .labels import label
from .metrics import mean_over_layers
from .runs import FinishedRecord, RunDirectory, same_test_set
from .stats import ALPHA, POWER, TOST_MARGIN, mcnemar, paired_t, power_analysis, tost, verdict

WIN_A_GAIN = 0.005
WIN_A_EXPECTED = (0.005, 0.015)
SAME_ACCURACY = 0.003
MEMORY_SAVING = 0.15
STRESS_LENGTH = 512
#: settings an arm may differ in from the baseline it is compared with (they are about the arm's attention)
ARM_SETTINGS = ("attn_implementation", "distill_steps", "calibrate_angle_scale", "calibrate_temperature")

CRITERIA = {
    "A": f"accuracy or F1 ≥ +{WIN_A_GAIN * 100:g} points (protocol: +0.5 to +1.5), mean over paired seeds",
    "B": f"|Δ accuracy| ≤ {SAME_ACCURACY * 100:g} points and ≥ {MEMORY_SAVING:.0%} less peak GPU memory at max "
         f"length {STRESS_LENGTH}",
    "C": f"|Δ accuracy| ≤ {SAME_ACCURACY * 100:g} points and a smaller robustness drop (paired t, p < {ALPHA}) or a "
         f"larger mean attention distance in the patched layers (paired t, p < {ALPHA}) with attention no flatter",
}  # fmt: skip


def _comparable(row: dict[str, Any]) -> str:
    budget = {key: value for key, value in row["budget"].items() if key not in ARM_SETTINGS}
    return json.dumps([row["model"], budget], sort_keys=True)


def is_protocol_study(groups: Sequence[Sequence[FinishedRecord]]) -> bool:
    """Whether the runs include protocol runs: protocol settings, or stored per-review predictions."""
    from .labels import PROTOCOL_DEFAULTS

    return any(RunDirectory(run.path).has_predictions
               or any(run.config.get(k, d) != d for k, d in PROTOCOL_DEFAULTS.items())
               for members in groups for run in members)  # fmt: skip


def _points(value: float | None, signed: bool = True) -> str:
    return "–" if value is None else format(value * 100, "+.2f" if signed else ".2f")


def _p(value: float | None) -> str:
    return "–" if value is None else (f"{value:.3f}" if value >= 0.001 else f"{value:.1e}")


def _mcnemar_per_seed(seeds: list[int], arm: dict[int, Any], base: dict[int, Any]) -> list[dict[str, Any]]:
    results = []
    for seed in seeds:
        a, b = RunDirectory(arm[seed].path).predictions(), RunDirectory(base[seed].path).predictions()
        if a is None or b is None:
            continue
        if not same_test_set(a, b):
            results.append({"seed": seed, "error": "the two runs' test sets differ (reviews or their order)"})
            continue
        test = mcnemar(a["correct"], b["correct"])
        results.append({"seed": seed, **test.as_dict()})
    return results


def _layer_mean(metrics: dict[str, Any], path: tuple[str, str], layers: Sequence[int]) -> float | None:
    return mean_over_layers(metrics.get(path[0], {}).get(path[1]) or [], layers)


def _entropy_of_signed_weights(run: FinishedRecord) -> bool:
    """Whether the run's attention entropy may have been taken of signed weights, and so be no entropy.

    Outside softmax mode, attention weights can be negative (RFF's cosine features).  Runs measured before
    qra handled that (their records lack ``attention_negative_mass``) took the entropy of the signed weights:
    one such record in ``results/imdb`` reads -0.255.  Such records decide nothing.
    """
    return run.config.get("mode", "softmax") != "softmax" and "attention_negative_mass" not in run.metrics


def compare(arm_row: dict[str, Any], arm_runs: Sequence[FinishedRecord], base_row: dict[str, Any],
            base_runs: Sequence[FinishedRecord]) -> dict[str, Any]:  # fmt: skip
    """Win A, B, C and the paired tests of one arm against one baseline."""
    arm = {run.config["seed"]: run for run in arm_runs}
    base = {run.config["seed"]: run for run in base_runs}
    seeds = sorted(set(arm) & set(base))
    paired = bool(seeds)
    arm_seeds, base_seeds = (seeds, seeds) if paired else (sorted(arm), sorted(base))

    def values(runs: dict[int, Any], chosen: list[int], key: str) -> list[float]:
        return [runs[seed].metrics[key] for seed in chosen]

    accuracy_a, accuracy_b = values(arm, arm_seeds, "accuracy"), values(base, base_seeds, "accuracy")
    f1_a, f1_b = values(arm, arm_seeds, "f1"), values(base, base_seeds, "f1")
    delta_accuracy = float(np.mean(accuracy_a) - np.mean(accuracy_b))
    delta_f1 = float(np.mean(f1_a) - np.mean(f1_b))
    t_accuracy = paired_t(accuracy_a, accuracy_b) if paired else None
    t_f1 = paired_t(f1_a, f1_b) if paired else None
    equivalence = tost(accuracy_a, accuracy_b, TOST_MARGIN) if paired else None
    same_accuracy = abs(delta_accuracy) <= SAME_ACCURACY
    pairing = f"{len(seeds)} paired seeds" if paired else "unpaired (no common seeds)"

    # Win A
    gain = max(delta_accuracy, delta_f1)
    significant = [t.p_value for t in (t_accuracy, t_f1) if t is not None and t.p_value is not None]
    win_a = {
        "criterion": CRITERIA["A"],
        "measured": f"Δ accuracy {_points(delta_accuracy)} pts (p={_p(t_accuracy.p_value if t_accuracy else None)}), "
                    f"Δ F1 {_points(delta_f1)} pts (p={_p(t_f1.p_value if t_f1 else None)}); {pairing}",
        "delta_accuracy": delta_accuracy, "delta_f1": delta_f1,
        "verdict": "met" if gain >= WIN_A_GAIN else "not met",
    }  # fmt: skip
    if win_a["verdict"] == "met" and not (significant and min(significant) < ALPHA):
        win_a["verdict"] = "met (not significant)"

    # Win B
    length = arm_row["budget"].get("max_length")
    memory_a, memory_b = arm_row["peak_gpu_memory_bytes_mean"], base_row["peak_gpu_memory_bytes_mean"]
    win_b: dict[str, Any] = {"criterion": CRITERIA["B"]}
    if length != STRESS_LENGTH:
        win_b |= {"measured": f"max length {length}", "verdict": f"n/a (judged at max length {STRESS_LENGTH})"}
    elif not memory_a or not memory_b:
        win_b |= {"measured": "no peak GPU memory on record", "verdict": "not measured"}
    else:
        saving = 1 - memory_a / memory_b
        win_b |= {"measured": f"Δ accuracy {_points(delta_accuracy)} pts, peak memory {memory_a / 2**30:.2f} vs "
                              f"{memory_b / 2**30:.2f} GiB ({saving:+.1%} saved)",
                  "memory_saving": saving,
                  "verdict": "met" if same_accuracy and saving >= MEMORY_SAVING else "not met"}  # fmt: skip

    # Win C
    robustness = []
    if paired:
        settings = set.intersection(*[set(arm[s].metrics.get("robustness", {})) & set(base[s].metrics.get(
            "robustness", {})) for s in seeds]) - {"clean"}  # fmt: skip
        for setting in sorted(settings):
            drops_a = [arm[s].metrics["robustness"][setting]["accuracy_drop"] for s in seeds]
            drops_b = [base[s].metrics["robustness"][setting]["accuracy_drop"] for s in seeds]
            test = paired_t(drops_b, drops_a)  # positive: the arm loses less
            better = test.mean_difference > 0 and test.p_value is not None and test.p_value < ALPHA
            robustness.append({"setting": setting, "drop_arm": float(np.mean(drops_a)),
                               "drop_baseline": float(np.mean(drops_b)), "p_value": test.p_value,
                               "better": bool(better)})  # fmt: skip
    layers = arm_row.get("layers") or []
    long_range: dict[str, Any] | None = None
    unjudged = ""
    if paired and layers:
        distance_a = [_layer_mean(arm[s].metrics, ("attention_distance", "mean"), layers) for s in seeds]
        distance_b = [_layer_mean(base[s].metrics, ("attention_distance", "mean"), layers) for s in seeds]
        entropy_a = [_layer_mean(arm[s].metrics, ("attention_entropy", "normalized"), layers) for s in seeds]
        entropy_b = [_layer_mean(base[s].metrics, ("attention_entropy", "normalized"), layers) for s in seeds]
        if any(_entropy_of_signed_weights(runs[s]) for runs in (arm, base) for s in seeds):
            unjudged = "long-range not judged: attention entropy recorded before qra handled signed weights"
        elif None not in distance_a + distance_b + entropy_a + entropy_b:
            test = paired_t(distance_a, distance_b)
            flatter = float(np.mean(entropy_a)) > float(np.mean(entropy_b))
            long_range = {"distance_arm": float(np.mean(distance_a)), "distance_baseline": float(np.mean(distance_b)),
                          "entropy_arm": float(np.mean(entropy_a)), "entropy_baseline": float(np.mean(entropy_b)),
                          "p_value": test.p_value, "flatter": flatter,
                          "better": bool(test.mean_difference > 0 and test.p_value is not None
                                         and test.p_value < ALPHA and not flatter)}  # fmt: skip
    parts = [f"Δ accuracy {_points(delta_accuracy)} pts"]
    parts += [f"{r['setting']} drop {_points(r['drop_arm'], False)} vs {_points(r['drop_baseline'], False)} pts "
              f"(p={_p(r['p_value'])})" for r in robustness]  # fmt: skip
    if long_range:
        parts.append(f"distance L{','.join(map(str, layers))} {long_range['distance_arm']:.1f} vs "
                     f"{long_range['distance_baseline']:.1f} (p={_p(long_range['p_value'])}), entropy "
                     f"{long_range['entropy_arm']:.3f} vs {long_range['entropy_baseline']:.3f}")  # fmt: skip
    elif unjudged:
        parts.append(unjudged)
    better_somewhere = any(r["better"] for r in robustness) or bool(long_range and long_range["better"])
    win_c = {"criterion": CRITERIA["C"], "measured": "; ".join(parts), "robustness": robustness,
             "long_range": long_range,
             "verdict": ("met" if same_accuracy and better_somewhere else "not met") if paired
             else "not judged (needs paired seeds)"}  # fmt: skip

    mcnemar_results = _mcnemar_per_seed(seeds, arm, base)
    tests = {
        "seeds": seeds,
        "mcnemar": mcnemar_results,
        "paired_t_accuracy": t_accuracy.as_dict() if t_accuracy else None,
        "tost_accuracy": equivalence.as_dict() if equivalence else None,
        "verdict": verdict(t_accuracy, equivalence) if t_accuracy and equivalence else "not tested (no paired seeds)",
        "power": power_analysis(t_accuracy.std_difference, t_accuracy.n, SAME_ACCURACY) if t_accuracy else None,
    }
    return {"arm": label(arm_row), "baseline": label(base_row), "seeds": seeds if paired else None,
            "win_a": win_a, "win_b": win_b, "win_c": win_c, "paired_tests": tests}  # fmt: skip


def comparisons(rows: Sequence[dict[str, Any]], groups: Sequence[Sequence[FinishedRecord]]) -> list[dict[str, Any]]:
    """Every (arm, baseline) pair of configurations trained on the same budget, baselines in row order."""
    baselines = [(row, members) for row, members in zip(rows, groups, strict=True) if row["featuremap"] == BASELINE]
    found = []
    for row, members in zip(rows, groups, strict=True):
        if row["featuremap"] == BASELINE:
            continue
        for base_row, base_members in baselines:
            if _comparable(base_row) == _comparable(row):
                found.append(compare(row, members, base_row, base_members))
    return found


def paired_tests_by_row(rows: Sequence[dict[str, Any]], found: Sequence[dict[str, Any]]) -> dict[int, dict]:
    """For each row (by index) with paired runs whose predictions are stored: its paired tests per baseline."""
    by_label: dict[str, dict[str, Any]] = {}
    for comparison in found:
        tests = comparison["paired_tests"]
        if tests["mcnemar"]:
            by_label.setdefault(comparison["arm"], {})[comparison["baseline"]] = tests
    return {index: by_label[label(row)] for index, row in enumerate(rows) if label(row) in by_label}


def markdown_section(found: Sequence[dict[str, Any]]) -> list[str]:
    """The README section: the Win table (criterion | measured | verdict) per arm and baseline, then the tests."""
    lines = ["", "## Protocol verdicts (Win A, B, C)", "",
             "One win is enough (the seed's pre-registered protocol). Criteria:", ""]  # fmt: skip
    lines += [f"- **Win {key}**: {text}" for key, text in CRITERIA.items()]
    lines += ["", "| arm | baseline | criterion | measured | verdict |", "| --- | --- | --- | --- | --- |"]
    for comparison in found:
        for key in ("a", "b", "c"):
            win = comparison[f"win_{key}"]
            measured = win["measured"].replace("|", "\\|")
            lines.append(f"| {comparison['arm']} | {comparison['baseline']} | Win {key.upper()} | {measured} "
                         f"| {win['verdict']} |")  # fmt: skip
    lines += ["", f"### Paired tests of accuracy (McNemar per seed, paired t over seeds, TOST ±{TOST_MARGIN * 100:g} "
                  "points)", "",
              "| arm | baseline | seeds | Δ accuracy (pts) | McNemar p per seed | paired t p | TOST p | verdict |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for comparison in found:
        tests = comparison["paired_tests"]
        t, equivalence = tests["paired_t_accuracy"], tests["tost_accuracy"]
        per_seed = ", ".join(f"{m['seed']}: {_p(m['p_value'])}" if "p_value" in m else f"{m['seed']}: {m['error']}"
                             for m in tests["mcnemar"]) or "–"  # fmt: skip
        lines.append(f"| {comparison['arm']} | {comparison['baseline']} | {len(tests['seeds'])} "
                     f"| {_points(comparison['win_a']['delta_accuracy'])} | {per_seed} "
                     f"| {_p(t['p_value'] if t else None)} | {_p(equivalence['p_value'] if equivalence else None)} "
                     f"| {tests['verdict']} |")  # fmt: skip
    return lines + power_section(found)


def _seeds(count: int | None) -> str:
    return "–" if count is None else str(count)


def power_section(found: Sequence[dict[str, Any]]) -> list[str]:
    """How many seeds each comparison would need, planned from the spread of its per-seed differences."""
    planned = [(c, c["paired_tests"]["power"]) for c in found if c["paired_tests"].get("power")]
    if not planned:
        return []
    lines = ["", f"### Power: seeds each comparison needs (paired t, α = {ALPHA:g}, {POWER:.0%} power)", "",
             "Planned from the standard deviation of the per-seed accuracy differences seen (few seeds estimate it "
             f"roughly): the smallest difference these seeds detect; the seeds that detect ±{SAME_ACCURACY * 100:g} "
             f"points (the protocol's 'same accuracy'); the seeds that show equivalence within ±{TOST_MARGIN * 100:g} "
             "points (TOST) when there is no true difference. – : more than 1,000.", "",
             "| arm | baseline | seeds | SD of per-seed Δ (pts) | detectable Δ (pts) | seeds to detect "
             f"±{SAME_ACCURACY * 100:g} | seeds for TOST ±{TOST_MARGIN * 100:g} |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for comparison, power in planned:
        lines.append(f"| {comparison['arm']} | {comparison['baseline']} | {power['seeds']} "
                     f"| {power['std_difference'] * 100:.2f} | {power['minimum_detectable_difference'] * 100:.2f} "
                     f"| {_seeds(power['seeds_to_detect'])} | {_seeds(power['seeds_for_equivalence'])} |")  # fmt: skip
    return lines
