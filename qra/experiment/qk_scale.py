"""How far apart a layer's queries and keys are: the scale an RBF bandwidth σ must be compared with.

An RBF kernel exp(−‖q−k‖²/2σ²) with σ far below the typical ‖q−k‖ is ~0 for every pair, and
softmax over ~0 is uniform attention; far above it, every pair scores ~1.  This measures the
distances ‖q_i − k_j‖ over real tokens of real reviews in each layer of the unpatched model.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..patching import attention_modules, register_attention, stock_attention_function

RECORDER = "qra_record_sdpa"


def _recording_attention(module, query, key, value, attention_mask, **kwargs):
    module._qra_recorded = (query.detach(), key.detach())
    return stock_attention_function("sdpa", module)(module, query, key, value, attention_mask, **kwargs)


@contextmanager
def recording_queries_and_keys(model: PreTrainedModel):
    """While active, each attention module keeps its last (q, k) ``[B, H, N, d]`` as ``_qra_recorded``."""
    register_attention(RECORDER, _recording_attention, "sdpa")
    previous = model.config._attn_implementation
    model.set_attn_implementation(RECORDER)
    try:
        yield attention_modules(model)
    finally:
        model.set_attn_implementation(previous)
        for module in attention_modules(model):
            module.__dict__.pop("_qra_recorded", None)


@torch.inference_mode()
def query_key_distances(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int = 512,
    batch_size: int = 8,
    max_pairs_per_layer: int = 2_000_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Quantiles of ‖q_i − k_j‖ per layer (all heads, real tokens), and the median as a σ suggestion."""
    model.eval()
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    samples: dict[int, list[np.ndarray]] = {}
    with recording_queries_and_keys(model) as modules:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start : start + batch_size]), truncation=True, max_length=max_length,
                              padding=True, return_tensors="pt").to(device)  # fmt: skip
            model(**batch)
            keep = batch["attention_mask"].bool()
            for layer, module in enumerate(modules):
                query, key = module._qra_recorded
                distances = torch.cdist(query.float(), key.float())  # [B, H, N, N]
                real = (keep[:, None, :, None] & keep[:, None, None, :]).expand_as(distances)
                values = distances[real].cpu().numpy()
                budget = max_pairs_per_layer // max(1, len(texts) // batch_size)
                if len(values) > budget:
                    values = rng.choice(values, size=budget, replace=False)
                samples.setdefault(layer, []).append(values)
    quantiles = (0.05, 0.25, 0.5, 0.75, 0.95)
    layers = []
    for layer in sorted(samples):
        values = np.concatenate(samples[layer])
        q = np.quantile(values, quantiles)
        layers.append({"layer": layer, "pairs": len(values), "mean": float(values.mean()),
                       **{f"q{int(p * 100):02d}": float(v) for p, v in zip(quantiles, q, strict=True)}})  # fmt: skip
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    return {"texts": len(texts), "max_length": max_length, "head_dim": head_dim, "layers": layers}


@contextmanager
def recording_kernel_inputs(model: PreTrainedModel):
    """While active, the patched layers' inputs are recorded: yields ``{layer: KernelAttention}`` and a dict that
    each forward pass fills with ``{layer: (q, k, key_padding_mask)}`` (detached; q, k ``[B, H, N, d]``)."""
    from ..attention import KernelAttention
    from ..patching import KERNEL_ATTENTION_ATTRIBUTE

    modules = enumerate(attention_modules(model))
    kernels = {layer: getattr(module, KERNEL_ATTENTION_ATTRIBUTE) for layer, module in modules
               if isinstance(getattr(module, KERNEL_ATTENTION_ATTRIBUTE, None), KernelAttention)}  # fmt: skip
    if not kernels:
        raise ValueError("the model runs no kernel attention (not patched): there are no kernel inputs to record")
    recorded: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    def recorder(layer: int):
        def hook(module, args, kwargs):
            q, k = args[0], args[1]
            mask = kwargs.get("key_padding_mask", args[3] if len(args) > 3 else None)
            recorded[layer] = (q.detach(), k.detach(), None if mask is None else mask.detach())

        return hook

    handles = [kernel.register_forward_pre_hook(recorder(layer), with_kwargs=True) for layer, kernel in kernels.items()]
    try:
        yield kernels, recorded
    finally:
        for handle in handles:
            handle.remove()


def record_layer_inputs(model: PreTrainedModel, batches: Sequence[dict[str, torch.Tensor]], layer: int) -> list[tuple]:
    """The (q, k, key_padding_mask) of patched ``layer`` for each batch, with the model as it is (dropout off)."""
    found = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recording_kernel_inputs(model) as (_, recorded):
            for batch in batches:
                model(**batch)
                found.append(recorded[layer])
    finally:
        model.train(was_training)
    return found
