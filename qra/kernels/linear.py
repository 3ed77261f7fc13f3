"""Non-causal linear attention, fused: out = φq(φkᵀV) / guard(φq·Σφk) with fp32 accumulation.

Forward, two kernels:
    ``_state``  grid (B·H, splits): each program sums φk_jᵀ v_j and φk_j over its run of key blocks
                and adds them (fp32 atomics) into S [B·H, m, dv] and z [B·H, m].
    ``_out``    grid (B·H, splits): each program loads S, z once and writes out for its query blocks.
Backward, two kernels (g = ∂L/∂out, den_i = φq_i·z, d_i = guard(den_i), a_i = φq_i S):
    ``_bwd_q``  dφq_i = (g_i Sᵀ)/d_i + dden_i z with dden_i = -(g_i·a_i)/d_i² where |den_i| ≥ eps (else 0;
                g_i·a_i = φq_i·(g_i Sᵀ), so a is never formed); reduces dS = Σ φq_iᵀ g_i/d_i and
                dz = Σ dden_i φq_i over its query blocks into fp32 buffers.
    ``_bwd_k``  dφk_j = keep_j (v_j dSᵀ + dz), dv_j = keep_j φk_j dS.
With bf16 inputs the fp32 intermediates (S, dS, g/d) enter the tensor-core products as a bf16
hi + lo pair, which keeps about 16 mantissa bits (these kernels pass LOWP as the helpers' SPLIT: they always
split; the RFF kernels' ``SPLIT_PRODUCTS`` setting is theirs alone); fp32 inputs multiply in ieee fp32; fp16 inputs are
promoted to fp32 by the launcher.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch_kernel
from ._util import mask_arguments, mask_bytes, pow2, splits, sum_buffers

BLOCK_N = 64


@triton.jit
def _guard(den, eps):
    return tl.where(tl.abs(den) < eps, tl.where(den < 0, -eps, eps), den)


@triton.jit
def _split(b_fp32, LOWP: tl.constexpr, SPLIT: tl.constexpr, DTYPE: tl.constexpr):
    """An fp32 tile for 16-bit products (LOWP): a (hi, lo) pair of DTYPE with about 16 mantissa bits (SPLIT), or
    rounded to DTYPE once (hi, hi) for one product; itself twice for fp32.

    Split a loop-invariant tile once, before the loop, and multiply with :func:`_dot_pair` inside it."""
    if LOWP:
        hi = b_fp32.to(DTYPE)
        if SPLIT:  # noqa: SIM108  (a constexpr branch: only one side is compiled)
            lo = (b_fp32 - hi.to(tl.float32)).to(DTYPE)
        else:
            lo = hi
    else:
        hi = b_fp32
        lo = b_fp32
    return hi, lo


@triton.jit
def _dot_pair(a, hi, lo, LOWP: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """a @ (hi + lo) for a pair from :func:`_split` (a @ hi alone when it is not SPLIT)."""
    if LOWP:
        out = tl.dot(a, hi)
        if SPLIT:
            out += tl.dot(a, lo)
    else:
        out = tl.dot(a, hi, input_precision=PREC)
    return out


@triton.jit
def _split_dot(a, b_fp32, LOWP: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """a @ b with a in the input dtype and b an fp32 tile."""
    hi, lo = _split(b_fp32, LOWP, SPLIT, a.dtype)
    return _dot_pair(a, hi, lo, LOWP, SPLIT, PREC)


@triton.jit
def _state_kernel(
    FK, V, MASK, S, Z,
    s_fb, s_fh, s_fn, s_ff,
    s_vb, s_vh, s_vn, s_vc,
    s_mb, s_mn,
    H, N, F, DV, PER_PROGRAM,
    BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    part = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    fk_base = FK + b * s_fb + h * s_fh
    v_base = V + b * s_vb + h * s_vh
    acc = tl.zeros((BF, BV), dtype=tl.float32)
    zacc = tl.zeros((BF,), dtype=tl.float32)
    for blk in range(0, PER_PROGRAM):
        offs_n = (part * PER_PROGRAM + blk) * BN + tl.arange(0, BN)
        keep = offs_n < N
        if HAS_MASK:
            keep = keep & (tl.load(MASK + b * s_mb + offs_n * s_mn, mask=offs_n < N, other=0) != 0)
        fk = tl.load(
            fk_base + offs_n[:, None] * s_fn + offs_f[None, :] * s_ff,
            mask=keep[:, None] & (offs_f[None, :] < F),
            other=0.0,
        )
        v = tl.load(
            v_base + offs_n[:, None] * s_vn + offs_c[None, :] * s_vc,
            mask=keep[:, None] & (offs_c[None, :] < DV),
            other=0.0,
        )
        acc = tl.dot(tl.trans(fk), v, acc, input_precision=PREC)
        zacc += tl.sum(fk.to(tl.float32), axis=0)
    s_ptr = S + bh.to(tl.int64) * F * DV + offs_f[:, None] * DV + offs_c[None, :]
    tl.atomic_add(s_ptr, acc, mask=(offs_f[:, None] < F) & (offs_c[None, :] < DV))
    tl.atomic_add(Z + bh.to(tl.int64) * F + offs_f, zacc, mask=offs_f < F)


@triton.jit
def _out_kernel(
    FQ, S, Z, OUT,
    s_qb, s_qh, s_qn, s_qf,
    s_ob, s_oh, s_on, s_oc,
    H, N, F, DV, PER_PROGRAM, eps,
    BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    LOWP: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    part = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    fmask = offs_f < F
    cmask = offs_c < DV
    state = tl.load(
        S + bh.to(tl.int64) * F * DV + offs_f[:, None] * DV + offs_c[None, :],
        mask=fmask[:, None] & cmask[None, :],
        other=0.0,
    )
    z = tl.load(Z + bh.to(tl.int64) * F + offs_f, mask=fmask, other=0.0)
    q_base = FQ + b * s_qb + h * s_qh
    o_base = OUT + b * s_ob + h * s_oh
    for blk in range(0, PER_PROGRAM):
        offs_n = (part * PER_PROGRAM + blk) * BN + tl.arange(0, BN)
        nmask = offs_n < N
        fq = tl.load(
            q_base + offs_n[:, None] * s_qn + offs_f[None, :] * s_qf, mask=nmask[:, None] & fmask[None, :], other=0.0
        )
        num = _split_dot(fq, state, LOWP, LOWP, PREC)
        den = _guard(tl.sum(fq.to(tl.float32) * z[None, :], axis=1), eps)
        out = num / den[:, None]
        tl.store(
            o_base + offs_n[:, None] * s_on + offs_c[None, :] * s_oc,
            out.to(OUT.dtype.element_ty),
            mask=nmask[:, None] & cmask[None, :],
        )


@triton.jit
def _bwd_q_kernel(
    FQ, G, S, Z, DFQ, DS, DZ,
    s_qb, s_qh, s_qn, s_qf,
    s_gb, s_gh, s_gn, s_gc,
    s_db, s_dh, s_dn, s_df,
    H, N, F, DV, PER_PROGRAM, eps,
    BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    LOWP: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    part = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    fmask = offs_f < F
    cmask = offs_c < DV
    state_t = tl.load(  # Sᵀ [BV, BF]
        S + bh.to(tl.int64) * F * DV + offs_f[None, :] * DV + offs_c[:, None],
        mask=fmask[None, :] & cmask[:, None],
        other=0.0,
    )
    z = tl.load(Z + bh.to(tl.int64) * F + offs_f, mask=fmask, other=0.0)
    q_base = FQ + b * s_qb + h * s_qh
    g_base = G + b * s_gb + h * s_gh
    d_base = DFQ + b * s_db + h * s_dh
    ds_acc = tl.zeros((BF, BV), dtype=tl.float32)
    dz_acc = tl.zeros((BF,), dtype=tl.float32)
    for blk in range(0, PER_PROGRAM):
        offs_n = (part * PER_PROGRAM + blk) * BN + tl.arange(0, BN)
        nmask = offs_n < N
        fq = tl.load(
            q_base + offs_n[:, None] * s_qn + offs_f[None, :] * s_qf, mask=nmask[:, None] & fmask[None, :], other=0.0
        )
        g = tl.load(
            g_base + offs_n[:, None] * s_gn + offs_c[None, :] * s_gc, mask=nmask[:, None] & cmask[None, :], other=0.0
        )
        g = g.to(fq.dtype)
        gs = _split_dot(g, state_t, LOWP, LOWP, PREC)  # g Sᵀ [BN, BF]
        fq32 = fq.to(tl.float32)
        den = tl.sum(fq32 * z[None, :], axis=1)
        d = _guard(den, eps)
        ga = tl.sum(fq32 * gs, axis=1)
        dden = tl.where(tl.abs(den) >= eps, -ga / (d * d), 0.0)
        dfq = gs / d[:, None] + dden[:, None] * z[None, :]
        tl.store(
            d_base + offs_n[:, None] * s_dn + offs_f[None, :] * s_df,
            dfq.to(DFQ.dtype.element_ty),
            mask=nmask[:, None] & fmask[None, :],
        )
        gt = g.to(tl.float32) / d[:, None]
        ds_acc += _split_dot(tl.trans(fq), gt, LOWP, LOWP, PREC)
        dz_acc += tl.sum(fq32 * dden[:, None], axis=0)
    tl.atomic_add(
        DS + bh.to(tl.int64) * F * DV + offs_f[:, None] * DV + offs_c[None, :],
        ds_acc,
        mask=fmask[:, None] & cmask[None, :],
    )
    tl.atomic_add(DZ + bh.to(tl.int64) * F + offs_f, dz_acc, mask=fmask)


@triton.jit
def _bwd_k_kernel(
    FK, V, MASK, DS, DZ, DFK, DV_,
    s_fb, s_fh, s_fn, s_ff,
    s_vb, s_vh, s_vn, s_vc,
    s_mb, s_mn,
    s_kb, s_kh, s_kn, s_kf,
    s_wb, s_wh, s_wn, s_wc,
    H, N, F, DV, PER_PROGRAM,
    BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    part = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    fmask = offs_f < F
    cmask = offs_c < DV
    ds = tl.load(  # [BF, BV]
        DS + bh.to(tl.int64) * F * DV + offs_f[:, None] * DV + offs_c[None, :],
        mask=fmask[:, None] & cmask[None, :],
        other=0.0,
    )
    dz = tl.load(DZ + bh.to(tl.int64) * F + offs_f, mask=fmask, other=0.0)
    fk_base = FK + b * s_fb + h * s_fh
    v_base = V + b * s_vb + h * s_vh
    dk_base = DFK + b * s_kb + h * s_kh
    dv_base = DV_ + b * s_wb + h * s_wh
    for blk in range(0, PER_PROGRAM):
        offs_n = (part * PER_PROGRAM + blk) * BN + tl.arange(0, BN)
        nmask = offs_n < N
        keep = nmask
        if HAS_MASK:
            keep = keep & (tl.load(MASK + b * s_mb + offs_n * s_mn, mask=nmask, other=0) != 0)
        fk = tl.load(
            fk_base + offs_n[:, None] * s_fn + offs_f[None, :] * s_ff, mask=keep[:, None] & fmask[None, :], other=0.0
        )
        v = tl.load(
            v_base + offs_n[:, None] * s_vn + offs_c[None, :] * s_vc, mask=keep[:, None] & cmask[None, :], other=0.0
        )
        dfk = _split_dot(v, tl.trans(ds), LOWP, LOWP, PREC) + dz[None, :]
        dfk = tl.where(keep[:, None], dfk, 0.0)
        dv = _split_dot(fk, ds, LOWP, LOWP, PREC)
        tl.store(
            dk_base + offs_n[:, None] * s_kn + offs_f[None, :] * s_kf,
            dfk.to(DFK.dtype.element_ty),
            mask=nmask[:, None] & fmask[None, :],
        )
        tl.store(
            dv_base + offs_n[:, None] * s_wn + offs_c[None, :] * s_wc,
            dv.to(DV_.dtype.element_ty),
            mask=nmask[:, None] & cmask[None, :],
        )


def _config(dtype: torch.dtype, bf: int, bv: int) -> tuple[bool, str, int]:
    lowp = dtype == torch.bfloat16
    warps = 8 if bf * bv >= 128 * 64 else 4
    return lowp, ("ieee" if dtype == torch.float32 else "tf32"), warps


class _LinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fq, fk, v, mask, eps):
        bsz, heads, nq, feat = fq.shape
        nk, dv = fk.shape[2], v.shape[3]
        bf, bv = pow2(feat), pow2(dv)
        lowp, prec, warps = _config(v.dtype, bf, bv)
        dev = v.device
        [(state, z)] = sum_buffers(bsz * heads, feat, dv, dev)
        has_mask = mask is not None
        m, m_strides = mask_arguments(mask, state)
        parts, per = splits(nk, BLOCK_N, bsz * heads, dev)
        launch_kernel(_state_kernel, (bsz * heads, parts), (fk, v, m, state, z),
                      (*fk.stride(), *v.stride(), *m_strides, heads, nk, feat, dv, per),
                      BN=BLOCK_N, BF=bf, BV=bv, HAS_MASK=has_mask, PREC=prec, num_warps=warps)  # fmt: skip
        out = torch.empty(bsz, heads, nq, dv, device=dev, dtype=v.dtype)
        parts, per = splits(nq, BLOCK_N, bsz * heads, dev)
        launch_kernel(_out_kernel, (bsz * heads, parts), (fq, state, z, out),
                      (*fq.stride(), *out.stride(), heads, nq, feat, dv, per, eps),
                      BN=BLOCK_N, BF=bf, BV=bv, LOWP=lowp, PREC=prec, num_warps=warps)  # fmt: skip
        ctx.save_for_backward(fq, fk, v, mask, state, z)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad):
        fq, fk, v, mask, state, z = ctx.saved_tensors
        bsz, heads, nq, feat = fq.shape
        nk, dv = fk.shape[2], v.shape[3]
        bf, bv = pow2(feat), pow2(dv)
        lowp, prec, warps = _config(v.dtype, bf, bv)
        dev = v.device
        dfq = torch.empty_like(fq)
        [(ds, dz)] = sum_buffers(bsz * heads, feat, dv, dev)
        parts, per = splits(nq, BLOCK_N, bsz * heads, dev)
        launch_kernel(_bwd_q_kernel, (bsz * heads, parts), (fq, grad, state, z, dfq, ds, dz),
                      (*fq.stride(), *grad.stride(), *dfq.stride(), heads, nq, feat, dv, per, ctx.eps),
                      BN=BLOCK_N, BF=bf, BV=bv, LOWP=lowp, PREC=prec, num_warps=warps)  # fmt: skip
        dfk = torch.empty_like(fk)
        dvv = torch.empty_like(v)
        has_mask = mask is not None
        m, m_strides = mask_arguments(mask, state)
        parts, per = splits(nk, BLOCK_N, bsz * heads, dev)
        launch_kernel(_bwd_k_kernel, (bsz * heads, parts), (fk, v, m, ds, dz, dfk, dvv),
                      (*fk.stride(), *v.stride(), *m_strides, *dfk.stride(), *dvv.stride(), heads, nk, feat, dv, per),
                      BN=BLOCK_N, BF=bf, BV=bv, HAS_MASK=has_mask, LOWP=lowp, PREC=prec, num_warps=warps)  # fmt: skip
        return dfq, dfk, dvv, None, None


def fused_linear_attention(fq, fk, v, key_padding_mask=None, eps: float = 1e-6) -> torch.Tensor:
    """The Triton path of :func:`qra.kernels.linear_attention` (arguments already checked)."""
    out_dtype = v.dtype
    dtype = v.dtype if fq.dtype == fk.dtype == v.dtype and v.dtype != torch.float16 else torch.float32
    fq, fk, v = fq.to(dtype), fk.to(dtype), v.to(dtype)
    out = _LinearAttention.apply(fq, fk, v, mask_bytes(key_padding_mask, v.device), float(eps))
    return out.to(out_dtype)
