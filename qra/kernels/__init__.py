"""Fused Triton kernels for kernel attention on CUDA (issue 15).

Three attention modes run as single autograd Functions with Triton forward *and* backward passes;
the PyTorch code in :mod:`qra.attention` stays the CPU path and the oracle the tests compare with.

``linear_attention(fq, fk, v, key_padding_mask=None, eps=1e-6)``
    out = φq (φkᵀ V) / guard(φq · Σ_j φk_j), non-causal, masked keys' features zeroed, fp32
    accumulation.  Two passes: one kernel reduces the KV state φkᵀV and Σφk per (batch, head) over
    key blocks (split over the keys, combined with fp32 atomics), one kernel walks the query blocks.
    The backward is the same pair in reverse (a query pass that also reduces dS, dz; a key pass).
``fourier_features(x, weight, phase, scale, head_factor=None)``
    φ(x) = scale·cos(x·Wᵀ + phase) (random Fourier features), times a per-head factor (a softmax temperature),
    written once in x's dtype by one Triton pass, its backward one more: the features the softmax mode hands to
    SDPA, which cannot take a prologue.
``fourier_query_key_features(q, k, weight, phase, scale, query_factor=None)``
    (c·φ(q), φ(k)) of the same map for a layer's queries and keys, both from one pass each way: one autograd
    Function and two launches where two calls take two and four.
``exponential_features(x, weight, norm_weight, scale, head_factor=None, stabilizer="none", key_padding_mask=None)``
    FAVOR+ positive features φ(x) = scale·exp(x·Wᵀ − η‖x‖² − s) by the same Triton passes, s a stabiliser that
    autograd treats as a constant: none, each row's max (queries in linear attention) or the max over each
    sequence's real keys (keys; one more pass finds it).  The softmax mode hands them to SDPA, the linear mode
    to ``linear_attention``; ``exponential_query_key_features`` computes a layer's queries' and keys' in one pass.
``fourier_linear_attention(q, k, v, weight, phase, scale, key_padding_mask=None, eps=1e-6)``
    the same linear attention with φ(x) = scale·cos(x·Wᵀ + phase) (random Fourier features) computed
    inside the kernels' tiles from the queries and keys: φ(q), φ(k) are never written to memory, and
    the backward recomputes them; it also returns the gradients of W and the phases.  Only for the
    dtypes and tile widths where it passed its tests on the H200 (:func:`prologue_verified`); other
    shapes compute φ first and run ``linear_attention`` on it.
``softmax_attention(fq, fk, v, key_padding_mask=None, dropout_p=0.0, seed=None)``
    softmax over the keys of fq·fk (the temperature already folded into fq), flash style (online
    softmax, the log-sum-exp kept for the backward, never an N×N tensor), query/key dim ≠ value dim,
    attention dropout from in-kernel Philox numbers keyed by (seed, batch·head, query, key), so the
    backward regenerates exactly the forward's mask.
``fidelity_attention(states_q, states_k, v, key_padding_mask=None, beta=None, dropout_p=0.0, seed=None)``
    the same softmax with scores β·|⟨ψq|ψk⟩|² computed tile by tile from the states, as two products
    of rows [Re | Im] (:mod:`qra.kernels.fidelity`).  The states are complex64 tensors of up to 256
    amplitudes; with 16-bit values they are multiplied in float16 (float32 values: float32 as three
    TF32 products, for states of up to 64 amplitudes; more take the PyTorch path).  Their
    gradients follow torch's convention for complex autograd (∂L/∂Re + i ∂L/∂Im).  β is None, a
    float, a 0-d tensor or a per-head tensor ``[H]``; a tensor that requires grad gets one.

Every function takes ``[B, H, N, ·]`` tensors of any strides and returns ``[B, H, Nq, dv]`` in v's
dtype.  When :func:`fused_available` is False for the arguments (no CUDA, no triton, an unsupported
dtype or size, or ``QRA_DISABLE_FUSED=1``) each function computes the same thing in plain PyTorch
(:mod:`qra.kernels.reference`), so callers may call them unconditionally.

Dropout: when ``dropout_p > 0`` the fused path draws its Philox seed from torch's default CPU
generator (so ``torch.manual_seed`` makes runs repeatable) unless ``seed`` is given;
:func:`dropout_keep_mask` reproduces the mask a seed gives, for tests.

``TRITON_INTERPRET=1`` (Triton's CPU interpreter) makes CPU tensors eligible too: a development aid.
"""

from __future__ import annotations

import functools
import os

import torch

from ..versioned import VersionedMemo
from . import reference

__all__ = [
    "dropout_keep_mask",
    "exponential_features",
    "exponential_pass_enabled",
    "exponential_query_key_features",
    "fidelity_attention",
    "fourier_features",
    "fourier_linear_attention",
    "fourier_query_key_features",
    "fused_available",
    "fused_device",
    "linear_attention",
    "prologue_verified",
    "softmax_attention",
    "triton_available",
]

#: the largest feature (query/key) dim and value dim the kernels take
MAX_FEATURE_DIM = 256
MAX_VALUE_DIM = 128
#: the most amplitudes the fidelity kernel takes with float32 values (wider float32 rows spill registers)
MAX_FLOAT32_STATE_DIM = 64
_REAL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_triton_ok: bool | None = None


def triton_available() -> bool:
    """True when triton imports (checked once)."""
    global _triton_ok
    if _triton_ok is None:
        try:
            import triton
            import triton.language  # noqa: F401

            _triton_ok = True
        except Exception:  # ImportError, or a broken install
            _triton_ok = False
    return _triton_ok


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def fused_device(device: torch.device) -> bool:
    """Whether the fused kernels may run on ``device``: CUDA (or the CPU under ``TRITON_INTERPRET=1``),
    triton importable, and ``QRA_DISABLE_FUSED`` not ``1``."""
    if os.environ.get("QRA_DISABLE_FUSED", "0") == "1" or not triton_available():
        return False
    return device.type == "cuda" or (device.type == "cpu" and _interpreting())


_FUSED_DTYPES = frozenset((*_REAL_DTYPES, torch.complex64, torch.bool))


def fused_available(*tensors: torch.Tensor) -> bool:
    """Whether the fused kernels can take these tensors.

    True when ``QRA_DISABLE_FUSED`` is not ``1``, triton imports, every tensor is on one CUDA device
    (or on the CPU under ``TRITON_INTERPRET=1``), every floating tensor is fp32/fp16/bf16 (complex64
    for states), 4-d tensors have a feature dim ≤ 256 (≤ 128 for values is checked by the callers)
    and no dimension is empty.  ``None`` entries (an absent mask) are ignored.
    """
    device = None
    for t in tensors:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            return False
        if device is None:  # the first tensor's device decides (the environment is read once: every call runs this)
            device = t.device
            if not fused_device(device):
                return False
        elif t.device != device:
            return False
        if t.dtype not in _FUSED_DTYPES or t.numel() == 0 or (t.dim() == 4 and t.shape[-1] > MAX_FEATURE_DIM):
            return False
    return True


def _fused_ok(fq, fk, v, key_padding_mask, *others: torch.Tensor) -> bool:
    if fq.dim() != 4 or fk.dim() != 4 or v.dim() != 4:
        return False
    if v.shape[-1] > MAX_VALUE_DIM or v.dtype not in _REAL_DTYPES:
        return False
    return fused_available(fq, fk, v, key_padding_mask, *others)


def _check(fq, fk, v, key_padding_mask) -> None:
    if fq.dim() != 4 or fk.dim() != 4 or v.dim() != 4:
        raise ValueError(f"expected [B, H, N, d] tensors; got {tuple(fq.shape)}, {tuple(fk.shape)}, {tuple(v.shape)}")
    b, h, nk, m = fk.shape
    if fq.shape[:2] != (b, h) or fq.shape[-1] != m or v.shape[:3] != (b, h, nk):
        raise ValueError(f"shape mismatch: fq {tuple(fq.shape)}, fk {tuple(fk.shape)}, v {tuple(v.shape)}")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (b, nk):
        raise ValueError(f"key_padding_mask must be [B, Nk] = {(b, nk)}, got {tuple(key_padding_mask.shape)}")


def linear_attention(
    fq: torch.Tensor,
    fk: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Non-causal linear attention φq(φkᵀV) / guard(φq·Σφk) (module docstring)."""
    _check(fq, fk, v, key_padding_mask)
    if not _fused_ok(fq, fk, v, key_padding_mask):
        return reference.linear_attention(fq, fk, v, key_padding_mask, eps)
    from .linear import fused_linear_attention

    return fused_linear_attention(fq, fk, v, key_padding_mask, eps)


def fourier_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weight: torch.Tensor,
    phase: torch.Tensor,
    scale: float,
    key_padding_mask: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """:func:`linear_attention` of φ(q), φ(k) with φ(x) = scale·cos(x·Wᵀ + phase), φ fused into the kernels.

    ``weight`` is ``[m, d]`` and ``phase`` ``[m]`` (both may require grad); q, k are ``[B, H, N, d]``.
    """
    _check(q, k, v, key_padding_mask)
    _check_fourier_map(q, weight, phase)
    fusable = _fused_ok(q, k, v, key_padding_mask, weight, phase)
    if fusable and prologue_verified(q.dtype, k.dtype, v.dtype, q.shape[-1], weight.shape[0], v.shape[-1]):
        from .fourier_linear import fused_fourier_linear_attention

        return fused_fourier_linear_attention(q, k, v, weight, phase, scale, key_padding_mask, eps)
    # φ first, then the fused linear kernel where it can run (else its PyTorch path)
    fq = reference.fourier_features(q, weight, phase, scale)
    fk = reference.fourier_features(k, weight, phase, scale)
    return linear_attention(fq, fk, v, key_padding_mask, eps)


def fourier_features(
    x: torch.Tensor,
    weight: torch.Tensor,
    phase: torch.Tensor,
    scale: float,
    head_factor: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """φ(x) = scale·cos(x·Wᵀ + phase) for x ``[B, H, N, d]``, times a per-head factor, in x's dtype.

    ``head_factor`` is None, a float, a 0-d tensor or an ``[H]`` tensor (a softmax temperature β: the queries'
    features come out as β_h·φ(q)); a tensor that requires grad gets one, as do x, W and the phases.  On CUDA one
    Triton pass each way computes it (:mod:`qra.kernels.fourier_map`); elsewhere the PyTorch reference does.
    """
    if x.dim() != 4:
        raise ValueError(f"expected x as [B, H, N, d]; got {tuple(x.shape)}")
    _check_fourier_map(x, weight, phase)
    factors = _head_factors(x, scale, head_factor)
    if not _feature_pass_fits(x, weight, phase, factors):
        return reference.fourier_features(x, weight, phase, 1.0, factors)
    from .fourier_map import fused_fourier_features

    return fused_fourier_features(x, weight, phase, factors)


def _check_weight(x: torch.Tensor, weight: torch.Tensor) -> None:
    """A random-feature map's W must be [m, d] for inputs x [..., d]."""
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight must be [m, d={x.shape[-1]}]; got {tuple(weight.shape)}")


def _check_fourier_map(x: torch.Tensor, weight: torch.Tensor, phase: torch.Tensor) -> None:
    """W [m, d] and the phases [m] of a Fourier map for inputs x [..., d]."""
    _check_weight(x, weight)
    if tuple(phase.shape) != (weight.shape[0],):
        raise ValueError(f"phase must be [m={weight.shape[0]}] as weight [m, d]; got {tuple(phase.shape)}")


def _pair_factors(
    q: torch.Tensor, k: torch.Tensor, weight: torch.Tensor, scale: float, query_factor, *params: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The queries' and the keys' per-head factors when one Triton pass can take both operands (the same dtype, its
    device and tile widths), else None: the caller then makes two single calls.  Checks the operands' shapes; the
    callers check the map's (``params``: its tensors besides W)."""
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"expected q [B, H, Nq, d] and k [B, H, Nk, d]; got {tuple(q.shape)}, {tuple(k.shape)}")
    if q.dtype != k.dtype:
        return None
    factors = _head_factors(q, scale, query_factor), _head_factors(k, scale, None)
    return factors if _feature_pass_fits(q, weight, *params, *factors, k) else None


def fourier_query_key_features(
    q: torch.Tensor,
    k: torch.Tensor,
    weight: torch.Tensor,
    phase: torch.Tensor,
    scale: float,
    query_factor: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c·φ(q), φ(k)) of :func:`fourier_features` for q ``[B, H, Nq, d]`` and k ``[B, H, Nk, d]``, c the queries'
    per-head factor (a softmax temperature β), from one Triton pass each way for both.

    Why: a patched softmax layer needs both, and on the H200's host each autograd Function and launch costs tens
    of µs (results/bench/README.md, round 21); one call for both halves them.  Where the pass cannot take the pair
    (other dtypes for q and k, no CUDA) this is two :func:`fourier_features` calls.
    """
    _check_fourier_map(q, weight, phase)
    factors = _pair_factors(q, k, weight, scale, query_factor, phase)
    if factors is None:
        return fourier_features(q, weight, phase, scale, query_factor), fourier_features(k, weight, phase, scale)
    from .fourier_map import fused_fourier_features

    return fused_fourier_features(q, weight, phase, factors[0], k, factors[1])


def exponential_query_key_features(
    q: torch.Tensor,
    k: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: float,
    scale: float,
    query_factor: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c·φ(q), φ(k)) of :func:`exponential_features` without a stabiliser (the softmax mode's), both from one
    Triton pass each way (:func:`fourier_query_key_features` says why); elsewhere two calls."""
    _check_weight(q, weight)
    factors = _pair_factors(q, k, weight, scale, query_factor)
    if factors is None:
        return (exponential_features(q, weight, norm_weight, scale, query_factor),
                exponential_features(k, weight, norm_weight, scale))  # fmt: skip
    from .fourier_map import fused_exponential_features

    return fused_exponential_features(q, weight, norm_weight, factors[0], "none", None, k, factors[1])


def _head_factors(x: torch.Tensor, scale: float, head_factor: torch.Tensor | float | None) -> torch.Tensor:
    """scale times the per-head factor, as float32 ``[H]`` for x ``[B, H, N, d]`` (a float is filled on the device:
    copied from the host it would wait for the GPU's queue)."""
    heads = x.shape[1]
    if isinstance(head_factor, torch.Tensor):
        if head_factor.numel() not in (1, heads):
            shape = tuple(head_factor.shape)
            raise ValueError(f"head_factor must be a scalar or one value per head ({heads}), got {shape}")
        # kept while β is unchanged: formed on every call it cost a launch and an allocation in every patched
        # softmax layer, host time that sets a patched train step's pace whenever the host is the slower side
        # (results/bench/README.md, round 18); identity in the key, checked again by the memo
        return _SCALED_FACTORS.get((id(head_factor), scale, heads, x.device),
                                   lambda: _scaled_factors(head_factor, scale, heads, x.device), (head_factor,))
    value = scale * (1.0 if head_factor is None else float(head_factor))
    if torch.is_inference_mode_enabled():  # its tensors could not be saved for a backward outside it
        return torch.full((heads,), value, device=x.device)
    return _constant_factors(heads, value, x.device)


def _scaled_factors(head_factor: torch.Tensor, scale: float, heads: int, device: torch.device) -> torch.Tensor:
    return (scale * head_factor.to(device=device, dtype=torch.float32)).reshape(-1).expand(heads).contiguous()


#: scale · β of tensor temperatures β (read-only by contract, as :func:`_constant_factors`)
_SCALED_FACTORS: VersionedMemo[torch.Tensor] = VersionedMemo(limit=64)


@functools.lru_cache(maxsize=64)
def _constant_factors(heads: int, value: float, device: torch.device) -> torch.Tensor:
    """float32 ``[heads]`` filled with ``value``, kept: the kernels only read it, and a fill on each call costs
    the host a launch.  Read-only by contract."""
    return torch.full((heads,), value, device=device)


def _feature_pass_fits(x: torch.Tensor, weight: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether the Triton feature pass takes x ``[B, H, N, d]`` and W ``[m, d]``: both dims within its tiles."""
    return fused_available(x, weight, *others) and x.shape[-1] <= MAX_FEATURE_DIM and weight.shape[0] <= MAX_FEATURE_DIM


#: Whether the attention modes hand FAVOR+ maps to :func:`exponential_features` by default: yes, since its Triton
#: pass passed its GPU tests on an H200 and beat the PyTorch path there in both modes, at N = 512 and 32,768
#: (results/bench/attention-performer-round11.json); ``QRA_EXPONENTIAL_PASS=0`` turns it off.
EXPONENTIAL_PASS_BY_DEFAULT = True
EXPONENTIAL_PASS_ENV = "QRA_EXPONENTIAL_PASS"


def exponential_pass_enabled() -> bool:
    """Whether attention dispatch takes the exponential feature pass (:data:`EXPONENTIAL_PASS_BY_DEFAULT`, or the
    environment variable ``QRA_EXPONENTIAL_PASS`` set to ``1``; ``0`` turns it off)."""
    setting = os.environ.get(EXPONENTIAL_PASS_ENV)
    return EXPONENTIAL_PASS_BY_DEFAULT if setting is None else setting == "1"


#: the stabilisers :func:`exponential_features` takes
STABILIZERS = ("none", "row", "sequence")


def exponential_features(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: float,
    scale: float,
    head_factor: torch.Tensor | float | None = None,
    stabilizer: str = "none",
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """FAVOR+ positive features φ(x) = scale·exp(x·Wᵀ − η‖x‖² − s) for x ``[B, H, N, d]``, times a per-head factor.

    η is ``norm_weight``.  ``stabilizer`` picks s, which autograd treats as a constant (it cancels in linear
    attention and only keeps exp() in range): ``none`` (0), ``row`` (each row's max over the features: queries)
    or ``sequence`` (the max over the real keys of each sequence and head, ``key_padding_mask`` ``[B, N]`` saying
    which are real: keys).  Returned in x's dtype (fp32 for fp16 x, whose range exponentials outrun).  On CUDA one
    Triton pass each way computes it (:mod:`qra.kernels.fourier_map`), and with ``sequence`` one more pass finds
    the maxima; elsewhere the PyTorch reference does.
    """
    if x.dim() != 4:
        raise ValueError(f"expected x as [B, H, N, d]; got {tuple(x.shape)}")
    _check_weight(x, weight)
    if stabilizer not in STABILIZERS:
        raise ValueError(f"unknown stabilizer {stabilizer!r}; expected one of {', '.join(STABILIZERS)}")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (x.shape[0], x.shape[2]):
        raise ValueError(f"key_padding_mask must be [B, N] = {(x.shape[0], x.shape[2])}, got "
                         f"{tuple(key_padding_mask.shape)}")  # fmt: skip
    factors = _head_factors(x, scale, head_factor)
    if not _feature_pass_fits(x, weight, factors, key_padding_mask):
        return reference.exponential_features(x, weight, norm_weight, 1.0, factors, stabilizer, key_padding_mask)
    from .fourier_map import fused_exponential_features

    return fused_exponential_features(x, weight, norm_weight, factors, stabilizer, key_padding_mask)


def _tile(n: int) -> int:
    """The kernels' tile width for a dim of n: the next power of two, at least 16 (``_util.pow2`` without triton)."""
    return max(16, 1 << (int(n) - 1).bit_length())


def _tiles(query_tiles, feature_tiles, value_tiles) -> set[tuple[int, int, int]]:
    return {(q, f, v) for q in query_tiles for f in feature_tiles for v in value_tiles}


#: (query/key tile, feature tile, value tile) where the Fourier-prologue kernel passed its tests on the H200
#: (results/bench/fourier-tests-h200.txt), by the dtype it computes in
PROLOGUE_VERIFIED_TILES = {
    torch.float32: _tiles([32], [32, 64, 128], [32, 64]) | {(32, 256, 32)} | _tiles([64], [128, 256], [32, 64]),
    torch.bfloat16: _tiles([32], [32, 64, 128], [32, 64]) | {(32, 256, 32)} | _tiles([64], [128, 256], [64]),
}


def prologue_verified(q_dtype, k_dtype, v_dtype, head_dim: int, features: int, value_dim: int) -> bool:
    """Whether the Fourier-prologue kernel passed its tests on the H200 for these dtypes and tile widths.

    bf16 inputs with 64-wide query/key tiles and 32-wide value tiles gave wrong outputs and an illegal
    memory access there (Triton 3.6; the cause was not found), so those shapes, and shapes no test
    covered, compute φ first and run the fused linear kernel on it (the same numbers, with the memory
    and time of an unfused prologue).  fp16 inputs run in fp32, as in the launcher.
    """
    same = q_dtype == k_dtype == v_dtype and v_dtype != torch.float16
    dtype = v_dtype if same else torch.float32
    tiles = (_tile(head_dim), _tile(features), _tile(value_dim))
    return tiles in PROLOGUE_VERIFIED_TILES.get(dtype, set())


def softmax_attention(
    fq: torch.Tensor,
    fk: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    *,
    seed: int | None = None,
) -> torch.Tensor:
    """softmax(fq·fkᵀ) V over the unmasked keys, flash style, with attention dropout (module docstring)."""
    _check(fq, fk, v, key_padding_mask)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if not _fused_ok(fq, fk, v, key_padding_mask):
        return reference.softmax_attention(fq, fk, v, key_padding_mask, dropout_p)
    from .flash import fused_softmax_attention

    return fused_softmax_attention(fq, fk, v, key_padding_mask, dropout_p, seed)


def fidelity_attention(
    states_q: torch.Tensor,
    states_k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    beta: torch.Tensor | float | None = None,
    dropout_p: float = 0.0,
    *,
    seed: int | None = None,
    states_kept: bool = False,
) -> torch.Tensor:
    """softmax(β·|⟨ψq|ψk⟩|²) V over the unmasked keys from complex states (module docstring).

    ``states_kept``: the caller's promise that ``states_q`` and ``states_k`` stay alive until backward anyway
    (a circuit map's adjoint keeps them). The fused kernel then saves them, not float16 copies of its own,
    and packs them again in backward: between forward and backward a layer holds 4 bytes less per amplitude,
    token and head (8 with float32 values). Results are the same either way.
    """
    _check(states_q, states_k, v, key_padding_mask)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if isinstance(beta, torch.Tensor) and beta.numel() not in (1, states_q.shape[1]):
        raise ValueError(f"beta must be a scalar or one value per head ({states_q.shape[1]}), got {tuple(beta.shape)}")
    ok = (
        states_q.dtype == torch.complex64
        and states_k.dtype == torch.complex64
        and (v.dtype != torch.float32 or states_q.shape[-1] <= MAX_FLOAT32_STATE_DIM)
        and (not isinstance(beta, torch.Tensor) or beta.device == v.device)
        and _fused_ok(states_q, states_k, v, key_padding_mask)
    )
    if not ok:
        return reference.fidelity_attention(states_q, states_k, v, key_padding_mask, beta, dropout_p)
    from .fidelity import fused_fidelity_attention

    return fused_fidelity_attention(states_q, states_k, v, key_padding_mask, beta, dropout_p, seed, states_kept)


def dropout_keep_mask(seed: int, batch: int, heads: int, n_q: int, n_k: int, dropout_p: float, device) -> torch.Tensor:
    """The ``[B, H, Nq, Nk]`` bool keep-mask the fused softmax/fidelity kernels use for ``seed`` (for tests)."""
    from .flash import keep_mask

    return keep_mask(seed, batch, heads, n_q, n_k, dropout_p, device)
