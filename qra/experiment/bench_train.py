"""``qra bench train``: AdamW training steps of an encoder, the unpatched baseline against patched variants.

The steps of all variants of one model are timed in alternation: every variant's model is built and warmed up
first, then each round visits every variant, in an order that rotates from round to round.  Host and GPU speed
drift on a shared machine by more than the differences measured (baselines of one model read 20–27 ms in runs
minutes apart, results/bench/README.md), and timing variants one after another let that drift into their
ratios; in alternation it hits all of them alike.  A visit times the step two ways:

* *throughput*: a burst of steps issued back to back, as a training loop issues them (the host issues step
  i + 1 while the GPU runs step i; :func:`qra.experiment.bench.time_steady`).  The host's time to issue a step
  counts only where it is longer than the GPU's work.  This is the step rate a training run gets.
* *latency*: one step with the GPU idle before it and a synchronisation after it (what this benchmark timed
  until round 18): the host's lead before the GPU starts counts in full, and on the H200's host, which takes
  nearly as long to issue a DistilBERT step as the GPU takes to run it (results/bench/host-step-*), so does
  every µs of host time a variant adds.

A variant's ratio to the baseline is the median over rounds of the paired ratio baseline ms / variant ms, with
a distribution-free 95% confidence interval (:func:`qra.experiment.stats.median_interval`), for each.  Peak
memory is each model's own: its weights, optimizer state, gradients and the step's transients, measured during
its warm-up.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..featuremaps import get
from ..featuremaps.fused_program import forced_implementation
from .bench import Case, Row, is_out_of_memory, map_engine_path, time_once, time_steady
from .provenance import device_name
from .stats import median_interval

#: the encoders of ``qra bench train``, random weights in the shapes of the real models
TRAIN_MODELS = ("distilbert", "minilm")
#: variant -> (feature map, its parameters, mode, implementation); None is the unpatched baseline
TRAIN_VARIANTS: dict[str, tuple[str, dict[str, Any], str, str] | None] = {
    "baseline": None,
    "rff-softmax": ("rff", {"m": 128}, "softmax", "auto"),
    "rff-softmax-pytorch": ("rff", {"m": 128}, "softmax", "pytorch"),
    "rff-linear": ("rff", {"m": 128}, "linear", "auto"),
    "rff-linear-pytorch": ("rff", {"m": 128}, "linear", "pytorch"),
    "performer-linear": ("performer", {"m": 128}, "linear", "auto"),
    "performer-linear-pytorch": ("performer", {"m": 128}, "linear", "pytorch"),
    "pennylane-zz-native": ("pennylane-zz", {"qubits": 6, "engine": "native"}, "softmax", "auto"),
    "pennylane-zz-native-pytorch": ("pennylane-zz", {"qubits": 6, "engine": "native"}, "softmax", "pytorch"),
    # the states simulated again in backward instead of kept (CircuitFeatureMap's recompute_states)
    "pennylane-zz-native-recompute": (
        "pennylane-zz",
        {"qubits": 6, "engine": "native", "recompute_states": True},
        "softmax",
        "auto",
    ),
}


#: the feature maps of TRAIN_VARIANTS that simulate circuits (their rows say which engine ran)
CIRCUIT_VARIANT_MAPS = ("pennylane-zz",)


def _circuit_engine_path(model: torch.nn.Module, device: torch.device) -> str | None:
    """``fused`` or ``pytorch``: the engine the patched layers' circuit map takes on this device."""
    from ..featuremaps.circuit import CircuitFeatureMap

    maps = [module for module in model.modules() if isinstance(module, CircuitFeatureMap)]
    return map_engine_path(maps[0], device) if maps else None


def train_step_model(model_name: str, variant: str, layers: int, device: torch.device) -> torch.nn.Module:
    """A DistilBERT-base- or MiniLM-shaped classifier with random weights, patched as ``variant`` says."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    from ..patching import DEFAULT_LAYERS, patch

    torch.manual_seed(0)
    if model_name == "distilbert":
        config = DistilBertConfig(n_layers=layers, num_labels=2, attn_implementation="sdpa")
        model = DistilBertForSequenceClassification(config)
    elif model_name == "minilm":  # sentence-transformers/all-MiniLM-L6-v2's shape: hidden 384, 12 heads of 32
        config = BertConfig(hidden_size=384, num_hidden_layers=layers, num_attention_heads=12, intermediate_size=1536,
                            num_labels=2, attn_implementation="sdpa")  # fmt: skip
        model = BertForSequenceClassification(config)
    else:
        raise ValueError(f"unknown model {model_name!r}; accepted: {', '.join(TRAIN_MODELS)}")
    model = model.to(device)
    head_dim = config.hidden_size // config.num_attention_heads
    if TRAIN_VARIANTS[variant] is not None:
        name, params, mode, implementation = TRAIN_VARIANTS[variant]
        patch(model, get(name, d_in=head_dim, **params).to(device), layers=DEFAULT_LAYERS, mode=mode,
              implementation=implementation)  # fmt: skip
    return model


def train_step(model: torch.nn.Module, device: torch.device, batch: int, length: int) -> Callable[[], None]:
    """One AdamW step of ``model`` on a fixed random batch (bf16 autocast on GPU): what ``qra bench train`` times."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    input_ids = torch.randint(1000, 30000, (batch, length), device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()

    return step


#: steps in a visit's back-to-back burst (after one untimed step): enough that the burst's edges are a small part
BURST_STEPS = 5


@dataclass
class StepTimes:
    """One variant's ms a step by round: ``throughput`` from a back-to-back burst, ``latency`` from one step
    synchronised on its own (module docstring)."""

    throughput: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)

    def clear(self) -> None:
        self.throughput.clear()
        self.latency.clear()


def time_interleaved(steps: dict[str, Callable[[], None]], rounds: int, device: torch.device,
                     burst: int = BURST_STEPS) -> dict[str, StepTimes]:  # fmt: skip
    """Each step's :class:`StepTimes` over ``rounds`` rounds; round r visits the steps in their order rotated by r,
    and a visit times one synchronised step, then a burst of ``burst`` steps back to back.

    A step that runs out of memory is dropped: its times come back empty (its rounds would not pair with the
    others'), and the rest go on."""
    times = {name: StepTimes() for name in steps}
    running = list(steps)
    for number in range(rounds):
        shift = number % len(running) if running else 0
        for name in running[shift:] + running[:shift]:
            try:
                latency = time_once(steps[name], device)
                times[name].throughput.append(time_steady(steps[name], device, burst))
                times[name].latency.append(latency)
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
                times[name].clear()
                running.remove(name)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return times


@dataclass
class _Contender:
    """One variant's model, warmed up, with its step, its own peak memory (None on the CPU, or after OOM) and its
    :class:`StepTimes` (empty when it ran out of memory)."""

    variant: str
    model: torch.nn.Module | None
    step: Callable[[], None] | None
    peak_bytes: int | None
    times: StepTimes = field(default_factory=StepTimes)

    @property
    def oom(self) -> bool:
        return not self.times.throughput


def _prepare(model_name: str, variant: str, device: torch.device, batch: int, length: int, layers: int,
             warmup: int) -> _Contender:  # fmt: skip
    """Build ``variant``'s model and warm its step up; its peak memory is what it adds to what was allocated
    before (the other variants' models sit idle meanwhile, so this is its footprint alone)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        model = train_step_model(model_name, variant, layers, device)
        step = _in_its_implementation(train_step(model, device, batch, length), variant)
        for _ in range(warmup):
            step()
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        if cuda:
            torch.cuda.empty_cache()
        return _Contender(variant, None, None, None)
    peak = torch.cuda.max_memory_allocated(device) - before if cuda else None
    return _Contender(variant, model, step, peak)


def _in_its_implementation(step: Callable[[], None], variant: str) -> Callable[[], None]:
    """A ``-pytorch`` variant runs PyTorch code throughout: the attention's PyTorch path and the circuits'
    PyTorch engine; the others as their settings say."""
    if not variant.endswith("-pytorch"):
        return step

    def pinned() -> None:
        with forced_implementation("pytorch"):
            step()

    return pinned


def train_cases(
    device: torch.device,
    batch: int = 32,
    length: int = 512,
    layers: int = 6,
    variants: tuple[str, ...] = tuple(TRAIN_VARIANTS),
    models: tuple[str, ...] = TRAIN_MODELS,
    rounds: int = 20,
    warmup: int = 3,
    burst: int = BURST_STEPS,
) -> list[Case]:
    """One case per model shape: the baseline (always, for the ratios) and ``variants``, patched in L4, L5,
    timed in alternation for ``rounds`` rounds after ``warmup`` steps each (bf16 autocast on a GPU), with bursts
    of ``burst`` steps for the throughput."""
    contenders = ("baseline", *(variant for variant in variants if variant != "baseline"))

    def case(model_name: str) -> Case:
        return Case(
            f"train steps {model_name}: {', '.join(contenders)}",
            lambda: _interleaved_rows(model_name, contenders, device, batch, length, layers, rounds, warmup, burst),
        )

    return [case(model_name) for model_name in models]


def _interleaved_rows(model_name: str, variants: Sequence[str], device: torch.device, batch: int, length: int,
                      layers: int, rounds: int, warmup: int, burst: int) -> list[Row]:  # fmt: skip
    contenders = [_prepare(model_name, variant, device, batch, length, layers, warmup) for variant in variants]
    steps = {c.variant: c.step for c in contenders if c.step is not None}
    for name, times in time_interleaved(steps, rounds, device, burst).items():
        next(c for c in contenders if c.variant == name).times = times
    return [_train_row(model_name, c, contenders[0], device, batch, length, layers) for c in contenders]


def _train_row(model_name: str, contender: _Contender, baseline: _Contender, device: torch.device, batch: int,
               length: int, layers: int) -> Row:  # fmt: skip
    row: Row = {"model": model_name, "variant": contender.variant, "B": batch, "N": length, "layers": layers,
                "device": device_name(device), "torch": torch.__version__,
                "rounds": len(contender.times.throughput)}  # fmt: skip
    if contender.oom:
        row |= {"step_ms": None, "samples_per_second": None, "latency_ms": None, "peak_bytes": None, "oom": True}
    else:
        step_ms, latency_ms = (statistics.median(t) for t in (contender.times.throughput, contender.times.latency))
        row |= {"step_ms": step_ms, "samples_per_second": batch / step_ms * 1000, "latency_ms": latency_ms,
                "peak_bytes": contender.peak_bytes}  # fmt: skip
    row |= _ratios(contender, baseline)
    if contender.model is not None:
        paths = sorted({m.last_path for m in contender.model.modules() if getattr(m, "last_path", None)})
        row["attention_path"] = ",".join(paths) or None
    spec = TRAIN_VARIANTS[contender.variant]
    if contender.model is not None and spec is not None and spec[0] in CIRCUIT_VARIANT_MAPS:
        pytorch_only = contender.variant.endswith("-pytorch")
        row["engine_path"] = "pytorch" if pytorch_only else _circuit_engine_path(contender.model, device)
    return row


def _ratios(contender: _Contender, baseline: _Contender) -> dict[str, Any]:
    """Throughput and latency over the baseline's (baseline ms / variant ms), paired by round (median, 95%
    interval), and peak memory over its."""
    ratios: dict[str, Any] = {}
    for kind in ("throughput", "latency"):
        interval = None
        if not (contender.oom or baseline.oom):
            pairs = zip(getattr(baseline.times, kind), getattr(contender.times, kind), strict=True)
            interval = median_interval([b / c for b, c in pairs])
        ratios[f"{kind}_vs_baseline"] = interval.median if interval else None
        ratios[f"{kind}_vs_baseline_ci95"] = (
            [interval.low, interval.high] if interval and interval.low is not None else None
        )
    memory = contender.peak_bytes and baseline.peak_bytes
    ratios["memory_vs_baseline"] = contender.peak_bytes / baseline.peak_bytes if memory else None
    return ratios
