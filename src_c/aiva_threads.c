/* The BLAS thread budget shared by concurrent engine calls (see aiva_threads.h).
 *
 * Why: OpenBLAS's pthreads server has one pool of worker threads for the whole process.
 * When several threads call it at once, each with the full count, they queue for the same
 * workers and spin while they wait: on 2 cores, 8 threads sharing 800 single-row calls
 * took 22 times as long as one thread making them all.  A call that runs alone keeps the
 * full count (both cores for one caller); calls that overlap split it. */
#include "aiva_threads.h"

#include <stdio.h>

#ifdef _WIN32
#include <windows.h>
static void *open_lib(const char *path) { return (void *)LoadLibraryA(path); }
static void *find_sym(void *lib, const char *name) { return (void *)GetProcAddress((HMODULE)lib, name); }
static SRWLOCK state_lock = SRWLOCK_INIT;
static void lock(void) { AcquireSRWLockExclusive(&state_lock); }
static void unlock(void) { ReleaseSRWLockExclusive(&state_lock); }
#else
#include <dlfcn.h>
#include <pthread.h>
static void *open_lib(const char *path) { return dlopen(path, RTLD_NOW | RTLD_LOCAL); }
/* dlsym on a handle also searches the libraries it depends on: for SciPy's cython_blas
 * module that is SciPy's OpenBLAS. */
static void *find_sym(void *lib, const char *name) { return dlsym(lib, name); }
static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static void lock(void) { pthread_mutex_lock(&state_lock); }
static void unlock(void) { pthread_mutex_unlock(&state_lock); }
#endif

typedef void (*set_fn)(int);
typedef int (*get_fn)(void);
typedef int (*set_local_fn)(int);

/* Everything below is read and written under state_lock, except the function pointers,
 * which are written once under it before any call can use them. */
static set_fn ob_set = NULL;
static get_fn ob_get = NULL;
static set_fn mkl_set = NULL;
static get_fn mkl_get = NULL;
static set_local_fn mkl_local = NULL;
static int budget = 0;       /* 0: nothing attached yet */
static int in_flight = 0;
static int written = -1;     /* the count this file last wrote to OpenBLAS */

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
        write_openblas(share_of(n, in_flight));
        /* OpenBLAS caps the count at its build's MAX_THREADS: report what holds. */
        if (in_flight == 0) budget = written;
    }
    if (mkl_set) mkl_set(n);
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

int aiva_threads_enter(int mkl)
{
    int share;
    mkl = mkl || !ob_set;   /* with MKL as the float32 BLAS, every call runs on it */
    lock();
    follow_external();
    in_flight++;
    share = share_of(budget, in_flight);
    write_openblas(share);
    unlock();
    if (mkl && mkl_local) {
        /* MKL's global count (threadpoolctl's limit, or ours) caps this thread's. */
        int cap = mkl_get();
        mkl_local(share < cap ? share : cap);
    }
    return share;
}

void aiva_threads_leave(int mkl)
{
    mkl = mkl || !ob_set;
    if (mkl && mkl_local) mkl_local(0);   /* 0: this thread follows the global count again */
    lock();
    follow_external();
    if (in_flight > 0) in_flight--;
    write_openblas(share_of(budget, in_flight));
    unlock();
}
