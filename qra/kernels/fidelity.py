"""Flash-style fidelity attention: softmax over the keys of β·|⟨ψq|ψk⟩|², forward and backward.

Why a kernel of its own: with the states packed as real rows P(ψ) = [Re ψ | Im ψ] (width 2·2ⁿ) and
rotated rows P(−iψ) = [Im ψ | −Re ψ], the overlap is two ordinary products,
    A = P(ψq)·P(ψk)ᵀ = Re⟨ψq|ψk⟩,   C = P(ψq)·P(−iψk)ᵀ = Im⟨ψq|ψk⟩,   s = β_h (A² + C²),
so each score tile costs two tensor-core products over 2·2ⁿ, the fidelity is never formed as an
N×N tensor, and memory is O(N).  Packing is one Triton pass per state tensor (the keys' pass also writes
their rotated rows, and each notes its largest norm); the kernels read contiguous rows.  Measured on an H200
(results/bench/README.md, round 6): rows rotated on load made the kernels 8–12% slower, complex gradients
stored in place from the kernels the backward ones 40–91% slower, so neither is done.

Precision: states with 16-bit values are packed in float16 (amplitudes lie in [−1, 1]: 11 bits of
mantissa, 8× bfloat16's, which keeps β·fidelity within ~1e-3·β of the float32 value).  With float32
values the rows are float32, multiplied as three TF32 products (float32's accuracy).  The backward's
gradient products run in float16 too, on dA·S and dC·S with S a power of two chosen per head from a
bound on |dA| (:func:`gradient_scale`), so that they neither overflow nor lose the small gradients of
training without loss scaling; the fp32 sums are divided by S again (float32 values: S = 1).

Backward: one pass for δ_i = dO_i·O_i and the norms S needs, one for the rotated rows and S, a key-block
kernel for dK, dV (and dβ, fp32 atomics), a query-block kernel for dQ, both recomputing the scores.
With dA = 2β·A·dS and dC = 2β·C·dS,
    dPq = dA·P(ψk) + dC·P(−iψk),   dPk = dAᵀ·P(ψq) + dCᵀ·P(iψq),
and the packed gradients become complex ones (∂L/∂Re + i ∂L/∂Im, torch's convention).

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


#: |dA·S| stays below this (float16's largest value is 65,504)
GRADIENT_RANGE = tl.constexpr(2.0**14)


@triton.jit
def gradient_scale(NORMS_QK, NORMS_OV, beta, keep_scale):
    """A power of two S with |dA·S|, |dC·S| ≤ GRADIENT_RANGE for this head, from the largest squared norms of
    the query and key states and of dO and V rows:
    |dA| = |2β·A·dS| ≤ 2|β|·‖ψq‖‖ψk‖·p·(|dO_i·v_j| + |dO_i·O_i|) ≤ 4|β|·‖ψq‖‖ψk‖·‖dO_i‖·max‖v‖·keep_scale
    (keep_scale: dropout's 1 / (1 − p)).
    The exponent is read from the float's bits (exact; no approximate log2), clamped to ±60 (all-zero
    gradients: 2^60)."""
    bound = (4.0 * keep_scale) * tl.abs(beta)
    bound = bound * tl.sqrt(tl.load(NORMS_QK)) * tl.sqrt(tl.load(NORMS_QK + 1))
    bound = bound * tl.sqrt(tl.load(NORMS_OV)) * tl.sqrt(tl.load(NORMS_OV + 1))
    ratio = GRADIENT_RANGE / bound
    exponent = ((ratio.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    exponent = tl.minimum(tl.maximum(exponent, -60), 60)
    return ((exponent + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _store_halves(ROWS, row_off, lo, hi, rmask, BF: tl.constexpr):
    """Write a row block's halves: columns [0, BF/2) from lo, [BF/2, BF) from hi."""
    offs_a = tl.arange(0, BF // 2)
    dst = ROWS + row_off[:, None] * BF + offs_a[None, :]
    tl.store(dst, lo.to(ROWS.dtype.element_ty), mask=rmask[:, None])
    tl.store(dst + BF // 2, hi.to(ROWS.dtype.element_ty), mask=rmask[:, None])


@triton.jit
def _pack_kernel(STATES, ROWS, ROT, NORM, s_b, s_h, s_n, H, N, D,
                 BR: tl.constexpr, BF: tl.constexpr, ROTATED: tl.constexpr):  # fmt: skip
    """Complex states (read as float32 pairs, strides in floats) as packed rows P(ψ) = [Re | Im] of width BF,
    each half zero-padded from D, and with ROTATED also P(−iψ) = [Im | −Re]; the largest squared row norm
    into NORM (atomic max; it starts at 0)."""
    pid, _, bh64, b, h = program_rows(H)
    offs_r = pid * BR + tl.arange(0, BR)
    offs_p = tl.arange(0, BF)  # float j of a row: Re of amplitude j // 2 if j is even, else its Im
    rmask = offs_r < N
    pairs = tl.load(
        STATES + b * s_b + h * s_h + offs_r[:, None].to(tl.int64) * s_n + offs_p[None, :],
        mask=rmask[:, None] & (offs_p < 2 * D)[None, :], other=0.0,
    )  # fmt: skip
    re, im = tl.split(tl.reshape(pairs, (BR, BF // 2, 2)))
    row_off = bh64 * N + offs_r
    _store_halves(ROWS, row_off, re, im, rmask, BF)
    if ROTATED:
        _store_halves(ROT, row_off, im, -re, rmask, BF)
    tl.atomic_max(NORM, tl.max(tl.sum(pairs * pairs, axis=1), axis=0))


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


@triton.jit
def _turn_rows(ROWS, TURNED, row_off, rmask, sign, BF: tl.constexpr):
    """sign·P(−iψ) = sign·[Im | −Re] of a block of packed rows [Re | Im]."""
    offs_a = tl.arange(0, BF // 2)
    src = ROWS + row_off[:, None] * BF + offs_a[None, :]
    re = tl.load(src, mask=rmask[:, None], other=0.0)
    im = tl.load(src + BF // 2, mask=rmask[:, None], other=0.0)
    _store_halves(TURNED, row_off, sign * im, -sign * re, rmask, BF)


@triton.jit
def _bwd_rows_kernel(
    QP, QR, KP, KR, BETA, NORMS_QK, NORMS_OV, GSCALE, H, Nq, Nk, keep_scale,
    BR: tl.constexpr, BF: tl.constexpr, BH: tl.constexpr, SCALED: tl.constexpr,
):  # fmt: skip
    """The rotated rows the backward products read, P(iψq) = [−Im | Re] and P(−iψk) = [Im | −Re], and (the
    first program) every head's gradient scale S (1 without SCALED).  P(−iψk) is made again here rather than
    kept from the forward's packing pass: saving it would hold one more row tensor per layer until backward."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)  # whole rows only: no batch/head split (program_rows) is needed here
    offs_r = pid * BR + tl.arange(0, BR)
    _turn_rows(QP, QR, bh.to(tl.int64) * Nq + offs_r, offs_r < Nq, -1.0, BF)
    _turn_rows(KP, KR, bh.to(tl.int64) * Nk + offs_r, offs_r < Nk, 1.0, BF)
    if (pid == 0) & (bh == 0):
        offs_h = tl.arange(0, BH)
        scale = tl.full((BH,), 1.0, tl.float32)
        if SCALED:
            scale = gradient_scale(NORMS_QK, NORMS_OV, tl.load(BETA + offs_h, mask=offs_h < H, other=0.0),
                                   keep_scale)  # fmt: skip
        tl.store(GSCALE + offs_h, scale, mask=offs_h < H)


@triton.jit(do_not_specialize=["seed"])
def _fwd_kernel(
    QP, KP, KR, V, OUT, OUT32, LSE, MASK, BETA,
    s_vb, s_vh, s_vn, s_vc,
    s_ob, s_oh, s_on, s_oc,
    s_mb, s_mn,
    H, Nq, Nk, DV,
    seed, threshold, scale,
    BM: tl.constexpr, BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr, SAVE32: tl.constexpr,
):  # fmt: skip
    pid_m, bh, bh64, b, h = program_rows(H)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    cmask = offs_c < DV
    mmask = offs_m < Nq
    KP = KP + bh64 * Nk * BF  # this (batch, head)'s rows; offsets within them fit int32
    KR = KR + bh64 * Nk * BF
    q = tl.load(QP + bh64 * Nq * BF + offs_m[:, None] * BF + offs_f[None, :], mask=mmask[:, None], other=0.0)
    beta2 = tl.load(BETA + h) * 1.4426950408889634  # base-2 softmax
    v_base = V + b * s_vb + h * s_vh
    m_i = tl.full((BM,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BM,), dtype=tl.float32)
    acc = tl.zeros((BM, BV), dtype=tl.float32)
    for start in range(0, Nk, BN):
        offs_n = start + tl.arange(0, BN)
        nmask = offs_n < Nk
        kt_off = offs_n[None, :] * BF + offs_f[:, None]  # [BF, BN]
        a = tl.dot(q, tl.load(KP + kt_off, mask=nmask[None, :], other=0.0), input_precision=PREC)
        c = tl.dot(q, tl.load(KR + kt_off, mask=nmask[None, :], other=0.0), input_precision=PREC)
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
    QP, QR, KP, KR, V, DO, LSE, DELTA, MASK, BETA, GSCALE, DK, DV_, DBETA,
    s_vb, s_vh, s_vn, s_vc,
    s_ob, s_oh, s_on, s_oc,
    s_mb, s_mn,
    s_wb, s_wh, s_wn, s_wc,
    H, Nq, Nk, DV,
    seed, threshold, scale,
    BM: tl.constexpr, BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr, BETA_GRAD: tl.constexpr,
):  # fmt: skip
    """One key block: its tiles are computed transposed ([BN, BM], keys × queries), as dK and dV need them."""
    pid_n, bh, bh64, b, h = program_rows(H)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    cmask = offs_c < DV
    nmask = offs_n < Nk
    QP = QP + bh64 * Nq * BF  # this (batch, head)'s rows; offsets within them fit int32
    QR = QR + bh64 * Nq * BF
    KP = KP + bh64 * Nk * BF
    KR = KR + bh64 * Nk * BF
    DK = DK + bh64 * Nk * BF
    k_off = offs_n[:, None] * BF + offs_f[None, :]
    kp = tl.load(KP + k_off, mask=nmask[:, None], other=0.0)  # [BN, BF]
    kr = tl.load(KR + k_off, mask=nmask[:, None], other=0.0)
    v = tl.load(  # [BN, BV]
        V + b * s_vb + h * s_vh + offs_n[:, None] * s_vn + offs_c[None, :] * s_vc,
        mask=nmask[:, None] & cmask[None, :],
        other=0.0,
    )
    beta = tl.load(BETA + h)
    beta2 = beta * 1.4426950408889634
    gscale = tl.load(GSCALE + h)
    twice = 2.0 * beta * gscale
    ok = _key_ok(MASK, b, s_mb, s_mn, offs_n, Nk, HAS_MASK)
    dk = tl.zeros((BN, BF), dtype=tl.float32)
    dv = tl.zeros((BN, BV), dtype=tl.float32)
    dbeta = tl.zeros((BN,), dtype=tl.float32)
    o_base = DO + b * s_ob + h * s_oh
    for start in range(0, Nq, BM):
        offs_m = start + tl.arange(0, BM)
        mmask = offs_m < Nq
        qt_off = offs_m[None, :] * BF + offs_f[:, None]  # [BF, BM]
        qt = tl.load(QP + qt_off, mask=mmask[None, :], other=0.0)
        a = tl.dot(kp, qt, input_precision=PREC)  # Re⟨ψq|ψk⟩, [BN, BM]
        c = tl.dot(kr, qt, input_precision=PREC)  # Im⟨ψq|ψk⟩
        fid = a * a + c * c
        lse = tl.load(LSE + bh64 * Nq + offs_m, mask=mmask, other=float("inf"))
        p = tl.where(ok[:, None], tl.exp2(beta2 * fid - lse[None, :]), 0.0)  # 0 for padding keys, empty rows
        do = tl.load(
            o_base + offs_m[:, None] * s_on + offs_c[None, :] * s_oc, mask=mmask[:, None] & cmask[None, :], other=0.0
        )
        dp = tl.dot(v, tl.trans(do), input_precision=VPREC)  # v_j·dO_i
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
        dk = tl.dot((g * a).to(qt.dtype), tl.trans(qt), dk, input_precision=PREC)
        qrt = tl.load(QR + qt_off, mask=mmask[None, :], other=0.0)
        dk = tl.dot((g * c).to(qrt.dtype), tl.trans(qrt), dk, input_precision=PREC)
    tl.store(DK + k_off, dk / gscale, mask=nmask[:, None])
    if BETA_GRAD:
        tl.atomic_add(DBETA + h, tl.sum(dbeta, axis=0))
    tl.store(
        DV_ + b * s_wb + h * s_wh + offs_n[:, None] * s_wn + offs_c[None, :] * s_wc,
        dv.to(DV_.dtype.element_ty),
        mask=nmask[:, None] & cmask[None, :],
    )


@triton.jit(do_not_specialize=["seed"])
def _bwd_q_kernel(
    QP, KP, KR, V, DO, LSE, DELTA, MASK, BETA, GSCALE, DQ,
    s_vb, s_vh, s_vn, s_vc,
    s_ob, s_oh, s_on, s_oc,
    s_mb, s_mn,
    H, Nq, Nk, DV,
    seed, threshold, scale,
    BM: tl.constexpr, BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr,
):  # fmt: skip
    pid_m, bh, bh64, b, h = program_rows(H)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    cmask = offs_c < DV
    mmask = offs_m < Nq
    QP = QP + bh64 * Nq * BF
    KP = KP + bh64 * Nk * BF
    KR = KR + bh64 * Nk * BF
    DQ = DQ + bh64 * Nq * BF
    q_off = offs_m[:, None] * BF + offs_f[None, :]
    q = tl.load(QP + q_off, mask=mmask[:, None], other=0.0)
    do = tl.load(
        DO + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_c[None, :] * s_oc,
        mask=mmask[:, None] & cmask[None, :],
        other=0.0,
    )
    lse = tl.load(LSE + bh64 * Nq + offs_m, mask=mmask, other=float("inf"))
    delta = tl.load(DELTA + bh64 * Nq + offs_m, mask=mmask, other=0.0)
    beta = tl.load(BETA + h)
    beta2 = beta * 1.4426950408889634
    gscale = tl.load(GSCALE + h)
    twice = 2.0 * beta * gscale
    dq = tl.zeros((BM, BF), dtype=tl.float32)
    v_base = V + b * s_vb + h * s_vh
    for start in range(0, Nk, BN):
        offs_n = start + tl.arange(0, BN)
        nmask = offs_n < Nk
        kt_off = offs_n[None, :] * BF + offs_f[:, None]  # [BF, BN]
        kpt = tl.load(KP + kt_off, mask=nmask[None, :], other=0.0)
        krt = tl.load(KR + kt_off, mask=nmask[None, :], other=0.0)
        a = tl.dot(q, kpt, input_precision=PREC)
        c = tl.dot(q, krt, input_precision=PREC)
        ok = _key_ok(MASK, b, s_mb, s_mn, offs_n, Nk, HAS_MASK)
        p = tl.where(ok[None, :], tl.exp2(beta2 * (a * a + c * c) - lse[:, None]), 0.0)
        v_t = tl.load(
            v_base + offs_n[None, :] * s_vn + offs_c[:, None] * s_vc, mask=nmask[None, :] & cmask[:, None], other=0.0
        )
        dp = tl.dot(do, v_t, input_precision=VPREC)
        if DROPOUT:
            dp = tl.where(_keep(seed, bh, offs_m, offs_n, Nq, Nk, threshold), dp * scale, 0.0)
        g = twice * p * (dp - delta[:, None])
        dq = tl.dot((g * a).to(kpt.dtype), tl.trans(kpt), dq, input_precision=PREC)
        dq = tl.dot((g * c).to(krt.dtype), tl.trans(krt), dq, input_precision=PREC)
    tl.store(DQ + q_off, dq / gscale, mask=mmask[:, None])


#: (BM, BN, warps, stages) by (packed row width, 16-bit planes) for the forward, the key-block (dK, dV)
#: and the query-block (dQ) backward kernels.  16-bit, width 128 (6 qubits): timed on an H200 by the GPU's own
#: time (experiments/device/fidelity_tiles.py, results/bench/fidelity-tiles-graph-h200-round14.json: forward +
#: backward 1.087 ms against 1.256 with the key-block tiles before, which were chosen by wall time); the others
#: were chosen by ptxas's register and spill report for sm_90 (float32 planes need ≥ 64-row products: 32-row
#: float32 tiles compiled to 32 registers and kilobytes of spills).  16-bit widths without an entry take small
#: tiles; float32 rows are at most 128 wide (``qra.kernels.MAX_FLOAT32_STATE_DIM``).
FORWARD_TILES: dict[tuple[int, bool], tuple[int, int, int, int]] = {
    (32, True): (128, 64, 8, 2),
    (64, True): (128, 64, 8, 2),
    (128, True): (128, 64, 8, 3),
    (256, True): (64, 64, 8, 2),
    **{(width, False): (64, 32, 4, 1) for width in (16, 32, 64, 128)},
}
BACKWARD_KV_TILES: dict[tuple[int, bool], tuple[int, int, int, int]] = {
    (32, True): (32, 64, 4, 2),
    (64, True): (32, 64, 4, 2),
    (128, True): (32, 64, 4, 3),
    (256, True): (32, 32, 8, 1),
    **{(width, False): (16, 64, 4, 1) for width in (16, 32, 64, 128)},
}
BACKWARD_Q_TILES: dict[tuple[int, bool], tuple[int, int, int, int]] = {
    (32, True): (64, 64, 4, 2),
    (64, True): (64, 32, 4, 2),
    (128, True): (64, 32, 4, 2),
    (256, True): (32, 32, 8, 1),
    **{(width, False): (64, 16, 4, 1) for width in (16, 32, 64, 128)},
}
_SMALL_TILES = (32, 32, 4, 1)


def _tiles(table: dict, width: int, half: bool) -> tuple[int, int, int, int]:
    return table.get((width, half), _SMALL_TILES)


#: rows per program of the packing pass and of the backward's two row passes
_ROWS_PER_PROGRAM = 32


def pack_states(
    states: torch.Tensor, width: int, dtype: torch.dtype, norm: torch.Tensor, rotated: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, H, N, D] complex64 states as contiguous real rows [B·H, N, width] of ``dtype``, P(ψ) = [Re | Im]
    (each half zero-padded to width/2), and with ``rotated`` also P(−iψ) = [Im | −Re], in one pass that also
    raises ``norm`` (1 element) to the largest squared ‖ψ‖."""
    bsz, heads, n, dim = states.shape
    if states.stride(-1) != 1:
        states = states.contiguous()
    pairs = torch.view_as_real(states)
    rows = torch.empty(bsz * heads, n, width, device=states.device, dtype=dtype)
    turned = torch.empty_like(rows) if rotated else None
    launch_kernel(_pack_kernel, (cdiv(n, _ROWS_PER_PROGRAM), bsz * heads),
                  (pairs, rows, rows if turned is None else turned, norm), (*pairs.stride()[:3], heads, n, dim),
                  BR=_ROWS_PER_PROGRAM, BF=width, ROTATED=rotated)  # fmt: skip
    return rows, turned


def unpack_grad(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Packed fp32 gradients [B·H, N, width] as the complex gradient ∂L/∂Re + i ∂L/∂Im of [B, H, N, D] states."""
    dim = shape[-1]
    halves = rows.view(rows.shape[0], rows.shape[1], 2, -1)
    return torch.complex(halves[:, :, 0, :dim], halves[:, :, 1, :dim]).reshape(shape)


class _FidelityAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, states_q, states_k, v, mask, beta, dropout_p, seed, states_kept):
        bsz, heads, nq, dim = states_q.shape
        nk, dv = states_k.shape[2], v.shape[3]
        half = v.dtype != torch.float32
        plane = _plane(half)
        width = 2 * pow2(dim, floor=8)
        norms_qk = torch.zeros(2, device=v.device, dtype=torch.float32)  # max ‖ψq‖², max ‖ψk‖²
        qp, _ = pack_states(states_q, width, plane, norms_qk[0:1])
        kp, kr = pack_states(states_k, width, plane, norms_qk[1:2], rotated=True)
        bv = pow2(dv)
        bm, bn, warps, stages = _tiles(FORWARD_TILES, width, half)
        out = torch.empty(bsz, heads, nq, dv, device=v.device, dtype=v.dtype)
        lse = torch.empty(bsz * heads, nq, device=v.device, dtype=torch.float32)
        out32 = torch.empty(bsz * heads, nq, dv, device=v.device, dtype=torch.float32) if half else out
        m, m_strides = mask_arguments(mask, lse)
        dropout = dropout_p > 0
        scale = dropout_scale(dropout_p)
        tensors = (qp, kp, kr, v, out, out32, lse, m, beta)
        scalars = (*v.stride(), *out.stride(), *m_strides, heads, nq, nk, dv, seed, _threshold(dropout_p), scale)
        _launch(
            _fwd_kernel, lambda bm_, bn_: (cdiv(nq, bm_), bsz * heads), tensors, scalars, bm, bn, warps, stages,
            BF=width, BV=bv, HAS_MASK=mask is not None, DROPOUT=dropout, PREC=_precision(half), VPREC=_precision(half),
            SAVE32=half,
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
        qp, kp = _pack_again(saved_q, saved_k, width, _plane(half)) if states_kept else (saved_q, saved_k)
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
        qr, kr = torch.empty_like(qp), torch.empty_like(kp)  # P(iψq) = ∂C/∂Pk, P(−iψk)
        gscale = torch.empty(heads, device=v.device, dtype=torch.float32)
        launch_kernel(_bwd_rows_kernel, (rows, bsz * heads), (qp, qr, kp, kr, beta, norms_qk, norms_ov, gscale),
                      (heads, nq, nk, scale), BR=_ROWS_PER_PROGRAM, BF=width, BH=pow2(heads, floor=2),
                      SCALED=half)  # fmt: skip
        m, m_strides = mask_arguments(mask, lse)
        dropout = dropout_p > 0
        dkp = torch.empty(kp.shape, device=v.device, dtype=torch.float32)
        dqp = torch.empty(qp.shape, device=v.device, dtype=torch.float32)
        dvv = torch.empty_like(v)
        common = dict(
            BF=width, BV=bv, HAS_MASK=mask is not None, DROPOUT=dropout, PREC=_precision(half),
            VPREC=_precision(half),
        )  # fmt: skip
        tail = (heads, nq, nk, dv, seed, _threshold(dropout_p), scale)
        bm, bn, warps, stages = _tiles(BACKWARD_KV_TILES, width, half)
        _launch(
            _bwd_kv_kernel, lambda bm_, bn_: (cdiv(nk, bn_), bsz * heads),
            (qp, qr, kp, kr, v, grad, lse, delta, m, beta, gscale, dkp, dvv, dbeta),
            (*v.stride(), *grad.stride(), *m_strides, *dvv.stride(), *tail), bm, bn, warps, stages,
            BETA_GRAD=beta_grad, **common,
        )  # fmt: skip
        bm, bn, warps, stages = _tiles(BACKWARD_Q_TILES, width, half)
        _launch(
            _bwd_q_kernel, lambda bm_, bn_: (cdiv(nq, bm_), bsz * heads),
            (qp, kp, kr, v, grad, lse, delta, m, beta, gscale, dqp), (*v.stride(), *grad.stride(), *m_strides, *tail),
            bm, bn, warps, stages, **common,
        )  # fmt: skip
        # buffers freed once read: a patched MiniLM step's memory peaks here (experiments/device/memory_profile.py);
        # the packed rows go too when they were packed again here (else the saved ones live until backward ends)
        del qp, kp, qr, kr
        dq = unpack_grad(dqp, q_shape)
        del dqp
        dk = unpack_grad(dkp, k_shape)
        return dq, dk, dvv, None, (dbeta if beta_grad else None), None, None, None


def _plane(half: bool) -> torch.dtype:
    """The packed rows' dtype: float16 for 16-bit values (module docstring), else float32."""
    return torch.float16 if half else torch.float32


def _pack_again(states_q, states_k, width: int, plane: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward's packed rows of saved states, formed again in backward (the packing is exact, so they are
    the same rows); the norms it raises are the forward's, already kept."""
    scratch = torch.zeros(2, device=states_q.device, dtype=torch.float32)
    return pack_states(states_q, width, plane, scratch[0:1])[0], pack_states(states_k, width, plane, scratch[1:2])[0]


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
