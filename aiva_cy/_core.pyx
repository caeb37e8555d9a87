# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The CPU engine: owns the weights, the workspaces and the refractory state, and hands raw
pointers to the C core with the GIL released.  It checks sizes (so C never reads or writes
out of bounds) but leaves user-facing validation to :mod:`aiva_cy.net`."""
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uintptr_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

import threading

import numpy as np

from aiva_cy._adam cimport Adam
from aiva_cy._threads cimport threads_enter, threads_leave

# The tables (float32, MKL's for the benchmark's floors, and the reduced-precision provider's)
# are aiva_cy._blas's; blas_info and the precision checks are re-exported here, where they
# were first defined.
from aiva_cy._blas cimport float32_table, lowp_table, mkl_table, open_mkl
from aiva_cy._blas import MKL_EXTRA, blas_info, require_precision, resolve_precision
from aiva_cy._lowp cimport PackedWeight, weight_handle
from aiva_cy import _engine
from aiva_cy._model import (INDEX_LIMIT, PARAM_NAMES, PARAM_TRANSPOSED, PRECISIONS,
                            batch_mismatch, check_int8_sizes, check_precision, check_state,
                            engine_error, max_train_rows, param_shapes)


# ---------------------------------------------------------------------------------------
# Workspace: scratch for one step, grown to the largest batch seen, never shrunk.
# ---------------------------------------------------------------------------------------
cdef inline Py_ssize_t _pad(Py_ssize_t n) noexcept nogil:
    return (n + 15) & ~<Py_ssize_t>15   # 64-byte aligned sub-buffers, for the vector loops


cdef class Workspace:
    def __cinit__(self, int input_size, int hidden_size, int spiking_size, int num_tools):
        self.block = NULL
        self.ws.capacity = 0
        self.ws.bf16 = NULL
        self.input_size = input_size
        self.hidden_size, self.spiking_size, self.num_tools = hidden_size, spiking_size, num_tools

    def __dealloc__(self):
        free(self.block)

    cdef void release(self) noexcept:
        free(self.block)
        self.block = NULL
        self.ws.capacity = 0
        self.ws.bf16 = NULL

    cdef int reserve(self, int batch) except -1:
        if batch <= self.ws.capacity:
            return 0
        cdef Py_ssize_t nh = _pad(<Py_ssize_t>batch * self.hidden_size)
        cdef Py_ssize_t ns = _pad(<Py_ssize_t>batch * self.spiking_size)
        cdef Py_ssize_t nt = _pad(<Py_ssize_t>batch * self.num_tools)
        cdef Py_ssize_t floats = 2 * nh + 3 * ns + 2 * nt
        # The bf16 operands (aiva_workspace.bf16): 2 bytes each, one float per pair; in int8
        # mode the same room holds two row scales (4 halves) and the u8 activations.
        cdef Py_ssize_t halves = _pad(<Py_ssize_t>batch * (self.input_size + self.hidden_size
                                                           + self.spiking_size + self.num_tools
                                                           + 4))
        floats += halves // 2
        # calloc: every float starts as 0.0, so no BLAS call ever meets an uninitialised NaN.
        cdef void *block = calloc(floats * sizeof(float) + ns + 64, 1)
        if block == NULL:
            raise MemoryError(f"cannot allocate a workspace for batch {batch}")
        free(self.block)
        self.block = block
        cdef float *p = <float *>((<uintptr_t>block + 63) & ~<uintptr_t>63)
        self.ws.hidden = p; p += nh
        self.ws.d_hidden = p; p += nh
        self.ws.membrane = p; p += ns
        self.ws.spikes = p; p += ns
        self.ws.d_membrane = p; p += ns
        self.ws.logits = p; p += nt
        self.ws.d_logits = p; p += nt
        self.ws.bf16 = <aiva_bf16 *>p; p += halves // 2
        self.ws.open = <uint8_t *>p
        self.ws.capacity = batch
        return 0


cdef _raise(int code, bint training=False):
    # The words are aiva_cy._model's, shared with the CUDA engine.
    detail = ""
    if code == AIVA_ERR_PROVIDER:
        from aiva_cy import _lowp
        detail = _lowp.last_error()
    raise engine_error(code, training=training, detail=detail)


#: The C core's own copies of aiva_cy._model's facts (its test checks them equal).
C_CONSTANTS = {"GRAD_LIMIT": AIVA_GRAD_LIMIT, "ERR_INPUT_NONFINITE": AIVA_ERR_INPUT_NONFINITE,
               "ERR_OUTPUT_NONFINITE": AIVA_ERR_OUTPUT_NONFINITE, "ERR_LABEL": AIVA_ERR_LABEL,
               "ERR_GRAD_NONFINITE": AIVA_ERR_GRAD_NONFINITE, "ERR_SIZE": AIVA_ERR_SIZE,
               "ERR_HIDDEN_NONFINITE": AIVA_ERR_HIDDEN_NONFINITE,
               "ERR_PROVIDER": AIVA_ERR_PROVIDER}


# ---------------------------------------------------------------------------------------
# Memory per call
# ---------------------------------------------------------------------------------------
# Inference (forward, forward_sequence, predict) runs a large batch in chunks of rows whose
# workspace fits in this many bytes, so its scratch memory is bounded whatever the batch;
# the rows are independent, so the results are the same.  A training step needs the whole
# batch at once (the gradients sum over it): its workspace grows with the batch and is
# freed after the call when it is larger than this.
WORKSPACE_LIMIT = 16 << 20
# Free workspaces kept for predict_proba between calls (one per concurrent thread is used).
POOL_MAX = 4
# The C core indexes a step's arrays with 32-bit ints (see aiva_cy._model.INDEX_LIMIT).
_INT_LIMIT = INDEX_LIMIT


def _row_bytes(int hidden_size, int spiking_size, int num_tools, int input_size=0):
    """Workspace bytes per row of a batch (see Workspace.reserve), the bf16 (or int8)
    operands' 2 * (input + hidden + spiking + tools + 4) included when input_size is given."""
    return (4 * (2 * hidden_size + 3 * spiking_size + 2 * num_tools) + spiking_size
            + 2 * (input_size + hidden_size + spiking_size + num_tools + 4) * (input_size > 0))


# ---------------------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------------------
# PARAM_NAMES, PARAM_TRANSPOSED (fc1 and spiking kept as (out, in): see src_c/aiva_core.h),
# PRECISIONS and batch_mismatch are aiva_cy._model's, imported above and importable from here.


def _effective_precision(str precision, int input_size, int hidden_size):
    """The precision an engine asked for `precision` runs ("auto" resolved), after checking
    that it can run here (the errors of aiva_cy._model and aiva_cy._blas)."""
    check_precision(precision)
    effective = resolve_precision(precision)
    require_precision(effective)
    if effective == "int8":
        check_int8_sizes(input_size, hidden_size)
    return effective


def _quantize_weights(fc1_t, spiking_t, fc2):
    """int8 copies of the engine-layout weights, per output channel (rows of fc1_t and
    spiking_t, columns of fc2): (fc1_t_q, spiking_t_q, fc2_q, their three scales, the row
    sums of fc1_t_q and spiking_t_q)."""
    qs, scales, sums = [], [], []
    cdef const float[:, ::1] w
    cdef int8_t[:, ::1] q
    cdef float[::1] scale
    cdef int32_t[::1] total
    cdef Py_ssize_t n, length, step, vstride
    for a, by_rows in ((fc1_t, True), (spiking_t, True), (fc2, False)):
        w = a
        out = np.empty(a.shape, np.int8)
        q = out
        rows, cols = a.shape
        n, length = (rows, cols) if by_rows else (cols, rows)
        step, vstride = (1, cols) if by_rows else (cols, 1)
        sc = np.empty(n, np.float32)
        sm = np.empty(n, np.int32)
        scale, total = sc, sm
        with nogil:
            aiva_quantize_s8(&w[0, 0], n, length, step, vstride, &q[0, 0], &scale[0],
                             &total[0])
        qs.append(out)
        scales.append(sc)
        sums.append(sm)
    return (qs[0], qs[1], qs[2], scales[0], scales[1], scales[2], sums[0], sums[1])


def _round_bf16(w):
    """A float32 array rounded to bfloat16 (uint16 bits), same shape."""
    cdef const float[::1] src = w.reshape(-1)
    out = np.empty(w.shape, np.uint16)
    cdef uint16_t[::1] dst = out.reshape(-1)
    with nogil:
        aiva_round_bf16(&src[0], src.shape[0], &dst[0])
    return out


cdef object _pack_weight(aiva_blas *table, w):
    """MKL's pack of an engine-layout float32 weight (n, k) for x @ w^T, 64-byte aligned;
    None where the library cannot pack."""
    cdef int n = w.shape[0], k = w.shape[1]
    cdef const float[:, ::1] src = w
    cdef size_t size = aiva_pack(table, n, k, &src[0, 0], NULL)
    if size == 0:
        return None
    buf = np.empty(size + 64, np.uint8)
    cdef uint8_t[::1] raw = buf
    cdef size_t offset = (64 - <uintptr_t>&raw[0] % 64) % 64
    packed = buf[offset:offset + size]
    cdef uint8_t[::1] dest = packed
    with nogil:
        aiva_pack(table, n, k, &src[0, 0], &dest[0])
    return packed


def _adoptable(a, shape):
    return (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == shape
            and a.flags.c_contiguous and a.flags.writeable and a.flags.aligned)


cdef class Engine:
    """One network's weights, refractory state and scratch, on the CPU."""
    cdef aiva_net net
    cdef readonly int input_size, hidden_size, spiking_size, num_tools, refractory_period
    cdef readonly float threshold, surrogate_slope
    cdef object _weights                        # (fc1_t, spiking_t, fc2): float32, engine
                                                # layout, swapped in as one tuple
    cdef object g_fc1_t, g_spiking_t, g_fc2     # allocated by the first backward
    cdef readonly list grad_bounds              # the last backward's bounds on |gradient|
    cdef object refractory_left                 # int32 (B, spiking), or None: empty state
    cdef readonly str precision                 # as asked: one of PRECISIONS
    cdef readonly str effective_precision       # what runs ("auto" resolved)
    cdef object _bf16                           # bfloat16: the weights rounded (uint16),
                                                # same layouts; None in float32
    cdef bint _int8                             # int8 inference (training: float32)
    cdef object _q                              # (version, _quantize_weights(...)) or None
    cdef long _version                          # bumped whenever a weight changes
    cdef object _packed                         # (version, fc1 pack, spiking pack) or None
    cdef object _pack_lock
    cdef object _mkl_f32_packs                  # (version, fc1, spiking): blas_products only
    cdef Workspace ws                           # for the stateful calls, under _lock
    cdef list _pool                             # free workspaces for predict (thread-safe)
    cdef object _lock
    cdef readonly int max_train_batch           # rows one (unchunked) training step takes

    def __init__(self, int input_size, int hidden_size, int spiking_size, int num_tools,
                 float threshold, int refractory_period, float surrogate_slope, weights,
                 bint copy=True, str precision="float32"):
        # copy=False adopts arrays that already have the engine's layout (a transposed view of
        # a C-contiguous float32 array for fc1 and spiking, C-contiguous fc2) instead of
        # copying them: a fresh net's 12.7 MB of weights are then written only once.
        if min(input_size, hidden_size, spiking_size, num_tools) < 1 or refractory_period < 0:
            raise ValueError("sizes must be >= 1 and refractory_period >= 0")
        effective = _effective_precision(precision, input_size, hidden_size)
        self._lock = threading.Lock()
        self._pack_lock = threading.Lock()
        self.precision, self.effective_precision = precision, effective
        self._bf16 = self._packed = self._mkl_f32_packs = self._q = None
        self._version = 0
        self.net.bf16 = effective == "bfloat16"
        # The engine's own net is the training one: int8 only in _inference_net's copies.
        self._int8 = effective == "int8"
        self.net.int8 = 0
        self.net.fc1_packed = self.net.spiking_packed = NULL
        self.input_size, self.hidden_size = input_size, hidden_size
        self.spiking_size, self.num_tools = spiking_size, num_tools
        self.threshold, self.refractory_period = threshold, refractory_period
        self.surrogate_slope = surrogate_slope
        self.net.input_size, self.net.hidden_size = input_size, hidden_size
        self.net.spiking_size, self.net.num_tools = spiking_size, num_tools
        self.net.threshold, self.net.refractory_period = threshold, refractory_period
        self.net.surrogate_slope = surrogate_slope
        shapes = param_shapes(input_size, hidden_size, spiking_size, num_tools)
        layout = None if copy else [
            (weights[k].T, shapes[k][::-1]) if t else (weights[k], shapes[k])
            for k, t in zip(PARAM_NAMES, PARAM_TRANSPOSED)]
        if layout is not None and all(_adoptable(a, shape) for a, shape in layout):
            self._install(layout[0][0], layout[1][0], layout[2][0])
        else:
            self.set_weights(weights)
        self.g_fc1_t = self.g_spiking_t = self.g_fc2 = None
        self.refractory_left = None
        self.ws = Workspace(input_size, hidden_size, spiking_size, num_tools)
        self._pool = []
        self.max_train_batch = max_train_rows(hidden_size, spiking_size, num_tools)

    @property
    def pooled_workspaces(self):
        """Free workspaces kept for predict (at most POOL_MAX)."""
        return len(self._pool)

    # -- weights ------------------------------------------------------------------------
    def param_shapes(self):
        """Engine-layout shapes, in PARAM_NAMES order."""
        return tuple(w.shape for w in self._weights)

    def params(self):
        """The live engine-layout arrays (no copies): for the optimizer."""
        return list(self._weights)

    def get_weights(self):
        """state_dict-layout copies (of one generation of weights)."""
        return _state_dict_layout(self._weights)

    def set_weights(self, weights):
        """Copy state_dict-layout arrays in.  Shapes are checked here; finiteness and dtypes
        by the caller.  The copies are new arrays, swapped in as one under the lock, so a
        predict running meanwhile in another thread sees the old weights or the new ones,
        never a mix."""
        want = param_shapes(self.input_size, self.hidden_size, self.spiking_size,
                            self.num_tools)
        for k, shape in want.items():
            if weights[k].shape != shape:
                raise ValueError(f"{k} must have shape {shape}, got {weights[k].shape}")
        fc1_t, spiking_t, fc2 = (np.array(weights[k].T if t else weights[k], dtype=np.float32,
                                          order="C")
                                 for k, t in zip(PARAM_NAMES, PARAM_TRANSPOSED))
        with self._lock:
            self._install(fc1_t, spiking_t, fc2)

    cdef _install(self, fc1_t, spiking_t, fc2):
        cdef float[:, ::1] a = fc1_t, b = spiking_t, c = fc2
        bf16 = tuple(_round_bf16(w) for w in (fc1_t, spiking_t, fc2)) if self.net.bf16 else None
        self.net.fc1_t, self.net.spiking_t, self.net.fc2 = &a[0, 0], &b[0, 0], &c[0, 0]
        self._set_bf16_pointers(&self.net, bf16)
        self._weights, self._bf16 = (fc1_t, spiking_t, fc2), bf16
        self._version += 1                     # the packs, if any, are now stale

    cdef _set_bf16_pointers(self, aiva_net *net, bf16):
        cdef const uint16_t[:, ::1] a, b, c
        if bf16 is None:
            net.fc1_t_bf16 = net.spiking_t_bf16 = net.fc2_bf16 = NULL
            return
        a, b, c = bf16
        net.fc1_t_bf16, net.spiking_t_bf16, net.fc2_bf16 = &a[0, 0], &b[0, 0], &c[0, 0]

    cdef aiva_blas *_table(self):
        return lowp_table() if self.net.bf16 else float32_table()

    def set_precision(self, str precision):
        """Switch the products' precision; the float32 master weights are kept."""
        effective = _effective_precision(precision, self.input_size, self.hidden_size)
        with self._lock:
            self.precision, self.effective_precision = precision, effective
            self.net.bf16 = effective == "bfloat16"
            self._int8 = effective == "int8"
            fc1_t, spiking_t, fc2 = self._weights
            self._install(fc1_t, spiking_t, fc2)

    def quantized(self):
        """int8 nets: the quantized copies inference runs on (re-made from the float32 masters
        after any change), as a dict of engine-layout arrays; None in other precisions."""
        if not self._int8:
            return None
        q = self._quantized(self._version, self._weights)
        names = ("fc1_t_q", "spiking_t_q", "fc2_q", "fc1_scale", "spiking_scale", "fc2_scale",
                 "fc1_sum", "spiking_sum")
        return dict(zip(names, q[1:]))

    cdef object _quantized(self, long version, weights):
        cached = self._q
        if cached is not None and cached[0] == version:
            return cached
        with self._pack_lock:
            cached = self._q
            if cached is not None and cached[0] == version:
                return cached
            cached = (version,) + _quantize_weights(*weights)
            if self._version == version:
                self._q = cached
            return cached

    cdef object _inference_net(self, aiva_net *net):
        """Fill net with one generation of weights (set_weights may swap in another meanwhile)
        and their packs, packed now if they are stale; returns what must stay alive."""
        net[0] = self.net
        weights, bf16, version = self._weights, self._bf16, self._version
        cdef float[:, ::1] a, b, c
        a, b, c = weights
        net.fc1_t, net.spiking_t, net.fc2 = &a[0, 0], &b[0, 0], &c[0, 0]
        # The precision of this generation, not self.net's: set_precision may be between
        # switching the flag and installing the copies (a predict does not take the lock).
        net.bf16 = bf16 is not None
        self._set_bf16_pointers(net, bf16)
        q = self._quantized(version, weights) if self._int8 else None
        self._set_int8_pointers(net, q)
        packed = self._packed
        if packed is None or packed[0] != version:
            packed = self._pack(version, weights, bf16, q)
        cdef const uint8_t[::1] p1, p2
        if packed is not None and isinstance(packed[1], PackedWeight):
            net.fc1_packed = weight_handle(packed[1])
            net.spiking_packed = weight_handle(packed[2])
        elif packed is not None and packed[1] is not None:
            p1, p2 = packed[1], packed[2]
            net.fc1_packed, net.spiking_packed = &p1[0], &p2[0]
        else:
            net.fc1_packed = net.spiking_packed = NULL
        return (weights, bf16, q, packed)

    cdef _set_int8_pointers(self, aiva_net *net, q):
        cdef const int8_t[:, ::1] a, b, c
        cdef const float[::1] s1, s2, s3
        cdef const int32_t[::1] m1, m2
        net.int8 = q is not None
        if q is None:
            return
        from aiva_cy import _lowp
        net.act_qmax, net.act_zero = _lowp.quantization()
        a, b, c, s1, s2, s3, m1, m2 = q[1:]
        net.fc1_t_q, net.spiking_t_q, net.fc2_q = &a[0, 0], &b[0, 0], &c[0, 0]
        net.fc1_scale, net.spiking_scale, net.fc2_scale = &s1[0], &s2[0], &s3[0]
        net.fc1_sum, net.spiking_sum = &m1[0], &m2[0]

    cdef object _pack(self, long version, weights, bf16, q):
        # Packed on the first inference call after the weights change (not by every train
        # step: fit runs many steps between inferences).  A pack made from weights that
        # changed meanwhile is used by this call only, never stored.
        with self._pack_lock:
            packed = self._packed
            if packed is not None and packed[0] == version:
                return packed
            # This generation's precision, not self.net's (see _inference_net).  Reduced
            # precision: the provider's handles, packed by the first product that uses them
            # (in the layout its primitive prefers); float32: MKL's packs where MKL is the
            # float32 BLAS.
            if bf16 is not None or q is not None:
                kind = "int8" if q is not None else "bf16"
                I, H, S = self.input_size, self.hidden_size, self.spiking_size
                packed = (version, PackedWeight(kind, 1, H, I, I), PackedWeight(kind, 1, S, H, H))
            else:
                p1 = _pack_weight(float32_table(), weights[0])
                p2 = None if p1 is None else _pack_weight(float32_table(), weights[1])
                packed = (version, p1 if p2 is not None else None, p2)
            if self._version == version:
                self._packed = packed
            return packed

    def gradients(self):
        """state_dict-layout copies of the last computed gradients."""
        if self.g_fc1_t is None:
            return None
        return _state_dict_layout((self.g_fc1_t, self.g_spiking_t, self.g_fc2))

    # -- state --------------------------------------------------------------------------
    @property
    def state_batch_size(self):
        return None if self.refractory_left is None else self.refractory_left.shape[0]

    def reset_state(self):
        with self._lock:
            self.refractory_left = None

    def get_state(self):
        with self._lock:
            return None if self.refractory_left is None else self.refractory_left.copy()

    def set_state(self, state):
        if state is None:
            with self._lock:
                self.refractory_left = None
            return
        a = check_state(state, self.spiking_size, self.refractory_period, "refractory state")
        with self._lock:
            self.refractory_left = a

    cdef object _state_for(self, int batch):
        # The ring buffer follows the batch: the first call after a reset gets a new, empty
        # (all open) one.  It is stored by the caller only once the step succeeds, so a
        # failed first step leaves the state empty.
        if self.refractory_left is None:
            return np.zeros((batch, self.spiking_size), np.int32)
        if self.refractory_left.shape[0] != batch:
            raise batch_mismatch(batch, self.refractory_left.shape[0])
        return self.refractory_left

    cdef _check_x(self, const float[:, ::1] x, bint training=False, str name="x"):
        if x.shape[1] != self.input_size or x.shape[0] < 1:
            raise ValueError(f"{name} must have shape (batch >= 1, {self.input_size}), got "
                             f"({x.shape[0]}, {x.shape[1]})")
        # A misaligned float pointer is undefined behaviour in C (net.py copies such input).
        if (<uintptr_t>&x[0, 0]) % sizeof(float) != 0:
            raise ValueError(f"{name} must be an aligned float32 array (this one starts at an "
                             f"odd byte address); pass a copy, np.array({name})")
        if training and x.shape[0] > self.max_train_batch:
            raise ValueError(f"{name} has {x.shape[0]} rows; a training step of this net takes "
                             f"at most {self.max_train_batch} (the C core indexes with 32-bit "
                             f"ints): split the batch")
        if x.shape[0] > 2**31 - 1:
            raise ValueError(f"{name} has {x.shape[0]} rows; at most {2**31 - 1} per call")

    cdef int _chunk_rows(self) except -1:
        cdef Py_ssize_t rows = WORKSPACE_LIMIT // _row_bytes(self.hidden_size, self.spiking_size,
                                                            self.num_tools, self.input_size)
        rows = min(rows, _INT_LIMIT // max(self.hidden_size, self.spiking_size, self.num_tools))
        return <int>max(rows, 1)

    cdef void _release_if_large(self, Workspace ws) noexcept:
        if ws.ws.capacity > self._chunk_rows():
            ws.release()

    # -- one step -----------------------------------------------------------------------
    cdef int _run(self, const aiva_net *net, const float *x, Py_ssize_t batch, int32_t *state,
                  Workspace ws, Py_ssize_t chunk_rows, float *probs,
                  float *logits) noexcept nogil:
        """One step of `batch` rows in chunks of at most chunk_rows (<= the workspace's
        capacity); state (B, spiking) is
        read and, where the step succeeds, advanced in place (callers pass a trial copy when
        a failure must leave it untouched).  Returns AIVA_OK or the first error.

        The chunks are of equal size (within one row), not full ones and a remainder: the
        BLAS rounds a product of a few rows differently from one of many (measured with
        OpenBLAS: under 64 rows), so a short last chunk would change its rows' results."""
        cdef Py_ssize_t chunks = (batch + chunk_rows - 1) // chunk_rows
        cdef Py_ssize_t base = batch // chunks, extra = batch % chunks, k, n, start = 0
        cdef Py_ssize_t I = net.input_size, S = net.spiking_size, T = net.num_tools
        cdef int code = AIVA_OK
        # This call's share of the BLAS threads (_threads.pyx); oneDNN's pool follows it.
        threads_enter(False)
        for k in range(chunks):
            n = base + (1 if k < extra else 0)
            code = aiva_forward(lowp_table() if net.bf16 or net.int8 else float32_table(), net,
                                x + start * I, <int>n,
                                NULL if state == NULL else state + start * S, &ws.ws,
                                probs + start * T)
            if code != AIVA_OK:
                break
            if state != NULL:
                aiva_commit_state(net, &ws.ws, <int>n, state + start * S)
            if logits != NULL:
                memcpy(logits + start * T, ws.ws.logits, <size_t>n * <size_t>T * sizeof(float))
            start += n
        threads_leave(False)
        return code

    cdef Py_ssize_t _reserve_chunk(self, Workspace ws, Py_ssize_t batch) except -1:
        """Reserve the workspace for one chunk of a `batch`-row call; returns the chunk rows."""
        cdef Py_ssize_t rows = min(batch, <Py_ssize_t>self._chunk_rows())
        ws.reserve(<int>rows)
        return rows

    def forward(self, const float[:, ::1] x):
        """One stateful step: probabilities (B, tools); the state advances on success."""
        self._check_x(x)
        cdef Py_ssize_t batch = x.shape[0]
        cdef int code = AIVA_OK
        probs = np.empty((batch, self.num_tools), np.float32)
        cdef float[:, ::1] p = probs
        cdef int32_t[:, ::1] refr
        cdef aiva_net net
        cdef Py_ssize_t rows
        with self._lock:
            keep = self._inference_net(&net)
            state = self._state_for(batch)
            rows = self._reserve_chunk(self.ws, batch)
            # One chunk commits in place only on success; several chunks work on a copy,
            # so that a failure in a later chunk leaves the state untouched.
            trial = state if batch <= rows else state.copy()
            refr = trial
            with nogil:
                code = self._run(&net, &x[0, 0], batch, &refr[0, 0], self.ws, rows,
                                 &p[0, 0], NULL)
            if code == AIVA_OK:
                self.refractory_left = trial
        if code != AIVA_OK:
            _raise(code)
        return probs

    def forward_sequence(self, const float[:, :, ::1] xs):
        """T stateful steps; the state advances only if every step succeeds.

        A membrane does not depend on the state, so the fc1 and spiking products run over
        all the steps of a chunk at once (chunks of whole steps, bounded by WORKSPACE_LIMIT);
        only the threshold and the refractory countdown go step by step (in C)."""
        cdef Py_ssize_t steps = xs.shape[0], batch = xs.shape[1], t = 0, n
        cdef int code = AIVA_OK
        if steps < 1:
            raise ValueError("xs must hold at least one step")
        self._check_x(xs[0], False, "xs")
        probs = np.empty((steps, batch, self.num_tools), np.float32)
        cdef float[:, :, ::1] p = probs
        cdef int32_t[:, ::1] trial
        cdef aiva_net net
        cdef Py_ssize_t rows = self._chunk_rows(), chunk_steps
        cdef aiva_blas *table
        with self._lock:
            keep = self._inference_net(&net)
            table = lowp_table() if net.bf16 or net.int8 else float32_table()
            trial = self._state_for(batch).copy()
            if batch <= rows:
                chunk_steps = min(steps, max(1, rows // batch))
                self.ws.reserve(<int>(chunk_steps * batch))
                with nogil:
                    threads_enter(False)   # this call's share of the BLAS threads
                    while t < steps:
                        n = min(chunk_steps, steps - t)
                        code = aiva_forward_sequence(table, &net, &xs[t, 0, 0], <int>n,
                                                     <int>batch, &trial[0, 0], &self.ws.ws,
                                                     &p[t, 0, 0])
                        if code != AIVA_OK:
                            break
                        t += n
                    threads_leave(False)
            else:
                # A single step wider than a chunk: steps one by one, each in row chunks.
                rows = self._reserve_chunk(self.ws, batch)
                with nogil:
                    for t in range(steps):
                        code = self._run(&net, &xs[t, 0, 0], batch, &trial[0, 0], self.ws,
                                         rows, &p[t, 0, 0], NULL)
                        if code != AIVA_OK:
                            break
            self._release_if_large(self.ws)
            if code == AIVA_OK:
                self.refractory_left = trial.base
        if code != AIVA_OK:
            _raise(code)
        return probs

    cdef int _sequence_backward(self, const float[:, :, ::1] xs, const int64_t[::1] y,
                                const float[::1] weight, double *loss) except -1:
        # Caller holds _lock.  An episode from an empty state, forward over all its rows
        # and the weighted backward; fills the gradient buffers and changes no state.
        # Returns how many weighted rows the forward classified right.
        cdef Py_ssize_t steps = xs.shape[0], batch = xs.shape[1]
        cdef Py_ssize_t rows = steps * batch
        cdef int code
        if steps < 1:
            raise ValueError("xs must hold at least one step")
        self._check_x(xs[0], False, "xs")
        if rows > self.max_train_batch:
            raise ValueError(f"xs has {steps} x {batch} = {rows} rows; an episode batch of "
                             f"this net takes at most {self.max_train_batch}: use fewer "
                             f"episodes per batch")
        if y.shape[0] != rows or weight.shape[0] != rows:
            raise ValueError(f"ys and the weights need {rows} entries (steps x batch), got "
                             f"{y.shape[0]} and {weight.shape[0]}")
        if (<uintptr_t>&y[0]) % sizeof(int64_t) != 0 or (<uintptr_t>&weight[0]) % sizeof(float):
            raise ValueError("ys and the weights must be aligned arrays; pass copies")
        if self.g_fc1_t is None:
            self.g_fc1_t, self.g_spiking_t, self.g_fc2 = (np.zeros_like(w) for w in self._weights)
        cdef float[:, ::1] g1 = self.g_fc1_t, g2 = self.g_spiking_t, g3 = self.g_fc2
        cdef aiva_grads grads
        grads.fc1_t, grads.spiking_t, grads.fc2 = &g1[0, 0], &g2[0, 0], &g3[0, 0]
        cdef float[::1] scratch_probs = np.empty(rows * self.num_tools, np.float32)
        cdef int32_t[:, ::1] empty = np.zeros((batch, self.spiking_size), np.int32)
        self.ws.reserve(<int>rows)
        cdef aiva_blas *table = self._table()
        with nogil:
            threads_enter(False)
            code = aiva_forward_sequence(table, &self.net, &xs[0, 0, 0], <int>steps,
                                         <int>batch, &empty[0, 0], &self.ws.ws,
                                         &scratch_probs[0])
            if code == AIVA_OK:
                code = aiva_backward_weighted(table, &self.net, &xs[0, 0, 0], &y[0],
                                              &weight[0], <int>rows, &self.ws.ws, &grads, loss)
            threads_leave(False)
        if code != AIVA_OK:
            _raise(code, True)
        self.grad_bounds = [grads.bound_fc1_t, grads.bound_spiking_t, grads.bound_fc2]
        cdef Py_ssize_t b
        cdef int t, best, correct = 0
        cdef int T = self.num_tools
        for b in range(rows):
            if weight[b] == 0:
                continue
            best = 0
            for t in range(1, T):
                if scratch_probs[b * T + t] > scratch_probs[b * T + best]:
                    best = t
            correct += best == y[b]
        return correct

    def loss_and_grad_sequence(self, const float[:, :, ::1] xs, const int64_t[::1] y,
                               const float[::1] weight):
        """An episode (time-major xs (T, B, in), labels and row weights flattened to T * B,
        weights normalised by the caller) from an empty state: returns the weighted loss;
        gradients via gradients().  The net's stream state is not touched."""
        cdef double loss = 0.0
        with self._lock:
            try:
                self._sequence_backward(xs, y, weight, &loss)
            finally:
                self._release_if_large(self.ws)
        return loss

    def train_sequence(self, const float[:, :, ::1] xs, const int64_t[::1] y,
                       const float[::1] weight, Adam optimizer):
        """loss_and_grad_sequence, then the Adam update; on any error nothing changes.
        Returns (loss, weighted rows classified right)."""
        cdef double loss = 0.0
        cdef int correct = 0
        with self._lock:
            try:
                correct = self._sequence_backward(xs, y, weight, &loss)
                optimizer.update(self.params(), [self.g_fc1_t, self.g_spiking_t, self.g_fc2],
                                 None if self._bf16 is None else list(self._bf16),
                                 self.grad_bounds)
                self._version += 1
            finally:
                self._release_if_large(self.ws)
        return loss, correct

    def predict(self, const float[:, ::1] x, bint with_logits=False):
        """One step from an empty state; touches no state, safe from many threads at once.
        Returns probabilities (B, tools), or (probabilities, logits) with_logits."""
        self._check_x(x)
        cdef Py_ssize_t batch = x.shape[0]
        cdef int code
        probs = np.empty((batch, self.num_tools), np.float32)
        cdef float[:, ::1] p = probs
        cdef float[:, ::1] zl
        cdef float *logits_ptr = NULL
        if with_logits:
            logits = np.empty((batch, self.num_tools), np.float32)
            zl = logits
            logits_ptr = &zl[0, 0]
        cdef Workspace ws
        cdef Py_ssize_t rows
        # One generation of weights (and its precision and packs), held for the call:
        # set_weights or set_precision may swap in another.
        cdef aiva_net net
        keep = self._inference_net(&net)
        try:
            ws = self._pool.pop()   # list.pop is atomic under the GIL
        except IndexError:
            ws = Workspace(self.input_size, self.hidden_size, self.spiking_size, self.num_tools)
        try:
            rows = self._reserve_chunk(ws, batch)
            with nogil:
                code = self._run(&net, &x[0, 0], batch, NULL, ws, rows, &p[0, 0], logits_ptr)
        finally:
            if len(self._pool) < POOL_MAX:
                self._pool.append(ws)
        if code != AIVA_OK:
            _raise(code)
        return (probs, logits) if with_logits else probs

    cdef int _forward_backward(self, const float[:, ::1] x, const int64_t[::1] y,
                               int32_t *refr, double *loss) except -1:
        # Caller holds _lock.  Fills the gradient buffers; changes no state.  Returns how
        # many rows the step's probabilities classified right (for fit's accuracy).
        cdef int batch = x.shape[0], code
        if y.shape[0] != batch:
            raise ValueError(f"y has {y.shape[0]} labels for a batch of {batch}")
        if (<uintptr_t>&y[0]) % sizeof(int64_t) != 0:
            raise ValueError("y must be an aligned int64 array (this one starts at an odd byte "
                             "address); pass a copy, np.array(y)")
        if self.g_fc1_t is None:
            self.g_fc1_t, self.g_spiking_t, self.g_fc2 = (np.zeros_like(w) for w in self._weights)
        cdef float[:, ::1] g1 = self.g_fc1_t, g2 = self.g_spiking_t, g3 = self.g_fc2
        cdef aiva_grads grads
        grads.fc1_t, grads.spiking_t, grads.fc2 = &g1[0, 0], &g2[0, 0], &g3[0, 0]
        cdef float[::1] scratch_probs = np.empty(batch * self.num_tools, np.float32)
        self.ws.reserve(batch)
        cdef aiva_blas *table = self._table()
        with nogil:
            threads_enter(False)
            code = aiva_forward(table, &self.net, &x[0, 0], batch, refr, &self.ws.ws,
                                &scratch_probs[0])
            if code == AIVA_OK:
                code = aiva_backward(table, &self.net, &x[0, 0], &y[0], batch, &self.ws.ws,
                                     &grads, loss)
            threads_leave(False)
        if code != AIVA_OK:
            _raise(code, True)
        self.grad_bounds = [grads.bound_fc1_t, grads.bound_spiking_t, grads.bound_fc2]
        cdef int b, t, best, correct = 0
        cdef int T = self.num_tools
        for b in range(batch):
            best = 0
            for t in range(1, T):
                if scratch_probs[b * T + t] > scratch_probs[b * T + best]:
                    best = t
            correct += best == y[b]
        return correct

    def loss_and_grad(self, const float[:, ::1] x, const int64_t[::1] y):
        """One stateful step with backward; returns the loss (gradients via gradients())."""
        self._check_x(x, True)
        cdef double loss = 0.0
        cdef int32_t[:, ::1] refr
        with self._lock:
            state = self._state_for(x.shape[0])
            refr = state
            try:
                self._forward_backward(x, y, &refr[0, 0], &loss)
                with nogil:
                    aiva_commit_state(&self.net, &self.ws.ws, x.shape[0], &refr[0, 0])
            finally:
                self._release_if_large(self.ws)
            self.refractory_left = state
        return loss

    def train_step(self, const float[:, ::1] x, const int64_t[::1] y, Adam optimizer):
        """loss_and_grad, then the Adam update; on any error nothing changes.
        Returns (loss, number of rows classified right by this step's forward)."""
        self._check_x(x, True)
        cdef double loss = 0.0
        cdef int32_t[:, ::1] refr
        cdef int correct = 0
        with self._lock:
            state = self._state_for(x.shape[0])
            refr = state
            try:
                correct = self._forward_backward(x, y, &refr[0, 0], &loss)
                # In bfloat16, Adam's fused pass also writes the rounded copies the products
                # read, as it updates each float32 master weight.
                optimizer.update(self.params(), [self.g_fc1_t, self.g_spiking_t, self.g_fc2],
                                 None if self._bf16 is None else list(self._bf16),
                                 self.grad_bounds)
                self._version += 1
                with nogil:
                    aiva_commit_state(&self.net, &self.ws.ws, x.shape[0], &refr[0, 0])
            finally:
                self._release_if_large(self.ws)
            self.refractory_left = state
        return loss, correct

    def blas_products(self, const float[:, ::1] x, bint packed=True, str provider=None):
        """The three BLAS products of a forward step alone (the benchmark's floor), in the
        net's precision (bfloat16: with rounding x and h; int8: with quantizing x and h and
        dequantizing, which every such step does), with the inference packs where the library
        makes them (packed=False: without).  provider="mkl" runs a float32 net's products on
        MKL whatever the float32 BLAS is (the benchmark's MKL floors)."""
        self._check_x(x, True)
        cdef int batch = x.shape[0]
        cdef aiva_net net
        cdef aiva_blas *table
        cdef const uint8_t[::1] p1, p2
        if provider not in (None, "mkl"):
            raise ValueError(f"provider must be None or 'mkl', got {provider!r}")
        if provider == "mkl":
            open_mkl()
        with self._lock:
            keep = self._inference_net(&net)
            table = lowp_table() if net.bf16 or net.int8 else float32_table()
            if provider == "mkl" and not (net.bf16 or net.int8):
                table = mkl_table()
                net.fc1_packed = net.spiking_packed = NULL
                if packed:
                    packs = self._mkl_f32_packs
                    if packs is None or packs[0] != self._version:
                        packs = (self._version, _pack_weight(mkl_table(), self._weights[0]),
                                 _pack_weight(mkl_table(), self._weights[1]))
                        self._mkl_f32_packs = packs
                    p1, p2 = packs[1], packs[2]
                    net.fc1_packed, net.spiking_packed = &p1[0], &p2[0]
            if not packed:
                net.fc1_packed = net.spiking_packed = NULL
            self.ws.reserve(batch)
            with nogil:
                aiva_blas_products(table, &net, &x[0, 0], batch, &self.ws.ws)

    def packed(self):
        """Whether inference runs on pre-packed weights (packing them now if stale)."""
        cdef aiva_net net
        self._inference_net(&net)
        return net.fc1_packed != NULL

    # -- the rest of the engine contract (aiva_cy._engine): input, devices, optimizer --
    @property
    def device(self):
        return "cpu"

    def as_x(self, x, name="x"):
        """(B, input_size) float32, C order, aligned, and whether x was 1-D; NaN and Inf
        are left to the C core, which checks them in the pass that reads x."""
        return _engine.host_x(x, name, self.input_size)

    def as_xs(self, xs, name="xs"):
        """(T, B, input_size) float32, C order, checked finite; and whether xs was 2-D."""
        return _engine.host_xs(xs, name, self.input_size)

    def as_y(self, y, int batch, name="y"):
        """int64 labels (batch,), aligned, checked in [0, num_tools)."""
        return _engine.host_y(y, batch, name, self.num_tools)

    def to_device(self, arr):
        """The host is this engine's device: the same array."""
        return arr

    def to_host(self, arr):
        return np.asarray(arr)

    def make_optimizer(self, **hyper):
        """Adam over params(), told which of them are kept transposed."""
        return Adam(self.param_shapes(), names=PARAM_NAMES, transposed=PARAM_TRANSPOSED,
                    **hyper)

    def to(self, device, optimizer):
        """(engine, optimizer) on device: these two on "cpu", CUDA copies otherwise."""
        return _engine.cpu_engine_to(self, device, optimizer)

    def __reduce__(self):
        return (_rebuild_engine,
                ((self.input_size, self.hidden_size, self.spiking_size, self.num_tools,
                  self.threshold, self.refractory_period, self.surrogate_slope),
                 self.get_weights(), self.get_state(), self.precision))


def _state_dict_layout(arrays):
    """Copies of engine-layout arrays (weights or gradients) in the state_dict's layout."""
    return {k: np.ascontiguousarray(a.T) if t else a.copy()
            for k, a, t in zip(PARAM_NAMES, arrays, PARAM_TRANSPOSED)}


def _rebuild_engine(config, weights, state, precision="float32"):
    engine = Engine(*config, weights, precision=precision)
    engine.set_state(state)
    return engine
