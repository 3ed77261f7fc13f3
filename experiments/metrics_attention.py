"""Recompute the attention entropy and distance statistics of a finished run, on N test reviews.

    python experiments/metrics_attention.py runs/rff-... --samples 512 [--out attention.json]

Patched layers report qra's attention maps, the others eager attention's (see qra.attention_maps).
"""

import argparse
import json
from pathlib import Path

import numpy as np

from qra.attention_maps import attention_statistics
from qra.data import load_text_classification
from qra.evaluation import load_run_model
from qra.models import load_tokenizer
from qra.provenance import write_json_atomic
from qra.training import TrainConfig, resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--samples", type=int, default=512, help="test reviews (a fixed, seeded subset)")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (default: the run's)")
    parser.add_argument("--out", type=Path, default=None, help="write the statistics here as JSON")
    args = parser.parse_args()

    config = TrainConfig.from_json(args.run_dir / "config.json")
    model = load_run_model(args.run_dir).to(resolve_device(args.device or config.device))
    tokenizer = load_tokenizer(str(args.run_dir / "model"), config.max_length)
    texts = load_text_classification(config.data_dir, 1, config.max_eval_samples, config.seed)["test"]["text"]
    order = sorted(np.random.default_rng(config.seed).permutation(len(texts))[: args.samples])
    result = attention_statistics(model, tokenizer, [texts[i] for i in order], config.max_length)
    if args.out:
        write_json_atomic(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
