"""Measure the query–key distances of each layer of a pretrained encoder: the scale for RFF's σ.

    python experiments/qk_scale.py --model bundled:all-MiniLM-L6-v2 --data-dir ../shared/data/imdb \
        --reviews 64 --out results/imdb/qk_scale.json
"""

import argparse
import json
from pathlib import Path

import numpy as np

from qra.experiment.data import load_text_classification
from qra.experiment.models import DEFAULT_MODEL, load_classifier, load_tokenizer, resolve_device
from qra.experiment.provenance import provenance, write_json_atomic
from qra.experiment.qk_scale import query_key_distances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--reviews", type=int, default=64, help="test reviews (a seeded random subset)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    model = load_classifier(args.model).to(device)
    tokenizer = load_tokenizer(args.model, args.max_length)
    texts = load_text_classification(args.data_dir, 1, None, args.seed)["test"]["text"]
    chosen = np.random.default_rng(args.seed).choice(len(texts), size=args.reviews, replace=False)
    result = query_key_distances(model, tokenizer, [texts[i] for i in sorted(chosen)], args.max_length, seed=args.seed)
    result = {"model": args.model, "provenance": provenance(device), **result}
    for row in result["layers"]:
        print(f"layer {row['layer']}: median ‖q−k‖ = {row['q50']:.2f} (5%–95%: {row['q05']:.2f}–{row['q95']:.2f})")
    if args.out:
        write_json_atomic(args.out, result)
        print(json.dumps({"wrote": str(args.out)}))


if __name__ == "__main__":
    main()
