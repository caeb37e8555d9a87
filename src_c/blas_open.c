/* Load sgemm/sgemv from a shared BLAS library by path — no import of scipy.linalg (which
 * costs more start-up than the whole NumPy BioNeuron) just to reach two function pointers. */
#include "aiva_core.h"

#include <stdio.h>
#include <string.h>

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
    memset(out, 0, sizeof *out);
    out->sgemm = ilp64 ? NULL : (aiva_sgemm_fn)gemm;
    out->sgemv = ilp64 ? NULL : (aiva_sgemv_fn)gemv;
    out->sgemm64 = ilp64 ? (aiva_sgemm64_fn)gemm : NULL;
    out->sgemv64 = ilp64 ? (aiva_sgemv64_fn)gemv : NULL;
    return 0;
}

/* MKL's service functions (mkl_service.h): MKL_INTERFACE_LP64 is 0; each returns the layer
 * now in force (which stays the first one chosen once MKL has run). */
typedef int (*mkl_set_layer_fn)(int);

int aiva_mkl_open(const char *path, int threading_layer, aiva_blas *out)
{
    void *lib = open_lib(path);
    if (!lib) return -1;
    mkl_set_layer_fn set_interface = (mkl_set_layer_fn)find_sym(lib, "MKL_Set_Interface_Layer");
    mkl_set_layer_fn set_threading = (mkl_set_layer_fn)find_sym(lib, "MKL_Set_Threading_Layer");
    void *gemm = find_sym(lib, "sgemm_"), *gemv = find_sym(lib, "sgemv_");
    if (!gemm) gemm = find_sym(lib, "sgemm");
    if (!gemv) gemv = find_sym(lib, "sgemv");
    if (!set_interface || !gemm || !gemv) return -1;
    /* Our calls pass 32-bit ints: refuse an MKL already fixed to ILP64 by someone else. */
    if (set_interface(0) & 1) return -1;   /* MKL_INTERFACE_ILP64 is 1 */
    if (threading_layer >= 0 && set_threading) set_threading(threading_layer);
    aiva_blas found;
    memset(&found, 0, sizeof found);
    found.sgemm = (aiva_sgemm_fn)gemm;
    found.sgemv = (aiva_sgemv_fn)gemv;
    /* Optional: an MKL without the packs is still an sgemm. */
    found.pack_f32_size = (aiva_pack_size_fn)find_sym(lib, "cblas_sgemm_pack_get_size");
    found.pack_f32 = (aiva_pack_f32_fn)find_sym(lib, "cblas_sgemm_pack");
    found.compute_f32 = (aiva_compute_f32_fn)find_sym(lib, "cblas_sgemm_compute");
    *out = found;
    return 0;
}
