/* aiva_core: the C core of aiva_cy — one time step of AIVANet, forward and backward.
 *
 * Raw pointers and sizes in; no allocation, no Python, no global state.  Every matrix
 * product goes through the BLAS table the caller hands in.  All arrays are float32 and
 * C-contiguous (row-major); "(B, n)" means B rows of n.  The caller guarantees that each
 * buffer holds the size written beside it — the Cython layer checks that before it calls.
 */
#ifndef AIVA_CORE_H
#define AIVA_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Fortran-convention BLAS (what scipy.linalg.cython_blas and OpenBLAS both export). */
typedef void (*aiva_sgemm_fn)(const char *transa, const char *transb, const int *m, const int *n,
                              const int *k, const float *alpha, const float *a, const int *lda,
                              const float *b, const int *ldb, const float *beta, float *c,
                              const int *ldc);
typedef void (*aiva_sgemv_fn)(const char *trans, const int *m, const int *n, const float *alpha,
                              const float *a, const int *lda, const float *x, const int *incx,
                              const float *beta, float *y, const int *incy);
/* The same with 64-bit integers (ILP64: the OpenBLAS inside NumPy's wheels). */
typedef void (*aiva_sgemm64_fn)(const char *transa, const char *transb, const int64_t *m,
                                const int64_t *n, const int64_t *k, const float *alpha,
                                const float *a, const int64_t *lda, const float *b,
                                const int64_t *ldb, const float *beta, float *c,
                                const int64_t *ldc);
typedef void (*aiva_sgemv64_fn)(const char *trans, const int64_t *m, const int64_t *n,
                                const float *alpha, const float *a, const int64_t *lda,
                                const float *x, const int64_t *incx, const float *beta,
                                float *y, const int64_t *incy);
/* bfloat16 as its raw bits (the upper half of a float32), and MKL's CBLAS extensions with
 * plain ints for its enums and MKL_INT (LP64): float32 products on pre-packed weights. */
typedef uint16_t aiva_bf16;
typedef size_t (*aiva_pack_size_fn)(int identifier, int m, int n, int k);
typedef void (*aiva_pack_f32_fn)(int layout, int identifier, int trans, int m, int n, int k,
                                 float alpha, const float *src, int ld, float *dest);
typedef void (*aiva_compute_f32_fn)(int layout, int transa, int transb, int m, int n, int k,
                                    const float *a, int lda, const float *b, int ldb, float beta,
                                    float *c, int ldc);
/* The reduced-precision provider's products (src_c/aiva_onednn.h), row-major: C (M, N) =
 * op(A) @ op(B) with op(X) = X^T where the flag is set; B_packed is the provider's handle of
 * a constant B, or NULL.  bf16 operands into float32; u8 activations by s8 weights into an
 * exact int32.  Each returns 0, or nonzero with C undefined.  The epilogue epi (or NULL)
 * runs on each finished block of C's columns j0 .. j0 + n, all rows, in the thread that
 * computed it (the provider may split C over threads), before the call returns. */
typedef void (*aiva_lowp_epilogue_fn)(void *ctx, ptrdiff_t j0, ptrdiff_t n);
typedef int (*aiva_lowp_bf16_fn)(void *lowp, int ta, int tb, ptrdiff_t M, ptrdiff_t N,
                                 ptrdiff_t K, const aiva_bf16 *A, ptrdiff_t lda,
                                 const aiva_bf16 *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc,
                                 const void *B_packed, aiva_lowp_epilogue_fn epi,
                                 void *epi_ctx);
typedef int (*aiva_lowp_u8s8_fn)(void *lowp, int tb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                                 const uint8_t *A, ptrdiff_t lda, const int8_t *B,
                                 ptrdiff_t ldb, int32_t *C, ptrdiff_t ldc,
                                 const void *B_packed, aiva_lowp_epilogue_fn epi,
                                 void *epi_ctx);
/* fn over items 0 .. n, in blocks j0 .. j0 + count that together cover each item once,
 * shared between the calling thread and the provider's helper threads, all done before the
 * call returns (the provider may run every block on the calling thread). */
typedef void (*aiva_lowp_parallel_fn)(void *lowp, ptrdiff_t n, aiva_lowp_epilogue_fn fn,
                                      void *ctx);
typedef struct {
    aiva_sgemm_fn sgemm;       /* LP64 entry points, or NULL ...       */
    aiva_sgemv_fn sgemv;
    aiva_sgemm64_fn sgemm64;   /* ... when these ILP64 ones are set    */
    aiva_sgemv64_fn sgemv64;
    /* MKL only (NULL elsewhere): cblas_sgemm's pack / compute. */
    aiva_pack_size_fn pack_f32_size;
    aiva_pack_f32_fn pack_f32;
    aiva_compute_f32_fn compute_f32;
    /* The reduced-precision provider (NULL elsewhere): bf16 mode needs lowp_bf16, int8 mode
     * lowp_u8s8. */
    void *lowp;
    aiva_lowp_bf16_fn lowp_bf16;
    aiva_lowp_u8s8_fn lowp_u8s8;
    aiva_lowp_parallel_fn lowp_parallel;   /* optional: NULL runs the passes on the caller */
} aiva_blas;

/* The network.  fc1 and the spiking layer are kept as (out, in) — the transpose of the
 * state_dict's "x @ W" layout — so that at batch 1 each output is a dot product over one
 * contiguous row (gemv 'T'), which measured faster than the axpy form.  fc2 stays in the
 * state_dict layout: its rows are what a 0/1 spike vector selects. */
typedef struct {
    int input_size, hidden_size, spiking_size, num_tools;
    float threshold;
    int refractory_period;   /* steps; 0 disables the mask */
    float surrogate_slope;
    const float *fc1_t;      /* (hidden, input)   */
    const float *spiking_t;  /* (spiking, hidden) */
    const float *fc2;        /* (spiking, tools)  */
    /* bfloat16 mode (products of bf16-rounded operands, float32 accumulation) when
     * bf16 is 1: the weights rounded to bf16, in the layouts above, and optionally the
     * provider's handles of fc1_t_bf16 and spiking_t_bf16 (packed by it on first use) for the
     * forward products.  In float32 mode the packed pointers, when set, hold MKL's float32
     * packs of fc1_t and spiking_t (aiva_pack). */
    int bf16;
    const aiva_bf16 *fc1_t_bf16, *spiking_t_bf16, *fc2_bf16;
    const void *fc1_packed, *spiking_packed;
    /* int8 mode (inference only) when int8 is 1: the weights quantized per output channel
     * (aiva_quantize_s8: rows of fc1_t and spiking_t, columns of fc2), their float32 scales
     * and the sums of each output's integers; the activations are quantized per row at run
     * time to q + act_zero (u8) with |q| <= act_qmax.  fc1_packed and spiking_packed then
     * hold the provider's handles of fc1_t_q and spiking_t_q. */
    int int8, act_qmax, act_zero;
    const int8_t *fc1_t_q, *spiking_t_q, *fc2_q;
    const float *fc1_scale, *spiking_scale, *fc2_scale;
    const int32_t *fc1_sum, *spiking_sum;
} aiva_net;

/* Scratch for one step of `batch` rows (batch <= capacity).  Forward fills the first five;
 * backward reads them and uses the last three. */
typedef struct {
    int capacity;
    float *hidden;      /* (B, hidden)  h = tanh(x @ fc1)                        */
    float *membrane;    /* (B, spiking) v = h @ spiking                          */
    float *spikes;      /* (B, spiking) out, 0.0 or 1.0                          */
    uint8_t *open;      /* (B, spiking) mask: 1 where the neuron is not refractory */
    float *logits;      /* (B, tools)   z                                        */
    float *d_logits;    /* (B, tools)                                            */
    float *d_membrane;  /* (B, spiking) also holds d_spikes before the surrogate  */
    float *d_hidden;    /* (B, hidden)  gradient at the fc1 pre-activation        */
    aiva_bf16 *bf16;    /* bf16 mode: B * (input + hidden + spiking + tools) rounded operands;
                         * int8 mode: 8 * B bytes of row scales, then the u8 activations
                         * (B * (input + hidden + spiking)): B * (... + 4) halves in all */
} aiva_workspace;

/* Gradients, in the same layouts as the weights of aiva_net. */
typedef struct {
    float *fc1_t;       /* (hidden, input)   */
    float *spiking_t;   /* (spiking, hidden) */
    float *fc2;         /* (spiking, tools)  */
    /* Out: bounds on |every entry| of each gradient, which the backward pass gets for free;
     * Adam proves its step finite from them instead of reading the gradients again. */
    double bound_fc1_t, bound_spiking_t, bound_fc2;
} aiva_grads;

/* Gradients larger than this are treated as overflow: Adam squares them, and a float32
 * square overflows past ~1.8e19. */
#define AIVA_GRAD_LIMIT 1e18

enum {
    AIVA_OK = 0,
    AIVA_ERR_INPUT_NONFINITE = 1,   /* x holds NaN or Inf                         */
    AIVA_ERR_OUTPUT_NONFINITE = 2,  /* logits overflowed (weights far too large)  */
    AIVA_ERR_LABEL = 3,             /* a label outside [0, num_tools)             */
    AIVA_ERR_GRAD_NONFINITE = 4,    /* loss or a gradient is NaN/Inf or overflows */
    AIVA_ERR_SIZE = 5,              /* batch < 1 or batch > ws->capacity          */
    AIVA_ERR_HIDDEN_NONFINITE = 6,  /* fc1's product overflowed: x too large      */
    AIVA_ERR_PROVIDER = 7           /* the reduced-precision provider failed      */
};

/* The refractory ring buffer is stored as a per-neuron countdown: refractory_left[b, j] is
 * how many more steps neuron j of stream b stays silent.  It is exactly the ring buffer of
 * the contract ("no output spike in the last R steps") in O(1) per neuron instead of O(R). */

/* One step forward.  refractory_left is (B, spiking) or NULL for an empty state (all open).
 * Writes probs (B, tools).  Does not change refractory_left: call aiva_commit_state once the
 * step is accepted, so that a failed step never leaves a half-updated state. */
int aiva_forward(const aiva_blas *blas, const aiva_net *net, const float *x, int batch,
                 const int32_t *refractory_left, aiva_workspace *ws, float *probs);

/* Push this step's output spikes (from ws) into the countdown. */
void aiva_commit_state(const aiva_net *net, const aiva_workspace *ws, int batch,
                       int32_t *refractory_left);

/* Backward of the step last run by aiva_forward on the same ws and x: mean cross-entropy of
 * the logits against labels y (B,), and the gradients of docs/contract.md, "Training" (mask held constant).
 * On an error the gradients may hold garbage, but nothing else is touched. */
int aiva_backward(const aiva_blas *blas, const aiva_net *net, const float *x, const int64_t *y,
                  int batch, aiva_workspace *ws, aiva_grads *grads, double *loss);

/* T = steps steps of `batch` streams at once; xs is time-major, (steps * batch, in).  The fc1
 * and spiking products run over all steps * batch rows (a membrane does not depend on the
 * state), then the threshold and refractory countdown step by step over the stored
 * membranes, then one readout.  refractory_left (batch, spiking) holds the state before the
 * first step and is advanced through all of them, also on an error (pass a trial copy).
 * Needs ws->capacity >= steps * batch; leaves every row's forward in ws for
 * aiva_backward_weighted.  probs: (steps * batch, tools). */
int aiva_forward_sequence(const aiva_blas *blas, const aiva_net *net, const float *xs,
                          int steps, int batch, int32_t *refractory_left, aiva_workspace *ws,
                          float *probs);

/* aiva_backward with a weight per row: loss = sum_b w_b CE_b, and the gradients of that sum
 * (each row with the mask it had, held constant).  A row of weight 0 adds nothing and may
 * carry any label (a step without a target).  Weights must be finite and >= 0; callers
 * normalise them (sum 1 for a weighted mean).  row_weight NULL is aiva_backward. */
int aiva_backward_weighted(const aiva_blas *blas, const aiva_net *net, const float *x,
                           const int64_t *y, const float *row_weight, int batch,
                           aiva_workspace *ws, aiva_grads *grads, double *loss);

/* Fill `out` from a shared BLAS library (path) whose Fortran symbols are prefix + name +
 * suffix: ("scipy_", "_") for scipy-openblas32 (scipy_sgemm_), ("scipy_", "_64_") with
 * ilp64 = 1 for NumPy's OpenBLAS (scipy_sgemm_64_).  Returns 0, or -1 with out untouched. */
int aiva_blas_open(const char *path, const char *prefix, const char *suffix, int ilp64,
                   aiva_blas *out);

/* MKL by path (libmkl_rt): Fortran sgemm_/sgemv_ plus the float32 packs, after asking for
 * the LP64 interface and, unless threading_layer < 0, that MKL_THREADING_* layer.  Returns 0,
 * or -1 (not MKL, or its interface is already fixed to ILP64) with out untouched. */
int aiva_mkl_open(const char *path, int threading_layer, aiva_blas *out);

/* Pack an engine-layout float32 weight w (n rows of k: fc1_t or spiking_t) as the B operand
 * of x @ w^T (MKL).  dest NULL: only return the bytes needed; 0 means this BLAS cannot pack. */
size_t aiva_pack(const aiva_blas *blas, int n, int k, const float *w, void *dest);

/* dst = src rounded to bfloat16, to nearest even (NaN stays NaN). */
void aiva_round_bf16(const float *src, ptrdiff_t n, aiva_bf16 *dst);

/* int8 mode: quantize n vectors of len floats (stride between elements step, between
 * vectors vstride: rows of an (n, len) matrix are step 1, vstride len; columns of a (len, n)
 * one step n, vstride 1) symmetrically to q = round(w * (127 / max|w|)) in [-127, 127];
 * scale[i] = max|w| / 127 (0 for an all-zero vector), sum[i] = the sum of its q (or NULL). */
void aiva_quantize_s8(const float *w, ptrdiff_t n, ptrdiff_t len, ptrdiff_t step,
                      ptrdiff_t vstride, int8_t *q, float *scale, int32_t *sum);

/* The three products of a forward step and nothing else — the benchmark's floor. */
void aiva_blas_products(const aiva_blas *blas, const aiva_net *net, const float *x, int batch,
                        aiva_workspace *ws);

#ifdef __cplusplus
}
#endif
#endif
