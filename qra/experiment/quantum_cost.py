"""What running a quantum feature map's attention on a QPU would cost.

A QPU does not return |⟨ψ(x)|ψ(y)⟩|²: it runs the compute–uncompute circuit U(y)†U(x)|0⟩ and
reports how often all qubits read 0.  Attention needs one such kernel value per (query, key)
pair, head, sequence and patched layer.  With ``shots`` repetitions the estimate F̂ has variance
F(1−F)/shots, at most 1/(4·shots) (F = 1/2); a standard error ε therefore needs
shots = ⌈1 / (4ε²)⌉ per kernel value in the worst case.

Projected quantum features (``features="projected"``) need no circuit per pair: each query and key
vector is measured in three bases (X, Y, Z on every qubit at once), 3·2N circuits per head and layer
for N tokens (N queries and N keys), and each expectation ⟨P⟩ = 2p − 1 has variance (1 − ⟨P⟩²)/shots,
at most 1/shots: ⌈1/ε²⌉ shots per circuit.  With ``backend`` (e.g. ``fake_torino``) both circuits are
also transpiled to that device's target — layout, routing, its gates — and their depth, two-qubit
gates and estimated fidelity Π(1 − error) over gates and readouts (the target's reported error rates)
are given next to the logical counts.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import AutoConfig

from ..featuremaps import get
from ..featuremaps.circuit import CircuitFeatureMap
from .models import resolve_model


def shots_for_precision(epsilon: float, kernel: str = "fidelity") -> int:
    """Shots per circuit so that the standard error is at most ``epsilon`` for any value: ⌈1/(4ε²)⌉ for a
    fidelity (a frequency), ⌈1/ε²⌉ for a projected feature (a ±1 mean, twice the range)."""
    if not 0 < epsilon < 0.5:
        raise ValueError(f"--epsilon is a standard error in (0, 0.5), got {epsilon}")
    return math.ceil((1.0 if kernel == "projected" else 0.25) / epsilon**2)


def circuits_per_head_and_layer(sequence_length: int) -> dict[str, int]:
    """Circuits per sequence, head and layer: N² compute–uncompute pairs, or 3 bases × (N queries + N keys)."""
    return {"fidelity": sequence_length**2, "projected": 3 * 2 * sequence_length}


def hardware_cost(fm: CircuitFeatureMap, backend: str, optimization_level: int = 1) -> dict[str, Any]:
    """The map's circuits transpiled to a device (through the Qiskit backend, qra-qiskit): see the module doc."""
    try:
        from qra_qiskit import hardware
    except ImportError as error:
        raise ValueError("--backend transpiles with Qiskit: install the qra-qiskit backend "
                         "(pip install -e backends/qiskit)") from error  # fmt: skip
    circuit = getattr(fm, "circuit", None)
    if circuit is None:  # not a Qiskit map: its engine gates, as a Qiskit circuit
        circuit = hardware.circuit_from_gates(fm.gates(torch.rand(1, fm.num_angles, dtype=torch.float64)), fm.qubits)
    return hardware.hardware_resources(circuit, backend, optimization_level)


def quantum_cost(
    model: str,
    featuremap: str,
    featuremap_params: dict[str, Any],
    layers: list[int],
    sequence_length: int,
    batch_size: int,
    epsilon: float,
    shot_rate: float,
    backend: str | None = None,
    optimization_level: int = 1,
) -> dict[str, Any]:
    """Circuits, shots and QPU time of one forward pass with ``featuremap`` attention in ``layers``.

    The map's own kernel decides the headline figures (``kernel``: ``fidelity`` or ``projected``);
    ``circuits_per_review`` gives both kinds.  ``backend``: also the circuits transpiled to that device.
    """
    config = AutoConfig.from_pretrained(resolve_model(model))
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    if max(layers) >= config.num_hidden_layers:
        raise ValueError(f"layer {max(layers)} is out of range: the model has {config.num_hidden_layers} layers")
    fm = get(featuremap, d_in=head_dim, **featuremap_params)
    if not isinstance(fm, CircuitFeatureMap):
        raise ValueError(f"{featuremap!r} is not a quantum circuit map: it needs no QPU")
    if shot_rate <= 0:
        raise ValueError(f"--shot-rate is shots per second on the QPU, > 0; got {shot_rate}")
    kernel = "projected" if getattr(fm, "projected", False) else "fidelity"
    per_head = circuits_per_head_and_layer(sequence_length)
    kernel_values_per_layer = batch_size * heads * sequence_length**2
    circuits = batch_size * heads * per_head[kernel] * len(layers)
    shots = shots_for_precision(epsilon, kernel)
    total_shots = circuits * shots
    result = {
        "model": model,
        "featuremap": featuremap,
        "featuremap_params": fm.featuremap_params,
        "layers": layers,
        "heads": heads,
        "sequence_length": sequence_length,
        "batch_size": batch_size,
        "kernel": kernel,
        "kernel_values_per_layer": kernel_values_per_layer,
        "circuits_per_head_and_layer": per_head,
        "circuits_per_review": {kind: heads * count * len(layers) for kind, count in per_head.items()},
        "circuits_per_forward": circuits,
        "epsilon": epsilon,
        "shots_per_circuit": shots,
        "shots_per_kernel_value": shots,
        "total_shots": total_shots,
        "shot_rate_per_second": shot_rate,
        "qpu_seconds": total_shots / shot_rate,
        "circuit": fm.resources(),
    }
    if backend is not None:
        result["hardware"] = hardware_cost(fm, backend, optimization_level)
    return result
