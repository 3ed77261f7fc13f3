"""What running a quantum feature map's attention on a QPU would cost.

A QPU does not return |⟨ψ(x)|ψ(y)⟩|²: it runs the compute–uncompute circuit U(y)†U(x)|0⟩ and
reports how often all qubits read 0.  Attention needs one such kernel value per (query, key)
pair, head, sequence and patched layer.  With ``shots`` repetitions the estimate F̂ has variance
F(1−F)/shots, at most 1/(4·shots) (F = 1/2); a standard error ε therefore needs
shots = ⌈1 / (4ε²)⌉ per kernel value in the worst case.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import AutoConfig

from ..featuremaps import get
from ..featuremaps.circuit import CircuitFeatureMap
from .models import resolve_model


def shots_for_precision(epsilon: float) -> int:
    """Shots per kernel value so that the binomial standard error is at most ``epsilon`` for any F."""
    if not 0 < epsilon < 0.5:
        raise ValueError(f"--epsilon is a standard error in (0, 0.5), got {epsilon}")
    return math.ceil(0.25 / epsilon**2)


def quantum_cost(
    model: str,
    featuremap: str,
    featuremap_params: dict[str, Any],
    layers: list[int],
    sequence_length: int,
    batch_size: int,
    epsilon: float,
    shot_rate: float,
) -> dict[str, Any]:
    """Circuits, shots and QPU time of one forward pass with ``featuremap`` attention in ``layers``."""
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
    kernel_values_per_layer = batch_size * heads * sequence_length**2
    circuits = kernel_values_per_layer * len(layers)
    shots = shots_for_precision(epsilon)
    total_shots = circuits * shots
    return {
        "model": model,
        "featuremap": featuremap,
        "featuremap_params": fm.featuremap_params,
        "layers": layers,
        "heads": heads,
        "sequence_length": sequence_length,
        "batch_size": batch_size,
        "kernel_values_per_layer": kernel_values_per_layer,
        "circuits_per_forward": circuits,
        "epsilon": epsilon,
        "shots_per_kernel_value": shots,
        "total_shots": total_shots,
        "shot_rate_per_second": shot_rate,
        "qpu_seconds": total_shots / shot_rate,
        "circuit": fm.resources(),
    }
