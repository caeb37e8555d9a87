# cython: language_level=3
from libc.stdint cimport int64_t, uint16_t


cdef extern from "aiva_core.h" nogil:
    ctypedef void (*aiva_sgemm_fn)(const char *, const char *, const int *, const int *,
                                   const int *, const float *, const float *, const int *,
                                   const float *, const int *, const float *, float *,
                                   const int *)
    ctypedef void (*aiva_sgemv_fn)(const char *, const int *, const int *, const float *,
                                   const float *, const int *, const float *, const int *,
                                   const float *, float *, const int *)
    ctypedef void (*aiva_sgemm64_fn)(const char *, const char *, const int64_t *,
                                     const int64_t *, const int64_t *, const float *,
                                     const float *, const int64_t *, const float *,
                                     const int64_t *, const float *, float *, const int64_t *)
    ctypedef void (*aiva_sgemv64_fn)(const char *, const int64_t *, const int64_t *,
                                     const float *, const float *, const int64_t *,
                                     const float *, const int64_t *, const float *, float *,
                                     const int64_t *)
    ctypedef uint16_t aiva_bf16
    ctypedef struct aiva_blas:
        aiva_sgemm_fn sgemm
        aiva_sgemv_fn sgemv
        aiva_sgemm64_fn sgemm64
        aiva_sgemv64_fn sgemv64
        void *pack_f32_size
        void *pack_f32
        void *compute_f32
        void *lowp
        void *lowp_bf16
        void *lowp_u8s8


# The tables the C core calls through, filled once and never changed after: the float32 BLAS
# (at import), MKL's (all NULL until open_mkl succeeds: the benchmark's MKL floors) and the
# reduced-precision provider's (bfloat16 and int8: NULL until open_lowp succeeds).
cdef aiva_blas *float32_table() noexcept nogil
cdef aiva_blas *mkl_table() noexcept nogil
cdef aiva_blas *lowp_table() noexcept nogil
# Open MKL (or the provider) into its table once; ImportError, saying what to install, if it
# cannot be.
cdef int open_mkl() except -1
cdef int open_lowp() except -1
