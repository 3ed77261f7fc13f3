"""Flash-style softmax attention with query/key dim ≠ value dim, key padding mask and dropout,
forward and backward (a score tile is fq fkᵀ; the fidelity variant is :mod:`qra.kernels.fidelity`).

Forward: grid (query blocks, B·H), online softmax in base 2, the base-2 log-sum-exp kept per query
(+inf for a query whose keys are all padding: its output and gradients are 0).  Dropout multiplies
the normalised weights by keep/(1−p), keep drawn by Philox from (seed, (bh·Nq + i)·Nk + j), so the
backward regenerates it.  Backward: δ_i = dO_i·O_i (PyTorch), a key-block kernel for dK, dV and a
query-block kernel for dQ, both recomputing the scores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from ._launch import launch_kernel
from ._util import cdiv, dot_precision, dropout_scale, mask_arguments, mask_bytes, pow2


@triton.jit
def _keep(seed, bh, offs_m, offs_n, Nq, Nk, threshold):
    idx = (bh.to(tl.int64) * Nq + offs_m[:, None].to(tl.int64)) * Nk + offs_n[None, :].to(tl.int64)
    return keep_at(seed, idx, threshold)


@triton.jit
def keep_at(seed, idx, threshold):
    """Whether dropout keeps the weight numbered idx = (bh·Nq + query)·Nk + key (Philox from the seed)."""
    r = tl.randint(seed, idx)
    return (r.to(tl.uint32, bitcast=True) >> 8).to(tl.int32) >= threshold


@triton.jit
def _key_ok(MASK, b, s_mb, s_mn, offs_n, Nk, HAS_MASK: tl.constexpr):
    ok = offs_n < Nk
    if HAS_MASK:
        ok = ok & (tl.load(MASK + b * s_mb + offs_n * s_mn, mask=offs_n < Nk, other=0) != 0)
    return ok


@triton.jit
def program_rows(H):
    """This program's block number (grid axis 0), its (batch, head) number bh (axis 1), and bh as int64 with
    its batch and head."""
    bh = tl.program_id(1)
    return tl.program_id(0), bh, bh.to(tl.int64), (bh // H).to(tl.int64), (bh % H).to(tl.int64)


@triton.jit
def softmax_block(s, m_i, l_i):
    """One key block of the online softmax over base-2 scores s [BM, BN] (−inf for masked keys): the new
    running max and sum, the factor that rescales the accumulator, and the block's unnormalised weights."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    return m_new, l_i * alpha + tl.sum(p, axis=1), alpha, p


@triton.jit
def accumulate_values(acc, alpha, p, v_ptrs, v_mask, keep, scale, DROPOUT: tl.constexpr, VPREC: tl.constexpr):
    """The online softmax's value step for one key block: acc·α + p·V, with p's dropped weights zeroed and the
    kept ones scaled (``keep``: the block's dropout mask, used only with DROPOUT)."""
    if DROPOUT:
        p = tl.where(keep, p * scale, 0.0)
    v = tl.load(v_ptrs, mask=v_mask, other=0.0)
    return tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=VPREC)


@triton.jit
def store_softmax_output(acc, m_i, l_i, OUT, out_off, OUT32, out32_off, LSE, lse_off, o_mask, mmask,
                         SAVE32: tl.constexpr):  # fmt: skip
    """Normalise and store a query block's output (and its fp32 copy), and the base-2 log-sum-exp the
    backward recomputes the weights from (+inf for a query without keys: its output is 0)."""
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    tl.store(OUT + out_off, out.to(OUT.dtype.element_ty), mask=o_mask)
    if SAVE32:  # the unrounded output, for the backward's δ = dO·O
        tl.store(OUT32 + out32_off, out, mask=o_mask)
    tl.store(LSE + lse_off, tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("inf")), mask=mmask)


@triton.jit(do_not_specialize=["seed"])
def _fwd_kernel(
    Q, K, V, OUT, OUT32, LSE, MASK,
    s_qb, s_qh, s_qn, s_qf,
    s_kb, s_kh, s_kn, s_kf,
    s_vb, s_vh, s_vn, s_vc,
    s_ob, s_oh, s_on, s_oc,
    s_mb, s_mn,
    H, Nq, Nk, F, DV,
    seed, threshold, scale,
    BM: tl.constexpr, BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr, SAVE32: tl.constexpr,
):  # fmt: skip
    pid_m, bh, _, b, h = program_rows(H)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    fmask = offs_f < F
    cmask = offs_c < DV
    mmask = offs_m < Nq
    q_off = b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_f[None, :] * s_qf
    q = tl.load(Q + q_off, mask=mmask[:, None] & fmask[None, :], other=0.0)
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
        s = tl.dot(q, k_t, input_precision=PREC)
        ok = _key_ok(MASK, b, s_mb, s_mn, offs_n, Nk, HAS_MASK)
        s = tl.where(ok[None, :], s * 1.4426950408889634, float("-inf"))
        m_i, l_i, alpha, p = softmax_block(s, m_i, l_i)
        keep = _keep(seed, bh, offs_m, offs_n, Nq, Nk, threshold) if DROPOUT else None
        acc = accumulate_values(acc, alpha, p, v_base + offs_n[:, None] * s_vn + offs_c[None, :] * s_vc,
                                nmask[:, None] & cmask[None, :], keep, scale, DROPOUT, VPREC)  # fmt: skip
    store_softmax_output(
        acc, m_i, l_i, OUT, b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_c[None, :] * s_oc,
        OUT32, (bh.to(tl.int64) * Nq + offs_m[:, None]) * DV + offs_c[None, :], LSE, bh.to(tl.int64) * Nq + offs_m,
        mmask[:, None] & cmask[None, :], mmask, SAVE32,
    )  # fmt: skip


@triton.jit(do_not_specialize=["seed"])
def _bwd_kv_kernel(
    Q, K, V, DO, LSE, DELTA, MASK, DK, DV_,
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
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr,
):  # fmt: skip
    pid_n, bh, _, b, h = program_rows(H)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    fmask = offs_f < F
    cmask = offs_c < DV
    nmask = offs_n < Nk
    kt_off = b * s_kb + h * s_kh + offs_n[None, :] * s_kn + offs_f[:, None] * s_kf
    k_t = tl.load(K + kt_off, mask=nmask[None, :] & fmask[:, None], other=0.0)  # [BF, BN]
    v_t = tl.load(  # [BV, BN]
        V + b * s_vb + h * s_vh + offs_n[None, :] * s_vn + offs_c[:, None] * s_vc,
        mask=nmask[None, :] & cmask[:, None],
        other=0.0,
    )
    ok = _key_ok(MASK, b, s_mb, s_mn, offs_n, Nk, HAS_MASK)
    dk = tl.zeros((BN, BF), dtype=tl.float32)
    dv = tl.zeros((BN, BV), dtype=tl.float32)
    q_base = b * s_qb + h * s_qh
    o_base = DO + b * s_ob + h * s_oh
    for start in range(0, Nq, BM):
        offs_m = start + tl.arange(0, BM)
        mmask = offs_m < Nq
        q_off = q_base + offs_m[:, None] * s_qn + offs_f[None, :] * s_qf
        q = tl.load(Q + q_off, mask=mmask[:, None] & fmask[None, :], other=0.0)
        s = tl.dot(q, k_t, input_precision=PREC)
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
        dk = tl.dot(tl.trans(ds).to(q.dtype), q, dk, input_precision=PREC)
    dk_off = b * s_gb + h * s_gh + offs_n[:, None] * s_gn + offs_f[None, :] * s_gf
    tl.store(DK + dk_off, dk.to(DK.dtype.element_ty), mask=nmask[:, None] & fmask[None, :])
    tl.store(
        DV_ + b * s_wb + h * s_wh + offs_n[:, None] * s_wn + offs_c[None, :] * s_wc,
        dv.to(DV_.dtype.element_ty),
        mask=nmask[:, None] & cmask[None, :],
    )


@triton.jit(do_not_specialize=["seed"])
def _bwd_q_kernel(
    Q, K, V, DO, LSE, DELTA, MASK, DQ,
    s_qb, s_qh, s_qn, s_qf,
    s_kb, s_kh, s_kn, s_kf,
    s_vb, s_vh, s_vn, s_vc,
    s_ob, s_oh, s_on, s_oc,
    s_mb, s_mn,
    s_gb, s_gh, s_gn, s_gf,
    H, Nq, Nk, F, DV,
    seed, threshold, scale,
    BM: tl.constexpr, BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr,
):  # fmt: skip
    pid_m, bh, _, b, h = program_rows(H)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    fmask = offs_f < F
    cmask = offs_c < DV
    mmask = offs_m < Nq
    q_off = b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_f[None, :] * s_qf
    q = tl.load(Q + q_off, mask=mmask[:, None] & fmask[None, :], other=0.0)
    do = tl.load(
        DO + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_c[None, :] * s_oc,
        mask=mmask[:, None] & cmask[None, :],
        other=0.0,
    )
    lse = tl.load(LSE + bh.to(tl.int64) * Nq + offs_m, mask=mmask, other=float("inf"))
    delta = tl.load(DELTA + bh.to(tl.int64) * Nq + offs_m, mask=mmask, other=0.0)
    dq = tl.zeros((BM, BF), dtype=tl.float32)
    k_base = b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    for start in range(0, Nk, BN):
        offs_n = start + tl.arange(0, BN)
        nmask = offs_n < Nk
        kt_off = k_base + offs_n[None, :] * s_kn + offs_f[:, None] * s_kf
        k_t = tl.load(K + kt_off, mask=nmask[None, :] & fmask[:, None], other=0.0)
        s = tl.dot(q, k_t, input_precision=PREC)
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
        dq = tl.dot(ds.to(k_t.dtype), tl.trans(k_t), dq, input_precision=PREC)
    dq_off = b * s_gb + h * s_gh + offs_m[:, None] * s_gn + offs_f[None, :] * s_gf
    tl.store(DQ + dq_off, dq.to(DQ.dtype.element_ty), mask=mmask[:, None] & fmask[None, :])


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
    grid = (cdiv(n_q, 32), cdiv(n_k, 32), batch * heads)
    _keep_kernel[grid](out, heads, n_q, n_k, int(seed), _threshold(dropout_p), BM=32, BN=32)
    return out.bool()


def _new_seed() -> int:
    return int(torch.randint(2, 2**31 - 1, (1,)).item())


def _blocks(bf: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BM, BN, warps, stages) for the forward, by the feature tile's width in 16-bit units."""
    wide = bf * (2 if dtype == torch.float32 else 1)
    if wide >= 512:
        return 64, 32, 8, 2
    if wide >= 256:
        return 64, 64, 8, 2
    return 128, 64, 8, 3


def _bwd_blocks(bf: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    wide = bf * (2 if dtype == torch.float32 else 1)
    if wide >= 256:
        return 32, 32, 4, 2
    return 64, 64, 8, 2


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, dropout_p, seed):
        # q, k are [B, H, N, F] views in v's dtype
        bsz, heads, nq, feat = q.shape
        nk, dv = k.shape[2], v.shape[3]
        bf, bv = pow2(feat), pow2(dv)
        bm, bn, warps, stages = _blocks(bf, v.dtype)
        out = torch.empty(bsz, heads, nq, dv, device=v.device, dtype=v.dtype)
        lse = torch.empty(bsz * heads, nq, device=v.device, dtype=torch.float32)
        save32 = v.dtype != torch.float32
        out32 = torch.empty(bsz, heads, nq, dv, device=v.device, dtype=torch.float32) if save32 else out
        has_mask = mask is not None
        m, m_strides = mask_arguments(mask, lse)
        dropout = dropout_p > 0
        scale = dropout_scale(dropout_p)
        prec = dot_precision(v.dtype)
        tensors = (q, k, v, out, out32, lse, m)
        scalars = (*q.stride(), *k.stride(), *v.stride(), *out.stride(), *m_strides,
                   heads, nq, nk, feat, dv, seed, _threshold(dropout_p), scale)  # fmt: skip
        _launch(
            _fwd_kernel, lambda bm_, bn_: (cdiv(nq, bm_), bsz * heads), tensors, scalars, bm, bn, warps, stages,
            BF=bf, BV=bv, HAS_MASK=has_mask, DROPOUT=dropout, PREC=prec, VPREC=prec, SAVE32=save32,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, mask, out32, lse)
        ctx.cfg = (dropout_p, seed)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, mask, out, lse = ctx.saved_tensors
        dropout_p, seed = ctx.cfg
        bsz, heads, nq, feat = q.shape
        nk, dv = k.shape[2], v.shape[3]
        bf, bv = pow2(feat), pow2(dv)
        bm, bn, warps, stages = _bwd_blocks(bf, v.dtype)
        grad = grad.to(v.dtype)
        delta = (grad.float() * out.float()).sum(-1).reshape(bsz * heads, nq)  # out: the fp32 output
        has_mask = mask is not None
        m, m_strides = mask_arguments(mask, lse)
        dropout = dropout_p > 0
        scale = dropout_scale(dropout_p)
        dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
        dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
        dvv = torch.empty_like(v)
        prec = dot_precision(v.dtype)
        common = dict(BF=bf, BV=bv, HAS_MASK=has_mask, DROPOUT=dropout, PREC=prec, VPREC=prec)
        tail = (heads, nq, nk, feat, dv, seed, _threshold(dropout_p), scale)
        strides = (*q.stride(), *k.stride(), *v.stride(), *grad.stride(), *m_strides)
        _launch(
            _bwd_kv_kernel, lambda bm_, bn_: (cdiv(nk, bn_), bsz * heads), (q, k, v, grad, lse, delta, m, dk, dvv),
            (*strides, *dk.stride(), *dvv.stride(), *tail), bm, bn, warps, stages, **common,
        )  # fmt: skip
        _launch(
            _bwd_q_kernel, lambda bm_, bn_: (cdiv(nq, bm_), bsz * heads), (q, k, v, grad, lse, delta, m, dq),
            (*strides, *dq.stride(), *tail), bm, bn, warps, stages, **common,
        )  # fmt: skip
        return dq, dk, dvv, None, None, None


def _launch(kernel, grid_of, tensors, scalars, bm, bn, warps, stages, **meta):
    """Launch with these blocks; if they do not fit the chip's shared memory/registers, with 32×32, 1 stage.

    ``scalars`` end with (seed, dropout threshold, scale): the seed, new at each call with dropout, is keyed
    by its specialisation only (:func:`qra.kernels._launch.launch_kernel`)."""
    free = (len(scalars) - 3,)
    try:
        launch_kernel(kernel, grid_of(bm, bn), tensors, scalars, free, BM=bm, BN=bn, num_warps=warps,
                      num_stages=stages, **meta)  # fmt: skip
    except OutOfResources:
        launch_kernel(kernel, grid_of(32, 32), tensors, scalars, free, BM=32, BN=32, num_warps=4, num_stages=1,
                      **meta)  # fmt: skip


def fused_softmax_attention(fq, fk, v, key_padding_mask=None, dropout_p: float = 0.0, seed=None) -> torch.Tensor:
    """The Triton path of :func:`qra.kernels.softmax_attention` (arguments already checked)."""
    fq, fk = fq.to(v.dtype), fk.to(v.dtype)
    seed = (_new_seed() if seed is None else int(seed)) if dropout_p > 0 else 0
    mask = mask_bytes(key_padding_mask, v.device)
    return _FlashAttention.apply(fq, fk, v, mask, float(dropout_p), seed)
