"""The integer logistic mixture's one-kernel coding table (Triton), for quant.kernels.
Its own module: in Triton's interpreter (the CPU tests) its reductions fail when the module
also holds jit helper functions."""

# ruff: noqa: ANN001, ANN201, D103

import triton
import triton.language as tl


# One row (a tile's pixel) of channel c's integer frequency table g (256 bins) of the
# 3-channel logistic mixture (quant.distributions.IntegerLogisticMixture.coding_pmf), with the
# per-row state it keeps between channels: lw (m,) int64 posterior log-weights, ab (m, 2)
# float64 the last channel's (a, b) of each component. A component's CDF at bin edge e
# (0..256) is SIG[clamp(floor(a + (e - 128) b), 0, 2 SIG_MAX)] at the inner edges (truncation
# being the floor of the clamped value), 0 at e = 0 and 2^16 at e = 256
# (quant.distributions._cdfs).
@triton.jit
def mixture_table(prm, ps, prev, pvs, lw, ab, g, gs, inv_t, tanh_t, exp_t, log_t, sig_t,
                  c, m, n, mean_max, ls_lo, ls_hi, coef_max, exp_max, sig_max, g_total,
                  BLOCK: tl.constexpr, MMAX: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    p = prm + row * ps
    j = tl.arange(0, BLOCK)
    kk = tl.arange(0, MMAX)
    # lw and ab hold two generations (channel parity): this channel reads the last one's
    # and writes its own, so no thread reads what another of the program may have written
    # (the program's threads are not synchronised between the passes)
    rd = (c + 1) % 2
    wr = c % 2
    lw_in = lw + (rd * n + row) * m
    lw_out = lw + (wr * n + row) * m
    ab_in = ab + (rd * n + row) * 2 * m
    ab_out = ab + (wr * n + row) * 2 * m
    lwv = kk.to(tl.int64) * 0
    zmax = 2.0 * sig_max
    # pass 1: posterior log-weights (channel c > 0: plus ln of each component's mass of the
    # previous channel's value x) and their maximum
    best = tl.load(p).to(tl.int64) * 0 - 9223372036854775807
    for k in range(0, m):
        if c == 0:
            v = tl.load(p + k).to(tl.int64)
        else:
            x = tl.load(prev + row * pvs + c - 1)
            a0 = tl.load(ab_in + 2 * k)
            b0 = tl.load(ab_in + 2 * k + 1)
            zl = tl.minimum(tl.maximum(a0 + (x - 128).to(tl.float64) * b0, 0.0), zmax)
            zh = tl.minimum(tl.maximum(a0 + (x - 127).to(tl.float64) * b0, 0.0), zmax)
            lo = tl.where(x > 0, tl.load(sig_t + zl.to(tl.int32)), 0.0)
            hi = tl.where(x < 255, tl.load(sig_t + zh.to(tl.int32)), 65536.0)
            v = tl.load(lw_in + k) + tl.load(log_t + (hi - lo).to(tl.int32))
        tl.store(lw_out + k, v)
        lwv = tl.where(kk == k, v, lwv)
        best = tl.maximum(best, v)
    # pass 2: the components' CDFs at edges j and j + 1, weighted and summed
    inner_lo = j > 0
    inner_hi = j < 255
    mix_lo = j.to(tl.float64) * 0.0
    mix_hi = j.to(tl.float64) * 0.0
    wsum = tl.load(p).to(tl.float64) * 0.0
    for k in range(0, m):
        blk = p + m + c * 3 * m + k
        mean = tl.load(blk)
        if c > 0:
            s0 = 2 * tl.load(prev + row * pvs) - 255
            raw0 = tl.load(p + 3 * m + k).to(tl.int64)
            raw0 = tl.minimum(tl.maximum(raw0, -coef_max), coef_max)
            if c == 1:
                acc = tl.load(tanh_t + raw0 + coef_max) * s0
            else:
                s1 = 2 * tl.load(prev + row * pvs + 1) - 255
                raw1 = tl.minimum(
                    tl.maximum(tl.load(p + 6 * m + k).to(tl.int64), -coef_max), coef_max
                )
                raw2 = tl.minimum(
                    tl.maximum(tl.load(p + 9 * m + k).to(tl.int64), -coef_max), coef_max
                )
                acc = (tl.load(tanh_t + raw1 + coef_max) * s0
                       + tl.load(tanh_t + raw2 + coef_max) * s1)  # fmt: skip
            mean = mean + ((acc + 128) >> 8).to(tl.float64)
        mean = tl.minimum(tl.maximum(mean, -mean_max), mean_max)
        ls = tl.minimum(tl.maximum(tl.load(blk + m).to(tl.int64), ls_lo), ls_hi)
        b = tl.load(inv_t + (ls - ls_lo)) * 0.000244140625  # 2^-12
        a = (sig_max + 0.5) - mean * b * 0.00390625  # 2^-8
        tl.store(ab_out + 2 * k, a)
        tl.store(ab_out + 2 * k + 1, b)
        lw_k = tl.sum(tl.where(kk == k, lwv, 0), axis=0)
        w = tl.load(exp_t + tl.minimum(best - lw_k, exp_max))
        wsum += w
        zl = tl.minimum(tl.maximum(a + (j - 128).to(tl.float64) * b, 0.0), zmax)
        zh = tl.minimum(tl.maximum(a + (j - 127).to(tl.float64) * b, 0.0), zmax)
        lo = tl.load(sig_t + zl.to(tl.int32), mask=inner_lo, other=0.0)
        hi = tl.load(sig_t + zh.to(tl.int32), mask=inner_hi, other=65536.0)
        mix_lo += w * lo
        mix_hi += w * hi
    mix = mix_hi - mix_lo
    q = (tl.floor(mix * -0.00390625) + 256.0 * mix).to(tl.int64)
    gv = q // wsum.to(tl.int64)
    rem = g_total - tl.sum(gv, axis=0)
    top = tl.max(mix, axis=0)
    first = tl.min(tl.where(mix == top, j, BLOCK), axis=0)
    gv = gv + tl.where(j == first, rem, 0)
    tl.store(g + row * gs + j, gv)
