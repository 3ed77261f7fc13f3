"""qra train under torchrun: two CPU processes (gloo) train a tiny model; ranks agree, rank 0 writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="needs torchrun")
def test_two_processes_agree_and_write_once(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "qra", "train",
        "--featuremap", "rff", "--fm", "m=16", "--model", str(tiny_model_dir), "--data-dir", str(tiny_data_dir),
        "--max-length", "48", "--epochs", "1", "--batch-size", "4", "--eval-batch-size", "4",
        "--max-eval-samples", "23", "--attention-samples", "8", "--device", "cpu", "--output-dir", str(out),
    ]  # fmt: skip
    environment = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distributed"] == {
        "world_size": 2, "featuremap_draws_identical": True, "final_weights_identical": True
    }  # fmt: skip
    # 23 reviews over 2 ranks: the sampler pads one duplicate, the gather drops it again
    assert metrics["eval_samples"] == metrics["eval_predictions"] == 23
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["world_size"] == 2 and training["effective_batch_size"] == 8
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert sum("eval_accuracy" in entry for entry in log) == 1  # logged by rank 0 only
    assert log[-1]["step"] == 6  # 48 reviews / (2 ranks x batch 4)


def test_digests_tell_tensors_apart_whatever_their_order():
    import torch

    from qra.distributed import identical_across_ranks, tensor_digest

    a = {"w": torch.arange(4.0), "b": torch.tensor(1.5)}
    assert tensor_digest(a) == tensor_digest(dict(reversed(list(a.items()))))
    assert tensor_digest(a) != tensor_digest({"w": torch.arange(4.0), "b": torch.tensor(1.25)})
    assert tensor_digest(a) != tensor_digest({"w": torch.arange(4.0).double(), "b": torch.tensor(1.5)})
    assert identical_across_ranks(a)  # one process: trivially the same
