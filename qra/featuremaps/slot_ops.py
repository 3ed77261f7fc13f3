"""Batched building blocks for a circuit map's gate parameters (``slot_basis``, ``slot_values``) that keep
little for backward.

A ZZ or IQP map's two-qubit gate angles are products of two of its angles, one row per pair.  Written
with tensor ops (``index_select``, ``sub``, ``mul``) autograd keeps both factors of every pair in
float64 for backward: at 6 qubits, 15 pairs and 393,216 inputs (one patched layer's queries and keys at
B = 32, N = 512, 12 heads) that is 90–135 MiB a layer, alive until the layer's backward
(``results/bench/memory-profile-minilm-h200.txt``).  :func:`pair_products` keeps the angle rows alone
(one row per qubit) and forms the factors again in backward.
"""

from __future__ import annotations

import torch


class _PairProducts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: torch.Tensor, first: torch.Tensor, second: torch.Tensor, shift: float, scale: float):
        ctx.save_for_backward(rows, first, second)
        ctx.shift, ctx.scale = shift, scale
        left = torch.sub(shift, rows.index_select(0, first))
        return left.mul_(torch.sub(shift, rows.index_select(0, second))).mul_(scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        rows, first, second = ctx.saved_tensors
        grad = grad * -ctx.scale  # ∂/∂a of s·(c − a)(c − b) = −s·(c − b)
        grad_rows = torch.zeros_like(rows)
        grad_rows.index_add_(0, first, grad * torch.sub(ctx.shift, rows.index_select(0, second)))
        grad_rows.index_add_(0, second, grad.mul_(torch.sub(ctx.shift, rows.index_select(0, first))))
        return grad_rows, None, None, None, None


def pair_products(rows: torch.Tensor, first: torch.Tensor, second: torch.Tensor, shift: float = 0.0,
                  scale: float = 1.0) -> torch.Tensor:  # fmt: skip
    """``scale·(shift − rows[first[p]])·(shift − rows[second[p]])`` for every pair p, as ``[P, B]``.

    ``rows`` ``[q, B]``: one row of angles per qubit (a map's ``angles.T.contiguous()``); ``first``,
    ``second``: int64 index tensors ``[P]`` on the rows' device.  Differentiable in ``rows``; the
    backward keeps only ``rows`` and the indices.  A ZZ map's θ = 2(π − x_i)(π − x_j) is
    ``pair_products(rows, i, j, math.pi, 2.0)``; an IQP map's x_i·x_j is ``pair_products(rows, i, j)``.
    """
    if rows.dim() != 2 or first.shape != second.shape or first.dim() != 1:
        raise ValueError(
            f"pair_products takes rows [qubits, batch] and two index vectors of one length; got rows "
            f"{tuple(rows.shape)}, first {tuple(first.shape)}, second {tuple(second.shape)}"
        )
    return _PairProducts.apply(rows, first, second, float(shift), float(scale))
