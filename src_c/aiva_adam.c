/* aiva_adam.c — see aiva_adam.h for the contract.
 *
 * Each element is read once and written once: weight, gradient and both moments stream
 * through together, where torch's single-tensor Adam makes ~6 passes over 4 arrays.  The
 * loops take restrict pointers and the coefficients as locals so that gcc vectorises them;
 * they live in C, apart from the Cython wrapper, for the same reason (benchmarks/README.md,
 * "Figures behind design choices"). */
#include "aiva_adam.h"

#include <math.h>

#include "aiva_adam_update.h"
#include "aiva_common.h"

/* Every bound the safe path proves stays below this, 34x under float32's largest value,
 * which leaves room for the rounding of the few float32 operations per element. */
#define AIVA_SAFE_LIMIT 1e37

aiva_adam_coeffs aiva_adam_coefficients(double lr, double beta1, double beta2, double eps,
                                        double weight_decay, int64_t step)
{
    aiva_adam_coeffs c;
    c.one_minus_beta1 = (float)(1.0 - beta1);
    c.beta2 = (float)beta2;
    c.one_minus_beta2 = (float)(1.0 - beta2);
    c.eps = (float)eps;
    c.weight_decay = (float)weight_decay;
    c.step_size = (float)(lr / (1.0 - pow(beta1, (double)step)));
    c.inv_bias_correction2_sqrt = (float)(1.0 / sqrt(1.0 - pow(beta2, (double)step)));
    return c;
}

double aiva_adam_max_abs(const float *a, ptrdiff_t n)
{
    const uint32_t bits = aiva_max_abs_bits(a, n);
    return bits < AIVA_INF_BITS ? (double)aiva_bits_float(bits) : INFINITY;
}

int aiva_adam_provably_finite(double max_abs_g, double bound[3], const aiva_adam_coeffs *c)
{
    /* Each intermediate of the update is bounded in magnitude by an expression below: the
     * first moment is a convex combination of |m| and |g + wd w|, the second of v and the
     * square, and the denominator is at least eps.  The float32 rounding of a few
     * operations is covered by the margin between AIVA_SAFE_LIMIT and float32's largest
     * value.  Any NaN among them fails a comparison, so it is never "proven". */
    const double G = max_abs_g, W = bound[0], M = bound[1], V = bound[2];
    const double decay = (double)c->weight_decay * W;
    const double gi = G + decay;
    const double m_new = gi > M ? gi : M;
    const double v_new = gi * gi > V ? gi * gi : V;
    const double step = (double)c->step_size * m_new;
    const double w_new = W + step / (double)c->eps;
    const double denom = sqrt(v_new) * (double)c->inv_bias_correction2_sqrt + (double)c->eps;
    const double L = AIVA_SAFE_LIMIT;
    if (!(G < L && W < L && M < L && V < L && decay < L && gi + M < L && gi * gi < L
          && step < L && w_new < L && denom < L))
        return 0;
    bound[0] = w_new;
    bound[1] = m_new;
    bound[2] = v_new;
    return 1;
}

#define AIVA_ADAM_LOCALS                                                                  \
    const float omb1 = c->one_minus_beta1, b2 = c->beta2, omb2 = c->one_minus_beta2;      \
    const float eps = c->eps, wd = c->weight_decay, step_size = c->step_size;             \
    const float inv_bc2 = c->inv_bias_correction2_sqrt;

int aiva_adam_check(const float *restrict w, const float *restrict g, const float *restrict m,
                    const float *restrict v, ptrdiff_t n, const aiva_adam_coeffs *c,
                    float max_abs[3])
{
    AIVA_ADAM_LOCALS
    uint32_t mw = 0, mm = 0, mv = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        float wi, mi, vi;
        aiva_adam_update(g[i], w[i], m[i], v[i], omb1, b2, omb2, eps, wd, step_size, inv_bc2,
                         &wi, &mi, &vi);
        const uint32_t bw = aiva_abs_bits(wi), bm = aiva_abs_bits(mi), bv = aiva_abs_bits(vi);
        mw = bw > mw ? bw : mw;
        mm = bm > mm ? bm : mm;
        mv = bv > mv ? bv : mv;
    }
    max_abs[0] = aiva_bits_float(mw);
    max_abs[1] = aiva_bits_float(mm);
    max_abs[2] = aiva_bits_float(mv);
    return aiva_adam_finite(max_abs[0], max_abs[1], max_abs[2]) ? AIVA_ADAM_OK
                                                                : AIVA_ADAM_NONFINITE;
}

void aiva_adam_pass(float *restrict w, const float *restrict g, float *restrict m,
                    float *restrict v, ptrdiff_t n, const aiva_adam_coeffs *c)
{
    AIVA_ADAM_LOCALS
    for (ptrdiff_t i = 0; i < n; i++) {
        float wi, mi, vi;
        aiva_adam_update(g[i], w[i], m[i], v[i], omb1, b2, omb2, eps, wd, step_size, inv_bc2,
                         &wi, &mi, &vi);
        m[i] = mi;
        v[i] = vi;
        w[i] = wi;
    }
}

/* A loop of its own, rounding while w[i] is in a register, so that the float32 one stays
 * as it is (a separate rounding pass costs more: benchmarks/README.md). */
void aiva_adam_pass_bf16(float *restrict w, const float *restrict g, float *restrict m,
                         float *restrict v, uint16_t *restrict w16, ptrdiff_t n,
                         const aiva_adam_coeffs *c)
{
    AIVA_ADAM_LOCALS
    for (ptrdiff_t i = 0; i < n; i++) {
        float wi, mi, vi;
        aiva_adam_update(g[i], w[i], m[i], v[i], omb1, b2, omb2, eps, wd, step_size, inv_bc2,
                         &wi, &mi, &vi);
        m[i] = mi;
        v[i] = vi;
        w[i] = wi;
        w16[i] = aiva_bf16_round_finite(wi);
    }
}
