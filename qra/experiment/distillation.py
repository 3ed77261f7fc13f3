"""Hedgehog's attention distillation: fit the feature maps so that kernel attention mimics softmax attention.

Before fine-tuning, each patched layer's feature map φ is trained so that the layer's kernel attention
weights match the softmax attention softmax(q·kᵀ/√d) the same layer would compute from the same queries
and keys (Zhang et al., ICLR 2024, "The Hedgehog & the Porcupine").  The loss is the soft cross-entropy
−Σ_j A_ij log Â_ij over real keys, averaged over real queries (the KL divergence KL(A‖Â) plus a constant);
only the maps' parameters change, the rest of the model is left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..attention import KernelAttention, kernel_attention
from .qk_scale import recording_kernel_inputs

Batch = dict[str, torch.Tensor]
#: student weights below this are clipped before the log (signed maps such as RFF can give weights <= 0)
LOG_FLOOR = 1e-12


def training_batches(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], count: int, batch_size: int, max_length: int, seed: int,
    device: torch.device | str = "cpu",
) -> list[Batch]:  # fmt: skip
    """``count`` padded batches of ``batch_size`` texts drawn without replacement (seeded; fewer if texts run out)."""
    order = np.random.default_rng(seed).permutation(len(texts))
    batches = []
    for start in range(0, min(len(texts), count * batch_size), batch_size):
        chosen = [texts[i] for i in order[start : start + batch_size]]
        encoded = tokenizer(chosen, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        batches.append({key: value.to(device) for key, value in encoded.items()
                        if key in ("input_ids", "attention_mask")})  # fmt: skip
    return batches


def softmax_attention(q: torch.Tensor, k: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """The layer's own attention softmax(q·kᵀ/√d) ``[B, H, N, N]`` over the real keys (``keep[B, N]``)."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    if keep is not None:
        scores = scores.masked_fill(~keep[:, None, None, :].bool(), float("-inf"))
    return scores.softmax(dim=-1)


def attention_mismatch(kernel: KernelAttention, q: torch.Tensor, k: torch.Tensor,
                       keep: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """KL(softmax attention ‖ kernel attention), averaged over real queries and heads; differentiable in φ."""
    teacher = softmax_attention(q, k, keep)
    values = q.new_zeros(*q.shape[:-1], 1)
    _, student = kernel_attention(q.float(), k.float(), values.float(), kernel.featuremap, kernel.mode, keep,
                                  kernel.beta, return_weights=True, eps=kernel.eps,
                                  implementation="pytorch")  # fmt: skip
    student = student.float().clamp_min(LOG_FLOOR)
    terms = torch.where(teacher > 0, teacher * (teacher.clamp_min(LOG_FLOOR).log() - student.log()),
                        torch.zeros_like(teacher))  # fmt: skip
    per_query = terms.sum(-1)  # [B, H, N]
    if keep is None:
        return per_query.mean()
    real = keep[:, None, :].bool().expand_as(per_query)
    return per_query[real].mean()


def _trainable_map_parameters(kernels: dict[int, KernelAttention]) -> list[torch.nn.Parameter]:
    return [p for kernel in kernels.values() for p in kernel.featuremap.parameters() if p.requires_grad]


def _mismatch(model: PreTrainedModel, batches: Sequence[Batch]) -> dict[int, float]:
    """The mean attention mismatch of each patched layer over ``batches`` (no gradients)."""
    totals: dict[int, float] = {}
    with torch.no_grad(), recording_kernel_inputs(model) as (kernels, recorded):
        for batch in batches:
            model(**batch)
            for layer, (q, k, keep) in recorded.items():
                totals[layer] = totals.get(layer, 0.0) + attention_mismatch(kernels[layer], q, k, keep).item()
    return {layer: total / len(batches) for layer, total in sorted(totals.items())}


def distill_hedgehog(model: PreTrainedModel, batches: Sequence[Batch], steps: int, lr: float = 1e-2) -> dict[str, Any]:
    """Fit every patched layer's feature map for ``steps`` Adam steps so its attention matches softmax attention.

    ``batches`` are tokenized training batches on the model's device (cycled through); each step records
    the patched layers' queries and keys with the model as it is (dropout off) and lowers the sum over
    layers of :func:`attention_mismatch`.  Only the maps' trainable parameters change (Hedgehog's W; any
    map with trainable parameters works).  Returns the mismatch per layer before and after.
    """
    if steps < 1 or not batches:
        raise ValueError(f"distillation needs steps >= 1 and at least one batch; got steps={steps}, "
                         f"{len(batches)} batches")  # fmt: skip
    with recording_kernel_inputs(model) as (kernels, _):
        parameters = _trainable_map_parameters(kernels)
    if not parameters:
        names = sorted({type(kernel.featuremap).__name__ for kernel in kernels.values()})
        raise ValueError(f"attention distillation fits a feature map's trainable parameters, and {', '.join(names)} "
                         "has none: use hedgehog (or e.g. rff with learn_sigma=true)")  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        before = _mismatch(model, batches)
        optimizer = torch.optim.Adam(parameters, lr=lr)
        for step in range(steps):
            with torch.no_grad(), recording_kernel_inputs(model) as (kernels, recorded):
                model(**batches[step % len(batches)])
            optimizer.zero_grad(set_to_none=True)
            loss = sum(attention_mismatch(kernels[layer], q, k, keep) for layer, (q, k, keep) in recorded.items())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"attention distillation: the loss became {loss.item()} at step {step}; "
                                         "lower the distillation learning rate")  # fmt: skip
            loss.backward()
            optimizer.step()
        after = _mismatch(model, batches)
    finally:
        model.train(was_training)
    return {"steps": steps, "lr": lr, "batches": len(batches),
            "mismatch_before": {str(k): v for k, v in before.items()},
            "mismatch_after": {str(k): v for k, v in after.items()}}  # fmt: skip
