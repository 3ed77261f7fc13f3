"""Performer / FAVOR+ positive random features of the softmax kernel (Choromanski et al. 2021)."""

from __future__ import annotations

import math

import torch

from .base import ExponentialPrologue, FeatureMap, compute_dtype
from .random_draws import gaussian_frequencies


class PositiveRandomFeatures(FeatureMap):
    """FAVOR+ positive random features of the softmax kernel exp(s²·x·y).

    φ(x) = exp(ω·x' − ‖x'‖²/2) / √m with x' = s·x, ω ~ N(0, I), so that
    E[φ(x)·φ(y)] = exp(x'·y').  With the default s = d_in^(-1/4) that is exp(x·y/√d_in), the
    unnormalised weight of standard attention.  Every feature is positive, so attention
    normalisers never vanish or change sign.

    Parameters
    ----------
    m:
        Number of random features.
    seed:
        Seed of ω (a buffer, so a saved model reloads to the same function).
    orthogonal:
        Orthogonal random features (FAVOR+'s default): lower variance, still unbiased.
    scale:
        Input scale s; ``None`` means d_in^(-1/4).
    stabilize:
        Let ``normalized`` and ``linear`` attention apply FAVOR+'s stabiliser (through
        :meth:`log_features`): each query's features are divided by their max and all keys' by the
        max over the sequence's real keys.  Those factors cancel exactly in these modes and keep
        exp() from underflowing when queries and keys have large norms.  ``softmax`` mode, where
        they would not cancel, always uses the plain features, and so does calling the map.
    """

    def __init__(
        self,
        d_in: int,
        m: int = 128,
        seed: int = 0,
        orthogonal: bool = True,
        scale: float | None = None,
        stabilize: bool = True,
    ) -> None:
        super().__init__(d_in)
        if not isinstance(m, int) or m < 1:
            raise ValueError(f"performer: m must be a positive integer, got {m!r}")
        if scale is not None and not scale > 0:
            raise ValueError(f"performer: scale must be > 0 or None, got {scale!r}")
        self.m = m
        self.scale = float(scale) if scale is not None else d_in**-0.25
        self.stabilize = bool(stabilize)
        self.register_buffer("omega", gaussian_frequencies(m, d_in, seed, orthogonal))

    @property
    def dim(self) -> int:
        return self.m

    def _log_features(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            scaled = x.to(dtype) * self.scale
            exponent = scaled @ self.omega.to(device=x.device, dtype=dtype).T
            return exponent - 0.5 * scaled.square().sum(dim=-1, keepdim=True) - 0.5 * math.log(self.m)

    def log_features(self, x: torch.Tensor) -> torch.Tensor | None:
        return self._log_features(x) if self.stabilize else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._log_features(x).exp().to(x.dtype)

    def exponential_prologue(self) -> ExponentialPrologue | None:
        """W = s·ω, η = s²/2 and the factor 1/√m; None for a subclass that redefines the features."""
        cls = type(self)
        if (
            cls.forward is not PositiveRandomFeatures.forward
            or cls._log_features is not PositiveRandomFeatures._log_features
            or cls.log_features is not PositiveRandomFeatures.log_features
            or cls.query_features is not FeatureMap.query_features
        ):
            return None
        return self.memoized("exponential_prologue", self._exponential_prologue, (self.omega,),
                             (self.scale, self.m, self.stabilize))  # fmt: skip

    def _exponential_prologue(self) -> ExponentialPrologue:
        return ExponentialPrologue(self.omega.float() * self.scale, 0.5 * self.scale**2, self.m**-0.5, self.stabilize)
