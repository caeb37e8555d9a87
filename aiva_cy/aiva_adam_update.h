/* aiva_adam_update.h — Adam's update of one element, the one definition that both the CPU
 * (src_c/aiva_adam.c) and the CUDA engine (aiva_cy/kernels.cu, through aiva_cy/_cuda.py)
 * compile, so the two devices agree to the rounding and so a check can predict exactly
 * what the update would write.  C99 or CUDA C++ (NVRTC: no system headers there). */
#ifndef AIVA_ADAM_UPDATE_H
#define AIVA_ADAM_UPDATE_H

#if defined(__CUDACC_RTC__)
/* NVRTC compiles device code only; not static, which would warn in every module that
 * includes the header without calling both functions. */
#define AIVA_HD __device__ __forceinline__
#define AIVA_BOOL bool
#elif defined(__CUDACC__)
#define AIVA_HD static __host__ __device__ __forceinline__
#define AIVA_BOOL bool
#else
#include <math.h>
#define AIVA_HD static inline
#define AIVA_BOOL int
#endif

/* torch.optim.Adam's arithmetic, in its order, so the float32 results agree to an ulp: L2
 * weight decay added to the gradient, lerp for the first moment, the square root of the
 * second scaled by the bias correction, then eps.  The caller computes 1 - beta in double
 * (1 - 0.999f in float32 is 1.3e-5, relative, off torch's) and the bias correction of the
 * second moment as a reciprocal: a multiply, where torch divides, because divides and
 * square roots are what the CPU loop spends its time on. */
AIVA_HD void aiva_adam_update(float g, float w, float m, float v, float one_minus_b1, float b2,
                              float one_minus_b2, float eps, float wd, float step_size,
                              float inv_bc2_sqrt, float *w_new, float *m_new, float *v_new)
{
    const float gi = g + wd * w;
    const float mi = m + one_minus_b1 * (gi - m);
    const float vi = b2 * v + one_minus_b2 * gi * gi;
    *m_new = mi;
    *v_new = vi;
    *w_new = w - step_size * mi / (sqrtf(vi) * inv_bc2_sqrt + eps);
}

/* Whether an update may be written: the new weight and both moments are finite.  Applied
 * per element on the GPU; on the CPU to the largest magnitudes of a pass, which are NaN or
 * Inf exactly when some element's are. */
AIVA_HD AIVA_BOOL aiva_adam_finite(float w_new, float m_new, float v_new)
{
    return isfinite(w_new) && isfinite(m_new) && isfinite(v_new);
}

#endif
