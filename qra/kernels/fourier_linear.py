"""Non-causal linear attention with the feature map's prologue fused: φ(x) = scale·cos(x·Wᵀ + b) in the tiles.

The same attention as :mod:`qra.kernels.linear` — out = φq(φkᵀV) / guard(φq·Σφk), fp32 accumulation,
masked keys' features zeroed — but it takes the queries and keys themselves, not their features.
Each program forms the angles of its tile of queries or keys (one tensor-core product with W), takes
the cosine and uses it at once; the backward recomputes them.  φ(q), φ(k) ([B, H, N, m], fp32 in the
unfused path) are never written, which is where the unfused mode spent most of its time and memory
(``results/bench``: φ was 58–78% of the linear mode's time on the H200).

Kernels (grid (B·H, splits), as in :mod:`qra.kernels.linear`; g = ∂L/∂out, p = x·Wᵀ + b):
    ``_state``  S += φkᵀV, z += Σφk over the program's key blocks (fp32 atomics).
    ``_out``    out = φq S / guard(φq·z) for its query blocks.
    ``_bwd_q``  dφq as in the unfused kernel, then dp = −scale·sin(p)·dφq, dq = dp·W; reduces dS, dz and
                the map's dWᵀ += qᵀdp, db += Σdp.
    ``_bwd_k``  dφk = keep·(v·dSᵀ + dz), dv = φk·dS, then dk = dp·W and dWᵀ, db as above.
The angles are computed in fp32: with bf16 inputs W enters the product as a bf16 hi + lo pair (about
16 mantissa bits), fp32 inputs multiply in ieee fp32.  φ is rounded to the input dtype before the
attention products, exactly as the unfused path casts the map's output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from ._util import mask_bytes, pow2, splits
from .linear import _guard

#: (rows per tile, software-pipelining stages) to try in order, forward and backward (whose tiles are more):
#: a configuration whose shared memory the GPU cannot hold fails at launch, before it runs, and the next is tried
FORWARD_CONFIGS = ((64, 2), (64, 1), (32, 1), (16, 1))
BACKWARD_CONFIGS = ((32, 2), (32, 1), (16, 1))
_working_config: dict[tuple, int] = {}


@triton.jit
def _angles(x, wt, bias, FULL: tl.constexpr):
    """p = x·Wᵀ + b in fp32 for a [BN, BD] tile x."""
    return tl.dot(x, wt, input_precision=FULL) + bias[None, :]


@triton.jit
def _features(p, live, scale, DTYPE: tl.constexpr):
    """scale·cos(p) where ``live``, else 0, rounded to the input dtype (as the unfused path casts φ), in fp32."""
    return tl.where(live, scale * tl.cos(p), 0.0).to(DTYPE).to(tl.float32)


@triton.jit
def _load_rows(base, offs_n, offs_c, s_n, s_c, rows, cols):
    """A [BN, BC] tile, in fp32."""
    ptrs = base + offs_n[:, None] * s_n + offs_c[None, :] * s_c
    return tl.load(ptrs, mask=rows[:, None] & cols[None, :], other=0.0).to(tl.float32)


@triton.jit
def _load_weight(W, B, D, F, BD: tl.constexpr, BF: tl.constexpr):
    """Wᵀ [BD, BF] and b [BF] (fp32, zero outside D × F)."""
    offs_d = tl.arange(0, BD)
    offs_f = tl.arange(0, BF)
    inside = (offs_d[:, None] < D) & (offs_f[None, :] < F)
    wt = tl.load(W + offs_f[None, :] * D + offs_d[:, None], mask=inside, other=0.0)
    bias = tl.load(B + offs_f, mask=offs_f < F, other=0.0)
    return wt, bias


@triton.jit
def _grad_map(x, dfeat, p, wt, dwt_acc, db_acc, scale, FULL: tl.constexpr):
    """dp = −scale·sin(p)·dφ; returns dx = dp·W and the updated dWᵀ, db accumulators."""
    dp = -scale * tl.sin(p) * dfeat
    dx = tl.dot(dp, tl.trans(wt), input_precision=FULL)
    dwt_acc = tl.dot(tl.trans(x), dp, dwt_acc, input_precision=FULL)
    db_acc = db_acc + tl.sum(dp, axis=0)
    return dx, dwt_acc, db_acc


@triton.jit
def _accumulate_weight_grads(DW, DB, dwt_acc, db_acc, D, F, BD: tl.constexpr, BF: tl.constexpr):
    offs_d = tl.arange(0, BD)
    offs_f = tl.arange(0, BF)
    tl.atomic_add(DW + offs_f[None, :] * D + offs_d[:, None], dwt_acc,
                  mask=(offs_d[:, None] < D) & (offs_f[None, :] < F))  # fmt: skip
    tl.atomic_add(DB + offs_f, db_acc, mask=offs_f < F)


@triton.jit
def _state_kernel(
    K, V, MASK, W, B, S, Z,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vc,
    s_mb, s_mn,
    H, N, D, F, DV, scale, PER_PROGRAM,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, EXACT: tl.constexpr, FULL: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    part = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_d = tl.arange(0, BD)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    dmask = offs_d < D
    fmask = offs_f < F
    cmask = offs_c < DV
    wt, bias = _load_weight(W, B, D, F, BD, BF)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    acc = tl.zeros((BF, BV), dtype=tl.float32)
    zacc = tl.zeros((BF,), dtype=tl.float32)
    for blk in range(0, PER_PROGRAM):
        offs_n = (part * PER_PROGRAM + blk) * BN + tl.arange(0, BN)
        keep = offs_n < N
        if HAS_MASK:
            keep = keep & (tl.load(MASK + b * s_mb + offs_n * s_mn, mask=offs_n < N, other=0) != 0)
        k = _load_rows(k_base, offs_n, offs_d, s_kn, s_kd, keep, dmask)
        v = _load_rows(v_base, offs_n, offs_c, s_vn, s_vc, keep, cmask)
        fk = _features(_angles(k, wt, bias, FULL), keep[:, None] & fmask[None, :], scale, K.dtype.element_ty)
        acc = tl.dot(tl.trans(fk), v, acc, input_precision=EXACT)
        zacc += tl.sum(fk, axis=0)
    s_ptr = S + bh.to(tl.int64) * F * DV + offs_f[:, None] * DV + offs_c[None, :]
    tl.atomic_add(s_ptr, acc, mask=fmask[:, None] & cmask[None, :])
    tl.atomic_add(Z + bh.to(tl.int64) * F + offs_f, zacc, mask=fmask)


@triton.jit
def _out_kernel(
    Q, W, B, S, Z, OUT,
    s_qb, s_qh, s_qn, s_qd,
    s_ob, s_oh, s_on, s_oc,
    H, N, D, F, DV, scale, eps, PER_PROGRAM,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    EXACT: tl.constexpr, FULL: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    part = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_d = tl.arange(0, BD)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    dmask = offs_d < D
    fmask = offs_f < F
    cmask = offs_c < DV
    wt, bias = _load_weight(W, B, D, F, BD, BF)
    state = tl.load(S + bh.to(tl.int64) * F * DV + offs_f[:, None] * DV + offs_c[None, :],
                    mask=fmask[:, None] & cmask[None, :], other=0.0)  # fmt: skip
    z = tl.load(Z + bh.to(tl.int64) * F + offs_f, mask=fmask, other=0.0)
    q_base = Q + b * s_qb + h * s_qh
    o_base = OUT + b * s_ob + h * s_oh
    for blk in range(0, PER_PROGRAM):
        offs_n = (part * PER_PROGRAM + blk) * BN + tl.arange(0, BN)
        nmask = offs_n < N
        q = _load_rows(q_base, offs_n, offs_d, s_qn, s_qd, nmask, dmask)
        fq = _features(_angles(q, wt, bias, FULL), nmask[:, None] & fmask[None, :], scale, Q.dtype.element_ty)
        num = tl.dot(fq, state, input_precision=FULL)
        den = _guard(tl.sum(fq * z[None, :], axis=1), eps)
        out = num / den[:, None]
        tl.store(o_base + offs_n[:, None] * s_on + offs_c[None, :] * s_oc, out.to(OUT.dtype.element_ty),
                 mask=nmask[:, None] & cmask[None, :])  # fmt: skip


@triton.jit
def _bwd_q_kernel(
    Q, G, W, B, S, Z, DQ, DS, DZ, DW, DB,
    s_qb, s_qh, s_qn, s_qd,
    s_gb, s_gh, s_gn, s_gc,
    s_db, s_dh, s_dn, s_dd,
    H, N, D, F, DV, scale, eps, PER_PROGRAM,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    EXACT: tl.constexpr, FULL: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    part = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_d = tl.arange(0, BD)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    dmask = offs_d < D
    fmask = offs_f < F
    cmask = offs_c < DV
    wt, bias = _load_weight(W, B, D, F, BD, BF)
    state_t = tl.load(S + bh.to(tl.int64) * F * DV + offs_f[None, :] * DV + offs_c[:, None],
                      mask=fmask[None, :] & cmask[:, None], other=0.0)  # fmt: skip  # Sᵀ [BV, BF]
    z = tl.load(Z + bh.to(tl.int64) * F + offs_f, mask=fmask, other=0.0)
    q_base = Q + b * s_qb + h * s_qh
    g_base = G + b * s_gb + h * s_gh
    d_base = DQ + b * s_db + h * s_dh
    ds_acc = tl.zeros((BF, BV), dtype=tl.float32)
    dz_acc = tl.zeros((BF,), dtype=tl.float32)
    dwt_acc = tl.zeros((BD, BF), dtype=tl.float32)
    db_acc = tl.zeros((BF,), dtype=tl.float32)
    for blk in range(0, PER_PROGRAM):
        offs_n = (part * PER_PROGRAM + blk) * BN + tl.arange(0, BN)
        nmask = offs_n < N
        q = _load_rows(q_base, offs_n, offs_d, s_qn, s_qd, nmask, dmask)
        g = _load_rows(g_base, offs_n, offs_c, s_gn, s_gc, nmask, cmask)
        p = _angles(q, wt, bias, FULL)
        fq32 = _features(p, nmask[:, None] & fmask[None, :], scale, Q.dtype.element_ty)
        gs = tl.dot(g, state_t, input_precision=FULL)  # g Sᵀ [BN, BF]
        den = tl.sum(fq32 * z[None, :], axis=1)
        d = _guard(den, eps)
        ga = tl.sum(fq32 * gs, axis=1)
        dden = tl.where(tl.abs(den) >= eps, -ga / (d * d), 0.0)
        dfq = gs / d[:, None] + dden[:, None] * z[None, :]
        dfq = tl.where(nmask[:, None] & fmask[None, :], dfq, 0.0)
        dq, dwt_acc, db_acc = _grad_map(q, dfq, p, wt, dwt_acc, db_acc, scale, FULL)
        tl.store(d_base + offs_n[:, None] * s_dn + offs_d[None, :] * s_dd, dq.to(DQ.dtype.element_ty),
                 mask=nmask[:, None] & dmask[None, :])  # fmt: skip
        ds_acc = tl.dot(tl.trans(fq32), g / d[:, None], ds_acc, input_precision=FULL)
        dz_acc += tl.sum(fq32 * dden[:, None], axis=0)
    tl.atomic_add(DS + bh.to(tl.int64) * F * DV + offs_f[:, None] * DV + offs_c[None, :], ds_acc,
                  mask=fmask[:, None] & cmask[None, :])  # fmt: skip
    tl.atomic_add(DZ + bh.to(tl.int64) * F + offs_f, dz_acc, mask=fmask)
    _accumulate_weight_grads(DW, DB, dwt_acc, db_acc, D, F, BD, BF)


@triton.jit
def _bwd_k_kernel(
    K, V, MASK, W, B, DS, DZ, DK, DV_, DW, DB,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vc,
    s_mb, s_mn,
    s_xb, s_xh, s_xn, s_xd,
    s_wb, s_wh, s_wn, s_wc,
    H, N, D, F, DV, scale, PER_PROGRAM,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, EXACT: tl.constexpr, FULL: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    part = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_d = tl.arange(0, BD)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    dmask = offs_d < D
    fmask = offs_f < F
    cmask = offs_c < DV
    wt, bias = _load_weight(W, B, D, F, BD, BF)
    ds = tl.load(DS + bh.to(tl.int64) * F * DV + offs_f[:, None] * DV + offs_c[None, :],
                 mask=fmask[:, None] & cmask[None, :], other=0.0)  # fmt: skip  # [BF, BV]
    dz = tl.load(DZ + bh.to(tl.int64) * F + offs_f, mask=fmask, other=0.0)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    dk_base = DK + b * s_xb + h * s_xh
    dv_base = DV_ + b * s_wb + h * s_wh
    dwt_acc = tl.zeros((BD, BF), dtype=tl.float32)
    db_acc = tl.zeros((BF,), dtype=tl.float32)
    for blk in range(0, PER_PROGRAM):
        offs_n = (part * PER_PROGRAM + blk) * BN + tl.arange(0, BN)
        nmask = offs_n < N
        keep = nmask
        if HAS_MASK:
            keep = keep & (tl.load(MASK + b * s_mb + offs_n * s_mn, mask=nmask, other=0) != 0)
        k = _load_rows(k_base, offs_n, offs_d, s_kn, s_kd, keep, dmask)
        v = _load_rows(v_base, offs_n, offs_c, s_vn, s_vc, keep, cmask)
        p = _angles(k, wt, bias, FULL)
        live = keep[:, None] & fmask[None, :]
        fk = _features(p, live, scale, K.dtype.element_ty)
        dfk = tl.where(live, tl.dot(v, tl.trans(ds), input_precision=FULL) + dz[None, :], 0.0)
        dv = tl.dot(fk, ds, input_precision=FULL)
        dk, dwt_acc, db_acc = _grad_map(k, dfk, p, wt, dwt_acc, db_acc, scale, FULL)
        tl.store(dk_base + offs_n[:, None] * s_xn + offs_d[None, :] * s_xd, dk.to(DK.dtype.element_ty),
                 mask=nmask[:, None] & dmask[None, :])  # fmt: skip
        tl.store(dv_base + offs_n[:, None] * s_wn + offs_c[None, :] * s_wc, dv.to(DV_.dtype.element_ty),
                 mask=nmask[:, None] & cmask[None, :])  # fmt: skip
    _accumulate_weight_grads(DW, DB, dwt_acc, db_acc, D, F, BD, BF)


def _launch_config(dtype: torch.dtype, bf: int, bv: int) -> tuple[str, str, int]:
    """(precision of products of input-dtype values, of products with an fp32 operand, warps).

    The tiles are fp32 in registers whatever the input dtype.  bf16 values are exact in tf32, so their
    products are exact in one tf32 pass; products with an fp32 operand (W, S, gradients) take three
    (``tf32x3``, about fp32's accuracy).  bf16 tensor-core products of in-register tiles gave wrong
    outputs and illegal memory accesses on the H200 (Triton 3.6) for 64-wide head dims, which this avoids.
    fp32 inputs multiply in ieee fp32.  8 warps for state tiles of ≥ 128 × 64, as in :mod:`qra.kernels.linear`.
    """
    warps = 8 if bf * bv >= 128 * 64 else 4
    if dtype == torch.float32:
        return "ieee", "ieee", warps
    return "tf32", "tf32x3", warps


def _launch(kernel, configs, rows: int, groups: int, device: torch.device, args: tuple, **constexprs) -> None:
    """kernel[(groups, splits)](*args, PER_PROGRAM, BN=…) with the first configuration the GPU can hold.

    The choice is remembered per kernel and compile-time setting, so only a first call can try several.
    """
    key = (kernel.fn.__name__, device.index, *sorted(constexprs.items()))
    first = _working_config.get(key, 0)
    for index in range(first, len(configs)):
        block, stages = configs[index]
        parts, per = splits(rows, block, groups, device)
        try:
            kernel[(groups, parts)](*args, per, BN=block, num_stages=stages, **constexprs)
        except OutOfResources:
            if index == len(configs) - 1:
                raise
            continue
        _working_config[key] = index
        return


class _FourierLinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, weight, bias, mask, scale, eps):
        bsz, heads, nq, dim = q.shape
        nk, dv = k.shape[2], v.shape[3]
        feat = weight.shape[0]
        bd, bf, bv = pow2(dim), pow2(feat), pow2(dv)
        exact, full, warps = _launch_config(v.dtype, bf, bv)
        dev = v.device
        state = torch.zeros(bsz * heads, feat, dv, device=dev, dtype=torch.float32)
        z = torch.zeros(bsz * heads, feat, device=dev, dtype=torch.float32)
        has_mask = mask is not None
        m = mask if has_mask else state
        m_strides = tuple(mask.stride()) if has_mask else (0, 0)
        args = (k, v, m, weight, bias, state, z, *k.stride(), *v.stride(), *m_strides, heads, nk, dim, feat, dv, scale)
        _launch(_state_kernel, FORWARD_CONFIGS, nk, bsz * heads, dev, args,
                BD=bd, BF=bf, BV=bv, HAS_MASK=has_mask, EXACT=exact, FULL=full, num_warps=warps)  # fmt: skip
        out = torch.empty(bsz, heads, nq, dv, device=dev, dtype=v.dtype)
        args = (q, weight, bias, state, z, out, *q.stride(), *out.stride(), heads, nq, dim, feat, dv, scale, eps)
        _launch(_out_kernel, FORWARD_CONFIGS, nq, bsz * heads, dev, args,
                BD=bd, BF=bf, BV=bv, EXACT=exact, FULL=full, num_warps=warps)  # fmt: skip
        ctx.save_for_backward(q, k, v, weight, bias, mask, state, z)
        ctx.scale, ctx.eps = scale, eps
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, weight, bias, mask, state, z = ctx.saved_tensors
        bsz, heads, nq, dim = q.shape
        nk, dv = k.shape[2], v.shape[3]
        feat = weight.shape[0]
        bd, bf, bv = pow2(dim), pow2(feat), pow2(dv)
        exact, full, warps = _launch_config(v.dtype, bf, bv)
        dev = v.device
        dq, dk, dvv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        ds, dz = torch.zeros_like(state), torch.zeros_like(z)
        dw, db = torch.zeros_like(weight), torch.zeros_like(bias)
        args = (q, grad, weight, bias, state, z, dq, ds, dz, dw, db, *q.stride(), *grad.stride(), *dq.stride(),
                heads, nq, dim, feat, dv, ctx.scale, ctx.eps)  # fmt: skip
        _launch(_bwd_q_kernel, BACKWARD_CONFIGS, nq, bsz * heads, dev, args,
                BD=bd, BF=bf, BV=bv, EXACT=exact, FULL=full, num_warps=warps)  # fmt: skip
        has_mask = mask is not None
        m = mask if has_mask else state
        m_strides = tuple(mask.stride()) if has_mask else (0, 0)
        args = (k, v, m, weight, bias, ds, dz, dk, dvv, dw, db, *k.stride(), *v.stride(), *m_strides,
                *dk.stride(), *dvv.stride(), heads, nk, dim, feat, dv, ctx.scale)  # fmt: skip
        _launch(_bwd_k_kernel, BACKWARD_CONFIGS, nk, bsz * heads, dev, args,
                BD=bd, BF=bf, BV=bv, HAS_MASK=has_mask, EXACT=exact, FULL=full, num_warps=warps)  # fmt: skip
        return dq, dk, dvv, dw, db, None, None, None


def fused_fourier_linear_attention(q, k, v, weight, phase, scale: float, key_padding_mask=None, eps: float = 1e-6):
    """The Triton path of :func:`qra.kernels.fourier_linear_attention` (arguments already checked)."""
    out_dtype = v.dtype
    dtype = v.dtype if q.dtype == k.dtype == v.dtype and v.dtype != torch.float16 else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    weight, phase = weight.float().contiguous(), phase.float().contiguous()
    mask = mask_bytes(key_padding_mask, v.device)
    out = _FourierLinearAttention.apply(q, k, v, weight, phase, mask, float(scale), float(eps))
    return out.to(out_dtype)
