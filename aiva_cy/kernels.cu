// kernels.cu — the CUDA engine's fused kernels (aiva_cy/_cuda.py compiles them with NVRTC on
// first use).  Not compiled on its own: _cuda.py puts in front of it the BAD_* bits of the
// error word (from its Python constants) and aiva_adam_update.h, Adam's per-element update
// that the CPU compiles too.
//
// Two parts.  The device functions are the bodies of the CuPy ElementwiseKernels (_cuda.py
// declares each kernel's typed parameters and calls one of these); their modules are
// compiled with AIVA_ELEMENTWISE_ONLY defined, so they carry no copy of the second part, the
// row and reduction kernels of one RawModule.

// ---- elementwise bodies --------------------------------------------------------------

// A spike where the membrane reaches the threshold and the neuron is not refractory (left:
// its countdown; the *_fresh kernels, for an empty state, have no countdown at all).
__device__ __forceinline__ float aiva_spike_value(float v, int left, float thr) {
    return (left == 0 && v >= thr) ? 1.0f : 0.0f;
}

__device__ __forceinline__ float aiva_spike_fresh_value(float v, float thr) {
    return v >= thr ? 1.0f : 0.0f;
}

// The countdown after a step: R steps of silence after a spike, else one step less.
__device__ __forceinline__ int aiva_commit_value(float spikes, int R, int left) {
    return spikes != 0.0f ? R : (left > 0 ? left - 1 : 0);
}

__device__ __forceinline__ int aiva_commit_fresh_value(float spikes, int R) {
    return spikes != 0.0f ? R : 0;
}

// The fast-sigmoid surrogate: d_spikes (d) times 1 / (1 + k|v - thr|)^2, zero where the
// neuron was refractory.
__device__ __forceinline__ float aiva_surrogate_value(float v, int left, float thr, float k,
                                                      float d) {
    float a = 1.0f + k * fabsf(v - thr);
    return left == 0 ? d / (a * a) : 0.0f;
}

__device__ __forceinline__ float aiva_surrogate_fresh_value(float v, float thr, float k,
                                                            float d) {
    float a = 1.0f + k * fabsf(v - thr);
    return d / (a * a);
}

// Through tanh, from the stored h: d * (1 - h^2).
__device__ __forceinline__ float aiva_tanh_back_value(float h, float d) {
    return d * (1.0f - h * h);
}

#ifndef AIVA_ELEMENTWISE_ONLY
// ---- row and reduction kernels (one RawModule) ---------------------------------------

// One thread per row: num_tools is small (20), so a row fits in registers and a block per
// row would leave most of its threads idle.
extern "C" __global__ void aiva_softmax_rows(const float *z, int B, int T, float *p, int *flags) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    const float *zr = z + (long long)b * T;
    float *pr = p + (long long)b * T;
    float m = zr[0];
    bool finite = isfinite(zr[0]);
    for (int t = 1; t < T; ++t) { finite &= isfinite(zr[t]); m = fmaxf(m, zr[t]); }
    if (!finite) atomicOr(flags, BAD_LOGITS);
    float s = 0.0f;
    for (int t = 0; t < T; ++t) { float e = expf(zr[t] - m); pr[t] = e; s += e; }
    float inv = 1.0f / s;
    for (int t = 0; t < T; ++t) pr[t] *= inv;
}

// One row's softmax, cross-entropy from the logits (log-sum-exp, returned), dz = scale (p -
// onehot(y)) and the argmax check.  A label out of range is flagged and read as 0, so no
// thread reads outside the row.  Shared by both kernels below: they cannot drift apart.
__device__ double aiva_xent_row(const float *zr, long long label, int T, float scale,
                                float *dr, int *correct, int *flags) {
    if (label < 0 || label >= T) { atomicOr(flags, BAD_LABEL); label = 0; }
    float m = zr[0];
    int best = 0;
    bool finite = isfinite(zr[0]);
    for (int t = 1; t < T; ++t) {
        finite &= isfinite(zr[t]);
        if (zr[t] > m) { m = zr[t]; best = t; }   // first maximum, as numpy's argmax
    }
    if (!finite) atomicOr(flags, BAD_LOGITS);
    float s = 0.0f;
    for (int t = 0; t < T; ++t) s += expf(zr[t] - m);
    float inv = 1.0f / s;
    for (int t = 0; t < T; ++t)
        dr[t] = (expf(zr[t] - m) * inv - (t == label ? 1.0f : 0.0f)) * scale;
    *correct = best == label;
    return (double)m + log((double)s) - (double)zr[label];
}

// dz = (p - onehot(y)) / B, one thread per row.
extern "C" __global__ void aiva_xent_rows(const float *z, const long long *y, int B, int T,
                                          float inv_batch, float *dz, double *loss_row,
                                          int *correct_row, int *flags) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    loss_row[b] = aiva_xent_row(z + (long long)b * T, y[b], T, inv_batch,
                                dz + (long long)b * T, correct_row + b, flags);
}

// The spike/refractory recurrence of a sequence over membranes computed for all its steps at
// once (v: steps x n, n = streams x neurons, time-major).  One thread per neuron walks the
// steps, so the countdown stays in a register; it also records the countdown each step
// started from (left_rows), which is that step's mask for the surrogate backward.
extern "C" __global__ void aiva_spike_sequence(const float *v, int steps, long long n,
                                               float thr, int R, int *left, float *spikes,
                                               int *left_rows) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    int l = left[i];
    for (int t = 0; t < steps; ++t) {
        long long k = (long long)t * n + i;
        float s = aiva_spike_value(v[k], l, thr);
        spikes[k] = s;
        left_rows[k] = l;
        l = aiva_commit_value(s, R, l);
    }
    left[i] = l;
}

// aiva_xent_rows with a weight per row (weights normalised by the caller): dz = w (p -
// onehot(y)); a row of weight 0 is a step without a target (any label, no loss, dz = 0).
// loss_row carries w * B * ce so that aiva_finish's mean over the B rows is the weighted sum.
extern "C" __global__ void aiva_xent_rows_weighted(const float *z, const long long *y,
                                                   const float *w, int B, int T, float *dz,
                                                   double *loss_row, int *correct_row,
                                                   int *flags) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B) return;
    float *dr = dz + (long long)b * T;
    float wb = w[b];
    if (wb == 0.0f) {
        for (int t = 0; t < T; ++t) dr[t] = 0.0f;
        loss_row[b] = 0.0;
        correct_row[b] = 0;
        return;
    }
    double ce = aiva_xent_row(z + (long long)b * T, y[b], T, wb, dr, correct_row + b, flags);
    loss_row[b] = (double)wb * (double)B * ce;
}

// Sets `bit` in flags if any |a[i]| is not below `limit` (NaN included).  One atomic per
// block at most, so the usual all-clear case costs one read of `a`.
extern "C" __global__ void aiva_flag_nonfinite(const float *a, long long n, float limit,
                                               int bit, int *flags) {
    int bad = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        bad |= !(fabsf(a[i]) < limit);
    if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(flags, bit);
}

// Sets BAD_UPDATE if the Adam step would leave any weight or moment NaN or Inf.  Reads
// only: a step that fails here has written nothing.
extern "C" __global__ void aiva_adam_flag(const float *g, const float *w, const float *m,
                                          const float *v, long long n, float one_minus_b1,
                                          float b2, float one_minus_b2, float eps, float wd,
                                          float step_size, float inv_bc2_sqrt, int *flags) {
    int bad = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float nw, nm, nv;
        aiva_adam_update(g[i], w[i], m[i], v[i], one_minus_b1, b2, one_minus_b2, eps, wd,
                         step_size, inv_bc2_sqrt, &nw, &nm, &nv);
        bad |= !aiva_adam_finite(nw, nm, nv);
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(flags, BAD_UPDATE);
}

// One block folds the rows into the step's summary: mean loss, correct rows, error flags.
// A fixed-order tree, so the loss is the same number on every run.
extern "C" __global__ void aiva_finish(const double *loss_row, const int *correct_row, int B,
                                       const int *flags, double *summary) {
    __shared__ double s_loss[256];
    __shared__ int s_correct[256];
    int t = threadIdx.x;
    double l = 0.0;
    int c = 0;
    for (int i = t; i < B; i += 256) { l += loss_row[i]; c += correct_row[i]; }
    s_loss[t] = l; s_correct[t] = c;
    __syncthreads();
    for (int half = 128; half > 0; half >>= 1) {
        if (t < half) { s_loss[t] += s_loss[t + half]; s_correct[t] += s_correct[t + half]; }
        __syncthreads();
    }
    if (t == 0) { summary[0] = s_loss[0] / B; summary[1] = s_correct[0]; summary[2] = flags[0]; }
}
#endif
