"""Choose kernel attention's softmax temperature β from data, so that a patched layer attends as sharply as it did.

`results/protocol` found the attention of every calibrated quantum arm flat (normalised entropy ≥ 0.995).
Calibrating the angle scale puts the median query–key fidelity at 0.5, but fidelities lie in [0, 1], so
softmax(β·f) at β = 1 never weighs one key more than e times another. A learned β did not grow far enough
in 3 epochs at lr 2e-5. Any bounded similarity has the same problem, an RBF kernel's included.

:func:`calibrate_temperature` fixes this for each patched layer in softmax mode. It sets each head's β so
that the head's attention has the same mean normalised entropy (over the real queries of a few training
batches) as the layer's own softmax(q·kᵀ/√d) on the same queries and keys. That is how sharply the
pretrained layer attended. Entropy falls as β grows, unless a row's scores are all equal, so a bisection
on log₂ β finds it. All heads are searched at once, one β vector per trial.

Layers are calibrated in order. A layer's queries and keys are recorded after the earlier layers got
their temperatures, since a layer's inputs depend on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

from ..attention import KernelAttention, kernel_attention
from .distillation import Batch, softmax_attention
from .metrics import row_entropies
from .qk_scale import record_layer_inputs, recording_kernel_inputs

#: the bisection's range of log₂ β: β from 2⁻¹⁰ to 2²⁰ (fidelities and RFF estimates are O(1))
LOG2_BETA_RANGE = (-10.0, 20.0)
#: bisection steps: the range of 30 halved 40 times, far below any difference entropy could show
BISECTION_STEPS = 40


def mean_entropy_per_head(weights: torch.Tensor, keep: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Sum over real queries of each head's normalised row entropy ``[H]``, and the number of real queries."""
    batch, heads, length, _ = weights.shape
    if keep is None:
        keep = torch.ones(batch, length, dtype=torch.bool, device=weights.device)
    keep = keep.bool()
    _, normalized = row_entropies(weights.float(), keep)
    real = keep[:, None, :].expand(batch, heads, length)
    return torch.where(real, normalized, torch.zeros_like(normalized)).sum(dim=(0, 2)), int(keep.sum())


def _entropy(recorded: Sequence[tuple], weights_of) -> torch.Tensor:
    """Mean normalised entropy per head ``[H]`` over every real query of the recorded batches."""
    total, count = None, 0
    for q, k, keep in recorded:
        summed, real = mean_entropy_per_head(weights_of(q, k, keep), keep)
        total = summed if total is None else total + summed
        count += real
    return total / max(count, 1)


def kernel_entropy(kernel: KernelAttention, recorded: Sequence[tuple], beta: torch.Tensor) -> torch.Tensor:
    """Each head's mean normalised entropy ``[H]`` of ``kernel``'s attention at temperatures ``beta[H]``."""

    def weights(q, k, keep):
        values = q.new_zeros(*q.shape[:-1], 1)
        _, attention = kernel_attention(q.float(), k.float(), values.float(), kernel.featuremap, kernel.mode, keep,
                                        beta.to(q.device), return_weights=True, eps=kernel.eps,
                                        implementation="pytorch")  # fmt: skip
        return attention

    with torch.no_grad():
        return _entropy(recorded, weights)


def softmax_entropy(recorded: Sequence[tuple]) -> torch.Tensor:
    """Each head's mean normalised entropy ``[H]`` of the layer's own softmax(q·kᵀ/√d) attention."""
    with torch.no_grad():
        return _entropy(recorded, softmax_attention)


def search_temperature(entropy_at, target: torch.Tensor) -> torch.Tensor:
    """Per head, the β in 2^LOG2_BETA_RANGE whose entropy (``entropy_at(β[H]) -> [H]``) is closest to ``target[H]``.

    Bisection on log₂ β, all heads at once. A head whose attention is still flatter than its target at the
    largest β ends at that β, and one already sharper at the smallest β ends at the smallest.
    """
    low = torch.full_like(target, LOG2_BETA_RANGE[0])
    high = torch.full_like(target, LOG2_BETA_RANGE[1])
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        too_flat = entropy_at(torch.exp2(middle)) > target  # entropy falls as β grows: go higher
        low = torch.where(too_flat, middle, low)
        high = torch.where(too_flat, high, middle)
    return torch.exp2((low + high) / 2)


def calibrate_temperature(
    model: PreTrainedModel, batches: Sequence[Batch], learn: bool | None = None
) -> dict[str, Any]:
    """Set each patched softmax-mode head's β so its attention is as sharp as the layer's own softmax attention.

    ``batches``: a few tokenized training batches on the model's device; the patched layers' queries and
    keys are recorded from them with the model as it is. ``learn``: afterwards, let β train (True) or
    freeze it (False); None leaves ``requires_grad`` as it is. Returns, per layer and head, the target
    entropy, the entropy before and after, and β.
    """
    if not batches:
        raise ValueError("temperature calibration needs at least one batch of training reviews")
    with recording_kernel_inputs(model) as (kernels, _):
        kernels = dict(kernels)
    other_modes = sorted({kernel.mode for kernel in kernels.values() if kernel.mode != "softmax"})
    if other_modes:
        raise ValueError(f"temperature calibration sets softmax mode's β; this model's kernel attention runs mode "
                         f"{', '.join(other_modes)}")  # fmt: skip
    layers = {}
    for layer, kernel in sorted(kernels.items()):  # in order: a layer's inputs depend on the earlier layers' β
        recorded = record_layer_inputs(model, batches, layer)
        target = softmax_entropy(recorded).cpu()
        before_beta = kernel.beta.detach().float().cpu().clone()
        before = kernel_entropy(kernel, recorded, before_beta).cpu()
        beta = search_temperature(lambda b, kn=kernel, r=recorded: kernel_entropy(kn, r, b).cpu(), target)
        with torch.no_grad():
            kernel.beta.copy_(beta.to(kernel.beta.dtype))
        if learn is not None and isinstance(kernel.beta, torch.nn.Parameter):
            kernel.beta.requires_grad_(learn)
        after = kernel_entropy(kernel, recorded, beta).cpu()
        layers[str(layer)] = {"target_entropy": target.tolist(), "entropy_before": before.tolist(),
                              "beta_before": before_beta.tolist(), "beta": beta.tolist(),
                              "entropy": after.tolist()}  # fmt: skip
    return {"batches": len(batches), "layers": layers}
