"""Flash-style fidelity attention: softmax over the keys of β·|⟨ψq|ψk⟩|², forward and backward.

Why a kernel of its own: the overlap ⟨ψq|ψk⟩ = Σ conj(q)·k of states with D amplitudes (D padded to a power
of two, at least 16) is three real tensor-core products over D, Gauss's three-multiplication form of a
complex product.  Each state is packed once as three planes of real rows,
    queries  Q1 = Re q − Im q,  Q2 = Re q,          Q3 = Im q,
    keys     K1 = Re k,         K2 = Im k − Re k,   K3 = Re k + Im k,
and with kₜ = Qₜ·Kₜᵀ (t = 1, 2, 3)
    Re⟨ψq|ψk⟩ = k₁ + k₃,   Im⟨ψq|ψk⟩ = k₁ + k₂,   s = β_h (Re² + Im²).
So a score tile costs three products over D where the complex product written out costs four, the fidelity
is never formed as an N×N tensor, and memory is O(N).  The kernels' time follows their product count against
SDPA's (round 14's profile, results/bench/README.md): three planes cut it from 24 to 19 units a forward and
backward.  The planes are formed once per call by a Triton packing pass (which also notes the largest norm):
rows rotated on load made round 6's kernels 8–12% slower.  The rows saved for backward (when the states are
not kept) are three planes, 1.5× the two halves [Re | Im] of before; the rotated key rows that the forward
and the backward held beside those are gone.

Precision: states with 16-bit values are packed in float16 from 5 qubits on (NARROWEST_HALF_PLANES;
amplitudes lie in [−1, 1], plane values in [−2, 2]: 11 bits of mantissa, 8× bfloat16's, which keeps
β·fidelity within ~1e-3·β of the float32 value; the combined planes are rounded once more than the states,
which the tests' oracle does not do), narrower ones in float32.
With float32 values the planes are float32, multiplied as three TF32 products (float32's accuracy).  The
backward's gradient products run in float16 too, on scaled gradients g·S with S a power of two chosen per
head from a bound on |g| (:func:`gradient_scale`), so that they neither overflow nor lose the small gradients
of training without loss scaling; the fp32 sums are divided by S again (float32 values: S = 1).

Backward: one pass for δ_i = dO_i·O_i and the norms S needs, a key-block kernel for dK, dV (and dβ, fp32
atomics), a query-block kernel for dQ, both recomputing the scores.  With g_Re = 2β·Re·dS, g_Im = 2β·Im·dS,
the three products' gradients are g₁ = g_Re + g_Im, g₂ = g_Im, g₃ = g_Re, and
    ∂L/∂Re q = g₁K1 + g₂K2,   ∂L/∂Im q = g₃K3 − g₁K1,
    ∂L/∂Re k = g₁ᵀQ1 − g₂ᵀQ2 + g₃ᵀQ3,   ∂L/∂Im k = g₂ᵀQ2 + g₃ᵀQ3,
three products per tile again; the kernels store them as the complex gradients ∂L/∂Re + i ∂L/∂Im (torch's
convention), interleaved as complex64 is, so no pass over [B, H, N, D] follows (two such passes took ~0.1 ms of
a ~1 ms call at N = 512 on an H200, round 14's profile).

Dropout and key padding follow :mod:`qra.kernels.flash` exactly (the same Philox keep-mask).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch_kernel
from ._util import cdiv, dropout_scale, mask_arguments, mask_bytes, pow2
from .flash import (
    _keep,
    _key_ok,
    _launch,
    _new_seed,
    _threshold,
    accumulate_values,
    keep_at,
    program_rows,
    softmax_block,
    store_softmax_output,
)


@triton.jit
def _keep_t(seed, bh, offs_m, offs_n, Nq, Nk, threshold):
    """flash._keep's dropout mask as a [BN, BM] (key, query) tile."""
    idx = (bh.to(tl.int64) * Nq + offs_m[None, :].to(tl.int64)) * Nk + offs_n[:, None].to(tl.int64)
    return keep_at(seed, idx, threshold)


#: |g·S| stays below this (float16's largest value is 65,504)
GRADIENT_RANGE = tl.constexpr(2.0**14)


@triton.jit
def gradient_scale(NORMS_QK, NORMS_OV, beta, keep_scale):
    """A power of two S with |gₜ·S| ≤ GRADIENT_RANGE (t = 1, 2, 3) for this head, from the largest squared norms
    of the query and key states and of dO and V rows:
    |g₁| = |2β·dS|·|Re + Im| ≤ 2√2|β|·‖ψq‖‖ψk‖·p·(|dO_i·v_j| + |dO_i·O_i|)
         ≤ 4√2|β|·‖ψq‖‖ψk‖·‖dO_i‖·max‖v‖·keep_scale
    (keep_scale: dropout's 1 / (1 − p)); g₂ and g₃ are smaller.
    The exponent is read from the float's bits (exact; no approximate log2), clamped to ±60 (all-zero
    gradients: 2^60)."""
    bound = (4.0 * 1.4142135623730951 * keep_scale) * tl.abs(beta)
    bound = bound * tl.sqrt(tl.load(NORMS_QK)) * tl.sqrt(tl.load(NORMS_QK + 1))
    bound = bound * tl.sqrt(tl.load(NORMS_OV)) * tl.sqrt(tl.load(NORMS_OV + 1))
    ratio = GRADIENT_RANGE / bound
    exponent = ((ratio.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    exponent = tl.minimum(tl.maximum(exponent, -60), 60)
    return ((exponent + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _head_gradient_scale(NORMS_QK, NORMS_OV, beta, keep_scale, SCALED: tl.constexpr):
    """:func:`gradient_scale` for 16-bit planes; 1 for float32 ones (their products are float32's)."""
    if SCALED:
        return gradient_scale(NORMS_QK, NORMS_OV, beta, keep_scale)
    else:
        return 1.0


@triton.jit
def _pack_kernel(STATES, ROWS, NORM, s_b, s_h, s_n, H, N, D,
                 BR: tl.constexpr, HW: tl.constexpr, KEYS: tl.constexpr):  # fmt: skip
    """Complex states (read as float32 pairs, strides in floats) as three planes of rows [BR, 3·HW], each plane
    zero-padded from D (the module docstring: query planes, or with KEYS key planes); the largest squared row
    norm into NORM (atomic max; it starts at 0)."""
    pid, _, bh64, b, h = program_rows(H)
    offs_r = pid * BR + tl.arange(0, BR)
    offs_p = tl.arange(0, 2 * HW)  # float j of a row: Re of amplitude j // 2 if j is even, else its Im
    rmask = offs_r < N
    pairs = tl.load(
        STATES + b * s_b + h * s_h + offs_r[:, None].to(tl.int64) * s_n + offs_p[None, :],
        mask=rmask[:, None] & (offs_p < 2 * D)[None, :], other=0.0,
    )  # fmt: skip
    re, im = tl.split(tl.reshape(pairs, (BR, HW, 2)))
    dst = ROWS + (bh64 * N + offs_r)[:, None] * (3 * HW) + tl.arange(0, HW)[None, :]
    ty = ROWS.dtype.element_ty
    if KEYS:
        p1, p2, p3 = re, im - re, re + im
    else:
        p1, p2, p3 = re - im, re, im
    tl.store(dst, p1.to(ty), mask=rmask[:, None])
    tl.store(dst + HW, p2.to(ty), mask=rmask[:, None])
    tl.store(dst + 2 * HW, p3.to(ty), mask=rmask[:, None])
    tl.atomic_max(NORM, tl.max(tl.sum(pairs * pairs, axis=1), axis=0))


@triton.jit
def _planes(ROWS, offsets, mask, HW: tl.constexpr):
    """The three planes of packed rows at ``offsets`` (a row's first plane; [rows, HW] or its transpose)."""
    return (
        tl.load(ROWS + offsets, mask=mask, other=0.0),
        tl.load(ROWS + offsets + HW, mask=mask, other=0.0),
        tl.load(ROWS + offsets + 2 * HW, mask=mask, other=0.0),
    )


@triton.jit
def _overlap(x1, x2, x3, y1, y2, y3, PREC: tl.constexpr):
    """Re and Im of the overlaps from three plane products xₜ·yₜ (one side's planes and the other's,
    transposed: query × key or key × query tiles alike), as k₁ + k₃ and k₁ + k₂."""
    k1 = tl.dot(x1, y1, input_precision=PREC)
    return tl.dot(x3, y3, k1, input_precision=PREC), tl.dot(x2, y2, k1, input_precision=PREC)


@triton.jit
def _store_gradient(DST, rows, lo, hi, mask, D, HW: tl.constexpr):
    """A gradient's planes ∂L/∂Re (``lo``) and ∂L/∂Im (``hi``), [rows, HW], as the complex gradient
    ∂L/∂Re + i ∂L/∂Im (torch's convention) of rows of D amplitudes: complex64 is interleaved (re, im) pairs, so
    the kernel writes the autograd result itself, with no pass over it afterwards."""
    pairs = tl.reshape(tl.join(lo, hi), (lo.shape[0], 2 * HW))
    offs = tl.arange(0, 2 * HW)
    tl.store(DST + rows[:, None] * (2 * D) + offs[None, :], pairs, mask=mask[:, None] & (offs < 2 * D)[None, :])


@triton.jit
def _bwd_prep_kernel(
    DO, OUT, DELTA, V, NORMS,
    s_ob, s_oh, s_on, s_oc,
    s_vb, s_vh, s_vn, s_vc,
    H, Nq, Nk, DV,
    BR: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    """δ_i = dO_i·O_i (O: the fp32 output, [B·H, Nq, DV]) and the largest squared norms of dO and V rows."""
    pid, _, bh64, b, h = program_rows(H)
    offs_r = pid * BR + tl.arange(0, BR)
    offs_c = tl.arange(0, BV)
    cmask = offs_c < DV
    qmask = (offs_r < Nq)[:, None] & cmask[None, :]
    do = tl.load(DO + b * s_ob + h * s_oh + offs_r[:, None] * s_on + offs_c[None, :] * s_oc, mask=qmask, other=0.0)
    do = do.to(tl.float32)
    out = tl.load(OUT + (bh64 * Nq + offs_r[:, None]) * DV + offs_c[None, :], mask=qmask, other=0.0)
    tl.store(DELTA + bh64 * Nq + offs_r, tl.sum(do * out, axis=1), mask=offs_r < Nq)
    v = tl.load(
        V + b * s_vb + h * s_vh + offs_r[:, None] * s_vn + offs_c[None, :] * s_vc,
        mask=(offs_r < Nk)[:, None] & cmask[None, :], other=0.0,
    ).to(tl.float32)  # fmt: skip
    tl.atomic_max(NORMS, tl.max(tl.sum(do * do, axis=1), axis=0))
    tl.atomic_max(NORMS + 1, tl.max(tl.sum(v * v, axis=1), axis=0))


@triton.jit(do_not_specialize=["seed"])
def _fwd_kernel(
    QP, KP, V, OUT, OUT32, LSE, MASK, BETA,
    s_vb, s_vh, s_vn, s_vc,
    s_ob, s_oh, s_on, s_oc,
    s_mb, s_mn,
    H, Nq, Nk, DV,
    seed, threshold, scale,
    BM: tl.constexpr, BN: tl.constexpr, HW: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr, SAVE32: tl.constexpr,
):  # fmt: skip
    pid_m, bh, bh64, b, h = program_rows(H)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_f = tl.arange(0, HW)
    offs_c = tl.arange(0, BV)
    cmask = offs_c < DV
    mmask = offs_m < Nq
    KP = KP + bh64 * Nk * (3 * HW)  # this (batch, head)'s rows; offsets within them fit int32
    q1, q2, q3 = _planes(QP + bh64 * Nq * (3 * HW), offs_m[:, None] * (3 * HW) + offs_f[None, :], mmask[:, None], HW)
    beta2 = tl.load(BETA + h) * 1.4426950408889634  # base-2 softmax
    v_base = V + b * s_vb + h * s_vh
    m_i = tl.full((BM,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BM,), dtype=tl.float32)
    acc = tl.zeros((BM, BV), dtype=tl.float32)
    for start in range(0, Nk, BN):
        offs_n = start + tl.arange(0, BN)
        nmask = offs_n < Nk
        k1, k2, k3 = _planes(KP, offs_n[None, :] * (3 * HW) + offs_f[:, None], nmask[None, :], HW)  # [HW, BN]
        a, c = _overlap(q1, q2, q3, k1, k2, k3, PREC)
        ok = _key_ok(MASK, b, s_mb, s_mn, offs_n, Nk, HAS_MASK)
        s = tl.where(ok[None, :], beta2 * (a * a + c * c), float("-inf"))
        m_i, l_i, alpha, p = softmax_block(s, m_i, l_i)
        keep = _keep(seed, bh, offs_m, offs_n, Nq, Nk, threshold) if DROPOUT else None
        acc = accumulate_values(acc, alpha, p, v_base + offs_n[:, None] * s_vn + offs_c[None, :] * s_vc,
                                nmask[:, None] & cmask[None, :], keep, scale, DROPOUT, VPREC)  # fmt: skip
    store_softmax_output(
        acc, m_i, l_i, OUT, b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_c[None, :] * s_oc,
        OUT32, (bh64 * Nq + offs_m[:, None]) * DV + offs_c[None, :], LSE, bh64 * Nq + offs_m,
        mmask[:, None] & cmask[None, :], mmask, SAVE32,
    )  # fmt: skip


@triton.jit(do_not_specialize=["seed"])
def _bwd_kv_kernel(
    QP, KP, V, DO, LSE, DELTA, MASK, BETA, NORMS_QK, NORMS_OV, DK, DV_, DBETA,
    s_vb, s_vh, s_vn, s_vc,
    s_ob, s_oh, s_on, s_oc,
    s_mb, s_mn,
    s_wb, s_wh, s_wn, s_wc,
    H, Nq, Nk, DV, D,
    seed, threshold, scale,
    BM: tl.constexpr, BN: tl.constexpr, HW: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr, BETA_GRAD: tl.constexpr,
    SCALED: tl.constexpr,
):  # fmt: skip
    """One key block: its tiles are computed transposed ([BN, BM], keys × queries), as dK and dV need them."""
    pid_n, bh, bh64, b, h = program_rows(H)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_f = tl.arange(0, HW)
    offs_c = tl.arange(0, BV)
    cmask = offs_c < DV
    nmask = offs_n < Nk
    QP = QP + bh64 * Nq * (3 * HW)  # this (batch, head)'s rows; offsets within them fit int32
    k1, k2, k3 = _planes(KP + bh64 * Nk * (3 * HW), offs_n[:, None] * (3 * HW) + offs_f[None, :], nmask[:, None], HW)
    v = tl.load(  # [BN, BV]
        V + b * s_vb + h * s_vh + offs_n[:, None] * s_vn + offs_c[None, :] * s_vc,
        mask=nmask[:, None] & cmask[None, :],
        other=0.0,
    )
    beta = tl.load(BETA + h)
    beta2 = beta * 1.4426950408889634
    gscale = _head_gradient_scale(NORMS_QK, NORMS_OV, beta, scale, SCALED)
    twice = 2.0 * beta * gscale
    ok = _key_ok(MASK, b, s_mb, s_mn, offs_n, Nk, HAS_MASK)
    d1 = tl.zeros((BN, HW), dtype=tl.float32)  # g₁ᵀQ1, g₂ᵀQ2, g₃ᵀQ3
    d2 = tl.zeros((BN, HW), dtype=tl.float32)
    d3 = tl.zeros((BN, HW), dtype=tl.float32)
    dv = tl.zeros((BN, BV), dtype=tl.float32)
    dbeta = tl.zeros((BN,), dtype=tl.float32)
    o_base = DO + b * s_ob + h * s_oh
    for start in range(0, Nq, BM):
        offs_m = start + tl.arange(0, BM)
        mmask = offs_m < Nq
        q1, q2, q3 = _planes(QP, offs_m[None, :] * (3 * HW) + offs_f[:, None], mmask[None, :], HW)  # [HW, BM]
        a, c = _overlap(k1, k2, k3, q1, q2, q3, PREC)  # Re, Im ⟨ψq|ψk⟩ as [BN, BM]
        fid = a * a + c * c
        lse = tl.load(LSE + bh64 * Nq + offs_m, mask=mmask, other=float("inf"))
        p = tl.where(ok[:, None], tl.exp2(beta2 * fid - lse[None, :]), 0.0)  # 0 for padding keys, empty rows
        do = tl.load(
            o_base + offs_m[:, None] * s_on + offs_c[None, :] * s_oc, mask=mmask[:, None] & cmask[None, :], other=0.0
        )
        # v_j·dO_i from dO loaded again as [BV, BM]: tl.trans(do) here computed wrong products for 32-wide
        # values on an H200 (Triton 3.6: results/bench/gpu-tests-fidelity-h200-round15-*.txt)
        do_t = tl.load(o_base + offs_m[None, :] * s_on + offs_c[:, None] * s_oc,
                       mask=mmask[None, :] & cmask[:, None], other=0.0)  # fmt: skip
        dp = tl.dot(v, do_t, input_precision=VPREC)
        pd = p
        if DROPOUT:
            z = tl.where(_keep_t(seed, bh, offs_m, offs_n, Nq, Nk, threshold), scale, 0.0)
            pd = p * z
            dp = dp * z
        dv = tl.dot(pd.to(do.dtype), do, dv, input_precision=VPREC)
        delta = tl.load(DELTA + bh64 * Nq + offs_m, mask=mmask, other=0.0)
        ds = p * (dp - delta[None, :])  # ∂L/∂score
        if BETA_GRAD:
            dbeta += tl.sum(ds * fid, axis=1)
        g = twice * ds
        g_re, g_im = g * a, g * c
        d1 = tl.dot((g_re + g_im).to(q1.dtype), tl.trans(q1), d1, input_precision=PREC)
        d2 = tl.dot(g_im.to(q2.dtype), tl.trans(q2), d2, input_precision=PREC)
        d3 = tl.dot(g_re.to(q3.dtype), tl.trans(q3), d3, input_precision=PREC)
    _store_gradient(DK + bh64 * Nk * (2 * D), offs_n, (d1 - d2 + d3) / gscale, (d2 + d3) / gscale, nmask, D, HW)
    if BETA_GRAD:
        tl.atomic_add(DBETA + h, tl.sum(dbeta, axis=0))
    tl.store(
        DV_ + b * s_wb + h * s_wh + offs_n[:, None] * s_wn + offs_c[None, :] * s_wc,
        dv.to(DV_.dtype.element_ty),
        mask=nmask[:, None] & cmask[None, :],
    )


@triton.jit(do_not_specialize=["seed"])
def _bwd_q_kernel(
    QP, KP, V, DO, LSE, DELTA, MASK, BETA, NORMS_QK, NORMS_OV, DQ,
    s_vb, s_vh, s_vn, s_vc,
    s_ob, s_oh, s_on, s_oc,
    s_mb, s_mn,
    H, Nq, Nk, DV, D,
    seed, threshold, scale,
    BM: tl.constexpr, BN: tl.constexpr, HW: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr, SCALED: tl.constexpr,
):  # fmt: skip
    pid_m, bh, bh64, b, h = program_rows(H)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_f = tl.arange(0, HW)
    offs_c = tl.arange(0, BV)
    cmask = offs_c < DV
    mmask = offs_m < Nq
    KP = KP + bh64 * Nk * (3 * HW)
    q1, q2, q3 = _planes(QP + bh64 * Nq * (3 * HW), offs_m[:, None] * (3 * HW) + offs_f[None, :], mmask[:, None], HW)
    do = tl.load(
        DO + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_c[None, :] * s_oc,
        mask=mmask[:, None] & cmask[None, :],
        other=0.0,
    )
    lse = tl.load(LSE + bh64 * Nq + offs_m, mask=mmask, other=float("inf"))
    delta = tl.load(DELTA + bh64 * Nq + offs_m, mask=mmask, other=0.0)
    beta = tl.load(BETA + h)
    beta2 = beta * 1.4426950408889634
    gscale = _head_gradient_scale(NORMS_QK, NORMS_OV, beta, scale, SCALED)
    twice = 2.0 * beta * gscale
    d1 = tl.zeros((BM, HW), dtype=tl.float32)  # g₁K1, g₂K2, g₃K3
    d2 = tl.zeros((BM, HW), dtype=tl.float32)
    d3 = tl.zeros((BM, HW), dtype=tl.float32)
    v_base = V + b * s_vb + h * s_vh
    for start in range(0, Nk, BN):
        offs_n = start + tl.arange(0, BN)
        nmask = offs_n < Nk
        k1, k2, k3 = _planes(KP, offs_n[None, :] * (3 * HW) + offs_f[:, None], nmask[None, :], HW)  # [HW, BN]
        a, c = _overlap(q1, q2, q3, k1, k2, k3, PREC)
        ok = _key_ok(MASK, b, s_mb, s_mn, offs_n, Nk, HAS_MASK)
        p = tl.where(ok[None, :], tl.exp2(beta2 * (a * a + c * c) - lse[:, None]), 0.0)
        v_t = tl.load(
            v_base + offs_n[None, :] * s_vn + offs_c[:, None] * s_vc, mask=nmask[None, :] & cmask[:, None], other=0.0
        )
        dp = tl.dot(do, v_t, input_precision=VPREC)
        if DROPOUT:
            dp = tl.where(_keep(seed, bh, offs_m, offs_n, Nq, Nk, threshold), dp * scale, 0.0)
        g = twice * p * (dp - delta[:, None])
        g_re, g_im = g * a, g * c
        d1 = tl.dot((g_re + g_im).to(k1.dtype), tl.trans(k1), d1, input_precision=PREC)
        d2 = tl.dot(g_im.to(k2.dtype), tl.trans(k2), d2, input_precision=PREC)
        d3 = tl.dot(g_re.to(k3.dtype), tl.trans(k3), d3, input_precision=PREC)
    _store_gradient(DQ + bh64 * Nq * (2 * D), offs_m, (d1 + d2) / gscale, (d3 - d1) / gscale, mmask, D, HW)


#: (BM, BN, warps, stages) by (plane width, float16 planes) for the forward, the key-block (dK, dV) and the
#: query-block (dQ) backward kernels.  Float16, width 64 (6 qubits): chosen on an H200 by the GPU's own time
#: (experiments/device/fidelity_tiles.py, results/bench/fidelity-tiles-graph-h200-round16.json); the others by
#: ptxas's register and spill report for sm_90 (float32 planes need ≥ 64-row products).  Float16 widths without
#: an entry take small tiles; float32 planes are at most 64 wide (``qra.kernels.MAX_FLOAT32_STATE_DIM``).
FORWARD_TILES: dict[tuple[int, bool], tuple[int, int, int, int]] = {
    (32, True): (128, 64, 8, 2),
    (64, True): (128, 64, 8, 2),
    (128, True): (64, 64, 8, 2),
    **{(width, False): (64, 32, 4, 1) for width in (16, 32, 64)},
}
BACKWARD_KV_TILES: dict[tuple[int, bool], tuple[int, int, int, int]] = {
    (32, True): (32, 64, 4, 2),
    (64, True): (32, 64, 4, 3),
    (128, True): (32, 32, 8, 1),
    **{(width, False): (16, 64, 4, 1) for width in (16, 32, 64)},
}
BACKWARD_Q_TILES: dict[tuple[int, bool], tuple[int, int, int, int]] = {
    (32, True): (64, 32, 4, 2),
    (64, True): (64, 64, 4, 2),
    (128, True): (32, 32, 8, 1),
    **{(width, False): (64, 16, 4, 1) for width in (16, 32, 64)},
}
_SMALL_TILES = (32, 32, 4, 1)


def _tiles(table: dict, width: int, half: bool) -> tuple[int, int, int, int]:
    return table.get((width, half), _SMALL_TILES)


#: rows per program of the packing pass and of the backward's δ pass
_ROWS_PER_PROGRAM = 32


def plane_width(dim: int) -> int:
    """Amplitudes per plane: D padded to a power of two, at least 16 (a tensor-core product's shortest depth)."""
    return pow2(dim, floor=16)


def pack_states(
    states: torch.Tensor, width: int, dtype: torch.dtype, norm: torch.Tensor, keys: bool = False
) -> torch.Tensor:
    """[B, H, N, D] complex64 states as contiguous real rows [B·H, N, 3·width] of ``dtype``: the three query
    planes (Re − Im, Re, Im), or with ``keys`` the key planes (Re, Im − Re, Re + Im), each zero-padded from D to
    ``width``, in one pass that also raises ``norm`` (1 element) to the largest squared ‖ψ‖."""
    bsz, heads, n, dim = states.shape
    if states.stride(-1) != 1:
        states = states.contiguous()
    pairs = torch.view_as_real(states)
    rows = torch.empty(bsz * heads, n, 3 * width, device=states.device, dtype=dtype)
    launch_kernel(_pack_kernel, (cdiv(n, _ROWS_PER_PROGRAM), bsz * heads), (pairs, rows, norm),
                  (*pairs.stride()[:3], heads, n, dim), BR=_ROWS_PER_PROGRAM, HW=width, KEYS=keys)  # fmt: skip
    return rows


class _FidelityAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, states_q, states_k, v, mask, beta, dropout_p, seed, states_kept):
        bsz, heads, nq, dim = states_q.shape
        nk, dv = states_k.shape[2], v.shape[3]
        half = v.dtype != torch.float32
        width = plane_width(dim)
        half_planes = _half_planes(half, width)
        plane = _plane(half_planes)
        norms_qk = torch.zeros(2, device=v.device, dtype=torch.float32)  # max ‖ψq‖², max ‖ψk‖²
        qp = pack_states(states_q, width, plane, norms_qk[0:1])
        kp = pack_states(states_k, width, plane, norms_qk[1:2], keys=True)
        bv = pow2(dv)
        bm, bn, warps, stages = _tiles(FORWARD_TILES, width, half_planes)
        out = torch.empty(bsz, heads, nq, dv, device=v.device, dtype=v.dtype)
        lse = torch.empty(bsz * heads, nq, device=v.device, dtype=torch.float32)
        out32 = torch.empty(bsz * heads, nq, dv, device=v.device, dtype=torch.float32) if half else out
        m, m_strides = mask_arguments(mask, lse)
        dropout = dropout_p > 0
        scale = dropout_scale(dropout_p)
        tensors = (qp, kp, v, out, out32, lse, m, beta)
        scalars = (*v.stride(), *out.stride(), *m_strides, heads, nq, nk, dv, seed, _threshold(dropout_p), scale)
        _launch(
            _fwd_kernel, lambda bm_, bn_: (cdiv(nq, bm_), bsz * heads), tensors, scalars, bm, bn, warps, stages,
            HW=width, BV=bv, HAS_MASK=mask is not None, DROPOUT=dropout, PREC=_precision(half_planes),
            VPREC=_precision(half), SAVE32=half,
        )  # fmt: skip
        # the states when their producer keeps them anyway (packed again in backward), else the packed rows
        saved = (states_q, states_k) if states_kept else (qp, kp)
        ctx.save_for_backward(*saved, v, mask, beta, out32, lse, norms_qk)
        ctx.cfg = (dropout_p, seed, half, width, states_q.shape, states_k.shape, ctx.needs_input_grad[4], states_kept)
        return out

    @staticmethod
    def backward(ctx, grad):
        saved_q, saved_k, v, mask, beta, out, lse, norms_qk = ctx.saved_tensors
        dropout_p, seed, half, width, q_shape, k_shape, beta_grad, states_kept = ctx.cfg
        half_planes = _half_planes(half, width)
        qp, kp = _pack_again(saved_q, saved_k, width, _plane(half_planes)) if states_kept else (saved_q, saved_k)
        del saved_q, saved_k
        bsz, heads, nq, _ = q_shape
        nk, dv = k_shape[2], v.shape[3]
        bv = pow2(dv)
        grad = grad.to(v.dtype)
        scratch = torch.zeros(2 + heads, device=v.device, dtype=torch.float32)
        norms_ov, dbeta = scratch[:2], scratch[2:]  # max ‖dO‖², max ‖v‖²; dβ
        delta = torch.empty(bsz * heads, nq, device=v.device, dtype=torch.float32)
        rows = cdiv(max(nq, nk), _ROWS_PER_PROGRAM)
        launch_kernel(_bwd_prep_kernel, (rows, bsz * heads), (grad, out, delta, v, norms_ov),
                      (*grad.stride(), *v.stride(), heads, nq, nk, dv), BR=_ROWS_PER_PROGRAM, BV=bv)  # fmt: skip
        scale = dropout_scale(dropout_p)
        m, m_strides = mask_arguments(mask, lse)
        dropout = dropout_p > 0
        dk = torch.empty(k_shape, device=v.device, dtype=torch.complex64)
        dq = torch.empty(q_shape, device=v.device, dtype=torch.complex64)
        dvv = torch.empty_like(v)
        common = dict(
            HW=width, BV=bv, HAS_MASK=mask is not None, DROPOUT=dropout, PREC=_precision(half_planes),
            VPREC=_precision(half), SCALED=half_planes,
        )  # fmt: skip
        tail = (heads, nq, nk, dv, q_shape[-1], seed, _threshold(dropout_p), scale)
        bm, bn, warps, stages = _tiles(BACKWARD_KV_TILES, width, half_planes)
        _launch(
            _bwd_kv_kernel, lambda bm_, bn_: (cdiv(nk, bn_), bsz * heads),
            (qp, kp, v, grad, lse, delta, m, beta, norms_qk, norms_ov, torch.view_as_real(dk), dvv, dbeta),
            (*v.stride(), *grad.stride(), *m_strides, *dvv.stride(), *tail), bm, bn, warps, stages,
            BETA_GRAD=beta_grad, **common,
        )  # fmt: skip
        bm, bn, warps, stages = _tiles(BACKWARD_Q_TILES, width, half_planes)
        _launch(
            _bwd_q_kernel, lambda bm_, bn_: (cdiv(nq, bm_), bsz * heads),
            (qp, kp, v, grad, lse, delta, m, beta, norms_qk, norms_ov, torch.view_as_real(dq)),
            (*v.stride(), *grad.stride(), *m_strides, *tail), bm, bn, warps, stages, **common,
        )  # fmt: skip
        return dq, dk, dvv, None, (dbeta if beta_grad else None), None, None, None


#: the narrowest planes packed in float16 for 16-bit values; narrower ones (≤ 4 qubits) are float32, because
#: there the amplitudes are large and the rounded plane sums moved outputs by 0.6% and dβ by 1% of their scale at
#: β = 32 with float16 planes (on an H200, results/bench/README.md round 15), against 0.03% and 0.25% with the
#: two-product kernels; the products of such narrow states are cheap in any precision
NARROWEST_HALF_PLANES = 32


def _half_planes(half: bool, width: int) -> bool:
    """Whether the planes are float16: 16-bit values and planes at least NARROWEST_HALF_PLANES wide."""
    return half and width >= NARROWEST_HALF_PLANES


def _plane(half_planes: bool) -> torch.dtype:
    """The packed rows' dtype: float16 where :func:`_half_planes` says so, else float32."""
    return torch.float16 if half_planes else torch.float32


def _pack_again(states_q, states_k, width: int, plane: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward's packed rows of saved states, formed again in backward (the packing is exact, so they are
    the same rows); the norms it raises are the forward's, already kept."""
    scratch = torch.zeros(2, device=states_q.device, dtype=torch.float32)
    return pack_states(states_q, width, plane, scratch[0:1]), pack_states(states_k, width, plane, scratch[1:2], True)


def _precision(half: bool) -> str:
    """16-bit operands multiply natively; float32 ones as three TF32 products (float32's accuracy on tensor
    cores; IEEE products on CUDA cores compiled to kilobytes of register spills)."""
    return "tf32" if half else "tf32x3"


def fused_fidelity_attention(
    states_q, states_k, v, key_padding_mask=None, beta=None, dropout_p: float = 0.0, seed=None,
    states_kept: bool = False,
) -> torch.Tensor:
    """The Triton path of :func:`qra.kernels.fidelity_attention` (arguments already checked)."""
    heads = states_q.shape[1]
    if beta is None:
        beta_h = torch.ones(heads, device=v.device, dtype=torch.float32)
    elif isinstance(beta, torch.Tensor):
        beta_h = beta.to(device=v.device, dtype=torch.float32).reshape(-1).expand(heads).contiguous()
    else:
        beta_h = torch.full((heads,), float(beta), device=v.device, dtype=torch.float32)
    seed = (_new_seed() if seed is None else int(seed)) if dropout_p > 0 else 0
    mask = mask_bytes(key_padding_mask, v.device)
    return _FidelityAttention.apply(states_q, states_k, v, mask, beta_h, float(dropout_p), seed, bool(states_kept))
