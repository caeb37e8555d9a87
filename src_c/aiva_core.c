/* aiva_core.c — see aiva_core.h for the contract. */
#include "aiva_core.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "aiva_common.h"

/* The elementwise passes are memory- or latency-bound loops the compiler vectorises; built
 * for the baseline ISA they get 16-byte SSE vectors.  Where the toolchain can, build each in
 * AVX-512, AVX2 and baseline versions and let the loader pick the widest the CPU has. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) \
    && !defined(AIVA_NO_MULTIVERSION)
#define AIVA_VECTOR_PASS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AIVA_VECTOR_PASS
#endif

/* Column-major BLAS calls with alpha = 1, beta = 0, through whichever integer width the
 * library takes. */
static void sgemm(const aiva_blas *blas, const char *ta, const char *tb, int m, int n, int k,
                  const float *a, int lda, const float *b, int ldb, float *c, int ldc)
{
    const float one = 1.0f, zero = 0.0f;
    if (blas->sgemm64) {
        const int64_t M = m, N = n, K = k, LA = lda, LB = ldb, LC = ldc;
        blas->sgemm64(ta, tb, &M, &N, &K, &one, a, &LA, b, &LB, &zero, c, &LC);
    } else {
        blas->sgemm(ta, tb, &m, &n, &k, &one, a, &lda, b, &ldb, &zero, c, &ldc);
    }
}

static void sgemv(const aiva_blas *blas, const char *t, int m, int n, const float *a, int lda,
                  const float *x, int incx, float *y)
{
    const float one = 1.0f, zero = 0.0f;
    const int incy = 1;
    memset(y, 0, (size_t)(*t == 'N' ? m : n) * sizeof(float));  /* beta = 0 must not meet a stale NaN */
    if (blas->sgemv64) {
        const int64_t M = m, N = n, LA = lda, IX = incx, IY = incy;
        blas->sgemv64(t, &M, &N, &one, a, &LA, x, &IX, &zero, y, &IY);
    } else {
        blas->sgemv(t, &m, &n, &one, a, &lda, x, &incx, &zero, y, &incy);
    }
}

/* Row-major C (M, N) = op(A) @ op(B).  BLAS is column-major, so ask it for C^T = op(B)^T
 * op(A)^T: swap the operands, keep the flags (the scikit-learn _cython_blas trick).  A single
 * output row is a matrix-vector product, and gemv is the faster call for it. */
static void rm_gemm(const aiva_blas *blas, int trans_a, int trans_b, int M, int N, int K,
                    const float *A, int lda, const float *B, int ldb, float *C, int ldc)
{
    if (M == 1) {
        const int inc_a = trans_a ? lda : 1;   /* the one row of op(A) */
        if (trans_b) /* B is (N, K): column-major (K, N) */
            sgemv(blas, "T", K, N, B, ldb, A, inc_a, C);
        else         /* B is (K, N): column-major (N, K) */
            sgemv(blas, "N", N, K, B, ldb, A, inc_a, C);
        return;
    }
    sgemm(blas, trans_b ? "T" : "N", trans_a ? "T" : "N", N, M, K, B, ldb, A, lda, C, ldc);
}

/* MKL's CBLAS enum values (mkl_cblas.h). */
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112, PACKED = 151, B_MATRIX = 162 };

/* Row-major C (M, N) = op(A) @ op(B) in bf16 operands, float32 accumulation: the
 * provider's product.  B_packed is its handle of B (which it still needs), or NULL. */
static void gemm_bf16_then(const aiva_blas *blas, int trans_a, int trans_b, int M, int N,
                           int K, const aiva_bf16 *A, int lda, const aiva_bf16 *B, int ldb,
                           float *C, int ldc, const void *B_packed, aiva_lowp_epilogue_fn epi,
                           void *epi_ctx)
{
    /* It fails only out of memory: NaN then makes the step report non-finite output. */
    if (blas->lowp_bf16(blas->lowp, trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc,
                        B_packed, epi, epi_ctx)) {
        for (ptrdiff_t i = 0; i < M; i++)
            for (ptrdiff_t j = 0; j < N; j++) C[i * ldc + j] = NAN;
        if (epi) epi(epi_ctx, 0, N);   /* the NaN must reach what the epilogue feeds */
    }
}

static void gemm_bf16(const aiva_blas *blas, int trans_a, int trans_b, int M, int N, int K,
                      const aiva_bf16 *A, int lda, const aiva_bf16 *B, int ldb, float *C,
                      int ldc, const void *B_packed)
{
    gemm_bf16_then(blas, trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, B_packed, NULL,
                   NULL);
}

/* Up to this many rows, a forward product is one gemv per row: OpenBLAS's sgemm packs the
 * whole weight for every call, so at 2 rows it took 10x one row's gemv (862 against 86 us
 * for predict_proba at the default size; at 8 rows 1,036 against 8 x 86; at 16 rows sgemm
 * wins).  Each row then also gets exactly its batch-1 result. */
#define AIVA_GEMV_ROWS 8

/* x @ w^T for an engine-layout weight w (N rows of K), through its float32 pack if there is
 * one.  A few rows stay with gemv (rm_gemm), a row at a time: the pack buys nothing when
 * each weight is read once per row. */
static void forward_product(const aiva_blas *blas, int M, int N, int K, const float *x,
                            const float *w, const void *w_packed, float *out)
{
    if (w_packed && M > 1)
        blas->compute_f32(ROW_MAJOR, NO_TRANS, PACKED, M, N, K, x, K,
                          (const float *)w_packed, K, 0.0f, out, N);
    else if (M > 1 && M <= AIVA_GEMV_ROWS)
        for (ptrdiff_t i = 0; i < M; i++)
            rm_gemm(blas, 0, 1, 1, N, K, x + i * K, K, w, K, out + i * N, N);
    else
        rm_gemm(blas, 0, 1, M, N, K, x, K, w, K, out, N);
}

/* MKL lays a pack out for the m (batch rows) it is told, though compute accepts any m: packed
 * for 256 rows it is as fast as unpacked calls at batch 256 and faster at 64, packed for one
 * row it is slower at 256, and at batch 1 the unpacked call is faster, so single rows skip
 * the packs (figures: benchmarks/README.md, "Figures behind design choices"). */
#define AIVA_PACK_ROWS 256

size_t aiva_pack(const aiva_blas *blas, int n, int k, const float *w, void *dest)
{
    const int m = AIVA_PACK_ROWS;
    if (!blas->pack_f32 || !blas->pack_f32_size || !blas->compute_f32) return 0;
    if (dest)
        blas->pack_f32(ROW_MAJOR, B_MATRIX, TRANS, m, n, k, 1.0f, w, k, (float *)dest);
    return blas->pack_f32_size(B_MATRIX, m, n, k);
}

AIVA_VECTOR_PASS
void aiva_round_bf16(const float *restrict src, ptrdiff_t n, aiva_bf16 *restrict dst)
{
    for (ptrdiff_t i = 0; i < n; i++) dst[i] = aiva_bf16_round(src[i]);
}

/* tanh as a 13/6 rational function (the approximation Eigen and PyTorch use for float):
 * a few ulp from the exact value, and a plain loop of multiply-adds that the compiler
 * vectorises, where libm's tanhf is a scalar call per element. */
static inline float fast_tanh(float x)
{
    const float clamp = 7.90531110763549805f;
    float c = x < -clamp ? -clamp : (x > clamp ? clamp : x);
    float x2 = c * c;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * c;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    float r = p / q;
    /* Below 4e-4 the rational form loses relative accuracy; tanh(x) == x in float there. */
    return fabsf(c) < 0.0004f ? c : r;
}

/* exp for x <= 0 (softmax's shifted logits): Cephes' expf polynomial after reducing by
 * powers of two — about 1 ulp, and vectorisable where libm's expf is a call per element. */
static inline float exp_nonpositive(float x)
{
    x = x < -87.0f ? -87.0f : x;              /* keeps 2^n a normal float */
    const float round_magic = 12582912.0f;    /* 1.5 * 2^23: adding it rounds to an integer */
    float n = (x * 1.44269504088896341f + round_magic) - round_magic;
    float r = x - n * 0.693359375f - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f;
}

AIVA_VECTOR_PASS
static void tanh_inplace(float *restrict a, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) a[i] = fast_tanh(a[i]);
}

/* out = raw AND mask, with the mask read from the countdown (NULL: all open). */
AIVA_VECTOR_PASS
static void spike_pass(const float *restrict v, const int32_t *restrict refractory_left,
                       float thr, uint8_t *restrict open, float *restrict spikes, ptrdiff_t n)
{
    if (refractory_left) {
        for (ptrdiff_t i = 0; i < n; i++) {
            int o = refractory_left[i] == 0;
            open[i] = (uint8_t)o;
            spikes[i] = (o & (v[i] >= thr)) ? 1.0f : 0.0f;
        }
    } else {
        /* n > 0 always; said here so that no compiler sees a negative size reach memset
         * (mingw-w64's gcc warns on the inlined call otherwise). */
        if (n > 0) memset(open, 1, (size_t)n);
        for (ptrdiff_t i = 0; i < n; i++) spikes[i] = v[i] >= thr ? 1.0f : 0.0f;
    }
}

/* d_membrane = d_spikes * mask / (1 + k|v - thr|)^2, in place. */
AIVA_VECTOR_PASS
static void surrogate_pass(float *restrict dv, const float *restrict v,
                           const uint8_t *restrict open, float thr, float k, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        float a = 1.0f + k * fabsf(v[i] - thr);
        dv[i] = open[i] ? dv[i] / (a * a) : 0.0f;
    }
}

AIVA_VECTOR_PASS
static void tanh_backward(float *restrict da, const float *restrict h, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i++) da[i] *= 1.0f - h[i] * h[i];
}

/* z (B, T) = spikes (B, S) @ fc2 (S, T) for 0/1 spikes: each row of z is the sum of the fc2
 * rows its spikes select.  At the usual 10-20% firing this reads a fraction of fc2 and does
 * no multiplies.  Used at batch 1 only: at batch 64 and 256 a gemm measured faster (the
 * branch on random 0/1 spikes mispredicts once per active neuron). */
AIVA_VECTOR_PASS
static void spike_readout(const float *restrict spikes, const float *restrict fc2, int batch,
                          int S, int T, float *restrict z)
{
    for (int b = 0; b < batch; b++) {
        float *zb = z + (ptrdiff_t)b * T;
        const float *sb = spikes + (ptrdiff_t)b * S;
        for (int t = 0; t < T; t++) zb[t] = 0.0f;
        for (int j = 0; j < S; j++) {
            if (sb[j] == 0.0f) continue;
            const float *row = fc2 + (ptrdiff_t)j * T;
            for (int t = 0; t < T; t++) zb[t] += row[t];
        }
    }
}

/* The same over the bf16-rounded fc2 (bfloat16 mode). */
AIVA_VECTOR_PASS
static void spike_readout_bf16(const float *restrict spikes, const aiva_bf16 *restrict fc2,
                               int S, int T, float *restrict z)
{
    for (int t = 0; t < T; t++) z[t] = 0.0f;
    for (int j = 0; j < S; j++) {
        if (spikes[j] == 0.0f) continue;
        const aiva_bf16 *row = fc2 + (ptrdiff_t)j * T;
        for (int t = 0; t < T; t++) {
            uint32_t u = (uint32_t)row[t] << 16;
            float w;
            memcpy(&w, &u, sizeof w);
            z[t] += w;
        }
    }
}

AIVA_VECTOR_PASS
static int all_finite(const float *a, ptrdiff_t n)
{
    int bad = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        float d = a[i] - a[i];  /* NaN exactly when a[i] is NaN or +-Inf */
        bad |= (d != d);
    }
    return !bad;
}

/* probs = softmax of each row of z (B, T).  Returns 0 if a logit is not finite. */
AIVA_VECTOR_PASS
static int softmax_rows(const float *restrict z, int batch, int T, float *restrict p)
{
    if (!all_finite(z, (ptrdiff_t)batch * T)) return 0;
    for (int b = 0; b < batch; b++) {
        const float *zb = z + (ptrdiff_t)b * T;
        float *pb = p + (ptrdiff_t)b * T;
        float m = zb[0];
        for (int t = 1; t < T; t++) m = zb[t] > m ? zb[t] : m;
        float s = 0.0f;
        for (int t = 0; t < T; t++) { pb[t] = exp_nonpositive(zb[t] - m); s += pb[t]; }
        float inv = 1.0f / s;
        for (int t = 0; t < T; t++) pb[t] *= inv;
    }
    return 1;
}

/* max |a[i]|: Inf or NaN exactly when some a[i] is not finite (aiva_common.h). */
AIVA_VECTOR_PASS
static float max_abs(const float *a, ptrdiff_t n)
{
    return aiva_bits_float(aiva_max_abs_bits(a, n));
}

/* Where the bf16 operands of one step live in ws->bf16. */
typedef struct { aiva_bf16 *x, *hidden, *spikes, *d_logits; } bf16_scratch;

static bf16_scratch bf16_parts(const aiva_net *net, const aiva_workspace *ws)
{
    const ptrdiff_t B = ws->capacity;
    bf16_scratch p;
    p.x = ws->bf16;
    p.hidden = p.x + B * net->input_size;       /* later d_hidden's */
    p.spikes = p.hidden + B * net->hidden_size;  /* later d_membrane's */
    p.d_logits = p.spikes + B * net->spiking_size;
    return p;
}

/* ---------------------------------------------------------------------------------------
 * int8 mode (inference): the products are the provider's exact u8 x s8 -> int32 ones; all
 * that surrounds them (quantizing the activations, dequantizing) is float32 here.
 * --------------------------------------------------------------------------------------- */

/* Below this, a vector quantizes to zero: qmax / max would overflow float32 near 7e-37. */
#define AIVA_Q_TINY 1e-30f
/* Adding and subtracting 1.5 * 2^23 rounds a float of magnitude < 2^22 to an integer, to
 * nearest even (the default rounding mode), in a loop the compiler vectorises. */
#define AIVA_ROUND_MAGIC 12582912.0f

AIVA_VECTOR_PASS
void aiva_quantize_s8(const float *w, ptrdiff_t n, ptrdiff_t len, ptrdiff_t step,
                      ptrdiff_t vstride, int8_t *q, float *scale, int32_t *sum)
{
    for (ptrdiff_t v = 0; v < n; v++) {
        const float *wv = w + v * vstride;
        int8_t *qv = q + v * vstride;
        float m = 0.0f;
        for (ptrdiff_t i = 0; i < len; i++) {
            float a = fabsf(wv[i * step]);
            m = a > m ? a : m;
        }
        const float inv = m >= AIVA_Q_TINY ? 127.0f / m : 0.0f;
        scale[v] = m >= AIVA_Q_TINY ? m / 127.0f : 0.0f;
        int32_t total = 0;
        for (ptrdiff_t i = 0; i < len; i++) {
            float a = wv[i * step] * inv;
            a = a > 127.0f ? 127.0f : (a < -127.0f ? -127.0f : a);
            int r = (int)((a + AIVA_ROUND_MAGIC) - AIVA_ROUND_MAGIC);
            qv[i * step] = (int8_t)r;
            total += r;
        }
        if (sum) sum[v] = total;
    }
}

/* The activations of a step, per row: q = round(a * (qmax / max|row|)) + zero as u8 (the
 * same rounding as the weights'), scale[r] = max|row| / qmax. */
AIVA_VECTOR_PASS
static void quantize_rows_u8(const float *restrict a, ptrdiff_t rows, ptrdiff_t n, int qmax,
                             int zero, uint8_t *restrict q, float *restrict scale)
{
    const float lim = (float)qmax;
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *ar = a + r * n;
        uint8_t *qr = q + r * n;
        const float m = max_abs(ar, n);   /* finite here: x was checked, h is a tanh */
        const float inv = m >= AIVA_Q_TINY ? lim / m : 0.0f;
        scale[r] = m >= AIVA_Q_TINY ? m / lim : 0.0f;
        /* x + (magic + zero) rounds x + zero to an integer (zero is even, so ties go the
         * same way as x's), and that integer is the low bits of the float: no conversion
         * instruction, a loop of multiplies, adds and byte moves. */
        const float shift = AIVA_ROUND_MAGIC + (float)zero;
        for (ptrdiff_t i = 0; i < n; i++) {
            float x = ar[i] * inv;
            x = x > lim ? lim : (x < -lim ? -lim : x);
            x += shift;
            uint32_t bits;
            memcpy(&bits, &x, sizeof bits);
            qr[i] = (uint8_t)(bits & 0xffu);
        }
    }
}

/* quantize_rows_u8 over rows r0 .. r0 + rows of a job, as a provider's parallel pass. */
typedef struct {
    const float *a;
    ptrdiff_t n;
    int qmax, zero;
    uint8_t *q;
    float *scale;
} quantize_job;

static void quantize_rows_block(void *ctx, ptrdiff_t r0, ptrdiff_t rows)
{
    const quantize_job *j = (const quantize_job *)ctx;
    quantize_rows_u8(j->a + r0 * j->n, rows, j->n, j->qmax, j->zero, j->q + r0 * j->n,
                     j->scale + r0);
}

/* Many rows are quantized by rows on the provider's helper threads (each row its own max):
 * at 256 rows, on the calling thread alone, x's and h's quantization took 7% of an int8
 * predict_proba's samples on the Intel AMX machine, as much as a third of its products. */
#define AIVA_PARALLEL_ROWS 32
static void quantize_rows(const aiva_blas *blas, const float *a, ptrdiff_t rows, ptrdiff_t n,
                          int qmax, int zero, uint8_t *q, float *scale)
{
    quantize_job job = {a, n, qmax, zero, q, scale};
    if (blas->lowp_parallel && rows > AIVA_PARALLEL_ROWS)
        blas->lowp_parallel(blas->lowp, rows, quantize_rows_block, &job);
    else
        quantize_rows_block(&job, 0, rows);
}

/* Columns j0 .. j0 + n of out (B, ld) = (acc - zero * sum[j]) * (row_scale[b] *
 * col_scale[j]) in float32, from the provider's int32 products acc (B, ld).  The zero
 * point's share is exact integer arithmetic: acc is exactly sum_k (q_k + zero) w_kj.  sum
 * NULL: no zero point. */
AIVA_VECTOR_PASS
static void dequantize_columns(const int32_t *restrict acc, ptrdiff_t rows, ptrdiff_t ld,
                               ptrdiff_t j0, ptrdiff_t n, const float *restrict row_scale,
                               const float *restrict col_scale, const int32_t *restrict sum,
                               int zero, float *restrict out)
{
    for (ptrdiff_t r = 0; r < rows; r++) {
        const int32_t *ar = acc + r * ld + j0;
        float *outr = out + r * ld + j0;
        const float *cs = col_scale + j0;
        const float s = row_scale[r];
        if (sum) {
            const int32_t *sj = sum + j0;
            for (ptrdiff_t j = 0; j < n; j++)
                outr[j] = (float)(ar[j] - zero * sj[j]) * (s * cs[j]);
        } else {
            for (ptrdiff_t j = 0; j < n; j++) outr[j] = (float)ar[j] * (s * cs[j]);
        }
    }
}

/* A product's dequantization (and fc1's tanh), as the provider's epilogue: each block of
 * columns is finished by the thread that computed it, while it is in that core's cache. */
typedef struct {
    const int32_t *acc;
    ptrdiff_t rows, ld;
    const float *row_scale, *col_scale;
    const int32_t *sum;
    int zero, with_tanh;
    float *out;
} int8_finish;

static void int8_finish_columns(void *ctx, ptrdiff_t j0, ptrdiff_t n)
{
    const int8_finish *f = (const int8_finish *)ctx;
    dequantize_columns(f->acc, f->rows, f->ld, j0, n, f->row_scale, f->col_scale, f->sum,
                       f->zero, f->out);
    if (f->with_tanh)
        for (ptrdiff_t r = 0; r < f->rows; r++) tanh_inplace(f->out + r * f->ld + j0, n);
}

/* fc1's epilogue in bf16: tanh (unless the caller applies it later) and the bf16 copy the
 * spiking product takes, on each block of columns in the thread that computed it. */
typedef struct {
    float *h;
    aiva_bf16 *h_bf16;
    ptrdiff_t rows, ld;
    int with_tanh;
} bf16_finish;

static void bf16_finish_columns(void *ctx, ptrdiff_t j0, ptrdiff_t n)
{
    const bf16_finish *f = (const bf16_finish *)ctx;
    for (ptrdiff_t r = 0; r < f->rows; r++) {
        float *row = f->h + r * f->ld + j0;
        if (f->with_tanh) tanh_inplace(row, n);
        aiva_round_bf16(row, n, f->h_bf16 + r * f->ld + j0);
    }
}

/* Where the int8 operands of one step live in ws->bf16. */
typedef struct { float *x_scale, *h_scale; uint8_t *x, *hidden, *spikes; } int8_scratch;

static int8_scratch int8_parts(const aiva_net *net, const aiva_workspace *ws)
{
    const ptrdiff_t B = ws->capacity;
    int8_scratch p;
    p.x_scale = (float *)(void *)ws->bf16;
    p.h_scale = p.x_scale + B;
    p.x = (uint8_t *)(void *)(p.h_scale + B);
    p.hidden = p.x + B * net->input_size;
    p.spikes = p.hidden + B * net->hidden_size;
    return p;
}

/* The int32 products land in the backward's gradient buffers, idle in inference (same
 * sizes: 4 bytes per element). */
static int int8_forward_products(const aiva_blas *blas, const aiva_net *net, const float *x,
                                 int batch, aiva_workspace *ws, int with_tanh)
{
    const int I = net->input_size, H = net->hidden_size, S = net->spiking_size;
    const int qmax = net->act_qmax, zero = net->act_zero;
    int32_t *acc_h = (int32_t *)(void *)ws->d_hidden, *acc_v = (int32_t *)(void *)ws->d_membrane;
    int8_scratch q = int8_parts(net, ws);
    quantize_rows(blas, x, batch, I, qmax, zero, q.x, q.x_scale);
    int8_finish fc1 = {acc_h, batch, H, q.x_scale, net->fc1_scale, net->fc1_sum, zero,
                       with_tanh, ws->hidden};
    if (blas->lowp_u8s8(blas->lowp, 1, batch, H, I, q.x, I, net->fc1_t_q, I, acc_h, H,
                        net->fc1_packed, int8_finish_columns, &fc1))
        return AIVA_ERR_PROVIDER;
    quantize_rows(blas, ws->hidden, batch, H, qmax, zero, q.hidden, q.h_scale);
    int8_finish spiking = {acc_v, batch, S, q.h_scale, net->spiking_scale, net->spiking_sum,
                           zero, 0, ws->membrane};
    if (blas->lowp_u8s8(blas->lowp, 1, batch, S, H, q.hidden, H, net->spiking_t_q, H, acc_v, S,
                        net->spiking_packed, int8_finish_columns, &spiking))
        return AIVA_ERR_PROVIDER;
    return AIVA_OK;
}

/* z = spikes @ fc2 on the quantized fc2: the spikes are exactly 0/1 in u8 (no scale, no
 * zero point).  At batch 1 the sum of the selected rows: small integers, exact in float32
 * (|sum| <= 127 * spiking < 2^24), so it equals the product's int32. */
AIVA_VECTOR_PASS
static void spike_readout_s8(const float *restrict spikes, const int8_t *restrict fc2, int S,
                             int T, const float *restrict scale, float *restrict z)
{
    for (int t = 0; t < T; t++) z[t] = 0.0f;
    for (int j = 0; j < S; j++) {
        if (spikes[j] == 0.0f) continue;
        const int8_t *row = fc2 + (ptrdiff_t)j * T;
        for (int t = 0; t < T; t++) z[t] += (float)row[t];
    }
    for (int t = 0; t < T; t++) z[t] *= scale[t];
}

/* The spikes as 0/1 bytes, fc2's u8 operand (built for the widest vectors: 256 x 1,024
 * spikes at the baseline's width took as long as the fc2 product itself). */
AIVA_VECTOR_PASS
static void spikes_u8(const float *restrict spikes, ptrdiff_t n, uint8_t *restrict out)
{
    for (ptrdiff_t i = 0; i < n; i++) out[i] = (uint8_t)(spikes[i] != 0.0f);
}

static int int8_readout(const aiva_blas *blas, const aiva_net *net, int batch,
                        aiva_workspace *ws)
{
    const int S = net->spiking_size, T = net->num_tools;
    if (batch == 1) {
        spike_readout_s8(ws->spikes, net->fc2_q, S, T, net->fc2_scale, ws->logits);
        return AIVA_OK;
    }
    int8_scratch q = int8_parts(net, ws);
    spikes_u8(ws->spikes, (ptrdiff_t)batch * S, q.spikes);
    int32_t *acc = (int32_t *)(void *)ws->d_logits;
    /* Row scale 1: the spikes are not scaled.  The x scale slot is free by now. */
    for (int b = 0; b < batch; b++) q.x_scale[b] = 1.0f;
    int8_finish fc2 = {acc, batch, T, q.x_scale, net->fc2_scale, NULL, 0, 0, ws->logits};
    if (blas->lowp_u8s8(blas->lowp, 0, batch, T, S, q.spikes, S, net->fc2_q, T, acc, T, NULL,
                        int8_finish_columns, &fc2))
        return AIVA_ERR_PROVIDER;
    return AIVA_OK;
}

/* The fc1 and spiking products of a forward step (into ws->hidden before tanh, and
 * ws->membrane), in the net's precision.  Finite x can still overflow fc1's product (x near
 * FLT_MAX): Inf - Inf gives NaN hidden units, whose membrane never reaches the threshold, so
 * the callers check the membrane (B x spiking, cheap next to the products) and report it. */
static void forward_products(const aiva_blas *blas, const aiva_net *net, const float *x,
                             int batch, aiva_workspace *ws, int with_tanh)
{
    const int I = net->input_size, H = net->hidden_size, S = net->spiking_size;
    float *h = ws->hidden, *v = ws->membrane;
    if (net->bf16) {
        bf16_scratch b = bf16_parts(net, ws);
        /* The provider decides per row count whether a product runs on its pack of the
         * weight (2-32 rows) or on the plain weight (one row: a gemv; more rows: a gemm). */
        aiva_round_bf16(x, (ptrdiff_t)batch * I, b.x);
        bf16_finish fc1 = {h, b.hidden, batch, H, with_tanh};
        gemm_bf16_then(blas, 0, 1, batch, H, I, b.x, I, net->fc1_t_bf16, I, h, H,
                       net->fc1_packed, bf16_finish_columns, &fc1);
        gemm_bf16(blas, 0, 1, batch, S, H, b.hidden, H, net->spiking_t_bf16, H, v, S,
                  net->spiking_packed);
    } else {
        forward_product(blas, batch, H, I, x, net->fc1_t, net->fc1_packed, h);
        if (with_tanh) tanh_inplace(h, (ptrdiff_t)batch * H);
        forward_product(blas, batch, S, H, h, net->spiking_t, net->spiking_packed, v);
    }
}

/* z = spikes @ fc2, in the net's precision (spikes are 0/1: exact in bf16). */
static void readout(const aiva_blas *blas, const aiva_net *net, int batch, aiva_workspace *ws)
{
    const int S = net->spiking_size, T = net->num_tools;
    if (net->bf16) {
        if (batch == 1) {
            spike_readout_bf16(ws->spikes, net->fc2_bf16, S, T, ws->logits);
        } else {
            bf16_scratch b = bf16_parts(net, ws);
            aiva_round_bf16(ws->spikes, (ptrdiff_t)batch * S, b.spikes);
            gemm_bf16(blas, 0, 0, batch, T, S, b.spikes, S, net->fc2_bf16, T, ws->logits, T,
                      NULL);
        }
    } else if (batch == 1) {
        spike_readout(ws->spikes, net->fc2, batch, S, T, ws->logits);
    } else {
        rm_gemm(blas, 0, 0, batch, T, S, ws->spikes, S, net->fc2, T, ws->logits, T);
    }
}

int aiva_forward(const aiva_blas *blas, const aiva_net *net, const float *x, int batch,
                 const int32_t *refractory_left, aiva_workspace *ws, float *probs)
{
    if (batch < 1 || batch > ws->capacity) return AIVA_ERR_SIZE;
    if (!all_finite(x, (ptrdiff_t)batch * net->input_size)) return AIVA_ERR_INPUT_NONFINITE;
    if (net->bf16 && (!blas->lowp_bf16 || !ws->bf16)) return AIVA_ERR_SIZE;
    if (net->int8 && (!blas->lowp_u8s8 || !ws->bf16)) return AIVA_ERR_SIZE;

    if (net->int8) {
        int code = int8_forward_products(blas, net, x, batch, ws, 1);
        if (code != AIVA_OK) return code;
    } else {
        forward_products(blas, net, x, batch, ws, 1);
    }
    if (!all_finite(ws->membrane, (ptrdiff_t)batch * net->spiking_size))
        return AIVA_ERR_HIDDEN_NONFINITE;
    /* Threshold spikes, masked by the refractory countdown. */
    spike_pass(ws->membrane, refractory_left, net->threshold, ws->open, ws->spikes,
               (ptrdiff_t)batch * net->spiking_size);
    if (net->int8) {
        int code = int8_readout(blas, net, batch, ws);
        if (code != AIVA_OK) return code;
    } else {
        readout(blas, net, batch, ws);
    }
    if (!softmax_rows(ws->logits, batch, net->num_tools, probs))
        return AIVA_ERR_OUTPUT_NONFINITE;
    return AIVA_OK;
}

AIVA_VECTOR_PASS
static void commit_spikes(int32_t R, const float *restrict spikes, ptrdiff_t n,
                          int32_t *restrict refractory_left)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        int32_t left = refractory_left[i] > 0 ? refractory_left[i] - 1 : 0;
        refractory_left[i] = spikes[i] != 0.0f ? R : left;
    }
}

void aiva_commit_state(const aiva_net *net, const aiva_workspace *ws, int batch,
                       int32_t *refractory_left)
{
    commit_spikes(net->refractory_period, ws->spikes, (ptrdiff_t)batch * net->spiking_size,
                  refractory_left);
}

int aiva_forward_sequence(const aiva_blas *blas, const aiva_net *net, const float *xs,
                          int steps, int batch, int32_t *refractory_left, aiva_workspace *ws,
                          float *probs)
{
    if (steps < 1 || batch < 1 || (int64_t)steps * batch > ws->capacity) return AIVA_ERR_SIZE;
    const int rows = steps * batch;
    const ptrdiff_t step_neurons = (ptrdiff_t)batch * net->spiking_size;
    if (!all_finite(xs, (ptrdiff_t)rows * net->input_size)) return AIVA_ERR_INPUT_NONFINITE;
    if (net->bf16 && (!blas->lowp_bf16 || !ws->bf16)) return AIVA_ERR_SIZE;
    if (net->int8 && (!blas->lowp_u8s8 || !ws->bf16)) return AIVA_ERR_SIZE;

    /* A step's membrane does not depend on the state: the products run over all rows. */
    if (net->int8) {
        int code = int8_forward_products(blas, net, xs, rows, ws, 1);
        if (code != AIVA_OK) return code;
    } else {
        forward_products(blas, net, xs, rows, ws, 1);
    }
    if (!all_finite(ws->membrane, (ptrdiff_t)rows * net->spiking_size))
        return AIVA_ERR_HIDDEN_NONFINITE;
    /* Only the threshold and the refractory countdown are sequential. */
    for (int t = 0; t < steps; t++) {
        const ptrdiff_t at = (ptrdiff_t)t * step_neurons;
        spike_pass(ws->membrane + at, refractory_left, net->threshold, ws->open + at,
                   ws->spikes + at, step_neurons);
        commit_spikes(net->refractory_period, ws->spikes + at, step_neurons, refractory_left);
    }
    if (net->int8) {
        int code = int8_readout(blas, net, rows, ws);
        if (code != AIVA_OK) return code;
    } else {
        readout(blas, net, rows, ws);
    }
    if (!softmax_rows(ws->logits, rows, net->num_tools, probs))
        return AIVA_ERR_OUTPUT_NONFINITE;
    return AIVA_OK;
}

int aiva_backward(const aiva_blas *blas, const aiva_net *net, const float *x, const int64_t *y,
                  int batch, aiva_workspace *ws, aiva_grads *grads, double *loss)
{
    return aiva_backward_weighted(blas, net, x, y, NULL, batch, ws, grads, loss);
}

int aiva_backward_weighted(const aiva_blas *blas, const aiva_net *net, const float *x,
                           const int64_t *y, const float *row_weight, int batch,
                           aiva_workspace *ws, aiva_grads *grads, double *loss)
{
    const int I = net->input_size, H = net->hidden_size, S = net->spiking_size,
              T = net->num_tools;
    if (batch < 1 || batch > ws->capacity) return AIVA_ERR_SIZE;
    if (net->bf16 && (!blas->lowp_bf16 || !ws->bf16)) return AIVA_ERR_SIZE;
    /* A row of weight 0 is a step without a target: it may carry any label. */
    double weight_sum = 0.0;
    for (int b = 0; b < batch; b++) {
        const float w = row_weight ? row_weight[b] : 1.0f;
        if (!(w >= 0.0f && w <= FLT_MAX)) return AIVA_ERR_GRAD_NONFINITE;
        if (w != 0.0f && (y[b] < 0 || y[b] >= T)) return AIVA_ERR_LABEL;
        weight_sum += (double)w;
    }

    /* Cross-entropy from the logits (log-sum-exp) and dz = w_b (softmax - onehot), with
     * w_b = 1/B without row weights. */
    const float inv_b = 1.0f / (float)batch;
    double total = 0.0;
    float *dz = ws->d_logits;
    if (!softmax_rows(ws->logits, batch, T, dz)) return AIVA_ERR_GRAD_NONFINITE;
    for (int b = 0; b < batch; b++) {
        const float *z = ws->logits + (ptrdiff_t)b * T;
        float *d = dz + (ptrdiff_t)b * T;
        const float w = row_weight ? row_weight[b] : inv_b;
        if (w == 0.0f) {
            for (int t = 0; t < T; t++) d[t] = 0.0f;
            continue;
        }
        float m = z[0];
        for (int t = 1; t < T; t++) m = z[t] > m ? z[t] : m;
        double s = 0.0;
        for (int t = 0; t < T; t++) s += exp((double)z[t] - m);
        double ce = (double)m + log(s) - (double)z[y[b]];
        total += row_weight ? (double)w * ce : ce;
        for (int t = 0; t < T; t++) d[t] *= w;
        d[y[b]] -= w;
    }
    *loss = row_weight ? total : total / batch;
    /* Not isfinite(): mingw-w64's macro converts a double through float (-Wconversion). */
    if (!(fabs(*loss) <= DBL_MAX)) return AIVA_ERR_GRAD_NONFINITE;

    float *dv = ws->d_membrane, *da = ws->d_hidden;
    const ptrdiff_t nS = (ptrdiff_t)batch * S, nH = (ptrdiff_t)batch * H;
    if (net->bf16) {
        /* The same products on bf16-rounded operands; the elementwise parts stay float32.
         * x and h were rounded by the forward; the spikes' slot is reused for dv's rounding
         * and h's for da's once the products that read them are done. */
        bf16_scratch b = bf16_parts(net, ws);
        aiva_round_bf16(ws->spikes, nS, b.spikes);
        aiva_round_bf16(dz, (ptrdiff_t)batch * T, b.d_logits);
        gemm_bf16(blas, 1, 0, S, T, batch, b.spikes, S, b.d_logits, T, grads->fc2, T, NULL);
        gemm_bf16(blas, 0, 1, batch, S, T, b.d_logits, T, net->fc2_bf16, T, dv, S, NULL);
        surrogate_pass(dv, ws->membrane, ws->open, net->threshold, net->surrogate_slope, nS);
        aiva_round_bf16(dv, nS, b.spikes);
        gemm_bf16(blas, 1, 0, S, H, batch, b.spikes, S, b.hidden, H, grads->spiking_t, H, NULL);
        gemm_bf16(blas, 0, 0, batch, H, S, b.spikes, S, net->spiking_t_bf16, H, da, H, NULL);
        tanh_backward(da, ws->hidden, nH);
        aiva_round_bf16(da, nH, b.hidden);
        gemm_bf16(blas, 1, 0, H, I, batch, b.hidden, H, b.x, I, grads->fc1_t, I, NULL);
    } else {
        /* fc2: the spikes are the layer's input. */
        rm_gemm(blas, 1, 0, S, T, batch, ws->spikes, S, dz, T, grads->fc2, T);
        /* Through the threshold: the fast-sigmoid surrogate, zero where the mask was closed. */
        rm_gemm(blas, 0, 1, batch, S, T, dz, T, net->fc2, T, dv, S);
        surrogate_pass(dv, ws->membrane, ws->open, net->threshold, net->surrogate_slope, nS);
        rm_gemm(blas, 1, 0, S, H, batch, dv, S, ws->hidden, H, grads->spiking_t, H);
        /* Through tanh: 1 - h^2 from the stored h. */
        rm_gemm(blas, 0, 0, batch, H, S, dv, S, net->spiking_t, H, da, H);
        tanh_backward(da, ws->hidden, nH);
        rm_gemm(blas, 1, 0, H, I, batch, da, H, x, I, grads->fc1_t, I);
    }

    /* Each gradient entry is a sum of `batch` products, so these bounds hold for every
     * entry (and every partial sum BLAS forms): finite inputs under the bound mean finite,
     * non-overflowing gradients, checked in O(B * width) instead of a pass over 3M weights.
     * |spikes| <= 1 and |h| <= 1; the fc2 gradient is bounded by 1 outright. */
    const float max_dv = max_abs(dv, nS), max_da = max_abs(da, nH);
    if (!(max_dv < INFINITY) || !(max_da < INFINITY))   /* an Inf, or NaN bits above it */
        return AIVA_ERR_GRAD_NONFINITE;
    double bound_spiking = (double)batch * max_dv;
    double bound_fc1 = (double)batch * max_da * max_abs(x, (ptrdiff_t)batch * I);
    if (bound_spiking > AIVA_GRAD_LIMIT || bound_fc1 > AIVA_GRAD_LIMIT)
        return AIVA_ERR_GRAD_NONFINITE;
    /* Twice the bound: room for float32 rounding of the partial sums and, in bf16 mode, for
     * operands rounded up by 2^-8.  Adam needs only orders of magnitude. */
    grads->bound_fc1_t = 2.0 * bound_fc1;
    grads->bound_spiking_t = 2.0 * bound_spiking;
    /* |dz| <= w_b entrywise and spikes are 0/1: |fc2 gradient| <= sum of the weights. */
    grads->bound_fc2 = 2.0 * (row_weight ? weight_sum : 1.0);
    return AIVA_OK;
}

void aiva_blas_products(const aiva_blas *blas, const aiva_net *net, const float *x, int batch,
                        aiva_workspace *ws)
{
    /* In bf16 mode this includes rounding x and h to bf16: every bf16 step must. */
    if (batch < 1 || batch > ws->capacity) return;
    if (net->bf16 && (!blas->lowp_bf16 || !ws->bf16)) return;
    if (net->int8) {
        /* With the quantization of x and h and the dequantization: every int8 step does. */
        if (!blas->lowp_u8s8 || !ws->bf16) return;
        if (int8_forward_products(blas, net, x, batch, ws, 0) != AIVA_OK) return;
        int8_readout(blas, net, batch, ws);
        return;
    }
    forward_products(blas, net, x, batch, ws, 0);
    const int S = net->spiking_size, T = net->num_tools;
    if (net->bf16) {
        bf16_scratch b = bf16_parts(net, ws);
        gemm_bf16(blas, 0, 0, batch, T, S, b.spikes, S, net->fc2_bf16, T, ws->logits, T, NULL);
    } else {
        rm_gemm(blas, 0, 0, batch, T, S, ws->spikes, S, net->fc2, T, ws->logits, T);
    }
}
