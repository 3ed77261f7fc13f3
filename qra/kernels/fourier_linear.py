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
    ``_bwd_q``  dφq as in the unfused kernel, then dp = −scale·sin(p)·dφq, dq = dp·W; reduces dS, dz and,
                when W or the phases require grad (a learned σ), the map's dWᵀ += qᵀdp, db += Σdp.
    ``_bwd_k``  dφk = keep·(v·dSᵀ + dz), dv = φk·dS, then dk = dp·W and dWᵀ, db as above.
Where each (batch, head) gets one program anyway (B·H ≥ about two programs per SM, as at B = 32, H = 12), one
program per (batch, head) does it all instead (``SEQUENCE_PROGRAMS``): ``_whole_forward`` runs the state's sums
and then the outputs, ``_whole_backward`` the queries' pass and then the keys', the sums held in registers: no
atomics, no zero-filled buffers, two launches instead of five (the fill, four kernels).  The kernels share their
loops (``_state_sums``, ``_out_blocks``, ``_query_grads``, ``_key_grads``).
The forward's tiles carry c = cos(p) alone: the scale and the zeros of features beyond F enter S and z once a
program, the keep mask Σc's multiply-add, and each output row one division.  The forward then issued 23% fewer
instructions and ran in 83 µs against 99 (``results/bench/kernel-counters-h200-round20.txt``).  So do the
backward's (round 21): the keep mask and the scale enter as row factors, and the scale and the zeros beyond F enter
dS and dz once a program; the whole backward issued 10% fewer instructions, 215 µs against 221
(``kernel-counters-h200-round21.txt``).
Without the map's gradients (RFF's default: Ω and the phases are buffers) the backward kernels skip their
products and atomics, and the launcher their buffers and sums.
The angles are computed in fp32: with bf16 inputs W enters the product as a bf16 hi + lo pair (about
16 mantissa bits), fp32 inputs multiply in ieee fp32.  φ (in the forward c, the scale
moved onto the sums) is rounded to the input dtype before the attention products, as the unfused path casts the
map's output; the forward's Σc and c·z take the fp32 cosine.  The fp32 tiles that
enter the other products with bf16 inputs (S, dS, g/d, dp) are rounded to bf16 once, as FlashAttention
rounds its probabilities (the products accumulate in fp32); ``SPLIT_PRODUCTS`` splits them into hi + lo
pairs instead, two products each, loop-invariant ones once per program.  Why single products by default
(``results/bench/rff-precision-h200-round17.json``, H200, N = 512): forward + backward 0.472 against
0.563 ms; the output's error against float64 unchanged (0.17% rms), the gradients' 0.29–0.39% rms against
the pairs' 0.24–0.29% and SDPA's own 0.29% on bf16 inputs.  W rounded once in the angles would save 4% more and
give the features 4.5× their largest error (σ = 8; 16× at σ = 2, beyond the tests' bf16 tolerance), so the angles'
product stays split.  With bf16 inputs the cosine and
sine are the hardware's approximate ones after an exact-enough reduction to [−π, π] (absolute error about
1e-6, far below bf16's rounding of φ, 4e-3 relative); fp32 inputs use the correctly rounded library ones.

Launch shapes (rows per tile, warps, pipeline stages, programs per SM) are the tables ``FORWARD_LAUNCH``
and ``BACKWARD_LAUNCH``, chosen on the H200 by ``experiments/device/linear_tiles.py``, and
``WHOLE_FORWARD_LAUNCH``, ``WHOLE_BACKWARD_LAUNCH`` for the whole-sequence kernels
(``experiments/device/linear_ab.py``).  The map's weight
gradients are summed by fp32 atomics into ``WEIGHT_GRAD_SLOTS`` copies (program i adds into copy
i mod slots) and the copies summed afterwards, so that thousands of programs do not contend for one
[m, d] buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._launch import LaunchPlan, LaunchPlans, direct_launches, layout, prepare
from ._trig import cosine, hardware_trig, sine
from ._util import mask_arguments, mask_bytes, pow2, splits, sum_buffers
from .linear import _dot_pair, _guard, _split, _split_dot


@dataclass(frozen=True)
class Launch:
    """How one kernel is launched: ``block`` rows per tile, ``warps`` (None: 8 for large tiles, else 4),
    ``stages`` software-pipeline stages, a grid of about ``per_sm`` programs per SM, and ``max_registers`` a
    thread (None: as many as ptxas likes; the backward kernels take 229–254 at their shape, so one 8-warp program
    fits an SM: ``results/bench/kernel-registers-sm90-round14.txt``)."""

    block: int
    warps: int | None = None
    stages: int = 3
    per_sm: int = 2
    max_registers: int | None = None

    def options(self, warps: int) -> dict:
        """Triton's launch options for this shape with ``warps`` warps."""
        registers = {} if self.max_registers is None else {"maxnreg": self.max_registers}
        return dict(num_warps=warps, num_stages=self.stages, **registers)


#: the state and output kernels; the two backward kernels (which keep more tiles live).  Chosen on an H200 by the
#: GPU's own time (CUDA-graph replays): round 14 (``results/bench/linear-tiles-graph-h200-round14.json``) took the
#: forward from 0.184 to 0.150 ms at N = 512 with 64 rows and 4 warps; with the transposed state kernel (round 18,
#: ``results/bench/linear-ab-h200-round18-9c1dccd.json``) 128 rows and 8 warps take it to 0.126 ms (0.136 at 64 rows
#: and 4 warps; round 17's kernels 0.143), at 0.013 ms more at N = 32,768 (0.189 against 0.175,
#: ``linear-ab-h200-round18-1e8e2fd.json``), where the mode costs 0.03× SDPA either way.  No
#: backward shape, register cap included, beat round 3's, in round 14 nor for single products in round 18
#: (``results/bench/linear-tiles-graph-h200-round18.json``).
FORWARD_LAUNCH = Launch(block=128, warps=8, per_sm=2)
BACKWARD_LAUNCH = Launch(block=32, warps=8)
#: the one-program-per-sequence kernels (:data:`SEQUENCE_PROGRAMS`; their grid is one program per (batch, head), so
#: ``per_sm`` is unused).  At N = 512 on the H200 the forward took 0.099 ms at 128 rows on 8 warps against
#: 0.100–0.162 at seven other shapes (``results/bench/linear-ab-h200-round19-9e6a358.json``, ``-b280dd9.json``);
#: with the tiles carrying cos(p) alone (round 20) 0.0816 ms, against 0.090 with 2 stages, 0.108 at 64 rows and
#: 0.112 on 4 warps (``linear-ab-h200-round20-0423b54.json``).  The backward's best of six shapes is the split
#: kernels' own.  Forward + backward 0.3853 ms against SDPA's 0.3860, side by side (``-fac2e12.json``)
WHOLE_FORWARD_LAUNCH = Launch(block=128, warps=8)
WHOLE_BACKWARD_LAUNCH = Launch(block=32, warps=8)
#: the hardware's approximate cosine and sine for bf16 inputs (False: the library's, as for fp32)
APPROXIMATE_TRIG = True
#: with bf16 inputs, the fp32 tiles that enter products (S, dS, g/d, dp) do so as bf16 hi + lo pairs (False:
#: rounded to bf16 once, as FlashAttention rounds its probabilities; the products still accumulate in fp32)
SPLIT_PRODUCTS = False
#: copies of the weight-gradient buffers that the backward programs' atomics are spread over
WEIGHT_GRAD_SLOTS = 32
#: how a (batch, head)'s sequence is shared among programs: ``split`` over several programs per direction (the
#: state, output and two backward kernels, adding their sums by atomics into zeroed buffers), ``whole`` in one
#: program (the state and output in one kernel, the backward in another: the sums stay in registers), ``auto``
#: whole where the split grid would give each (batch, head) one program anyway (B·H ≥ about 2 programs per SM)
SEQUENCE_PROGRAMS = "auto"
#: the widest feature tile the whole-sequence kernels take: at 256 features the backward needs more shared memory
#: than an H200 has with a key mask (233,472 bytes against 232,448;
#: ``results/bench/gpu-tests-rff-h200-round19-9e6a358.txt``)
WHOLE_MAX_FEATURES = 128


@triton.jit
def _angles(x, w_hi, w_lo, bias, LOWP: tl.constexpr, PREC: tl.constexpr):
    """p = x·Wᵀ + b in fp32 for a [BN, BD] tile x (W as the hi + lo pair from :func:`_split`)."""
    return _dot_pair(x, w_hi, w_lo, LOWP, True, PREC) + bias[None, :]


@triton.jit
def _angles_transposed(x, w_hi, w_lo, bias, LOWP: tl.constexpr, PREC: tl.constexpr):
    """pᵀ = W·xᵀ + b in fp32, [BF, BN], for a [BN, BD] tile x (W [BF, BD] as the hi + lo pair from :func:`_split`):
    the angles with the features along rows, so that cos(pᵀ) enters φᵀV as the product's left operand as it is."""
    xt = tl.trans(x)
    if LOWP:  # noqa: SIM108  (a constexpr branch: only one side is compiled)
        out = tl.dot(w_hi, xt) + tl.dot(w_lo, xt)
    else:
        out = tl.dot(w_hi, xt, input_precision=PREC)
    return out + bias[:, None]


@triton.jit
def _load_rows(base, offs_n, offs_c, s_n, s_c, rows, cols):
    return tl.load(base + offs_n[:, None] * s_n + offs_c[None, :] * s_c, mask=rows[:, None] & cols[None, :], other=0.0)


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
def _load_weight_rows(W, B, D, F, BD: tl.constexpr, BF: tl.constexpr):
    """W [BF, BD] and b [BF] (fp32, zero outside F × D)."""
    offs_d = tl.arange(0, BD)
    offs_f = tl.arange(0, BF)
    inside = (offs_f[:, None] < F) & (offs_d[None, :] < D)
    w = tl.load(W + offs_f[:, None] * D + offs_d[None, :], mask=inside, other=0.0)
    bias = tl.load(B + offs_f, mask=offs_f < F, other=0.0)
    return w, bias


@triton.jit
def _times_w(dp, wt, w_hi, LOWP: tl.constexpr, SPLIT_PRODUCTS: tl.constexpr, PREC: tl.constexpr):
    """dp·W for an fp32 [BN, BF] tile dp: with 16-bit inputs and single products dp rounded once times W's 16-bit
    rounding w_hi, else fp32 (TF32 for 16-bit inputs) with the fp32 Wᵀ ``wt``."""
    if LOWP and not SPLIT_PRODUCTS:
        dx = tl.dot(dp.to(w_hi.dtype), tl.trans(w_hi))
    else:
        dx = tl.dot(dp, tl.trans(wt), input_precision=PREC)
    return dx


@triton.jit
def _grad_map(x, dc, p, wt, w_hi, dwt_acc, db_acc, LOWP: tl.constexpr, SPLIT_PRODUCTS: tl.constexpr,
              PREC: tl.constexpr, FAST: tl.constexpr, WEIGHT_GRAD: tl.constexpr):  # fmt: skip
    """dp = −sin(p)·dc for dc = ∂L/∂cos(p) (the callers' row factors carry φ's scale and masks); returns
    dx = dp·W (:func:`_times_w`) and the dWᵀ, db accumulators (updated when WEIGHT_GRAD)."""
    dp = -sine(p, FAST) * dc
    dx = _times_w(dp, wt, w_hi, LOWP, SPLIT_PRODUCTS, PREC)
    if WEIGHT_GRAD:
        dwt_acc = dwt_acc + _split_dot(tl.trans(x), dp, LOWP, SPLIT_PRODUCTS, PREC)
        db_acc = db_acc + tl.sum(dp, axis=0)
    return dx, dwt_acc, db_acc


@triton.jit
def _accumulate_weight_grads(DW, DB, dwt_acc, db_acc, D, F, SLOTS, BD: tl.constexpr, BF: tl.constexpr):
    """Add this program's dWᵀ and db into weight-gradient copy (program number mod SLOTS)."""
    slot = (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) % SLOTS
    DW += slot * F * D
    DB += slot * F
    offs_d = tl.arange(0, BD)
    offs_f = tl.arange(0, BF)
    tl.atomic_add(DW + offs_f[None, :] * D + offs_d[:, None], dwt_acc,
                  mask=(offs_d[:, None] < D) & (offs_f[None, :] < F))  # fmt: skip
    tl.atomic_add(DB + offs_f, db_acc, mask=offs_f < F)


@triton.jit
def _tile_offsets(D, F, DV, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr):
    """The column offsets of the q/k [·, BD] and value [·, BV] tiles, and which columns of those and of the feature
    tiles [·, BF] lie inside D, DV and F."""
    offs_d = tl.arange(0, BD)
    offs_c = tl.arange(0, BV)
    return offs_d, offs_c, offs_d < D, tl.arange(0, BF) < F, offs_c < DV


@triton.jit
def _state_sums(k_base, v_base, m_base, s_kn, s_kd, s_vn, s_vc, s_mn, w_hi, w_lo, bias, first, count, N, D, F, DV,
                scale, BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, HAS_MASK: tl.constexpr,
                LOWP: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """(Σ φkᵀV [BF, BV], Σ φk [BF]) in fp32 over ``count`` key blocks from block ``first`` (W as rows, split).

    The tiles carry c = cos(p) alone, not φk = scale·c masked: masked keys' rows of V load as zeros, so cᵀV needs
    no mask, Σ c takes the keep mask as a factor in its multiply-add, and the scale and the zeros of features beyond
    F enter the two sums once, at the end.  The forward is bound by the instructions it issues
    (``results/bench/kernel-counters-h200-round20.txt``), and the scale, the mask's select and Σφk's up-cast were
    among them for every element."""
    offs_d, offs_c, dmask, fmask, cmask = _tile_offsets(D, F, DV, BD, BF, BV)
    acc = tl.zeros((BF, BV), dtype=tl.float32)
    zacc = tl.zeros((BF,), dtype=tl.float32)
    for blk in range(0, count):
        offs_n = (first + blk) * BN + tl.arange(0, BN)
        keep = offs_n < N
        if HAS_MASK:
            keep = keep & (tl.load(m_base + offs_n * s_mn, mask=offs_n < N, other=0) != 0)
        k = _load_rows(k_base, offs_n, offs_d, s_kn, s_kd, keep, dmask)
        v = _load_rows(v_base, offs_n, offs_c, s_vn, s_vc, keep, cmask)
        # cᵀ [BF, BN] straight from the product: no transposition on its way into cᵀV
        ct = cosine(_angles_transposed(k, w_hi, w_lo, bias, LOWP, PREC), FAST)
        acc = tl.dot(ct.to(k_base.dtype.element_ty), v, acc, input_precision=PREC)
        zacc += tl.sum(ct * keep.to(tl.float32)[None, :], axis=1)
    live = tl.where(fmask, scale, 0.0)
    return acc * live[:, None], zacc * live


@triton.jit
def _out_blocks(q_base, o_base, s_qn, s_qd, s_on, s_oc, w_hi, w_lo, bias, s_hi, s_lo, z, first, count, N, D, F, DV,
                scale, eps, BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
                LOWP: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr, SPLIT_PRODUCTS: tl.constexpr):  # fmt: skip
    """out = φq S / guard(φq·z) for ``count`` query blocks from block ``first`` (Wᵀ and S as split pairs; S and z
    zero beyond F).

    With φq = scale·c, c = cos(p): out = (c S)·r for the row factor r = scale / guard(scale·(c·z)), so that the tile
    takes no scale and no mask (S and z are zero beyond F), and each row one division, not each element."""
    offs_d, offs_c, dmask, _, cmask = _tile_offsets(D, F, DV, BD, BF, BV)
    for blk in range(0, count):
        offs_n = (first + blk) * BN + tl.arange(0, BN)
        nmask = offs_n < N
        q = _load_rows(q_base, offs_n, offs_d, s_qn, s_qd, nmask, dmask)
        c = cosine(_angles(q, w_hi, w_lo, bias, LOWP, PREC), FAST)
        num = _dot_pair(c.to(q_base.dtype.element_ty), s_hi, s_lo, LOWP, SPLIT_PRODUCTS, PREC)
        den = scale * tl.sum(c * z[None, :], axis=1)
        out = num * (scale / _guard(den, eps))[:, None]
        tl.store(o_base + offs_n[:, None] * s_on + offs_c[None, :] * s_oc, out.to(o_base.dtype.element_ty),
                 mask=nmask[:, None] & cmask[None, :])  # fmt: skip


@triton.jit
def _query_grads(q_base, g_base, d_base, s_qn, s_qd, s_gn, s_gc, s_dn, s_dd, wt, w_hi, w_lo, bias, st_hi, st_lo, z,
                 first, count, N, D, F, DV, scale, eps, BN: tl.constexpr, BD: tl.constexpr,
                 BF: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr,
                 WEIGHT_GRAD: tl.constexpr, SPLIT_PRODUCTS: tl.constexpr):  # fmt: skip
    """dq for ``count`` query blocks from block ``first``; returns their (dS [BF, BV], dz [BF]) sums, zero beyond F,
    and the map's gradient sums dWᵀ [BD, BF], db [BF] (zero unless WEIGHT_GRAD).  Sᵀ comes as a split pair, zero
    beyond F as z is.

    As in the forward (:func:`_state_sums`), the tiles carry c = cos(p) alone, φq = scale·c: rows beyond N have
    g = 0 and features beyond F have Sᵀ = z = 0, so every term they would add is zero without a mask; the scale
    enters the row factors and, once a program, dS and dz."""
    offs_d, offs_c, dmask, fmask, cmask = _tile_offsets(D, F, DV, BD, BF, BV)
    ds_acc = tl.zeros((BF, BV), dtype=tl.float32)
    dz_acc = tl.zeros((BF,), dtype=tl.float32)
    dwt_acc = tl.zeros((BD, BF), dtype=tl.float32)
    db_acc = tl.zeros((BF,), dtype=tl.float32)
    for blk in range(0, count):
        offs_n = (first + blk) * BN + tl.arange(0, BN)
        nmask = offs_n < N
        q = _load_rows(q_base, offs_n, offs_d, s_qn, s_qd, nmask, dmask)
        g = _load_rows(g_base, offs_n, offs_c, s_gn, s_gc, nmask, cmask).to(q_base.dtype.element_ty)
        p = _angles(q, w_hi, w_lo, bias, LOWP, PREC)
        c = cosine(p, FAST)
        gs = _dot_pair(g, st_hi, st_lo, LOWP, SPLIT_PRODUCTS, PREC)  # g Sᵀ [BN, BF]
        den = scale * tl.sum(c * z[None, :], axis=1)
        inv = 1.0 / _guard(den, eps)  # one division a row: the tiles multiply
        ga = scale * tl.sum(c * gs, axis=1)
        dden = tl.where(tl.abs(den) >= eps, -ga * inv * inv, 0.0)
        # ∂L/∂c = scale·(gs·inv + dden·z), the scale in the row factors
        dc = gs * (scale * inv)[:, None] + (scale * dden)[:, None] * z[None, :]
        dq, dwt_acc, db_acc = _grad_map(q, dc, p, wt, w_hi, dwt_acc, db_acc, LOWP, SPLIT_PRODUCTS, PREC, FAST,
                                        WEIGHT_GRAD)  # fmt: skip
        tl.store(d_base + offs_n[:, None] * s_dn + offs_d[None, :] * s_dd, dq.to(d_base.dtype.element_ty),
                 mask=nmask[:, None] & dmask[None, :])  # fmt: skip
        ds_acc += _split_dot(tl.trans(c.to(q_base.dtype.element_ty)), g.to(tl.float32) * inv[:, None], LOWP,
                             SPLIT_PRODUCTS, PREC)  # fmt: skip
        dz_acc += tl.sum(c * dden[:, None], axis=0)
    live = tl.where(fmask, scale, 0.0)
    return ds_acc * live[:, None], dz_acc * live, dwt_acc, db_acc


@triton.jit
def _key_grads(k_base, v_base, m_base, dk_base, dv_base, s_kn, s_kd, s_vn, s_vc, s_mn, s_xn, s_xd, s_wn, s_wc, wt,
               w_hi, w_lo, bias, ds_hi, ds_lo, dz, dwt_acc, db_acc, first, count, N, D, F, DV, scale,
               BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, HAS_MASK: tl.constexpr,
               LOWP: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr, WEIGHT_GRAD: tl.constexpr,
               SPLIT_PRODUCTS: tl.constexpr):  # fmt: skip
    """dk, dv for ``count`` key blocks from block ``first`` (dS as a split pair; dS and dz zero beyond F); returns
    the map's gradient accumulators (updated when WEIGHT_GRAD).

    The tiles carry c = cos(p) alone: the keep mask and the scale enter as row factors, of ∂L/∂c = scale·keep·
    (v dSᵀ + dz) and of dv = scale·keep·(c dS), so no [rows × features] tile is masked or scaled."""
    offs_d, offs_c, dmask, _, cmask = _tile_offsets(D, F, DV, BD, BF, BV)
    for blk in range(0, count):
        offs_n = (first + blk) * BN + tl.arange(0, BN)
        nmask = offs_n < N
        keep = nmask
        if HAS_MASK:
            keep = keep & (tl.load(m_base + offs_n * s_mn, mask=nmask, other=0) != 0)
        k = _load_rows(k_base, offs_n, offs_d, s_kn, s_kd, keep, dmask)
        v = _load_rows(v_base, offs_n, offs_c, s_vn, s_vc, keep, cmask)
        p = _angles(k, w_hi, w_lo, bias, LOWP, PREC)
        row = tl.where(keep, scale, 0.0)
        vds = _dot_pair(v, tl.trans(ds_hi), tl.trans(ds_lo), LOWP, SPLIT_PRODUCTS, PREC)  # v dSᵀ [BN, BF]
        dc = (vds + dz[None, :]) * row[:, None]
        c = cosine(p, FAST).to(k_base.dtype.element_ty)
        dv = _dot_pair(c, ds_hi, ds_lo, LOWP, SPLIT_PRODUCTS, PREC) * row[:, None]
        dk, dwt_acc, db_acc = _grad_map(k, dc, p, wt, w_hi, dwt_acc, db_acc, LOWP, SPLIT_PRODUCTS, PREC, FAST,
                                        WEIGHT_GRAD)  # fmt: skip
        tl.store(dk_base + offs_n[:, None] * s_xn + offs_d[None, :] * s_xd, dk.to(dk_base.dtype.element_ty),
                 mask=nmask[:, None] & dmask[None, :])  # fmt: skip
        tl.store(dv_base + offs_n[:, None] * s_wn + offs_c[None, :] * s_wc, dv.to(dv_base.dtype.element_ty),
                 mask=nmask[:, None] & cmask[None, :])  # fmt: skip
    return dwt_acc, db_acc


@triton.jit
def _state_pointers(S, Z, bh, F, DV, BF: tl.constexpr, BV: tl.constexpr):
    """Pointers to a (batch, head)'s S [BF, BV] and z [BF] and their masks."""
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    fmask = offs_f < F
    s_ptr = S + bh.to(tl.int64) * F * DV + offs_f[:, None] * DV + offs_c[None, :]
    return s_ptr, fmask[:, None] & (offs_c[None, :] < DV), Z + bh.to(tl.int64) * F + offs_f, fmask


@triton.jit
def _load_sums(S, Z, bh, F, DV, BF: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr, SPLIT_PRODUCTS: tl.constexpr,
               DTYPE: tl.constexpr):  # fmt: skip
    """A (batch, head)'s S [BF, BV] as a split pair (:func:`_split`) and z [BF]."""
    s_ptr, s_mask, z_ptr, z_mask = _state_pointers(S, Z, bh, F, DV, BF, BV)
    s_hi, s_lo = _split(tl.load(s_ptr, mask=s_mask, other=0.0), LOWP, SPLIT_PRODUCTS, DTYPE)
    return s_hi, s_lo, tl.load(z_ptr, mask=z_mask, other=0.0)


@triton.jit
def _load_state_transposed(S, Z, bh, F, DV, BF: tl.constexpr, BV: tl.constexpr):
    """A (batch, head)'s Sᵀ [BV, BF] and z [BF]."""
    offs_f = tl.arange(0, BF)
    offs_c = tl.arange(0, BV)
    fmask = offs_f < F
    state_t = tl.load(S + bh.to(tl.int64) * F * DV + offs_f[None, :] * DV + offs_c[:, None],
                      mask=fmask[None, :] & (offs_c[:, None] < DV), other=0.0)  # fmt: skip
    return state_t, tl.load(Z + bh.to(tl.int64) * F + offs_f, mask=fmask, other=0.0)


@triton.jit
def _query_operands(W, B, S, Z, bh, D, F, DV, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
                    LOWP: tl.constexpr, SPLIT_PRODUCTS: tl.constexpr, DTYPE: tl.constexpr):  # fmt: skip
    """What the queries' backward pass takes besides its rows: Wᵀ (fp32 and as a split pair), b, Sᵀ as a split pair
    and z."""
    wt, bias = _load_weight(W, B, D, F, BD, BF)
    w_hi, w_lo = _split(wt, LOWP, True, DTYPE)
    state_t, z = _load_state_transposed(S, Z, bh, F, DV, BF, BV)
    st_hi, st_lo = _split(state_t, LOWP, SPLIT_PRODUCTS, DTYPE)
    return wt, w_hi, w_lo, bias, st_hi, st_lo, z


@triton.jit
def _state_kernel(
    K, V, MASK, W, B, S, Z,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vc,
    s_mb, s_mn,
    H, N, D, F, DV, PER_PROGRAM, scale,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr,
    SPLIT_PRODUCTS: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    part = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    w, bias = _load_weight_rows(W, B, D, F, BD, BF)
    w_hi, w_lo = _split(w, LOWP, True, K.dtype.element_ty)
    acc, zacc = _state_sums(K + b * s_kb + h * s_kh, V + b * s_vb + h * s_vh, MASK + b * s_mb, s_kn, s_kd, s_vn, s_vc,
                            s_mn, w_hi, w_lo, bias, part * PER_PROGRAM, PER_PROGRAM, N, D, F, DV, scale, BN, BD, BF,
                            BV, HAS_MASK, LOWP, PREC, FAST)  # fmt: skip
    s_ptr, s_mask, z_ptr, z_mask = _state_pointers(S, Z, bh, F, DV, BF, BV)
    tl.atomic_add(s_ptr, acc, mask=s_mask)
    tl.atomic_add(z_ptr, zacc, mask=z_mask)


@triton.jit
def _out_kernel(
    Q, W, B, S, Z, OUT,
    s_qb, s_qh, s_qn, s_qd,
    s_ob, s_oh, s_on, s_oc,
    H, N, D, F, DV, PER_PROGRAM, scale, eps,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    LOWP: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr,
    SPLIT_PRODUCTS: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    part = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    wt, bias = _load_weight(W, B, D, F, BD, BF)
    w_hi, w_lo = _split(wt, LOWP, True, Q.dtype.element_ty)
    s_hi, s_lo, z = _load_sums(S, Z, bh, F, DV, BF, BV, LOWP, SPLIT_PRODUCTS, Q.dtype.element_ty)
    _out_blocks(Q + b * s_qb + h * s_qh, OUT + b * s_ob + h * s_oh, s_qn, s_qd, s_on, s_oc, w_hi, w_lo, bias, s_hi,
                s_lo, z, part * PER_PROGRAM, PER_PROGRAM, N, D, F, DV, scale, eps, BN, BD, BF, BV, LOWP, PREC, FAST,
                SPLIT_PRODUCTS)  # fmt: skip


@triton.jit
def _whole_forward_kernel(
    Q, K, V, MASK, W, B, S, Z, OUT,
    s_qb, s_qh, s_qn, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vc,
    s_mb, s_mn,
    s_ob, s_oh, s_on, s_oc,
    H, NQ, NK, D, F, DV, scale, eps,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr,
    SPLIT_PRODUCTS: tl.constexpr, STORE_STATE: tl.constexpr,
):  # fmt: skip
    """The state and output kernels' work for one (batch, head) in one program: S and z stay in registers (written
    out only for a backward, STORE_STATE), with no atomics, no zero fill and no second launch."""
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    w, bias = _load_weight_rows(W, B, D, F, BD, BF)
    w_hi, w_lo = _split(w, LOWP, True, K.dtype.element_ty)
    acc, zacc = _state_sums(K + b * s_kb + h * s_kh, V + b * s_vb + h * s_vh, MASK + b * s_mb, s_kn, s_kd, s_vn, s_vc,
                            s_mn, w_hi, w_lo, bias, 0, tl.cdiv(NK, BN), NK, D, F, DV, scale, BN, BD, BF, BV,
                            HAS_MASK, LOWP, PREC, FAST)  # fmt: skip
    if STORE_STATE:
        s_ptr, s_mask, z_ptr, z_mask = _state_pointers(S, Z, bh, F, DV, BF, BV)
        tl.store(s_ptr, acc, mask=s_mask)
        tl.store(z_ptr, zacc, mask=z_mask)
    wt, bias = _load_weight(W, B, D, F, BD, BF)
    wt_hi, wt_lo = _split(wt, LOWP, True, Q.dtype.element_ty)
    s_hi, s_lo = _split(acc, LOWP, SPLIT_PRODUCTS, Q.dtype.element_ty)
    _out_blocks(Q + b * s_qb + h * s_qh, OUT + b * s_ob + h * s_oh, s_qn, s_qd, s_on, s_oc, wt_hi, wt_lo, bias,
                s_hi, s_lo, zacc, 0, tl.cdiv(NQ, BN), NQ, D, F, DV, scale, eps, BN, BD, BF, BV, LOWP, PREC, FAST,
                SPLIT_PRODUCTS)  # fmt: skip


@triton.jit
def _bwd_q_kernel(
    Q, G, W, B, S, Z, DQ, DS, DZ, DW, DB,
    s_qb, s_qh, s_qn, s_qd,
    s_gb, s_gh, s_gn, s_gc,
    s_db, s_dh, s_dn, s_dd,
    H, N, D, F, DV, PER_PROGRAM, SLOTS, scale, eps,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    LOWP: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr, WEIGHT_GRAD: tl.constexpr,
    SPLIT_PRODUCTS: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    part = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    wt, w_hi, w_lo, bias, st_hi, st_lo, z = _query_operands(W, B, S, Z, bh, D, F, DV, BD, BF, BV, LOWP, SPLIT_PRODUCTS,
                                                            Q.dtype.element_ty)  # fmt: skip
    ds_acc, dz_acc, dwt_acc, db_acc = _query_grads(
        Q + b * s_qb + h * s_qh, G + b * s_gb + h * s_gh, DQ + b * s_db + h * s_dh, s_qn, s_qd, s_gn, s_gc, s_dn, s_dd,
        wt, w_hi, w_lo, bias, st_hi, st_lo, z, part * PER_PROGRAM, PER_PROGRAM, N, D, F, DV, scale,
        eps, BN, BD, BF, BV, LOWP, PREC, FAST, WEIGHT_GRAD, SPLIT_PRODUCTS,
    )  # fmt: skip
    s_ptr, s_mask, z_ptr, z_mask = _state_pointers(DS, DZ, bh, F, DV, BF, BV)
    tl.atomic_add(s_ptr, ds_acc, mask=s_mask)
    tl.atomic_add(z_ptr, dz_acc, mask=z_mask)
    if WEIGHT_GRAD:
        _accumulate_weight_grads(DW, DB, dwt_acc, db_acc, D, F, SLOTS, BD, BF)


@triton.jit
def _bwd_k_kernel(
    K, V, MASK, W, B, DS, DZ, DK, DV_, DW, DB,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vc,
    s_mb, s_mn,
    s_xb, s_xh, s_xn, s_xd,
    s_wb, s_wh, s_wn, s_wc,
    H, N, D, F, DV, PER_PROGRAM, SLOTS, scale,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr, WEIGHT_GRAD: tl.constexpr,
    SPLIT_PRODUCTS: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    part = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    wt, bias = _load_weight(W, B, D, F, BD, BF)
    w_hi, w_lo = _split(wt, LOWP, True, K.dtype.element_ty)
    ds_hi, ds_lo, dz = _load_sums(DS, DZ, bh, F, DV, BF, BV, LOWP, SPLIT_PRODUCTS, K.dtype.element_ty)
    dwt_acc = tl.zeros((BD, BF), dtype=tl.float32)
    db_acc = tl.zeros((BF,), dtype=tl.float32)
    dwt_acc, db_acc = _key_grads(
        K + b * s_kb + h * s_kh, V + b * s_vb + h * s_vh, MASK + b * s_mb, DK + b * s_xb + h * s_xh,
        DV_ + b * s_wb + h * s_wh, s_kn, s_kd, s_vn, s_vc, s_mn, s_xn, s_xd, s_wn, s_wc, wt, w_hi, w_lo, bias, ds_hi,
        ds_lo, dz, dwt_acc, db_acc, part * PER_PROGRAM, PER_PROGRAM, N, D, F, DV, scale, BN, BD, BF, BV, HAS_MASK,
        LOWP, PREC, FAST, WEIGHT_GRAD, SPLIT_PRODUCTS,
    )  # fmt: skip
    if WEIGHT_GRAD:
        _accumulate_weight_grads(DW, DB, dwt_acc, db_acc, D, F, SLOTS, BD, BF)


@triton.jit
def _whole_backward_kernel(
    Q, K, V, MASK, G, W, B, S, Z, DQ, DK, DV_, DW, DB,
    s_qb, s_qh, s_qn, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vc,
    s_mb, s_mn,
    s_gb, s_gh, s_gn, s_gc,
    s_db, s_dh, s_dn, s_dd,
    s_xb, s_xh, s_xn, s_xd,
    s_wb, s_wh, s_wn, s_wc,
    H, NQ, NK, D, F, DV, SLOTS, scale, eps,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_MASK: tl.constexpr, LOWP: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr, WEIGHT_GRAD: tl.constexpr,
    SPLIT_PRODUCTS: tl.constexpr,
):  # fmt: skip
    """The two backward kernels' work for one (batch, head) in one program: the queries' pass sums dS and dz in
    registers and the keys' pass takes them from there, with no atomics, no zero fill and no second launch."""
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    wt, w_hi, w_lo, bias, st_hi, st_lo, z = _query_operands(W, B, S, Z, bh, D, F, DV, BD, BF, BV, LOWP, SPLIT_PRODUCTS,
                                                            Q.dtype.element_ty)  # fmt: skip
    ds, dz, dwt_acc, db_acc = _query_grads(
        Q + b * s_qb + h * s_qh, G + b * s_gb + h * s_gh, DQ + b * s_db + h * s_dh, s_qn, s_qd, s_gn, s_gc, s_dn, s_dd,
        wt, w_hi, w_lo, bias, st_hi, st_lo, z, 0, tl.cdiv(NQ, BN), NQ, D, F, DV, scale, eps, BN, BD,
        BF, BV, LOWP, PREC, FAST, WEIGHT_GRAD, SPLIT_PRODUCTS,
    )  # fmt: skip
    ds_hi, ds_lo = _split(ds, LOWP, SPLIT_PRODUCTS, K.dtype.element_ty)
    dwt_acc, db_acc = _key_grads(
        K + b * s_kb + h * s_kh, V + b * s_vb + h * s_vh, MASK + b * s_mb, DK + b * s_xb + h * s_xh,
        DV_ + b * s_wb + h * s_wh, s_kn, s_kd, s_vn, s_vc, s_mn, s_xn, s_xd, s_wn, s_wc, wt, w_hi, w_lo, bias, ds_hi,
        ds_lo, dz, dwt_acc, db_acc, 0, tl.cdiv(NK, BN), NK, D, F, DV, scale, BN, BD, BF, BV, HAS_MASK, LOWP, PREC,
        FAST, WEIGHT_GRAD, SPLIT_PRODUCTS,
    )  # fmt: skip
    if WEIGHT_GRAD:
        _accumulate_weight_grads(DW, DB, dwt_acc, db_acc, D, F, SLOTS, BD, BF)


def _launch_config(dtype: torch.dtype, bd: int, bf: int, bv: int, launch: Launch) -> dict:
    """The constexprs every RFF kernel takes (16-bit products?, dot precision, approximate trigonometry?, split
    products?) and the launch options (warps, stages, registers)."""
    lowp = dtype == torch.bfloat16
    # the interpreter has no approximate cosine; bf16 needs none of the library one's accuracy
    fast = lowp and APPROXIMATE_TRIG and hardware_trig()
    warps = launch.warps or (8 if bf * max(bd, bv) >= 128 * 64 else 4)
    precision = "ieee" if dtype == torch.float32 else "tf32"
    return dict(LOWP=lowp, PREC=precision, FAST=fast, SPLIT_PRODUCTS=SPLIT_PRODUCTS, **launch.options(warps))


def _grid(n: int, groups: int, device: torch.device, launch: Launch) -> tuple[tuple[int, int], int]:
    """((groups, programs per group), blocks per program) for ``n`` rows."""
    parts, per = splits(n, launch.block, groups, device, launch.per_sm)
    return (groups, parts), per


def _meta(dtype: torch.dtype, dim: int, feat: int, dv: int, launch: Launch) -> dict:
    """The constexprs and launch options of one kernel."""
    bd, bf, bv = pow2(dim), pow2(feat), pow2(dv)
    return dict(BN=launch.block, BD=bd, BF=bf, BV=bv, **_launch_config(dtype, bd, bf, bv, launch))


def _whole_sequences(lengths: tuple[int, int], groups: int, features: int, device: torch.device,
                     launch: Launch) -> bool:  # fmt: skip
    """Whether one program per (batch, head) takes whole sequences of these lengths (:data:`SEQUENCE_PROGRAMS`);
    never for more than :data:`WHOLE_MAX_FEATURES` features."""
    if SEQUENCE_PROGRAMS not in ("auto", "whole", "split"):
        raise ValueError(f"SEQUENCE_PROGRAMS={SEQUENCE_PROGRAMS!r}; accepted: 'auto', 'whole', 'split'")
    if SEQUENCE_PROGRAMS == "split" or pow2(features) > WHOLE_MAX_FEATURES:
        return False
    return SEQUENCE_PROGRAMS == "whole" or all(_grid(n, groups, device, launch)[0][1] == 1 for n in lengths)


#: the launches per input layout, bound to their compiled kernels (qra.kernels._launch): a repeated call issues
#: them with its tensors only, which at short lengths is most of what the host does
_PLANS = LaunchPlans()


class _FourierLinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, weight, bias, mask, scale, eps, backward):
        bsz, heads, nq, nk, _, feat, dv = _shapes(q, k, v, weight)
        dev = v.device
        groups = bsz * heads
        whole = _whole_sequences((nq, nk), groups, feat, dev, FORWARD_LAUNCH)
        whole_backward = backward and _whole_sequences((nq, nk), groups, feat, dev, BACKWARD_LAUNCH)
        # the split kernels add into zeroed sums: S and z, and a split backward's dS and dz, in one fill
        split_gradients = backward and not whole_backward
        copies = (0 if whole else 1) + split_gradients
        sums = sum_buffers(groups, feat, dv, dev, copies=copies) if copies else []
        state, z = sum_buffers(groups, feat, dv, dev, zeroed=False)[0] if whole else sums.pop(0)
        out = torch.empty(bsz, heads, nq, dv, device=dev, dtype=v.dtype)
        m, m_strides = mask_arguments(mask, state)
        # the module's launch settings too: experiments/device/linear_tiles.py changes them between calls
        settings = (scale, eps, FORWARD_LAUNCH, BACKWARD_LAUNCH, WHOLE_FORWARD_LAUNCH, WHOLE_BACKWARD_LAUNCH,
                    APPROXIMATE_TRIG, SPLIT_PRODUCTS, WEIGHT_GRAD_SLOTS, SEQUENCE_PROGRAMS)  # fmt: skip
        plan = _PLANS.plan((q, k, v, weight, bias, mask), *settings)
        args, scalars = (q, k, v, m, weight, bias, state, z, out), (*m_strides, scale, eps)
        if whole:
            _issue_whole_forward(plan, args, scalars, mask is not None, store_state=backward)
        else:
            _issue_split_forward(plan, args, scalars, mask is not None)
        ctx.save_for_backward(q, k, v, weight, bias, mask, state, z)
        ctx.scale, ctx.eps, ctx.plan, ctx.whole_backward = scale, eps, plan, whole_backward
        ctx.gradient_sums = sums.pop(0) if split_gradients else None  # zeroed; used by the first backward only
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, weight, bias, mask, state, z = ctx.saved_tensors
        bsz, heads, _, _, dim, feat, dv = _shapes(q, k, v, weight)
        dev = v.device
        dq, dk, dvv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        # the map's own gradients only when asked for: RFF's W and phases are fixed buffers unless σ is learned
        weight_grad = ctx.needs_input_grad[3] or ctx.needs_input_grad[4]
        slots = WEIGHT_GRAD_SLOTS if weight_grad else 1
        dw, db = sum_buffers(slots, feat, dim, dev)[0] if weight_grad else (state, z)  # without: never read
        m, m_strides = mask_arguments(mask, state)
        plan = ctx.plan if direct_launches() else LaunchPlan()
        variant = (layout(grad), weight_grad)  # what the backward's scalars depend on beyond the forward's key
        scalars = (*m_strides, slots, ctx.scale, ctx.eps)
        if ctx.whole_backward:
            args = (q, k, v, m, grad, weight, bias, state, z, dq, dk, dvv, dw, db)
            _issue_whole_backward(plan, variant, args, scalars, mask is not None)
        else:
            # zeroed in the forward; a second backward through the graph (retain_graph) needs fresh ones
            ds, dz = ctx.gradient_sums or sum_buffers(bsz * heads, feat, dv, dev)[0]
            ctx.gradient_sums = None
            args = (q, k, v, m, grad, weight, bias, state, z, ds, dz, dq, dk, dvv, dw, db)
            _issue_split_backward(plan, variant, args, scalars, mask is not None)
        if not weight_grad:
            return dq, dk, dvv, None, None, None, None, None, None
        return dq, dk, dvv, dw.sum(0), db.sum(0), None, None, None, None


def _shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weight: torch.Tensor) -> tuple[int, ...]:
    """(B, H, Nq, Nk, d, m, dv) of a call."""
    return (*q.shape[:3], k.shape[2], q.shape[3], weight.shape[0], v.shape[3])


def _issue_whole_forward(plan: LaunchPlan, args: tuple, scalars: tuple, has_mask: bool, store_state: bool) -> None:
    """The forward as one program per (batch, head), S and z written for a backward (``store_state``);
    ``scalars`` = (the mask's two strides, scale, eps)."""
    if plan.issue(("whole", store_state), args):
        return
    q, k, v, _, weight, _, _, _, out = args
    bsz, heads, nq, nk, dim, feat, dv = _shapes(q, k, v, weight)
    *m_strides, scale, eps = scalars
    launch_scalars = (*q.stride(), *k.stride(), *v.stride(), *m_strides, *out.stride(), heads, nq, nk, dim, feat, dv,
                      scale, eps)  # fmt: skip
    meta = _meta(v.dtype, dim, feat, dv, WHOLE_FORWARD_LAUNCH)
    plan.bind(("whole", store_state), prepare(_whole_forward_kernel, (bsz * heads, 1), args, launch_scalars,
                                              HAS_MASK=has_mask, STORE_STATE=store_state, **meta))  # fmt: skip


def _issue_split_forward(plan: LaunchPlan, args: tuple, scalars: tuple, has_mask: bool) -> None:
    """The forward as the state kernel's programs (atomics into the zeroed S, z), then the output kernel's;
    ``scalars`` = (the mask's two strides, scale, eps)."""
    q, k, v, m, weight, bias, state, z, out = args
    bsz, heads, nq, nk, dim, feat, dv = _shapes(q, k, v, weight)
    *m_strides, scale, eps = scalars
    meta = _meta(v.dtype, dim, feat, dv, FORWARD_LAUNCH)
    state_args, out_args = (k, v, m, weight, bias, state, z), (q, weight, bias, state, z, out)
    if not plan.issue("state", state_args):
        grid, per = _grid(nk, bsz * heads, v.device, FORWARD_LAUNCH)
        state_scalars = (*k.stride(), *v.stride(), *m_strides, heads, nk, dim, feat, dv, per, scale)
        plan.bind("state", prepare(_state_kernel, grid, state_args, state_scalars, HAS_MASK=has_mask, **meta))
    if not plan.issue("out", out_args):
        grid, per = _grid(nq, bsz * heads, v.device, FORWARD_LAUNCH)
        out_scalars = (*q.stride(), *out.stride(), heads, nq, dim, feat, dv, per, scale, eps)
        plan.bind("out", prepare(_out_kernel, grid, out_args, out_scalars, **meta))


def _issue_whole_backward(plan: LaunchPlan, variant: tuple, args: tuple, scalars: tuple, has_mask: bool) -> None:
    """The backward as one program per (batch, head); ``scalars`` = (the mask's two strides, weight-gradient
    slots, scale, eps)."""
    name = ("whole_bwd", variant)
    if plan.issue(name, args):
        return
    q, k, v, _, grad, weight, _, _, _, dq, dk, dvv, _, _ = args
    bsz, heads, nq, nk, dim, feat, dv = _shapes(q, k, v, weight)
    s_mb, s_mn, slots, scale, eps = scalars
    launch_scalars = (*q.stride(), *k.stride(), *v.stride(), s_mb, s_mn, *grad.stride(), *dq.stride(), *dk.stride(),
                      *dvv.stride(), heads, nq, nk, dim, feat, dv, slots, scale, eps)  # fmt: skip
    meta = _meta(v.dtype, dim, feat, dv, WHOLE_BACKWARD_LAUNCH)
    plan.bind(name, prepare(_whole_backward_kernel, (bsz * heads, 1), args, launch_scalars, HAS_MASK=has_mask,
                            WEIGHT_GRAD=variant[1], **meta))  # fmt: skip


def _issue_split_backward(plan: LaunchPlan, variant: tuple, args: tuple, scalars: tuple, has_mask: bool) -> None:
    """The backward as the query-block kernel's programs (atomics into the zeroed dS, dz), then the key-block
    kernel's; ``scalars`` = (the mask's two strides, weight-gradient slots, scale, eps)."""
    q, k, v, m, grad, weight, bias, state, z, ds, dz, dq, dk, dvv, dw, db = args
    bsz, heads, nq, nk, dim, feat, dv = _shapes(q, k, v, weight)
    s_mb, s_mn, slots, scale, eps = scalars
    meta = dict(_meta(v.dtype, dim, feat, dv, BACKWARD_LAUNCH), WEIGHT_GRAD=variant[1])
    q_args = (q, grad, weight, bias, state, z, dq, ds, dz, dw, db)
    k_args = (k, v, m, weight, bias, ds, dz, dk, dvv, dw, db)
    if not plan.issue(("bwd_q", variant), q_args):
        grid, per = _grid(nq, bsz * heads, v.device, BACKWARD_LAUNCH)
        q_scalars = (*q.stride(), *grad.stride(), *dq.stride(), heads, nq, dim, feat, dv, per, slots, scale, eps)
        plan.bind(("bwd_q", variant), prepare(_bwd_q_kernel, grid, q_args, q_scalars, **meta))
    if not plan.issue(("bwd_k", variant), k_args):
        grid, per = _grid(nk, bsz * heads, v.device, BACKWARD_LAUNCH)
        k_scalars = (*k.stride(), *v.stride(), s_mb, s_mn, *dk.stride(), *dvv.stride(), heads, nk, dim, feat, dv, per,
                     slots, scale)  # fmt: skip
        plan.bind(("bwd_k", variant), prepare(_bwd_k_kernel, grid, k_args, k_scalars, HAS_MASK=has_mask, **meta))


def fused_fourier_linear_attention(q, k, v, weight, phase, scale: float, key_padding_mask=None, eps: float = 1e-6):
    """The Triton path of :func:`qra.kernels.fourier_linear_attention` (arguments already checked)."""
    out_dtype = v.dtype
    dtype = v.dtype if q.dtype == k.dtype == v.dtype and v.dtype != torch.float16 else torch.float32
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    weight, phase = weight.float().contiguous(), phase.float().contiguous()
    mask = mask_bytes(key_padding_mask, v.device)
    backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, weight, phase))
    out = _FourierLinearAttention.apply(q, k, v, weight, phase, mask, float(scale), float(eps), backward)
    return out.to(out_dtype)
