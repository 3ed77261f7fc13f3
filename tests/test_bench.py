"""The benchmark commands run end to end at toy sizes and write their JSON with provenance.

They check plumbing only: speed claims come from the committed GPU results, not from tests.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from qra.cli import app


def run(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def test_bench_attention_writes_sdpa_and_every_mode(tmp_path):
    out = tmp_path / "attention.json"
    run(["bench", "attention", "--lengths", "16,32", "--tokens", "64", "--heads", "2", "--head-dim", "8", "--m", "8",
         "--repeats", "1", "--device", "cpu", "--output", str(out)])  # fmt: skip
    payload = json.loads(out.read_text())
    assert {"command", "device", "versions", "commit"} <= set(payload["provenance"])
    rows = payload["rows"]
    assert {(r["impl"], r["N"]) for r in rows} == {(i, n) for i in ("sdpa", "softmax", "normalized", "linear")
                                                   for n in (16, 32)}  # fmt: skip
    for row in rows:
        assert {
            "impl",
            "mode",
            "N",
            "B",
            "H",
            "d",
            "m",
            "fwd_ms",
            "fwd_bwd_ms",
            "peak_bytes",
            "device",
            "torch",
        } <= set(row)
        assert row["B"] * row["N"] == 64 and row["fwd_ms"] > 0


def test_bench_featuremaps_extrapolates_the_slow_frameworks(tmp_path):
    pytest.importorskip("qra_pennylane")
    pytest.importorskip("qra_qiskit")
    out = tmp_path / "featuremaps.json"
    run(["bench", "featuremaps", "--qubits", "2", "--inputs", "16", "--repeats", "1", "--qiskit-inputs", "4",
         "--aer-inputs", "8", "--device", "cpu", "--output", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    statevector = next(r for r in rows if r["engine"] == "statevector")
    assert statevector["extrapolated"] and statevector["measured_inputs"] == 4
    assert statevector["ms"] == pytest.approx(statevector["ms_per_input"] * 16)
    assert {r["impl"] for r in rows if r["pass"] == "fwd_bwd"} == {
        "qra native (PennyLane tape)", "qra native (Qiskit circuit)", "PennyLane default.qubit"
    }  # fmt: skip


def test_bench_train_compares_patched_steps_with_the_baseline(tmp_path):
    from qra.experiment.bench import bench_train, write_results

    cpu = torch.device("cpu")
    rows = bench_train(cpu, batch=1, length=16, variants=("baseline", "rff-linear"), repeats=1)
    write_results(tmp_path / "train.json", rows, cpu, {})
    assert [r["variant"] for r in rows] == ["baseline", "rff-linear"]
    assert rows[0]["throughput_vs_baseline"] == 1.0 and rows[1]["step_ms"] > 0
    assert json.loads((tmp_path / "train.json").read_text())["rows"][1]["variant"] == "rff-linear"
