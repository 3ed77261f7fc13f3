"""The hardware's approximate cosine and sine, after a reduction to [−π, π] that keeps them accurate (Triton).

The library's ``tl.cos``/``tl.sin`` carry a slow path for huge arguments (Payne–Hanek, with a local-memory
table) that costs registers and instructions in every kernel that calls them; arguments here are phases of
moderate size, for which p − 2π·round(p/2π) with 2π in two float32 parts (Cody–Waite) is accurate to float32's
rounding, and the approximate functions then keep an absolute error of about 2⁻²⁰·⁵ on [−π, π].
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

_INV_TWO_PI = tl.constexpr(0.15915494309189535)
_TWO_PI_HI = tl.constexpr(6.2831854820251465)  # float32(2π)
_TWO_PI_LO = tl.constexpr(-1.7484556000744883e-07)  # 2π − float32(2π)
#: 1.5·2²³: float32's spacing there is 1, so t + this − this is t rounded to the nearest integer, for |t| < 2²²
_ROUNDING_SHIFT = tl.constexpr(12582912.0)


@triton.jit
def reduced(p):
    """p − 2π·round(p/2π), in [−π, π].

    The rounding is two float additions (the shift above) rather than a floor (SASS FRND): the feature passes kept
    the H200's transcendental pipe (XU), which issues the approximate cosine and sine, 60% busy
    (results/bench/kernel-counters-h200-round20.txt), and the additions issue to the FMA pipe instead."""
    turns = (p * _INV_TWO_PI + _ROUNDING_SHIFT) - _ROUNDING_SHIFT
    return tl.fma(-turns, _TWO_PI_LO, tl.fma(-turns, _TWO_PI_HI, p))


@triton.jit
def cosine(p, FAST: tl.constexpr):
    """cos p: approximate after the reduction (FAST), else the library's."""
    if FAST:
        return libdevice.fast_cosf(reduced(p))
    else:
        return tl.cos(p)


@triton.jit
def sine(p, FAST: tl.constexpr):
    """sin p: approximate after the reduction (FAST), else the library's."""
    if FAST:
        return libdevice.fast_sinf(reduced(p))
    else:
        return tl.sin(p)


@triton.jit
def cos_sin(p, FAST: tl.constexpr):
    """(cos p, sin p): approximate, from one reduction (FAST), else the library's."""
    if FAST:
        r = reduced(p)
        return libdevice.fast_cosf(r), libdevice.fast_sinf(r)
    else:
        return tl.cos(p), tl.sin(p)


def hardware_trig() -> bool:
    """Whether the approximate functions exist: not under Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") != "1"
