"""The quantum-readiness study's results: accuracy vs shots and vs noise, and what it would cost on a QPU.

    qra eval RUN --shots 64,256,1024,4096 --depolarizing 0.01,0.05,0.1 --readout 0.01,0.05   # on the GPU
    qra eval RUN --engine sampler --backend fake_torino --shots 1024 --max-eval-samples 32  # through SamplerV2
    python experiments/quantum_report.py RUN [RUN ...] --out results/quantum

Reads each run's ``metrics.json["quantum"]`` (written by ``qra eval --shots/--depolarizing/--readout``)
and ``["quantum_backends"]`` (written by ``qra eval --engine``),
and writes ``quantum.json`` (every setting, with its accuracy change from the exact kernel and, for
finite shots, the QPU cost of one review at that many shots per kernel value), ``README.md`` (a
hand-written NOTES.md in the output folder is kept on top) and ``accuracy_vs_shots_and_noise.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from qra.experiment.evaluation import QUANTUM_KNOBS, is_exact
from qra.experiment.provenance import write_json_atomic, write_text_atomic
from qra.experiment.quantum_cost import quantum_cost
from qra.experiment.runs import FinishedRecord, read_notes

PLOT = "accuracy_vs_shots_and_noise.png"


def run_rows(run_dir: Path, shot_rate: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run's description and one row per evaluated setting."""
    found = FinishedRecord.read(run_dir)
    record, metrics, config = found.record, found.metrics, found.config
    settings = metrics.get("quantum", [])
    backends = metrics.get("quantum_backends", [])
    if not settings and not backends:
        raise SystemExit(f"{run_dir} has no quantum evaluation; run `qra eval {run_dir} --shots ...` (or with "
                         "--engine sampler|framework) first")  # fmt: skip
    params = found.featuremap_params
    cost = quantum_cost(config["model"], config["featuremap"], params, config["layers"], config["max_length"],
                        batch_size=1, epsilon=0.01, shot_rate=shot_rate)  # fmt: skip
    exact = next(filter(is_exact, settings), None)
    rows = []
    for setting in settings:
        row = {key: setting[key] for key in (*QUANTUM_KNOBS, "accuracy", "f1")}
        row["accuracy_change"] = setting["accuracy"] - exact["accuracy"]
        if setting["shots"]:
            shots_per_review = cost["circuits_per_forward"] * setting["shots"]
            row["qpu_shots_per_review"] = shots_per_review
            row["qpu_seconds_per_review"] = shots_per_review / shot_rate
        rows.append(row)
    run = {
        "run": f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.startswith("seed") else run_dir.name,
        "path": str(run_dir),
        "model": config["model"],
        "featuremap": config["featuremap"],
        "featuremap_params": params,
        "mode": config["mode"],
        "layers": config["layers"],
        "seed": config["seed"],
        "test_reviews": metrics.get("eval_samples"),
        "device": record.get("device"),
        "commit": record.get("commit"),
        "qpu_cost_per_review": cost,
        "eval_options": eval_options(settings),
        "backend_eval_options": [backend_eval_options(entry) for entry in backends],
        "backends": [{key: value for key, value in entry.items() if key != "predicted"} for entry in backends],
    }
    return run, rows


def backend_eval_options(entry: dict[str, Any]) -> str:
    """The ``qra eval`` options that produce one ``quantum_backends`` entry."""
    options = f"--engine {entry['engine']} --backend {entry['backend']} --shots {entry['shots']} "
    if entry.get("optimization_level") is not None:
        options += f"--optimization-level {entry['optimization_level']} "
    return options + f"--max-eval-samples {entry['samples']}"


def eval_options(settings: list[dict[str, Any]]) -> str:
    """The ``qra eval`` options that produce these settings."""
    values = {knob: [str(s[knob]) for s in settings if s[knob]] for knob in QUANTUM_KNOBS}
    return " ".join(f"--{knob} {','.join(v)}" for knob, v in values.items() if v)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against shots (log scale), depolarizing strength and readout error, exact kernel dashed."""
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    knobs = (("shots", "shots per kernel value", True), ("depolarizing", "depolarizing p", False),
             ("readout", "readout error per qubit", False))  # fmt: skip
    for result in (r for r in results if r["rows"]):
        rows = result["rows"]
        exact = next(filter(is_exact, rows))
        for axis, (knob, title, log) in zip(axes, knobs, strict=True):
            points = sorted((r[knob], r["accuracy"]) for r in rows if r[knob])
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=result["run"]["run"])
            axis.axhline(exact["accuracy"], linestyle="--", color="grey", linewidth=1)
            axis.set_xlabel(title)
            if log:
                axis.set_xscale("log", base=2)
    axes[0].set_ylabel("test accuracy (dashed: exact kernel)")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown(results: list[dict[str, Any]], notes: str, shot_rate: float) -> str:
    lines = ["# Quantum readiness: accuracy with sampled and noisy kernels", ""]
    if notes.strip():
        lines += [notes.strip(), "", "## Measurements", ""]
    for result in results:
        run, rows = result["run"], result["rows"]
        cost = run["qpu_cost_per_review"]
        shots = run["featuremap_params"].get("shots")
        trained_with = f"kernels sampled from {shots} shots" if shots else "exact kernels"
        lines += [
            f"### {run['run']}: {run['featuremap']} {json.dumps(run['featuremap_params'])}, {run['mode']}, "
            f"layers {run['layers']}",
            "",
            f"Model {run['model']}, seed {run['seed']}, trained with {trained_with}; "
            f"{run['test_reviews']:,} test reviews; {run['device']}; commit {run['commit']}.",
            circuits_sentence(cost),
            "",
        ]
        if rows:
            lines += [f"| shots | depolarizing p | readout error | accuracy | F1 | change vs exact | QPU time per "
                      f"review at {shot_rate:g} shots/s |", "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for row in rows:
            qpu = f"{row['qpu_seconds_per_review']:,.0f} s" if "qpu_seconds_per_review" in row else "–"
            lines.append(
                f"| {row['shots'] or 'exact'} | {row['depolarizing']:g} | {row['readout']:g} | {row['accuracy']:.4f} "
                f"| {row['f1']:.4f} | {row['accuracy_change']:+.4f} | {qpu} |"
            )
        lines += ["", *backend_table(run["backends"])] if run["backends"] else [""]
    commands = [f"qra eval {r['run']['path']} {r['run']['eval_options']}" for r in results if r["rows"]]
    commands += [f"qra eval {r['run']['path']} {options}"
                 for r in results for options in r["run"]["backend_eval_options"]]  # fmt: skip
    figure = [f"![accuracy vs shots and noise]({PLOT})", ""] if any(r["rows"] for r in results) else []
    lines += [*figure, "## Reproduce", "", "```bash",
              *commands,
              "python experiments/quantum_report.py " + " ".join(r["run"]["path"] for r in results),
              "```", ""]  # fmt: skip
    return "\n".join(lines)


def circuits_sentence(cost: dict[str, Any]) -> str:
    """What one review costs in circuits, with the circuit that estimates one fidelity for scale."""
    circuit = cost["circuit"]
    shape = f"{circuit['qubits']} qubits, depth {circuit['depth']}, {circuit['two_qubit_gates']} two-qubit gates"
    if cost.get("kernel") == "projected":
        return (f"One review (N = {cost['sequence_length']}) needs {cost['circuits_per_forward']:,} measurement "
                "circuits (the state's circuit, then one of three basis changes); the fidelity kernel would need "
                f"{cost['circuits_per_review']['fidelity']:,} compute–uncompute circuits ({shape}).")  # fmt: skip
    return (f"One review (N = {cost['sequence_length']}) needs {cost['circuits_per_forward']:,} kernel circuits "
            f"({shape}).")


def backend_table(entries: list[dict[str, Any]]) -> list[str]:
    """The run's circuits through a real interface (``qra eval --engine``), beside the exact kernel on the same
    reviews: accuracy and the share of reviews whose predicted class is unchanged."""
    lines = ["Circuits run through a real interface (`qra eval --engine ...`), against the exact kernel on the same "
             "reviews:", "",
             "| engine | backend | shots | transpiler level | reviews | accuracy | exact kernel | same prediction as "
             "exact |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for entry in entries:
        agreement = entry.get("agreement_with_exact")
        same = "–" if agreement is None else f"{agreement:.0%}"
        level = "–" if entry.get("optimization_level") is None else entry["optimization_level"]
        lines.append(f"| {entry['engine']} | {entry['backend']} | {entry['shots']} | {level} | {entry['samples']} | "
                     f"{entry['accuracy']:.4f} | {entry['exact']['accuracy']:.4f} | {same} |")  # fmt: skip
    return [*lines, ""]


def write(run_dirs: list[Path], out: Path, shot_rate: float) -> Path:
    results = []
    for run_dir in run_dirs:
        run, rows = run_rows(run_dir, shot_rate)
        results.append({"run": run, "rows": rows})
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "quantum.json", {"shot_rate_per_second": shot_rate, "results": results})
    if any(result["rows"] for result in results):
        plot(results, out / PLOT)
    notes = read_notes(out)
    write_text_atomic(out / "README.md", markdown(results, notes, shot_rate))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run directories evaluated with qra eval --shots ...")
    parser.add_argument("--out", type=Path, default=Path("results/quantum"))
    parser.add_argument("--shot-rate", type=float, default=1e5, help="QPU shots per second for the cost column")
    args = parser.parse_args()
    print(write(args.runs, args.out, args.shot_rate))


if __name__ == "__main__":
    main()
