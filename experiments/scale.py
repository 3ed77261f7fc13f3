"""Scale-out check: the same training on 1 GPU and on 2 GPUs (torchrun, DDP), same effective batch.

    python experiments/scale.py run --gpus 0,1 [--runs-dir runs/scale]   # on a machine with 2 GPUs
    python experiments/scale.py report runs/scale --out results/scale    # scale.json + README.md

``run`` trains each pair in ``PAIRS`` (baseline and rff with the seed's defaults at the study's
effective batch of 32; the baseline again at 256, where the GPU's work rather than the host's
per-step overhead sets the pace) first on one GPU, then on two through ``torchrun --nproc_per_node 2``
with half the per-device batch.  The runs go one at a time, so each has the host to itself: the
step at batch 32 is host-bound, and a neighbour's CPU load would bias the comparison.  Finished runs
are skipped; an interrupted one starts over.
``report`` compares training throughput (the Trainer's samples/s over the whole run), accuracy and
per-GPU peak memory; a hand-written NOTES.md in the output folder is kept on top.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from qra.experiment.launching import stop_children_on_sigterm
from qra.experiment.provenance import write_json_atomic, write_text_atomic
from qra.experiment.runs import FinishedRecord, RunDirectory, read_notes

COMMON = ["--model", "bundled:all-MiniLM-L6-v2", "--data-dir", "../shared/data/imdb", "--max-length", "512",
          "--epochs", "2", "--lr", "5e-5", "--layers", "4,5", "--seed", "0", "--eval-batch-size", "128"]  # fmt: skip
ARMS = {
    "baseline": ["--featuremap", "none"],
    "rff-seed-defaults": ["--featuremap", "rff", "--fm", "m=128", "--fm", "sigma=1.0", "--mode", "softmax"],
}
#: (run-name prefix, arm, effective batch), each trained on 1 GPU and on 2, in this order
PAIRS = [
    ("baseline", "baseline", 32),
    ("baseline-b256", "baseline", 256),
    ("rff-seed-defaults", "rff-seed-defaults", 32),
]
#: NVLink multicast stays off on the shared GPU hosts (see the device tool's notes)
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def command(arm: str, processes: int, effective_batch: int, run_dir: Path) -> list[str]:
    """``qra train`` for one GPU, or the same under torchrun for several, with the same effective batch."""
    train = ["-m", "qra", "train", *ARMS[arm], *COMMON, "--batch-size", str(effective_batch // processes),
             "--output-dir", str(run_dir)]  # fmt: skip
    if processes == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *train]


def run_all(runs_dir: Path, gpus: list[str]) -> None:
    """Every pair's 1-GPU run (on the first GPU) and then its 2-GPU run, one run at a time.

    On SIGTERM (e.g. ``timeout``) the run in flight is stopped too: a torchrun left running would
    share its GPUs with the next attempt at the same run and write into the same directory.
    """
    running: list[subprocess.Popen] = []
    stop_children_on_sigterm(running)
    for name, arm, effective_batch in PAIRS:
        for processes in (1, 2):
            run_dir = runs_dir / f"{name}-{processes}gpu"
            if RunDirectory(run_dir).is_finished:
                print(f"done     {run_dir}")
                continue
            if run_dir.exists():  # an interrupted run starts over: its throughput must cover one whole run
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            devices = gpus[:processes]
            env = os.environ | NCCL_ENV | {"CUDA_VISIBLE_DEVICES": ",".join(devices)}
            print(f"start    {run_dir} on GPU(s) {','.join(devices)}", flush=True)
            with (run_dir / "launch.log").open("a") as log:
                process = subprocess.Popen(
                    command(arm, processes, effective_batch, run_dir), env=env, stdout=log, stderr=subprocess.STDOUT
                )
            running.append(process)
            while process.poll() is None:  # polled: see stop_children_on_sigterm
                time.sleep(1)
            running.remove(process)
            if process.returncode:
                raise SystemExit(f"{run_dir} failed (exit code {process.returncode}); see its launch.log")


def _train_runtime(run_dir: Path) -> float | None:
    for line in (run_dir / "train_log.jsonl").read_text().splitlines()[::-1]:
        entry = json.loads(line)
        if "train_runtime" in entry:
            return entry["train_runtime"]
    return None


def summarise(runs_dir: Path) -> dict[str, Any]:
    """One row per (arm, GPUs), and the 2-GPU/1-GPU speedup per arm."""
    rows = []
    for run_dir in sorted(p.parent for p in runs_dir.glob("*/metrics.json")):
        found = FinishedRecord.read(run_dir)
        record, metrics = found.record, found.metrics
        rows.append({
            "arm": run_dir.name.rsplit("-", 1)[0],
            "gpus": record["training"]["world_size"],
            "per_device_batch": record["config"]["batch_size"],
            "effective_batch_size": record["training"]["effective_batch_size"],
            "learning_rate": record["training"]["learning_rate"],
            "train_samples_per_second": metrics["train_samples_per_second"],
            "train_runtime_s": _train_runtime(run_dir),
            "accuracy": metrics["accuracy"],
            "f1": metrics["f1"],
            "eval_predictions": metrics["eval_predictions"],
            "peak_gpu_memory_bytes_per_device": metrics["peak_gpu_memory_bytes_per_device"],
            "featuremap_draws_identical": metrics["distributed"]["featuremap_draws_identical"],
            "final_weights_identical": metrics["distributed"]["final_weights_identical"],
            "device": record["device"],
            "versions": record["versions"],
            "commit": record["commit"],
            "command": record["command"],
            "run": run_dir.name,
        })  # fmt: skip
    speedups = {}
    for arm in sorted({row["arm"] for row in rows}):
        by_gpus = {row["gpus"]: row for row in rows if row["arm"] == arm}
        if 1 in by_gpus and 2 in by_gpus:
            speedups[arm] = {
                "throughput_speedup": by_gpus[2]["train_samples_per_second"] / by_gpus[1]["train_samples_per_second"],
                "accuracy_difference": by_gpus[2]["accuracy"] - by_gpus[1]["accuracy"],
            }
    return {"rows": rows, "speedup_2_vs_1_gpu": speedups}


def markdown(summary: dict[str, Any], notes: str) -> str:
    rows = summary["rows"]
    lines = ["# Scale-out: 1 GPU vs 2 GPUs (DDP through torchrun)", ""]
    if notes.strip():
        lines += [notes.strip(), "", "## Measurements", ""]
    lines += [
        f"Device: {', '.join(sorted({r['device'] for r in rows}))}. Model: bundled:all-MiniLM-L6-v2 (the stand-in "
        "for DistilBERT), full IMDb (25,000 train / 25,000 test), length 512, 2 epochs, lr 5e-5, seed 0, bf16.",
        "",
        "| arm | GPUs | batch per GPU × GPUs | train samples/s | train time (s) | accuracy | F1 "
        "| peak memory per GPU (GiB) | test reviews counted |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: (r["arm"], r["gpus"])):
        memory = " / ".join(f"{b / 2**30:.2f}" for b in r["peak_gpu_memory_bytes_per_device"])
        lines.append(
            f"| {r['arm']} | {r['gpus']} | {r['per_device_batch']} × {r['gpus']} "
            f"| {r['train_samples_per_second']:.1f} | {r['train_runtime_s']:.1f} | {r['accuracy']:.4f} "
            f"| {r['f1']:.4f} | {memory} | {r['eval_predictions']:,} |"
        )
    lines += ["", "| arm | throughput speedup, 2 GPUs / 1 GPU | accuracy, 2 GPUs − 1 GPU |", "| --- | --- | --- |"]
    for arm, s in summary["speedup_2_vs_1_gpu"].items():
        lines.append(f"| {arm} | {s['throughput_speedup']:.2f}× | {s['accuracy_difference']:+.4f} |")
    lines += ["", "## Reproduce", "", "```bash", "python experiments/scale.py run --gpus 0,1", "```", "",
              "Each run's own command:", "", "```bash", *sorted({r["command"] for r in rows}), "```", "",
              f"Commits: {', '.join(sorted({str(r['commit']) for r in rows}))}", ""]  # fmt: skip
    return "\n".join(lines)


def write(runs_dir: Path, out: Path) -> Path:
    summary = summarise(runs_dir)
    if not summary["rows"]:
        raise SystemExit(f"no finished scale runs under {runs_dir}")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "scale.json", summary)
    notes = read_notes(out)
    write_text_atomic(out / "README.md", markdown(summary, notes))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="train the 1-GPU and 2-GPU runs")
    run.add_argument("--gpus", default="0,1", help="two GPU indices")
    run.add_argument("--runs-dir", type=Path, default=Path("runs/scale"))
    report = sub.add_parser("report", help="scale.json and README.md from finished runs")
    report.add_argument("runs_dir", type=Path)
    report.add_argument("--out", type=Path, default=Path("results/scale"))
    args = parser.parse_args()
    if args.action == "run":
        gpus = args.gpus.split(",")
        if len(gpus) < 2:
            raise SystemExit("--gpus needs two GPU indices, e.g. 0,1")
        run_all(args.runs_dir, gpus)
    else:
        print(write(args.runs_dir, args.out))


if __name__ == "__main__":
    main()
