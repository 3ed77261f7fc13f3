"""Where the host's time goes when it issues one attention call: cProfile of ``qra bench attention`` rows.

    python experiments/device/host_profile.py [--rows sdpa,linear-fused] [--length 512] [--functions 25]

Each row's forward + backward (its output's ``.float().sum()`` and backward, as the benchmark does), 200 calls
after 20 warm-up calls, the GPU synchronised after each call; the functions with the most own time (``tottime``),
so that Python, PyTorch operator and Triton launch costs show apart.
"""

from __future__ import annotations

import torch
from profiling import benchmark_rows, host_profile, shape_parser

CALLS = 200


def main() -> None:
    parser = shape_parser()
    parser.add_argument("--rows", default="sdpa,linear-fused")
    parser.add_argument("--functions", type=int, default=25)
    args = parser.parse_args()
    for name, attention, leaves in benchmark_rows(args.rows.split(","), args.length, args.tokens, args.heads):

        def step(attention=attention, leaves=leaves) -> None:
            attention(*leaves).float().sum().backward()
            torch.cuda.synchronize()

        for _ in range(20):
            step()
        text = host_profile(step, CALLS, args.functions)
        print(f"\n=== {name}, N = {args.length}, {CALLS} calls ({torch.cuda.get_device_name()})", flush=True)
        print(text)


if __name__ == "__main__":
    main()
