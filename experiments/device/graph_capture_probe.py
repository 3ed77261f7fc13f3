"""What a failed CUDA-graph capture leaves behind in the process: can it still draw random numbers, drop out and
capture again?  ``qra.experiment.bench.graph_time`` must leave a process as it found it, since a benchmark goes on
after a row it could not capture.

    python experiments/device/graph_capture_probe.py
"""

from __future__ import annotations

import warnings

import torch

from qra.experiment.bench import graph_time

dev = torch.device("cuda")
x = torch.randn(1024, 1024, device=dev)
print("ok capture:", graph_time(lambda: x @ x, dev, repeats=3))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print("failing capture:", graph_time(lambda: (x.sum() > 0).item(), dev), [str(w.message)[:120] for w in caught])
for name, fn in [
    ("randn default generator", lambda: torch.randn(4, device=dev)),
    ("randn own generator", lambda: torch.randn(4, device=dev, generator=torch.Generator(dev).manual_seed(0))),
    ("dropout", lambda: torch.nn.functional.dropout(x, 0.1).mean()),
    ("capture again", lambda: graph_time(lambda: x @ x, dev, repeats=3)),
]:
    try:
        print(name, "->", str(fn())[:80].replace("\n", " "))
    except Exception as e:
        print(name, "FAILED", type(e).__name__, str(e)[:200])
