"""Choose a circuit map's angle scale from data, so that its fidelity kernel neither vanishes nor saturates.

A q-qubit feature map's fidelities |⟨ψ(x)|ψ(y)⟩|² concentrate near 2^-q when the angles are large, so
every query–key pair scores ~0 and softmax attention over them is uniform; near angle 0 every pair scores
~1.  The bandwidth of a quantum kernel is its angle scale (Shaydulin & Wild, 2022; Canatar et al., 2022).
:func:`calibrate_angle_scale` sets, for each patched layer with a circuit map, the scale s at which the
median fidelity of that layer's real query–key pairs (same review, same head) is ``target`` (0.5 by
default) — the quantum counterpart of comparing an RBF σ with the query–key distances
(:mod:`qra.experiment.qk_scale`).  The search brackets s by doubling or halving from the current scale,
then bisects on log s.  Layers are calibrated in order, each on queries and keys recorded after the earlier
layers got their scales (a layer's inputs depend on them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from .. import patching
from ..featuremaps.circuit import CircuitFeatureMap
from .distillation import Batch
from .qk_scale import record_layer_inputs, recording_kernel_inputs

#: tokens per review whose queries and keys the calibration pairs (seeded choice among the real tokens)
TOKENS_PER_REVIEW = 16
#: doublings or halvings tried to bracket the target before giving up
MAX_BRACKET_STEPS = 40


def current_angle_scale(featuremap: CircuitFeatureMap) -> float:
    """The scale the map applies now (the learned one when ``learn_angle_scale``)."""
    learned = getattr(featuremap, "log_angle_scale", None)
    return float(learned.detach().exp()) if learned is not None else float(featuremap.angle_scale)


def set_angle_scale(featuremap: CircuitFeatureMap, scale: float) -> None:
    """Set the map's angle scale (its parameter when it has one, so that the value is saved with the model)."""
    learned = getattr(featuremap, "log_angle_scale", None)
    if learned is not None:
        with torch.no_grad():
            learned.fill_(math.log(scale))
    else:
        featuremap.angle_scale = float(scale)


def _unscaled_angles(featuremap: CircuitFeatureMap, recorded: list[tuple], seed: int) -> list[tuple]:
    """Per (review): the unscaled angles z of up to TOKENS_PER_REVIEW real tokens' queries and keys ``[H, n, A]``."""
    rng = np.random.default_rng(seed)
    scale = current_angle_scale(featuremap)
    if scale == 0:
        raise ValueError("the circuit map's angle scale is 0: every state is the same; start from a scale > 0")
    groups = []
    with torch.no_grad():
        for q, k, keep in recorded:
            for review in range(q.shape[0]):
                real = torch.arange(q.shape[2]) if keep is None else keep[review].nonzero().flatten().cpu()
                chosen = torch.as_tensor(rng.permutation(real.numpy())[:TOKENS_PER_REVIEW], dtype=torch.long)
                zq = featuremap.angles(q[review][:, chosen.to(q.device)].float()) / scale
                zk = featuremap.angles(k[review][:, chosen.to(k.device)].float()) / scale
                groups.append((zq, zk))
    return groups


def median_fidelity(featuremap: CircuitFeatureMap, groups: list[tuple], scale: float) -> float:
    """The median fidelity |⟨ψ(s·z_q)|ψ(s·z_k)⟩|² over every query–key pair of each group (review × head)."""
    values = []
    with torch.no_grad():
        for zq, zk in groups:
            sq = featuremap.simulate(zq * scale, torch.complex128)
            sk = featuremap.simulate(zk * scale, torch.complex128)
            overlap = sq @ sk.conj().transpose(-1, -2)
            values.append((overlap.real.square() + overlap.imag.square()).flatten().cpu())
    return float(torch.cat(values).median())


def _search(measure, start: float, target: float, iterations: int, tolerance: float) -> tuple[float, float]:
    """The scale where ``measure`` (a fidelity, decreasing in the scale near 0) crosses ``target``: (scale, value)."""
    scale, value = start, measure(start)
    if abs(value - target) <= tolerance:
        return scale, value
    seen = [(scale, value)]
    factor = 2.0 if value > target else 0.5
    for _ in range(MAX_BRACKET_STEPS):
        other = scale * factor
        other_value = measure(other)
        seen.append((other, other_value))
        if (other_value - target) * (value - target) <= 0:
            break
        scale, value = other, other_value
    else:
        trail = ", ".join(f"s={s:.3g}: {v:.3f}" for s, v in seen[:: max(1, len(seen) // 8)])
        raise ValueError(f"could not bracket a median fidelity of {target} between angle scales {seen[0][0]:.3g} and "
                         f"{seen[-1][0]:.3g} ({trail}); the map's states may not depend on its angles")  # fmt: skip
    low, high = sorted([(scale, value), (other, other_value)])  # low scale: high fidelity
    for _ in range(iterations):
        middle = math.sqrt(low[0] * high[0])
        middle_value = measure(middle)
        if abs(middle_value - target) <= tolerance:
            return middle, middle_value
        if middle_value > target:
            low = (middle, middle_value)
        else:
            high = (middle, middle_value)
    return min((low, high), key=lambda pair: abs(pair[1] - target))


def calibrate_angle_scale(
    model: PreTrainedModel,
    batches: Sequence[Batch],
    target: float = 0.5,
    iterations: int = 30,
    tolerance: float = 0.01,
    learn: bool | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Set each patched circuit map's angle scale so that its layer's median query–key fidelity is ``target``.

    ``batches``: a few tokenized training batches on the model's device; the patched layers' queries and keys
    are recorded from them with the model as it is.  ``learn``: afterwards, let the scale train (True) or
    freeze it (False); None leaves ``requires_grad`` as it is.  Maps built without ``learn_angle_scale`` get
    a plain attribute (not saved with the model).  Returns, per layer, the scale and the median fidelity
    before and after.
    """
    if not 0 < target < 1:
        raise ValueError(f"the target median fidelity must lie in (0, 1), got {target!r}")
    if not batches:
        raise ValueError("angle-scale calibration needs at least one batch of training reviews")
    with recording_kernel_inputs(model) as (kernels, _):
        maps = {layer: kernels[layer].featuremap for layer in kernels}
    if not any(isinstance(fm, CircuitFeatureMap) for fm in maps.values()):
        names = sorted({type(fm).__name__ for fm in maps.values()})
        raise ValueError(f"angle-scale calibration is for circuit (quantum) feature maps; this model runs "
                         f"{', '.join(names)}")  # fmt: skip
    layers = {}
    for layer, featuremap in sorted(maps.items()):  # in order: a layer's inputs depend on the earlier layers' scales
        if not isinstance(featuremap, CircuitFeatureMap):
            continue
        groups = _unscaled_angles(featuremap, record_layer_inputs(model, batches, layer), seed)
        start = current_angle_scale(featuremap)
        before = median_fidelity(featuremap, groups, start)
        scale, value = _search(lambda s, fm=featuremap, g=groups: median_fidelity(fm, g, s), start, target,
                               iterations, tolerance)  # fmt: skip
        set_angle_scale(featuremap, scale)
        learned = getattr(featuremap, "log_angle_scale", None)
        if learned is not None and learn is not None:
            learned.requires_grad_(learn)
        layers[str(layer)] = {"angle_scale_before": start, "median_fidelity_before": before, "angle_scale": scale,
                              "median_fidelity": value}  # fmt: skip
    return {"target": target, "batches": len(batches), "layers": layers}


def set_angle_scales_trainable(model: PreTrainedModel, learn: bool) -> None:
    """Let every patched circuit map's learnable angle scale train (``learn``) or freeze it."""
    for module in patching.attention_modules(model):
        kernel = getattr(module, patching.KERNEL_ATTENTION_ATTRIBUTE, None)
        learned = getattr(getattr(kernel, "featuremap", None), "log_angle_scale", None)
        if learned is not None:
            learned.requires_grad_(learn)
