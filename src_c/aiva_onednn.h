/* aiva_onednn: the reduced-precision products (bfloat16 and int8) from oneDNN, opened by path.
 *
 * oneDNN picks its kernels by instruction set (AVX512-BF16, AVX512-VNNI, AVX-VNNI, AMX), not by
 * CPU vendor, so the same library is fast on AMD and Intel.  Nothing here links against it:
 * aiva_onednn_open() dlopens libdnnl (the `onednn-cpu-gomp` wheel's) and looks up the few C
 * API functions we call, declared in aiva_onednn.c from oneDNN 3.x's own headers.
 *
 * Every product is a oneDNN matmul primitive, created once per shape and kept in a cache
 * (bounded, least recently used out).  A constant weight is described by an
 * aiva_onednn_weight: the first product that uses it reorders it into the layout the
 * primitive prefers (memory format "any"), and later products with that layout reuse the
 * pack.  A weight that changes needs a new aiva_onednn_weight (the caller's generation).
 *
 * A product of one row is instead oneDNN's BLAS-like gemv (dnnl_gemm_u8s8s32,
 * dnnl_gemm_bf16bf16f32) on the plain B, its columns shared between the calling thread and
 * helper threads of ours that spin briefly between products (POSIX; see aiva_onednn.c).
 *
 * All matrices are row-major.  The products are safe to call from many threads at once:
 * each thread gets its own oneDNN stream and scratchpad (user scratchpad mode), and the
 * caches are locked.
 */
#ifndef AIVA_ONEDNN_H
#define AIVA_ONEDNN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct aiva_onednn aiva_onednn;
typedef struct aiva_onednn_weight aiva_onednn_weight;

/* The two kinds of product. */
enum {
    AIVA_ONEDNN_BF16 = 1,   /* bf16 x bf16 -> float32 */
    AIVA_ONEDNN_U8S8 = 2    /* u8 x s8 -> int32, exact */
};

/* oneDNN's dnnl_cpu_isa_t bits that matter here (each ISA value includes its
 * predecessors' bits). */
enum {
    AIVA_ONEDNN_ISA_AVX2 = 0x7,
    AIVA_ONEDNN_ISA_AVX2_VNNI_BIT = 0x8,
    AIVA_ONEDNN_ISA_AVX512_CORE = 0x27,
    AIVA_ONEDNN_ISA_AVX512_VNNI_BIT = 0x40,
    AIVA_ONEDNN_ISA_AVX512_BF16_BIT = 0x80,
    AIVA_ONEDNN_ISA_AMX_BIT = 0xe00
};

/* Open the library at path.  Returns NULL and writes why into err on failure.  The library
 * stays loaded for the life of the process, like any extension's BLAS. */
aiva_onednn *aiva_onednn_open(const char *path, char *err, size_t err_size);

/* What was opened: version, the ISA oneDNN dispatches to (dnnl_cpu_isa_t), and whether
 * its products of each kind run on native instructions there. */
void aiva_onednn_version(const aiva_onednn *dnn, int *major, int *minor, int *patch);
int aiva_onednn_isa(const aiva_onednn *dnn);
int aiva_onednn_native_bf16(const aiva_onednn *dnn);   /* AVX512-BF16 or AMX */
int aiva_onednn_native_vnni(const aiva_onednn *dnn);   /* VNNI (AVX-512 or AVX) or AMX */

/* Thread budget of the library's OpenMP pool, applied (omp_set_num_threads) in the calling
 * thread before each product: follow() if set (e.g. the float32 BLAS's own thread count, so
 * that both libraries use one budget), else threads when > 0, else left alone. */
void aiva_onednn_set_threads(aiva_onednn *dnn, int threads, int (*follow)(void));
int aiva_onednn_threads(const aiva_onednn *dnn);   /* what the next product will ask for; 0: not set */

/* C (M, N) = op(A) @ op(B): op(A) is A (M rows of K, row stride lda) or, with ta, A^T (A is K
 * rows of M); op(B) is B (K rows of N, stride ldb) or, with tb, B^T (B is N rows of K).
 * B_packed: an aiva_onednn_weight describing B (same kind, tb, N, K, ldb), or NULL.
 * Returns 0, else a nonzero status with C left undefined (aiva_onednn_error says why). */
/* epi (or NULL): work on a finished block of C's columns j0 .. j0 + n (all M rows), run by
 * whichever thread computed that block, once per block (the blocks are disjoint and cover
 * C), before the call returns; not when it fails. */
typedef void (*aiva_onednn_epilogue)(void *ctx, ptrdiff_t j0, ptrdiff_t n);
int aiva_onednn_gemm_bf16(void *dnn, int ta, int tb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                          const uint16_t *A, ptrdiff_t lda, const uint16_t *B, ptrdiff_t ldb,
                          float *C, ptrdiff_t ldc, const void *B_packed,
                          aiva_onednn_epilogue epi, void *epi_ctx);
/* The same for u8 activations A (no transpose) and s8 weights B into an exact int32 C: every
 * |partial sum| is at most K * 255 * 128, exact in int32 for K <= 65793. */
int aiva_onednn_gemm_u8s8(void *dnn, int tb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                          const uint8_t *A, ptrdiff_t lda, const int8_t *B, ptrdiff_t ldb,
                          int32_t *C, ptrdiff_t ldc, const void *B_packed,
                          aiva_onednn_epilogue epi, void *epi_ctx);
/* fn over 0 .. n in blocks, on the calling thread and the helper threads within the thread
 * budget (aiva_lowp_parallel_fn); on the calling thread alone outside POSIX, or when another
 * caller holds the helpers. */
void aiva_onednn_parallel(void *dnn, ptrdiff_t n, aiva_onednn_epilogue fn, void *ctx);

/* A constant weight B of the given kind and shape (see the products above), packed lazily
 * from the B passed to each product.  NULL when out of memory. */
aiva_onednn_weight *aiva_onednn_weight_new(aiva_onednn *dnn, int kind, int tb, ptrdiff_t N,
                                           ptrdiff_t K, ptrdiff_t ldb);
void aiva_onednn_weight_free(aiva_onednn_weight *w);
/* Packs made so far, and their bytes. */
int aiva_onednn_weight_packs(aiva_onednn_weight *w, size_t *bytes);

/* The implementation oneDNN chose for a product of this shape (its impl_info_str, e.g.
 * "brg:avx512_core_bf16"), written into out; 0, or a nonzero status. */
int aiva_onednn_impl(aiva_onednn *dnn, int kind, int ta, int tb, ptrdiff_t M, ptrdiff_t N,
                     ptrdiff_t K, int packed, char *out, size_t out_size);
/* Primitives in the cache, and how many were created since opening. */
void aiva_onednn_cache_stats(aiva_onednn *dnn, int *entries, long *created);

/* Why the calling thread's last failing call failed. */
const char *aiva_onednn_error(void);

#ifdef __cplusplus
}
#endif
#endif
