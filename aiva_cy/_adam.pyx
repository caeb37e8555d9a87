# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Adam, as ``torch.optim.Adam`` computes it (amsgrad off), in one fused pass per parameter."""
from libc.math cimport sqrtf, sqrt, pow
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy

import numpy as np

cdef inline uint16_t _bf16(float x) noexcept nogil:
    # Round to nearest even, as aiva_round_bf16 in src_c (weights are finite: no NaN case).
    cdef uint32_t u
    memcpy(&u, &x, 4)
    return <uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16)


cdef void _adam_pass(float *w, const float *g, float *m, float *v, Py_ssize_t n,
                     float one_minus_beta1, float beta2, float one_minus_beta2, float eps,
                     float weight_decay,
                     float step_size, float inv_bias_correction2_sqrt,
                     uint16_t *w_bf16) noexcept nogil:
    # Each element is read once and written once: weight, gradient and both moments stream
    # through together, where torch's single-tensor Adam makes ~6 passes over 4 arrays.
    # The arithmetic follows torch's order (lerp for the first moment, the square root
    # scaled by the bias correction, then eps) so the float32 results agree to an ulp; the
    # bias correction is a multiply by its reciprocal, not torch's divide, because divides
    # and square roots are what this loop spends its time on.
    cdef Py_ssize_t i
    cdef float gi, mi, vi, denom
    for i in range(n):
        gi = g[i] + weight_decay * w[i]
        mi = m[i] + one_minus_beta1 * (gi - m[i])
        vi = beta2 * v[i] + one_minus_beta2 * gi * gi
        m[i] = mi
        v[i] = vi
        denom = sqrtf(vi) * inv_bias_correction2_sqrt + eps
        w[i] = w[i] - step_size * mi / denom
        if w_bf16 != NULL:   # bfloat16 nets: the rounded copy, while w[i] is in a register
            w_bf16[i] = _bf16(w[i])


def _adam_all(list flat, float one_minus_b1, float b2, float one_minus_b2, float eps, float wd, float step_size,
              float inv_bc2_sqrt):
    """Every (weight, gradient, exp_avg, exp_avg_sq) in `flat`, with the GIL released.
    The pass is bound by memory: 7 floats move per weight, 89 MB a step for the default net,
    ~1.9 ms at the ~48 GB/s one core gets from L3 here.  Two measured alternatives bought
    nothing: a second thread taking half of each array (1.7x faster alone, no faster inside
    train_step, where the BLAS worker threads still spin on the other core after the backward
    products), and an AVX2 build of this loop (5-10%: the divides were not the bound)."""
    cdef float[::1] w, g, m, v
    cdef uint16_t[::1] w16
    cdef uint16_t *out16
    for w, g, m, v, rounded in flat:
        out16 = NULL
        if rounded is not None:
            w16 = rounded
            out16 = &w16[0]
        with nogil:
            _adam_pass(&w[0], &g[0], &m[0], &v[0], w.shape[0], one_minus_b1, b2, one_minus_b2,
                       eps, wd, step_size,
                       inv_bc2_sqrt, out16)


cdef class Adam:
    """Adam optimizer state for one network: hyper-parameters, step count and both moments.

    The same numbers as ``torch.optim.Adam(params, lr, betas, eps, weight_decay)``
    (L2 weight decay added to the gradient, bias correction by the step count).
    Hyper-parameters are plain attributes and may be changed between steps.
    """

    def __init__(self, shapes, *, names=None, transposed=None, double lr=1e-3, betas=(0.9, 0.999),
                 double eps=1e-8, double weight_decay=0.0):
        self.shapes = tuple(tuple(int(d) for d in s) for s in shapes)
        self.names = tuple(names) if names is not None else tuple(str(i) for i in range(len(self.shapes)))
        self.transposed = tuple(bool(t) for t in transposed) if transposed is not None else (False,) * len(self.shapes)
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.step = 0
        self._exp_avg = [np.zeros(s, dtype=np.float32) for s in self.shapes]
        self._exp_avg_sq = [np.zeros(s, dtype=np.float32) for s in self.shapes]

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    @betas.setter
    def betas(self, value):
        self.beta1, self.beta2 = value

    cpdef update(self, list params, list grads, list bf16_out=None):
        """One Adam step: ``params[i] -= ...`` in place, from ``grads[i]``; with ``bf16_out``,
        also ``bf16_out[i][...] = params[i]`` rounded to bfloat16 (uint16 bits)."""
        cdef Py_ssize_t k, n = len(self.shapes)
        if len(params) != n or len(grads) != n or (bf16_out is not None and len(bf16_out) != n):
            raise ValueError(f"Adam.update: expected {n} parameters and gradients")
        cdef long step = self.step + 1
        cdef float step_size = self.lr / (1.0 - pow(self.beta1, step))
        cdef float inv_bc2_sqrt = 1.0 / sqrt(1.0 - pow(self.beta2, step))
        cdef float b1 = self.beta1, b2 = self.beta2, eps = self.eps, wd = self.weight_decay
        flat = []
        for k in range(n):
            shape = self.shapes[k]
            for arr, what in ((params[k], "parameter"), (grads[k], "gradient")):
                if arr.shape != shape or arr.dtype != np.float32 or not arr.flags.c_contiguous:
                    raise ValueError(f"Adam.update: {what} {self.names[k]!r} must be a "
                                     f"C-contiguous float32 array of shape {shape}")
            rounded = None
            if bf16_out is not None:
                rounded = bf16_out[k]
                if rounded.shape != shape or rounded.dtype != np.uint16 or not rounded.flags.c_contiguous:
                    raise ValueError(f"Adam.update: bf16 copy {self.names[k]!r} must be a "
                                     f"C-contiguous uint16 array of shape {shape}")
                rounded = rounded.reshape(-1)
            flat.append((params[k].reshape(-1), grads[k].reshape(-1),
                         self._exp_avg[k].reshape(-1), self._exp_avg_sq[k].reshape(-1), rounded))
        # 1 - beta in double, rounded once, as torch does: 1 - 0.999f is 1.3e-5 off.
        _adam_all(flat, 1.0 - self.beta1, b2, 1.0 - self.beta2, eps, wd, step_size,
                  inv_bc2_sqrt)
        self.step = step

    # -- state, in the state_dict's layout --------------------------------------------
    def state_dict(self):
        """Hyper-parameters, step and moments (copies, keyed like the net's state_dict)."""
        def export(a, t):
            return np.ascontiguousarray(a.T if t else a)
        return {
            "lr": self.lr, "betas": (self.beta1, self.beta2), "eps": self.eps,
            "weight_decay": self.weight_decay, "step": int(self.step),
            "exp_avg": {k: export(a, t) for k, a, t in zip(self.names, self._exp_avg, self.transposed)},
            "exp_avg_sq": {k: export(a, t) for k, a, t in zip(self.names, self._exp_avg_sq, self.transposed)},
        }

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned; checks everything before changing anything."""
        try:
            lr = float(state["lr"])
            beta1, beta2 = (float(b) for b in state["betas"])
            eps = float(state["eps"])
            weight_decay = float(state["weight_decay"])
            step = int(state["step"])
            moments = (state["exp_avg"], state["exp_avg_sq"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"optimizer state is incomplete or malformed: {exc!r}") from None
        if step < 0:
            raise ValueError(f"optimizer state: step must be >= 0, got {step}")
        new = ([], [])
        for which, src in enumerate(moments):
            for name, shape, t in zip(self.names, self.shapes, self.transposed):
                if name not in src:
                    raise ValueError(f"optimizer state: missing moment {name!r}")
                a = np.asarray(src[name])
                want = shape[::-1] if t else shape
                if a.shape != want:
                    raise ValueError(f"optimizer state: moment {name!r} has shape {a.shape}, "
                                     f"expected {want}")
                if a.dtype.kind not in "fiu" or not np.isfinite(a).all():
                    raise ValueError(f"optimizer state: moment {name!r} must be finite real numbers")
                new[which].append(np.ascontiguousarray(a.T if t else a, dtype=np.float32))
        self.lr, self.beta1, self.beta2 = lr, beta1, beta2
        self.eps, self.weight_decay, self.step = eps, weight_decay, step
        self._exp_avg, self._exp_avg_sq = new

    def __repr__(self):
        return (f"Adam(lr={self.lr}, betas=({self.beta1}, {self.beta2}), eps={self.eps}, "
                f"weight_decay={self.weight_decay}, step={self.step})")

    def __reduce__(self):
        return (_rebuild_adam, (self.shapes, self.names, self.transposed, self.state_dict()))


def _rebuild_adam(shapes, names, transposed, state):
    opt = Adam(shapes, names=names, transposed=transposed)
    opt.load_state_dict(state)
    return opt
