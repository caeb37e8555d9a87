# cython: language_level=3

cdef class Adam:
    cdef double _lr, _beta1, _beta2, _eps, _weight_decay   # checked by the property setters
    cdef readonly long long step
    cdef list _exp_avg        # float32 arrays, one per parameter, in the engine's layout
    cdef list _exp_avg_sq
    cdef list _bounds         # per parameter: the largest |w|, |m|, |v| of the last pass
    cdef readonly tuple names
    cdef readonly tuple transposed   # per parameter: kept as the transpose of state_dict's
    cdef readonly tuple shapes       # engine-layout shapes

    cdef _reset_bounds(self)
    cpdef update(self, list params, list grads, list bf16_out=*, list grad_bounds=*)
