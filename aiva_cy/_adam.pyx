# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Adam, as ``torch.optim.Adam`` computes it (amsgrad off), in one fused pass per parameter.

A step that would leave any weight or moment non-finite raises FloatingPointError and
changes nothing: a cheap bound (from the largest |gradient| and the largest |weight|,
|moment| of the previous pass) proves most steps safe; only a step it cannot prove safe
pays for an exact read-only pass before the update."""
from libc.math cimport INFINITY
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int64_t, uint16_t

import weakref

import numpy as np

from aiva_cy._checks import adam_betas, adam_value, int_arg

cdef extern from "aiva_adam.h" nogil:
    ctypedef struct aiva_adam_coeffs:
        float one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay
        float step_size, inv_bias_correction2_sqrt
    enum:
        AIVA_ADAM_OK
    aiva_adam_coeffs aiva_adam_coefficients(double lr, double beta1, double beta2, double eps,
                                            double weight_decay, int64_t step)
    double aiva_adam_max_abs(const float *a, ptrdiff_t n)
    int aiva_adam_provably_finite(double max_abs_g, double *bound, const aiva_adam_coeffs *c)
    int aiva_adam_check(const float *w, const float *g, const float *m, const float *v,
                        ptrdiff_t n, const aiva_adam_coeffs *c, float *max_abs)
    void aiva_adam_pass(float *w, const float *g, float *m, float *v, ptrdiff_t n,
                        const aiva_adam_coeffs *c)
    void aiva_adam_pass_bf16(float *w, const float *g, float *m, float *v, uint16_t *w16,
                             ptrdiff_t n, const aiva_adam_coeffs *c)


cdef double _max_abs(float[::1] a):
    cdef double m
    with nogil:
        m = aiva_adam_max_abs(&a[0], a.shape[0])
    return m


cdef class Adam:
    """Adam optimizer state for one network: hyper-parameters, step count and both moments.

    The same numbers as ``torch.optim.Adam(params, lr, betas, eps, weight_decay)``
    (L2 weight decay added to the gradient, bias correction by the step count).
    Hyper-parameters are attributes that may be changed between steps; every value is
    checked where it enters (constructor, setters, :meth:`load_state_dict`).
    """

    def __init__(self, shapes, *, names=None, transposed=None, lr=1e-3, betas=(0.9, 0.999),
                 eps=1e-8, weight_decay=0.0):
        self.shapes = tuple(tuple(int(d) for d in s) for s in shapes)
        self.names = tuple(names) if names is not None else tuple(str(i) for i in range(len(self.shapes)))
        self.transposed = tuple(bool(t) for t in transposed) if transposed is not None else (False,) * len(self.shapes)
        self._lr = adam_value("lr", lr)
        self._beta1, self._beta2 = adam_betas(betas)
        self._eps = adam_value("eps", eps)
        self._weight_decay = adam_value("weight_decay", weight_decay)
        self.step = 0
        self._exp_avg = [np.zeros(s, dtype=np.float32) for s in self.shapes]
        self._exp_avg_sq = [np.zeros(s, dtype=np.float32) for s in self.shapes]
        self._reset_bounds()

    cdef _reset_bounds(self):
        # Per parameter: [weak reference to the weights the bound was taken from, max |w|,
        # max |exp_avg|, max |exp_avg_sq|].  A different weights array (set_weights swaps in
        # new ones) has its maximum measured afresh.
        self._bounds = [[None, 0.0, _max_abs(m.reshape(-1)) if m.size else 0.0,
                         _max_abs(v.reshape(-1)) if v.size else 0.0]
                        for m, v in zip(self._exp_avg, self._exp_avg_sq)]

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = adam_value("lr", value)

    @property
    def eps(self):
        return self._eps

    @eps.setter
    def eps(self, value):
        self._eps = adam_value("eps", value)

    @property
    def weight_decay(self):
        return self._weight_decay

    @weight_decay.setter
    def weight_decay(self, value):
        self._weight_decay = adam_value("weight_decay", value)

    @property
    def beta1(self):
        return self._beta1

    @beta1.setter
    def beta1(self, value):
        self._beta1 = adam_value("beta1", value)

    @property
    def beta2(self):
        return self._beta2

    @beta2.setter
    def beta2(self, value):
        self._beta2 = adam_value("beta2", value)

    @property
    def betas(self):
        return (self._beta1, self._beta2)

    @betas.setter
    def betas(self, value):
        self._beta1, self._beta2 = adam_betas(value)

    cpdef update(self, list params, list grads, list bf16_out=None, list grad_bounds=None):
        """One Adam step: ``params[i] -= ...`` in place, from ``grads[i]``; with ``bf16_out``,
        also ``bf16_out[i][...] = params[i]`` rounded to bfloat16 (uint16 bits).

        Raises FloatingPointError, with the weights, the moments and the step count
        unchanged, if the step would leave any of them NaN or Inf.  ``grad_bounds`` (one
        number per gradient, each at least the largest ``|grads[i]|``) saves reading the
        gradients for that check; the engine passes the bounds its backward pass computed."""
        cdef Py_ssize_t k, n = len(self.shapes)
        if len(params) != n or len(grads) != n or (bf16_out is not None and len(bf16_out) != n):
            raise ValueError(f"Adam.update: expected {n} parameters and gradients")
        if grad_bounds is not None:
            if len(grad_bounds) != n:
                raise ValueError(f"Adam.update: grad_bounds must be {n} finite floats >= 0")
            for bound in grad_bounds:
                if not (isinstance(bound, float) and 0.0 <= bound < INFINITY):
                    raise ValueError(f"Adam.update: grad_bounds must be {n} finite floats >= 0")
        cdef long long step = self.step + 1
        cdef aiva_adam_coeffs c = aiva_adam_coefficients(
            self._lr, self._beta1, self._beta2, self._eps, self._weight_decay, step)
        flat = []
        rounded_copies = []
        for k in range(n):
            shape = self.shapes[k]
            for arr, what in ((params[k], "parameter"), (grads[k], "gradient")):
                if (not isinstance(arr, np.ndarray) or arr.shape != shape
                        or arr.dtype != np.float32 or not arr.flags.c_contiguous
                        or not arr.flags.aligned or (what == "parameter"
                                                     and not arr.flags.writeable)):
                    raise ValueError(f"Adam.update: {what} {self.names[k]!r} must be an aligned, "
                                     f"C-contiguous float32 array of shape {shape}")
            rounded = None
            if bf16_out is not None:
                rounded = bf16_out[k]
                if (not isinstance(rounded, np.ndarray) or rounded.shape != shape
                        or rounded.dtype != np.uint16 or not rounded.flags.c_contiguous
                        or not rounded.flags.writeable):
                    raise ValueError(f"Adam.update: bf16 copy {self.names[k]!r} must be a "
                                     f"C-contiguous uint16 array of shape {shape}")
                rounded = rounded.reshape(-1)
            flat.append((params[k].reshape(-1), grads[k].reshape(-1),
                         self._exp_avg[k].reshape(-1), self._exp_avg_sq[k].reshape(-1)))
            rounded_copies.append(rounded)
        cdef float[::1] w, g, m, v
        cdef bint safe = True, finite
        cdef float max_abs[3]
        cdef double proposed[3]
        new_bounds = []
        for k in range(n):
            w, g = flat[k][0], flat[k][1]
            if w.shape[0] == 0:
                new_bounds.append(None)
                continue
            bound = self._bounds[k]
            if bound[0] is None or bound[0]() is not params[k]:
                bound[0], bound[1] = weakref.ref(params[k]), _max_abs(w)
            proposed[0], proposed[1], proposed[2] = bound[1], bound[2], bound[3]
            # The engine's backward hands in bounds on |g| it had for free; otherwise read g.
            if safe and not aiva_adam_provably_finite(
                    _max_abs(g) if grad_bounds is None else <double>grad_bounds[k], proposed, &c):
                safe = False
            new_bounds.append((proposed[0], proposed[1], proposed[2]))
        if not safe:
            # The exact check: the same arithmetic, nothing stored; its maxima are the new
            # bounds, so the next steps start from the truth rather than a loose bound.
            for k in range(n):
                w, g, m, v = flat[k]
                if w.shape[0] == 0:
                    continue
                with nogil:
                    finite = aiva_adam_check(&w[0], &g[0], &m[0], &v[0], w.shape[0], &c,
                                             max_abs) == AIVA_ADAM_OK
                if not finite:
                    raise FloatingPointError(
                        f"Adam step {step} would make {self.names[k]!r} or its moments NaN or "
                        f"Inf (lr={self._lr!r}, betas=({self._beta1!r}, {self._beta2!r}), "
                        f"eps={self._eps!r}, weight_decay={self._weight_decay!r}); the weights, "
                        f"moments and step count are unchanged")
                new_bounds[k] = (max_abs[0], max_abs[1], max_abs[2])
        cdef uint16_t[::1] w16
        for k in range(n):
            w, g, m, v = flat[k]
            if w.shape[0] == 0:
                continue
            if rounded_copies[k] is None:
                with nogil:
                    aiva_adam_pass(&w[0], &g[0], &m[0], &v[0], w.shape[0], &c)
            else:
                w16 = rounded_copies[k]
                with nogil:
                    aiva_adam_pass_bf16(&w[0], &g[0], &m[0], &v[0], &w16[0], w.shape[0], &c)
            self._bounds[k][1:] = new_bounds[k]
        self.step = step

    # -- state, in the state_dict's layout --------------------------------------------
    def state_dict(self):
        """Hyper-parameters, step and moments (copies, keyed like the net's state_dict)."""
        def export(a, t):
            # Always a copy: ascontiguousarray would hand out the live, untransposed moment,
            # which the next step changes under a caller that is still writing it to a file.
            return np.array(a.T if t else a, order="C", copy=True)
        return {
            "lr": self._lr, "betas": (self._beta1, self._beta2), "eps": self._eps,
            "weight_decay": self._weight_decay, "step": int(self.step),
            "exp_avg": {k: export(a, t) for k, a, t in zip(self.names, self._exp_avg, self.transposed)},
            "exp_avg_sq": {k: export(a, t) for k, a, t in zip(self.names, self._exp_avg_sq, self.transposed)},
        }

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned.  Every key, type and range is checked
        (an unknown or missing key, a non-finite or out-of-range value, a negative second
        moment: ValueError) before anything changes."""
        try:
            return self._load_state_dict(state)
        except TypeError as exc:
            raise ValueError(f"optimizer state: {exc}") from None

    def _load_state_dict(self, state):
        from collections.abc import Mapping
        if not isinstance(state, Mapping):
            raise ValueError(f"optimizer state must be a mapping, got {type(state).__name__}")
        keys = ("lr", "betas", "eps", "weight_decay", "step", "exp_avg", "exp_avg_sq")
        missing = [k for k in keys if k not in state]
        unknown = sorted(str(k) for k in state if k not in keys)
        if missing or unknown:
            raise ValueError(f"optimizer state: missing keys {missing}, unknown keys {unknown}")
        try:
            lr = adam_value("lr", state["lr"])
            beta1, beta2 = adam_betas(state["betas"])
            eps = adam_value("eps", state["eps"])
            weight_decay = adam_value("weight_decay", state["weight_decay"])
            step = int_arg("step", state["step"], 0, 2**62)
        except ValueError as exc:
            raise ValueError(f"optimizer state: {exc}") from None
        new = ([], [])
        for which, moment in enumerate(("exp_avg", "exp_avg_sq")):
            src = state[moment]
            if not isinstance(src, Mapping):
                raise ValueError(f"optimizer state: {moment} must be a mapping of arrays, got "
                                 f"{type(src).__name__}")
            unknown = sorted(str(k) for k in src if k not in self.names)
            if unknown:
                raise ValueError(f"optimizer state: {moment} has unknown keys {unknown}")
            for name, shape, t in zip(self.names, self.shapes, self.transposed):
                if name not in src:
                    raise ValueError(f"optimizer state: missing {moment}[{name!r}]")
                value = src[name]
                if type(value).__module__.startswith("cupy"):
                    value = value.get()
                if isinstance(value, np.ma.MaskedArray):
                    raise TypeError(f"{moment}[{name!r}] is a masked array; fill it first")
                a = np.asarray(value)
                want = shape[::-1] if t else shape
                if a.shape != want:
                    raise ValueError(f"optimizer state: {moment}[{name!r}] has shape {a.shape}, "
                                     f"expected {want}")
                if a.dtype.kind not in "fiu":
                    raise ValueError(f"optimizer state: {moment}[{name!r}] must hold real "
                                     f"numbers, got dtype {a.dtype}")
                with np.errstate(over="ignore"):
                    a = np.ascontiguousarray(a.T if t else a, dtype=np.float32)
                if not np.isfinite(a).all():
                    raise ValueError(f"optimizer state: {moment}[{name!r}] contains NaN or Inf "
                                     f"(or a value too large for float32)")
                if which == 1 and a.size and a.min() < 0:
                    raise ValueError(f"optimizer state: exp_avg_sq[{name!r}] holds a negative "
                                     f"value ({float(a.min())!r}); a second moment is >= 0")
                if a is value or (isinstance(value, np.ndarray) and np.shares_memory(a, value)):
                    a = a.copy()     # the optimizer owns its moments
                new[which].append(a)
        self._lr, self._beta1, self._beta2 = lr, beta1, beta2
        self._eps, self._weight_decay, self.step = eps, weight_decay, step
        self._exp_avg, self._exp_avg_sq = new
        self._reset_bounds()

    def __repr__(self):
        return (f"Adam(lr={self._lr}, betas=({self._beta1}, {self._beta2}), eps={self._eps}, "
                f"weight_decay={self._weight_decay}, step={self.step})")

    def __reduce__(self):
        return (_rebuild_adam, (self.shapes, self.names, self.transposed, self.state_dict()))


def _rebuild_adam(shapes, names, transposed, state):
    opt = Adam(shapes, names=names, transposed=transposed)
    opt.load_state_dict(state)
    return opt
