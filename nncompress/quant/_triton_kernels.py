"""The Triton kernels of quant.kernels (imported only where Triton is present; see that
module for what they compute and why they are exact)."""

# ruff: noqa: ANN001, ANN201, D103

import triton
import triton.language as tl


@triton.jit
def _offsets(i, d1, c, s0, s1):
    ch = i % c
    row = i // c
    return (row // d1) * s0 + (row % d1) * s1 + ch, ch


@triton.jit
def _rne(v):
    # round half to even, exactly: floor, the fraction (v - floor(v) is exact) and
    # the parity of the floor
    f = tl.floor(v)
    d = v - f
    h = f * 0.5
    odd = (h - tl.floor(h)) != 0.0
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, f + 1.0, f)


@triton.jit
def _clamp(v, lo, hi):
    return tl.minimum(tl.maximum(v, lo), hi)


@triton.jit
def _elu(x, elu_t, elu_min):
    idx = (_clamp(x, elu_min, 0.0) - elu_min).to(tl.int32)
    return tl.load(elu_t + idx) + tl.maximum(x, 0.0)


@triton.jit
def fin(acc, post, bias, n, d1, c, s0, s1, act_max, HAS_BIAS: tl.constexpr,
        BLOCK: tl.constexpr):  # fmt: skip
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    o, ch = _offsets(i, d1, c, s0, s1)
    v = tl.load(acc + o, mask=m) * tl.load(post + ch, mask=m)
    if HAS_BIAS:
        v = v + tl.load(bias + ch, mask=m)
    tl.store(acc + o, _clamp(_rne(v), -act_max, act_max), mask=m)


@triton.jit
def elu(x, out, elu_t, n, d1, c, xs0, xs1, os0, os1, elu_min, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    ox, _ = _offsets(i, d1, c, xs0, xs1)
    oo, _ = _offsets(i, d1, c, os0, os1)
    v = tl.load(x + ox, mask=m)
    tl.store(out + oo, _elu(v, elu_t, elu_min), mask=m)


@triton.jit
def concat_elu(x, out, elu_t, n, d1, c, xs0, xs1, os0, os1, elu_min,
               BLOCK: tl.constexpr):  # fmt: skip
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    ox, ch = _offsets(i, d1, c, xs0, xs1)
    row = i // c
    oo = (row // d1) * os0 + (row % d1) * os1 + ch
    v = tl.load(x + ox, mask=m)
    tl.store(out + oo, _elu(v, elu_t, elu_min), mask=m)
    tl.store(out + oo + c, _elu(-v, elu_t, elu_min), mask=m)


@triton.jit
def gate(x, a, b, out, sig_t, n, d1, c, xs0, xs1, as0, as1, bs0, bs1, os0, os1,
         sig_max, act_max, BLOCK: tl.constexpr):  # fmt: skip
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    ox, _ = _offsets(i, d1, c, xs0, xs1)
    oa, _ = _offsets(i, d1, c, as0, as1)
    ob, _ = _offsets(i, d1, c, bs0, bs1)
    oo, _ = _offsets(i, d1, c, os0, os1)
    bv = tl.load(b + ob, mask=m)
    idx = (_clamp(bv, -sig_max, sig_max) + sig_max).to(tl.int32)
    s = tl.load(sig_t + idx, mask=m) * tl.load(a + oa, mask=m)
    v = _rne(s) + tl.load(x + ox, mask=m)
    tl.store(out + oo, _clamp(v, -act_max, act_max), mask=m)
