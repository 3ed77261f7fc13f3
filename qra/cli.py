"""The ``qra`` command line."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table

from . import featuremaps

app = typer.Typer(
    help="qra: kernelized, quantum-ready attention for pretrained encoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Keep sub-commands (``qra featuremaps``) even while there is only one."""


@app.command("featuremaps")
def list_featuremaps(
    as_json: bool = typer.Option(False, "--json", help="Print the registry as JSON instead of a table."),
) -> None:
    """List the feature maps registered under the 'qra.featuremaps' entry-point group."""
    listing = featuremaps.available()
    if as_json:
        typer.echo(json.dumps({name: info.as_dict() for name, info in listing.items()}, indent=2))
        return
    table = Table(title=f"Feature maps (entry-point group {featuremaps.ENTRY_POINT_GROUP!r})")
    for column in ("name", "distribution", "version", "summary", "status"):
        table.add_column(column, overflow="fold")
    for info in listing.values():
        status = "ok" if info.status == "ok" else f"[red]error[/red]: {info.error}"
        table.add_row(info.name, info.distribution, info.version, info.summary, status)
    Console(width=160).print(table)


bench_app = typer.Typer(help="Benchmarks that write JSON under results/bench/ and print a table.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _parse_ints(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option} takes comma-separated integers, e.g. 4,8; got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"{option} takes positive integers; got {text!r}")
    return values


def _device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("--device cuda was asked for but torch sees no CUDA device; use cpu or auto")
    if choice not in ("cpu", "cuda"):
        raise typer.BadParameter(f"--device takes auto, cpu or cuda; got {choice!r}")
    return torch.device(choice)


@bench_app.command("featuremaps")
def bench_featuremaps_command(
    qubits: str = typer.Option("4,8", help="Comma-separated qubit counts."),
    inputs: str = typer.Option("8192,196608", help="Comma-separated numbers of input vectors."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (Qiskit's simulators always run on the CPU)."),
    repeats: int = typer.Option(5, min=1, help="Timed repeats per case (median reported)."),
    qiskit_inputs: int = typer.Option(256, min=1, help="Inputs timed for Qiskit Statevector; the rest extrapolated."),
    aer_inputs: int = typer.Option(2048, min=1, help="Inputs timed for Qiskit Aer; the rest extrapolated."),
    pennylane_cpu_inputs: int = typer.Option(8192, min=1, help="Inputs timed for PennyLane on a CPU."),
    output: Path = typer.Option(Path("results/bench/featuremaps.json"), help="Where to write the JSON."),
) -> None:
    """ZZ feature map states: qra's native engine vs PennyLane default.qubit vs Qiskit, fwd and fwd+bwd."""
    from .bench import add_speedups, bench_featuremaps, write_results

    chosen = _device(device)
    qubit_list, input_list = _parse_ints(qubits, "--qubits"), _parse_ints(inputs, "--inputs")
    caps = {"statevector": qiskit_inputs, "aer": aer_inputs, "pennylane-cpu": pennylane_cpu_inputs}
    console = Console(stderr=True)
    with console.status("benchmarking") as status:
        rows = bench_featuremaps(qubit_list, input_list, chosen, repeats, caps, progress=status.update)
    add_speedups(rows)
    settings = {"qubits": qubit_list, "inputs": input_list, "repeats": repeats, "caps": caps, "reps": 2}
    path = write_results(output, rows, chosen, settings)
    table = Table(title=f"ZZ feature map states on {rows[0]['device'] if rows else chosen}")
    for column in ("impl", "qubits", "inputs", "pass", "ms", "x slower than native", "note"):
        table.add_column(column, justify="right" if column not in ("impl", "note") else "left")
    for row in rows:
        slower = row["x_slower_than_native"]
        note = f"timed {row['measured_inputs']}, extrapolated" if row["extrapolated"] else ""
        table.add_row(row["impl"], str(row["qubits"]), str(row["inputs"]), row["pass"], f"{row['ms']:.2f}",
                      f"{slower:.1f}" if slower else "", note)  # fmt: skip
    Console(width=160).print(table)
    typer.echo(f"wrote {path}")


def main() -> None:
    app()
