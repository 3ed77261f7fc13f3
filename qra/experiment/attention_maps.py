"""Read every layer's attention maps: qra's own for patched layers, eager attention's for the rest.

SDPA and flash kernels never form the attention matrix, so for metrics the unpatched layers are
switched to eager attention (the same function, computed explicitly) for the duration.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..patching import attention_modules, is_patched, register_implementation
from .metrics import AttentionStatistics, NonFiniteError


@contextmanager
def capture_attention(model: PreTrainedModel) -> Iterator[list[torch.Tensor | None]]:
    """Within the block, each forward pass with ``output_attentions=True`` fills the yielded list with
    every layer's attention weights ``[B, H, N, N]``, in layer order."""
    modules = attention_modules(model)
    captured: list[torch.Tensor | None] = [None] * len(modules)
    previous = model.config._attn_implementation
    model.set_attn_implementation(register_implementation("eager") if is_patched(model) else "eager")

    def hook_for(index: int):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            captured[index] = output[1] if isinstance(output, tuple) and len(output) > 1 else None

        return hook

    handles = [module.register_forward_hook(hook_for(i)) for i, module in enumerate(modules)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
        model.set_attn_implementation(previous)


def attention_subset(texts: Sequence[str], count: int, seed: int) -> list[str]:
    """The fixed, seeded subset of test reviews the attention metrics use, in test-set order."""
    chosen = np.random.default_rng(seed).permutation(len(texts))[:count]
    return [texts[i] for i in sorted(chosen)]


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@torch.inference_mode()
def attention_statistics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Per-layer attention entropy and distance statistics over ``texts`` (see :mod:`qra.metrics`)."""
    device = next(model.parameters()).device
    model.eval()
    statistics = AttentionStatistics(len(attention_modules(model)))
    with capture_attention(model) as captured:
        for start in tqdm(range(0, len(texts), batch_size), desc="attention maps", leave=False):
            batch = tokenizer(list(texts[start : start + batch_size]), truncation=True, max_length=max_length,
                              padding=True, return_tensors="pt").to(device)  # fmt: skip
            with _autocast(device):
                model(**batch, output_attentions=True)
            for layer, weights in enumerate(captured):
                if weights is None:
                    raise RuntimeError(f"layer {layer} returned no attention weights")
                if not torch.isfinite(weights).all():
                    raise NonFiniteError(f"layer {layer}'s attention weights are NaN or infinite")
                statistics.update(layer, weights, batch["attention_mask"])
    return statistics.result()


@torch.inference_mode()
def attention_example(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int = 96
) -> dict[str, Any]:
    """The head-averaged attention map of every layer for one review (first ``max_tokens`` tokens)."""
    device = next(model.parameters()).device
    model.eval()
    batch = tokenizer(text, truncation=True, max_length=max_tokens, return_tensors="pt").to(device)
    with capture_attention(model) as captured, _autocast(device):
        model(**batch, output_attentions=True)
    maps = torch.stack([weights[0].float().mean(0) for weights in captured]).cpu()
    return {"tokens": tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist()), "maps": maps.numpy()}
