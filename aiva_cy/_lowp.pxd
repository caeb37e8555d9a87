# cython: language_level=3
from libc.stdint cimport int8_t, int32_t, uint8_t, uint16_t


cdef extern from "aiva_onednn.h" nogil:
    ctypedef struct aiva_onednn:
        pass
    ctypedef struct aiva_onednn_weight:
        pass
    enum:
        AIVA_ONEDNN_BF16
        AIVA_ONEDNN_U8S8


cdef class PackedWeight:
    """A constant weight of the provider, packed on first use (aiva_onednn_weight)."""
    cdef aiva_onednn_weight *w
    cdef readonly int kind, tb
    cdef readonly Py_ssize_t n, k, ldb


cdef int fill_table(void *blas) except -1
cdef const void *weight_handle(object packed) except? NULL
