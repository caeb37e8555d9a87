/* The BLAS thread budget shared by concurrent engine calls (see aiva_threads.h).
 *
 * Why: OpenBLAS's pthreads server has one pool of worker threads for the whole process.
 * When several threads call it at once, each with the full count, they queue for the same
 * workers and spin while they wait: on 2 cores, 8 threads sharing 800 single-row calls
 * took 22 times as long as one thread making them all.  Splitting the count by the calls
 * in flight (the first fix) still let 8 callers on 2 cores run 8 products at once, and
 * the count flip between 1 and 2 as calls came and went: each flip to 2 woke OpenBLAS's
 * worker, which then spun on the core the other callers needed (1.6x the serial time).
 * Hence the cap on calls in flight (later callers sleep until a place frees) and the hold
 * on the share.
 *
 * Waiters queue in arrival order and a leaving call hands its place straight to the head
 * of the queue: no caller can be overtaken indefinitely, and a place is never taken by a
 * newcomer between a leave and the woken waiter's start. */
#ifndef _WIN32
#define _POSIX_C_SOURCE 200809L   /* clock_gettime under -std=c99 */
#endif
#include "aiva_threads.h"

#include <stdio.h>

#ifdef _WIN32
#include <windows.h>
static void *open_lib(const char *path) { return (void *)LoadLibraryA(path); }
static void *find_sym(void *lib, const char *name) { return (void *)GetProcAddress((HMODULE)lib, name); }
static SRWLOCK state_lock = SRWLOCK_INIT;
static void lock(void) { AcquireSRWLockExclusive(&state_lock); }
static void unlock(void) { ReleaseSRWLockExclusive(&state_lock); }
typedef CONDITION_VARIABLE cond_t;
static void cond_init(cond_t *c) { InitializeConditionVariable(c); }
static void cond_destroy(cond_t *c) { (void)c; }
static void cond_wait(cond_t *c) { SleepConditionVariableSRW(c, &state_lock, INFINITE, 0); }
static void cond_signal(cond_t *c) { WakeConditionVariable(c); }
static long long now_ns(void) { return (long long)GetTickCount64() * 1000000LL; }
#else
#include <dlfcn.h>
#include <pthread.h>
#include <time.h>
static void *open_lib(const char *path) { return dlopen(path, RTLD_NOW | RTLD_LOCAL); }
/* dlsym on a handle also searches the libraries it depends on: for SciPy's cython_blas
 * module that is SciPy's OpenBLAS. */
static void *find_sym(void *lib, const char *name) { return dlsym(lib, name); }
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static void lock(void) { pthread_mutex_lock(&state_lock); }
static void unlock(void) { pthread_mutex_unlock(&state_lock); }
typedef pthread_cond_t cond_t;
static void cond_init(cond_t *c) { pthread_cond_init(c, NULL); }
static void cond_destroy(cond_t *c) { pthread_cond_destroy(c); }
static void cond_wait(cond_t *c) { pthread_cond_wait(c, &state_lock); }
static void cond_signal(cond_t *c) { pthread_cond_signal(c); }
static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + (long long)ts.tv_nsec;
}
#endif

#if defined(_MSC_VER)
#define AIVA_TLS __declspec(thread)
#else
#define AIVA_TLS __thread
#endif

typedef void (*set_fn)(int);
typedef int (*get_fn)(void);
typedef int (*set_local_fn)(int);

/* A caller waiting for a place; lives on its own stack while it waits. */
struct waiter {
    struct waiter *next;
    int admitted;
    cond_t cond;
};

/* Everything below is read and written under state_lock, except the function pointers,
 * which are written once under it before any call can use them, and the thread-locals. */
static set_fn ob_set = NULL;
static get_fn ob_get = NULL;
static set_fn mkl_set = NULL;
static get_fn mkl_get = NULL;
static set_local_fn mkl_local = NULL;
static int budget = 0;       /* 0: nothing attached or set yet (no cap) */
static int in_flight = 0;    /* calls admitted */
static int waiting = 0;      /* calls queued for a place */
static struct waiter *queue_head = NULL, *queue_tail = NULL;
static int written = -1;     /* the count this file last wrote to OpenBLAS */
/* The most calls in flight or waiting seen since recent_at: the share holds to it. */
static int recent = 1;
static long long recent_at = 0;
/* 50 ms: longer than the gaps between a crowd's calls (a Python thread's work between two
 * calls is tens of microseconds), short enough that a caller left alone soon gets both
 * cores back. */
static long long hold_ns = 50000000LL;
/* 2: measured on the 2-core machine, a single-row product on 2 threads took 0.38x its time
 * on 1, and two 1-thread products at once gave 0.65x the rows per second of the same calls
 * one after the other on 2 threads: splitting the cores between calls lost to queueing. */
static int min_per_call = 2;

static AIVA_TLS int depth = 0;      /* this thread's nested enters */
static AIVA_TLS int my_share = 1;   /* the share its outermost enter got */

static int share_of(int b, int n)
{
    int s = b / (n > 1 ? n : 1);
    return s < 1 ? 1 : s;
}

/* A count someone else wrote to OpenBLAS (threadpoolctl, NumPy's user) becomes the budget:
 * a threadpoolctl limit then holds for these calls too, and its restore is followed. */
static void follow_external(void)
{
    if (ob_get) {
        int now = ob_get();
        if (now != written) {
            budget = now;
            written = now;
        }
    }
}

static void write_openblas(int n)
{
    if (ob_set && ob_get && n != ob_get()) {
        ob_set(n);
        written = ob_get();
    }
}

/* With no budget (nothing attached or set), calls are neither capped nor shared. */
static int capped(void) { return budget > 0; }

/* The fewest threads a call runs on while calls overlap, and so how many calls the budget
 * lets run at once. */
static int per_call(void)
{
    int m = min_per_call < budget ? min_per_call : budget;
    return m < 1 ? 1 : m;
}

static int slots(void)
{
    int n = budget / per_call();
    return n < 1 ? 1 : n;
}

/* Hand free places to the longest waiting callers. */
static void admit_waiters(void)
{
    while (queue_head && (!capped() || in_flight < slots())) {
        struct waiter *w = queue_head;
        queue_head = w->next;
        if (!queue_head) queue_tail = NULL;
        waiting--;
        in_flight++;
        w->admitted = 1;
        cond_signal(&w->cond);
    }
}

/* The share of a call entering now (under the lock; in_flight counts it). */
static int current_share(void)
{
    int demand = in_flight + waiting;
    long long now = now_ns();
    if (demand >= recent || now - recent_at > hold_ns) {
        recent = demand;
        recent_at = now;
    }
    if (demand < recent) demand = recent;
    if (capped() && demand > slots()) demand = slots();
    return share_of(budget, demand);
}

int aiva_threads_attach(const char *path, int kind)
{
    static const char *prefixes[] = {"scipy_", "scipy_", "", ""};
    static const char *suffixes[] = {"64_", "", "64_", ""};
    char name[96];
    int i, found = -1;
    void *lib = open_lib(path);
    if (!lib) return -1;
    lock();
    if (kind == AIVA_THREADS_MKL) {
        if (!mkl_set) {
            mkl_set = (set_fn)find_sym(lib, "MKL_Set_Num_Threads");
            mkl_get = (get_fn)find_sym(lib, "MKL_Get_Max_Threads");
            mkl_local = (set_local_fn)find_sym(lib, "MKL_Set_Num_Threads_Local");
            if (!mkl_set || !mkl_get) mkl_set = NULL, mkl_get = NULL, mkl_local = NULL;
            else if (budget == 0) budget = mkl_get();
        }
        found = mkl_set ? 0 : -1;
    } else {
        if (!ob_set) {
            /* The C functions only: names ending in "_" after "threads" without "64" are
             * the Fortran ones, which take a pointer. */
            for (i = 0; i < 4 && !ob_set; i++) {
                set_fn s;
                get_fn g;
                snprintf(name, sizeof name, "%sopenblas_set_num_threads%s", prefixes[i], suffixes[i]);
                s = (set_fn)find_sym(lib, name);
                snprintf(name, sizeof name, "%sopenblas_get_num_threads%s", prefixes[i], suffixes[i]);
                g = (get_fn)find_sym(lib, name);
                if (s && g) {
                    ob_set = s;
                    ob_get = g;
                }
            }
            if (ob_set) {
                budget = ob_get();
                written = budget;
            }
        }
        found = ob_set ? 0 : -1;
    }
    admit_waiters();
    unlock();
    return found;
}

int aiva_threads_set(int n)
{
    int result;
    if (n < 1) n = 1;
    lock();
    budget = n;
    if (ob_set) {
        write_openblas(in_flight ? share_of(n, in_flight) : n);
        /* OpenBLAS caps the count at its build's MAX_THREADS: report what holds. */
        if (in_flight == 0) budget = written;
    }
    if (mkl_set) mkl_set(n);
    admit_waiters();   /* a larger budget has room for more calls */
    result = budget;
    unlock();
    return result;
}

int aiva_threads_get(void)
{
    int result;
    lock();
    follow_external();
    result = budget;
    unlock();
    return result;
}

int aiva_threads_blas(int kind)
{
    if (kind == AIVA_THREADS_MKL) return mkl_get ? mkl_get() : -1;
    return ob_get ? ob_get() : -1;
}

int aiva_threads_in_flight(void)
{
    int result;
    lock();
    result = in_flight;
    unlock();
    return result;
}

int aiva_threads_waiting(void)
{
    int result;
    lock();
    result = waiting;
    unlock();
    return result;
}

int aiva_threads_min_per_call(int n)
{
    int before;
    lock();
    before = min_per_call;
    if (n >= 1) {
        min_per_call = n;
        admit_waiters();   /* a smaller minimum has room for more calls */
    }
    unlock();
    return before;
}

double aiva_threads_hold(double seconds)
{
    double before;
    lock();
    before = (double)hold_ns * 1e-9;
    if (seconds >= 0) {
        hold_ns = (long long)(seconds * 1e9);
        recent = 1;   /* a new hold starts from the calls in flight now */
        recent_at = 0;
    }
    unlock();
    return before;
}

int aiva_threads_enter(int mkl)
{
    int share;
    if (depth > 0) {   /* this thread's call is in flight already: the same call */
        depth++;
        return my_share;
    }
    mkl = mkl || !ob_set;   /* with MKL as the float32 BLAS, every call runs on it */
    lock();
    follow_external();
    if (queue_head || (capped() && in_flight >= slots())) {
        struct waiter w;
        w.next = NULL;
        w.admitted = 0;
        cond_init(&w.cond);
        if (queue_tail) queue_tail->next = &w;
        else queue_head = &w;
        queue_tail = &w;
        waiting++;
        current_share();   /* a queue is contention: the shares hold to it */
        while (!w.admitted) cond_wait(&w.cond);
        cond_destroy(&w.cond);
    } else {
        in_flight++;
    }
    share = current_share();
    write_openblas(share);
    unlock();
    depth = 1;
    my_share = share;
    if (mkl && mkl_local) {
        /* MKL's global count (threadpoolctl's limit, or ours) caps this thread's. */
        int cap = mkl_get();
        mkl_local(share < cap ? share : cap);
    }
    return share;
}

void aiva_threads_leave(int mkl)
{
    if (depth > 1) {
        depth--;
        return;
    }
    depth = 0;
    mkl = mkl || !ob_set;
    if (mkl && mkl_local) mkl_local(0);   /* 0: this thread follows the global count again */
    lock();
    follow_external();
    if (in_flight > 0) in_flight--;
    admit_waiters();
    /* Idle: the library's own count is the budget again (NumPy's products use it too).
     * While calls remain, their share stays: raising it now is the flip the hold avoids. */
    if (in_flight == 0) write_openblas(budget);
    unlock();
}
