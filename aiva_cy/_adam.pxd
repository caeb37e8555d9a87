# cython: language_level=3

cdef class Adam:
    cdef public double lr, beta1, beta2, eps, weight_decay
    cdef readonly long step
    cdef list _exp_avg        # float32 arrays, one per parameter, in the engine's layout
    cdef list _exp_avg_sq
    cdef readonly tuple names
    cdef readonly tuple transposed   # per parameter: kept as the transpose of state_dict's
    cdef readonly tuple shapes       # engine-layout shapes

    cpdef update(self, list params, list grads, list bf16_out=*)
