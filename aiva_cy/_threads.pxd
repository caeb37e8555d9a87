# cython: language_level=3
# Called by the engine around each call's products, without the GIL (see _threads.pyx).
cdef int threads_enter(bint mkl) noexcept nogil
cdef void threads_leave(bint mkl) noexcept nogil
