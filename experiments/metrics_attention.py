"""Recompute the attention entropy and distance statistics of a finished run, on N test reviews.

    python experiments/metrics_attention.py runs/rff-... --samples 512 [--out attention.json]

Patched layers report qra's attention maps, the others eager attention's (see qra.experiment.attention_maps).
"""

import argparse
import json
from pathlib import Path

from qra.experiment.attention_maps import attention_statistics, attention_subset
from qra.experiment.evaluation import load_finished_run
from qra.experiment.provenance import write_json_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--samples", type=int, default=512, help="test reviews (a fixed, seeded subset)")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (default: the run's)")
    parser.add_argument("--out", type=Path, default=None, help="write the statistics here as JSON")
    args = parser.parse_args()

    run = load_finished_run(args.run_dir, args.device)
    subset = attention_subset(run.texts, args.samples, run.config.seed)
    result = attention_statistics(run.model, run.tokenizer, subset, run.config.max_length)
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
