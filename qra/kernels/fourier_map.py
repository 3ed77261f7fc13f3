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
dWᵀ = xᵀdp, db = Σdp and dc_h = Σ cos(p)·dφ (from which autograd forms the temperature's gradient) to a buffer of
its own, summed afterwards by one reduction each: fp32 atomics from every program into one set of buffers contend.

A pass takes one operand or two (a layer's queries and keys, each with its own per-head factor): the softmax mode
needs both, and one autograd Function and one launch each way for both costs the host half what two calls do.  Grid
axis 0 runs over the first operand's (batch, head)s, then the second's; a program picks its operand once, before
its loop over row blocks.

Positive features (``EXP``) share all of it but the activation: l = x·Wᵀ + b − η‖x‖², φ = c_h·exp(l − s) and
dp = φ·dφ, dx = dp·W − 2η·x·Σ_f dp.  The stabiliser s is a constant (FAVOR+ treats it as one: it cancels in the
linear mode): 0, each row's max over its features (``STAB_ROW``, recomputed in backward), or one value per batch
and head (``STAB_GIVEN``: the max over a sequence's real keys, found by one more pass, ``_sequence_max_kernel``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from . import fourier_linear
from ._launch import LaunchPlan, LaunchPlans, direct_launches, launch_kernel, layout, prepare
from ._trig import cos_sin, cosine
from ._util import mask_arguments, mask_bytes, pow2
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
FORWARD_LAUNCH = Launch(block=64, warps=4, per_sm=2)
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
def _operand(H, GROUPS, N, N2):
    """This program's operand, batch and head: grid axis 0 runs over the first operand's (batch, head)s, then over
    the second's.  Returns (in the second?, batch·heads + head, batch and head (int64), the operand's rows)."""
    group = tl.program_id(0)
    second = group >= GROUPS
    bh = tl.where(second, group - GROUPS, group)
    batch = bh // H
    return second, bh, batch.to(tl.int64), (bh - batch * H).to(tl.int64), tl.where(second, N2, N)


@triton.jit
def _rows(P, P2, second, b, h, s_b, s_h, s_n, s_2b, s_2h, s_2n):
    """The first row of this program's (batch, head) in the first or the second operand, and the row stride (the
    columns are at stride 1)."""
    return tl.where(second, P2 + b * s_2b + h * s_2h, P + b * s_b + h * s_h), tl.where(second, s_2n, s_n)


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
    H, GROUPS, N, N2, D, F, PER_PROGRAM, ETA,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr,
    LOWP: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr, EXP: tl.constexpr, STAB: tl.constexpr,
    SPLIT_PRODUCTS: tl.constexpr,
):  # fmt: skip
    _, w_hi, w_lo, bias = _weights(W, B, D, F, BD, BF, LOWP, X.dtype.element_ty)
    second, bh, b, h, rows = _operand(H, GROUPS, N, N2)
    x_base, s_n = _rows(X, X2, second, b, h, s_xb, s_xh, s_xn, s_x2b, s_x2h, s_x2n)
    o_base, s_on_ = _rows(OUT, OUT2, second, b, h, s_ob, s_oh, s_on, s_o2b, s_o2h, s_o2n)
    factor = tl.load(tl.where(second, C2, C) + h)
    shift = tl.load(tl.where(second, S2, S) + bh) if STAB == 2 else 0.0
    part = tl.program_id(1)
    offs_d = tl.arange(0, BD)
    offs_f = tl.arange(0, BF)
    dmask = offs_d < D
    fmask = offs_f < F
    for blk in range(0, PER_PROGRAM):
        offs_n = (part * PER_PROGRAM + blk) * BN + tl.arange(0, BN)
        nmask = offs_n < rows
        x = _load_rows(x_base, offs_n, offs_d, s_n, 1, nmask, dmask)
        p = _angles(x, w_hi, w_lo, bias, LOWP, PREC)
        if EXP:  # noqa: SIM108  (a constexpr branch: only one side is compiled)
            features = factor * tl.exp(_exponents(x, p, fmask, ETA, shift, STAB))
        else:
            features = factor * cosine(p, FAST)
        tl.store(o_base + offs_n[:, None] * s_on_ + offs_f[None, :], features.to(OUT.dtype.element_ty),
                 mask=nmask[:, None] & fmask[None, :])  # fmt: skip


@triton.jit
def _features_backward_kernel(
    X, X2, G, G2, W, B, C, C2, S, S2, DX, DX2, DW, DB, DC,
    s_xb, s_xh, s_xn, s_x2b, s_x2h, s_x2n,
    s_gb, s_gh, s_gn, s_g2b, s_g2h, s_g2n,
    s_db, s_dh, s_dn, s_d2b, s_d2h, s_d2n,
    H, GROUPS, N, N2, D, F, PER_PROGRAM, ETA,
    BN: tl.constexpr, BD: tl.constexpr, BF: tl.constexpr,
    LOWP: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr, EXP: tl.constexpr, STAB: tl.constexpr,
    WEIGHT_GRAD: tl.constexpr, FACTOR_GRAD: tl.constexpr, SPLIT_PRODUCTS: tl.constexpr,
):  # fmt: skip
    wt, w_hi, w_lo, bias = _weights(W, B, D, F, BD, BF, LOWP, X.dtype.element_ty)
    second, bh, b, h, rows = _operand(H, GROUPS, N, N2)
    x_base, s_xn_ = _rows(X, X2, second, b, h, s_xb, s_xh, s_xn, s_x2b, s_x2h, s_x2n)
    g_base, s_gn_ = _rows(G, G2, second, b, h, s_gb, s_gh, s_gn, s_g2b, s_g2h, s_g2n)
    d_base, s_dn_ = _rows(DX, DX2, second, b, h, s_db, s_dh, s_dn, s_d2b, s_d2h, s_d2n)
    factor = tl.load(tl.where(second, C2, C) + h)
    shift = tl.load(tl.where(second, S2, S) + bh) if STAB == 2 else 0.0
    part = tl.program_id(1)
    offs_d = tl.arange(0, BD)
    offs_f = tl.arange(0, BF)
    dmask = offs_d < D
    fmask = offs_f < F
    dwt_acc = tl.zeros((BD, BF), dtype=tl.float32)
    db_acc = tl.zeros((BF,), dtype=tl.float32)
    dc_acc = tl.zeros((BF,), dtype=tl.float32)
    for blk in range(0, PER_PROGRAM):
        offs_n = (part * PER_PROGRAM + blk) * BN + tl.arange(0, BN)
        nmask = offs_n < rows
        x = _load_rows(x_base, offs_n, offs_d, s_xn_, 1, nmask, dmask)
        g = _load_rows(g_base, offs_n, offs_f, s_gn_, 1, nmask, fmask).to(tl.float32)
        p = _angles(x, w_hi, w_lo, bias, LOWP, PREC)
        if EXP:  # the feature (over c_h) and its slope are both exp(l − s)
            value = tl.exp(_exponents(x, p, fmask, ETA, shift, STAB))
            slope = value
        else:
            value, slope = cos_sin(p, FAST)
            slope = -slope
        dp = tl.where(nmask[:, None] & fmask[None, :], factor * slope * g, 0.0)
        dx = _times_w(dp, wt, w_hi, LOWP, SPLIT_PRODUCTS, PREC)
        if EXP:
            dx -= (2.0 * ETA) * x.to(tl.float32) * tl.sum(dp, axis=1)[:, None]
        tl.store(d_base + offs_n[:, None] * s_dn_ + offs_d[None, :], dx.to(DX.dtype.element_ty),
                 mask=nmask[:, None] & dmask[None, :])  # fmt: skip
        if WEIGHT_GRAD:
            dwt_acc += _split_dot(tl.trans(x), dp, LOWP, SPLIT_PRODUCTS, PREC)
            db_acc += tl.sum(dp, axis=0)
        if FACTOR_GRAD:
            dc_acc += tl.sum(value * g, axis=0)  # g is 0 outside the rows and features
    # this program's sums (W is shared by every head and both operands; a program's head is its own), added up by
    # the launcher: atomics from every program into shared buffers contend
    program = tl.program_id(0) * tl.num_programs(1) + part
    if WEIGHT_GRAD:
        tl.store(DW + program * BD * BF + offs_d[:, None] * BF + offs_f[None, :], dwt_acc)
        tl.store(DB + program * BF + offs_f, db_acc)
    if FACTOR_GRAD:
        tl.store(DC + program, tl.sum(dc_acc, axis=0))


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
    if dtype == torch.float32 and bf > 128:
        # fp32 tiles of 256 features: where a program loops over more than one row block, the backward's 3-stage
        # pipeline of x and dφ tiles needs 294,912 bytes of shared memory on sm_90 (the limit is 232,448; 2 stages
        # 212,992), and the launch failed on the H200 (round 22)
        launch = replace(launch, stages=min(launch.stages, 2))
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
    so that their loads and stores are vectorised whichever operand a program reads."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _pair_scalars(first: torch.Tensor, second: torch.Tensor) -> tuple[int, ...]:
    """The batch, head and row strides of an operand and of the second one."""
    return (*first.stride()[:3], *second.stride()[:3])


def _pass_grid(x: torch.Tensor, x2: torch.Tensor, pair: bool, launch: Launch) -> tuple[tuple[int, int], int]:
    """((programs along the operands' (batch, head)s, programs per (batch, head)), blocks per program): both
    operands' (batch, head)s on grid axis 0, split over their rows as far as the longer one needs to fill the GPU."""
    groups = x.shape[0] * x.shape[1] * (2 if pair else 1)
    return _grid(max(x.shape[2], x2.shape[2]), groups, x.device, launch)


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
        # one operand: its own tensors stand in for the second's pointers, which no program then reads
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
            grid, per = _pass_grid(x, x2, pair, launches[0])
            scalars = (*_pair_scalars(x, x2), *_pair_scalars(out, out2), heads, bsz * heads, n, x2.shape[2], dim,
                       feat, per, activation.norm_weight)  # fmt: skip
            meta = dict(_meta(x.dtype, dim, feat, launches[0]), **activation.meta())
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
        grid, per = _pass_grid(x, x2, pair, launch)
        needs = ctx.needs_input_grad
        weight_grad, factor_grad = needs[2] or needs[3], needs[4] or needs[5]
        # each program's sums of the map's and the factors' gradients, only where asked for; without them (a fixed
        # bandwidth and temperature, the default) the kernel never touches these and dx stands in: every allocation
        # is host time in every patched layer of every step
        programs = grid[0] * grid[1]
        dwt = torch.empty(programs, pow2(dim), pow2(feat), device=x.device, dtype=torch.float32) if weight_grad else dx
        db = torch.empty(programs, pow2(feat), device=x.device, dtype=torch.float32) if weight_grad else dx
        dc = torch.empty(programs, device=x.device, dtype=torch.float32) if factor_grad else dx
        plan = ctx.plan if direct_launches() else LaunchPlan()
        # what its scalars add to the forward's key: the gradients' layouts
        variant = ("backward", layout(grad), layout(grad2) if pair else None, weight_grad, factor_grad)
        args = (x, x2, grad, grad2, weight, bias, factors, factors2, stabilizers, stabilizers2, dx, dx2, dwt, db, dc)
        if not plan.issue(variant, args):
            strides = (*_pair_scalars(x, x2), *_pair_scalars(grad, grad2), *_pair_scalars(dx, dx2))
            scalars = (*strides, heads, bsz * heads, n, x2.shape[2], dim, feat, per, activation.norm_weight)
            meta = dict(_meta(x.dtype, dim, feat, launch), WEIGHT_GRAD=weight_grad, FACTOR_GRAD=factor_grad,
                        **activation.meta())  # fmt: skip
            plan.bind(variant, prepare(_features_backward_kernel, grid, args, scalars, **meta))
        dw = dwt.sum(0)[:dim, :feat].T if needs[2] else None
        db = db.sum(0)[:feat] if needs[3] else None
        # the programs run over (operand, batch, head) on grid axis 0 and the row splits on axis 1
        dc = dc.view(-1, bsz, heads, grid[1]).sum((1, 3)) if factor_grad else None
        dc1 = dc[0] if needs[4] else None
        dc2 = dc[1] if needs[5] else None
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
