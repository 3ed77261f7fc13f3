"""The ``qra`` command line: a thin layer over the library (``qra``) and the application (``qra.experiment``).

``qra train``'s options are generated from :class:`~qra.experiment.config.TrainConfig`; the other
commands parse their options and call one function of the application each.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import featuremaps
from .experiment.config import TrainConfig, parse_featuremap_params, parse_floats, parse_ints
from .experiment.models import DEFAULT_MODEL
from .experiment.provenance import device_name as device_label
from .experiment.runs import RunDirectory
from .patching import DEFAULT_LAYERS

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
    # rich fits the table to the terminal's width (80 columns where it cannot tell), wrapping long cells
    table.add_column("name", overflow="fold", no_wrap=False, min_width=10)
    table.add_column("distribution", overflow="fold", min_width=10)
    table.add_column("summary", overflow="fold", ratio=2)
    table.add_column("status", overflow="fold", ratio=1)
    for key, info in listing.items():
        status = "ok" if info.status == "ok" else f"[red]error[/red]: {escape(str(info.error))}"
        table.add_row(escape(key), escape(f"{info.distribution} {info.version}"), escape(info.summary), status)
    Console().print(table)


def _fail(error: Exception) -> typer.Exit:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
    return typer.Exit(code=2)


USER_ERRORS = (ValueError, TypeError, KeyError, OSError)


def _train_options() -> list[inspect.Parameter]:
    """One ``qra train`` option per :class:`TrainConfig` field: its name, type, default and help, written once there."""
    hints = typing.get_type_hints(TrainConfig)
    options = []
    for config_field in dataclasses.fields(TrainConfig):
        cli = config_field.metadata.get("cli")
        factory = config_field.default_factory
        default = factory() if factory is not dataclasses.MISSING else config_field.default
        declarations = [cli.flag] if cli and cli.flag else []
        bounds = {} if config_field.metadata.get("minimum") is None else {"min": config_field.metadata["minimum"]}
        option = typer.Option(cli.show(default) if cli else default, *declarations,
                              help=config_field.metadata.get("help"), **bounds)  # fmt: skip
        annotation = cli.type if cli else hints[config_field.name]
        options.append(inspect.Parameter(config_field.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                         annotation=annotation))  # fmt: skip
    return options


#: options of ``qra train`` that are not settings of the run
_TRAIN_COMMAND_OPTIONS = [
    inspect.Parameter("m", inspect.Parameter.KEYWORD_ONLY, annotation=int | None,
                      default=typer.Option(None, help="Shorthand for --fm m=M (rff/performer features).")),
    inspect.Parameter("sigma", inspect.Parameter.KEYWORD_ONLY, annotation=float | None,
                      default=typer.Option(None, help="Shorthand for --fm sigma=S (rff bandwidth).")),
    inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, help="Continue an interrupted run from its last checkpoint.")),
]  # fmt: skip


def config_from_options(options: dict[str, Any]) -> TrainConfig:
    """The run's settings from ``qra train``'s options (the field parsers turn option text into values)."""
    values = {}
    for config_field in dataclasses.fields(TrainConfig):
        cli = config_field.metadata.get("cli")
        value = options[config_field.name]
        values[config_field.name] = cli.parse(value) if cli else value
    shorthands = {name: options.get(name) for name in ("m", "sigma")}
    values["featuremap_params"] |= {name: value for name, value in shorthands.items() if value is not None}
    return TrainConfig(**values)


def train_command(**options: Any) -> None:
    """Fine-tune an encoder with kernel attention in chosen layers (or the baseline), then measure it."""
    from .experiment.distributed import is_main_process
    from .experiment.evaluation import evaluate_robustness
    from .experiment.robustness import RobustnessError
    from .experiment.training import TrainingInterrupted, train

    try:
        config = config_from_options(options)
        if not config.is_baseline:
            featuremaps.registry.feature_map_class(config.featuremap)  # unknown names fail before any loading
        run_dir = train(config, resume=options["resume"])
        if config.robustness and is_main_process():
            evaluate_robustness(run_dir, config.robustness, device=config.device)
    except TrainingInterrupted as stopped:
        Console(stderr=True, soft_wrap=True).print(f"[yellow]stopped:[/yellow] {escape(str(stopped))}", highlight=False)
        raise typer.Exit(code=128 + stopped.signum) from None  # the shell's code for "ended by this signal"
    except (*USER_ERRORS, RobustnessError) as error:
        raise _fail(error) from error
    if is_main_process():  # under torchrun only rank 0 wrote (and prints) the results
        _print_metrics(run_dir)


train_command.__signature__ = inspect.Signature(_train_options() + _TRAIN_COMMAND_OPTIONS)  # type: ignore[attr-defined]
train_command.__annotations__ = {p.name: p.annotation for p in train_command.__signature__.parameters.values()}
app.command("train")(train_command)


@app.command("eval")
def eval_command(
    run_dir: Path = typer.Argument(..., help="A finished run directory (from qra train)."),
    robustness: list[str] = typer.Option([], help="e.g. word-dropout=0.1,0.2 or synonym-swap=0.1 (repeatable)."),
    shots: str = typer.Option("", help="Quantum maps: evaluate with kernels sampled from N shots, e.g. 64,256,1024."),
    depolarizing: str = typer.Option("", help="Quantum maps: global depolarizing strengths, e.g. 0.01,0.05."),
    readout: str = typer.Option("", help="Quantum maps: readout error probabilities, e.g. 0.01,0.03."),
    engine: str | None = typer.Option(None, help="Quantum maps: run the circuits on this engine with --shots: "
                                      "sampler (Qiskit maps: a SamplerV2) or framework (a PennyLane device)."),
    backend: str | None = typer.Option(None, help="With --engine: sampler: aer (noiseless) or fake_<device>, e.g. "
                                       "fake_torino (its noise and target); framework: a PennyLane device name."),
    max_eval_samples: int = typer.Option(32, min=1, help="With --engine: evaluate the first N test reviews, one at "
                                         "a time, each recorded: a rerun resumes at the next review."),
    optimization_level: int = typer.Option(1, min=0, max=3, help="With --engine sampler: Qiskit's transpiler level."),
    device: str | None = typer.Option(None, help="auto, cpu or cuda (default: the run's)."),
) -> None:
    """Evaluate a trained run again: perturbed texts, or sampled/noisy quantum kernels; into its metrics.json."""
    from .experiment.evaluation import evaluate_backend, evaluate_quantum, evaluate_robustness
    from .experiment.robustness import RobustnessError, parse_settings

    if backend is not None and engine is None:
        raise typer.BadParameter("--backend names the --engine's backend: give --engine sampler or framework too")
    if engine is not None and (not shots or depolarizing or readout):
        raise typer.BadParameter(f"--engine {engine} runs circuits with --shots N (e.g. --shots 1024); "
                                 "--depolarizing and --readout are qra's noise model, not the backend's")  # fmt: skip
    try:
        settings = parse_settings(robustness)
        if engine is not None:
            evaluate_backend(run_dir, engine, backend, _parse_ints(shots, "--shots"), max_eval_samples,
                             optimization_level, device=device)  # fmt: skip
            if settings:
                evaluate_robustness(run_dir, settings, device=device)
            _print_metrics(run_dir)
            return
        if settings or not (shots or depolarizing or readout):
            evaluate_robustness(run_dir, settings, device=device)
        if shots or depolarizing or readout:
            evaluate_quantum(run_dir, _parse_ints(shots, "--shots") if shots else [],
                             _parse_floats(depolarizing, "--depolarizing"), _parse_floats(readout, "--readout"),
                             device=device)  # fmt: skip
    except (*USER_ERRORS, RobustnessError) as error:
        raise _fail(error) from error
    _print_metrics(run_dir)


def _parse_floats(text: str, option: str) -> list[float]:
    try:
        return parse_floats(text, option)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _print_metrics(run_dir: Path) -> None:
    from .experiment.evaluation import QUANTUM_KNOBS

    metrics = RunDirectory(run_dir).metrics()
    table = Table(title=f"{run_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("accuracy", "f1", "train_samples_per_second", "eval_samples_per_second", "peak_gpu_memory_bytes"):
        if metrics.get(key) is not None:
            table.add_row(key, f"{metrics[key]:.4g}")
    for result in metrics.get("quantum", []):
        knobs = ", ".join(f"{k}={result[k]}" for k in QUANTUM_KNOBS if result[k])
        table.add_row(escape(f"accuracy [{knobs or 'exact kernel'}]"), f"{result['accuracy']:.4g}")
    for result in metrics.get("quantum_backends", []):
        where = f"{result['engine']} {result['backend'] or ''}".strip()
        table.add_row(escape(f"accuracy [{where}, shots={result['shots']}, {result['samples']} reviews]"),
                      f"{result['accuracy']:.4g} (exact kernel {result['exact']['accuracy']:.4g})")  # fmt: skip
    for setting, result in metrics.get("robustness", {}).items():
        if setting != "clean":
            table.add_row(
                escape(f"accuracy [{setting}]"), f"{result['accuracy']:.4g} (drop {result['accuracy_drop']:+.4f})"
            )
    Console().print(table)


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories, or folders holding them."),
    out: Path = typer.Option(Path("runs") / "report", help="Where summary.json, README.md and the plots go."),
    overwrite: bool = typer.Option(False, help="Replace a report already in --out (a NOTES.md there is kept)."),
) -> None:
    """Group runs across seeds; write summary.json, a README table and plots."""
    from .experiment.report import write_report

    try:
        if (out / "summary.json").exists() and not overwrite:
            raise FileExistsError(f"{out} already holds a report (summary.json); pass --overwrite to replace it")
        path = write_report(run_dirs, out)
    except USER_ERRORS as error:
        raise _fail(error) from error
    typer.echo(f"wrote {path}/summary.json, README.md and plots")


@app.command("setup-wordnet")
def setup_wordnet_command(
    source: Path = typer.Option(Path("/usr/share/wordnet"), help="A WordNet 3.0 dict folder (Debian's wordnet-base "
                                "and wordnet-sense-index install it here)."),
    data_dir: Path | None = typer.Option(None, help="NLTK data folder to build corpora/wordnet in "
                                         "(default: the first of $NLTK_DATA, else ~/nltk_data)."),
) -> None:
    """Build NLTK's WordNet corpus (for synonym swaps) offline, from Debian's WordNet packages."""
    from .experiment.wordnet import build_nltk_wordnet, default_nltk_data_dir, is_on_nltk_path

    chosen = data_dir if data_dir is not None else default_nltk_data_dir()
    try:
        target = build_nltk_wordnet(source, chosen)
    except USER_ERRORS as error:
        raise _fail(error) from error
    typer.echo(f"built NLTK's WordNet in {target}")
    if not is_on_nltk_path(chosen):
        typer.echo(f"NLTK does not search {chosen}: export NLTK_DATA={chosen}")


@app.command("quantum-cost")
def quantum_cost_command(
    featuremap: str = typer.Option("qiskit-zz", help="A quantum circuit map (`qra featuremaps`)."),
    fm: list[str] = typer.Option([], "--fm", help="Feature-map parameter KEY=VALUE (repeatable), e.g. qubits=6."),
    model: str = typer.Option(DEFAULT_MODEL, help="Model id or directory (only its config is read)."),
    layers: str = typer.Option(",".join(map(str, DEFAULT_LAYERS)), help="Patched layers."),
    seq_len: int = typer.Option(512, min=1, help="Sequence length N."),
    batch_size: int = typer.Option(1, min=1, help="Sequences per forward pass."),
    epsilon: float = typer.Option(0.01, help="Target standard error of each kernel value."),
    shot_rate: float = typer.Option(1e5, help="QPU shots per second."),
    backend: str | None = typer.Option(None, help="Also transpile the circuits to this device's target, e.g. "
                                       "fake_torino: depth, two-qubit gates, estimated fidelity."),
    optimization_level: int = typer.Option(1, min=0, max=3, help="With --backend: Qiskit's transpiler level."),
    output: Path | None = typer.Option(None, help="Also write the result as JSON here."),
) -> None:
    """Circuits, shots and QPU time of one forward pass with quantum-kernel attention."""
    from .experiment.provenance import write_json_atomic
    from .experiment.quantum_cost import quantum_cost

    try:
        result = quantum_cost(model, featuremap, parse_featuremap_params(fm),
                              _parse_ints(layers, "--layers", minimum=0), seq_len, batch_size, epsilon,
                              shot_rate, backend, optimization_level)  # fmt: skip
    except USER_ERRORS as error:
        raise _fail(error) from error
    circuit = result["circuit"]
    table = Table(title=f"QPU cost of one forward pass: {featuremap} in layers {layers} of {model}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("qubits / circuit depth", f"{circuit['qubits']} / {circuit['depth']}"),
        ("two-qubit gates per circuit", f"{circuit['two_qubit_gates']} ({circuit['basis']})"),
        ("kernel values per layer (B·H·N²)", f"{result['kernel_values_per_layer']:,}"),
        ("circuits per review, fidelity kernel (N² per head and layer)",
         f"{result['circuits_per_review']['fidelity']:,}"),
        ("circuits per review, projected features (3 bases × 2N per head and layer)",
         f"{result['circuits_per_review']['projected']:,}"),
        (f"circuits per forward pass ({result['kernel']})", f"{result['circuits_per_forward']:,}"),
        (f"shots per circuit (ε = {epsilon:g})", f"{result['shots_per_circuit']:,}"),
        ("total shots", f"{result['total_shots']:,}"),
        (f"QPU time at {shot_rate:g} shots/s", _duration(result["qpu_seconds"])),
    ]
    hardware = result.get("hardware")
    for kind in ("fidelity", "projected") if hardware else ():
        found = hardware[f"{kind}_circuit"]
        rows.append((f"{kind} circuit on {hardware['backend']} (transpiled, level {hardware['optimization_level']}): "
                     "depth / two-qubit gates / estimated fidelity",
                     f"{found['depth']} / {found['two_qubit_gates']} / {found['estimated_fidelity']:.3g}"))  # fmt: skip
    for name, value in rows:
        table.add_row(name, value)
    Console(width=160).print(table)
    if output:
        write_json_atomic(output, result)
        typer.echo(f"wrote {output}")


def _duration(seconds: float) -> str:
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:,.1f} {unit} ({seconds:,.0f} s)"
    return f"{seconds:.3g} s"


bench_app = typer.Typer(
    help="Benchmarks that write JSON with their provenance (default: runs/bench/) and print a table.",
    no_args_is_help=True,
)
#: where benchmarks write unless told: the user's runs folder, never the committed results/
BENCH_DIR = Path("runs") / "bench"
app.add_typer(bench_app, name="bench")


def _parse_ints(text: str, option: str, minimum: int = 1) -> list[int]:
    try:
        return parse_ints(text, option, minimum)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _device(choice: str) -> torch.device:
    from .experiment.models import resolve_device

    try:
        return resolve_device(choice)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _run_bench(title: str, cases: list, finish: Callable[[list[dict]], list[dict]] | None, output: Path,
               device: torch.device, settings: dict, overwrite: bool) -> list[dict]:  # fmt: skip
    """Run benchmark cases with a progress bar (count, elapsed, time left), saving after every case.

    ``finish`` adds the ratios to the rows so far (None: the cases' rows carry their own); the file says
    ``"complete": false`` until the last case is done, so a stopped benchmark keeps what it measured and says it
    is partial.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from .experiment.bench import write_results

    if output.exists() and not overwrite:
        raise _fail(FileExistsError(f"{output} exists; pass --overwrite to replace it, or another --output"))
    rows: list[dict] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
               TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(title, total=len(cases))
        for case in cases:
            progress.update(task, description=case.description)
            rows += case.measure()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            write_results(output, finish(rows) if finish else rows, device, settings, complete=False)
            progress.advance(task)
    write_results(output, finish(rows) if finish else rows, device, settings, complete=True)
    return rows


def _print_table(title: str, columns: dict[str, str], rows: list[dict]) -> None:
    """``columns``: header -> row key; numbers are formatted, missing values shown as ``–``."""
    table = Table(title=title)
    for header in columns:
        table.add_column(header, justify="left" if header in ("impl", "model", "variant", "note", "path") else "right")
    for row in rows:
        table.add_row(*(_cell(row.get(key)) for key in columns.values()))
    Console().print(table)


def _cell(value: Any) -> str:
    """A table cell: floats to 3 significant digits, an interval [low, high] as low–high, missing as ``–``."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "–".join(_cell(v) for v in value)
    return str(value)


@bench_app.command("featuremaps")
def bench_featuremaps_command(
    qubits: str = typer.Option("4,6,8,10,12", help="Comma-separated qubit counts."),
    inputs: str = typer.Option("196608", help="Comma-separated numbers of input vectors."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (Qiskit's simulators and lightning run on the CPU)."),
    repeats: int = typer.Option(5, min=1, help="Timed repeats per case (median reported)."),
    qiskit_inputs: int = typer.Option(256, min=1, help="Inputs timed for Qiskit Statevector; the rest extrapolated."),
    aer_inputs: int = typer.Option(2048, min=1, help="Inputs timed for Qiskit Aer; the rest extrapolated."),
    lightning_inputs: int = typer.Option(256, min=1, help="Inputs timed for PennyLane lightning.qubit."),
    pennylane_cpu_inputs: int = typer.Option(8192, min=1, help="Inputs timed for PennyLane on a CPU."),
    output: Path = typer.Option(BENCH_DIR / "featuremaps.json", help="Where to write the JSON."),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
) -> None:
    """ZZ feature map states: qra's engine vs its earlier engine, PennyLane and Qiskit; fwd and fwd+bwd."""
    from .experiment.bench import FEATUREMAP_LOSS, add_speedups, featuremap_cases

    chosen = _device(device)
    qubit_list, input_list = _parse_ints(qubits, "--qubits"), _parse_ints(inputs, "--inputs")
    caps = {"statevector": qiskit_inputs, "aer": aer_inputs, "pennylane-cpu": pennylane_cpu_inputs,
            "lightning": lightning_inputs}  # fmt: skip
    settings = {"qubits": qubit_list, "inputs": input_list, "repeats": repeats, "caps": caps, "reps": 2,
                "fwd_bwd_loss": FEATUREMAP_LOSS}  # fmt: skip
    rows = _run_bench("featuremaps", featuremap_cases(qubit_list, input_list, chosen, repeats, caps), add_speedups,
                      output, chosen, settings, overwrite)  # fmt: skip
    _print_table(f"ZZ feature map states on {device_label(chosen)}",
                 {"impl": "impl", "qubits": "qubits", "inputs": "inputs", "pass": "pass", "ms": "ms",
                  "x slower than native": "x_slower_than_native", "timed inputs": "measured_inputs"}, rows)  # fmt: skip
    typer.echo(f"wrote {output}")


@bench_app.command("attention")
def bench_attention_command(
    lengths: str = typer.Option("512,2048,8192,32768,65536", help="Sequence lengths N."),
    tokens: int = typer.Option(16384, min=1, help="B·N, fixed across N."),
    heads: int = typer.Option(12, min=1),
    head_dim: int = typer.Option(64, min=1),
    m: int = typer.Option(128, min=1, help="RFF features."),
    qubits: int = typer.Option(6, min=1, max=8, help="Qubits of the fidelity rows' states."),
    compile_paths: bool = typer.Option(True, "--compile/--no-compile", help="Add torch.compile of the PyTorch path."),
    only: str = typer.Option("", help="Comma-separated rows to measure, e.g. sdpa,linear-fused (default: all)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    repeats: int = typer.Option(5, min=1),
    output: Path = typer.Option(BENCH_DIR / "attention.json"),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
) -> None:
    """SDPA (default, flash, cuDNN) vs qra attention (fused, PyTorch, compiled): fwd, fwd+bwd, peak memory."""
    from .experiment.bench import add_sdpa_ratios, attention_cases

    chosen = _device(device)
    dtype = torch.bfloat16 if chosen.type == "cuda" else torch.float32
    length_list = _parse_ints(lengths, "--lengths")
    rows_wanted = [name.strip() for name in only.split(",") if name.strip()]
    try:
        cases = attention_cases(length_list, tokens, heads, head_dim, m, chosen, dtype, repeats, qubits,
                                compile_paths, rows_wanted)  # fmt: skip
    except ValueError as error:
        raise _fail(error) from error
    settings = {"lengths": length_list, "tokens": tokens, "heads": heads, "head_dim": head_dim, "m": m,
                "qubits": qubits, "dtype": str(dtype)}  # fmt: skip
    rows = _run_bench("attention", cases, add_sdpa_ratios, output, chosen, settings, overwrite)
    _print_table(f"attention, B·N={tokens}, H={heads}, d={head_dim}, {device_label(chosen)}",
                 {"impl": "impl", "N": "N", "fwd ms": "fwd_ms", "fwd+bwd ms": "fwd_bwd_ms", "peak bytes": "peak_bytes",
                  "fwd+bwd vs sdpa": "fwd_bwd_vs_sdpa", "GPU fwd+bwd ms": "fwd_bwd_gpu_ms",
                  "GPU vs sdpa": "fwd_bwd_gpu_vs_sdpa"}, rows)  # fmt: skip
    typer.echo(f"wrote {output}")


@bench_app.command("train")
def bench_train_command(
    batch_size: int = typer.Option(32, min=1),
    length: int = typer.Option(512, min=8),
    layers: int = typer.Option(6, min=6, help="Encoder layers (patched: 4 and 5)."),
    models: str = typer.Option("distilbert,minilm", help="Model shapes (random weights): distilbert, minilm."),
    variants: str = typer.Option("", help="Comma-separated variants (default: all; see qra.experiment.bench)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    repeats: int = typer.Option(
        20, min=1, help="Timed rounds; each visits every variant, in rotating order (95% intervals need 6)."
    ),
    burst: int = typer.Option(
        5, min=1, help="Steps issued back to back in a visit's throughput burst (after one synchronised step)."
    ),
    output: Path = typer.Option(BENCH_DIR / "train.json"),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
) -> None:
    """Training steps of DistilBERT-base- and MiniLM-shaped models: baseline vs patched L4, L5, in alternation;
    throughput from steps issued back to back, latency from single synchronised steps."""
    from .experiment.bench_train import TRAIN_MODELS, TRAIN_VARIANTS, train_cases

    chosen = _device(device)
    model_list = [name.strip() for name in models.split(",") if name.strip()]
    variant_list = [name.strip() for name in variants.split(",") if name.strip()] or list(TRAIN_VARIANTS)
    for name, known, option in ((model_list, TRAIN_MODELS, "--models"), (variant_list, TRAIN_VARIANTS, "--variants")):
        if unknown := sorted(set(name) - set(known)):
            raise typer.BadParameter(f"{option}: unknown {', '.join(unknown)}; accepted: {', '.join(known)}")
    cases = train_cases(chosen, batch_size, length, layers, tuple(variant_list), tuple(model_list), repeats,
                        burst=burst)  # fmt: skip
    settings = {"batch_size": batch_size, "length": length, "layers": layers, "bf16": chosen.type == "cuda",
                "timing": "interleaved rounds, paired ratios; throughput: steps back to back, latency: one step "
                "synchronised", "rounds": repeats, "burst": burst}  # fmt: skip
    rows = _run_bench("train", cases, None, output, chosen, settings, overwrite)
    _print_table(f"train step, B={batch_size}, N={length}, {device_label(chosen)}",
                 {"model": "model", "variant": "variant", "path": "attention_path", "step ms": "step_ms",
                  "samples/s": "samples_per_second", "peak bytes": "peak_bytes",
                  "throughput vs baseline": "throughput_vs_baseline", "95% interval": "throughput_vs_baseline_ci95",
                  "latency ms": "latency_ms", "latency vs baseline": "latency_vs_baseline",
                  "memory vs baseline": "memory_vs_baseline"}, rows)  # fmt: skip
    typer.echo(f"wrote {output}")


def main() -> None:
    app()
