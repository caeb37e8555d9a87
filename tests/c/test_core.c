/* C-level tests of the core (src_c/aiva_core.c), with no Python and no real BLAS.
 *
 * The products go through a plain reference BLAS handed in the aiva_blas table (column-major
 * Fortran sgemm_/sgemv_ in both integer widths, and the reduced-precision provider's bf16
 * product), so these tests
 * check the core's own logic: the row-major operand swaps, the integer widths, the offsets,
 * the spike/refractory rules, the softmax and the backward pass.  Every result is compared
 * with a float64 reference that carries, element by element, a bound on the error a float32
 * computation may honestly make (see `struct mat` below); a result outside its bound fails.
 *
 * Built with -Wall -Wextra -Wconversion -Werror by tests/c/run.sh, natively (gcc, clang) and
 * cross-compiled with mingw-w64 (LLP64: long is 32 bits there) and run under wine.
 */
#define __USE_MINGW_ANSI_STDIO 1
#include "aiva_core.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0, checks = 0;
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        checks++;                                                          \
        if (!(cond)) {                                                     \
            failures++;                                                    \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
        }                                                                  \
    } while (0)

static const double U32 = 5.9604644775390625e-08;   /* 2^-24: float32 unit roundoff   */
static const double U16 = 3.90625e-03;              /* 2^-8: bfloat16 unit roundoff   */

/* gamma_K = K u / (1 - K u): |fl(sum of K products) - exact| <= gamma_K * sum |a_i b_i|
 * for any order of summation (Higham, Accuracy and Stability, Theorem 3.1). */
static double gamma_k(ptrdiff_t k) { return (double)k * U32 / (1.0 - (double)k * U32); }

/* ------------------------------------------------------------------------------------ */
/* Reference BLAS: column-major, alpha/beta general, float accumulation in index order.   */

static int lsame(char c, char d) { return (c | 32) == (d | 32); }   /* case-blind, as Fortran BLAS */

static void ref_sgemm_core(char ta, char tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha,
                           const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                           float beta, float *c, ptrdiff_t ldc)
{
    for (ptrdiff_t j = 0; j < n; j++)
        for (ptrdiff_t i = 0; i < m; i++) {
            float s = 0.0f;
            for (ptrdiff_t p = 0; p < k; p++) {
                float av = lsame(ta, 'n') ? a[i + p * lda] : a[p + i * lda];
                float bv = lsame(tb, 'n') ? b[p + j * ldb] : b[j + p * ldb];
                s += av * bv;
            }
            float *cij = &c[i + j * ldc];
            *cij = alpha * s + (beta == 0.0f ? 0.0f : beta * *cij);
        }
}

static void ref_sgemv_core(char t, ptrdiff_t m, ptrdiff_t n, float alpha, const float *a,
                           ptrdiff_t lda, const float *x, ptrdiff_t incx, float beta, float *y,
                           ptrdiff_t incy)
{
    ptrdiff_t len_y = lsame(t, 'n') ? m : n, len_x = lsame(t, 'n') ? n : m;
    for (ptrdiff_t i = 0; i < len_y; i++) {
        float s = 0.0f;
        for (ptrdiff_t p = 0; p < len_x; p++) {
            float av = lsame(t, 'n') ? a[i + p * lda] : a[p + i * lda];
            s += av * x[p * incx];
        }
        y[i * incy] = alpha * s + (beta == 0.0f ? 0.0f : beta * y[i * incy]);
    }
}

static int gemm_calls = 0, gemv_calls = 0;

static void ref_sgemm(const char *ta, const char *tb, const int *m, const int *n, const int *k,
                      const float *alpha, const float *a, const int *lda, const float *b,
                      const int *ldb, const float *beta, float *c, const int *ldc)
{
    gemm_calls++;
    ref_sgemm_core(*ta, *tb, *m, *n, *k, *alpha, a, *lda, b, *ldb, *beta, c, *ldc);
}

static void ref_sgemv(const char *t, const int *m, const int *n, const float *alpha,
                      const float *a, const int *lda, const float *x, const int *incx,
                      const float *beta, float *y, const int *incy)
{
    gemv_calls++;
    ref_sgemv_core(*t, *m, *n, *alpha, a, *lda, x, *incx, *beta, y, *incy);
}

static void ref_sgemm64(const char *ta, const char *tb, const int64_t *m, const int64_t *n,
                        const int64_t *k, const float *alpha, const float *a, const int64_t *lda,
                        const float *b, const int64_t *ldb, const float *beta, float *c,
                        const int64_t *ldc)
{
    gemm_calls++;
    ref_sgemm_core(*ta, *tb, (ptrdiff_t)*m, (ptrdiff_t)*n, (ptrdiff_t)*k, *alpha, a,
                   (ptrdiff_t)*lda, b, (ptrdiff_t)*ldb, *beta, c, (ptrdiff_t)*ldc);
}

static void ref_sgemv64(const char *t, const int64_t *m, const int64_t *n, const float *alpha,
                        const float *a, const int64_t *lda, const float *x, const int64_t *incx,
                        const float *beta, float *y, const int64_t *incy)
{
    gemv_calls++;
    ref_sgemv_core(*t, (ptrdiff_t)*m, (ptrdiff_t)*n, *alpha, a, (ptrdiff_t)*lda, x,
                   (ptrdiff_t)*incx, *beta, y, (ptrdiff_t)*incy);
}

static float bf16_to_float(aiva_bf16 h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The reduced-precision provider's bf16 product (aiva_lowp_bf16_fn, row-major): a plain
 * loop, the stand-in for oneDNN here (tests/test_lowp.py checks oneDNN's own). */
static int ref_lowp_bf16(void *lowp, int ta, int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                         const aiva_bf16 *a, ptrdiff_t lda, const aiva_bf16 *b, ptrdiff_t ldb,
                         float *c, ptrdiff_t ldc, const void *b_packed,
                         aiva_lowp_epilogue_fn epi, void *epi_ctx)
{
    (void)lowp;
    (void)b_packed;   /* a handle of b only: b itself is always passed too */
    for (ptrdiff_t i = 0; i < m; i++)
        for (ptrdiff_t j = 0; j < n; j++) {
            float s = 0.0f;
            for (ptrdiff_t p = 0; p < k; p++) {
                aiva_bf16 av = ta ? a[p * lda + i] : a[i * lda + p];
                aiva_bf16 bv = tb ? b[j * ldb + p] : b[p * ldb + j];
                s += bf16_to_float(av) * bf16_to_float(bv);
            }
            c[i * ldc + j] = s;
        }
    /* The epilogue on two uneven blocks of columns, last first, as a provider that splits C
     * over threads may run them. */
    if (epi) {
        const ptrdiff_t half = n / 3;
        epi(epi_ctx, half, n - half);
        if (half > 0) epi(epi_ctx, 0, half);
    }
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Bounded float64 reference: each matrix holds values and, per element, a bound on how far
 * a float32 computation of it may be from them.                                          */

struct mat { ptrdiff_t rows, cols; double *v, *e; };

static struct mat mat_new(ptrdiff_t rows, ptrdiff_t cols)
{
    struct mat m = {rows, cols, calloc((size_t)(rows * cols), sizeof(double)),
                    calloc((size_t)(rows * cols), sizeof(double))};
    if (!m.v || !m.e) { fprintf(stderr, "out of memory\n"); exit(2); }
    return m;
}
static void mat_free(struct mat *m) { free(m->v); free(m->e); }

static struct mat mat_from_float(const float *f, ptrdiff_t rows, ptrdiff_t cols)
{
    struct mat m = mat_new(rows, cols);
    for (ptrdiff_t i = 0; i < rows * cols; i++) m.v[i] = f[i];
    return m;
}

static struct mat mat_transpose(struct mat a)
{
    struct mat t = mat_new(a.cols, a.rows);
    for (ptrdiff_t i = 0; i < a.rows; i++)
        for (ptrdiff_t j = 0; j < a.cols; j++) {
            t.v[j * a.rows + i] = a.v[i * a.cols + j];
            t.e[j * a.rows + i] = a.e[i * a.cols + j];
        }
    return t;
}

/* An operand the core rounds to bf16 after computing it in float32 (within e of v): where
 * every float in [v - e, v + e] rounds to the same bf16 value (rounding is monotonic, so the
 * two ends decide), the core's operand is exactly that value; else it is within e plus half
 * a bf16 spacing (relative U16) of v. */
static aiva_bf16 reference_bf16(float f);
static void bf16_operand(double *v, double *e)
{
    float lo = (float)(*v - *e), hi = (float)(*v + *e);
    aiva_bf16 rl = reference_bf16(lo), rh = reference_bf16(hi);
    if (rl == rh) {
        uint32_t u = (uint32_t)rl << 16;
        float r;
        memcpy(&r, &u, sizeof r);
        *v = r;
        *e = 0.0;
    } else {
        *e += U16 * (fabs(*v) + *e);
    }
}

/* C = A @ B.  A float32 product of operands known within eA and eB is within
 *   |A| eB + eA (|B| + eB) + gamma_K (|A| + eA)(|B| + eB)
 * of the exact product of the exact operands.  round_a / round_b: the product takes that
 * operand rounded to bf16 by the core (bf16_operand). */
static struct mat mat_mul(struct mat a, struct mat b, int round_a, int round_b)
{
    struct mat c = mat_new(a.rows, b.cols);
    const double g = gamma_k(a.cols);
    double *bv_r = malloc((size_t)(b.rows * b.cols) * sizeof(double));
    double *be_r = malloc((size_t)(b.rows * b.cols) * sizeof(double));
    for (ptrdiff_t i = 0; i < b.rows * b.cols; i++) {
        bv_r[i] = b.v[i];
        be_r[i] = b.e[i];
        if (round_b) bf16_operand(&bv_r[i], &be_r[i]);
    }
    for (ptrdiff_t i = 0; i < a.rows; i++)
        for (ptrdiff_t p = 0; p < a.cols; p++) {
            double av = a.v[i * a.cols + p], ea = a.e[i * a.cols + p];
            if (round_a) bf16_operand(&av, &ea);
            const double aa = fabs(av);
            for (ptrdiff_t j = 0; j < b.cols; j++) {
                double bv = bv_r[p * b.cols + j], ab = fabs(bv), eb = be_r[p * b.cols + j];
                c.v[i * c.cols + j] += av * bv;
                c.e[i * c.cols + j] += aa * eb + ea * (ab + eb) + g * (aa + ea) * (ab + eb);
            }
        }
    free(bv_r);
    free(be_r);
    return c;
}

/* |got - want| <= bound (plus a hair for the float64 reference's own rounding). */
static double worst_ratio;
static int within(double got, double want, double bound)
{
    double slack = bound * 1e-6 + 1e-300 + fabs(want) * 1e-12;
    double err = fabs(got - want);
    if (bound > 0 && err / bound > worst_ratio) worst_ratio = err / bound;
    return err <= bound + slack;
}

static int check_close(const char *what, const float *got, struct mat want)
{
    int bad = 0;
    for (ptrdiff_t i = 0; i < want.rows * want.cols; i++)
        if (!within(got[i], want.v[i], want.e[i])) {
            if (bad < 3)
                fprintf(stderr, "  %s[%lld]: got %.9g, want %.9g +- %.3g\n", what,
                        (long long)i, (double)got[i], want.v[i], want.e[i]);
            bad++;
        }
    CHECK(bad == 0, "%s: %d of %lld elements outside their error bound", what, bad,
          (long long)(want.rows * want.cols));
    return bad;
}

/* ------------------------------------------------------------------------------------ */
/* Test data.                                                                             */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double uniform(void)   /* [0, 1), splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}
static double normal(void)
{
    double u1 = uniform(), u2 = uniform();
    return sqrt(-2.0 * log(u1 + 1e-300)) * cos(6.283185307179586 * u2);
}
static float *normal_floats(ptrdiff_t n, double scale)
{
    float *f = malloc((size_t)n * sizeof(float));
    for (ptrdiff_t i = 0; i < n; i++) f[i] = (float)(normal() * scale);
    return f;
}

/* Our own round-to-nearest-even to bf16, on values rather than bits, to check the core's. */
static aiva_bf16 reference_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (aiva_bf16)((u >> 16) | 0x40u);
    uint32_t lo_bits = u & 0xffff0000u, hi_bits = lo_bits + 0x10000u;
    float lo, hi;
    memcpy(&lo, &lo_bits, sizeof lo);
    memcpy(&hi, &hi_bits, sizeof hi);
    if ((u & 0x7fffffffu) >= 0x7f800000u) return (aiva_bf16)(u >> 16);   /* +-Inf */
    double dlo = fabs((double)f - (double)lo);
    double dhi = isinf(hi) ? fabs((double)f - 3.4028236692093846e38 * (f < 0 ? -1 : 1))
                           : fabs((double)f - (double)hi);
    if (dlo < dhi) return (aiva_bf16)(lo_bits >> 16);
    if (dhi < dlo) return (aiva_bf16)(hi_bits >> 16);
    return (aiva_bf16)(((lo_bits >> 16) & 1u) ? hi_bits >> 16 : lo_bits >> 16);
}

/* ------------------------------------------------------------------------------------ */

struct sizes { int input, hidden, spiking, tools; };

struct fixture {
    struct sizes sz;
    int batch, refractory;
    float threshold, slope;
    float *fc1, *spiking, *fc2;         /* state_dict layout: (in, hidden), ...          */
    float *fc1_t, *spiking_t;           /* engine layout: (hidden, in), (spiking, hidden) */
    aiva_bf16 *fc1_t_bf16, *spiking_t_bf16, *fc2_bf16;
    float *x;
    int32_t *left;                      /* refractory countdown, or NULL                 */
    int64_t *y;
    aiva_net net;
    aiva_workspace ws;
    float *probs;
};

static float *transpose_f(const float *a, int rows, int cols)
{
    float *t = malloc((size_t)rows * (size_t)cols * sizeof(float));
    for (ptrdiff_t i = 0; i < rows; i++)
        for (ptrdiff_t j = 0; j < cols; j++) t[j * rows + i] = a[i * cols + j];
    return t;
}

static aiva_bf16 *rounded(const float *a, ptrdiff_t n)
{
    aiva_bf16 *r = malloc((size_t)n * sizeof(aiva_bf16));
    aiva_round_bf16(a, n, r);
    return r;
}

static void fixture_init(struct fixture *f, struct sizes sz, int batch, int with_state, int bf16)
{
    memset(f, 0, sizeof *f);
    f->sz = sz;
    f->batch = batch;
    f->refractory = 2;
    f->threshold = 0.5f;
    f->slope = 25.0f;
    const ptrdiff_t I = sz.input, H = sz.hidden, S = sz.spiking, T = sz.tools, B = batch;
    f->fc1 = normal_floats(I * H, 1.0 / sqrt((double)I));
    f->spiking = normal_floats(H * S, 1.5 / sqrt((double)H));
    f->fc2 = normal_floats(S * T, 1.0);
    f->fc1_t = transpose_f(f->fc1, sz.input, sz.hidden);
    f->spiking_t = transpose_f(f->spiking, sz.hidden, sz.spiking);
    f->x = normal_floats(B * I, 1.0);
    if (with_state) {
        f->left = malloc((size_t)(B * S) * sizeof(int32_t));
        for (ptrdiff_t i = 0; i < B * S; i++) f->left[i] = (int32_t)(uniform() * 3.0);
    }
    f->y = malloc((size_t)B * sizeof(int64_t));
    for (ptrdiff_t b = 0; b < B; b++) f->y[b] = (int64_t)(uniform() * (double)T);

    aiva_net *n = &f->net;
    n->input_size = sz.input; n->hidden_size = sz.hidden;
    n->spiking_size = sz.spiking; n->num_tools = sz.tools;
    n->threshold = f->threshold; n->refractory_period = f->refractory;
    n->surrogate_slope = f->slope;
    n->fc1_t = f->fc1_t; n->spiking_t = f->spiking_t; n->fc2 = f->fc2;
    if (bf16) {
        f->fc1_t_bf16 = rounded(f->fc1_t, H * I);
        f->spiking_t_bf16 = rounded(f->spiking_t, S * H);
        f->fc2_bf16 = rounded(f->fc2, S * T);
        n->bf16 = 1;
        n->fc1_t_bf16 = f->fc1_t_bf16; n->spiking_t_bf16 = f->spiking_t_bf16;
        n->fc2_bf16 = f->fc2_bf16;
    }
    aiva_workspace *w = &f->ws;
    w->capacity = batch;
    w->hidden = calloc((size_t)(B * H), sizeof(float));
    w->membrane = calloc((size_t)(B * S), sizeof(float));
    w->spikes = calloc((size_t)(B * S), sizeof(float));
    w->open = calloc((size_t)(B * S), 1);
    w->logits = calloc((size_t)(B * T), sizeof(float));
    w->d_logits = calloc((size_t)(B * T), sizeof(float));
    w->d_membrane = calloc((size_t)(B * S), sizeof(float));
    w->d_hidden = calloc((size_t)(B * H), sizeof(float));
    if (bf16) w->bf16 = calloc((size_t)(B * (I + H + S + T)), sizeof(aiva_bf16));
    f->probs = calloc((size_t)(B * T), sizeof(float));
}

static void fixture_free(struct fixture *f)
{
    free(f->fc1); free(f->spiking); free(f->fc2); free(f->fc1_t); free(f->spiking_t);
    free(f->fc1_t_bf16); free(f->spiking_t_bf16); free(f->fc2_bf16);
    free(f->x); free(f->left); free(f->y); free(f->probs);
    free(f->ws.hidden); free(f->ws.membrane); free(f->ws.spikes); free(f->ws.open);
    free(f->ws.logits); free(f->ws.d_logits); free(f->ws.d_membrane); free(f->ws.d_hidden);
    free(f->ws.bf16);
}

/* A weight as the reference sees it: the float32 values, or in bf16 mode the bf16-rounded
 * ones (exact: the rounding of a weight is deterministic, and checked on its own). */
static struct mat weight(const float *w, ptrdiff_t rows, ptrdiff_t cols, int bf16)
{
    struct mat m = mat_new(rows, cols);
    for (ptrdiff_t i = 0; i < rows * cols; i++)
        m.v[i] = bf16 ? bf16_to_float(reference_bf16(w[i])) : w[i];
    return m;
}

struct forward_ref { struct mat x, h, v, out, z, p; int ambiguous; };

/* The forward step of the contract in float64 with bounds.  A neuron whose membrane is
 * within its bound of the threshold may honestly spike either way: there the reference
 * takes the core's decision (and counts it), everywhere else the core must match it. */
static struct forward_ref forward_reference(struct fixture *f)
{
    const int bf16 = f->net.bf16;
    const ptrdiff_t B = f->batch, S = f->sz.spiking, T = f->sz.tools;
        struct forward_ref r;
    r.x = mat_from_float(f->x, B, f->sz.input);
    if (bf16)   /* x is rounded deterministically too: take its bf16 value exactly */
        for (ptrdiff_t i = 0; i < B * f->sz.input; i++)
            r.x.v[i] = bf16_to_float(reference_bf16(f->x[i]));
    struct mat w1 = weight(f->fc1, f->sz.input, f->sz.hidden, bf16);
    struct mat w2 = weight(f->spiking, f->sz.hidden, S, bf16);
    struct mat w3 = weight(f->fc2, S, T, bf16);
    r.h = mat_mul(r.x, w1, 0, 0);
    for (ptrdiff_t i = 0; i < r.h.rows * r.h.cols; i++) {
        /* tanh is 1-Lipschitz; the core's rational tanh is within 8 ulp of the true one. */
        double t = tanh(r.h.v[i]);
        r.h.e[i] = r.h.e[i] + 8.0 * U32 * fabs(t) + 1e-45;
        r.h.v[i] = t;
    }
    r.v = mat_mul(r.h, w2, bf16, 0);
    r.out = mat_new(B, S);
    r.ambiguous = 0;
    for (ptrdiff_t i = 0; i < B * S; i++) {
        int open = f->left ? f->left[i] == 0 : 1;
        CHECK(f->ws.open[i] == open, "mask[%lld] = %d, want %d", (long long)i, f->ws.open[i], open);
        int spike = open && r.v.v[i] >= f->threshold;
        if (fabs(r.v.v[i] - f->threshold) <= r.v.e[i] * (1 + 1e-6)) {
            r.ambiguous++;
            spike = open && f->ws.spikes[i] != 0.0f;
        }
        CHECK(f->ws.spikes[i] == (float)spike, "spike[%lld] = %g, want %d (v = %.9g +- %.3g)",
              (long long)i, (double)f->ws.spikes[i], spike, r.v.v[i], r.v.e[i]);
        r.out.v[i] = spike;
    }
    r.z = mat_mul(r.out, w3, 0, 0);
    r.p = mat_new(B, T);
    for (ptrdiff_t b = 0; b < B; b++) {
        double m = -INFINITY, s = 0.0, ez = 0.0;
        for (ptrdiff_t t = 0; t < T; t++) {
            m = fmax(m, r.z.v[b * T + t]);
            ez = fmax(ez, r.z.e[b * T + t]);
        }
        for (ptrdiff_t t = 0; t < T; t++) s += exp(r.z.v[b * T + t] - m);
        for (ptrdiff_t t = 0; t < T; t++) {
            double p = exp(r.z.v[b * T + t] - m) / s;
            /* Logits within ez move each probability by a factor within e^(+-2 ez); the
             * float32 softmax adds the rounding of the shift (u |z - m|), exp (2 ulp), the
             * sum of T terms (gamma_T) and the scaling (2 ulp). */
            double rel = expm1(2.0 * ez) + U32 * fabs(r.z.v[b * T + t] - m) + gamma_k(T)
                         + 6.0 * U32;
            r.p.v[b * T + t] = p;
            /* exp_nonpositive clamps its argument at -87: a probability under e^-87 / sum
             * (sum >= 1) comes out as that floor. */
            r.p.e[b * T + t] = p * rel * 1.01 + 1.7e-38;
        }
    }
    mat_free(&w1); mat_free(&w2); mat_free(&w3);
    return r;
}

static void forward_ref_free(struct forward_ref *r)
{
    mat_free(&r->x); mat_free(&r->h); mat_free(&r->v); mat_free(&r->out);
    mat_free(&r->z); mat_free(&r->p);
}

static void test_step(const char *name, const aiva_blas *blas, struct sizes sz, int batch,
                      int with_state, int bf16)
{
    struct fixture f;
    fixture_init(&f, sz, batch, with_state, bf16);
    const ptrdiff_t B = batch, I = sz.input, H = sz.hidden, S = sz.spiking, T = sz.tools;
    char what[160];
    worst_ratio = 0.0;

    int rc = aiva_forward(blas, &f.net, f.x, batch, f.left, &f.ws, f.probs);
    CHECK(rc == AIVA_OK, "%s: aiva_forward returned %d", name, rc);
    struct forward_ref r = forward_reference(&f);
    snprintf(what, sizeof what, "%s hidden", name);
    check_close(what, f.ws.hidden, r.h);
    snprintf(what, sizeof what, "%s membrane", name);
    check_close(what, f.ws.membrane, r.v);
    snprintf(what, sizeof what, "%s logits", name);
    check_close(what, f.ws.logits, r.z);
    snprintf(what, sizeof what, "%s probs", name);
    check_close(what, f.probs, r.p);
    /* The bound must leave real decisions to check.  gamma_K is a worst case (the typical
     * error grows like sqrt(K) u, not K u), so at K = 2048 a few percent of N(0, 1)-driven
     * membranes fall within it; more than 5% would mean a bound too loose to test with. */
    CHECK(r.ambiguous * 20 <= B * S, "%s: %d of %lld neurons within the bound of the threshold",
          name, r.ambiguous, (long long)(B * S));
    const double forward_worst = worst_ratio;

    /* Backward on the same workspace. */
    aiva_grads g;
    memset(&g, 0, sizeof g);
    float *g1 = calloc((size_t)(H * I), sizeof(float)), *g2 = calloc((size_t)(S * H), sizeof(float));
    float *g3 = calloc((size_t)(S * T), sizeof(float));
    g.fc1_t = g1; g.spiking_t = g2; g.fc2 = g3;
    double loss = 0.0;
    rc = aiva_backward(blas, &f.net, f.x, f.y, batch, &f.ws, &g, &loss);
    CHECK(rc == AIVA_OK, "%s: aiva_backward returned %d", name, rc);

    const int rb = bf16;
    /* Loss: mean of logsumexp(z) - z[y]; each term moves by at most 2 max ez. */
    double want_loss = 0.0, loss_bound = 0.0;
    struct mat dz = mat_new(B, T);
    for (ptrdiff_t b = 0; b < B; b++) {
        double m = -INFINITY, s = 0.0, ez = 0.0;
        for (ptrdiff_t t = 0; t < T; t++) { m = fmax(m, r.z.v[b * T + t]); ez = fmax(ez, r.z.e[b * T + t]); }
        for (ptrdiff_t t = 0; t < T; t++) s += exp(r.z.v[b * T + t] - m);
        want_loss += m + log(s) - r.z.v[b * T + f.y[b]];
        loss_bound += 2.0 * ez + 1e-12;
        for (ptrdiff_t t = 0; t < T; t++) {
            double p = r.p.v[b * T + t] - (t == f.y[b] ? 1.0 : 0.0);
            dz.v[b * T + t] = p / (double)B;
            /* p * fl(1/B) and the subtraction of fl(1/B): 4 roundings of terms up to p + 1. */
            dz.e[b * T + t] = (r.p.e[b * T + t] + 4.0 * U32 * (r.p.v[b * T + t] + 1.0)) / (double)B;
        }
    }
    CHECK(within(loss, want_loss / (double)B, loss_bound / (double)B),
          "%s: loss %.12g, want %.12g +- %.3g", name, loss, want_loss / (double)B,
          loss_bound / (double)B);

    struct mat w2 = weight(f.spiking, H, S, bf16), w3 = weight(f.fc2, S, T, bf16);
    struct mat w2t = mat_transpose(w2), w3t = mat_transpose(w3);
    struct mat out_t = mat_transpose(r.out);
    struct mat g_fc2 = mat_mul(out_t, dz, 0, rb);                 /* (S, T) */
    snprintf(what, sizeof what, "%s grad fc2", name);
    check_close(what, g3, g_fc2);

    struct mat dv = mat_mul(dz, w3t, rb, 0);                      /* (B, S) = d out */
    for (ptrdiff_t i = 0; i < B * S; i++) {
        int open = f.left ? f.left[i] == 0 : 1;
        double a = 1.0 + f.slope * fabs(r.v.v[i] - f.threshold);
        double surr = open ? 1.0 / (a * a) : 0.0;
        /* |d surr / dv| <= 2k: v within ev moves the surrogate by 2k ev; 5 roundings. */
        double e_surr = open ? 2.0 * f.slope * r.v.e[i] + 5.0 * U32 * surr : 0.0;
        double d = dv.v[i];
        dv.v[i] = d * surr;
        dv.e[i] = fabs(d) * e_surr + dv.e[i] * (surr + e_surr) + U32 * fabs(d * surr);
    }
    struct mat h_t = mat_transpose(r.h);
    struct mat g_sp = mat_mul(h_t, dv, rb, rb);                      /* (H, S) */
    struct mat g_sp_t = mat_transpose(g_sp);                         /* engine: (S, H) */
    snprintf(what, sizeof what, "%s grad spiking", name);
    check_close(what, g2, g_sp_t);

    struct mat da = mat_mul(dv, w2t, rb, 0);                       /* (B, H) */
    for (ptrdiff_t i = 0; i < B * H; i++) {
        double h = r.h.v[i], eh = r.h.e[i];
        double k = 1.0 - h * h, ek = 2.0 * fabs(h) * eh + eh * eh + 2.0 * U32;
        double d = da.v[i];
        da.v[i] = d * k;
        da.e[i] = fabs(d) * ek + da.e[i] * (fabs(k) + ek) + U32 * fabs(d * k);
    }
    struct mat x_t = mat_transpose(r.x);
    struct mat g_fc1 = mat_mul(x_t, da, 0, rb);                    /* (I, H) */
    struct mat g_fc1_t = mat_transpose(g_fc1);                       /* engine: (H, I) */
    snprintf(what, sizeof what, "%s grad fc1", name);
    check_close(what, g1, g_fc1_t);

    /* The bounds Adam relies on hold for every entry. */
    double m1 = 0, m2 = 0, m3 = 0;
    for (ptrdiff_t i = 0; i < H * I; i++) m1 = fmax(m1, fabs(g1[i]));
    for (ptrdiff_t i = 0; i < S * H; i++) m2 = fmax(m2, fabs(g2[i]));
    for (ptrdiff_t i = 0; i < S * T; i++) m3 = fmax(m3, fabs(g3[i]));
    CHECK(m1 <= g.bound_fc1_t && m2 <= g.bound_spiking_t && m3 <= g.bound_fc2,
          "%s: gradient bounds %g %g %g below the maxima %g %g %g", name, g.bound_fc1_t,
          g.bound_spiking_t, g.bound_fc2, m1, m2, m3);

    printf("  %-44s worst error / bound: forward %.2g, all %.2g; %d ambiguous neurons\n", name,
           forward_worst, worst_ratio, r.ambiguous);

    mat_free(&dz); mat_free(&w2); mat_free(&w3); mat_free(&w2t); mat_free(&w3t);
    mat_free(&out_t); mat_free(&g_fc2); mat_free(&dv); mat_free(&h_t); mat_free(&g_sp);
    mat_free(&g_sp_t); mat_free(&da); mat_free(&x_t); mat_free(&g_fc1); mat_free(&g_fc1_t);
    forward_ref_free(&r);
    free(g1); free(g2); free(g3);
    fixture_free(&f);
}

/* The countdown is the contract's ring buffer: a neuron is open exactly when it emitted no
 * output spike in the last R steps of its stream (only the steps since the reset count). */
static void test_commit_is_a_ring_buffer(void)
{
    struct sizes sz = {3, 4, 17, 2};
    for (int R = 0; R <= 4; R++) {
        struct fixture f;
        fixture_init(&f, sz, 3, 0, 0);
        f.net.refractory_period = R;
        const ptrdiff_t n = 3 * 17;
        int32_t *left = calloc((size_t)n, sizeof(int32_t));
        unsigned char history[64][3 * 17];
        int bad = 0;
        for (int step = 0; step < 40; step++) {
            for (ptrdiff_t i = 0; i < n; i++) {
                int open = 1;
                for (int back = 1; back <= R && back <= step; back++)
                    if (history[step - back][i]) open = 0;
                bad += (left[i] == 0) != open;
                /* The raw threshold decision is random; the output is raw AND mask. */
                int out = open && uniform() < 0.5;
                history[step][i] = (unsigned char)out;
                f.ws.spikes[i] = out ? 1.0f : 0.0f;
            }
            aiva_commit_state(&f.net, &f.ws, 3, left);
        }
        CHECK(bad == 0, "refractory_period %d: %d masks differ from the ring buffer", R, bad);
        free(left);
        fixture_free(&f);
    }
}

static void test_round_bf16(void)
{
    const float cases[] = {1.0f, 1.00390625f /* tie: to even, down */, 1.01171875f /* tie: up */,
                           -0.0f, 0.0f, 3.4028235e38f /* rounds to Inf */, -3.4028235e38f,
                           1e-45f, 1.1754944e-38f, 65504.0f, (float)INFINITY, -(float)INFINITY,
                           3.3895314e38f /* the largest bf16 */, 0.1f, -2.7182817f};
    const aiva_bf16 want[] = {0x3f80, 0x3f80, 0x3f82, 0x8000, 0x0000, 0x7f80, 0xff80,
                              0x0000, 0x0080, 0x4780, 0x7f80, 0xff80, 0x7f7f, 0x3dcd, 0xc02e};
    const ptrdiff_t n = (ptrdiff_t)(sizeof cases / sizeof cases[0]);
    aiva_bf16 got[sizeof cases / sizeof cases[0]];
    aiva_round_bf16(cases, n, got);
    for (ptrdiff_t i = 0; i < n; i++)
        CHECK(got[i] == want[i] && reference_bf16(cases[i]) == want[i],
              "round_bf16(%.9g) = 0x%04x, reference 0x%04x, want 0x%04x", (double)cases[i],
              got[i], reference_bf16(cases[i]), want[i]);
    /* NaN stays a (quiet) NaN, whatever its payload: the carry must not make it Inf. */
    const uint32_t nans[] = {0x7f800001u, 0x7fffffffu, 0xffc00000u, 0x7f80ffffu};
    for (int i = 0; i < 4; i++) {
        float f;
        memcpy(&f, &nans[i], sizeof f);
        aiva_bf16 r;
        aiva_round_bf16(&f, 1, &r);
        CHECK((r & 0x7f80) == 0x7f80 && (r & 0x7f) != 0, "NaN 0x%08x rounded to 0x%04x",
              (unsigned)nans[i], r);
    }
    /* Random bit patterns over the whole range, against the value-based reference. */
    const ptrdiff_t m = 200000;
    float *src = malloc((size_t)m * sizeof(float));
    aiva_bf16 *dst = malloc((size_t)m * sizeof(aiva_bf16));
    for (ptrdiff_t i = 0; i < m; i++) {
        uint32_t u = (uint32_t)(uniform() * 4294967296.0);
        if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;   /* exact ties */
        memcpy(&src[i], &u, sizeof u);
    }
    aiva_round_bf16(src, m, dst);
    int bad = 0;
    for (ptrdiff_t i = 0; i < m; i++) {
        aiva_bf16 want_i = reference_bf16(src[i]);
        int is_nan = isnan(src[i]);
        if (is_nan ? !((dst[i] & 0x7f80) == 0x7f80 && (dst[i] & 0x7f)) : dst[i] != want_i) bad++;
    }
    CHECK(bad == 0, "round_bf16: %d of %lld random values rounded wrongly", bad, (long long)m);
    free(src); free(dst);
}

static void test_errors(const aiva_blas *blas)
{
    struct sizes sz = {5, 6, 7, 3};
    struct fixture f;
    fixture_init(&f, sz, 4, 0, 0);
    CHECK(aiva_forward(blas, &f.net, f.x, 0, NULL, &f.ws, f.probs) == AIVA_ERR_SIZE, "batch 0");
    CHECK(aiva_forward(blas, &f.net, f.x, 5, NULL, &f.ws, f.probs) == AIVA_ERR_SIZE,
          "batch over capacity");
    f.x[2 * 5 + 3] = NAN;
    CHECK(aiva_forward(blas, &f.net, f.x, 4, NULL, &f.ws, f.probs) == AIVA_ERR_INPUT_NONFINITE,
          "NaN input");
    f.x[2 * 5 + 3] = INFINITY;
    CHECK(aiva_forward(blas, &f.net, f.x, 4, NULL, &f.ws, f.probs) == AIVA_ERR_INPUT_NONFINITE,
          "Inf input");
    f.x[2 * 5 + 3] = 0.25f;
    CHECK(aiva_forward(blas, &f.net, f.x, 4, NULL, &f.ws, f.probs) == AIVA_OK, "good input");
    aiva_grads g;
    memset(&g, 0, sizeof g);
    float g1[6 * 5], g2[7 * 6], g3[7 * 3];
    g.fc1_t = g1; g.spiking_t = g2; g.fc2 = g3;
    double loss;
    f.y[3] = 3;
    CHECK(aiva_backward(blas, &f.net, f.x, f.y, 4, &f.ws, &g, &loss) == AIVA_ERR_LABEL,
          "label == num_tools");
    f.y[3] = -1;
    CHECK(aiva_backward(blas, &f.net, f.x, f.y, 4, &f.ws, &g, &loss) == AIVA_ERR_LABEL,
          "negative label");
    /* Finite x whose fc1 product overflows (Inf - Inf: NaN hidden units, which never spike)
     * is reported, not answered; in a sequence too. */
    f.fc1_t[0] = 2.0f;
    f.fc1_t[1] = -2.0f;
    f.x[0] = 3e38f;
    f.x[1] = 3e38f;
    CHECK(aiva_forward(blas, &f.net, f.x, 4, NULL, &f.ws, f.probs) == AIVA_ERR_HIDDEN_NONFINITE,
          "fc1 overflow");
    int32_t left[2 * 7] = {0};
    CHECK(aiva_forward_sequence(blas, &f.net, f.x, 2, 2, left, &f.ws, f.probs)
          == AIVA_ERR_HIDDEN_NONFINITE, "fc1 overflow in a sequence");
    /* A bf16 net on a BLAS without bf16 products is refused, not run. */
    f.net.bf16 = 1;
    CHECK(aiva_forward(blas, &f.net, f.x, 4, NULL, &f.ws, f.probs) == AIVA_ERR_SIZE,
          "bf16 without a bf16 product");
    fixture_free(&f);
}

/* With the reference BLAS a row's products do not depend on the other rows (each output is
 * summed in index order, gemv or gemm alike), so a sequence computed at once must equal the
 * same steps run one by one bit for bit: any difference is the core's indexing. */
static void test_sequence_equals_stepping(const aiva_blas *blas, int bf16)
{
    const struct sizes sz = {13, 21, 17, 4};
    const int steps = 6, batch = 3;
    struct fixture f, one;
    fixture_init(&f, sz, steps * batch, 0, bf16);
    fixture_init(&one, sz, batch, 0, bf16);
    one.net = f.net;   /* the same weights */
    const ptrdiff_t S = sz.spiking, T = sz.tools, I = sz.input;
    int32_t *left_seq = calloc((size_t)(batch * S), sizeof(int32_t));
    int32_t *left_step = calloc((size_t)(batch * S), sizeof(int32_t));
    for (ptrdiff_t i = 0; i < batch * S; i++) left_seq[i] = left_step[i] = (int32_t)(i % 3);
    int rc = aiva_forward_sequence(blas, &f.net, f.x, steps, batch, left_seq, &f.ws, f.probs);
    CHECK(rc == AIVA_OK, "aiva_forward_sequence returned %d", rc);
    int bad = 0, fired = 0;
    for (int t = 0; t < steps; t++) {
        rc = aiva_forward(blas, &one.net, f.x + (ptrdiff_t)t * batch * I, batch, left_step,
                          &one.ws, one.probs);
        CHECK(rc == AIVA_OK, "aiva_forward returned %d", rc);
        aiva_commit_state(&one.net, &one.ws, batch, left_step);
        for (ptrdiff_t i = 0; i < batch * T; i++)
            bad += f.probs[(ptrdiff_t)t * batch * T + i] != one.probs[i];
        for (ptrdiff_t i = 0; i < batch * S; i++) {
            bad += f.ws.spikes[(ptrdiff_t)t * batch * S + i] != one.ws.spikes[i];
            bad += f.ws.open[(ptrdiff_t)t * batch * S + i] != one.ws.open[i];
            fired += one.ws.spikes[i] != 0.0f;
        }
    }
    for (ptrdiff_t i = 0; i < batch * S; i++) bad += left_seq[i] != left_step[i];
    CHECK(bad == 0, "sequence (bf16 %d): %d values differ from stepping", bf16, bad);
    CHECK(fired > 0 && fired < steps * batch * S, "sequence test fired %d of %lld", fired,
          (long long)(steps * batch * S));
    CHECK(aiva_forward_sequence(blas, &f.net, f.x, steps + 1, batch, left_seq, &f.ws, f.probs)
          == AIVA_ERR_SIZE, "a sequence over the workspace's capacity is refused");
    CHECK(aiva_forward_sequence(blas, &f.net, f.x, 0, batch, left_seq, &f.ws, f.probs)
          == AIVA_ERR_SIZE, "zero steps are refused");
    free(left_seq); free(left_step);
    one.net.fc1_t = one.net.spiking_t = one.net.fc2 = NULL;
    fixture_free(&one);
    fixture_free(&f);
}

/* Row weights: w = 1/B is aiva_backward; rows of weight 0 add exactly nothing and may carry
 * any label (steps without a target), so the weighted gradient over all rows equals the
 * plain one over the weighted rows alone. */
static void test_weighted_backward(const aiva_blas *blas)
{
    const struct sizes sz = {11, 19, 15, 5};
    const int B = 8, kept[] = {0, 2, 3, 6}, K = 4;
    struct fixture all, sub;
    fixture_init(&all, sz, B, 0, 0);
    fixture_init(&sub, sz, K, 0, 0);
    const ptrdiff_t I = sz.input, H = sz.hidden, S = sz.spiking, T = sz.tools;
    sub.net = all.net;
    for (int k = 0; k < K; k++) {
        memcpy(sub.x + k * I, all.x + kept[k] * I, (size_t)I * sizeof(float));
        sub.y[k] = all.y[kept[k]];
    }
    float w[8];
    for (int b = 0; b < B; b++) { w[b] = 0.0f; all.y[b] = -1; }
    for (int k = 0; k < K; k++) { w[kept[k]] = 1.0f / (float)K; all.y[kept[k]] = sub.y[k]; }
    float *ga[3], *gs[3];
    const ptrdiff_t n[3] = {H * I, S * H, S * T};
    for (int i = 0; i < 3; i++) {
        ga[i] = calloc((size_t)n[i], sizeof(float));
        gs[i] = calloc((size_t)n[i], sizeof(float));
    }
    aiva_grads g_all = {ga[0], ga[1], ga[2], 0, 0, 0}, g_sub = {gs[0], gs[1], gs[2], 0, 0, 0};
    double loss_all = 0, loss_sub = 0;
    CHECK(aiva_forward(blas, &all.net, all.x, B, NULL, &all.ws, all.probs) == AIVA_OK, "fwd");
    int rc = aiva_backward_weighted(blas, &all.net, all.x, all.y, w, B, &all.ws, &g_all, &loss_all);
    CHECK(rc == AIVA_OK, "weighted backward returned %d", rc);
    CHECK(aiva_forward(blas, &sub.net, sub.x, K, NULL, &sub.ws, sub.probs) == AIVA_OK, "fwd");
    CHECK(aiva_backward(blas, &sub.net, sub.x, sub.y, K, &sub.ws, &g_sub, &loss_sub) == AIVA_OK,
          "backward");
    int bad = 0;
    for (int i = 0; i < 3; i++)
        for (ptrdiff_t j = 0; j < n[i]; j++) bad += ga[i][j] != gs[i][j];
    CHECK(bad == 0, "weighted backward: %d gradient entries differ from the plain one", bad);
    CHECK(fabs(loss_all - loss_sub) <= 1e-12 * fabs(loss_sub), "loss %.15g vs %.15g", loss_all,
          loss_sub);
    /* A negative label where the row has a weight is an error; a negative weight too. */
    all.y[kept[1]] = -1;
    CHECK(aiva_backward_weighted(blas, &all.net, all.x, all.y, w, B, &all.ws, &g_all, &loss_all)
          == AIVA_ERR_LABEL, "a weighted row without a label is refused");
    all.y[kept[1]] = sub.y[1];
    w[1] = -0.5f;
    CHECK(aiva_backward_weighted(blas, &all.net, all.x, all.y, w, B, &all.ws, &g_all, &loss_all)
          != AIVA_OK, "a negative weight is refused");
    for (int i = 0; i < 3; i++) { free(ga[i]); free(gs[i]); }
    sub.net.fc1_t = sub.net.spiking_t = sub.net.fc2 = NULL;
    fixture_free(&sub);
    fixture_free(&all);
}

int main(void)
{
    aiva_blas lp64, ilp64;
    memset(&lp64, 0, sizeof lp64);
    memset(&ilp64, 0, sizeof ilp64);
    lp64.sgemm = ref_sgemm; lp64.sgemv = ref_sgemv; lp64.lowp_bf16 = ref_lowp_bf16;
    ilp64.sgemm64 = ref_sgemm64; ilp64.sgemv64 = ref_sgemv64;

    printf("aiva_core C tests (sizeof(long) = %d, sizeof(ptrdiff_t) = %d)\n", (int)sizeof(long),
           (int)sizeof(ptrdiff_t));
    test_round_bf16();
    test_commit_is_a_ring_buffer();
    aiva_blas none;
    memset(&none, 0, sizeof none);
    none = lp64;
    none.lowp_bf16 = NULL;
    test_errors(&none);
    test_sequence_equals_stepping(&lp64, 0);
    test_sequence_equals_stepping(&ilp64, 0);
    test_sequence_equals_stepping(&lp64, 1);
    test_weighted_backward(&lp64);

    const struct sizes small = {24, 40, 30, 5}, odd = {37, 65, 33, 7},
                       deflt = {512, 2048, 1024, 20};
    const int batches[] = {1, 7, 33};
    char name[96];
    for (int i = 0; i < 3; i++) {
        int b = batches[i];
        snprintf(name, sizeof name, "small, batch %d, LP64", b);
        test_step(name, &lp64, small, b, i != 1, 0);
        snprintf(name, sizeof name, "odd sizes, batch %d, ILP64", b);
        test_step(name, &ilp64, odd, b, i != 0, 0);
        snprintf(name, sizeof name, "odd sizes, batch %d, bf16", b);
        test_step(name, &lp64, odd, b, 1, 1);
    }
    gemm_calls = gemv_calls = 0;
    test_step("default size, batch 1, LP64 (gemv path)", &lp64, deflt, 1, 1, 0);
    CHECK(gemv_calls == 4, "batch 1 forward+backward: %d gemv calls, want 4 (fc1, spiking, "
          "d spikes, d hidden)",
          gemv_calls);
    test_step("default size, batch 7, ILP64", &ilp64, deflt, 7, 1, 0);
    test_step("default size, batch 7, bf16", &lp64, deflt, 7, 0, 1);

    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures ? 1 : 0;
}
