"""Random features in one Triton pass each way, written once: Fourier features φ(x) = c_h·cos(x·Wᵀ + b) and
FAVOR+ positive features φ(x) = c_h·exp(x·Wᵀ + b − η‖x‖² − s), s an optional stabiliser.

Why: the softmax mode hands φ(q) and φ(k) to SDPA, which cannot take a prologue, so φ has to exist as a tensor.
Built from PyTorch ops it is a float32 matrix product, a phase add, a cosine, two scalings and a cast, each a pass
over ``[B, H, N, m]`` float32 tensors, and as many again in backward: on the H200 that made the softmax mode 4.07×
SDPA at N = 512 (``results/bench/attention.json``), most of it φ.  Here one kernel reads a tile of rows, forms the
angles with one tensor-core product (bf16 inputs: W as a bf16 hi + lo pair, about 16 mantissa bits, as in
:mod:`qra.kernels.fourier_linear`), takes the cosine and writes φ in the input dtype.  ``c_h`` is a per-head factor:
the map's scale times the softmax temperature β_h for the queries, so the temperature costs no pass of its own.

The backward recomputes the angles: dp = −c_h·sin(p)·dφ, dx = dp·W (with bf16 x one bf16 product, dp rounded once,
unless ``fourier_linear.SPLIT_PRODUCTS``), and each program writes its sums of the map's
dWᵀ = xᵀdp, db = Σdp and each block its dc_h = Σ cos(p)·dφ (from which autograd forms the temperature's gradient)
to buffers of their own, summed afterwards by one reduction each: fp32 atomics from every program into one set of
buffers contend.

A pass takes one operand or two (a layer's queries and keys, each with its own per-head factor): the softmax mode
needs both, and one autograd Function and one launch each way for both costs the host half what two calls do.  The
grid is one program per resident slot, each striding over the flat list of row blocks of both operands, so the
work spreads evenly over the SMs: a program per (batch, head), as before round 22, filled 384 programs into the
backward's 264 slots at B = 32, H = 12, a second wave 45% full.  The factors' gradients are summed per block
(a block's head is its own), the map's per program (W is shared by every head and both operands).

Positive features (``EXP``) share all of it but the activation: l = x·Wᵀ + b − η‖x‖², φ = c_h·exp(l − s) and
dp = φ·dφ, dx = dp·W − 2η·x·Σ_f dp.  The stabiliser s is a constant (FAVOR+ treats it as one: it cancels in the
linear mode): 0, each row's max over its features (``STAB_ROW``, recomputed in backward), or one value per batch
and head (``STAB_GIVEN``: the max over a sequence's real keys, found by one more pass, ``_sequence_max_kernel``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import fourier_linear
from ._launch import LaunchPlan, LaunchPlans, direct_launches, launch_kernel, layout, prepare
from ._trig import cos_sin, cosine
from ._util import cdiv, mask_arguments, mask_bytes, pow2, sm_count
from .fourier_linear import (
    Launch,
    _angles,
    _grid,
    _launch_config,
    _load_rows,
    _load_weight,
    _times_w,
)
from .linear import _split, _split_dot

#: the stabilisers of positive features: none, each row's own max, one value per (batch, head) read from memory
STAB_NONE, STAB_ROW, STAB_GIVEN = 0, 1, 2
#: :func:`qra.kernels.exponential_features`' stabilisers as the kernels' ``STAB``: a sequence's max is given to them
STAB_OF = {"none": STAB_NONE, "row": STAB_ROW, "sequence": STAB_GIVEN}

#: rows per tile, warps and programs per SM of the cosine (Fourier) passes.  With single bf16 products (round 17)
#: 64 rows on 4 warps, about 2 programs per SM, is the fastest of ten shapes for both passes on an H200
#: (``results/bench/fourier-features-shapes-h200-round18.txt``, GPU time from CUDA-graph replays, bf16, d = 64,
#: m = 128): forward + backward 0.073 ms at N = 512 against 0.100–0.104 for the 32-row, 8-warp shapes used before,
#: 0.122 against 0.171–0.178 at N = 32,768, and with the weight gradient 0.132 against 0.141–0.163.
#: Since round 22 the grid is one program per resident slot (:func:`_flat_grid`): ptxas for sm_90 gives the forward
#: 167 registers a thread, 3 programs of 4 warps an SM, and the backward 228 (255 with the map's gradients), 2.
FORWARD_LAUNCH = Launch(block=64, warps=4, per_sm=3)
BACKWARD_LAUNCH = Launch(block=64, warps=4, per_sm=2)
#: the same for the exponential (FAVOR+) passes and the sequence maximum, not searched again since the pairs: ptxas
#: for sm_90 then put the backward's spills at 3,084 bytes at 64 rows on 4 warps, 1,544 on 8, 596 at 32 rows on 4
#: warps and none at 32 rows on 8 warps (250 registers)
EXPONENTIAL_FORWARD_LAUNCH = Launch(block=32, warps=8, per_sm=4)
EXPONENTIAL_BACKWARD_LAUNCH = Launch(block=32, warps=8, per_sm=2)


@triton.jit
def _weights(W, B, D, F, BD: tl.constexpr, BF: tl.constexpr, LOWP: tl.constexpr, dtype: tl.constexpr):
    """What every row block uses: Wᵀ (float32, and as the product's hi + lo pair for 16-bit x) and the phases."""
    wt, bias = _load_weight(W, B, D, F, BD, BF)
    w_hi, w_lo = _split(wt, LOWP, True, dtype)
    return wt, w_hi, w_lo, bias


@triton.jit
def _block(f, FIRST, BLOCKS, BLOCKS2, H, N, N2, BN: tl.constexpr):
    """Flat block ``f`` of a pass's work: blocks [0, FIRST) tile the first operand's (batch, head, row block)s,
    the rest the second's.  Returns (in the second?, batch·heads + head, batch and head (int64), the rows, their
    mask)."""
    second = f >= FIRST
    local = tl.where(second, f - FIRST, f)
    blocks = tl.where(second, BLOCKS2, BLOCKS)
    bh = local // blocks  # 32-bit divisions; only the batch and head, which multiply strides, need 64 bits
    offs_n = (local - bh * blocks) * BN + tl.arange(0, BN)
    batch = bh // H
    return second, bh, batch.to(tl.int64), (bh - batch * H).to(tl.int64), offs_n, offs_n < tl.where(second, N2, N)


@triton.jit
def _tile(P, P2, second, b, h, offs_n, offs_c, s_b, s_h, s_n, s_2b, s_2h, s_2n):
    """Pointers to a [rows × columns] tile of the first or the second operand (columns at stride 1)."""
    rows = tl.where(second, P2 + b * s_2b + h * s_2h, P + b * s_b + h * s_h)
    return rows + offs_n[:, None] * tl.where(second, s_2n, s_n) + offs_c[None, :]


@triton.jit
def _exponents(x, p, fmask, ETA, shift, STAB: tl.constexpr):
    """l − s = x·Wᵀ + b − η‖x‖² − s in fp32 for the angles p = x·Wᵀ + b of a row tile x; −inf outside the
    features, so that exp() gives 0 there and a row's max ignores them.  s: each row's max (``STAB_ROW``),
    ``shift`` (``STAB_GIVEN``) or 0."""
    xf = x.to(tl.float32)
    exponents = tl.where(fmask[None, :], p - ETA * tl.sum(xf * xf, axis=1)[:, None], float("-inf"))
    if STAB == 1:  # STAB_ROW
        exponents -= tl.max(exponents, axis=1)[:, None]
    elif STAB == 2:  # STAB_GIVEN
        exponents -= shift
    return exponents


@triton.jit
def _features_kernel(
    X, X2, W, B, C, C2, S, S2, OUT, OUT2,
    s_xb, s_xh, s_xn, s_x2b, s_x2h, s_x2n,
    s_ob, s_oh, s_on, s_o2b, s_o2h, s_o2n,
    H, N, N2, D, F, BLOCKS, BLOCKS2, FIRST, TOTAL, ETA,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr,
    LOWP: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr, EXP: tl.constexpr, STAB: tl.constexpr,
    SPLIT_PRODUCTS: tl.constexpr,
):  # fmt: skip
    _, w_hi, w_lo, bias = _weights(W, B, D, F, BD, BF, LOWP, X.dtype.element_ty)
    offs_d = tl.arange(0, BD)
    offs_f = tl.arange(0, BF)
    dmask = offs_d < D
    fmask = offs_f < F
    for f in range(tl.program_id(0), TOTAL, tl.num_programs(0)):
        second, bh, b, h, offs_n, nmask = _block(f, FIRST, BLOCKS, BLOCKS2, H, N, N2, BN)
        x = tl.load(_tile(X, X2, second, b, h, offs_n, offs_d, s_xb, s_xh, s_xn, s_x2b, s_x2h, s_x2n),
                    mask=nmask[:, None] & dmask[None, :], other=0.0)  # fmt: skip
        p = _angles(x, w_hi, w_lo, bias, LOWP, PREC)
        factor = tl.load(tl.where(second, C2, C) + h)
        if EXP:
            shift = tl.load(tl.where(second, S2, S) + bh) if STAB == 2 else 0.0
            features = factor * tl.exp(_exponents(x, p, fmask, ETA, shift, STAB))
        else:
            features = factor * cosine(p, FAST)
        out = _tile(OUT, OUT2, second, b, h, offs_n, offs_f, s_ob, s_oh, s_on, s_o2b, s_o2h, s_o2n)
        tl.store(out, features.to(OUT.dtype.element_ty), mask=nmask[:, None] & fmask[None, :])


@triton.jit
def _features_backward_kernel(
    X, X2, G, G2, W, B, C, C2, S, S2, DX, DX2, DW, DB, DC,
    s_xb, s_xh, s_xn, s_x2b, s_x2h, s_x2n,
    s_gb, s_gh, s_gn, s_g2b, s_g2h, s_g2n,
    s_db, s_dh, s_dn, s_d2b, s_d2h, s_d2n,
    H, N, N2, D, F, BLOCKS, BLOCKS2, FIRST, TOTAL, ETA,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr,
    LOWP: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr, EXP: tl.constexpr, STAB: tl.constexpr,
    WEIGHT_GRAD: tl.constexpr, FACTOR_GRAD: tl.constexpr, SPLIT_PRODUCTS: tl.constexpr,
):  # fmt: skip
    wt, w_hi, w_lo, bias = _weights(W, B, D, F, BD, BF, LOWP, X.dtype.element_ty)
    offs_d = tl.arange(0, BD)
    offs_f = tl.arange(0, BF)
    dmask = offs_d < D
    fmask = offs_f < F
    dwt_acc = tl.zeros((BD, BF), dtype=tl.float32)
    db_acc = tl.zeros((BF,), dtype=tl.float32)
    for f in range(tl.program_id(0), TOTAL, tl.num_programs(0)):
        second, bh, b, h, offs_n, nmask = _block(f, FIRST, BLOCKS, BLOCKS2, H, N, N2, BN)
        x = tl.load(_tile(X, X2, second, b, h, offs_n, offs_d, s_xb, s_xh, s_xn, s_x2b, s_x2h, s_x2n),
                    mask=nmask[:, None] & dmask[None, :], other=0.0)  # fmt: skip
        g = tl.load(_tile(G, G2, second, b, h, offs_n, offs_f, s_gb, s_gh, s_gn, s_g2b, s_g2h, s_g2n),
                    mask=nmask[:, None] & fmask[None, :], other=0.0).to(tl.float32)  # fmt: skip
        p = _angles(x, w_hi, w_lo, bias, LOWP, PREC)
        factor = tl.load(tl.where(second, C2, C) + h)
        if EXP:  # the feature (over c_h) and its slope are both exp(l − s)
            shift = tl.load(tl.where(second, S2, S) + bh) if STAB == 2 else 0.0
            value = tl.exp(_exponents(x, p, fmask, ETA, shift, STAB))
            slope = value
        else:
            value, slope = cos_sin(p, FAST)
            slope = -slope
        dp = tl.where(nmask[:, None] & fmask[None, :], factor * slope * g, 0.0)
        dx = _times_w(dp, wt, w_hi, LOWP, SPLIT_PRODUCTS, PREC)
        if EXP:
            dx -= (2.0 * ETA) * x.to(tl.float32) * tl.sum(dp, axis=1)[:, None]
        dx_tile = _tile(DX, DX2, second, b, h, offs_n, offs_d, s_db, s_dh, s_dn, s_d2b, s_d2h, s_d2n)
        tl.store(dx_tile, dx.to(DX.dtype.element_ty), mask=nmask[:, None] & dmask[None, :])
        if WEIGHT_GRAD:
            dwt_acc += _split_dot(tl.trans(x), dp, LOWP, SPLIT_PRODUCTS, PREC)
            db_acc += tl.sum(dp, axis=0)
        if FACTOR_GRAD:  # this block's Σ cos(p)·dφ (g is 0 outside the rows and features), summed per head later
            tl.store(DC + f, tl.sum(tl.sum(value * g, axis=1), axis=0))
    # this program's sums of the map's gradients (W is shared by every head and both operands), added up by the
    # launcher: atomics from every program into one set of buffers contend
    if WEIGHT_GRAD:
        program = tl.program_id(0)
        tl.store(DW + program * BD * BF + offs_d[:, None] * BF + offs_f[None, :], dwt_acc)
        tl.store(DB + program * BF + offs_f, db_acc)


@triton.jit
def _sequence_max_kernel(
    X, W, B, M, OUT,
    s_xb, s_xh, s_xn, s_xd, s_mb, s_mn,
    H, N, D, F, PER_PROGRAM, ETA,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr,
    LOWP: tl.constexpr, PREC: tl.constexpr, HAS_MASK: tl.constexpr, SPLIT_PRODUCTS: tl.constexpr,
):  # fmt: skip
    """This program's max of l = x·Wᵀ + b − η‖x‖² over its rows that are real keys (−inf without any)."""
    b = (tl.program_id(0) // H).to(tl.int64)
    h = (tl.program_id(0) % H).to(tl.int64)
    _, w_hi, w_lo, bias = _weights(W, B, D, F, BD, BF, LOWP, X.dtype.element_ty)
    part = tl.program_id(1)
    offs_d = tl.arange(0, BD)
    fmask = tl.arange(0, BF) < F
    x_base = X + b * s_xb + h * s_xh
    best = tl.full((BN,), float("-inf"), tl.float32)
    for blk in range(0, PER_PROGRAM):
        offs_n = (part * PER_PROGRAM + blk) * BN + tl.arange(0, BN)
        rows = offs_n < N
        if HAS_MASK:
            rows &= tl.load(M + b * s_mb + offs_n * s_mn, mask=rows, other=0) != 0
        x = _load_rows(x_base, offs_n, offs_d, s_xn, s_xd, rows, offs_d < D)
        exponents = _exponents(x, _angles(x, w_hi, w_lo, bias, LOWP, PREC), fmask, ETA, 0.0, 0)
        best = tl.maximum(best, tl.where(rows, tl.max(exponents, axis=1), float("-inf")))
    tl.store(OUT + tl.program_id(0) * tl.num_programs(1) + part, tl.max(best, axis=0))


def _meta(dtype: torch.dtype, dim: int, features: int, launch: Launch) -> dict:
    bd, bf = pow2(dim), pow2(features)
    return dict(BN=launch.block, BD=bd, BF=bf, **_launch_config(dtype, bd, bf, 16, launch))


@dataclass(frozen=True)
class Activation:
    """Which features the kernels compute: cosines, or exponentials with ``norm_weight`` η and a stabiliser."""

    exponential: bool = False
    norm_weight: float = 0.0
    stabilizer: int = STAB_NONE

    def meta(self) -> dict:
        return dict(EXP=self.exponential, STAB=self.stabilizer)

    def launches(self) -> tuple[Launch, Launch]:
        """The forward's and the backward's launch shapes for these features."""
        if self.exponential:
            return EXPONENTIAL_FORWARD_LAUNCH, EXPONENTIAL_BACKWARD_LAUNCH
        return FORWARD_LAUNCH, BACKWARD_LAUNCH


#: each pass's launches per input layout, bound to their compiled kernels (qra.kernels._launch), as the linear
#: kernels' are: a repeated call issues them with its tensors only
_PLANS = LaunchPlans()


def _rows_at_unit_stride(t: torch.Tensor) -> torch.Tensor:
    """t with its last dim at stride 1 (copied only where it is not): the kernels address columns without a stride,
    so that their loads and stores are vectorised whichever operand a block reads."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _blocks(x: torch.Tensor, launch: Launch) -> int:
    return cdiv(max(x.shape[2], 1), launch.block)


def _flat_grid(total: int, device: torch.device, launch: Launch) -> tuple[int]:
    """One program per resident slot (``launch.per_sm`` a SM), each striding over the pass's flat blocks: the work
    spreads evenly over the GPU whatever the number of (batch, head)s, where a program per (batch, head) left the
    last wave part-empty (384 of them at B = 32, H = 12 filled 1.45 waves of the backward's 2 per SM)."""
    return (max(1, min(total, launch.per_sm * sm_count(device))),)


def _pair_scalars(first: torch.Tensor, second: torch.Tensor) -> tuple[int, ...]:
    """The batch, head and row strides of an operand and of the second one."""
    return (*first.stride()[:3], *second.stride()[:3])


class _RandomFeatures(torch.autograd.Function):
    """x ``[B, H, N, d]`` and optionally a second operand x2 ``[B, H, N2, d]`` (the keys beside the queries), W
    ``[m, d]``, b ``[m]``, c and c2 ``[H]`` (float32 per-head factors), the stabilisers s, s2 ``[B·H]`` (read with
    ``STAB_GIVEN``) → c_h·cos(x·Wᵀ + b) or c_h·exp(x·Wᵀ + b − η‖x‖² − s), ``[B, H, N, m]`` in x's dtype, and the
    same of x2 with c2, s2.  Both operands are one launch each way: a softmax layer's queries and keys cost the host
    one Function and two launches, not two and four."""

    @staticmethod
    def forward(ctx, x, x2, weight, bias, factors, factors2, stabilizers, stabilizers2, activation: Activation):
        pair = x2 is not None
        x = _rows_at_unit_stride(x)
        x2 = _rows_at_unit_stride(x2) if pair else x
        # one operand: its own tensors stand in for the second's pointers, which no block then reads
        factors2 = factors if factors2 is None else factors2
        stabilizers2 = stabilizers if stabilizers2 is None else stabilizers2
        bsz, heads, n, dim = x.shape
        feat = weight.shape[0]
        out = torch.empty(bsz, heads, n, feat, device=x.device, dtype=x.dtype)
        out2 = torch.empty(bsz, heads, x2.shape[2], feat, device=x.device, dtype=x.dtype) if pair else out
        launches = activation.launches()
        # the module's settings too: experiments/device/fourier_features_shapes.py changes them between calls
        settings = (activation, launches, fourier_linear.APPROXIMATE_TRIG, fourier_linear.SPLIT_PRODUCTS, pair)
        plan = _PLANS.plan((x, x2, weight, bias, factors, factors2, stabilizers, stabilizers2), *settings)
        args = (x, x2, weight, bias, factors, factors2, stabilizers, stabilizers2, out, out2)
        if not plan.issue("forward", args):
            blocks, blocks2 = _blocks(x, launches[0]), _blocks(x2, launches[0]) if pair else 0
            first = bsz * heads * blocks
            scalars = (*_pair_scalars(x, x2), *_pair_scalars(out, out2), heads, n, x2.shape[2], dim, feat, blocks,
                       max(blocks2, 1), first, first + bsz * heads * blocks2, activation.norm_weight)  # fmt: skip
            meta = dict(_meta(x.dtype, dim, feat, launches[0]), **activation.meta())
            grid = _flat_grid(scalars[-2], x.device, launches[0])
            plan.bind("forward", prepare(_features_kernel, grid, args, scalars, **meta))
        ctx.save_for_backward(x, x2 if pair else None, weight, bias, factors, factors2, stabilizers, stabilizers2)
        ctx.activation, ctx.launch, ctx.plan = activation, launches[1], plan
        return (out, out2) if pair else out

    @staticmethod
    def backward(ctx, grad, grad2=None):
        x, x2, weight, bias, factors, factors2, stabilizers, stabilizers2 = ctx.saved_tensors
        activation, launch = ctx.activation, ctx.launch
        pair = x2 is not None
        x2 = x2 if pair else x
        grad = _rows_at_unit_stride(grad)
        grad2 = _rows_at_unit_stride(grad2) if pair else grad
        bsz, heads, n, dim = x.shape
        feat = weight.shape[0]
        dx = torch.empty_like(x)
        dx2 = torch.empty_like(x2) if pair else dx
        blocks, blocks2 = _blocks(x, launch), _blocks(x2, launch) if pair else 0
        first = bsz * heads * blocks
        total = first + bsz * heads * blocks2
        grid = _flat_grid(total, x.device, launch)
        needs = ctx.needs_input_grad
        weight_grad, factor_grad = needs[2] or needs[3], needs[4] or needs[5]
        # each program's sums of the map's gradients and each block's of the factors', only where asked for;
        # without them (a fixed bandwidth and temperature, the default) the kernel never touches these and dx
        # stands in: every allocation is host time in every patched layer of every step
        dwt = torch.empty(grid[0], pow2(dim), pow2(feat), device=x.device, dtype=torch.float32) if weight_grad else dx
        db = torch.empty(grid[0], pow2(feat), device=x.device, dtype=torch.float32) if weight_grad else dx
        dc = torch.empty(total, device=x.device, dtype=torch.float32) if factor_grad else dx
        plan = ctx.plan if direct_launches() else LaunchPlan()
        # what its scalars add to the forward's key: the gradients' layouts
        variant = ("backward", layout(grad), layout(grad2) if pair else None, weight_grad, factor_grad)
        args = (x, x2, grad, grad2, weight, bias, factors, factors2, stabilizers, stabilizers2, dx, dx2, dwt, db, dc)
        if not plan.issue(variant, args):
            strides = (*_pair_scalars(x, x2), *_pair_scalars(grad, grad2), *_pair_scalars(dx, dx2))
            scalars = (*strides, heads, n, x2.shape[2], dim, feat, blocks, max(blocks2, 1), first, total,
                       activation.norm_weight)  # fmt: skip
            meta = dict(_meta(x.dtype, dim, feat, launch), WEIGHT_GRAD=weight_grad, FACTOR_GRAD=factor_grad,
                        **activation.meta())  # fmt: skip
            plan.bind(variant, prepare(_features_backward_kernel, grid, args, scalars, **meta))
        dw = dwt.sum(0)[:dim, :feat].T if needs[2] else None
        db = db.sum(0)[:feat] if needs[3] else None
        dc1 = dc[:first].view(bsz, heads, blocks).sum((0, 2)) if needs[4] else None
        dc2 = dc[first:].view(bsz, heads, blocks2).sum((0, 2)) if needs[5] else None
        return dx, (dx2 if pair else None), dw, db, dc1, dc2, None, None, None


def _prepared(x: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """fp16 x as fp32 (the kernels' 16-bit path is bf16's hi + lo split), the parameters as contiguous fp32."""
    return (x.float() if x.dtype == torch.float16 else x, *(t.float().contiguous() for t in params))


def fused_fourier_features(
    x: torch.Tensor,
    weight: torch.Tensor,
    phase: torch.Tensor,
    factors: torch.Tensor,
    x2: torch.Tensor | None = None,
    factors2: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The Triton path of :func:`qra.kernels.fourier_features` (arguments already checked), and with a second
    operand x2 (and its factors) of :func:`qra.kernels.fourier_query_key_features`: both from one launch each way.

    fp16 inputs compute in fp32 (the kernels' bf16 path splits W into bf16 parts) and return fp16.
    """
    x32, weight, phase, factors = _prepared(x, weight, phase, factors)
    if x2 is None:
        return _RandomFeatures.apply(x32, None, weight, phase, factors, None, factors, None, Activation()).to(x.dtype)
    x2_32, factors2 = _prepared(x2, factors2)
    out, out2 = _RandomFeatures.apply(x32, x2_32, weight, phase, factors, factors2, factors, factors2, Activation())
    return out.to(x.dtype), out2.to(x2.dtype)


@torch.no_grad()
def _sequence_max(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, norm_weight: float, key_padding_mask: torch.Tensor | None
) -> torch.Tensor:
    """max over each sequence's real keys and the features of l = x·Wᵀ + b − η‖x‖², ``[B·H]`` float32 (0 where a
    sequence has no real key: its features are all masked, whatever they are); x and W already prepared."""
    bsz, heads, n, dim = x.shape
    feat = weight.shape[0]
    grid, per = _grid(n, bsz * heads, x.device, EXPONENTIAL_FORWARD_LAUNCH)
    maxima = torch.empty(grid[0], grid[1], device=x.device, dtype=torch.float32)
    mask = mask_bytes(key_padding_mask, x.device)
    m, m_strides = mask_arguments(mask, maxima)
    meta = _meta(x.dtype, dim, feat, EXPONENTIAL_FORWARD_LAUNCH)
    meta.pop("FAST")
    launch_kernel(_sequence_max_kernel, grid, (x, weight, bias, m, maxima),
                  (*x.stride(), *m_strides, heads, n, dim, feat, per, float(norm_weight)),
                  HAS_MASK=mask is not None, **meta)  # fmt: skip
    best = maxima.amax(dim=1)
    return torch.where(torch.isfinite(best), best, 0.0)


def fused_exponential_features(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: float,
    factors: torch.Tensor,
    stabilizer: str,
    key_padding_mask: torch.Tensor | None,
    x2: torch.Tensor | None = None,
    factors2: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The Triton path of :func:`qra.kernels.exponential_features` (arguments already checked), and with a second
    operand x2 (and its factors; no stabiliser) of :func:`qra.kernels.exponential_query_key_features`; fp16 inputs
    compute in fp32 and return fp32 (exponentials outrun fp16's range)."""
    x, weight, factors = _prepared(x, weight, factors)
    bias = torch.zeros(weight.shape[0], device=x.device, dtype=torch.float32)
    activation = Activation(exponential=True, norm_weight=float(norm_weight), stabilizer=STAB_OF[stabilizer])
    if x2 is not None:
        if stabilizer != "none":
            raise ValueError("a second operand takes no stabiliser")
        x2, factors2 = _prepared(x2, factors2)
        return _RandomFeatures.apply(x, x2, weight, bias, factors, factors2, factors, factors2, activation)
    given = stabilizer == "sequence"
    stabilizers = _sequence_max(x, weight, bias, norm_weight, key_padding_mask) if given else factors
    return _RandomFeatures.apply(x, None, weight, bias, factors, None, stabilizers, None, activation)
