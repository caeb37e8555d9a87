"""Forward error bounds for the engine's float32 (and bf16-operand) arithmetic, computed
in float64 — the tolerance of every numerical comparison in the tests comes from here.

The model (Higham, "Accuracy and Stability of Numerical Algorithms", ch. 2-3): each float32
operation returns the exact result of its rounded operands times (1 + d), |d| <= u = 2**-24.

- A dot product of K terms, summed in any order (BLAS kernels choose theirs, by shape,
  by CPU, by thread count), satisfies |fl(s) - s| <= gamma_K * sum |a_i b_i| with
  gamma_K = K u / (1 - K u).  Terms whose computed product is exactly zero add no rounding
  (x + 0 == x), so K counts the terms that may be non-zero: the spikes of fc2's input, a
  closed refractory mask.  bf16 operands (precision="bfloat16"): the operands are rounded
  to bf16 first, deterministically, the products of two bf16 numbers are exact in float32,
  and the float32 accumulation has the same gamma_K bound against the exact product of
  the rounded operands.  Rounding a computed float32 value to bf16 moves it by one bf16
  step where a rounding boundary lies within its error (`to_bf16`), else not at all.
- int8 operands (precision="int8"): the engine quantizes in float32, deterministically —
  weights per output channel, q = round(w * (127 / max|w|)), activations per row with
  qmax = 127 (63 without VNNI) — so the reference quantizes the same float32 values the
  same way and gets the same integers; the u8 x s8 products are exact in int32, and the
  dequantization (acc - zero * sum) * (s_row * s_col) in float32 rounds three times
  (3u relative).  A computed activation (h, from tanh) is quantized from a value within
  its error: where a quantization boundary, or its row's max|h| (the scale), lies within
  that error, the engine's integer may be one step off the reference's (`to_int8`, the
  worst case).  The error of the quantization itself is no error here: the reference
  quantizes too.  How far int8 decisions then are from float32's is measured, not bounded
  (benchmarks/precision_decisions.py).
- Elementwise operations: the propagated error (Lipschitz constants of +, *, /, sqrt, tanh,
  exp on the interval the operands can be in) plus one rounding of the result.  tanh and
  exp are approximations (the engine's rational tanh and Cephes exp, CuPy's, NumPy's, ONNX
  Runtime's): TANH_ULPS and EXP_ULPS u are relative bounds for any of them;
  test_bounds.py measures each against them.
- The threshold: an engine's spike equals the float64 one wherever |v - threshold| > the
  bound on v (`Step.ambiguous` marks the rest).  Two engines, each within B of the exact
  value, differ by at most 2B.
- softmax is 1/2-Lipschitz in the inf-norm: its Jacobian diag(p) - p p^T has row sums of
  absolute values 2 p_i (1 - p_i) <= 1/2, and along the segment between two logit vectors
  that differ by at most d, p_i grows by at most exp(2d); so |dp_i| <= min(1/2,
  2 p_i exp(2d)) d.  The float32 evaluation (shift, exp, sum, reciprocal, product) adds
  a relative error per entry (`softmax`).
- The loss lse(z) - z_y is 2-Lipschitz in the inf-norm of z (the engine sums it in double).

Two bounds are carried for every value (class Bounded), and each check uses the smaller:

- the worst case above (`Bounded.e`): every rounding at its bound, with the worst sign;
- the probabilistic bound of Higham & Mary ("A new approach to probabilistic rounding
  error analysis", SIAM J. Sci. Comput. 41, 2019): with the rounding errors independent
  random variables of mean zero, a K-term dot product is within LAMBDA sqrt(K) u
  sum |a_i b_i| of the exact one, and errors carried into a later product add in
  quadrature where they come from separate computations; each such bound fails with
  probability below 2 exp(-LAMBDA^2 / 2) = 4e-22.  Not rounding errors (the tanh and exp
  approximations, a bf16 rounding that a boundary made ambiguous, softmax's mixing,
  second-order terms) stay worst case.

At the small sizes (K < LAMBDA^2 = 100) the worst case is the smaller.  At the default
size (K = 512 and 2048) the worst case is ~1e4 times the errors observed and would put a
dozen of each row's 1024 membranes within their bound of the threshold; the probabilistic
bound is ~3e2 times the observed errors and leaves about half the rows clear.  Observed
errors sit 1 to 3 orders of magnitude below the bounds used (AIVA_BOUNDS_REPORT=1 prints
observed / bound for every checked test); Adam's, a few roundings of one value, within a
factor of 2.  Products of two errors are kept, every float64 evaluation adds a few 2**-53
relative, and subnormals flushed to zero by bf16 kernels (DAZ/FTZ) add at most TINY per
operation.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from collections import deque
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

try:
    from threadpoolctl import ThreadpoolController
    _POOLS = ThreadpoolController()
except Exception:  # pragma: no cover - threadpoolctl is a test dependency
    _POOLS = None


def _one_thread():
    """The reference's float64 products, single-threaded: they are small, and on a loaded
    machine OpenBLAS's second thread made them 30 times slower."""
    return _POOLS.limit(limits=1, user_api="blas") if _POOLS else contextlib.nullcontext()


U32 = 2.0 ** -24            # float32 unit roundoff
U64 = 2.0 ** -53            # float64 unit roundoff (the reference's own evaluation)
TINY = 2.0 ** -126          # a flushed subnormal, per operation
# Relative error bounds of the tanh and exp implementations in use, in units of u (of the
# precision they compute in): measured maxima on dense grids (test_bounds.py) are 6.5 for
# the engine's tanh, 1.8 for NumPy's float32 tanh, 5.5 for ONNX Runtime's; 3.2 for
# NumPy's float32 exp, 1.3 for ONNX Runtime's (to -86; 14.8 below that, where a float32
# exp is subnormal).  CUDA documents 2 ulp (4 u) for tanhf and expf.
TANH_ULPS = 16
EXP_ULPS = 32
TANH_REL = TANH_ULPS * U32
EXP_REL = EXP_ULPS * U32
# The probabilistic bounds' multiple of the standard deviation: a bound fails with
# probability at most 2 exp(-LAMBDA**2 / 2) < 4e-22 per computed entry.
LAMBDA = 10.0
KEYS = ("fc1.weight", "spiking.weight", "fc2.weight")


def gamma(k, u=U32):
    """gamma_k = k u / (1 - k u), elementwise over an array of term counts k."""
    k = np.asarray(k, dtype=np.float64)
    return k * u / (1.0 - k * u)


def bf(a):
    """float64 -> float32 -> bfloat16 (round to nearest even) -> float64, as the engine
    rounds its float32 operands."""
    u = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


class Bounded:
    """A float64 value (the exact computation, up to float64 rounding) and bounds on how far
    an engine's computed value can be from it, elementwise, kept in two ways:

    - `e`, the worst case: every rounding error at its bound and with the worst sign;
    - `f + LAMBDA * r`, the probabilistic bound (Higham & Mary, "A new approach to
      probabilistic rounding error analysis", SIAM J. Sci. Comput. 41, 2019): rounding
      errors are independent random variables of mean zero, |d| <= u, so a linear
      combination sum c_m d_m exceeds LAMBDA u sqrt(sum c_m^2) with probability at most
      2 exp(-LAMBDA^2 / 2) (Hoeffding).  `r` is u sqrt(sum c_m^2) of the first-order
      random part; `f` holds what is not random — the approximation errors of tanh and exp,
      a bf16 rounding that a boundary made ambiguous, softmax's mixing, the second-order
      terms — bounded in the worst case.

    `err` is the smaller of the two.  At the small sizes the worst case is the smaller
    (K < LAMBDA^2); at the default size it is ~1e4 times the observed errors and would put
    a dozen of every row's 1024 membranes within their bound, the probabilistic one ~1e2
    to 1e3 times."""

    __slots__ = ("v", "e", "f", "r", "u", "_cache", "_exact")
    __array_priority__ = 100

    def __init__(self, value, e=0.0, f=None, r=0.0, u=U32):
        self.v = np.asarray(value, dtype=np.float64)
        shape = self.v.shape
        f = e if f is None else f
        # read-only broadcasts: an exact weight matrix carries no arrays of zeros
        self._exact = all(np.ndim(a) == 0 and a == 0 for a in (e, f, r))
        self.e = np.broadcast_to(np.asarray(e, dtype=np.float64), shape)
        self.f = np.broadcast_to(np.asarray(f, dtype=np.float64), shape)
        self.r = np.broadcast_to(np.asarray(r, dtype=np.float64), shape)
        self.u = u
        self._cache = None

    def _parts(self):
        """|v| + e, |v| + err, whether any entry may be non-zero, v**2, and which of
        e, err, r are non-zero anywhere: computed once (weights are used many times)."""
        if self._cache is None and self._exact:
            a = np.abs(self.v)
            self._cache = dict(abs=a, abs_e=a, abs_b=a, sq=self.v ** 2, nz=a > 0, any_e=False,
                               any_f=False, any_r=False, any_b=False, err=self.e)
        if self._cache is None:
            a = np.abs(self.v)
            err = self.err
            self._cache = dict(abs=a, abs_e=a + self.e, abs_b=a + err, sq=self.v ** 2,
                               nz=(a + self.e) > 0, any_e=bool(self.e.any()),
                               any_f=bool(self.f.any()), any_r=bool(self.r.any()),
                               any_b=bool(err.any()), err=err)
        return self._cache

    @property
    def err(self):
        return np.minimum(self.e, self.f + LAMBDA * self.r)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def rounded_from(cls, a, u=U32):
        """An input the engine converts to float32: the value as given, the conversion's
        exact error as the bound (a rounding error, so also the random part)."""
        if np.asarray(a).dtype == np.float32 or u != U32:
            return cls(a, 0.0, 0.0, 0.0, u)               # held exactly
        a = np.asarray(a, dtype=np.float64)
        d = np.abs(a.astype(np.float32).astype(np.float64) - a)
        return cls(a, d, 0.0, np.where(d > 0, u * np.abs(a), 0.0), u)

    @staticmethod
    def lift(a, u):
        return a if isinstance(a, Bounded) else Bounded.rounded_from(a, u)

    # -- helpers ---------------------------------------------------------------------
    def _round(self, value, pe, pf, pr):
        """Result of one operation: exact `value`, propagated errors, one rounding (a new
        random error of coefficient |value|; its product with the propagated error is a
        second-order term, kept in f)."""
        a = np.abs(value)
        slack = 4 * U64 * a + TINY
        pb = np.minimum(pe, pf + LAMBDA * pr)
        return Bounded(value, pe + self.u * (a + pe) + slack, pf + self.u * pb + slack,
                       np.sqrt(pr * pr + (self.u * a) ** 2), self.u)

    @property
    def T(self):
        t = Bounded(self.v.T, self.e.T, self.f.T, self.r.T, self.u)
        t._exact = self._exact
        if self._cache is not None:
            t._cache = {k: (a.T if isinstance(a, np.ndarray) else a)
                        for k, a in self._cache.items()}
        return t

    @property
    def shape(self):
        return self.v.shape

    def __getitem__(self, idx):
        return Bounded(self.v[idx], self.e[idx], self.f[idx], self.r[idx], self.u)

    def where(self, cond, other=0.0):
        """Exact selection (a mask): `other` where cond is False, with no error."""
        z = lambda a: np.where(cond, a, 0.0)  # noqa: E731
        return Bounded(np.where(cond, self.v, other), z(self.e), z(self.f), z(self.r), self.u)

    def __repr__(self):
        return (f"Bounded(max |value| {np.abs(self.v).max():.3g}, max err "
                f"{self.err.max():.3g}, worst case {self.e.max():.3g})")

    # -- arithmetic ------------------------------------------------------------------
    def __add__(self, other):
        o = Bounded.lift(other, self.u)
        # random parts may share errors (x and x*x): |c_a + c_b| <= |c_a| + |c_b|
        return self._round(self.v + o.v, self.e + o.e, self.f + o.f, self.r + o.r)

    __radd__ = __add__

    def __neg__(self):
        return Bounded(-self.v, self.e, self.f, self.r, self.u)

    def __sub__(self, other):
        return self + (-Bounded.lift(other, self.u))

    def __rsub__(self, other):
        return Bounded.lift(other, self.u) - self

    def __mul__(self, other):
        o = Bounded.lift(other, self.u)
        aa, ab = np.abs(self.v), np.abs(o.v)
        pe = aa * o.e + ab * self.e + self.e * o.e
        pf = aa * o.f + ab * self.f + self.err * o.err
        pr = aa * o.r + ab * self.r
        return self._round(self.v * o.v, pe, pf, pr)

    __rmul__ = __mul__

    def __truediv__(self, other):
        o = Bounded.lift(other, self.u)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = self.v / o.v
            aq, ab = np.abs(q), np.abs(o.v)
            # a^/b^ - a/b = (da - q db) / b^ exactly, |b^| >= |b| - err(b)
            room_e, room = ab - o.e, ab - o.err
            pe = np.where(room_e > 0, (self.e + aq * o.e) / room_e, np.inf)
            lin = ab > 0
            pr = np.where(lin, (self.r + aq * o.r) / ab, np.inf)
            second = (self.err + aq * o.err) * o.err / (ab * room)
            pf = np.where(room > 0, (self.f + aq * o.f) / ab + second, np.inf)
        return self._round(q, pe, pf, pr)

    def __rtruediv__(self, other):
        return Bounded.lift(other, self.u) / self

    def __abs__(self):
        return Bounded(np.abs(self.v), self.e, self.f, self.r, self.u)

    def sqrt(self):
        value = np.sqrt(np.maximum(self.v, 0.0))

        def worst(err):     # |sqrt(a^) - sqrt(a)| = |da| / (sqrt(a^) + sqrt(a)) <= ...
            lo = np.sqrt(np.maximum(self.v - err, 0.0))
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(err > 0, np.minimum(err / (value + lo), np.sqrt(err)), 0.0)

        b = self.err
        with np.errstate(divide="ignore", invalid="ignore"):
            # first order da / (2 sqrt a) where the error is at most half the value; the
            # remainder |da|^2 / (2 a^1.5) goes to f; elsewhere the worst case only
            lin = (value > 0) & (b <= 0.5 * self.v)
            pr = np.where(lin, self.r / (2 * value), 0.0)
            pf = np.where(lin, self.f / (2 * value) + b * b / (2 * self.v * value),
                          worst(b))
        return self._round(value, worst(self.e), pf, pr)

    def tanh(self):
        value = np.tanh(self.v)
        b = self.err

        def sup_slope(err):  # sup of tanh' over the interval the computed argument lies in
            return 1.0 - np.tanh(np.maximum(np.abs(self.v) - err, 0.0)) ** 2

        slope = 1.0 - value ** 2
        pe = self.e * sup_slope(self.e)
        # tanh(a^) - tanh(a) = tanh'(a) da + remainder, |tanh''| <= 0.77
        pr = slope * self.r
        pf = sup_slope(b) * self.f + 0.77 * b * b
        a = np.abs(value)
        rel = TANH_ULPS * self.u
        fn = rel * (a + np.minimum(pe, pf + LAMBDA * pr)) + 4 * U64 * a + TINY
        return Bounded(value, pe + rel * (a + pe) + 4 * U64 * a + TINY, pf + fn, pr, self.u)

    def _matmul(self, other, independent=False):
        """self @ other.  `independent`: the random errors of the terms of each sum are
        independent from one term (index of the contraction) to the next — rows of a batch
        (computed apart), or the hidden units of one row (each from its own product) —
        so they add in quadrature; otherwise (a softmax row, a membrane row that all came
        from one h) only the worst case |c_1| + |c_2| + ... is safe."""
        o = Bounded.lift(other, self.u)
        A, B = self.v, o.v
        pa, pb = self._parts(), o._parts()
        value = A @ B
        # sum |a^ b^| over the computed operands (with the worst-case errors: they inflate
        # the operands by 1e-3 relative at most, and one product serves both bounds)
        p1e = pa["abs_e"] @ pb["abs_e"]
        p1 = p1e
        k = A.shape[-1]
        if pa["nz"].all() and pb["nz"].all():
            terms = np.full(value.shape, float(k))
        else:
            terms = pa["nz"].astype(np.float64) @ pb["nz"].astype(np.float64)
        u = self.u
        ref = 2 * gamma(k, U64) * p1e + terms * TINY     # the float64 reference's own error
        # worst case: gamma_K of the sum of |products|, plus the operands' errors
        pe = (self.e @ pb["abs_e"] if pa["any_e"] else 0.0) + \
            (pa["abs"] @ o.e if pb["any_e"] else 0.0)
        e = gamma(terms, u) * p1e + pe + ref
        # probabilistic: each term k carries at most `terms` roundings, and the coefficient
        # of each rounding is a partial sum, at most sum |a^ b^|: u sqrt(terms) sum |a^ b^|
        # (Higham & Mary's gamma~_K); the second-order rest gamma_K^2 sum |a^ b^| goes to f
        r_own = u * np.sqrt(terms) * p1
        f = (self.f @ pb["abs"] if pa["any_f"] else 0.0) + \
            (pa["abs"] @ o.f if pb["any_f"] else 0.0) + \
            (pa["err"] @ pb["err"] if (pa["any_b"] and pb["any_b"]) else 0.0) + \
            gamma(terms, u) ** 2 * p1 + ref
        ra, rb = pa["any_r"], pb["any_r"]
        if independent:
            both = 2.0 if (ra and rb) else 1.0
            r2 = ((self.r ** 2) @ pb["sq"] if ra else 0.0) + (pa["sq"] @ (o.r ** 2) if rb else 0.0)
            r_prop = np.sqrt(both * r2)
        else:
            r_prop = (self.r @ pb["abs"] if ra else 0.0) + (pa["abs"] @ o.r if rb else 0.0)
        r = np.sqrt(r_own ** 2 + np.asarray(r_prop) ** 2)
        return Bounded(value, e, f, r, u)

    def __matmul__(self, other):
        return self.matmul(other)

    def matmul(self, other, independent=False):
        with _one_thread():
            return self._matmul(other, independent)

    def to_int8(self, qmax):
        """The engine's per-row quantization of this computed float32 value, dequantized
        (scale * q): the value is the reference's quantization of its own v.  The engine
        quantizes a value within err of v with a row max within the row's largest err of
        the reference's: its integer lies between those of the interval's ends (rounding is
        monotone), and its scale within the max's error (plus the float32 roundings of
        qmax / max and max / qmax).  Rows whose error is zero are quantized exactly as the
        reference does.  Worst case only."""
        q, s = quantize_rows(self.v, qmax)

        def bound(err):
            err = np.atleast_2d(err) * (1 + 2.0 ** -40) + TINY
            v = np.atleast_2d(np.abs(self.v))
            m = v.max(axis=1, keepdims=True)
            em = err.max(axis=1, keepdims=True)
            slack = 1 + 4 * self.u
            with np.errstate(divide="ignore", invalid="ignore"):
                inv_lo = np.where(m + em > 0, qmax / (m + em), 0.0) / slack
                inv_hi = np.where(m - em > 0, qmax / (m - em), np.inf) * slack
            lo = np.rint(np.clip(np.maximum(v - err, 0.0) * inv_lo, 0, qmax))
            hi = np.rint(np.clip((v + err) * inv_hi, 0, qmax))
            qa = np.abs(q)
            dq = np.maximum(hi - qa, qa - lo)
            ds = np.maximum((m + em) / qmax * slack - s, s - np.maximum(m - em, 0.0) / qmax / slack)
            out = ds * (qa + dq) + s * dq
            return np.where(em > TINY * 2, out, 0.0).reshape(self.v.shape)

        return Bounded((q * s).reshape(self.v.shape), bound(self.e), bound(self.err), 0.0, self.u)

    def int8_matmul(self, w: "Bounded"):
        """self @ w for a dequantized activation (to_int8, or an exact quantized input) and a
        dequantized weight (exact): the engine's integer product is exact, its float32
        dequantization rounds three times (the int32 -> float conversion, s_row * s_col, the
        product); the activation's error carries through |w|.  Worst case only."""
        with _one_thread():
            value = self.v @ w.v
            aw = np.abs(w.v)

            def bound(err):
                prop = err @ aw if np.any(err) else 0.0
                return prop + 3.01 * self.u * (np.abs(value) + prop) + 4 * U64 * np.abs(value) \
                    + TINY
            return Bounded(value, bound(self.e), bound(self.err), 0.0, self.u)

    def to_bf16(self):
        """The engine's rounding of this computed float32 value to bf16; the value is the
        reference's bf(value).  bf is monotone, so where bf of both ends of the interval
        [value - err, value + err] agree, the engine's rounding is the reference's exactly;
        elsewhere it is at most their difference away (one bf16 step), in the worst case."""
        def step(err):
            err = err * (1 + 2.0 ** -40) + TINY
            return bf(self.v + err) - bf(self.v - err)
        return Bounded(bf(self.v), step(self.e), step(self.err), 0.0, self.u)


def quantize_rows(a, qmax) -> Tuple[np.ndarray, np.ndarray]:
    """The engine's per-row quantization of float32 values (aiva_core.c, quantize_rows_u8;
    aiva_quantize_s8 for weights, per output channel, qmax 127): q = round-half-even of
    clip(a * (qmax / max|a|)) with every step in float32; (q, scale) as float64, scale
    (rows, 1) = max|a| / qmax (0 for a row under 1e-30)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float32))
    m = np.abs(a).max(axis=1, keepdims=True)
    tiny = m < np.float32(1e-30)
    safe = np.where(tiny, np.float32(1), m)
    inv = np.where(tiny, np.float32(0), np.float32(qmax) / safe).astype(np.float32)
    scale = np.where(tiny, np.float32(0), safe / np.float32(qmax)).astype(np.float32)
    q = np.rint(np.clip((a * inv).astype(np.float32), -qmax, qmax))
    return q.astype(np.float64), scale.astype(np.float64)


def quantize_weight(w) -> Tuple[np.ndarray, np.ndarray]:
    """A state_dict-layout ("x @ W") weight quantized per output channel (its columns), as
    the engine does: (q, scale (1, out))."""
    q, s = quantize_rows(np.asarray(w, dtype=np.float32).T, 127)
    return q.T, s.T


def exact(a, u=U32) -> Bounded:
    """A value the engine holds exactly (float32 weights, 0/1 spikes)."""
    return Bounded(a, 0.0, 0.0, 0.0, u)


def const(c, u=U32) -> Bounded:
    """A scalar the engine rounds once to float32 (from the double it computed, ~1e-16):
    a fixed error, the same in every entry it multiplies, so not a random one."""
    c = float(c)
    dtype = np.float32 if u == U32 else np.float64
    return Bounded(c, abs(float(dtype(c)) - c) + 4 * U64 * abs(c), None, 0.0, u)


def softmax(z: Bounded) -> Bounded:
    """Bounded probabilities from bounded logits (B, T); the error is all put in the
    worst-case parts (softmax mixes a row's errors)."""
    u = z.u
    zv = np.atleast_2d(z.v)
    shifted = zv - zv.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    p = e / e.sum(axis=-1, keepdims=True)
    T = zv.shape[-1]

    def bound(zerr):
        d = np.atleast_2d(zerr).max(axis=-1, keepdims=True)   # inf-norm of the logit error
        lip = np.minimum(0.5, 2.0 * p * np.exp(2.0 * d))
        prop = lip * d
        # evaluation: the shift z - max (its rounding, on arguments within 2d of the exact
        # shift), exp, a sum of T terms, the reciprocal and the product
        theta = (1.0 + EXP_ULPS * u) * np.exp(u * (np.abs(shifted) + 2.0 * d)) - 1.0
        tmax = theta.max(axis=-1, keepdims=True)
        sigma = tmax + gamma(T - 1, u) * (1.0 + tmax)
        rel = (1.0 + theta) * (1.0 + u) ** 2 / (1.0 - sigma) - 1.0
        # + where a shift may fall below -87, the engine's exp clamps it: under 1.7e-38
        clamp = np.where(shifted - 2.0 * d < -86.0, 2 * np.exp(-87.0), TINY)
        err = prop + rel * (p + prop) + 8 * U64 * p + clamp
        return err.reshape(z.v.shape)

    return Bounded(p.reshape(z.v.shape), bound(z.e), bound(z.err), 0.0, u)


def widen(x: Bounded, extra) -> Bounded:
    """x with `extra` added to both bounds (a worst-case term)."""
    return Bounded(x.v, x.e + extra, x.f + extra, x.r, x.u)


def softmax_sum_bound(num_tools, u=U32) -> float:
    """|sum of computed probabilities - 1|, the sum itself taken in float32 (any order):
    each entry's evaluation error (shift, exp, sum, reciprocal, product; see softmax) on
    exact logits, plus gamma_T for the sum."""
    theta = (1.0 + EXP_ULPS * u) * np.exp(u * 104.0) - 1.0   # shifts clamp at -87 (+ slack)
    sigma = theta + gamma(num_tools - 1, u) * (1.0 + theta)
    rel = (1.0 + theta) * (1.0 + u) ** 2 / (1.0 - sigma) - 1.0
    return float((1.0 + rel) * (1.0 + gamma(num_tools, u)) - 1.0)


# ---------------------------------------------------------------------------------------
# one time step and its backward pass (docs/contract.md), with bounds
# ---------------------------------------------------------------------------------------
class Step:
    """One forward step: Bounded x, a (pre-tanh), h, v, z, p; raw, mask, out (bool, the
    reference's spikes, or the engine's where `resolve` was given its state); ambiguous
    (bool): an open neuron with |v - threshold| <= its bound, where an engine may spike
    either way; resolved: the ambiguous neurons that the engine's state decided."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    @property
    def unresolved_rows(self) -> np.ndarray:
        return self.ambiguous.any(axis=-1)

    def loss(self, y, rows=None) -> Bounded:
        """Mean cross-entropy of the logits over `rows` (a boolean selection, default all):
        lse(z) - z_y is 2-Lipschitz in the inf-norm of z; the engine sums it in double."""
        z = self.z if rows is None else self.z[rows]
        y = np.asarray(y, dtype=np.int64).reshape(-1)
        zv = z.v
        m = zv.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(zv - m).sum(axis=1, keepdims=True)))[:, 0]
        rows_loss = lse - zv[np.arange(len(zv)), y]
        slack = (1e-15 * (np.abs(lse) + 1)).mean() + 1e-15
        return Bounded(rows_loss.mean(), (2.0 * z.e.max(axis=1)).mean() + slack,
                       (2.0 * z.err.max(axis=1)).mean() + slack, 0.0, z.u)


class BoundedNet:
    """The float64 reference of one time step (the same formulas as
    aiva_cy.reference.ReferenceNet, checked equal in test_bounds.py), each intermediate
    with its error bound for the engine, and the ring buffer of the last outputs.

    precision="bfloat16" rounds the products' operands to bf16 as the engine does (the
    oracle of that mode); precision="int8" quantizes them as the engine does (inference
    only; ``qmax``: the activations' 127, or 63 without VNNI).  u=U64 bounds a float64
    computation (PyTorch's float64 peer)."""

    def __init__(self, weights: Mapping[str, np.ndarray], *, threshold: float = 0.5,
                 refractory_period: int = 2, surrogate_slope: float = 25.0,
                 precision: str = "float32", u: float = U32, qmax: int = 127):
        self.u = u
        self.bf16 = precision == "bfloat16"
        self.int8 = precision == "int8"
        self.qmax = qmax
        self.w = {k: Bounded.rounded_from(weights[k], u) for k in KEYS}
        if self.bf16:                      # the engine's bf16 copies of its float32 masters
            self.wb = {k: exact(bf(weights[k]), u) for k in KEYS}
        if self.int8:                      # its int8 copies, dequantized (exact values)
            self.wb = {k: exact(np.multiply(*quantize_weight(weights[k])), u) for k in KEYS}
        self.threshold = float(threshold)
        self.thr_err = abs(float(np.float32(threshold)) - self.threshold) if u == U32 else 0.0
        self.refractory_period = int(refractory_period)
        self.surrogate_slope = float(surrogate_slope)
        self.ring: deque = deque(maxlen=max(self.refractory_period, 1))

    def reset(self) -> None:
        self.ring.clear()

    def mask(self, batch: int) -> np.ndarray:
        fired = np.zeros((batch, self.w["spiking.weight"].shape[1]), dtype=bool)
        if self.refractory_period > 0:
            for past in self.ring:
                fired |= past
        return ~fired

    # -- forward ---------------------------------------------------------------------
    def remask(self, step: Step, mask) -> Step:
        """The step of the same inputs under another refractory mask (no new products)."""
        ambiguous = mask & (np.abs(step.v.v - self.threshold) <= step.v.err + self.thr_err)
        out = step.raw & mask
        new = Step(**{**step.__dict__, "mask": mask, "out": out, "ambiguous": ambiguous})
        new.z, new.p = self.readout(out)
        return new

    def forward(self, x, *, state=None, mask=None) -> Step:
        """One step without touching the ring.  `state`: the engine's refractory countdown
        after this step (net.get_state()); its output spikes (count == refractory_period)
        must equal the reference's wherever the neuron is not ambiguous, and are then used
        for the readout (and by `push`)."""
        u = self.u
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if self.int8:
            xb = exact(np.multiply(*quantize_rows(x, self.qmax)), u)   # of float32 x: exact
            a = xb.int8_matmul(self.wb["fc1.weight"])
            h = a.tanh()
            hb = h.to_int8(self.qmax)
            v = hb.int8_matmul(self.wb["spiking.weight"])
        elif self.bf16:
            xb = exact(bf(x), u)
            a = xb @ self.wb["fc1.weight"]
            h = a.tanh()
            hb = h.to_bf16()
            v = hb.matmul(self.wb["spiking.weight"], independent=True)
        else:
            xb = Bounded.rounded_from(x, u)
            a = xb.matmul(self.w["fc1.weight"], independent=True)
            h = a.tanh()
            hb = None
            v = h.matmul(self.w["spiking.weight"], independent=True)
        raw = v.v >= self.threshold
        if mask is None:
            mask = self.mask(x.shape[0])
        ambiguous = mask & (np.abs(v.v - self.threshold) <= v.err + self.thr_err)
        out = raw & mask
        resolved = np.zeros_like(ambiguous)
        if state is not None:
            out = self.resolve(out, ambiguous, state)
            resolved, ambiguous = ambiguous, resolved
        step = Step(x=x, xb=xb, a=a, h=h, hb=hb, v=v, raw=raw, mask=mask, out=out,
                    ambiguous=ambiguous, resolved=resolved,
                    readout_weights=self.readout_weights)
        step.z, step.p = self.readout(out)
        return step

    def resolve(self, out, ambiguous, state) -> np.ndarray:
        if self.refractory_period < 1:
            raise ValueError("with refractory_period 0 the state shows no spikes")
        engine_out = np.asarray(state) == self.refractory_period
        bad = (engine_out != out) & ~ambiguous
        assert not bad.any(), (
            f"{int(bad.sum())} spikes differ from the float64 reference where the membrane "
            f"is farther from the threshold than its bound")
        return engine_out

    @property
    def readout_weights(self) -> Bounded:
        return self.wb["fc2.weight"] if (self.bf16 or self.int8) else self.w["fc2.weight"]

    def readout(self, out) -> Tuple[Bounded, Bounded]:
        z = exact(np.asarray(out, dtype=np.float64), self.u) @ self.readout_weights
        return z, softmax(z)

    def push(self, step: Step) -> None:
        if self.refractory_period > 0:
            assert not step.ambiguous.any(), (
                "a spike is ambiguous and the engine's state was not given: the reference "
                "cannot follow the engine's refractory state")
            self.ring.append(step.out.copy())

    def countdown(self, batch: int) -> np.ndarray:
        """The engine's encoding of the ring: steps each neuron still stays silent."""
        left = np.zeros((batch, self.w["spiking.weight"].shape[1]), dtype=np.int32)
        for age, past in enumerate(reversed(self.ring)):
            left = np.where((left == 0) & past, self.refractory_period - age, left)
        return left

    def step(self, x, *, state=None) -> Step:
        s = self.forward(x, state=state)
        self.push(s)
        return s

    # -- training --------------------------------------------------------------------
    def loss_and_grad(self, x, y, *, state=None, mask=None
                      ) -> Tuple[Bounded, Dict[str, Bounded], Step]:
        """docs/contract.md, "Training", with the engine's order of operations; the step
        advances the ring like the engine's loss_and_grad (`mask`: a given refractory
        mask instead of the ring's)."""
        u = self.u
        assert not self.int8, "int8 is for inference: its training steps are float32's"
        s = self.forward(x, state=state, mask=mask)
        assert not s.unresolved_rows.any(), "ambiguous spikes: pass the engine's state"
        self.push(s)
        y = np.asarray(y, dtype=np.int64).reshape(-1)
        B, T = s.z.v.shape
        loss = s.loss(y)
        onehot = np.eye(T)[y]
        inv_b = const(1.0 / B, u)
        # dz = p / B - onehot / B (one more rounding than the CPU engine's order, for the
        # CUDA engine's (p - onehot) / B)
        dz = s.p * inv_b - inv_b * exact(onehot, u)
        dz = widen(dz, u * np.abs(dz.v))
        out = exact(s.out.astype(np.float64), u)
        w2, w3 = (self.wb if self.bf16 else self.w)["spiking.weight"], \
            (self.wb if self.bf16 else self.w)["fc2.weight"]
        dzb = dz.to_bf16() if self.bf16 else dz
        # sums over the batch: rows are computed apart, their errors independent
        g_fc2 = out.T.matmul(dzb, independent=True)
        dv = dzb @ w3.T
        a = const(1.0, u) + const(self.surrogate_slope, u) * abs(s.v - const(self.threshold, u))
        dv = (dv / (a * a)).where(s.mask)
        dvb = dv.to_bf16() if self.bf16 else dv
        g_spiking = (s.hb if self.bf16 else s.h).T.matmul(dvb, independent=True)
        da = (dvb @ w2.T) * (const(1.0, u) - s.h * s.h)
        dab = da.to_bf16() if self.bf16 else da
        g_fc1 = s.xb.T.matmul(dab, independent=True)
        return loss, {"fc1.weight": g_fc1, "spiking.weight": g_spiking, "fc2.weight": g_fc2}, s


def adam_update(w: Bounded, g, m: Bounded, v: Bounded, step: int, *, lr=1e-3,
                betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, u=U32):
    """One Adam step in the engine's float32 order (aiva_cy/_adam.pyx):
    g' = g + wd w; m' = m + (1 - b1)(g' - m); v' = b2 v + (1 - b2) g' g';
    w' = w - [lr / (1 - b1^t)] m' / (sqrt(v') [1 / sqrt(1 - b2^t)] + eps),
    the bracketed constants computed in double and rounded once.  `g` is the gradient the
    engine used (exact); w, m, v carry the bounds of the previous steps."""
    b1, b2 = betas
    g = Bounded.lift(g, u) if not isinstance(g, Bounded) else g
    gi = g + const(weight_decay, u) * w if weight_decay else g
    m = m + const(1.0 - b1, u) * (gi - m)
    v = const(b2, u) * v + const(1.0 - b2, u) * gi * gi
    denom = v.sqrt() * const(1.0 / np.sqrt(1.0 - b2 ** step), u) + const(eps, u)
    w = w - const(lr / (1.0 - b1 ** step), u) * m / denom
    return w, m, v


# ---------------------------------------------------------------------------------------
# inputs away from the threshold
# ---------------------------------------------------------------------------------------
def ambiguous_rows(weights, x, threshold=0.5, precision="float32") -> np.ndarray:
    """Per row of x (..., in): whether some membrane is within its bound of the threshold."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(-1, x.shape[-1])
    net = BoundedNet(weights, threshold=threshold, refractory_period=0, precision=precision)
    return net.forward(flat).ambiguous.any(axis=1).reshape(x.shape[:-1])


def draw_safe(weights, shape, seed, threshold=0.5, precision="float32", tries=50):
    """N(0, 1) inputs of `shape` with every membrane potential farther from the threshold
    than its float32 (or bf16-operand) bound: there any correct engine spikes exactly as
    the float64 reference does.  Redraws the whole array (up to `tries` times)."""
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        x = rng.standard_normal(shape)
        if not ambiguous_rows(weights, x, threshold, precision).any():
            return x
    raise AssertionError(f"could not draw {shape} inputs away from the threshold")


def safe_rows(weights, n, seed, threshold=0.5, precision="float32", steps=None):
    """n rows (or streams of `steps` rows: shape (steps, n, in)) of N(0, 1) inputs, each
    farther from the threshold than its bound at every step, screened one row (stream)
    at a time: at the default size most rows have a membrane within the bound (gamma_2048
    is ~1.2e-4 relative), so whole batches are never all clear."""
    rng = np.random.default_rng(seed)
    n_in = weights["fc1.weight"].shape[0]
    t = 1 if steps is None else steps
    kept = []
    for _ in range(200):
        cand = rng.standard_normal((t, max(4 * n, 16), n_in))
        ok = ~ambiguous_rows(weights, cand, threshold, precision).any(axis=0)
        kept.extend(cand[:, ok, :].transpose(1, 0, 2))
        if len(kept) >= n:
            out = np.stack(kept[:n], axis=1)
            return out[0] if steps is None else out
    raise AssertionError(f"could not draw {n} rows away from the threshold")


# ---------------------------------------------------------------------------------------
# checks, with a record of observed error / bound
# ---------------------------------------------------------------------------------------
RECORD: Dict[str, Tuple[float, float, int]] = {}


def _name(name):
    if name:
        return name
    current = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    return current.split("::", 1)[-1]


def _record(name, observed, bound):
    observed = np.asarray(observed, np.float64)
    bound = np.asarray(bound, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        # entries whose bound is the subnormal floor (a probability of 1e-40) say nothing
        # about how tight the bounds are
        ratio = np.where(bound > 1e-30, observed / bound, 0.0)
    key = _name(name)
    worst, obs, n = RECORD.get(key, (0.0, 0.0, 0))
    RECORD[key] = (max(worst, float(ratio.max(initial=0.0))),
                   max(obs, float(observed.max(initial=0.0))), n + int(ratio.size))


def assert_within(got, want: Bounded, *, engines: int = 1, name: Optional[str] = None,
                  what: str = "value"):
    """|got - want.v| <= engines * want.e elementwise (engines=1 against the float64
    reference; a difference of two engines each within want.e of it: pass the difference
    of the two as got with want.v = 0, or use assert_pair)."""
    got = np.asarray(got, dtype=np.float64)
    diff = np.abs(got - want.v.reshape(got.shape))
    # (1 + 1e-12): the float64 evaluation of the bound itself; a bf16 rounding that went
    # the other way sits exactly on its bound of one step
    bound = engines * want.err.reshape(got.shape) * (1 + 1e-12)
    _record(name, diff, bound)
    bad = ~(diff <= bound)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, diff / np.maximum(bound, 1e-300), 0)),
                             diff.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {diff.size} entries outside the bound; worst at "
            f"{i}: |{got[i]!r} - {want.v.reshape(got.shape)[i]!r}| = {diff[i]:.3g} > "
            f"{bound[i]:.3g}")


def assert_pair(a, b, want: Bounded, *, name=None, what="value", rows=None):
    """Two engines' values of the same quantity, each within want.e of want.v: they differ
    by at most 2 want.e (only in `rows`, a boolean row selection, if given)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    e = want.err.reshape(a.shape)
    if rows is not None:
        a, b, e = a[rows], b[rows], e[rows]
    assert_within(a - b, Bounded(np.zeros_like(a), e, e, 0.0), engines=2, name=name,
                  what=what)


def assert_probs(got, step: Step, *, logits=False, name=None, what=None, max_ambiguous=12):
    """The engine's probabilities (or logits, logits=True) of a step against the reference:
    rows with no ambiguous spike directly; a row with k ambiguous spikes must match the
    reference for one of the 2^k ways an engine may have spiked there.  Returns the number
    of rows checked through that enumeration."""
    got = np.asarray(got, dtype=np.float64).reshape(step.p.v.shape)
    want = step.z if logits else step.p
    what = what or ("z" if logits else "p")
    unresolved = step.unresolved_rows
    clear = ~unresolved
    if clear.any():
        assert_within(got[clear], want[clear], name=name, what=what)
    if not unresolved.any():
        return 0
    w3 = step.readout_weights
    for b in np.flatnonzero(unresolved):
        amb = np.flatnonzero(step.ambiguous[b])
        assert len(amb) <= max_ambiguous, f"row {b}: {len(amb)} ambiguous spikes"
        base = step.out[b].copy()
        base[amb] = False
        patterns = np.array(list(itertools.product([False, True], repeat=len(amb))))
        outs = np.repeat(base[None, :], len(patterns), axis=0)
        outs[:, amb] = patterns
        z = exact(outs.astype(np.float64), w3.u) @ w3
        cand = z if logits else softmax(z)
        ce = cand.err
        ok = (np.abs(got[b][None, :] - cand.v) <= ce).all(axis=1)
        if not ok.any():
            j = np.argmin((np.abs(got[b][None, :] - cand.v) / ce).max(axis=1))
            raise AssertionError(
                f"{what} row {b}: no choice of its {len(amb)} ambiguous spikes matches; the "
                f"closest is off by {(np.abs(got[b] - cand.v[j]) / ce[j]).max():.3g} "
                f"times the bound")
        ratio = (np.abs(got[b][None, :] - cand.v) / ce).max(axis=1)
        j = int(np.argmin(np.where(ok, ratio, np.inf)))     # the best fitting choice
        _record(name, np.abs(got[b] - cand.v[j]), ce[j])
    return int(unresolved.sum())


def argmax_consistent(chosen, p: Bounded) -> np.ndarray:
    """Per row: the engine's chosen tool could be the argmax: its reference probability
    is within the two bounds of the reference maximum."""
    pv, pe = np.atleast_2d(p.v), np.atleast_2d(p.err)
    chosen = np.atleast_1d(np.asarray(chosen)).reshape(-1)
    top = pv.argmax(axis=1)
    rows = np.arange(len(chosen))
    return pv[rows, chosen] + pe[rows, chosen] + pe[rows, top] >= pv[rows, top]


def argmax_sure(p: Bounded) -> np.ndarray:
    """Per row: the reference's argmax is every engine's (it beats each other entry by
    more than the two bounds)."""
    pv, pe = np.atleast_2d(p.v), np.atleast_2d(p.err)
    rows = np.arange(len(pv))
    top = pv.argmax(axis=1)
    lo = pv[rows, top] - pe[rows, top]
    others = np.where(np.arange(pv.shape[1])[None, :] == top[:, None], -np.inf, pv + pe)
    return lo > others.max(axis=1)


def report_lines():
    for name, (worst, obs, n) in sorted(RECORD.items()):
        yield f"{name}: observed/bound max {worst:.3g} (max |error| {obs:.3g}, {n} entries)"
