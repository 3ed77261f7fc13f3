"""Flash-style softmax attention with query/key dim ≠ value dim, key padding mask and dropout, and its
fidelity variant (scores β·|⟨ψq|ψk⟩|² from complex states), forward and backward.

One set of kernels serves both: with ``FID`` the "queries" and "keys" are the real and imaginary
planes of the states (read in place from ``torch.view_as_real``: feature stride 2, the imaginary
plane one element after the real one) and a score tile is
    A = Re_q Re_kᵀ + Im_q Im_kᵀ,  C = Re_q Im_kᵀ − Im_q Re_kᵀ,  s = β_h (A² + C²);
without it a score tile is fq fkᵀ.

Forward: grid (query blocks, B·H), online softmax in base 2, the base-2 log-sum-exp kept per query
(+inf for a query whose keys are all padding: its output and gradients are 0).  Dropout multiplies
the normalised weights by keep/(1−p), keep drawn by Philox from (seed, (bh·Nq + i)·Nk + j), so the
backward regenerates it.  Backward: δ_i = dO_i·O_i (PyTorch), a key-block kernel for dK, dV (and
dβ, summed with fp32 atomics) and a query-block kernel for dQ, both recomputing the scores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from ._util import mask_bytes, pow2

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _keep(seed, bh, offs_m, offs_n, Nq, Nk, threshold):
    idx = (bh.to(tl.int64) * Nq + offs_m[:, None].to(tl.int64)) * Nk + offs_n[None, :].to(tl.int64)
    r = tl.randint(seed, idx)
    return (r.to(tl.uint32, bitcast=True) >> 8).to(tl.int32) >= threshold


@triton.jit
def _scores(q, q2, k_t, k2_t, beta, FID: tl.constexpr, PREC: tl.constexpr):
    """Score tile [BM, BN] from query planes [BM, BF] and transposed key planes [BF, BN]; also A, C."""
    if FID:
        a = tl.dot(q, k_t, input_precision=PREC)
        a = tl.dot(q2, k2_t, a, input_precision=PREC)
        c = tl.dot(q, k2_t, input_precision=PREC)
        c -= tl.dot(q2, k_t, input_precision=PREC)
        s = beta * (a * a + c * c)
    else:
        s = tl.dot(q, k_t, input_precision=PREC)
        a = s
        c = s
    return s, a, c


@triton.jit
def _key_ok(MASK, b, s_mb, s_mn, offs_n, Nk, HAS_MASK: tl.constexpr):
    ok = offs_n < Nk
    if HAS_MASK:
        ok = ok & (tl.load(MASK + b * s_mb + offs_n * s_mn, mask=offs_n < Nk, other=0) != 0)
    return ok


@triton.jit(do_not_specialize=["seed"])
def _fwd_kernel(
    Q, Q2, K, K2, V, OUT, OUT32, LSE, MASK, BETA,
    s_qb, s_qh, s_qn, s_qf,
    s_kb, s_kh, s_kn, s_kf,
    s_vb, s_vh, s_vn, s_vc,
    s_ob, s_oh, s_on, s_oc,
    s_mb, s_mn,
    H, Nq, Nk, F, DV,
    seed, threshold, scale,
    BM: tl.constexpr, BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, FID: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr,
    SAVE32: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    fmask = offs_f < F
    cmask = offs_c < DV
    mmask = offs_m < Nq
    q_off = b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_f[None, :] * s_qf
    q = tl.load(Q + q_off, mask=mmask[:, None] & fmask[None, :], other=0.0)
    q2 = q
    beta = 1.0
    if FID:
        q2 = tl.load(Q2 + q_off, mask=mmask[:, None] & fmask[None, :], other=0.0)
        beta = tl.load(BETA + h)
    k_base = b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    m_i = tl.full((BM,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BM,), dtype=tl.float32)
    acc = tl.zeros((BM, BV), dtype=tl.float32)
    for start in range(0, Nk, BN):
        offs_n = start + tl.arange(0, BN)
        nmask = offs_n < Nk
        kt_off = k_base + offs_n[None, :] * s_kn + offs_f[:, None] * s_kf
        k_t = tl.load(K + kt_off, mask=nmask[None, :] & fmask[:, None], other=0.0)
        k2_t = k_t
        if FID:
            k2_t = tl.load(K2 + kt_off, mask=nmask[None, :] & fmask[:, None], other=0.0)
        s, _a, _c = _scores(q, q2, k_t, k2_t, beta, FID, PREC)
        ok = _key_ok(MASK, b, s_mb, s_mn, offs_n, Nk, HAS_MASK)
        s = tl.where(ok[None, :], s * 1.4426950408889634, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if DROPOUT:
            p = tl.where(_keep(seed, bh, offs_m, offs_n, Nq, Nk, threshold), p * scale, 0.0)
        v = tl.load(
            v_base + offs_n[:, None] * s_vn + offs_c[None, :] * s_vc, mask=nmask[:, None] & cmask[None, :], other=0.0
        )
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=VPREC)
        m_i = m_new
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    tl.store(
        OUT + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_c[None, :] * s_oc,
        out.to(OUT.dtype.element_ty),
        mask=mmask[:, None] & cmask[None, :],
    )
    if SAVE32:  # the unrounded output, for the backward's δ = dO·O
        tl.store(
            OUT32 + (bh.to(tl.int64) * Nq + offs_m[:, None]) * DV + offs_c[None, :],
            out,
            mask=mmask[:, None] & cmask[None, :],
        )
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("inf"))
    tl.store(LSE + bh.to(tl.int64) * Nq + offs_m, lse, mask=mmask)


@triton.jit(do_not_specialize=["seed"])
def _bwd_kv_kernel(
    Q, Q2, K, K2, V, DO, LSE, DELTA, MASK, BETA,
    DK, DK2, DV_, DBETA,
    s_qb, s_qh, s_qn, s_qf,
    s_kb, s_kh, s_kn, s_kf,
    s_vb, s_vh, s_vn, s_vc,
    s_ob, s_oh, s_on, s_oc,
    s_mb, s_mn,
    s_gb, s_gh, s_gn, s_gf,
    s_wb, s_wh, s_wn, s_wc,
    H, Nq, Nk, F, DV,
    seed, threshold, scale,
    BM: tl.constexpr, BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, FID: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr,
    BETA_GRAD: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    fmask = offs_f < F
    cmask = offs_c < DV
    nmask = offs_n < Nk
    kt_off = b * s_kb + h * s_kh + offs_n[None, :] * s_kn + offs_f[:, None] * s_kf
    k_t = tl.load(K + kt_off, mask=nmask[None, :] & fmask[:, None], other=0.0)  # [BF, BN]
    k2_t = k_t
    beta = 1.0
    if FID:
        k2_t = tl.load(K2 + kt_off, mask=nmask[None, :] & fmask[:, None], other=0.0)
        beta = tl.load(BETA + h)
    v_t = tl.load(  # [BV, BN]
        V + b * s_vb + h * s_vh + offs_n[None, :] * s_vn + offs_c[:, None] * s_vc,
        mask=nmask[None, :] & cmask[:, None],
        other=0.0,
    )
    ok = _key_ok(MASK, b, s_mb, s_mn, offs_n, Nk, HAS_MASK)
    dk = tl.zeros((BN, BF), dtype=tl.float32)
    dk2 = tl.zeros((BN, BF), dtype=tl.float32)
    dv = tl.zeros((BN, BV), dtype=tl.float32)
    dbeta = tl.zeros((BM, BN), dtype=tl.float32)
    q_base = b * s_qb + h * s_qh
    o_base = DO + b * s_ob + h * s_oh
    for start in range(0, Nq, BM):
        offs_m = start + tl.arange(0, BM)
        mmask = offs_m < Nq
        q_off = q_base + offs_m[:, None] * s_qn + offs_f[None, :] * s_qf
        q = tl.load(Q + q_off, mask=mmask[:, None] & fmask[None, :], other=0.0)
        q2 = q
        if FID:
            q2 = tl.load(Q2 + q_off, mask=mmask[:, None] & fmask[None, :], other=0.0)
        s, a, c = _scores(q, q2, k_t, k2_t, beta, FID, PREC)
        lse = tl.load(LSE + bh.to(tl.int64) * Nq + offs_m, mask=mmask, other=float("inf"))
        delta = tl.load(DELTA + bh.to(tl.int64) * Nq + offs_m, mask=mmask, other=0.0)
        s = tl.where(ok[None, :], s * 1.4426950408889634, float("-inf"))
        p = tl.exp2(s - lse[:, None])  # [BM, BN]; 0 for padding keys and empty rows
        do = tl.load(
            o_base + offs_m[:, None] * s_on + offs_c[None, :] * s_oc, mask=mmask[:, None] & cmask[None, :], other=0.0
        )
        dp = tl.dot(do, v_t, input_precision=VPREC)  # dO_i·v_j
        pd = p
        if DROPOUT:
            z = tl.where(_keep(seed, bh, offs_m, offs_n, Nq, Nk, threshold), scale, 0.0)
            pd = p * z
            dp = dp * z
        dv = tl.dot(tl.trans(pd).to(do.dtype), do, dv, input_precision=VPREC)
        ds = p * (dp - delta[:, None])  # ∂L/∂score
        if FID:
            if BETA_GRAD:
                dbeta += ds * (a * a + c * c)
            da = (2.0 * beta) * a * ds
            dc = (2.0 * beta) * c * ds
            da_t = tl.trans(da)
            dc_t = tl.trans(dc)
            dk = tl.dot(da_t, q, dk, input_precision=PREC)
            dk = tl.dot(-dc_t, q2, dk, input_precision=PREC)
            dk2 = tl.dot(da_t, q2, dk2, input_precision=PREC)
            dk2 = tl.dot(dc_t, q, dk2, input_precision=PREC)
        else:
            dk = tl.dot(tl.trans(ds).to(q.dtype), q, dk, input_precision=PREC)
    dk_off = b * s_gb + h * s_gh + offs_n[:, None] * s_gn + offs_f[None, :] * s_gf
    tl.store(DK + dk_off, dk.to(DK.dtype.element_ty), mask=nmask[:, None] & fmask[None, :])
    if FID:
        tl.store(DK2 + dk_off, dk2.to(DK2.dtype.element_ty), mask=nmask[:, None] & fmask[None, :])
        if BETA_GRAD:
            tl.atomic_add(DBETA + h, tl.sum(tl.sum(dbeta, axis=1), axis=0))
    tl.store(
        DV_ + b * s_wb + h * s_wh + offs_n[:, None] * s_wn + offs_c[None, :] * s_wc,
        dv.to(DV_.dtype.element_ty),
        mask=nmask[:, None] & cmask[None, :],
    )


@triton.jit(do_not_specialize=["seed"])
def _bwd_q_kernel(
    Q, Q2, K, K2, V, DO, LSE, DELTA, MASK, BETA,
    DQ, DQ2,
    s_qb, s_qh, s_qn, s_qf,
    s_kb, s_kh, s_kn, s_kf,
    s_vb, s_vh, s_vn, s_vc,
    s_ob, s_oh, s_on, s_oc,
    s_mb, s_mn,
    s_gb, s_gh, s_gn, s_gf,
    H, Nq, Nk, F, DV,
    seed, threshold, scale,
    BM: tl.constexpr, BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, FID: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    fmask = offs_f < F
    cmask = offs_c < DV
    mmask = offs_m < Nq
    q_off = b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_f[None, :] * s_qf
    q = tl.load(Q + q_off, mask=mmask[:, None] & fmask[None, :], other=0.0)
    q2 = q
    beta = 1.0
    if FID:
        q2 = tl.load(Q2 + q_off, mask=mmask[:, None] & fmask[None, :], other=0.0)
        beta = tl.load(BETA + h)
    do = tl.load(
        DO + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_c[None, :] * s_oc,
        mask=mmask[:, None] & cmask[None, :],
        other=0.0,
    )
    lse = tl.load(LSE + bh.to(tl.int64) * Nq + offs_m, mask=mmask, other=float("inf"))
    delta = tl.load(DELTA + bh.to(tl.int64) * Nq + offs_m, mask=mmask, other=0.0)
    dq = tl.zeros((BM, BF), dtype=tl.float32)
    dq2 = tl.zeros((BM, BF), dtype=tl.float32)
    k_base = b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    for start in range(0, Nk, BN):
        offs_n = start + tl.arange(0, BN)
        nmask = offs_n < Nk
        kt_off = k_base + offs_n[None, :] * s_kn + offs_f[:, None] * s_kf
        k_t = tl.load(K + kt_off, mask=nmask[None, :] & fmask[:, None], other=0.0)
        k2_t = k_t
        if FID:
            k2_t = tl.load(K2 + kt_off, mask=nmask[None, :] & fmask[:, None], other=0.0)
        s, a, c = _scores(q, q2, k_t, k2_t, beta, FID, PREC)
        ok = _key_ok(MASK, b, s_mb, s_mn, offs_n, Nk, HAS_MASK)
        s = tl.where(ok[None, :], s * 1.4426950408889634, float("-inf"))
        p = tl.exp2(s - lse[:, None])
        v_t = tl.load(
            v_base + offs_n[None, :] * s_vn + offs_c[:, None] * s_vc, mask=nmask[None, :] & cmask[:, None], other=0.0
        )
        dp = tl.dot(do, v_t, input_precision=VPREC)
        if DROPOUT:
            dp = tl.where(_keep(seed, bh, offs_m, offs_n, Nq, Nk, threshold), dp * scale, 0.0)
        ds = p * (dp - delta[:, None])
        if FID:
            da = (2.0 * beta) * a * ds
            dc = (2.0 * beta) * c * ds
            k = tl.trans(k_t)
            k2 = tl.trans(k2_t)
            dq = tl.dot(da, k, dq, input_precision=PREC)
            dq = tl.dot(dc, k2, dq, input_precision=PREC)
            dq2 = tl.dot(da, k2, dq2, input_precision=PREC)
            dq2 = tl.dot(-dc, k, dq2, input_precision=PREC)
        else:
            dq = tl.dot(ds.to(k_t.dtype), tl.trans(k_t), dq, input_precision=PREC)
    dq_off = b * s_gb + h * s_gh + offs_m[:, None] * s_gn + offs_f[None, :] * s_gf
    tl.store(DQ + dq_off, dq.to(DQ.dtype.element_ty), mask=mmask[:, None] & fmask[None, :])
    if FID:
        tl.store(DQ2 + dq_off, dq2.to(DQ2.dtype.element_ty), mask=mmask[:, None] & fmask[None, :])


@triton.jit(do_not_specialize=["seed"])
def _keep_kernel(OUT, H, Nq, Nk, seed, threshold, BM: tl.constexpr, BN: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    bh = tl.program_id(2)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    keep = _keep(seed, bh, offs_m, offs_n, Nq, Nk, threshold)
    ptr = OUT + (bh.to(tl.int64) * Nq + offs_m[:, None]) * Nk + offs_n[None, :]
    tl.store(ptr, keep.to(tl.int8), mask=(offs_m[:, None] < Nq) & (offs_n[None, :] < Nk))


def _threshold(p: float) -> int:
    return round(p * (1 << 24))


def keep_mask(seed: int, batch: int, heads: int, n_q: int, n_k: int, dropout_p: float, device) -> torch.Tensor:
    out = torch.empty(batch, heads, n_q, n_k, dtype=torch.int8, device=device)
    grid = (triton.cdiv(n_q, 32), triton.cdiv(n_k, 32), batch * heads)
    _keep_kernel[grid](out, heads, n_q, n_k, int(seed), _threshold(dropout_p), BM=32, BN=32)
    return out.bool()


def _new_seed() -> int:
    return int(torch.randint(2, 2**31 - 1, (1,)).item())


def _blocks(bf: int, bv: int, fid: bool, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BM, BN, warps, stages) for the forward; small enough to fit the fp32 fidelity tiles."""
    wide = bf * (2 if fid else 1) * (2 if dtype == torch.float32 or fid else 1)
    if wide >= 1024:
        return 32, 32, 4, 1
    if wide >= 512:
        return 64, 32, 8, 2
    if wide >= 256:
        return 64, 64, 8, 2
    return 128, 64, 8, 3


def _bwd_blocks(bf: int, bv: int, fid: bool, dtype: torch.dtype) -> tuple[int, int, int, int]:
    wide = bf * (2 if fid else 1) * (2 if dtype == torch.float32 or fid else 1)
    if wide >= 1024:
        return 32, 32, 8, 1
    if wide >= 256:
        return 32, 32, 4, 2
    return 64, 64, 8, 2


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, q2, k, k2, v, mask, beta, dropout_p, seed, fid, prec):
        # q, k (and q2, k2 with fid) are [B, H, N, F] views; beta is an fp32 [H] tensor (fid) or None
        q2 = q if q2 is None else q2
        k2 = k if k2 is None else k2
        bsz, heads, nq, feat = q.shape
        nk, dv = k.shape[2], v.shape[3]
        bf, bv = pow2(feat), pow2(dv)
        bm, bn, warps, stages = _blocks(bf, bv, fid, v.dtype)
        out = torch.empty(bsz, heads, nq, dv, device=v.device, dtype=v.dtype)
        lse = torch.empty(bsz * heads, nq, device=v.device, dtype=torch.float32)
        save32 = v.dtype != torch.float32
        out32 = torch.empty(bsz, heads, nq, dv, device=v.device, dtype=torch.float32) if save32 else out
        has_mask = mask is not None
        m = mask if has_mask else lse
        m_strides = tuple(mask.stride()) if has_mask else (0, 0)
        dropout = dropout_p > 0
        scale = 1.0 / (1.0 - dropout_p) if dropout else 1.0
        b_ptr = beta if beta is not None else lse
        args = (
            q, q2, k, k2, v, out, out32, lse, m, b_ptr,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *m_strides,
            heads, nq, nk, feat, dv, seed, _threshold(dropout_p), scale,
        )  # fmt: skip
        _launch(
            _fwd_kernel, lambda bm_, bn_: (triton.cdiv(nq, bm_), bsz * heads), args, bm, bn, warps, stages,
            BF=bf, BV=bv, HAS_MASK=has_mask, DROPOUT=dropout, FID=fid, PREC=prec, VPREC=_vprec(v.dtype), SAVE32=save32,
        )  # fmt: skip
        ctx.save_for_backward(q, q2, k, k2, v, mask, beta, out32, lse)
        ctx.cfg = (dropout_p, seed, fid, prec, beta is not None and ctx.needs_input_grad[6])
        return out

    @staticmethod
    def backward(ctx, grad):
        q, q2, k, k2, v, mask, beta, out, lse = ctx.saved_tensors
        dropout_p, seed, fid, prec, beta_grad = ctx.cfg
        bsz, heads, nq, feat = q.shape
        nk, dv = k.shape[2], v.shape[3]
        bf, bv = pow2(feat), pow2(dv)
        bm, bn, warps, stages = _bwd_blocks(bf, bv, fid, v.dtype)
        grad = grad.to(v.dtype)
        delta = (grad.float() * out.float()).sum(-1).reshape(bsz * heads, nq)  # out: the fp32 output
        has_mask = mask is not None
        m = mask if has_mask else lse
        m_strides = tuple(mask.stride()) if has_mask else (0, 0)
        dropout = dropout_p > 0
        scale = 1.0 / (1.0 - dropout_p) if dropout else 1.0
        b_ptr = beta if beta is not None else lse
        # the gradients of the planes go to contiguous fp32/native buffers
        dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
        dk2 = torch.empty_like(dk) if fid else dk
        dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
        dq2 = torch.empty_like(dq) if fid else dq
        dvv = torch.empty_like(v)
        dbeta = torch.zeros(heads, device=v.device, dtype=torch.float32)
        common = dict(BF=bf, BV=bv, HAS_MASK=has_mask, DROPOUT=dropout, FID=fid, PREC=prec, VPREC=_vprec(v.dtype))
        args = (
            q, q2, k, k2, v, grad, lse, delta, m, b_ptr, dk, dk2, dvv, dbeta,
            *q.stride(), *k.stride(), *v.stride(), *grad.stride(), *m_strides, *dk.stride(), *dvv.stride(),
            heads, nq, nk, feat, dv, seed, _threshold(dropout_p), scale,
        )  # fmt: skip
        _launch(
            _bwd_kv_kernel, lambda bm_, bn_: (triton.cdiv(nk, bn_), bsz * heads), args, bm, bn, warps, stages,
            BETA_GRAD=beta_grad, **common,
        )  # fmt: skip
        args = (
            q, q2, k, k2, v, grad, lse, delta, m, b_ptr, dq, dq2,
            *q.stride(), *k.stride(), *v.stride(), *grad.stride(), *m_strides, *dq.stride(),
            heads, nq, nk, feat, dv, seed, _threshold(dropout_p), scale,
        )  # fmt: skip
        _launch(
            _bwd_q_kernel, lambda bm_, bn_: (triton.cdiv(nq, bm_), bsz * heads), args, bm, bn, warps, stages, **common
        )
        if not fid:
            dq2 = dk2 = None
        return dq, dq2, dk, dk2, dvv, None, (dbeta if beta_grad else None), None, None, None, None


def _launch(kernel, grid_of, args, bm, bn, warps, stages, **meta):
    """Launch with these blocks; if they do not fit the chip's shared memory/registers, with 32×32, 1 stage."""
    try:
        kernel[grid_of(bm, bn)](*args, BM=bm, BN=bn, num_warps=warps, num_stages=stages, **meta)
    except OutOfResources:
        kernel[grid_of(32, 32)](*args, BM=32, BN=32, num_warps=4, num_stages=1, **meta)


def _vprec(dtype: torch.dtype) -> str:
    """Precision of the products with the values (in v's dtype): tf32x3 must not meet 16-bit operands."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _precision(dtype: torch.dtype, fid: bool) -> str:
    if dtype == torch.float32:
        return "ieee"
    return "tf32x3" if fid else "tf32"


def fused_softmax_attention(fq, fk, v, key_padding_mask=None, dropout_p: float = 0.0, seed=None) -> torch.Tensor:
    """The Triton path of :func:`qra.kernels.softmax_attention` (arguments already checked)."""
    fq, fk = fq.to(v.dtype), fk.to(v.dtype)
    seed = (_new_seed() if seed is None else int(seed)) if dropout_p > 0 else 0
    mask = mask_bytes(key_padding_mask, v.device)
    prec = _precision(v.dtype, False)
    out = _FlashAttention.apply(fq, None, fk, None, v, mask, None, float(dropout_p), seed, False, prec)
    return out


def fused_fidelity_attention(
    states_q, states_k, v, key_padding_mask=None, beta=None, dropout_p: float = 0.0, seed=None
) -> torch.Tensor:
    """The Triton path of :func:`qra.kernels.fidelity_attention` (arguments already checked)."""
    heads = states_q.shape[1]
    if beta is None:
        beta_h = torch.ones(heads, device=v.device, dtype=torch.float32)
    elif isinstance(beta, torch.Tensor):
        beta_h = beta.to(device=v.device, dtype=torch.float32).reshape(-1).expand(heads).contiguous()
    else:
        beta_h = torch.full((heads,), float(beta), device=v.device, dtype=torch.float32)
    rq, rk = torch.view_as_real(states_q), torch.view_as_real(states_k)  # [..., F, 2] fp32, in place
    seed = (_new_seed() if seed is None else int(seed)) if dropout_p > 0 else 0
    mask = mask_bytes(key_padding_mask, v.device)
    prec = _precision(v.dtype, True)
    out = _FlashAttention.apply(
        rq[..., 0], rq[..., 1], rk[..., 0], rk[..., 1], v, mask, beta_h, float(dropout_p), seed, True, prec
    )
    return out
