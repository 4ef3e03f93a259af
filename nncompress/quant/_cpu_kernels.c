/* The integer path's elementwise steps on the CPU, one pass each (quant.cpu_kernels).
 *
 * The same integers as the torch ops of quant.fixed: every value is an integer-valued
 * double, products are by powers of two or stay below 2^53, rounding is half to even
 * (rne below), clamps are against integers, and tables are indexed with
 * clamped arguments. Compiled without fast-math and without contraction, so the C
 * compiler may not change any of it.
 *
 * Operands are (d0, d1, c) views with unit stride along c and strides s0, s1 (elements).
 */
#include <math.h>
#include <stdint.h>

static inline double clampd(double v, double lo, double hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

/* Round half to even of |v| < 2^51: adding and subtracting 1.5 * 2^52 leaves no fraction
 * bits, and the default rounding mode rounds that sum half to even (exact IEEE doubles;
 * no libm call, which baseline x86-64 would make per element). Callers clamp first:
 * clamping to integer bounds and rounding commute. */
static inline double rne(double v) {
    volatile double m = 6755399441055744.0; /* 1.5 * 2^52; volatile: kept as written */
    return (v + m) - m;
}

void nnc_fin(double *acc, const double *post, const double *bias, int64_t d0, int64_t d1,
             int64_t c, int64_t s0, int64_t s1, double act_max) {
    for (int64_t i = 0; i < d0; i++)
        for (int64_t j = 0; j < d1; j++) {
            double *r = acc + i * s0 + j * s1;
            if (bias)
                for (int64_t k = 0; k < c; k++)
                    r[k] = rne(clampd(r[k] * post[k] + bias[k], -act_max, act_max));
            else
                for (int64_t k = 0; k < c; k++)
                    r[k] = rne(clampd(r[k] * post[k], -act_max, act_max));
        }
}

static inline double elu1(double v, const double *table, double elu_min) {
    double t = table[(int64_t)(clampd(v, elu_min, 0.0) - elu_min)];
    return t + (v > 0.0 ? v : 0.0);
}

void nnc_elu(const double *x, double *out, const double *table, int64_t d0, int64_t d1,
             int64_t c, int64_t xs0, int64_t xs1, int64_t os0, int64_t os1, double elu_min) {
    for (int64_t i = 0; i < d0; i++)
        for (int64_t j = 0; j < d1; j++) {
            const double *a = x + i * xs0 + j * xs1;
            double *o = out + i * os0 + j * os1;
            for (int64_t k = 0; k < c; k++)
                o[k] = elu1(a[k], table, elu_min);
        }
}

void nnc_concat_elu(const double *x, double *out, const double *table, int64_t d0,
                    int64_t d1, int64_t c, int64_t xs0, int64_t xs1, int64_t os0, int64_t os1,
                    double elu_min) {
    for (int64_t i = 0; i < d0; i++)
        for (int64_t j = 0; j < d1; j++) {
            const double *a = x + i * xs0 + j * xs1;
            double *o = out + i * os0 + j * os1;
            for (int64_t k = 0; k < c; k++) {
                double v = a[k];
                o[k] = elu1(v, table, elu_min);
                o[c + k] = elu1(-v, table, elu_min);
            }
        }
}

void nnc_gate(const double *x, const double *a, const double *b, double *out,
              const double *sig, int64_t d0, int64_t d1, int64_t c, int64_t xs0, int64_t xs1,
              int64_t as0, int64_t as1, int64_t bs0, int64_t bs1, int64_t os0, int64_t os1,
              double sig_max, double act_max) {
    for (int64_t i = 0; i < d0; i++)
        for (int64_t j = 0; j < d1; j++) {
            const double *xr = x + i * xs0 + j * xs1, *ar = a + i * as0 + j * as1;
            const double *br = b + i * bs0 + j * bs1;
            double *o = out + i * os0 + j * os1;
            for (int64_t k = 0; k < c; k++) {
                double s = sig[(int64_t)(clampd(br[k], -sig_max, sig_max) + sig_max)] * ar[k];
                o[k] = clampd(rne(s) + xr[k], -act_max, act_max);
            }
        }
}

/* Channel c's integer frequency table (n rows of 256) of the 3-channel logistic mixture:
 * the same integers as quant.distributions.IntegerLogisticMixture.coding_pmf and the
 * Triton kernel of _triton_tables.py, with the same two-generation state (lw: posterior
 * log-weights, ab: each component's (a, b) of the last channel). */
void nnc_mixture_table(const double *prm, int64_t ps, const int64_t *prev, int64_t pvs,
                       int64_t *lw, double *ab, int64_t *g, int64_t gs, const double *inv_t,
                       const int64_t *tanh_t, const double *exp_t, const int64_t *log_t,
                       const double *sig_t, int64_t c, int64_t m, int64_t n, double mean_max,
                       int64_t ls_lo, int64_t ls_hi, int64_t coef_max, int64_t exp_max,
                       double sig_max, int64_t g_total) {
    const double zmax = 2.0 * sig_max;
    const int64_t rd = (c + 1) % 2, wr = c % 2;
    double mix_cdf[257];
    int64_t lwv[64];
    for (int64_t row = 0; row < n; row++) {
        const double *p = prm + row * ps;
        const int64_t *pv = prev + row * pvs;
        const int64_t *lw_in = lw + (rd * n + row) * m;
        int64_t *lw_out = lw + (wr * n + row) * m;
        const double *ab_in = ab + (rd * n + row) * 2 * m;
        double *ab_out = ab + (wr * n + row) * 2 * m;
        int64_t best = INT64_MIN;
        for (int64_t k = 0; k < m; k++) {
            int64_t v;
            if (c == 0) {
                v = (int64_t)p[k];
            } else {
                int64_t x = pv[c - 1];
                double a0 = ab_in[2 * k], b0 = ab_in[2 * k + 1];
                double lo = x > 0 ? sig_t[(int64_t)clampd(a0 + (double)(x - 128) * b0, 0.0, zmax)]
                                  : 0.0;
                double hi = x < 255
                                ? sig_t[(int64_t)clampd(a0 + (double)(x - 127) * b0, 0.0, zmax)]
                                : 65536.0;
                v = lw_in[k] + log_t[(int64_t)(hi - lo)];
            }
            lw_out[k] = v;
            lwv[k] = v;
            if (v > best)
                best = v;
        }
        for (int e = 0; e < 257; e++)
            mix_cdf[e] = 0.0;
        double wsum = 0.0;
        for (int64_t k = 0; k < m; k++) {
            const double *blk = p + m + c * 3 * m + k;
            double mean = blk[0];
            if (c > 0) {
                int64_t s0 = 2 * pv[0] - 255, acc;
                int64_t r0 = (int64_t)p[3 * m + k];
                r0 = r0 < -coef_max ? -coef_max : (r0 > coef_max ? coef_max : r0);
                if (c == 1) {
                    acc = tanh_t[r0 + coef_max] * s0;
                } else {
                    int64_t s1 = 2 * pv[1] - 255;
                    int64_t r1 = (int64_t)p[6 * m + k], r2 = (int64_t)p[9 * m + k];
                    r1 = r1 < -coef_max ? -coef_max : (r1 > coef_max ? coef_max : r1);
                    r2 = r2 < -coef_max ? -coef_max : (r2 > coef_max ? coef_max : r2);
                    acc = tanh_t[r1 + coef_max] * s0 + tanh_t[r2 + coef_max] * s1;
                }
                int64_t t = acc + 128; /* floor((acc + 128) / 256), for either sign */
                int64_t q = t >= 0 ? t / 256 : -((-t + 255) / 256);
                mean = mean + (double)q;
            }
            mean = clampd(mean, -mean_max, mean_max);
            int64_t ls = (int64_t)blk[m];
            ls = ls < ls_lo ? ls_lo : (ls > ls_hi ? ls_hi : ls);
            double b = inv_t[ls - ls_lo] * 0.000244140625; /* 2^-12 */
            double a = (sig_max + 0.5) - mean * b * 0.00390625; /* 2^-8 */
            ab_out[2 * k] = a;
            ab_out[2 * k + 1] = b;
            int64_t d = best - lwv[k];
            double w = exp_t[d > exp_max ? exp_max : d];
            wsum += w;
            for (int e = 1; e < 256; e++)
                mix_cdf[e] += w * sig_t[(int64_t)clampd(a + (double)(e - 128) * b, 0.0, zmax)];
            mix_cdf[256] += w * 65536.0;
        }
        int64_t *gr = g + row * gs, total = 0, first = 0, wi = (int64_t)wsum;
        double top = -1.0;
        for (int j = 0; j < 256; j++) {
            double mix = mix_cdf[j + 1] - mix_cdf[j];
            int64_t q = (int64_t)(floor(mix * -0.00390625) + 256.0 * mix);
            gr[j] = q / wi;
            total += gr[j];
            if (mix > top) {
                top = mix;
                first = j;
            }
        }
        gr[first] += g_total - total;
    }
}
