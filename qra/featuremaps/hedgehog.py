"""Hedgehog: a learnable feature map trained to mimic softmax attention (Zhang et al., ICLR 2024)."""

from __future__ import annotations

import torch
from torch import nn

from .base import FeatureMap, compute_dtype


class HedgehogFeatureMap(FeatureMap):
    """Hedgehog's trainable map φ(x) = [softmax(W_h x), softmax(−W_h x)] with one W_h per attention head.

    Each half is a softmax over the feature axis, so φ(x) is positive and its dot products lie in
    [0, 2]: kernel attention with it is a proper (positive) attention in every mode, linear mode
    included (``is_linear``).  W starts at the identity (as in the paper), so the initial map is
    [softmax(x), softmax(−x)]; it is trained with the model, and optionally first fitted so that each
    layer's attention matches the layer's own softmax attention (``qra.experiment.distillation``).

    Parameters
    ----------
    heads:
        Number of attention heads H: W has shape ``[H, d_in, d_in]`` and is applied along the head axis
        of ``[B, H, N, d_in]`` inputs (how kernel attention calls its map).  ``qra.patch`` fills it in
        with the model's head count when the map is given by name.  ``heads=1`` shares one W across
        heads and accepts inputs of any shape ``[..., d_in]``.
    bias:
        Add a trainable bias per head (initialised at zero), as the paper's per-head MLP has.
    """

    is_linear = True

    def __init__(self, d_in: int, heads: int = 1, bias: bool = False) -> None:
        super().__init__(d_in)
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ValueError(f"hedgehog: heads must be a positive integer, got {heads!r}")
        self.heads = heads
        self.weight = nn.Parameter(torch.eye(d_in).repeat(heads, 1, 1))  # [H, d_in, d_in], W_h = I
        self.bias = nn.Parameter(torch.zeros(heads, d_in)) if bias else None

    @property
    def dim(self) -> int:
        return 2 * self.d_in

    def projections(self, x: torch.Tensor) -> torch.Tensor:
        """W_h x (+ b_h) for inputs ``[B, H, N, d_in]`` (or ``[..., d_in]`` when ``heads`` is 1)."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"hedgehog: expected inputs with last dimension d_in={self.d_in}, got {tuple(x.shape)}")
        dtype = compute_dtype(x)
        weight = self.weight.to(device=x.device, dtype=dtype)
        if self.heads == 1:
            projected = x.to(dtype) @ weight[0].T
            bias = None if self.bias is None else self.bias[0]
        else:
            if x.dim() < 3 or x.shape[-3] != self.heads:
                raise ValueError(
                    f"hedgehog with heads={self.heads} needs inputs [..., heads={self.heads}, N, d_in={self.d_in}] "
                    f"(one W per head); got {tuple(x.shape)}"
                )
            projected = torch.einsum("...hnd,hed->...hne", x.to(dtype), weight)
            bias = None if self.bias is None else self.bias[:, None, :]
        if bias is not None:
            projected = projected + bias.to(device=x.device, dtype=dtype)
        return projected

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            projected = self.projections(x)
            features = torch.cat([projected.softmax(dim=-1), (-projected).softmax(dim=-1)], dim=-1)
        return features.to(x.dtype)
