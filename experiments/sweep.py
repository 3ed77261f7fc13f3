"""Run a study grid (feature maps × parameters × seeds) from a YAML config, skipping what is done.

    python experiments/sweep.py experiments/configs/imdb_study.yaml [--only NAME] [--dry-run]
    python experiments/sweep.py CONFIG --jobs-per-gpu 4 [--gpus 0,1]     # several runs at once

Each (arm, seed) trains into ``<runs_dir>/<arm name>/seed<N>``.  A run with metrics.json is
skipped, an interrupted one (checkpoints but no metrics) resumes, so the sweep can be stopped and
started again at will.  Arms with ``robustness: true`` are evaluated on the perturbed test sets;
arms with ``quantum_eval: {shots: [...], depolarizing: [...], readout: [...]}`` are re-evaluated
with sampled / noisy kernels after training (``qra eval --shots ...``).

``--jobs-per-gpu K`` runs up to K trainings on each GPU at once, each in its own process (a
MiniLM run leaves an H200 mostly idle, so several share one well).  Their records say so
(``training.runs_sharing_device``) and ``qra report`` leaves their speed out.  When everything
asked for has finished, ``qra report`` runs over ``runs_dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qra.experiment.config import TrainConfig
from qra.experiment.evaluation import evaluate_quantum, evaluate_robustness, quantum_setting_key, quantum_settings
from qra.experiment.launching import stop_children_on_sigterm
from qra.experiment.report import write_report
from qra.experiment.robustness import RobustnessError, needs_wordnet, require_wordnet
from qra.experiment.runs import RunDirectory
from qra.experiment.training import SHARED_DEVICE_ENV, train


@dataclass
class Job:
    """One (arm, seed): its training config and what to evaluate after training."""

    config: TrainConfig
    quantum_eval: dict[str, list] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def name(self) -> str:
        return f"{self.run_dir.parent.name}/{self.run_dir.name}"

    def pending_evaluations(self) -> list[str]:
        """What a trained run still lacks: ``robustness`` and/or ``quantum`` (every setting asked for)."""
        metrics = RunDirectory(self.run_dir).metrics()
        pending = []
        asked = {f"{kind}={rate:g}" for kind, rates in self.config.robustness.items() for rate in rates}
        if asked - set(metrics.get("robustness", {})):
            pending.append("robustness")
        if self.quantum_eval:
            wanted = {quantum_setting_key(s) for s in quantum_settings(**self.quantum_eval)}
            if wanted - {quantum_setting_key(s) for s in metrics.get("quantum", [])}:
                pending.append("quantum")
        return pending

    def finished(self) -> bool:
        return RunDirectory(self.run_dir).is_finished and not self.pending_evaluations()


def load_plan(path: Path) -> tuple[dict[str, Any], list[Job]]:
    """The study's settings and one Job per (arm, seed), in file order."""
    study = yaml.safe_load(path.read_text())
    common = study.get("common", {})
    runs_dir = Path(study.get("runs_dir", "runs/study"))
    plan = []
    for arm in study["arms"]:
        arm = dict(arm)
        name = arm.pop("name")
        seeds = arm.pop("seeds", [0])
        quantum_eval = arm.pop("quantum_eval", {})
        robustness = study.get("robustness", {}) if arm.pop("robustness", False) else {}
        for seed in seeds:
            settings = common | arm | {"seed": seed, "robustness": robustness}
            plan.append(Job(TrainConfig(output_dir=str(runs_dir / name / f"seed{seed}"), **settings), quantum_eval))
    return study, plan


def run_job(job: Job) -> None:
    """Train (or resume) one job in this process, then the evaluations it asks for and still lacks.

    A record whose evaluations are incomplete and whose model is gone (only config and metrics were
    kept, e.g. copied back from a GPU machine) is trained again from scratch.
    """
    run = RunDirectory(job.run_dir)
    trained = run.is_finished
    if trained and job.pending_evaluations() and not run.model_dir.is_dir():
        print(f"{job.name}: evaluations {job.pending_evaluations()} missing and no model kept; training again")
        shutil.rmtree(job.run_dir)
        trained = False
    if not trained:
        train(job.config, resume=run.checkpoints_dir.is_dir())
    if "robustness" in job.pending_evaluations():
        evaluate_robustness(job.run_dir, job.config.robustness)
    if "quantum" in job.pending_evaluations():
        evaluate_quantum(job.run_dir, **job.quantum_eval)


def run_in_parallel(config_path: Path, jobs: list[Job], gpus: list[str], per_gpu: int) -> list[str]:
    """Each job in its own process, up to ``per_gpu`` per GPU; returns the names of jobs that failed.

    A child's output goes to ``<run dir>/sweep.log``.  On SIGTERM (e.g. ``timeout``) the children
    are stopped too; their checkpoints let the next sweep resume them.
    """
    queue = list(jobs)
    running: dict[subprocess.Popen, tuple[Job, str]] = {}
    failed = []

    stop_children_on_sigterm(running)
    while queue or running:
        busy = [gpu for _, gpu in running.values()]
        free = [gpu for gpu in gpus if busy.count(gpu) < per_gpu]
        while queue and free:
            gpu = min(free, key=busy.count)
            job = queue.pop(0)
            job.run_dir.mkdir(parents=True, exist_ok=True)
            env = os.environ | {"CUDA_VISIBLE_DEVICES": physical_gpu(gpu), SHARED_DEVICE_ENV: str(per_gpu)}
            with (job.run_dir / "sweep.log").open("a") as log:
                command = [sys.executable, __file__, str(config_path), "--run", job.name]
                process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            running[process] = (job, gpu)
            busy.append(gpu)
            free = [g for g in gpus if busy.count(g) < per_gpu]
            print(f"start    {job.name} on GPU {gpu}", flush=True)
        time.sleep(2)
        for process in [p for p in running if p.poll() is not None]:
            job, gpu = running.pop(process)
            ok = process.returncode == 0
            print(f"{'finished' if ok else 'FAILED'} {job.name} (GPU {gpu}, exit {process.returncode})", flush=True)
            if not ok:
                failed.append(job.name)
    return failed


def check_requirements(jobs: list[Job]) -> None:
    """Stop before starting anything when a job would fail for want of something this machine lacks.

    Each job checks too, but only once started: a sweep of many parallel jobs would otherwise spend its
    time starting jobs that all fail the same way (it did: WordNet missing on a GPU machine).
    """
    if any(needs_wordnet(job.config.robustness) for job in jobs):
        try:
            require_wordnet()
        except RobustnessError as error:
            raise SystemExit(f"jobs of this sweep evaluate synonym swaps, but: {error}") from error


def physical_gpu(index: str) -> str:
    """The device id a child must see for GPU ``index`` of this process (which may itself see a subset)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[int(index)] if visible else index


def visible_gpus() -> list[str]:
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--only", action="append", default=[], help="run only these arm names (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="list what would run")
    parser.add_argument("--by-seed", action="store_true", help="all arms' seed 0 first, then seed 1, …")
    parser.add_argument("--no-report", action="store_true", help="skip qra report at the end")
    parser.add_argument("--jobs-per-gpu", type=int, default=0, help="run jobs in parallel processes, K per GPU")
    parser.add_argument("--gpus", default="", help="GPU indices for --jobs-per-gpu (default: every visible GPU)")
    parser.add_argument("--run", default="", help="run only job ARM/seedN, here (the parallel mode's children)")
    args = parser.parse_args()

    study, plan = load_plan(args.config)
    if args.run:
        matches = [job for job in plan if job.name == args.run]
        if not matches:
            raise SystemExit(f"no job {args.run!r} in {args.config}; jobs: {', '.join(j.name for j in plan)}")
        run_job(matches[0])
        return
    if args.only:
        unknown = set(args.only) - {job.run_dir.parent.name for job in plan}
        if unknown:
            raise SystemExit(f"no arm(s) {', '.join(sorted(unknown))} in {args.config}")
        plan = [job for job in plan if job.run_dir.parent.name in args.only]
    if args.by_seed:
        plan.sort(key=lambda job: job.config.seed)  # stable: arms keep their file order within a seed
    todo = []
    for job in plan:
        if job.finished():
            print(f"done     {job.run_dir}")
            continue
        todo.append(job)
        resume = (job.run_dir / "checkpoints").is_dir()
        settings = json.dumps(job.config.featuremap_params)
        print(f"{'resume' if resume else 'train'}    {job.run_dir}: {settings}", flush=True)
    if args.dry_run:
        return
    check_requirements(todo)
    if args.jobs_per_gpu > 0:
        gpus = args.gpus.split(",") if args.gpus else visible_gpus()
        if not gpus:
            raise SystemExit("--jobs-per-gpu needs CUDA GPUs; torch sees none (run without it to train here)")
        failed = run_in_parallel(args.config, todo, gpus, args.jobs_per_gpu)
        if failed:
            raise SystemExit(f"{len(failed)} job(s) failed: {', '.join(failed)} (see their sweep.log)")
    else:
        for job in todo:
            run_job(job)
    if not args.no_report:
        out = write_report([study.get("runs_dir", "runs/study")], study.get("report_dir", "results/study"))
        print(f"report   {out}")


if __name__ == "__main__":
    main()
