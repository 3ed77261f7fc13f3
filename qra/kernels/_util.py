"""Small helpers shared by the Triton kernels' launchers: host-side arithmetic, grids, masks, options."""

from __future__ import annotations

import functools

import torch


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ in plain Python: ``triton.cdiv`` is a constexpr function, several µs a call on the host."""
    return -(-a // b)


def pow2(n: int, floor: int = 16) -> int:
    """The next power of two ≥ n, at least ``floor`` (plain Python, as :func:`cdiv`)."""
    return max(floor, 1 << (int(n) - 1).bit_length() if n > 1 else 1)


@functools.lru_cache(maxsize=8)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: few programs, each looping
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def splits(n: int, block: int, groups: int, device: torch.device, per_sm: int = 2) -> tuple[int, int]:
    """(programs per group, blocks per program) so that groups·programs fills the GPU about per_sm times."""
    blocks = cdiv(max(n, 1), block)
    want = min(blocks, max(1, cdiv(per_sm * sm_count(device), groups)))
    per_program = cdiv(blocks, want)
    return cdiv(blocks, per_program), per_program


def mask_bytes(key_padding_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """The [B, Nk] mask as uint8 (1 = real key), read in place when it already is a bool tensor."""
    if key_padding_mask is None:
        return None
    mask = key_padding_mask.to(device=device, dtype=torch.bool)
    if mask.stride(-1) != 1:
        mask = mask.contiguous()
    return mask.view(torch.uint8)


def mask_arguments(mask: torch.Tensor | None, placeholder: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The kernels' mask pointer and its two strides: the [B, Nk] byte mask, or without one (HAS_MASK is then
    False and the kernel never reads it) any tensor of the call as a placeholder pointer, strides (0, 0)."""
    if mask is None:
        return placeholder, (0, 0)
    return mask, tuple(mask.stride())


def dropout_scale(dropout_p: float) -> float:
    """1 / (1 − p): what a kept weight is multiplied by (1 without dropout)."""
    return 1.0 / (1.0 - dropout_p) if dropout_p > 0 else 1.0


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands multiply in full fp32 (the tests compare with fp32 PyTorch); 16-bit ones natively."""
    return "ieee" if dtype == torch.float32 else "tf32"


def sum_buffers(
    groups: int, rows: int, cols: int, device: torch.device, copies: int = 1, zeroed: bool = True
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``copies`` pairs of fp32 [groups, rows, cols] and [groups, rows] sums (S and z, or their gradients) in one
    allocation and, when ``zeroed``, one fill: the kernels add into them with atomics, and at short lengths the
    host's time for each extra launch shows.  Every view starts on a 16-byte boundary, whatever the
    sizes, so that a launch bound for one call's sums fits the next call's (``qra.kernels._launch``)."""
    matrix, vector = rows * cols * groups, rows * groups
    split = -(-matrix // 4) * 4  # floats, rounded up to 16 bytes
    size = split + -(-vector // 4) * 4
    flat = (torch.zeros if zeroed else torch.empty)(copies * size, device=device, dtype=torch.float32)
    pieces = [flat[i * size : (i + 1) * size] for i in range(copies)]
    return [(piece[:matrix].view(groups, rows, cols), piece[split : split + vector].view(groups, rows))
            for piece in pieces]  # fmt: skip
