/* aiva_adam: Adam as torch.optim.Adam computes it (amsgrad off), in fused passes over
 * float32 arrays of n elements: weight w, gradient g, first and second moments m and v.
 *
 * Raw pointers and sizes in; no allocation, no Python, no global state.  The caller (the
 * Cython module aiva_cy/_adam.pyx) owns the arrays and checks their sizes.  The arithmetic
 * of one element lives in aiva_adam_update.h, which the CUDA engine compiles too.
 */
#ifndef AIVA_ADAM_H
#define AIVA_ADAM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One step's coefficients, each computed in double and rounded to float once. */
typedef struct {
    float one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay;
    float step_size;                  /* lr / (1 - beta1^step)      */
    float inv_bias_correction2_sqrt;  /* 1 / sqrt(1 - beta2^step)   */
} aiva_adam_coeffs;

enum {
    AIVA_ADAM_OK = 0,
    AIVA_ADAM_NONFINITE = 1   /* the step would leave a weight or moment NaN or Inf */
};

/* The coefficients of step number `step` (>= 1). */
aiva_adam_coeffs aiva_adam_coefficients(double lr, double beta1, double beta2, double eps,
                                        double weight_decay, int64_t step);

/* max |a[i]| (0 when n is 0), or +Inf if some a[i] is NaN or Inf. */
double aiva_adam_max_abs(const float *a, ptrdiff_t n);

/* Whether every element's update is finite, proven from bounds alone: max_abs_g bounds |g|,
 * bound[0..2] bound |w|, |m|, |v|.  Returns 1 and replaces bound[0..2] by bounds on the
 * updated w, m, v if it can prove it; 0 (bound untouched) if it cannot. */
int aiva_adam_provably_finite(double max_abs_g, double bound[3], const aiva_adam_coeffs *c);

/* The update's arithmetic, storing nothing: AIVA_ADAM_OK with max_abs[0..2] = the largest
 * |w|, |m|, |v| it would write, or AIVA_ADAM_NONFINITE. */
int aiva_adam_check(const float *w, const float *g, const float *m, const float *v,
                    ptrdiff_t n, const aiva_adam_coeffs *c, float max_abs[3]);

/* The update, in place: w, m, v. */
void aiva_adam_pass(float *w, const float *g, float *m, float *v, ptrdiff_t n,
                    const aiva_adam_coeffs *c);

/* The same, also writing each updated weight rounded to bfloat16 (uint16 bits) into w16.
 * The weights must be finite (aiva_adam_check or aiva_adam_provably_finite said so). */
void aiva_adam_pass_bf16(float *w, const float *g, float *m, float *v, uint16_t *w16,
                         ptrdiff_t n, const aiva_adam_coeffs *c);

#ifdef __cplusplus
}
#endif
#endif
