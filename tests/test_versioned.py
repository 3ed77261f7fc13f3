"""qra.versioned: values derived from tensors, kept while the tensors are unchanged."""

from __future__ import annotations

import torch

from qra.versioned import VersionedMemo


def test_kept_until_a_source_changes_in_place_or_is_replaced():
    builds = []
    source = torch.ones(3)

    def build(t):
        builds.append(1)
        return t * 2

    memo = VersionedMemo()
    first = memo.get("k", lambda: build(source), (source,))
    assert memo.get("k", lambda: build(source), (source,)) is first and len(builds) == 1
    source.add_(1)  # an in-place update: a new version
    assert torch.equal(memo.get("k", lambda: build(source), (source,)), torch.full((3,), 4.0)) and len(builds) == 2
    other = source.clone()  # the same values, another tensor
    memo.get("k", lambda: build(other), (other,))
    assert len(builds) == 3
    memo.get("k", lambda: build(other), (other,), settings=("changed",))
    assert len(builds) == 4


def test_built_afresh_for_gradients_inference_and_inference_tensors():
    memo, builds = VersionedMemo(), []
    learned = torch.ones(2, requires_grad=True)
    for _ in range(2):
        memo.get("grad", lambda: builds.append(1), (learned,))
    with torch.inference_mode():
        frozen = torch.ones(2)  # an inference tensor: it keeps no version
        memo.get("inference", lambda: builds.append(1), (frozen,))
    memo.get("inference tensor", lambda: builds.append(1), (frozen,))
    memo.get("inference tensor", lambda: builds.append(1), (frozen,))
    assert len(builds) == 5


def test_bounded_by_its_limit():
    memo = VersionedMemo(limit=2)
    sources = [torch.ones(1) for _ in range(3)]
    for i, t in enumerate(sources):
        memo.get(i, lambda t=t: t + 1, (t,))
    assert len(memo._kept) <= 2
