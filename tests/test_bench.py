"""The benchmark commands run end to end at toy sizes and write their JSON with provenance.

They check plumbing only: speed claims come from the committed GPU results, not from tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qra.cli import app


def run(args, code=0):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, result.output
    return result


def test_bench_attention_writes_sdpa_and_every_mode_and_path(tmp_path):
    out = tmp_path / "attention.json"
    run(["bench", "attention", "--lengths", "16,32", "--tokens", "64", "--heads", "2", "--head-dim", "8", "--m", "8",
         "--qubits", "2", "--no-compile", "--repeats", "1", "--device", "cpu", "--output", str(out)])  # fmt: skip
    payload = json.loads(out.read_text())
    assert {"command", "device", "versions", "commit"} <= set(payload["provenance"]) and payload["complete"]
    rows = payload["rows"]
    impls = ("sdpa", "softmax-pytorch", "normalized-pytorch", "linear-pytorch", "fidelity-pytorch",
             "performer-softmax-pytorch", "performer-linear-pytorch")
    assert {(r["impl"], r["N"]) for r in rows} == {(i, n) for i in impls for n in (16, 32)}
    for row in rows:
        assert {"impl", "mode", "path", "N", "B", "H", "d", "m", "fwd_ms", "fwd_bwd_ms", "peak_bytes", "device",
                "torch", "fwd_bwd_vs_sdpa"} <= set(row)  # fmt: skip
        assert row["B"] * row["N"] == 64 and row["fwd_ms"] > 0
    assert next(r for r in rows if r["impl"] == "fidelity-pytorch")["m"] == 4
    assert all(isinstance(r["exponential_pass"], bool) for r in rows if r["impl"].startswith("performer-"))


def test_bench_refuses_to_overwrite_and_keeps_finished_cases_when_stopped(tmp_path, monkeypatch):
    out = tmp_path / "attention.json"
    args = ["bench", "attention", "--lengths", "16", "--tokens", "16", "--heads", "1", "--head-dim", "4", "--m", "4",
            "--qubits", "1", "--no-compile", "--repeats", "1", "--device", "cpu", "--output", str(out)]  # fmt: skip
    run(args)
    result = run(args, code=2)
    assert "exists; pass --overwrite" in result.output
    from qra.experiment import bench

    original = bench._attention_row
    calls = []

    def stop_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(bench, "_attention_row", stop_on_third)
    CliRunner().invoke(app, [*args, "--overwrite"])
    payload = json.loads(out.read_text())
    assert not payload["complete"] and [r["impl"] for r in payload["rows"]] == ["sdpa", "softmax-pytorch"]


def test_bench_featuremaps_extrapolates_the_slow_frameworks(tmp_path):
    pytest.importorskip("qra_pennylane")
    pytest.importorskip("qra_qiskit")
    out = tmp_path / "featuremaps.json"
    run(["bench", "featuremaps", "--qubits", "2", "--inputs", "16", "--repeats", "1", "--qiskit-inputs", "4",
         "--aer-inputs", "8", "--lightning-inputs", "4", "--device", "cpu", "--output", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    statevector = next(r for r in rows if r["engine"] == "statevector")
    assert statevector["extrapolated"] and statevector["measured_inputs"] == 4
    assert statevector["ms"] == pytest.approx(statevector["ms_per_input"] * 16)
    differentiable = {r["impl"] for r in rows if r["pass"] == "fwd_bwd"}
    assert {"qra native (PennyLane tape)", "qra native (Qiskit circuit)", "qra reference engine (gate by gate)",
            "PennyLane default.qubit"} <= differentiable  # fmt: skip
    native = next(r for r in rows if r["engine"] == "native" and r["pass"] == "fwd")
    assert native["x_slower_than_native"] == 1.0
    assert json.loads(out.read_text())["settings"]["fwd_bwd_loss"] == "view_as_real(states).sum()"


def test_the_featuremaps_loss_has_the_value_and_gradient_of_the_real_and_imaginary_sums():
    from qra.experiment.bench import amplitude_sum

    leaf = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    results = []
    for loss in (amplitude_sum, lambda states: states.real.sum() + states.imag.sum()):
        states = torch.polar(leaf.abs() + 0.5, leaf * 3).conj()  # a conjugate view, as some frameworks return
        value = loss(states)
        results.append((value, torch.autograd.grad(value, leaf)[0]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)


def test_bench_train_compares_patched_steps_with_the_baseline_round_by_round(tmp_path):
    out = tmp_path / "train.json"
    run(["bench", "train", "--batch-size", "1", "--length", "16", "--models", "minilm", "--repeats", "6",
         "--variants", "rff-linear,performer-linear", "--device", "cpu", "--output", str(out)])  # fmt: skip
    payload = json.loads(out.read_text())
    rows = payload["rows"]
    variants = [(r["model"], r["variant"]) for r in rows]
    assert variants == [("minilm", "baseline"), ("minilm", "rff-linear"), ("minilm", "performer-linear")]
    assert payload["settings"]["rounds"] == 6 and all(r["rounds"] == 6 for r in rows)
    # the baseline paired with itself: every round's ratio is exactly 1
    for kind in ("throughput", "latency"):
        assert rows[0][f"{kind}_vs_baseline"] == 1.0 and rows[0][f"{kind}_vs_baseline_ci95"] == [1.0, 1.0]
        for row in rows[1:]:
            low, high = row[f"{kind}_vs_baseline_ci95"]
            assert row["step_ms"] > 0 and row["latency_ms"] > 0 and low <= row[f"{kind}_vs_baseline"] <= high
    assert rows[1]["attention_path"] == rows[2]["attention_path"] == "pytorch" and rows[0]["attention_path"] is None
    result = run(["bench", "train", "--models", "gpt", "--device", "cpu", "--output", str(tmp_path / "x.json")], 2)
    assert "unknown gpt; accepted: distilbert, minilm" in result.output


def test_interleaved_timing_rotates_the_order_and_drops_a_step_that_runs_out_of_memory():
    from qra.experiment.bench_train import time_interleaved

    log = []

    def step(name):
        def run_step():
            log.append(name)
            if name == "c" and log.count("c") == 5:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

        return run_step

    # a visit: one synchronised step, one untimed step, then a burst of 2 back to back
    times = time_interleaved({name: step(name) for name in "abc"}, rounds=4, device=torch.device("cpu"), burst=2)
    # rounds 0 and 1 rotate a, b, c; c fails in round 1 (its 5th step: its second visit's first) and leaves,
    # rounds 2 and 3 rotate a, b
    visits = ["a", "b", "c", "b", "c", "a", "a", "b", "b", "a"]
    assert log == [name for visit, name in enumerate(visits) for _ in range(1 if visit == 4 else 4)]
    assert [len(times[name].throughput) for name in "abc"] == [4, 4, 0]
    assert [len(times[name].latency) for name in "abc"] == [4, 4, 0]
    with pytest.raises(ValueError, match="boom"):
        time_interleaved({"x": lambda: (_ for _ in ()).throw(ValueError("boom"))}, 1, torch.device("cpu"))


def test_steady_timing_issues_an_untimed_step_then_the_burst():
    from qra.experiment.bench import time_steady

    calls = []
    assert time_steady(lambda: calls.append(1), torch.device("cpu"), 3) >= 0
    assert len(calls) == 4


def test_the_default_output_is_a_user_folder_not_the_committed_results():
    from qra.cli import BENCH_DIR

    assert BENCH_DIR.parts[0] == "runs"
    assert torch.tensor(1)  # the module imports without a GPU


def test_the_tensorcircuit_peer_computes_qiskits_zz_states_with_gradients():
    pytest.importorskip("tensorcircuit")
    np = pytest.importorskip("numpy")
    from qiskit.circuit.library import zz_feature_map
    from qiskit.quantum_info import Statevector

    from qra.experiment.bench import tensorcircuit_zz_states

    x = torch.rand(4, 3, dtype=torch.float32) * 6.28
    leaf = x.clone().requires_grad_()
    states = tensorcircuit_zz_states(leaf)
    circuit = zz_feature_map(3, reps=2)
    for row, state in zip(x.numpy().astype(float), states.detach().numpy(), strict=True):
        expected = Statevector(circuit.assign_parameters(row)).data
        assert np.abs(np.vdot(expected, state)) ** 2 == pytest.approx(1.0, abs=1e-5)  # the same state
    (states.real.sum() + states.imag.sum()).backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_graph_time_has_no_gpu_time_on_the_cpu():
    from qra.experiment.bench import graph_time

    calls = []
    assert graph_time(lambda: calls.append(1), torch.device("cpu")) is None and not calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graph_time_replays_the_steps_kernels_and_warns_when_a_step_cannot_be_captured():
    from qra.experiment.bench import graph_time

    device = torch.device("cuda")
    x = torch.randn(1024, 1024, device=device)
    counter = torch.zeros((), device=device)

    def step() -> None:
        x @ x
        counter.add_(1)

    assert graph_time(step, device, repeats=3, replays=10) > 0
    # the step ran once on the side stream before capture (which records without running), then the graph was
    # replayed once to warm up and 3 × 10 times timed: each replay runs the captured kernels once
    assert counter.item() == 1 + 1 + 3 * 10
    with pytest.warns(UserWarning, match="could not be captured"):
        assert graph_time(lambda: (x.sum() > 0).item(), device) is None  # a host sync cannot be captured
    # and the failed capture left the default generator usable: random draws and dropout still work
    assert torch.randn(4, device=device).isfinite().all() and torch.nn.functional.dropout(x, 0.1).isfinite().all()


def test_ncu_summary_reads_an_ncu_export(tmp_path, monkeypatch):
    """experiments/device/ncu_summary.py's summary of an ncu raw CSV (a header row, a units row, one row a
    kernel): the chosen metrics with their units, stall reasons ranked, 'not_selected' (not a stall) left out."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "experiments" / "device"))
    from ncu_summary import summarise

    stall = "smsp__average_warps_issue_stalled_{}_per_issue_active.ratio"
    header = ["ID", "Kernel Name", "gpu__time_duration.sum", "launch__registers_per_thread",
              stall.format("barrier"), stall.format("not_selected"), stall.format("long_scoreboard"),
              stall.format("wait")]  # fmt: skip
    units = ["", "", "us", "register/thread", "", "", "", ""]
    rows = [["0", "_whole_forward_kernel", "83.07", "230", "1.40", "9.00", "0.67", "0.87"],
            ["1", "void at::reduce_kernel", "18.4", "32", "6.31", "", "54.15", "2.56"]]  # fmt: skip
    export = tmp_path / "ncu.csv"
    export.write_text("\n".join(",".join(f'"{v}"' for v in row) for row in [header, units, *rows]) + "\n")
    lines = summarise(export).splitlines()
    assert lines[0] == "== _whole_forward_kernel"
    assert lines[1].split() == ["duration", "83.07", "us"]
    assert lines[2].split() == ["registers", "230", "register/thread"]
    assert lines[3].endswith("barrier 1.40, wait 0.87, long_scoreboard 0.67")
    assert lines[4] == "== void at::reduce_kernel"
    assert lines[7].endswith("long_scoreboard 54.15, barrier 6.31, wait 2.56")
