"""Values derived from tensors, kept while those tensors are unchanged: the same objects at the same versions.

Why: a feature map's fixed prologue (RFF's Ω/σ) and a softmax temperature scaled for the kernels are derived again on
every attention call otherwise, each derivation a few launches and allocations of the host's time in every patched
layer of every step.  In-place updates (an optimiser step, ``load_state_dict``, ``fill_``) change a source's
version, ``.to()`` its identity; either derives the value afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch

T = TypeVar("T")


def reusable(sources: Sequence[torch.Tensor]) -> bool:
    """Whether a value derived from ``sources`` may be kept for later calls: not under inference mode (its tensors
    could not be saved for a backward outside it), no source an inference tensor (those keep no version), and no
    gradient to flow through it (a source requiring grad while grad is enabled)."""
    if torch.is_inference_mode_enabled() or any(t.is_inference() for t in sources):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in sources))


class VersionedMemo(Generic[T]):
    """``get(key, build, sources, settings)``: ``build()``, reused while ``sources`` are the same tensors at the same
    versions and ``settings`` are equal (and built afresh, not kept, where :func:`reusable` says no).  ``limit``
    bounds the keys kept (cleared past it); None keeps every key.  Kept values are read-only by contract."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._kept: dict[object, tuple[tuple, tuple[torch.Tensor, ...], T]] = {}

    def get(self, key: object, build: Callable[[], T], sources: Sequence[torch.Tensor], settings: tuple = ()) -> T:
        if not reusable(sources):
            return build()
        stamp = (settings, tuple(t._version for t in sources))
        kept = self._kept.get(key)
        if kept is not None and kept[0] == stamp and all(a is b for a, b in zip(kept[1], sources, strict=True)):
            return kept[2]
        value = build()
        if self.limit is not None and len(self._kept) >= self.limit:
            self._kept.clear()
        self._kept[key] = (stamp, tuple(sources), value)
        return value
