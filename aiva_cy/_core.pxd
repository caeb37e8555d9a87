# cython: language_level=3
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t

from aiva_cy._blas cimport aiva_blas, aiva_bf16

cdef extern from "aiva_core.h" nogil:
    ctypedef struct aiva_net:
        int input_size, hidden_size, spiking_size, num_tools
        float threshold
        int refractory_period
        float surrogate_slope
        const float *fc1_t
        const float *spiking_t
        const float *fc2
        int bf16
        const aiva_bf16 *fc1_t_bf16
        const aiva_bf16 *spiking_t_bf16
        const aiva_bf16 *fc2_bf16
        const void *fc1_packed
        const void *spiking_packed
        int int8, act_qmax, act_zero
        const int8_t *fc1_t_q
        const int8_t *spiking_t_q
        const int8_t *fc2_q
        const float *fc1_scale
        const float *spiking_scale
        const float *fc2_scale
        const int32_t *fc1_sum
        const int32_t *spiking_sum

    ctypedef struct aiva_workspace:
        int capacity
        float *hidden
        float *membrane
        float *spikes
        uint8_t *open "open"
        float *logits
        float *d_logits
        float *d_membrane
        float *d_hidden
        aiva_bf16 *bf16

    ctypedef struct aiva_grads:
        float *fc1_t
        float *spiking_t
        float *fc2
        double bound_fc1_t, bound_spiking_t, bound_fc2

    double AIVA_GRAD_LIMIT

    enum:
        AIVA_OK
        AIVA_ERR_INPUT_NONFINITE
        AIVA_ERR_OUTPUT_NONFINITE
        AIVA_ERR_LABEL
        AIVA_ERR_GRAD_NONFINITE
        AIVA_ERR_SIZE
        AIVA_ERR_HIDDEN_NONFINITE
        AIVA_ERR_PROVIDER

    int aiva_forward(const aiva_blas *blas, const aiva_net *net, const float *x, int batch,
                     const int32_t *refractory_left, aiva_workspace *ws, float *probs)
    void aiva_commit_state(const aiva_net *net, const aiva_workspace *ws, int batch,
                           int32_t *refractory_left)
    int aiva_backward(const aiva_blas *blas, const aiva_net *net, const float *x,
                      const int64_t *y, int batch, aiva_workspace *ws, aiva_grads *grads,
                      double *loss)
    int aiva_forward_sequence(const aiva_blas *blas, const aiva_net *net, const float *xs,
                              int steps, int batch, int32_t *refractory_left,
                              aiva_workspace *ws, float *probs)
    int aiva_backward_weighted(const aiva_blas *blas, const aiva_net *net, const float *x,
                               const int64_t *y, const float *row_weight, int batch,
                               aiva_workspace *ws, aiva_grads *grads, double *loss)
    size_t aiva_pack(const aiva_blas *blas, int n, int k, const float *w, void *dest)
    void aiva_round_bf16(const float *src, Py_ssize_t n, aiva_bf16 *dst)
    void aiva_quantize_s8(const float *w, Py_ssize_t n, Py_ssize_t len, Py_ssize_t step,
                          Py_ssize_t vstride, int8_t *q, float *scale, int32_t *sum)
    void aiva_blas_products(const aiva_blas *blas, const aiva_net *net, const float *x,
                            int batch, aiva_workspace *ws)


cdef class Workspace:
    cdef aiva_workspace ws
    cdef void *block
    cdef readonly int input_size, hidden_size, spiking_size, num_tools
    cdef void release(self) noexcept
    cdef int reserve(self, int batch) except -1
