/* aiva_onednn.c — see aiva_onednn.h for the contract. */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE               /* sched_getcpu, sched_setaffinity (the helpers, below) */
#endif
#define _POSIX_C_SOURCE 200809L   /* clock_gettime under -std=c99 */
#include "aiva_onednn.h"
#include "aiva_dnnl_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <windows.h>
#else
#include <dlfcn.h>
#include <pthread.h>
#endif

/* ---------------------------------------------------------------------------------------
 * Platform: loading, a mutex, and per-thread state.
 * --------------------------------------------------------------------------------------- */
#ifdef _WIN32
static void *open_lib(const char *path) { return (void *)LoadLibraryA(path); }
static void *find_sym(void *lib, const char *name)
{
    return (void *)GetProcAddress((HMODULE)lib, name);
}
static void lib_error(char *out, size_t n) { snprintf(out, n, "error %lu", GetLastError()); }
typedef SRWLOCK lock_t;
static void lock_init(lock_t *l) { InitializeSRWLock(l); }
static void lock_take(lock_t *l) { AcquireSRWLockExclusive(l); }
static void lock_give(lock_t *l) { ReleaseSRWLockExclusive(l); }
static void lock_fini(lock_t *l) { (void)l; }
#else
static void *open_lib(const char *path) { return dlopen(path, RTLD_NOW | RTLD_LOCAL); }
static void *find_sym(void *lib, const char *name) { return dlsym(lib, name); }
static void lib_error(char *out, size_t n)
{
    const char *e = dlerror();
    snprintf(out, n, "%s", e ? e : "unknown error");
}
typedef pthread_mutex_t lock_t;
static void lock_init(lock_t *l) { pthread_mutex_init(l, NULL); }
static void lock_take(lock_t *l) { pthread_mutex_lock(l); }
static void lock_give(lock_t *l) { pthread_mutex_unlock(l); }
static void lock_fini(lock_t *l) { pthread_mutex_destroy(l); }
#endif

/* What each calling thread owns: its stream (a stream may not be shared between threads
 * running at once), its scratchpad, and its last error. */
typedef struct {
    aiva_onednn *dnn;
    ad_stream_t stream;
    void *scratch;
    size_t scratch_size;
    char error[256];
} thread_state;

static void thread_state_free(void *p);

#ifdef _WIN32
static DWORD tls_key = FLS_OUT_OF_INDEXES;
static INIT_ONCE tls_once = INIT_ONCE_STATIC_INIT;
static void WINAPI fls_free(void *p) { thread_state_free(p); }
static BOOL CALLBACK tls_make(PINIT_ONCE o, PVOID a, PVOID *c)
{
    (void)o; (void)a; (void)c;
    tls_key = FlsAlloc(fls_free);
    return TRUE;
}
static int tls_ready(void)
{
    InitOnceExecuteOnce(&tls_once, tls_make, NULL, NULL);
    return tls_key != FLS_OUT_OF_INDEXES;
}
static thread_state *tls_get(void) { return (thread_state *)FlsGetValue(tls_key); }
static void tls_set(thread_state *t) { FlsSetValue(tls_key, t); }
#else
static pthread_key_t tls_key;
static int tls_ok = 0;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;
static void tls_make(void) { tls_ok = pthread_key_create(&tls_key, thread_state_free) == 0; }
static int tls_ready(void)
{
    pthread_once(&tls_once, tls_make);
    return tls_ok;
}
static thread_state *tls_get(void) { return (thread_state *)pthread_getspecific(tls_key); }
static void tls_set(thread_state *t) { pthread_setspecific(tls_key, t); }
#endif

/* The last error of a thread that has no state (its allocation is what failed). */
static const char *no_state_error = "out of memory (per-thread state)";

/* ---------------------------------------------------------------------------------------
 * The provider.
 * --------------------------------------------------------------------------------------- */
#ifndef AIVA_ONEDNN_SERIAL_ROWS
#define AIVA_ONEDNN_SERIAL_ROWS 32
#endif
#ifndef AIVA_ONEDNN_AMX_INT8_GEMM_ROWS
#define AIVA_ONEDNN_AMX_INT8_GEMM_ROWS 128   /* see runs_direct */
#endif

typedef struct {
    int kind, ta, tb, packed;
    ptrdiff_t M, N, K, lda, ldb, ldc;
    int threads;   /* oneDNN fixes a primitive's thread count when it creates it */
} prim_key;

typedef struct {
    prim_key key;
    ad_primitive_desc_t pd;
    ad_primitive_t prim;
    ad_const_memory_desc_t src_md, wei_md, dst_md, scratch_md;   /* owned by pd */
    size_t scratch_size;
    unsigned long last_used;
    int users;       /* products running with it now: it is not evicted while > 0 */
    int valid;
} prim_entry;

/* Distinct shapes in use at once are few (three products of a step, a few batch sizes, the
 * backward's eight); a caller that sweeps the batch size evicts the oldest. */
#define CACHE_MAX 96
#define MAX_PACKS 4

struct aiva_onednn {
    void *lib;
    ad_api f;
    ad_engine_t engine;
    ad_primitive_attr_t attr;    /* user scratchpad */
    int isa, major, minor, patch;
    void (*omp_set_num_threads)(int);
    int threads;
    int (*follow)(void);
    lock_t lock;
    prim_entry cache[CACHE_MAX];
    unsigned long clock;
    long created;
};

struct aiva_onednn_weight {
    aiva_onednn *dnn;
    int kind, tb;
    ptrdiff_t N, K, ldb;
    lock_t lock;
    int n_packs;
    struct {
        ad_memory_desc_t md;
        void *raw, *data;     /* raw: the allocation; data: 64-byte aligned inside it */
        size_t size;
    } packs[MAX_PACKS];
};

static void set_error(const char *fmt, const char *what, int status)
{
    thread_state *t = tls_ready() ? tls_get() : NULL;
    if (t) snprintf(t->error, sizeof t->error, fmt, what, status);
}

const char *aiva_onednn_error(void)
{
    thread_state *t = tls_ready() ? tls_get() : NULL;
    return t ? t->error : no_state_error;
}

static void thread_state_free(void *p)
{
    thread_state *t = (thread_state *)p;
    if (!t) return;
    if (t->stream) t->dnn->f.stream_destroy(t->stream);
    free(t->scratch);
    free(t);
}

/* The calling thread's state, made on its first product. */
static thread_state *thread_get(aiva_onednn *dnn)
{
    if (!tls_ready()) return NULL;
    thread_state *t = tls_get();
    if (t) return t;
    t = (thread_state *)calloc(1, sizeof *t);
    if (!t) return NULL;
    t->dnn = dnn;
    if (dnn->f.stream_create(&t->stream, dnn->engine, AD_STREAM_DEFAULT_FLAGS) != AD_SUCCESS) {
        free(t);
        return NULL;
    }
    tls_set(t);
    return t;
}

static void *scratch_for(thread_state *t, size_t size)
{
    if (size <= t->scratch_size) return t->scratch;
    void *p = malloc(size);
    if (!p) return NULL;
    free(t->scratch);
    t->scratch = p;
    t->scratch_size = size;
    return p;
}

#define LOAD(field, name)                                                                 \
    do {                                                                                  \
        *(void **)(&dnn->f.field) = find_sym(lib, name);                                  \
        if (!dnn->f.field) {                                                              \
            snprintf(err, err_size, "%s has no %s (not oneDNN 3.x?)", path, name);       \
            free(dnn);                                                                    \
            return NULL;                                                                  \
        }                                                                                 \
    } while (0)

aiva_onednn *aiva_onednn_open(const char *path, char *err, size_t err_size)
{
    void *lib = open_lib(path);
    if (!lib) {
        char why[512];
        lib_error(why, sizeof why);
        snprintf(err, err_size, "cannot open %s: %s", path, why);
        return NULL;
    }
    aiva_onednn *dnn = (aiva_onednn *)calloc(1, sizeof *dnn);
    if (!dnn) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    dnn->lib = lib;
    LOAD(version, "dnnl_version");
    const ad_version_t *v = dnn->f.version();
    dnn->major = v->major;
    dnn->minor = v->minor;
    dnn->patch = v->patch;
    /* oneDNN 2.x's memory descriptors were structs passed by value: a different ABI. */
    if (dnn->major != 3) {
        snprintf(err, err_size, "%s is oneDNN %d.%d.%d; aiva_cy needs oneDNN 3.x", path,
                 dnn->major, dnn->minor, dnn->patch);
        free(dnn);
        return NULL;
    }
    LOAD(engine_create, "dnnl_engine_create");
    LOAD(stream_create, "dnnl_stream_create");
    LOAD(stream_wait, "dnnl_stream_wait");
    LOAD(stream_destroy, "dnnl_stream_destroy");
    LOAD(md_create_with_strides, "dnnl_memory_desc_create_with_strides");
    LOAD(md_create_with_tag, "dnnl_memory_desc_create_with_tag");
    LOAD(md_clone, "dnnl_memory_desc_clone");
    LOAD(md_destroy, "dnnl_memory_desc_destroy");
    LOAD(md_equal, "dnnl_memory_desc_equal");
    LOAD(md_get_size, "dnnl_memory_desc_get_size");
    LOAD(memory_create, "dnnl_memory_create");
    LOAD(memory_destroy, "dnnl_memory_destroy");
    LOAD(attr_create, "dnnl_primitive_attr_create");
    LOAD(attr_destroy, "dnnl_primitive_attr_destroy");
    LOAD(attr_set_scratchpad_mode, "dnnl_primitive_attr_set_scratchpad_mode");
    LOAD(matmul_pd_create, "dnnl_matmul_primitive_desc_create");
    LOAD(reorder_pd_create, "dnnl_reorder_primitive_desc_create");
    LOAD(pd_query, "dnnl_primitive_desc_query");
    LOAD(pd_query_md, "dnnl_primitive_desc_query_md");
    LOAD(pd_destroy, "dnnl_primitive_desc_destroy");
    LOAD(primitive_create, "dnnl_primitive_create");
    LOAD(primitive_execute, "dnnl_primitive_execute");
    LOAD(primitive_destroy, "dnnl_primitive_destroy");
    LOAD(get_effective_cpu_isa, "dnnl_get_effective_cpu_isa");
    LOAD(gemm_u8s8s32, "dnnl_gemm_u8s8s32");
    *(void **)(&dnn->f.gemm_bf16bf16f32) = find_sym(lib, "dnnl_gemm_bf16bf16f32");
    /* The OpenMP runtime libdnnl links (GNU OpenMP for onednn-cpu-gomp), found through the
     * library's own dependencies; absent in TBB or threadpool builds. */
    *(void **)(&dnn->omp_set_num_threads) = find_sym(lib, "omp_set_num_threads");
    if (dnn->f.engine_create(&dnn->engine, AD_ENGINE_CPU, 0) != AD_SUCCESS) {
        snprintf(err, err_size, "%s: cannot create a CPU engine", path);
        free(dnn);
        return NULL;
    }
    /* User scratchpad: with the library's (shared) one a primitive may only run in the
     * thread that created it; with ours, any thread, each with its own buffer. */
    if (dnn->f.attr_create(&dnn->attr) != AD_SUCCESS
        || dnn->f.attr_set_scratchpad_mode(dnn->attr, AD_SCRATCHPAD_MODE_USER) != AD_SUCCESS) {
        snprintf(err, err_size, "%s: cannot set the scratchpad mode", path);
        free(dnn);
        return NULL;
    }
    dnn->isa = dnn->f.get_effective_cpu_isa();
    lock_init(&dnn->lock);
    if (!tls_ready()) {
        snprintf(err, err_size, "cannot allocate thread-local storage");
        lock_fini(&dnn->lock);
        free(dnn);
        return NULL;
    }
    return dnn;
}

void aiva_onednn_version(const aiva_onednn *dnn, int *major, int *minor, int *patch)
{
    *major = dnn->major;
    *minor = dnn->minor;
    *patch = dnn->patch;
}

int aiva_onednn_isa(const aiva_onednn *dnn) { return dnn->isa; }

int aiva_onednn_native_bf16(const aiva_onednn *dnn)
{
    return (dnn->isa & (AIVA_ONEDNN_ISA_AVX512_BF16_BIT | AIVA_ONEDNN_ISA_AMX_BIT)) != 0;
}

int aiva_onednn_native_vnni(const aiva_onednn *dnn)
{
    return (dnn->isa & (AIVA_ONEDNN_ISA_AVX512_VNNI_BIT | AIVA_ONEDNN_ISA_AVX2_VNNI_BIT
                        | AIVA_ONEDNN_ISA_AMX_BIT)) != 0;
}

void aiva_onednn_set_threads(aiva_onednn *dnn, int threads, int (*follow)(void))
{
    lock_take(&dnn->lock);
    dnn->threads = threads;
    dnn->follow = follow;
    lock_give(&dnn->lock);
}

int aiva_onednn_threads(const aiva_onednn *dnn)
{
    if (!dnn->omp_set_num_threads) return 0;
    int n = dnn->follow ? dnn->follow() : dnn->threads;
    return n > 0 ? n : 0;
}

/* ---------------------------------------------------------------------------------------
 * Primitives, by shape.
 * --------------------------------------------------------------------------------------- */
static int key_equal(const prim_key *a, const prim_key *b)
{
    return a->kind == b->kind && a->ta == b->ta && a->tb == b->tb && a->packed == b->packed
           && a->M == b->M && a->N == b->N && a->K == b->K && a->lda == b->lda
           && a->ldb == b->ldb && a->ldc == b->ldc && a->threads == b->threads;
}

/* The OpenMP threads a product of M rows runs on, set on the calling thread before its
 * primitive is made (oneDNN reads the count then) and before it runs; 0: leave it.  Up to
 * AIVA_ONEDNN_SERIAL_ROWS rows run on the calling thread alone: waking GNU OpenMP's sleeping
 * workers (OMP_WAIT_POLICY=PASSIVE, see _lowp.pyx) once per product costs more than the
 * second core saves there (benchmarks/README.md, "Figures behind design choices").  One row
 * never gets here: gemm_direct shares it with our own helpers, which need no wake-up. */
#ifndef _WIN32
#include <unistd.h>
/* The process in which this thread last led an OpenMP team; 0: never.  GNU OpenMP keeps a
 * thread's team in that thread's own pool, and fork copies the pool but not its workers: a
 * team led again by the thread that forked waits for them forever (seen on an AMX CPU,
 * where many rows run on a two-thread primitive).  A thread started in the child has a
 * fresh pool and may lead teams. */
static __thread pid_t led_team_in;
#endif

static int threads_for(aiva_onednn *dnn, ptrdiff_t M)
{
    int n = aiva_onednn_threads(dnn);
    if (n > 1 && M <= AIVA_ONEDNN_SERIAL_ROWS) n = 1;
#ifndef _WIN32
    if (n > 1 && led_team_in && led_team_in != getpid()) n = 1;   /* forked: see above */
#endif
    if (n > 0) dnn->omp_set_num_threads(n);
    return n;
}

static void leading_team(int threads)
{
#ifndef _WIN32
    if (threads > 1 && !led_team_in) led_team_in = getpid();
#else
    (void)threads;
#endif
}

/* A 2-D descriptor of rows x cols, row-major with row stride ld, or its transpose stored
 * (cols x rows, row stride ld) when trans. */
static ad_status_t md_2d(aiva_onednn *dnn, ad_memory_desc_t *md, ptrdiff_t rows,
                           ptrdiff_t cols, int dt, int trans, ptrdiff_t ld)
{
    ad_dims_t dims = {0}, strides = {0};
    dims[0] = rows;
    dims[1] = cols;
    strides[0] = trans ? 1 : ld;
    strides[1] = trans ? ld : 1;
    return dnn->f.md_create_with_strides(md, 2, dims, dt, strides);
}

static void entry_destroy(aiva_onednn *dnn, prim_entry *e)
{
    if (e->prim) dnn->f.primitive_destroy(e->prim);
    if (e->pd) dnn->f.pd_destroy(e->pd);
    memset(e, 0, sizeof *e);
}

static ad_status_t entry_make(aiva_onednn *dnn, const prim_key *k, prim_entry *e)
{
    const int src_dt = k->kind == AIVA_ONEDNN_BF16 ? AD_BF16 : AD_U8;
    const int wei_dt = k->kind == AIVA_ONEDNN_BF16 ? AD_BF16 : AD_S8;
    const int dst_dt = k->kind == AIVA_ONEDNN_BF16 ? AD_F32 : AD_S32;
    ad_memory_desc_t src = NULL, wei = NULL, dst = NULL;
    ad_status_t s = md_2d(dnn, &src, k->M, k->K, src_dt, k->ta, k->lda);
    if (s == AD_SUCCESS) {
        if (k->packed) {
            ad_dims_t dims = {0};
            dims[0] = k->K;
            dims[1] = k->N;
            s = dnn->f.md_create_with_tag(&wei, 2, dims, wei_dt, AD_FORMAT_TAG_ANY);
        } else {
            s = md_2d(dnn, &wei, k->K, k->N, wei_dt, k->tb, k->ldb);
        }
    }
    if (s == AD_SUCCESS) s = md_2d(dnn, &dst, k->M, k->N, dst_dt, 0, k->ldc);
    memset(e, 0, sizeof *e);
    if (s == AD_SUCCESS)
        s = dnn->f.matmul_pd_create(&e->pd, dnn->engine, src, wei, NULL, dst, dnn->attr);
    if (src) dnn->f.md_destroy(src);
    if (wei) dnn->f.md_destroy(wei);
    if (dst) dnn->f.md_destroy(dst);
    if (s != AD_SUCCESS) {
        e->pd = NULL;
        return s;
    }
    s = dnn->f.primitive_create(&e->prim, e->pd);
    if (s != AD_SUCCESS) {
        e->prim = NULL;
        entry_destroy(dnn, e);
        return s;
    }
    e->key = *k;
    e->src_md = dnn->f.pd_query_md(e->pd, AD_QUERY_SRC_MD, 0);
    e->wei_md = dnn->f.pd_query_md(e->pd, AD_QUERY_WEIGHTS_MD, 0);
    e->dst_md = dnn->f.pd_query_md(e->pd, AD_QUERY_DST_MD, 0);
    e->scratch_md = dnn->f.pd_query_md(e->pd, AD_QUERY_SCRATCHPAD_MD, 0);
    e->scratch_size = e->scratch_md ? dnn->f.md_get_size(e->scratch_md) : 0;
    e->valid = 1;
    return AD_SUCCESS;
}

/* The cached primitive for k, made if missing, with its user count raised: release it with
 * entry_release.  Creation runs outside the lock (it JIT-compiles, ~0.1-1 ms), so two
 * threads may both make one for a new shape; the second keeps its own for that call. */
static prim_entry *entry_acquire(aiva_onednn *dnn, const prim_key *k, prim_entry *own,
                                 ad_status_t *status)
{
    lock_take(&dnn->lock);
    for (int i = 0; i < CACHE_MAX; i++) {
        prim_entry *e = &dnn->cache[i];
        if (e->valid && key_equal(&e->key, k)) {
            e->users++;
            e->last_used = ++dnn->clock;
            lock_give(&dnn->lock);
            return e;
        }
    }
    lock_give(&dnn->lock);
    prim_entry made;
    *status = entry_make(dnn, k, &made);
    if (*status != AD_SUCCESS) return NULL;
    lock_take(&dnn->lock);
    dnn->created++;
    prim_entry *slot = NULL;
    for (int i = 0; i < CACHE_MAX; i++) {
        prim_entry *e = &dnn->cache[i];
        if (e->valid && key_equal(&e->key, k)) {   /* another thread was first */
            slot = NULL;
            break;
        }
        if (!e->valid) {
            if (!slot || slot->valid) slot = e;
        } else if (e->users == 0 && (!slot || (slot->valid && e->last_used < slot->last_used))) {
            slot = e;
        }
    }
    if (slot) {
        if (slot->valid) entry_destroy(dnn, slot);
        *slot = made;
        slot->users = 1;
        slot->last_used = ++dnn->clock;
        lock_give(&dnn->lock);
        return slot;
    }
    lock_give(&dnn->lock);
    /* No free slot (or a twin): this call runs on its own primitive and destroys it. */
    *own = made;
    own->users = -1;
    return own;
}

static void entry_release(aiva_onednn *dnn, prim_entry *e)
{
    if (e->users < 0) {
        entry_destroy(dnn, e);
        return;
    }
    lock_take(&dnn->lock);
    e->users--;
    lock_give(&dnn->lock);
}

/* ---------------------------------------------------------------------------------------
 * Packed weights.
 * --------------------------------------------------------------------------------------- */
aiva_onednn_weight *aiva_onednn_weight_new(aiva_onednn *dnn, int kind, int tb, ptrdiff_t N,
                                           ptrdiff_t K, ptrdiff_t ldb)
{
    aiva_onednn_weight *w = (aiva_onednn_weight *)calloc(1, sizeof *w);
    if (!w) return NULL;
    w->dnn = dnn;
    w->kind = kind;
    w->tb = tb;
    w->N = N;
    w->K = K;
    w->ldb = ldb;
    lock_init(&w->lock);
    return w;
}

void aiva_onednn_weight_free(aiva_onednn_weight *w)
{
    if (!w) return;
    for (int i = 0; i < w->n_packs; i++) {
        w->dnn->f.md_destroy(w->packs[i].md);
        free(w->packs[i].raw);
    }
    lock_fini(&w->lock);
    free(w);
}

int aiva_onednn_weight_packs(aiva_onednn_weight *w, size_t *bytes)
{
    lock_take(&w->lock);
    size_t total = 0;
    for (int i = 0; i < w->n_packs; i++) total += w->packs[i].size;
    int n = w->n_packs;
    lock_give(&w->lock);
    if (bytes) *bytes = total;
    return n;
}

/* Reorder B (plain, as the weight describes it) into layout md on the calling thread. */
static ad_status_t reorder_into(aiva_onednn *dnn, thread_state *t, const aiva_onednn_weight *w,
                                  const void *B, ad_const_memory_desc_t md, void *dest)
{
    const int dt = w->kind == AIVA_ONEDNN_BF16 ? AD_BF16 : AD_S8;
    ad_memory_desc_t plain = NULL;
    ad_primitive_desc_t pd = NULL;
    ad_primitive_t prim = NULL;
    ad_memory_t from = NULL, to = NULL;
    ad_status_t s = md_2d(dnn, &plain, w->K, w->N, dt, w->tb, w->ldb);
    if (s == AD_SUCCESS) s = dnn->f.reorder_pd_create(&pd, plain, dnn->engine, md, dnn->engine, NULL);
    if (s == AD_SUCCESS) s = dnn->f.primitive_create(&prim, pd);
    if (s == AD_SUCCESS) s = dnn->f.memory_create(&from, plain, dnn->engine, (void *)B);
    if (s == AD_SUCCESS) s = dnn->f.memory_create(&to, md, dnn->engine, dest);
    if (s == AD_SUCCESS) {
        ad_exec_arg_t args[2] = {{AD_ARG_FROM, from}, {AD_ARG_TO, to}};
        s = dnn->f.primitive_execute(prim, t->stream, 2, args);
        if (s == AD_SUCCESS) s = dnn->f.stream_wait(t->stream);
    }
    if (from) dnn->f.memory_destroy(from);
    if (to) dnn->f.memory_destroy(to);
    if (prim) dnn->f.primitive_destroy(prim);
    if (pd) dnn->f.pd_destroy(pd);
    if (plain) dnn->f.md_destroy(plain);
    return s;
}

/* The pack of w in layout md, made from B the first time; NULL with *status set if it
 * cannot be made (then the caller runs on the plain B). */
static const void *pack_for(aiva_onednn *dnn, thread_state *t, aiva_onednn_weight *w,
                            const void *B, ad_const_memory_desc_t md, ad_status_t *status)
{
    const void *found = NULL;
    lock_take(&w->lock);
    for (int i = 0; i < w->n_packs && !found; i++)
        if (dnn->f.md_equal(w->packs[i].md, md)) found = w->packs[i].data;
    if (!found && w->n_packs < MAX_PACKS) {
        /* Packing under the weight's lock: a second thread needing the same pack waits for
         * it instead of making a twin. */
        size_t size = dnn->f.md_get_size(md);
        void *raw = malloc(size + 64);
        ad_memory_desc_t kept = NULL;
        if (raw && dnn->f.md_clone(&kept, md) == AD_SUCCESS) {
            void *data = (void *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
            *status = reorder_into(dnn, t, w, B, md, data);
            if (*status == AD_SUCCESS) {
                int i = w->n_packs++;
                w->packs[i].md = kept;
                w->packs[i].raw = raw;
                w->packs[i].data = data;
                w->packs[i].size = size;
                found = data;
                raw = NULL;
                kept = NULL;
            }
        } else {
            *status = 1;   /* dnnl_out_of_memory */
        }
        free(raw);
        if (kept) dnn->f.md_destroy(kept);
    }
    lock_give(&w->lock);
    return found;
}

/* ---------------------------------------------------------------------------------------
 * The products.
 * --------------------------------------------------------------------------------------- */
/* C = op(A) @ op(B) as the caller asked for it; epi (may be NULL) runs on each block of
 * columns of C once that block is written. */
typedef struct {
    int kind, ta, tb;
    ptrdiff_t M, N, K, lda, ldb, ldc;
    const void *A, *B;
    void *C;
    aiva_onednn_epilogue epi;
    void *epi_ctx;
} product;

/* Products of one row, or of more than AIVA_ONEDNN_SERIAL_ROWS, run through oneDNN's
 * BLAS-like functions (dnnl_gemm_u8s8s32, dnnl_gemm_bf16bf16f32) on plain B instead of a
 * matmul primitive, on threads of our own (below).  One row there is a gemv kernel that
 * streams the weights, and many rows a blocked kernel as fast on one thread as the
 * primitive on two (2,048 x 1,024, int8: 1 row 29.5 us against the primitive's 30.4, both on
 * one thread; 256 rows 1,101 us on one thread against 1,143 on two).  From 2 to 32 rows the
 * primitive on the packed weight is faster (8 rows: 50 against 113 us).  Measured on AMD
 * EPYC Zen 5, oneDNN 3.2 (benchmarks/README.md, "Figures behind design choices").  Where the
 * CPU has AMX, oneDNN's gemm functions still run AVX-512 kernels, while its matmul primitive
 * runs many rows on the AMX tiles: there bf16 keeps the primitive above 32 rows, and int8
 * above AIVA_ONEDNN_AMX_INT8_GEMM_ROWS (Intel Xeon with AMX, 2 cores: int8 predict_proba at
 * 64 rows 0.51-0.56 ms on the gemm against 0.60-0.63 on the primitive, about even from 128
 * to 256; bf16 at 192 rows 1.69-1.75 ms on the gemm against 1.47-1.55).  One row always
 * comes here: it is bound by reading the weights, and the primitive took 2-4x as long. */
static int runs_direct(const aiva_onednn *dnn, int kind, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                       ptrdiff_t lda, ptrdiff_t ldb, ptrdiff_t ldc)
{
    if (M > 1 && M <= AIVA_ONEDNN_SERIAL_ROWS) return 0;
    if (M > 1 && (dnn->isa & AIVA_ONEDNN_ISA_AMX_BIT)
        && (kind == AIVA_ONEDNN_BF16 || M > AIVA_ONEDNN_AMX_INT8_GEMM_ROWS))
        return 0;
    if (kind == AIVA_ONEDNN_BF16 && !dnn->f.gemm_bf16bf16f32) return 0;
    /* The functions take 64-bit sizes but compute in int. */
    const ptrdiff_t lim = 0x7fffffff;
    return M <= lim && N <= lim && K <= lim && lda <= lim && ldb <= lim && ldc <= lim;
}

/* Columns j0 .. j0 + n of C = op(A) @ op(B), on the calling thread's OpenMP budget. */
static ad_status_t direct_columns(aiva_onednn *dnn, const product *p, ptrdiff_t j0,
                                  ptrdiff_t n)
{
    /* Column j of op(B) is row j of B with tb, else column j. */
    const ptrdiff_t b_off = p->tb ? j0 * p->ldb : j0;
    const char ta = p->ta ? 'T' : 'N', tb = p->tb ? 'T' : 'N';
    if (p->kind == AIVA_ONEDNN_BF16)
        return dnn->f.gemm_bf16bf16f32(ta, tb, p->M, n, p->K, 1.0f, (const uint16_t *)p->A,
                                       p->lda, (const uint16_t *)p->B + b_off, p->ldb, 0.0f,
                                       (float *)p->C + j0, p->ldc);
    const int32_t no_offset = 0;
    return dnn->f.gemm_u8s8s32(ta, tb, 'F', p->M, n, p->K, 1.0f, (const uint8_t *)p->A,
                               p->lda, 0, (const int8_t *)p->B + b_off, p->ldb, 0, 0.0f,
                               (int32_t *)p->C + j0, p->ldc, &no_offset);
}

/* ---------------------------------------------------------------------------------------
 * Helper threads for the direct products.
 *
 * A one-row product reads the whole weight once, and one core streams it at about half the
 * rate two do; but waking a sleeping OpenMP worker (OMP_WAIT_POLICY=PASSIVE, see _lowp.pyx)
 * costs 16-25 us here, as much as the second core saves, oneDNN's gemm opens several
 * parallel regions per call (each a wake-up), and libgomp's spinning workers fight
 * OpenBLAS's.  So these products split into blocks of columns that the calling thread and
 * our own helpers claim one at a time, each run on one OpenMP thread.  Columns, not rows:
 * each part packs its share of the large B and all of the small A (split by rows, every
 * part packed all of B: 64 rows on two threads took 225 us against 185).  A helper that is
 * awake takes parts, one that is still waking finds them taken, and the caller never waits
 * for a helper that has not started one.  A helper spins (yielding) for AIVA_HELPER_SPIN_NS
 * after each product, long enough to stay awake between the products of one forward step
 * and between calls in a loop, then sleeps.  POSIX only; elsewhere the caller runs every
 * part.
 * --------------------------------------------------------------------------------------- */
#ifndef AIVA_HELPER_SPIN_NS
#define AIVA_HELPER_SPIN_NS 200000L
#endif
#define HELPERS_MAX 31

#ifndef _WIN32
#include <sched.h>
#include <time.h>

typedef struct {
    /* The product in flight: written by the owner before it publishes the generation. */
    aiva_onednn *dnn;
    product p;
    int parts;
    int epilogue_only;               /* the product is done (a primitive): parts are epi only */
    ptrdiff_t cols_per_part;
    /* (generation << 32) | next part to claim; a claim is a compare-and-swap, so a helper
     * that read an old generation cannot take a part of a newer product. */
    uint64_t claim;                  /* these three: GCC/clang __atomic builtins only */
    int done, failed;
    char owned;                      /* one product at a time; other callers run alone */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int sleeping, helpers;
    int caller_cpu;                  /* where the owner ran when it published; -1: unknown */
    int active;                      /* helpers 0 .. active - 1 take part (the budget) */
    pid_t pid;                       /* a forked child has no helpers: start again */
} helper_pool;

static helper_pool pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static long elapsed_ns(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)(t.tv_sec - t0->tv_sec) * 1000000000L + (t.tv_nsec - t0->tv_nsec);
}

/* Claim and run parts of generation gen until none is left. */
static void run_parts(uint32_t gen)
{
    uint64_t v = __atomic_load_n(&pool.claim, __ATOMIC_ACQUIRE);
    for (;;) {
        if ((uint32_t)(v >> 32) != gen || (int)(uint32_t)v >= pool.parts) return;
        if (!__atomic_compare_exchange_n(&pool.claim, &v, v + 1, 1, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            continue;
        const ptrdiff_t j0 = (ptrdiff_t)(uint32_t)v * pool.cols_per_part;
        const ptrdiff_t left = pool.p.N - j0;
        const ptrdiff_t n = left < pool.cols_per_part ? left : pool.cols_per_part;
        if (!pool.epilogue_only && direct_columns(pool.dnn, &pool.p, j0, n) != AD_SUCCESS)
            __atomic_store_n(&pool.failed, 1, __ATOMIC_RELAXED);
        else if (pool.p.epi)
            pool.p.epi(pool.p.epi_ctx, j0, n);   /* on the block this thread just wrote */
        __atomic_fetch_add(&pool.done, 1, __ATOMIC_RELEASE);
        v = __atomic_load_n(&pool.claim, __ATOMIC_ACQUIRE);
    }
}

#ifdef __linux__
/* A helper that finds itself on the caller's CPU moves off it.  Both threads are runnable
 * there (the helper yields, it does not sleep), so the caller runs nearly every part while
 * the other core idles, and the kernel did not separate them for whole 60-call blocks:
 * after each pause the Intel AMX machine ran int8 at batch 1 in 160-190 us instead of
 * 60-90, the helper taking under 1% of the parts in the worst blocks.  Moving the helper
 * when it is found there: 67-113 us. */
static int current_cpu(void) { return sched_getcpu(); }

/* Off cpu, keeping the thread's affinity: the kernel moves a thread at once when its mask
 * excludes the CPU it runs on, and restoring the mask does not move it back.  (A mask set
 * on this thread from outside between the two calls is replaced by the one from before.) */
static void move_off(int cpu)
{
    cpu_set_t mask, other;
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof mask, &mask) != 0) return;
    other = mask;
    const size_t which = (size_t)cpu;
    CPU_CLR(which, &other);
    if (CPU_COUNT(&other) > 0 && sched_setaffinity(0, sizeof other, &other) == 0)
        sched_setaffinity(0, sizeof mask, &mask);
}
#else
static int current_cpu(void) { return -1; }
static void move_off(int cpu) { (void)cpu; }
#endif

static void *helper_main(void *arg)
{
    const int index = (int)(intptr_t)arg;
    aiva_onednn *dnn = pool.dnn;
    if (dnn->omp_set_num_threads) dnn->omp_set_num_threads(1);   /* parts run inline */
    uint32_t seen = (uint32_t)(__atomic_load_n(&pool.claim, __ATOMIC_ACQUIRE) >> 32);
    for (;;) {
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        uint32_t gen = seen;
        for (unsigned i = 1;; i++) {
            gen = (uint32_t)(__atomic_load_n(&pool.claim, __ATOMIC_ACQUIRE) >> 32);
            if (gen != seen) break;
            if ((i & 63) == 0) {
                if (elapsed_ns(&t0) > AIVA_HELPER_SPIN_NS) break;
                sched_yield();   /* share the core with whatever else is runnable */
            }
        }
        if (gen == seen) {
            pthread_mutex_lock(&pool.lock);
            pool.sleeping++;
            while ((gen = (uint32_t)(__atomic_load_n(&pool.claim, __ATOMIC_ACQUIRE) >> 32)) == seen)
                pthread_cond_wait(&pool.wake, &pool.lock);
            pool.sleeping--;
            pthread_mutex_unlock(&pool.lock);
        }
        seen = gen;
        if (index < __atomic_load_n(&pool.active, __ATOMIC_RELAXED)) {
            const int cpu = pool.caller_cpu;   /* published with gen */
            if (cpu >= 0 && current_cpu() == cpu) move_off(cpu);
            run_parts(gen);
        }
    }
    return NULL;
}

/* Start helpers until there are want of them (at most HELPERS_MAX); returns how many run. */
static int helpers_ensure(int want)
{
    if (want > HELPERS_MAX) want = HELPERS_MAX;
    if (pool.pid != getpid()) {   /* first use, or a forked child: the threads are gone */
        pthread_mutex_init(&pool.lock, NULL);
        pthread_cond_init(&pool.wake, NULL);
        pool.sleeping = 0;
        pool.helpers = 0;
        pool.pid = getpid();
    }
    while (pool.helpers < want) {
        pthread_attr_t attr;
        pthread_t th;
        if (pthread_attr_init(&attr) != 0) break;
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int ok = pthread_create(&th, &attr, helper_main, (void *)(intptr_t)pool.helpers) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) break;
        pool.helpers++;
    }
    return pool.helpers;
}

/* The product on the calling thread and the helpers; 1 if it ran (status in *s), 0 if the
 * pool is in use by another caller or has no helper.  epilogue_only: C is already computed
 * (by a primitive) and the parts only run epi on their columns. */
static int gemm_shared(aiva_onednn *dnn, const product *p, int threads, int epilogue_only,
                       ad_status_t *s)
{
    if (__atomic_test_and_set(&pool.owned, __ATOMIC_ACQUIRE)) return 0;
    pool.dnn = dnn;   /* read by new helpers as they start, and by every part */
    if (helpers_ensure(threads - 1) < 1) {
        __atomic_clear(&pool.owned, __ATOMIC_RELEASE);
        return 0;
    }
    /* Blocks of whole 64-byte lines of C, so that no two parts share a cache line.  One row:
     * two blocks per thread, so that a helper still waking finds one; many rows: one per
     * thread, since each part packs all of A again; an epilogue alone: four per thread, as
     * its parts cost nothing to start and the helpers wake while the caller runs. */
    const int use = threads < pool.helpers + 1 ? threads : pool.helpers + 1;
    __atomic_store_n(&pool.active, use - 1, __ATOMIC_RELAXED);
    const ptrdiff_t N = p->N;
    ptrdiff_t parts = (epilogue_only ? 4 : p->M == 1 ? 2 : 1) * (ptrdiff_t)use;
    ptrdiff_t per = (N + parts - 1) / parts;
    per = (per + 15) / 16 * 16;
    pool.p = *p;
    pool.epilogue_only = epilogue_only;
    pool.cols_per_part = per;
    pool.caller_cpu = current_cpu();
    pool.parts = (int)((N + per - 1) / per);
    __atomic_store_n(&pool.done, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&pool.failed, 0, __ATOMIC_RELAXED);
    const uint32_t gen = (uint32_t)(__atomic_load_n(&pool.claim, __ATOMIC_RELAXED) >> 32) + 1;
    /* Publishes the fields above (the helpers' claims acquire it). */
    __atomic_store_n(&pool.claim, (uint64_t)gen << 32, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&pool.lock);
    if (pool.sleeping) pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    run_parts(gen);
    /* Every part is claimed; wait for those a helper is still running. */
    while (__atomic_load_n(&pool.done, __ATOMIC_ACQUIRE) < pool.parts) sched_yield();
    *s = __atomic_load_n(&pool.failed, __ATOMIC_RELAXED) ? -1 : AD_SUCCESS;
    __atomic_clear(&pool.owned, __ATOMIC_RELEASE);
    return 1;
}
#endif

static int gemm_direct(aiva_onednn *dnn, const product *p)
{
    const int threads = aiva_onednn_threads(dnn);
    /* The parts run inline on each thread: no OpenMP worker is woken. */
    if (threads > 0) dnn->omp_set_num_threads(1);
    ad_status_t s = AD_SUCCESS;
#ifndef _WIN32
    if (threads > 1 && p->N >= 256 && gemm_shared(dnn, p, threads, 0, &s)) {
        /* ran, epilogue included */
    } else {
#endif
        s = direct_columns(dnn, p, 0, p->N);
        if (s == AD_SUCCESS && p->epi) p->epi(p->epi_ctx, 0, p->N);
#ifndef _WIN32
    }
#endif
    if (s != AD_SUCCESS) {
        set_error("%s: the gemm failed (status %d)", "oneDNN", s);
        return s;
    }
    return 0;
}

static int gemm(aiva_onednn *dnn, const product *p, const void *B_packed)
{
    aiva_onednn_weight *w = (aiva_onednn_weight *)B_packed;
    const int kind = p->kind, ta = p->ta, tb = p->tb;
    const ptrdiff_t M = p->M, N = p->N, K = p->K, lda = p->lda, ldb = p->ldb, ldc = p->ldc;
    thread_state *t = thread_get(dnn);
    if (!t) return -1;
    if (M < 1 || N < 1 || K < 1) {
        set_error("%s: empty product (%d)", "aiva_onednn", 0);
        return -1;
    }
    if (runs_direct(dnn, kind, M, N, K, lda, ldb, ldc))
        return gemm_direct(dnn, p);
    if (w && (w->kind != kind || w->tb != tb || w->N != N || w->K != K || w->ldb != ldb)) {
        set_error("%s: the packed weight does not describe B (%d)", "aiva_onednn", 0);
        return -1;
    }
    prim_key k = {kind, ta, tb, w != NULL, M, N, K, lda, ldb, ldc, threads_for(dnn, M)};
    if (w) k.ldb = 0;    /* format "any": the plain layout of B does not enter the primitive */
    if (k.packed) k.tb = 0;
    prim_entry own;
    ad_status_t s = AD_SUCCESS;
    prim_entry *e = entry_acquire(dnn, &k, &own, &s);
    if (!e) {
        set_error("%s: cannot create the matmul primitive (status %d)", "oneDNN", s);
        return s ? s : -1;
    }
    const void *weights = p->B;
    if (w) {
        weights = pack_for(dnn, t, w, p->B, e->wei_md, &s);
        if (!weights) {
            /* No pack (out of memory, or more layouts than MAX_PACKS): run on plain B. */
            entry_release(dnn, e);
            return gemm(dnn, p, NULL);
        }
    }
    void *scratch = scratch_for(t, e->scratch_size);
    ad_memory_t src = NULL, wei = NULL, dst = NULL, pad = NULL;
    if (e->scratch_size && !scratch) s = 1;
    if (s == AD_SUCCESS) s = dnn->f.memory_create(&src, e->src_md, dnn->engine, (void *)p->A);
    if (s == AD_SUCCESS) s = dnn->f.memory_create(&wei, e->wei_md, dnn->engine, (void *)weights);
    if (s == AD_SUCCESS) s = dnn->f.memory_create(&dst, e->dst_md, dnn->engine, p->C);
    if (s == AD_SUCCESS && e->scratch_size)
        s = dnn->f.memory_create(&pad, e->scratch_md, dnn->engine, scratch);
    if (s == AD_SUCCESS) {
        ad_exec_arg_t args[4] = {{AD_ARG_SRC, src}, {AD_ARG_WEIGHTS, wei},
                                   {AD_ARG_DST, dst}, {AD_ARG_SCRATCHPAD, pad}};
        if (k.threads > 0) dnn->omp_set_num_threads(k.threads);   /* a nested call may have changed it */
        leading_team(k.threads);
        s = dnn->f.primitive_execute(e->prim, t->stream, pad ? 4 : 3, args);
        if (s == AD_SUCCESS) s = dnn->f.stream_wait(t->stream);
    }
    if (src) dnn->f.memory_destroy(src);
    if (wei) dnn->f.memory_destroy(wei);
    if (dst) dnn->f.memory_destroy(dst);
    if (pad) dnn->f.memory_destroy(pad);
    entry_release(dnn, e);
    if (s != AD_SUCCESS) {
        set_error("%s: the matmul failed (status %d)", "oneDNN", s);
        return s;
    }
    /* A primitive on several threads is many rows (AMX CPUs): its epilogue (int8's
     * dequantization and tanh over 256 x 2,048, ~0.45 ms) would otherwise run on this thread
     * alone, as long as the product itself. */
    if (p->epi && k.threads > 1 && N >= 256)
        aiva_onednn_parallel(dnn, N, p->epi, p->epi_ctx);
    else if (p->epi)
        p->epi(p->epi_ctx, 0, N);
    return 0;
}

void aiva_onednn_parallel(void *dnn, ptrdiff_t n, aiva_onednn_epilogue fn, void *ctx)
{
    if (n < 1) return;
#ifndef _WIN32
    const int threads = aiva_onednn_threads((aiva_onednn *)dnn);
    ad_status_t s = AD_SUCCESS;
    const product items = {.M = 1, .N = n, .epi = fn, .epi_ctx = ctx};   /* no product */
    if (threads > 1 && n > 1 && gemm_shared((aiva_onednn *)dnn, &items, threads, 1, &s))
        return;
#else
    (void)dnn;   /* no helper threads here */
#endif
    fn(ctx, 0, n);
}

int aiva_onednn_gemm_bf16(void *dnn, int ta, int tb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                          const uint16_t *A, ptrdiff_t lda, const uint16_t *B, ptrdiff_t ldb,
                          float *C, ptrdiff_t ldc, const void *B_packed,
                          aiva_onednn_epilogue epi, void *epi_ctx)
{
    const product p = {AIVA_ONEDNN_BF16, ta, tb, M, N, K, lda, ldb, ldc, A, B, C, epi, epi_ctx};
    return gemm((aiva_onednn *)dnn, &p, B_packed);
}

int aiva_onednn_gemm_u8s8(void *dnn, int tb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                          const uint8_t *A, ptrdiff_t lda, const int8_t *B, ptrdiff_t ldb,
                          int32_t *C, ptrdiff_t ldc, const void *B_packed,
                          aiva_onednn_epilogue epi, void *epi_ctx)
{
    const product p = {AIVA_ONEDNN_U8S8, 0, tb, M, N, K, lda, ldb, ldc, A, B, C, epi, epi_ctx};
    return gemm((aiva_onednn *)dnn, &p, B_packed);
}

int aiva_onednn_impl(aiva_onednn *dnn, int kind, int ta, int tb, ptrdiff_t M, ptrdiff_t N,
                     ptrdiff_t K, int packed, char *out, size_t out_size)
{
    if (runs_direct(dnn, kind, M, N, K, ta ? M : K, tb ? K : N, N)) {
        snprintf(out, out_size, "%s", kind == AIVA_ONEDNN_BF16 ? "gemm:dnnl_gemm_bf16bf16f32"
                                                                : "gemm:dnnl_gemm_u8s8s32");
        return 0;
    }
    prim_key k = {kind, ta, packed ? 0 : tb, packed != 0, M, N, K,
                  ta ? M : K, packed ? 0 : (tb ? K : N), N, threads_for(dnn, M)};
    prim_entry own;
    ad_status_t s = AD_SUCCESS;
    prim_entry *e = entry_acquire(dnn, &k, &own, &s);
    if (!e) return s ? s : -1;
    const char *name = NULL;
    s = dnn->f.pd_query(e->pd, AD_QUERY_IMPL_INFO_STR, 0, (void *)&name);
    snprintf(out, out_size, "%s", (s == AD_SUCCESS && name) ? name : "?");
    entry_release(dnn, e);
    return s;
}

void aiva_onednn_cache_stats(aiva_onednn *dnn, int *entries, long *created)
{
    lock_take(&dnn->lock);
    int n = 0;
    for (int i = 0; i < CACHE_MAX; i++) n += dnn->cache[i].valid;
    *entries = n;
    *created = dnn->created;
    lock_give(&dnn->lock);
}
