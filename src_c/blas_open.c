/* Load sgemm/sgemv from a shared BLAS library by path — no import of scipy.linalg (which
 * costs more start-up than the whole NumPy BioNeuron) just to reach two function pointers. */
#include "aiva_core.h"

#include <stdio.h>

#ifdef _WIN32
#include <windows.h>
static void *open_lib(const char *path) { return (void *)LoadLibraryA(path); }
static void *find_sym(void *lib, const char *name) { return (void *)GetProcAddress((HMODULE)lib, name); }
#else
#include <dlfcn.h>
static void *open_lib(const char *path) { return dlopen(path, RTLD_NOW | RTLD_LOCAL); }
static void *find_sym(void *lib, const char *name) { return dlsym(lib, name); }
#endif

int aiva_blas_open(const char *path, const char *prefix, const char *suffix, int ilp64,
                   aiva_blas *out)
{
    char name[128];
    void *lib = open_lib(path);
    if (!lib) return -1;
    /* The library stays loaded for the life of the process, like any extension's BLAS. */
    snprintf(name, sizeof name, "%ssgemm%s", prefix, suffix);
    void *gemm = find_sym(lib, name);
    snprintf(name, sizeof name, "%ssgemv%s", prefix, suffix);
    void *gemv = find_sym(lib, name);
    if (!gemm || !gemv) return -1;
    out->sgemm = ilp64 ? NULL : (aiva_sgemm_fn)gemm;
    out->sgemv = ilp64 ? NULL : (aiva_sgemv_fn)gemv;
    out->sgemm64 = ilp64 ? (aiva_sgemm64_fn)gemm : NULL;
    out->sgemv64 = ilp64 ? (aiva_sgemv64_fn)gemv : NULL;
    return 0;
}
