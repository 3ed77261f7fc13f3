"""Flash-style fidelity attention: softmax over the keys of β·|⟨ψq|ψk⟩|², forward and backward.

Why a kernel of its own: read as real rows P = (Re ψ₀, Im ψ₀, Re ψ₁, Im ψ₁, …) (width 2·2ⁿ: the complex
states' own memory, ``torch.view_as_real``) and rotated, R = (Im ψ₀, −Re ψ₀, Im ψ₁, −Re ψ₁, …), the overlap is
two ordinary products,
    A = Pq·Pkᵀ = Re⟨ψq|ψk⟩,   C = Pq·Rkᵀ = Im⟨ψq|ψk⟩,   s = β_h (A² + C²),
so each score tile costs two tensor-core products over 2·2ⁿ, the fidelity is never formed as an
N×N tensor, and memory is O(N).  The kernels read the complex64 states in place and convert them to the
product dtype in registers.  A program's own fixed tile is rotated as it loads (column c from c xor 1, odd
columns negated), and C = −Rq·Pkᵀ, so the loops load each tile of the other side once; the backward loops,
which multiply by rotated tiles, read R as the rows of −i·ψ, formed once per backward (one elementwise op).
Gradients are written as complex64 tensors: no packed copies, no unpacking.  (Round 4 packed float16 rows in
PyTorch; its glue cost more GPU time than its kernels: ``results/bench/attention-profile-h200.txt``.)

Precision: states with 16-bit values are multiplied in float16 (amplitudes lie in [−1, 1]: 11 bits of
mantissa, 8× bfloat16's, which keeps β·fidelity within ~1e-3·β of the float32 value).  With float32
values the rows are float32, multiplied as three TF32 products (float32's accuracy).  The backward's
gradient products run in float16 too, on dA·S and dC·S with S a power of two chosen per call from a
bound on |dA| (:func:`gradient_scale`), so that they neither overflow nor lose the small gradients of
training without loss scaling; the fp32 sums are divided by S again (float32 values: S = 1).

Backward: δ_i = dO_i·O_i (PyTorch), a key-block kernel for dK, dV (and dβ, fp32 atomics), a
query-block kernel for dQ, both recomputing the scores.  With dA = 2β·A·dS and dC = 2β·C·dS,
    dPq = dA·Pk + dC·Rk,   dPk = dAᵀ·Pq − dCᵀ·Rq   (Rq the query rows rotated like the keys),
written interleaved as they are, i.e. as complex gradients ∂L/∂Re + i ∂L/∂Im (torch's convention).

Dropout and key padding follow :mod:`qra.kernels.flash` exactly (the same Philox keep-mask).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._util import dropout_scale, mask_arguments, mask_bytes, pow2
from .flash import _keep, _key_ok, _launch, _new_seed, _threshold, keep_at, softmax_block, store_softmax_output


@triton.jit
def _keep_t(seed, bh, offs_m, offs_n, Nq, Nk, threshold):
    """flash._keep's dropout mask as a [BN, BM] (key, query) tile."""
    idx = (bh.to(tl.int64) * Nq + offs_m[None, :].to(tl.int64)) * Nk + offs_n[:, None].to(tl.int64)
    return keep_at(seed, idx, threshold)


@triton.jit
def _state_rows(base, offs_r, s_r, rmask, offs_f, FEAT, ROW: tl.constexpr, ROTATE: tl.constexpr):
    """A [rows, BF] tile of interleaved (Re, Im) state rows as ``ROW`` values; columns from FEAT = 2·(amplitudes)
    on, and masked rows, are 0.  ``ROTATE``: the rows rotated to (Im, −Re) pairs as they load (column c from
    column c xor 1, odd columns negated), for a program's fixed tile."""
    cols = offs_f ^ 1 if ROTATE else offs_f
    x = tl.load(base + offs_r[:, None] * s_r + cols[None, :], mask=rmask[:, None] & (offs_f[None, :] < FEAT), other=0.0)
    if ROTATE:
        x = tl.where((offs_f % 2 == 0)[None, :], x, -x)
    return x.to(ROW)


@triton.jit
def _state_cols(base, offs_r, s_r, rmask, offs_f, FEAT, ROW: tl.constexpr):
    """:func:`_state_rows` transposed, [BF, rows], as the loops' products take them."""
    inside = rmask[None, :] & (offs_f[:, None] < FEAT)
    return tl.load(base + offs_r[None, :] * s_r + offs_f[:, None], mask=inside, other=0.0).to(ROW)


@triton.jit(do_not_specialize=["seed"])
def _fwd_kernel(
    Q, K, V, OUT, OUT32, LSE, MASK, BETA,
    s_qb, s_qh, s_qn,
    s_kb, s_kh, s_kn,
    s_vb, s_vh, s_vn, s_vc,
    s_ob, s_oh, s_on, s_oc,
    s_mb, s_mn,
    H, Nq, Nk, DV, FEAT,
    seed, threshold, scale,
    BM: tl.constexpr, BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, ROW: tl.constexpr,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr, SAVE32: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    bh64 = bh.to(tl.int64)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    cmask = offs_c < DV
    mmask = offs_m < Nq
    K = K + b * s_kb + h * s_kh  # this (batch, head)'s rows
    q = _state_rows(Q + b * s_qb + h * s_qh, offs_m, s_qn, mmask, offs_f, FEAT, ROW, False)
    q_turned = -_state_rows(Q + b * s_qb + h * s_qh, offs_m, s_qn, mmask, offs_f, FEAT, ROW, True)
    beta2 = tl.load(BETA + h) * 1.4426950408889634  # base-2 softmax
    v_base = V + b * s_vb + h * s_vh
    m_i = tl.full((BM,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BM,), dtype=tl.float32)
    acc = tl.zeros((BM, BV), dtype=tl.float32)
    for start in range(0, Nk, BN):
        offs_n = start + tl.arange(0, BN)
        nmask = offs_n < Nk
        kt = _state_cols(K, offs_n, s_kn, nmask, offs_f, FEAT, ROW)  # [BF, BN]
        a = tl.dot(q, kt, input_precision=PREC)
        c = tl.dot(q_turned, kt, input_precision=PREC)
        ok = _key_ok(MASK, b, s_mb, s_mn, offs_n, Nk, HAS_MASK)
        s = tl.where(ok[None, :], beta2 * (a * a + c * c), float("-inf"))
        m_i, l_i, alpha, p = softmax_block(s, m_i, l_i)
        if DROPOUT:
            p = tl.where(_keep(seed, bh, offs_m, offs_n, Nq, Nk, threshold), p * scale, 0.0)
        v = tl.load(
            v_base + offs_n[:, None] * s_vn + offs_c[None, :] * s_vc, mask=nmask[:, None] & cmask[None, :], other=0.0
        )
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=VPREC)
    store_softmax_output(
        acc, m_i, l_i, OUT, b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_c[None, :] * s_oc,
        OUT32, (bh64 * Nq + offs_m[:, None]) * DV + offs_c[None, :], LSE, bh64 * Nq + offs_m,
        mmask[:, None] & cmask[None, :], mmask, SAVE32,
    )  # fmt: skip


@triton.jit(do_not_specialize=["seed"])
def _bwd_kv_kernel(
    Q, RQ, K, V, DO, LSE, DELTA, MASK, BETA, GSCALE, DK, DV_, DBETA,
    s_qb, s_qh, s_qn,
    s_rb, s_rh, s_rn,
    s_kb, s_kh, s_kn,
    s_vb, s_vh, s_vn, s_vc,
    s_ob, s_oh, s_on, s_oc,
    s_mb, s_mn,
    s_wb, s_wh, s_wn, s_wc,
    s_xb, s_xh, s_xn,
    H, Nq, Nk, DV, FEAT,
    seed, threshold, scale,
    BM: tl.constexpr, BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, ROW: tl.constexpr,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr, BETA_GRAD: tl.constexpr,
):  # fmt: skip
    """One key block: its tiles are computed transposed ([BN, BM], keys × queries), as dK and dV need them."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    bh64 = bh.to(tl.int64)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    cmask = offs_c < DV
    nmask = offs_n < Nk
    Q = Q + b * s_qb + h * s_qh  # this (batch, head)'s rows
    RQ = RQ + b * s_rb + h * s_rh
    kp = _state_rows(K + b * s_kb + h * s_kh, offs_n, s_kn, nmask, offs_f, FEAT, ROW, False)  # [BN, BF]
    kr = _state_rows(K + b * s_kb + h * s_kh, offs_n, s_kn, nmask, offs_f, FEAT, ROW, True)
    v = tl.load(  # [BN, BV]
        V + b * s_vb + h * s_vh + offs_n[:, None] * s_vn + offs_c[None, :] * s_vc,
        mask=nmask[:, None] & cmask[None, :],
        other=0.0,
    )
    beta = tl.load(BETA + h)
    beta2 = beta * 1.4426950408889634
    gscale = tl.load(GSCALE)
    twice = 2.0 * beta * gscale
    ok = _key_ok(MASK, b, s_mb, s_mn, offs_n, Nk, HAS_MASK)
    dk = tl.zeros((BN, BF), dtype=tl.float32)
    dv = tl.zeros((BN, BV), dtype=tl.float32)
    dbeta = tl.zeros((BN,), dtype=tl.float32)
    o_base = DO + b * s_ob + h * s_oh
    for start in range(0, Nq, BM):
        offs_m = start + tl.arange(0, BM)
        mmask = offs_m < Nq
        qt = _state_cols(Q, offs_m, s_qn, mmask, offs_f, FEAT, ROW)  # [BF, BM]
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
        qrt = _state_cols(RQ, offs_m, s_rn, mmask, offs_f, FEAT, ROW)
        dk = tl.dot((-g * c).to(qrt.dtype), tl.trans(qrt), dk, input_precision=PREC)
    tl.store(DK + b * s_xb + h * s_xh + offs_n[:, None] * s_xn + offs_f[None, :], dk / gscale,
             mask=nmask[:, None] & (offs_f[None, :] < FEAT))  # fmt: skip
    if BETA_GRAD:
        tl.atomic_add(DBETA + h, tl.sum(dbeta, axis=0))
    tl.store(
        DV_ + b * s_wb + h * s_wh + offs_n[:, None] * s_wn + offs_c[None, :] * s_wc,
        dv.to(DV_.dtype.element_ty),
        mask=nmask[:, None] & cmask[None, :],
    )


@triton.jit(do_not_specialize=["seed"])
def _bwd_q_kernel(
    Q, K, RK, V, DO, LSE, DELTA, MASK, BETA, GSCALE, DQ,
    s_qb, s_qh, s_qn,
    s_kb, s_kh, s_kn,
    s_rb, s_rh, s_rn,
    s_vb, s_vh, s_vn, s_vc,
    s_ob, s_oh, s_on, s_oc,
    s_mb, s_mn,
    s_xb, s_xh, s_xn,
    H, Nq, Nk, DV, FEAT,
    seed, threshold, scale,
    BM: tl.constexpr, BN: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, ROW: tl.constexpr,
    HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PREC: tl.constexpr, VPREC: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    bh64 = bh.to(tl.int64)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    cmask = offs_c < DV
    mmask = offs_m < Nq
    K = K + b * s_kb + h * s_kh  # this (batch, head)'s rows
    RK = RK + b * s_rb + h * s_rh
    q = _state_rows(Q + b * s_qb + h * s_qh, offs_m, s_qn, mmask, offs_f, FEAT, ROW, False)
    q_turned = -_state_rows(Q + b * s_qb + h * s_qh, offs_m, s_qn, mmask, offs_f, FEAT, ROW, True)
    do = tl.load(
        DO + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_c[None, :] * s_oc,
        mask=mmask[:, None] & cmask[None, :],
        other=0.0,
    )
    lse = tl.load(LSE + bh64 * Nq + offs_m, mask=mmask, other=float("inf"))
    delta = tl.load(DELTA + bh64 * Nq + offs_m, mask=mmask, other=0.0)
    beta = tl.load(BETA + h)
    beta2 = beta * 1.4426950408889634
    gscale = tl.load(GSCALE)
    twice = 2.0 * beta * gscale
    dq = tl.zeros((BM, BF), dtype=tl.float32)
    v_base = V + b * s_vb + h * s_vh
    for start in range(0, Nk, BN):
        offs_n = start + tl.arange(0, BN)
        nmask = offs_n < Nk
        kpt = _state_cols(K, offs_n, s_kn, nmask, offs_f, FEAT, ROW)  # [BF, BN]
        a = tl.dot(q, kpt, input_precision=PREC)
        c = tl.dot(q_turned, kpt, input_precision=PREC)
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
        krt = _state_cols(RK, offs_n, s_rn, nmask, offs_f, FEAT, ROW)
        dq = tl.dot((g * c).to(krt.dtype), tl.trans(krt), dq, input_precision=PREC)
    tl.store(DQ + b * s_xb + h * s_xh + offs_m[:, None] * s_xn + offs_f[None, :], dq / gscale,
             mask=mmask[:, None] & (offs_f[None, :] < FEAT))  # fmt: skip


#: (BM, BN, warps, stages) by (packed row width, 16-bit planes) for the forward, the key-block (dK, dV)
#: and the query-block (dQ) backward kernels.  16-bit, width 128 (6 qubits): timed on an H200
#: (experiments/device/fidelity_tiles.py); the others were chosen by ptxas's register and spill report for
#: sm_90 (float32 planes need ≥ 64-row products: 32-row float32 tiles compiled to 32 registers and kilobytes
#: of spills).  16-bit widths without an entry take small tiles; float32 rows are at most 128 wide
#: (``qra.kernels.MAX_FLOAT32_STATE_DIM``).
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
    (128, True): (32, 64, 4, 2),
    (256, True): (32, 32, 8, 1),
    **{(width, False): (16, 64, 4, 1) for width in (16, 32, 64, 128)},
}
BACKWARD_Q_TILES: dict[tuple[int, bool], tuple[int, int, int, int]] = {
    (32, True): (64, 64, 4, 2),
    (64, True): (64, 32, 4, 2),
    (128, True): (64, 32, 4, 1),
    (256, True): (32, 32, 8, 1),
    **{(width, False): (64, 16, 4, 1) for width in (16, 32, 64, 128)},
}
_SMALL_TILES = (32, 32, 4, 1)


def _tiles(table: dict, width: int, half: bool) -> tuple[int, int, int, int]:
    return table.get((width, half), _SMALL_TILES)


def _real_rows(states: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] complex64 states as float32 [B, H, N, 2D] interleaved rows, in place where the amplitudes
    are contiguous (the kernels take any batch, head and row strides)."""
    if states.stride(-1) != 1:
        states = states.contiguous()
    return torch.view_as_real(states).flatten(-2)


def _turned_rows(rows: torch.Tensor) -> torch.Tensor:
    """The rotated rows R = (Im, −Re, …) of interleaved rows: those of −i·ψ (exact), contiguous, for the backward
    loops, which need them tile after tile (the kernels rotate a program's own fixed tile as they load it)."""
    return torch.view_as_real(torch.view_as_complex(rows.unflatten(-1, (-1, 2))) * -1j).flatten(-2)


def _grad_rows(shape: torch.Size, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A complex64 gradient of ``shape`` and its float32 interleaved view, which the kernels write."""
    grad = torch.empty(shape, device=device, dtype=torch.complex64)
    return grad, torch.view_as_real(grad).flatten(-2)


def _row_strides(rows: torch.Tensor) -> tuple[int, int, int]:
    return rows.stride(0), rows.stride(1), rows.stride(2)


class _FidelityAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, states_q, states_k, v, mask, beta, dropout_p, seed):
        bsz, heads, nq, dim = states_q.shape
        nk, dv = states_k.shape[2], v.shape[3]
        half = v.dtype != torch.float32
        width = 2 * pow2(dim, floor=8)
        q_rows, k_rows = _real_rows(states_q), _real_rows(states_k)
        bv = pow2(dv)
        bm, bn, warps, stages = _tiles(FORWARD_TILES, width, half)
        out = torch.empty(bsz, heads, nq, dv, device=v.device, dtype=v.dtype)
        lse = torch.empty(bsz * heads, nq, device=v.device, dtype=torch.float32)
        out32 = torch.empty(bsz * heads, nq, dv, device=v.device, dtype=torch.float32) if half else out
        m, m_strides = mask_arguments(mask, lse)
        dropout = dropout_p > 0
        scale = dropout_scale(dropout_p)
        args = (
            q_rows, k_rows, v, out, out32, lse, m, beta,
            *_row_strides(q_rows), *_row_strides(k_rows), *v.stride(), *out.stride(), *m_strides,
            heads, nq, nk, dv, 2 * dim, seed, _threshold(dropout_p), scale,
        )  # fmt: skip
        _launch(
            _fwd_kernel, lambda bm_, bn_: (triton.cdiv(nq, bm_), bsz * heads), args, bm, bn, warps, stages,
            BF=width, BV=bv, ROW=_row_dtype(half), HAS_MASK=mask is not None, DROPOUT=dropout,
            PREC=_precision(half), VPREC=_precision(half), SAVE32=half,
        )  # fmt: skip
        ctx.save_for_backward(q_rows, k_rows, v, mask, beta, out32, lse)
        ctx.cfg = (dropout_p, seed, half, width, states_q.shape, states_k.shape, ctx.needs_input_grad[4])
        return out

    @staticmethod
    def backward(ctx, grad):
        q_rows, k_rows, v, mask, beta, out, lse = ctx.saved_tensors
        dropout_p, seed, half, width, q_shape, k_shape, beta_grad = ctx.cfg
        bsz, heads, nq, dim = q_shape
        nk, dv = k_shape[2], v.shape[3]
        bv = pow2(dv)
        grad = grad.to(v.dtype)
        delta = (grad.float() * out.float().view(bsz, heads, nq, dv)).sum(-1).reshape(bsz * heads, nq)
        scale = dropout_scale(dropout_p)
        gscale = gradient_scale(grad, v, q_rows, k_rows, beta, scale) if half else torch.ones(1, device=v.device)
        m, m_strides = mask_arguments(mask, lse)
        dropout = dropout_p > 0
        dk, dk_rows = _grad_rows(k_shape, v.device)
        dq, dq_rows = _grad_rows(q_shape, v.device)
        dvv = torch.empty_like(v)
        dbeta = torch.zeros(heads, device=v.device, dtype=torch.float32)
        common = dict(
            BF=width, BV=bv, ROW=_row_dtype(half), HAS_MASK=mask is not None, DROPOUT=dropout,
            PREC=_precision(half), VPREC=_precision(half),
        )  # fmt: skip
        q_turned, k_turned = _turned_rows(q_rows), _turned_rows(k_rows)
        others = (*v.stride(), *grad.stride(), *m_strides)
        tail = (heads, nq, nk, dv, 2 * dim, seed, _threshold(dropout_p), scale)
        args = (
            q_rows, q_turned, k_rows, v, grad, lse, delta, m, beta, gscale, dk_rows, dvv, dbeta,
            *_row_strides(q_rows), *_row_strides(q_turned), *_row_strides(k_rows), *others,
            *dvv.stride(), *_row_strides(dk_rows), *tail,
        )  # fmt: skip
        bm, bn, warps, stages = _tiles(BACKWARD_KV_TILES, width, half)
        _launch(
            _bwd_kv_kernel, lambda bm_, bn_: (triton.cdiv(nk, bn_), bsz * heads), args, bm, bn, warps, stages,
            BETA_GRAD=beta_grad, **common,
        )  # fmt: skip
        args = (
            q_rows, k_rows, k_turned, v, grad, lse, delta, m, beta, gscale, dq_rows,
            *_row_strides(q_rows), *_row_strides(k_rows), *_row_strides(k_turned), *others,
            *_row_strides(dq_rows), *tail,
        )  # fmt: skip
        bm, bn, warps, stages = _tiles(BACKWARD_Q_TILES, width, half)
        _launch(
            _bwd_q_kernel, lambda bm_, bn_: (triton.cdiv(nq, bm_), bsz * heads), args, bm, bn, warps, stages, **common
        )
        return dq, dk, dvv, None, (dbeta if beta_grad else None), None, None


#: |dA·S| stays below this (float16's largest value is 65,504)
GRADIENT_RANGE = 2.0**14


def gradient_scale(grad, v, q_rows, k_rows, beta, dropout_scale: float) -> torch.Tensor:
    """A power of two S (a 1-element fp32 tensor, no host sync) with |dA·S|, |dC·S| ≤ GRADIENT_RANGE.

    |dA| = |2β·A·dS| ≤ 2|β|·‖ψq‖‖ψk‖·p·(|dO_i·v_j| + |dO_i·O_i|) ≤ 4|β|·‖ψq‖‖ψk‖·‖dO_i‖·max‖v‖·(dropout scale),
    with ‖ψ‖ the norm of a state's real row (Re, Im, …), which is the state's norm.
    """
    norms = [torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).amax() for x in (grad, v, q_rows, k_rows)]
    bound = (4.0 * dropout_scale) * beta.abs().amax() * norms[0] * norms[1] * norms[2] * norms[3]
    exponent = torch.floor(torch.log2(GRADIENT_RANGE / bound)).clamp(-60.0, 60.0)  # all-zero gradients: 2^60
    return torch.exp2(exponent).reshape(1)


def _row_dtype(half: bool) -> tl.dtype:
    """What the state rows are multiplied in: float16 for 16-bit values, float32 (as three TF32 products) else."""
    return tl.float16 if half else tl.float32


def _precision(half: bool) -> str:
    """16-bit operands multiply natively; float32 ones as three TF32 products (float32's accuracy on tensor
    cores; IEEE products on CUDA cores compiled to kilobytes of register spills)."""
    return "tf32" if half else "tf32x3"


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
    seed = (_new_seed() if seed is None else int(seed)) if dropout_p > 0 else 0
    mask = mask_bytes(key_padding_mask, v.device)
    return _FidelityAttention.apply(states_q, states_k, v, mask, beta_h, float(dropout_p), seed)
