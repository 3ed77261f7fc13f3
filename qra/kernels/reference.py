"""Plain PyTorch versions of the fused kernels' math: the fallback when the kernels cannot run.

They follow :mod:`qra.attention` (fp32 compute for half-precision inputs, the same denominator
guard, exact zeros for masked keys and for rows without any real key).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def guard(den: torch.Tensor, eps: float) -> torch.Tensor:
    """|den| < eps becomes ±eps with den's sign (0 counts as positive)."""
    floor = torch.where(den < 0, -eps, eps).to(den.dtype)
    return torch.where(den.abs() < eps, floor, den)


def linear_attention(fq, fk, v, key_padding_mask=None, eps: float = 1e-6) -> torch.Tensor:
    dtype = _compute_dtype(v)
    fq, fk, values = fq.to(dtype), fk.to(dtype), v.to(dtype)
    if key_padding_mask is not None:
        fk = fk * key_padding_mask.to(device=fk.device, dtype=dtype)[:, None, :, None]
    state = fk.transpose(-1, -2) @ values
    den = guard(fq @ fk.sum(dim=-2).unsqueeze(-1), eps)
    return ((fq @ state) / den).to(v.dtype)


def fourier_features(
    x: torch.Tensor,
    weight: torch.Tensor,
    phase: torch.Tensor,
    scale: float,
    head_factors: torch.Tensor | None = None,
) -> torch.Tensor:
    """scale·cos(x·Wᵀ + phase) (times ``head_factors[h]`` on head h of ``[B, H, N, d]`` x), computed in fp32 for
    half-precision x and returned in x's dtype."""
    dtype = _compute_dtype(x)
    features = scale * torch.cos(x.to(dtype) @ weight.to(dtype).T + phase.to(dtype))
    if head_factors is not None:
        features = features * head_factors.to(dtype).view(1, -1, 1, 1)
    return features.to(x.dtype)


def stabilised(exponents: torch.Tensor, stabilizer: str, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """FAVOR+'s stabiliser in log space: ``[B, H, N, m]`` exponents minus a constant to autograd, none (``none``),
    each row's max (``row``: queries) or the max over each sequence's real keys (``sequence``: keys).  A sequence
    without any real key has the max −inf; it gets 0, since its features are masked whatever they are."""
    if stabilizer == "row":
        return exponents - exponents.detach().amax(dim=-1, keepdim=True)
    if stabilizer != "sequence":
        return exponents
    reference = exponents.detach()
    if key_padding_mask is not None:
        keep = key_padding_mask.to(device=exponents.device, dtype=torch.bool)[:, None, :, None]
        reference = reference.masked_fill(~keep, float("-inf"))
    best = reference.amax(dim=(-2, -1), keepdim=True)
    return exponents - torch.where(torch.isfinite(best), best, 0.0)


def exponential_features(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: float,
    scale: float,
    head_factors: torch.Tensor | None = None,
    stabilizer: str = "none",
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """scale·exp(x·Wᵀ − η‖x‖² − s) (times ``head_factors[h]`` on head h), s the stabiliser (a constant to autograd):
    0 (``none``), each row's max (``row``) or the max over each sequence's real keys (``sequence``; 0 for a
    sequence without any).  Computed in fp32 for half-precision x, returned in x's dtype (fp32 for fp16 x)."""
    dtype = _compute_dtype(x)
    values = x.to(dtype)
    exponents = values @ weight.to(dtype).T - norm_weight * values.square().sum(dim=-1, keepdim=True)
    features = scale * stabilised(exponents, stabilizer, key_padding_mask).exp()
    if head_factors is not None:
        features = features * head_factors.to(dtype).view(1, -1, 1, 1)
    return features.to(torch.float32 if x.dtype == torch.float16 else x.dtype)


def fourier_linear_attention(q, k, v, weight, phase, scale: float, key_padding_mask=None, eps: float = 1e-6):
    fq, fk = fourier_features(q, weight, phase, scale), fourier_features(k, weight, phase, scale)
    return linear_attention(fq, fk, v, key_padding_mask, eps)


def softmax_weights(scores: torch.Tensor, key_padding_mask=None) -> torch.Tensor:
    """softmax over the last dim with masked keys (and all-padding rows) at exactly 0."""
    if key_padding_mask is None:
        return torch.softmax(scores, dim=-1)
    keep = key_padding_mask.to(device=scores.device, dtype=torch.bool)[:, None, None, :]
    weights = torch.softmax(scores.masked_fill(~keep, torch.finfo(scores.dtype).min), dim=-1)
    return weights * keep


def softmax_attention(fq, fk, v, key_padding_mask=None, dropout_p: float = 0.0, keep=None) -> torch.Tensor:
    """``keep`` (a [B, H, Nq, Nk] bool mask) replaces random dropout with that mask (tests)."""
    dtype = _compute_dtype(v)
    weights = softmax_weights(fq.to(dtype) @ fk.to(dtype).transpose(-1, -2), key_padding_mask)
    weights = _dropout(weights, dropout_p, keep)
    return (weights @ v.to(dtype)).to(v.dtype)


def fidelity_scores(states_q: torch.Tensor, states_k: torch.Tensor) -> torch.Tensor:
    """|⟨ψq_i|ψk_j⟩|² ``[..., Nq, Nk]``."""
    return (states_q.conj() @ states_k.transpose(-1, -2)).abs().square()


def fidelity_attention(
    states_q, states_k, v, key_padding_mask=None, beta=None, dropout_p: float = 0.0, keep=None
) -> torch.Tensor:
    dtype = _compute_dtype(v)
    if not states_q.is_complex():
        states_q = torch.complex(states_q, torch.zeros_like(states_q))
    if not states_k.is_complex():
        states_k = torch.complex(states_k, torch.zeros_like(states_k))
    scores = fidelity_scores(states_q, states_k).to(dtype)
    if beta is not None:
        beta = torch.as_tensor(beta, device=scores.device).to(dtype)
        scores = scores * (beta.reshape(1, -1, 1, 1) if beta.numel() > 1 else beta.reshape(()))
    weights = _dropout(softmax_weights(scores, key_padding_mask), dropout_p, keep)
    return (weights @ v.to(dtype)).to(v.dtype)


def _dropout(weights: torch.Tensor, dropout_p: float, keep) -> torch.Tensor:
    if dropout_p <= 0:
        return weights
    if keep is not None:
        return weights * keep.to(weights.dtype) / (1.0 - dropout_p)
    return F.dropout(weights, p=dropout_p, training=True)
