"""Kernel attention: attention weights from a feature map's similarity instead of q·k/√d.

Three ways to turn the kernel matrix S_ij = similarity(φ(q_i), φ(k_j)) into attention:

``softmax``
    A = softmax(β·S) over the unmasked keys: the literal replacement of q·k/√d, with a per-head
    temperature β (kernel values are O(1), so β sets how peaked attention can get).  For maps
    whose similarity is a dot product this runs through PyTorch's fused SDPA kernels.
``normalized``
    A_ij = max(S_ij, 0) / Σ_j max(S_ij, 0): a kernel smoother (Nadaraya–Watson).
``linear``
    out_i = Σ_j S_ij v_j / Σ_j S_ij computed as φ(q)(φ(k)ᵀV) / φ(q)(φ(k)ᵀ1) in O(N·m·d): the
    same weights as the quadratic formula, never materialised.  Needs a map with ``is_linear``.

Masked keys get exactly zero weight in every mode.  Denominators are guarded: a value with
|den| < eps is replaced by ±eps (its sign kept, 0 counted as positive), identically in the linear
and the quadratic evaluation.  Maps with positive (log-space) features have positive denominators
of any scale; for them the guard is only the smallest normal number, so large query/key norms
cannot trip it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from . import kernels
from .featuremaps.base import ExponentialPrologue, FeatureMap, FourierPrologue, compute_dtype
from .kernels.reference import stabilised

Mode = Literal["softmax", "normalized", "linear"]
DEFAULT_EPS = 1e-6


def check_mode(mode: str, featuremap: FeatureMap) -> None:
    """Raise a clear error for an unknown mode, or a mode the map cannot run (``linear`` needs a dot product)."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}; accepted: {', '.join(ATTENTION_MODES)}")
    if ATTENTION_MODES[mode].needs_linear_map and not featuremap.is_linear:
        raise ValueError(
            f"mode={mode!r} needs a feature map whose similarity is a real dot product (is_linear=True); "
            f"{type(featuremap).__name__} is not. Use mode='softmax' or 'normalized'."
        )


def guard_denominator(den: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Replace values with |den| < eps by ±eps, keeping the sign (0 counts as positive); eps may vary by row."""
    eps = torch.as_tensor(eps, dtype=den.dtype, device=den.device)
    floor = torch.where(den < 0, -eps, eps)
    return torch.where(den.abs() < eps, floor, den)


def _stabilised_features(
    featuremap: FeatureMap, q: torch.Tensor, k: torch.Tensor, keep: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """FAVOR+'s stabiliser for maps with log features, or None for other maps.

    Each query's features are divided by their max, all keys' by the max over the sequence's
    real keys (so padding cannot shift it).  Both are constant factors that cancel in the
    normalized and linear modes; they only keep exp() from underflowing.
    """
    log_q, log_k = featuremap.log_features(q), featuremap.log_features(k)
    if log_q is None or log_k is None:
        return None
    return stabilised(log_q, "row").exp(), stabilised(log_k, "sequence", keep).exp()


def broadcast_beta(beta: torch.Tensor | float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The temperature as a tensor that scales ``[B, H, N, ·]`` scores: a per-head ``[H]`` becomes ``[1, H, 1, 1]``."""
    beta = torch.as_tensor(beta, dtype=dtype, device=device)
    return beta.view(1, -1, 1, 1) if beta.dim() else beta


def _softmax_through_sdpa(
    fq: torch.Tensor,
    fk: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor | None,
    beta: torch.Tensor | float | None,
    dropout_p: float,
) -> torch.Tensor:
    """softmax(β·φ(q)·φ(k)) V as scaled-dot-product attention with β·φ(q) as queries and φ(k) as keys.

    For a dot-product similarity the two are the same formula, and PyTorch's fused kernels (flash,
    memory-efficient) then never form the N×N matrix: memory O(N), SDPA's speed.
    """
    queries, keys = fq.to(v.dtype), fk.to(v.dtype)
    if beta is not None:
        queries = queries * broadcast_beta(beta, v.dtype, v.device)
    mask = None if keep is None else keep[:, None, None, :]
    out = F.scaled_dot_product_attention(queries, keys, v, attn_mask=mask, dropout_p=dropout_p, scale=1.0)
    if keep is None:
        return out
    return torch.nan_to_num(out, nan=0.0)  # a sequence without any real key attends to nothing


@dataclass(frozen=True)
class AttentionInputs:
    """What every mode gets: features of the queries and keys, the values, and the options."""

    featuremap: FeatureMap
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    keep: torch.Tensor | None  # [B, Nk] bool, True for real keys; None: no padding
    beta: torch.Tensor | float | None
    dropout_p: float
    return_weights: bool
    eps: float

    @cached_property
    def fourier_prologue(self) -> FourierPrologue | None:
        """A dot-product map's features as scale·cos(x·Wᵀ + phase), or None: formed once a call (W may be
        learned), however many times the dispatch asks."""
        return self.featuremap.fourier_prologue() if self.featuremap.is_linear else None

    @cached_property
    def exponential_prologue(self) -> ExponentialPrologue | None:
        """A dot-product map's features as scale·exp(x·Wᵀ − η‖x‖²) (FAVOR+), or None; None too while the
        exponential feature pass is off (:func:`qra.kernels.exponential_pass_enabled`)."""
        if not (self.featuremap.is_linear and kernels.exponential_pass_enabled()):
            return None
        return self.featuremap.exponential_prologue()

    @property
    def has_prologue(self) -> bool:
        """Whether a Triton pass can compute the map's features (a Fourier or an exponential prologue)."""
        return self.fourier_prologue is not None or self.exponential_prologue is not None

    @property
    def keep_keys(self) -> torch.Tensor | None:
        """The key mask broadcast over heads and queries, [B, 1, 1, Nk]."""
        return None if self.keep is None else self.keep[:, None, None, :]


AttentionResult = tuple[torch.Tensor, torch.Tensor | None]


def _weighted_values(inputs: AttentionInputs, weights: torch.Tensor, dtype: torch.dtype) -> AttentionResult:
    """Dropout on the weights (when asked), then weights @ V in ``dtype``, returned in V's dtype."""
    if inputs.dropout_p > 0:
        weights = F.dropout(weights, p=inputs.dropout_p, training=True)
    out = weights @ inputs.v.to(dtype)
    return out.to(inputs.v.dtype), (weights if inputs.return_weights else None)


def softmax_mode(inputs: AttentionInputs) -> AttentionResult:
    """softmax(β·S) over the real keys; dot-product maps run through fused SDPA kernels (no N×N matrix)."""
    fm = inputs.featuremap
    fq, fk = fm.query_and_key_features(inputs.q, inputs.k)
    if fm.is_linear and not inputs.return_weights:
        return _softmax_through_sdpa(fq, fk, inputs.v, inputs.keep, inputs.beta, inputs.dropout_p), None
    dtype = compute_dtype(inputs.v)
    scores = fm.similarity(fq, fk).to(dtype)
    if inputs.beta is not None:
        scores = scores * broadcast_beta(inputs.beta, dtype, scores.device)
    keep_keys = inputs.keep_keys
    if keep_keys is not None:
        scores = scores.masked_fill(~keep_keys, torch.finfo(dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if keep_keys is not None:  # exact zeros, also for a row whose keys are all padding
        weights = weights * keep_keys
    return _weighted_values(inputs, weights, dtype)


def _features(inputs: AttentionInputs) -> tuple[torch.Tensor, torch.Tensor, float]:
    """φ(q), φ(k) for the modes where a constant factor cancels, and the denominator guard to use.

    Maps with log features have positive features, so their denominators are sums of positive
    terms, scaled by the stabiliser by factors that can be astronomically small or large: an
    absolute ``eps`` would fire on a perfectly good denominator.  Their guard only keeps an
    underflow to 0 from dividing by zero.  Signed maps (RFF) keep the absolute ``eps``.
    """
    stabilised = _stabilised_features(inputs.featuremap, inputs.q, inputs.k, inputs.keep)
    if stabilised is None:
        return *inputs.featuremap.query_and_key_features(inputs.q, inputs.k), inputs.eps
    return *stabilised, torch.finfo(compute_dtype(inputs.v)).tiny


#: the normalized mode forms its N×N weights this many elements at a time (by blocks of queries)
NORMALIZED_BLOCK_ELEMENTS = 2**28


def normalized_mode(inputs: AttentionInputs) -> AttentionResult:
    """max(S, 0) / Σ_j max(S, 0): a kernel smoother (Nadaraya–Watson).

    Quadratic, so without returned weights it runs over blocks of queries: memory stays at about
    :data:`NORMALIZED_BLOCK_ELEMENTS` weights, whatever N (32,768 tokens would otherwise need an
    N×N matrix per head).
    """
    fq, fk, eps = _features(inputs)
    dtype = compute_dtype(inputs.v)

    def block(block_fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = inputs.featuremap.similarity(block_fq, fk).to(dtype).clamp_min(0)
        if inputs.keep_keys is not None:
            weights = weights * inputs.keep_keys
        weights = weights / guard_denominator(weights.sum(dim=-1, keepdim=True), eps)
        if inputs.dropout_p > 0:
            weights = F.dropout(weights, p=inputs.dropout_p, training=True)
        return weights @ v.to(dtype), weights

    if inputs.return_weights:
        out, weights = block(fq, fk, inputs.v)
        return out.to(inputs.v.dtype), weights
    batch, heads, queries, keys = fq.shape[0], fq.shape[1], fq.shape[-2], fk.shape[-2]
    rows = max(1, NORMALIZED_BLOCK_ELEMENTS // max(1, batch * heads * keys))
    if rows >= queries:
        return block(fq, fk, inputs.v)[0].to(inputs.v.dtype), None
    # each block's weights are recomputed in backward rather than kept: memory stays one block's
    outputs = [checkpoint(lambda *a: block(*a)[0], fq[..., start : start + rows, :], fk, inputs.v, use_reentrant=False)
               for start in range(0, queries, rows)]  # fmt: skip
    return torch.cat(outputs, dim=-2).to(inputs.v.dtype), None


def linear_mode(inputs: AttentionInputs) -> AttentionResult:
    """φ(Q)(φ(K)ᵀV) / φ(Q)(φ(K)ᵀ1) in O(N·m·d); the weights only on demand."""
    fq, fk, eps = _features(inputs)
    dtype = compute_dtype(inputs.v)
    fq, fk, values = fq.to(dtype), fk.to(dtype), inputs.v.to(dtype)
    if inputs.keep is not None:
        fk = fk * inputs.keep[:, None, :, None].to(dtype)
    key_value = fk.transpose(-1, -2) @ values  # [B, H, m, dv]
    normaliser = guard_denominator(fq @ fk.sum(dim=-2).unsqueeze(-1), eps)  # [B, H, Nq, 1]
    out = (fq @ key_value) / normaliser
    weights = None
    if inputs.return_weights:
        scores = fq @ fk.transpose(-1, -2)
        weights = scores / guard_denominator(scores.sum(dim=-1, keepdim=True), eps)
    return out.to(inputs.v.dtype), weights


def _fusable(inputs: AttentionInputs, *tensors: torch.Tensor | None) -> bool:
    """Whether :mod:`qra.kernels` can take these inputs (CUDA, Triton, supported dtypes and sizes)."""
    return (
        inputs.featuremap.dim <= kernels.MAX_FEATURE_DIM
        and inputs.v.shape[-1] <= kernels.MAX_VALUE_DIM
        and kernels.fused_available(inputs.q, inputs.k, inputs.v, inputs.keep, *tensors)
    )


def _prologue_features(inputs: AttentionInputs, beta: torch.Tensor | float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """β·φ(q) and φ(k) from the Triton feature pass of the map's Fourier or exponential prologue (no stabiliser),
    both from one pass each way."""
    fourier, exponential = inputs.fourier_prologue, inputs.exponential_prologue
    if fourier is not None:
        return kernels.fourier_query_key_features(inputs.q, inputs.k, fourier.weight, fourier.phase, fourier.scale,
                                                  beta)  # fmt: skip
    return kernels.exponential_query_key_features(inputs.q, inputs.k, exponential.weight, exponential.norm_weight,
                                                  exponential.scale, beta)  # fmt: skip


def fused_softmax(inputs: AttentionInputs) -> AttentionResult | None:
    """Fused softmax: SDPA over φ from a Triton feature pass for maps with a prologue (RFF, FAVOR+), qra's
    flash-style kernel for other dot-product maps, the fidelity kernel for exact circuit maps."""
    fm = inputs.featuremap
    if inputs.return_weights or not (fm.is_linear or fm.is_fidelity) or not _fusable(inputs):
        return None
    if inputs.has_prologue:  # φ from one Triton pass each way, then SDPA's kernels (faster than qra's softmax)
        queries, keys = _prologue_features(inputs, 1.0 if inputs.beta is None else inputs.beta)
        return _softmax_through_sdpa(queries, keys, inputs.v, inputs.keep, None, inputs.dropout_p), None
    if fm.is_linear:
        fq, fk = fm.query_and_key_features(inputs.q, inputs.k)
        queries = fq if inputs.beta is None else fq * broadcast_beta(inputs.beta, fq.dtype, fq.device)
        out = kernels.softmax_attention(queries, fk, inputs.v, inputs.keep, inputs.dropout_p)
        return out.to(inputs.v.dtype), None
    states_q, states_k = fm.query_and_key_features(inputs.q, inputs.k)
    beta = inputs.beta if isinstance(inputs.beta, torch.Tensor) or inputs.beta is None else float(inputs.beta)
    out = kernels.fidelity_attention(states_q, states_k, inputs.v, inputs.keep, beta, inputs.dropout_p,
                                     states_kept=fm.keeps_features_for_backward)  # fmt: skip
    return out.to(inputs.v.dtype), None


def _stabilised_prologue_features(
    inputs: AttentionInputs, prologue: ExponentialPrologue
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """:func:`_features` for a map with an exponential prologue, its φ(q), φ(k) from the Triton feature pass."""
    if not prologue.stabilize:
        return *_prologue_features(inputs, None), inputs.eps
    # the stabilisers absorb the constant scale, as log_features' max does on the PyTorch path
    weight, eta = prologue.weight, prologue.norm_weight
    fq = kernels.exponential_features(inputs.q, weight, eta, 1.0, stabilizer="row")
    fk = kernels.exponential_features(inputs.k, weight, eta, 1.0, stabilizer="sequence", key_padding_mask=inputs.keep)
    return fq, fk, torch.finfo(compute_dtype(inputs.v)).tiny


def fused_linear(inputs: AttentionInputs) -> AttentionResult | None:
    """The two-pass fused linear kernel (weights, when asked for, need the PyTorch path).

    A map with a Fourier prologue (RFF) has its features computed inside the kernel's tiles, one with an
    exponential prologue (FAVOR+) by a Triton pass each (with the stabiliser the PyTorch path applies);
    any other map's are computed first and handed over.
    """
    if inputs.return_weights or not _fusable(inputs):
        return None
    prologue = inputs.fourier_prologue
    if prologue is not None:
        out = kernels.fourier_linear_attention(inputs.q, inputs.k, inputs.v, prologue.weight, prologue.phase,
                                               prologue.scale, inputs.keep, inputs.eps)  # fmt: skip
        return out.to(inputs.v.dtype), None
    exponential = inputs.exponential_prologue
    if exponential is not None:
        fq, fk, eps = _stabilised_prologue_features(inputs, exponential)
    else:
        fq, fk, eps = _features(inputs)
    return kernels.linear_attention(fq, fk, inputs.v, inputs.keep, eps).to(inputs.v.dtype), None


@dataclass(frozen=True)
class AttentionMode:
    """One way of turning kernel values into attention.

    ``pytorch`` computes it anywhere (and is the tests' oracle); ``fused``, where given, runs
    :mod:`qra.kernels` and returns None for inputs it cannot take.  ``fused_by_default(inputs)``: whether
    ``auto`` picks the fused kernel for these inputs (only where it was measured faster than the PyTorch
    path on an H200, results/bench/).  ``needs_linear_map``: the mode needs a map whose similarity is a
    real dot product.
    """

    pytorch: Callable[[AttentionInputs], AttentionResult]
    fused: Callable[[AttentionInputs], AttentionResult | None] | None = None
    fused_by_default: Callable[[AttentionInputs], bool] = lambda inputs: False
    needs_linear_map: bool = False


def _fidelity_or_prologue_map(inputs: AttentionInputs) -> bool:
    """Circuit maps (the fidelity kernel) and maps with a prologue (their features from one Triton pass)."""
    return inputs.featuremap.is_fidelity or inputs.has_prologue


def _always(inputs: AttentionInputs) -> bool:
    return True


#: The attention modes by name.  A new mode is one function of :class:`AttentionInputs` and one row here.
ATTENTION_MODES: dict[str, AttentionMode] = {
    # softmax's PyTorch path already runs dot-product maps through SDPA's fused kernels, which beat
    # qra's Triton softmax on the H200 (that kernel is there on request, implementation="fused"); maps with a
    # prologue (RFF, FAVOR+) get their features for SDPA from one Triton pass instead of PyTorch ops; circuit
    # maps' PyTorch path forms the N×N fidelities, and the fidelity kernel beats it
    "softmax": AttentionMode(softmax_mode, fused=fused_softmax, fused_by_default=_fidelity_or_prologue_map),
    "normalized": AttentionMode(normalized_mode),
    "linear": AttentionMode(linear_mode, fused=fused_linear, fused_by_default=_always, needs_linear_map=True),
}
MODES: tuple[str, ...] = tuple(ATTENTION_MODES)
#: which code computes a mode: ``auto`` (the fused kernel where the mode prefers it and it can take the
#: inputs, else PyTorch), ``pytorch`` (always the PyTorch path) or ``fused`` (an error where the kernels cannot
#: run).  A call that returns the attention weights (``output_attentions``, the attention metrics) runs the
#: PyTorch path under every setting: the fused kernels exist so that the N×N weights are never formed.
IMPLEMENTATIONS = ("auto", "pytorch", "fused")
#: set to ``pytorch`` to force the PyTorch path everywhere (as ``implementation="pytorch"`` does)
IMPLEMENTATION_ENV = "QRA_ATTENTION_IMPLEMENTATION"


def run_mode(mode: str, inputs: AttentionInputs, implementation: str = "auto") -> tuple[AttentionResult, str]:
    """The mode's result and the path that computed it (``fused`` or ``pytorch``)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; accepted: {', '.join(IMPLEMENTATIONS)}")
    forced = os.environ.get(IMPLEMENTATION_ENV, "")
    if forced and forced not in IMPLEMENTATIONS:
        raise ValueError(f"{IMPLEMENTATION_ENV}={forced!r}; accepted: {', '.join(IMPLEMENTATIONS)}")
    implementation = forced or implementation
    entry = ATTENTION_MODES[mode]
    wanted = implementation == "fused" or (implementation == "auto" and entry.fused_by_default(inputs))
    if wanted and entry.fused is not None:
        result = entry.fused(inputs)
        if result is not None:
            return result, "fused"
    if implementation == "fused" and not inputs.return_weights:
        raise ValueError(
            f"implementation='fused': the fused kernels cannot take these inputs (mode {mode!r}, device "
            f"{inputs.v.device.type}, dtype {inputs.v.dtype}, map {type(inputs.featuremap).__name__}); they need CUDA, "
            "Triton and a dot-product or exact fidelity map"
        )
    return entry.pytorch(inputs), "pytorch"


def kernel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    featuremap: FeatureMap,
    mode: Mode = "softmax",
    key_padding_mask: torch.Tensor | None = None,
    beta: torch.Tensor | float | None = None,
    dropout_p: float = 0.0,
    return_weights: bool = False,
    eps: float = DEFAULT_EPS,
    implementation: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention output (and optionally its weights) with a kernel similarity.

    Args:
        q, k: queries ``[B, H, Nq, d]`` and keys ``[B, H, Nk, d]``; d must equal ``featuremap.d_in``.
        v: values ``[B, H, Nk, dv]``.
        featuremap: the map φ.
        mode: a name in :data:`ATTENTION_MODES` — ``softmax``, ``normalized`` or ``linear`` (module docstring).
        key_padding_mask: ``[B, Nk]`` bool, True for real tokens; None means no padding.
        beta: softmax temperature, a float or a per-head tensor ``[H]`` (default 1).  Unused by the
            other modes, where a scale of S cancels.
        dropout_p: dropout on the attention weights (pass 0 in eval).  Not applied in ``linear``
            mode, where the weights are never formed.
        return_weights: also return A ``[B, H, Nq, Nk]`` (computed on demand in ``linear`` mode).
        eps: the denominator guard.
        implementation: ``auto``, ``pytorch`` or ``fused`` (:data:`IMPLEMENTATIONS`).

    Returns:
        ``(out [B, H, Nq, dv] in v's dtype, weights or None)``.
    """
    inputs = attention_inputs(q, k, v, featuremap, mode, key_padding_mask, beta, dropout_p, return_weights, eps)
    result, _ = run_mode(mode, inputs, implementation)
    return result


def attention_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    featuremap: FeatureMap,
    mode: str,
    key_padding_mask: torch.Tensor | None,
    beta: torch.Tensor | float | None,
    dropout_p: float,
    return_weights: bool,
    eps: float,
) -> AttentionInputs:
    """The validated inputs of a mode: shapes, head dim and key mask checked, the mask made boolean."""
    check_mode(mode, featuremap)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, N, d]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != featuremap.d_in or k.shape[-1] != featuremap.d_in:
        raise ValueError(f"head dim {q.shape[-1]} does not match the feature map's d_in={featuremap.d_in}")
    keep = None
    if key_padding_mask is not None:
        if key_padding_mask.shape != (k.shape[0], k.shape[2]):
            raise ValueError(
                f"key_padding_mask must be [B, Nk] = {(k.shape[0], k.shape[2])}, got {tuple(key_padding_mask.shape)}"
            )
        keep = key_padding_mask.to(device=k.device, dtype=torch.bool)
    return AttentionInputs(featuremap, q, k, v, keep, beta, dropout_p, return_weights, eps)


class KernelAttention(nn.Module):
    """The state kernel attention keeps in a patched layer: φ, the mode and the per-head temperature β.

    Each patched layer owns one, so φ's buffers and learnable knobs (σ, β) are saved with the model.
    ``implementation`` (``auto``, ``pytorch``, ``fused``) picks the code that runs it;
    :attr:`last_path` says which ran last (``fused`` or ``pytorch``), for the run's records.
    """

    def __init__(
        self,
        featuremap: FeatureMap,
        num_heads: int,
        mode: Mode = "softmax",
        beta: float = 1.0,
        learn_beta: bool = False,
        eps: float = DEFAULT_EPS,
        implementation: str = "auto",
    ) -> None:
        super().__init__()
        check_mode(mode, featuremap)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"unknown implementation {implementation!r}; accepted: {', '.join(IMPLEMENTATIONS)}")
        self.featuremap = featuremap
        self.mode = mode
        self.eps = eps
        self.implementation = implementation
        self.last_path: str | None = None
        initial = torch.full((num_heads,), float(beta))
        if learn_beta:
            self.beta = nn.Parameter(initial)
        else:
            self.register_buffer("beta", initial)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        inputs = attention_inputs(q, k, v, self.featuremap, self.mode, key_padding_mask, self.beta, dropout_p,
                                  return_weights, self.eps)  # fmt: skip
        result, self.last_path = run_mode(self.mode, inputs, self.implementation)
        return result

    def extra_repr(self) -> str:
        learned = isinstance(self.beta, nn.Parameter)
        return (f"mode={self.mode!r}, heads={self.beta.numel()}, learn_beta={learned}, "
                f"implementation={self.implementation!r}")  # fmt: skip
