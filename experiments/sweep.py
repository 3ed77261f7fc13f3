"""Run a study grid (feature maps × parameters × seeds) from a YAML config, skipping what is done.

    python experiments/sweep.py experiments/configs/imdb_study.yaml [--only NAME] [--dry-run]

Each (arm, seed) trains into ``<runs_dir>/<arm name>/seed<N>``.  A run with metrics.json is
skipped, an interrupted one (checkpoints but no metrics) resumes, so the sweep can be stopped and
started again at will.  Arms with ``robustness: true`` are evaluated on the perturbed test sets.
When everything asked for has finished, ``qra report`` runs over ``runs_dir``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from qra.report import write_report
from qra.training import TrainConfig, train


def load_plan(path: Path) -> tuple[dict[str, Any], list[TrainConfig]]:
    """The study's settings and one TrainConfig per (arm, seed), in file order."""
    study = yaml.safe_load(path.read_text())
    common = study.get("common", {})
    runs_dir = Path(study.get("runs_dir", "runs/study"))
    plan = []
    for arm in study["arms"]:
        arm = dict(arm)
        name = arm.pop("name")
        seeds = arm.pop("seeds", [0])
        robustness = study.get("robustness", {}) if arm.pop("robustness", False) else {}
        for seed in seeds:
            settings = common | arm | {"seed": seed, "robustness": robustness}
            plan.append(TrainConfig(output_dir=str(runs_dir / name / f"seed{seed}"), **settings))
    return study, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--only", action="append", default=[], help="run only these arm names (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="list what would run")
    parser.add_argument("--by-seed", action="store_true", help="all arms' seed 0 first, then seed 1, …")
    parser.add_argument("--no-report", action="store_true", help="skip qra report at the end")
    args = parser.parse_args()

    study, plan = load_plan(args.config)
    if args.only:
        plan = [c for c in plan if Path(c.output_dir).parent.name in args.only]
    if args.by_seed:
        plan.sort(key=lambda c: c.seed)  # stable: arms keep their file order within a seed
    for config in plan:
        run_dir = Path(config.output_dir)
        if (run_dir / "metrics.json").is_file():
            print(f"done     {run_dir}")
            continue
        resume = (run_dir / "checkpoints").is_dir()
        print(f"{'resume' if resume else 'train'}    {run_dir}: {json.dumps(config.fm_params)}", flush=True)
        if not args.dry_run:
            train(config, resume=resume)
    if not args.dry_run and not args.no_report:
        out = write_report([study.get("runs_dir", "runs/study")], study.get("report_dir", "results/study"))
        print(f"report   {out}")


if __name__ == "__main__":
    main()
