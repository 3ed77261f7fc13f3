"""What qra checks and gathers when ``qra train`` runs on several processes (torchrun / accelerate).

The Hugging Face Trainer does the distributed training itself (DDP); these helpers make the
qra-specific guarantees visible: every rank holds the same feature-map draws before training and
the same weights after it, and peak GPU memory is reported for every device.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 of the job (True outside distributed runs); usable before the Trainer exists."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def release() -> None:
    """Tear this rank's process group down; a no-op outside distributed runs.

    Ranks other than 0 finish as soon as the last collective is done, while rank 0 still writes the
    model and measures attention. A rank that exits with its gloo group alive can abort in the group's
    destructor (``terminate called without an active exception``, SIGABRT), and the launcher then
    kills rank 0 mid-write. Torn down explicitly, each rank leaves cleanly; no barrier, so a rank-0
    failure is reported at once instead of after the collective timeout.
    """
    if dist.is_available() and dist.is_initialized():
        from accelerate import PartialState

        PartialState().destroy_process_group()


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A SHA-256 of the tensors' names, dtypes, shapes and bytes (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def kernel_attention_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The feature-map draws and knobs of every patched layer (empty for an unpatched model)."""
    return {name: value for name, value in model.state_dict().items() if ".qra_attention." in name}


def gather(value: Any) -> list[Any]:
    """``value`` from every rank (a one-element list outside distributed runs)."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def identical_across_ranks(tensors: dict[str, torch.Tensor]) -> bool:
    """True when every rank holds bit-identical ``tensors``."""
    return len(set(gather(tensor_digest(tensors)))) == 1


def peak_memory_per_device(device: torch.device) -> list[int] | None:
    """Each rank's peak GPU memory in bytes (None on CPU)."""
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    values = gather(peak)
    return None if any(v is None for v in values) else values
