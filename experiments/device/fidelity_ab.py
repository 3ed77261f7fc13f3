"""Fidelity-kernel designs side by side in one process: this checkout's module against other versions of it.

    git show 26049e7:qra/kernels/fidelity.py \\
        | sed 's/from \\._util/from qra.kernels._util/; s/from \\.flash/from qra.kernels.flash/' > old.py
    python experiments/device/fidelity_ab.py --variant round5=old.py [--variant NAME=PATH ...] [--lengths 512,2048]

Each variant is a copy of ``qra/kernels/fidelity.py`` (absolute imports) whose ``fused_fidelity_attention``
stands in for this checkout's while its row runs.  Rows, at the attention benchmark's shape (B·N = 16,384,
H = 12, 6 qubits, bf16, forward + backward): SDPA, every variant, this checkout (``fidelity-fused``), the
variants and this checkout again, SDPA again (the repeats show the drift within the run); for each, its wall
time per call and its GPU kernels under torch.profiler (:mod:`attention_profile`).
"""

from __future__ import annotations

import argparse
import importlib.util

import torch
from attention_profile import report
from profiling import FEATURES, HEAD_DIM, benchmark_leaves

import qra.kernels.fidelity as this_module
from qra.experiment.bench import attention_impls


def load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(f"fidelity_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def standing_in(module, fused):
    """The benchmark's fused fidelity row, with ``module``'s kernels in place of this checkout's."""
    original = this_module.fused_fidelity_attention

    def attention(q, k, v):
        this_module.fused_fidelity_attention = module.fused_fidelity_attention
        try:
            return fused(q, k, v)
        finally:
            this_module.fused_fidelity_attention = original

    return attention


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", action="append", default=[], help="NAME=PATH of a fidelity.py copy")
    parser.add_argument("--lengths", default="512,2048")
    parser.add_argument("--table-rows", type=int, default=12)
    args = parser.parse_args()
    impls = attention_impls(torch.device("cuda"), FEATURES, HEAD_DIM, 6, compile_paths=False)
    mode, path, fused = impls["fidelity-fused"]
    names = []
    for spec in args.variant:
        name, _, file = spec.partition("=")
        impls[f"fidelity-{name}"] = (mode, path, standing_in(load(name, file), fused))
        names.append(f"fidelity-{name}")
    order = ["sdpa", *names, "fidelity-fused", *names, "fidelity-fused", "sdpa"]
    for length in (int(n) for n in args.lengths.split(",")):
        for name in order:
            row_mode, _, attention = impls[name]
            report(name, attention, benchmark_leaves(row_mode, length, 16384, 12), length, args.table_rows)


if __name__ == "__main__":
    main()
