"""The CUDA engine against the CPU engine: the same weights and inputs (kept away from the
threshold), the same answers.

Each test runs twice:
- "numpy-stand-in", always, with no GPU: a fake ``cupy`` module backed by NumPy, in which
  each fused kernel is replaced by the NumPy expression its CUDA source computes.  This checks
  everything around the kernels: shapes, the refractory state and its commit, the backward
  products, the checks gathered into one fetch, the optimizer's flow, device contexts,
  moving between devices, pickling and saving.
- "gpu", where CuPy and a CUDA GPU are present (skipped otherwise, without importing CuPy):
  the real kernels, cuBLAS and CuPy.  ``benchmarks/gpu_check.py`` runs these on a GPU machine.
"""
import importlib
import importlib.util
import pickle
import sys
import types

import numpy as np
import pytest

import bounds as bd
from aiva_cy import AIVANet

from conftest import DEFAULT, SMALL, exact_default_case, firing_weights, safe_inputs


class FakeCupyArray(np.ndarray):
    """A NumPy array that answers .get() like a CuPy array."""

    def get(self):
        return np.asarray(self).copy()


FakeCupyArray.__module__ = "cupy._fake"


def _wrap(a):
    return np.asarray(a).view(FakeCupyArray)


f32 = np.float32


def _elementwise(in_params, out_params, operation, name, preamble=""):
    """Each fused ElementwiseKernel as the NumPy expression its CUDA source computes, in
    float32.  Outputs passed in are written in place (as CuPy does) and returned."""
    A = np.asarray

    def spike(v, left, thr):
        return _wrap(((A(v) >= thr) & (A(left) == 0)).astype(f32))

    def spike_fresh(v, thr):
        return _wrap((A(v) >= thr).astype(f32))

    def commit(spikes, R, left):
        left[...] = np.where(A(spikes) != 0, R, np.maximum(A(left) - 1, 0))
        return left

    def commit_fresh(spikes, R):
        return _wrap(np.where(A(spikes) != 0, R, 0).astype(np.int32))

    def surrogate(v, left, thr, k, d):
        a = f32(1) + f32(k) * np.abs(A(v) - f32(thr))
        d[...] = np.where(A(left) == 0, A(d) / (a * a), f32(0))
        return d

    def surrogate_fresh(v, thr, k, d):
        a = f32(1) + f32(k) * np.abs(A(v) - f32(thr))
        d[...] = A(d) / (a * a)
        return d

    def tanh_back(h, d):
        d[...] = A(d) * (f32(1) - A(h) * A(h))
        return d

    def adam(g, omb1, b2, omb2, eps, wd, step_size, inv_bc2, w, m, v):
        gi = A(g) + wd * A(w)
        m[...] = m + omb1 * (gi - m)
        v[...] = b2 * v + omb2 * gi * gi
        w[...] = w - step_size * m / (np.sqrt(v) * inv_bc2 + eps)

    fns = {"aiva_spike": spike, "aiva_spike_fresh": spike_fresh, "aiva_commit": commit,
           "aiva_commit_fresh": commit_fresh, "aiva_surrogate": surrogate,
           "aiva_surrogate_fresh": surrogate_fresh, "aiva_tanh_back": tanh_back,
           "aiva_adam": adam}
    return fns[name]


def _raw(name):
    """Each function of the RawModule as the NumPy expression its CUDA source computes."""
    BAD_LOGITS, BAD_LABEL = 2, 4
    A = np.asarray

    def softmax_rows(grid, block, args):
        z, B, T, p, flags = args
        z = A(z)
        if not np.isfinite(z).all():
            flags[0] |= BAD_LOGITS
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p[...] = e * (f32(1) / e.sum(axis=1, keepdims=True))

    def xent_rows(grid, block, args):
        z, y, B, T, inv_b, dz, loss_row, correct_row, flags = args
        z, y = A(z), A(y).copy()
        bad = (y < 0) | (y >= T)
        if bad.any():
            flags[0] |= BAD_LABEL
        y[bad] = 0
        if not np.isfinite(z).all():
            flags[0] |= BAD_LOGITS
        m = z.max(axis=1, keepdims=True)
        s = np.exp(z - m).sum(axis=1, keepdims=True)
        onehot = np.eye(int(T), dtype=f32)[y]
        dz[...] = (np.exp(z - m) * (f32(1) / s) - onehot) * inv_b
        rows = np.arange(int(B))
        loss_row[...] = m[:, 0].astype(np.float64) + np.log(s[:, 0].astype(np.float64)) - z[rows, y]
        correct_row[...] = z.argmax(axis=1) == y

    def adam_flag(grid, block, args):
        g, w, m, v, n, omb1, b2, omb2, eps, wd, step_size, inv_bc2, flags = args
        with np.errstate(all="ignore"):
            gi = A(g) + wd * A(w)
            mi = A(m) + omb1 * (gi - A(m))
            vi = b2 * A(v) + omb2 * gi * gi
            wi = A(w) - step_size * mi / (np.sqrt(vi) * inv_bc2 + eps)
        if not (np.isfinite(wi).all() and np.isfinite(mi).all() and np.isfinite(vi).all()):
            flags[0] |= 16

    def flag_nonfinite(grid, block, args):
        a, n, limit, bit, flags = args
        if not (np.abs(A(a)) < limit).all():
            flags[0] |= bit

    def finish(grid, block, args):
        loss_row, correct_row, B, flags, summary = args
        summary[...] = [A(loss_row).sum() / B, A(correct_row).sum(), flags[0]]

    def spike_sequence(grid, block, args):
        v, steps, n, thr, R, left, spikes, left_rows = args
        v = A(v).reshape(int(steps), int(n))
        spikes_t = A(spikes).reshape(int(steps), int(n))
        rows_t = A(left_rows).reshape(int(steps), int(n))
        lf = A(left).reshape(-1)
        for t in range(int(steps)):
            rows_t[t] = lf
            s = ((v[t] >= thr) & (lf == 0)).astype(f32)
            spikes_t[t] = s
            lf[...] = np.where(s != 0, R, np.maximum(lf - 1, 0))

    def xent_rows_weighted(grid, block, args):
        z, y, w, B, T, dz, loss_row, correct_row, flags = args
        z, y, w = A(z), A(y).copy(), A(w)
        on = w != 0
        bad = on & ((y < 0) | (y >= T))
        if bad.any():
            flags[0] |= BAD_LABEL
        y[~on | bad] = 0
        if not np.isfinite(z[on]).all():
            flags[0] |= BAD_LOGITS
        m = z.max(axis=1, keepdims=True)
        s = np.exp(z - m).sum(axis=1, keepdims=True)
        onehot = np.eye(int(T), dtype=f32)[y]
        dz[...] = (np.exp(z - m) * (f32(1) / s) - onehot) * w[:, None]
        rows = np.arange(int(B))
        ce = m[:, 0].astype(np.float64) + np.log(s[:, 0].astype(np.float64)) - z[rows, y]
        loss_row[...] = np.where(on, w.astype(np.float64) * int(B) * ce, 0.0)
        correct_row[...] = on & (z.argmax(axis=1) == y)

    return {"aiva_softmax_rows": softmax_rows, "aiva_xent_rows": xent_rows,
            "aiva_flag_nonfinite": flag_nonfinite, "aiva_finish": finish,
            "aiva_adam_flag": adam_flag, "aiva_spike_sequence": spike_sequence,
            "aiva_xent_rows_weighted": xent_rows_weighted}[name]


class _RawModule:
    def __init__(self, code, options=()):
        self.code = code

    def get_function(self, name):
        assert f"void {name}(" in self.code
        return _raw(name)


class _Device:
    entered = []

    def __init__(self, index=0):
        self.index = index

    def __enter__(self):
        _Device.entered.append(self.index)
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


def _fake_cupy():
    cp = types.ModuleType("cupy")
    for name in ("float32", "float64", "int32", "int64"):
        setattr(cp, name, getattr(np, name))
    for name in ("tanh", "exp", "log", "isfinite", "abs", "sqrt", "floor", "clip", "minimum",
                 "all", "stack"):
        setattr(cp, name, lambda *a, _f=getattr(np, name), **k: _wrap(_f(*a, **k)))
    cp.asarray = lambda a, dtype=None: _wrap(np.array(a, dtype=dtype))
    cp.array = cp.asarray
    cp.ascontiguousarray = lambda a, dtype=None: _wrap(np.ascontiguousarray(a, dtype=dtype))
    cp.zeros = lambda shape, dtype=np.float32: _wrap(np.zeros(shape, dtype))
    cp.empty = lambda shape, dtype=np.float32: _wrap(np.empty(shape, dtype))
    cp.arange = lambda n, dtype=None: _wrap(np.arange(n, dtype=dtype))
    cp.ElementwiseKernel = _elementwise
    cp.RawModule = _RawModule
    cp.cuda = types.SimpleNamespace(Device=_Device,
                                    runtime=types.SimpleNamespace(getDeviceCount=lambda: 2))
    return cp


def _gpu_available():
    if importlib.util.find_spec("cupy") is None:     # no import at all where CuPy is absent
        return False
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.fixture(params=["numpy-stand-in", "gpu"])
def cuda(request, monkeypatch):
    """The aiva_cy._cuda module, on the NumPy stand-in or on a real GPU."""
    if request.param == "gpu":
        if not _gpu_available():
            pytest.skip("needs CuPy and a CUDA GPU")
        import aiva_cy._cuda as cuda_module
        yield cuda_module
        return
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    import aiva_cy._cuda as cuda_module
    cuda_module = importlib.reload(cuda_module)
    yield cuda_module
    monkeypatch.delitem(sys.modules, "cupy")
    importlib.reload(cuda_module)


def pair(seed=0, period=2):
    w = firing_weights(SMALL, seed)
    cpu = AIVANet(**SMALL, refractory_period=period, seed=seed)
    cpu.load_state_dict(w)
    gpu = AIVANet(**SMALL, refractory_period=period, seed=seed)
    gpu.load_state_dict(w)
    return cpu, gpu.to("cuda"), w


def check_train_step(net, x, y, step, get=lambda a: a):
    """One train_step of `net` against the contract: its loss within the float32 bound of
    the reference at its weights, its gradient (loss_and_grad, same weights, empty state)
    within the backward pass's bound, its Adam step within the update's bound on that
    gradient.  Two engines that both pass agree within the sum of their bounds."""
    before = net.state_dict()
    opt = net.optimizer.state_dict()
    m, v = (opt["exp_avg"], opt["exp_avg_sq"]) if step > 1 else (None, None)
    net.reset_state()
    _, g = net.loss_and_grad(x, y)
    loss_b, g_b, _ = bd.BoundedNet(before, threshold=net.threshold,
                                   surrogate_slope=net.surrogate_slope).loss_and_grad(x, y)
    net.reset_state()
    bd.assert_within(net.train_step(x, y), loss_b, what="loss")
    after = net.state_dict()
    for k in before:
        g_k = get(g[k])
        bd.assert_within(g_k, g_b[k], what=k)
        zero = np.zeros(before[k].shape)
        want = bd.adam_update(bd.exact(before[k]), g_k, bd.exact(zero if m is None else m[k]),
                              bd.exact(zero if v is None else v[k]), step,
                              lr=net.optimizer.lr, betas=net.optimizer.betas,
                              eps=net.optimizer.eps, weight_decay=net.optimizer.weight_decay)
        bd.assert_within(after[k], want[0], what="Adam " + k)


def test_forward_sequence_and_predict_match_cpu(cuda):
    # Clear inputs: both engines spike as the reference does; their probabilities, each
    # within the float32 bound B of it, are within 2B of each other.
    cpu, gpu, w = pair()
    assert gpu.device == "cuda"
    xs = safe_inputs(w, (6, 5, SMALL["input_size"]), seed=0)
    ref = bd.BoundedNet(w, refractory_period=2)
    steps = [ref.step(x) for x in xs]
    got = gpu.forward_sequence(xs)
    assert type(got).__module__.startswith("cupy")
    want = cpu.forward_sequence(xs)
    for t in range(6):
        bd.assert_pair(got.get()[t], want[t], steps[t].p)
    np.testing.assert_array_equal(gpu._engine.get_state().get(), cpu._engine.get_state())
    bd.assert_pair(gpu(xs[0]).get(), cpu(xs[0]), ref.step(xs[0]).p)
    first = bd.BoundedNet(w).forward(xs[1])
    bd.assert_pair(gpu.predict_proba(xs[1]).get(), cpu.predict_proba(xs[1]), first.p)
    assert gpu.predict(xs[1][0]) == cpu.predict(xs[1][0])
    with pytest.raises(ValueError, match="reset_state"):
        gpu(xs[0][:2])


def test_training_matches_cpu_and_moves_back(cuda):
    cpu, gpu, w = pair(seed=1)
    xs = safe_inputs(w, (3, 8, SMALL["input_size"]), seed=1)
    y = np.arange(8) % SMALL["num_tools"]
    loss_b, g_b, _ = bd.BoundedNet(w).loss_and_grad(xs[0], y)
    loss_c, g_c = cpu.loss_and_grad(xs[0], y)
    loss_g, g_g = gpu.loss_and_grad(xs[0], y)
    bd.assert_pair(loss_g, loss_c, loss_b, what="loss")
    for k in g_c:
        bd.assert_pair(g_g[k].get(), g_c[k], g_b[k], what=k)
    # three train steps each: their weights drift apart by the roundings of each step, so
    # each engine is held to the contract at its own weights
    for step, x in enumerate(xs, 1):
        check_train_step(cpu, x, y, step)
        check_train_step(gpu, x, y, step, get=lambda a: a.get())
    assert gpu.optimizer.step == cpu.optimizer.step == 3
    history = gpu.fit(xs.reshape(-1, SMALL["input_size"]), np.tile(y, 3), epochs=1,
                      batch_size=8, verbose=0)
    assert len(history["loss"]) == 1
    back = gpu.to("cpu")
    assert back.device == "cpu" and back.optimizer.step == 6
    assert isinstance(back.predict_proba(xs[0]), np.ndarray)


def test_pickle_and_save_of_a_cuda_net(cuda, tmp_path):
    _, gpu, w = pair(seed=2)
    x = safe_inputs(w, (4, SMALL["input_size"]), seed=2)
    gpu(x)
    clone = pickle.loads(pickle.dumps(gpu))
    assert clone.device == "cuda"
    np.testing.assert_array_equal(clone._engine.get_state().get(), gpu._engine.get_state().get())
    gpu.save(tmp_path / "gpu.npz")
    on_cpu = AIVANet.load(tmp_path / "gpu.npz")
    for k, v in gpu.state_dict().items():
        np.testing.assert_array_equal(on_cpu.state_dict()[k], v)


def _snapshot(net):
    opt = net.optimizer.state_dict()
    state = net._engine.get_state()
    return (net.state_dict(), opt["step"], opt["exp_avg"], opt["exp_avg_sq"],
            None if state is None else state.get())


def _assert_same(a, b):
    for x, y in zip(a, b):
        if isinstance(x, dict):
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
        elif x is None or y is None:
            assert x is y
        else:
            np.testing.assert_array_equal(x, y)


def test_every_call_blocks_on_the_host_once(cuda):
    _, gpu, w = pair(seed=3)
    host_x = safe_inputs(w, (8, SMALL["input_size"]), seed=3).astype(np.float32)
    x = cuda.cp.asarray(host_x)
    y = cuda.cp.asarray(np.arange(8) % SMALL["num_tools"])
    xs = np.stack([host_x] * 4)
    calls = [lambda: gpu.predict_proba(host_x), lambda: gpu.predict_proba(x), lambda: gpu(x),
             lambda: gpu.forward_sequence(xs), lambda: gpu.forward_sequence(cuda.cp.asarray(xs)),
             lambda: gpu.train_step(x, y), lambda: gpu.loss_and_grad(host_x, y)]
    for call in calls:
        gpu.reset_state()
        before = cuda.fetch_count
        call()
        assert cuda.fetch_count == before + 1


def test_bad_device_labels_and_inputs_change_nothing(cuda):
    _, gpu, w = pair(seed=4)
    cp = cuda.cp
    x = safe_inputs(w, (6, SMALL["input_size"]), seed=4).astype(np.float32)
    gpu(x)                                     # a non-empty state to protect
    before = _snapshot(gpu)
    with pytest.raises(ValueError, match=r"y must hold integer labels in \[0, 5\) \(ints, or floats with integral values\), got values from 0 to 7"):
        gpu.train_step(cp.asarray(x), cp.asarray(np.array([0, 1, 2, 3, 4, 7])))
    with pytest.raises(ValueError, match="y must hold integer labels"):
        gpu.train_step(cp.asarray(x), cp.asarray(np.array([0, 1, 2, 3, 4, -1])))
    with pytest.raises(ValueError, match="non-integer"):
        gpu.loss_and_grad(cp.asarray(x), cp.asarray(np.array([0, 1, 2, 3, 4, 0.5])))
    with pytest.raises(TypeError, match="bool"):
        gpu.train_step(cp.asarray(x), cp.asarray(np.ones(6, bool)))
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        gpu.train_step(cp.asarray(bad), cp.asarray(np.zeros(6, np.int64)))
    with pytest.raises(ValueError, match="x contains NaN"):
        gpu.predict_proba(cp.asarray(bad))
    with pytest.raises(ValueError, match="xs contains NaN"):
        gpu.forward_sequence(cp.asarray(bad[None]))
    _assert_same(_snapshot(gpu), before)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_overflowing_logits_raise_as_on_the_cpu(cuda):
    cpu, gpu, w = pair(seed=5)
    huge = dict(w, **{"fc2.weight": np.full_like(w["fc2.weight"], 3e38)})
    cpu.load_state_dict(huge)
    gpu.load_state_dict(huge)
    x = safe_inputs(w, (4, SMALL["input_size"]), seed=5)
    y = np.zeros(4, np.int64)
    for net in (cpu, gpu):
        before = _snapshot(net)
        with pytest.raises(FloatingPointError):
            net.train_step(x, y)
        with pytest.raises(FloatingPointError):
            net.loss_and_grad(x, y)
        with pytest.raises(ValueError, match="logits are not finite"):
            net.predict_proba(x)
        with pytest.raises(ValueError, match="logits are not finite"):
            net(x)
        with pytest.raises(ValueError, match="logits are not finite"):
            net.forward_sequence(np.stack([x, x]))
        _assert_same(_snapshot(net), before)


def test_adam_takes_one_minus_beta_in_double(cuda):
    _, gpu, w = pair(seed=6)
    x = safe_inputs(w, (5, SMALL["input_size"]), seed=6)
    y = np.arange(5) % SMALL["num_tools"]
    _, grads = gpu.loss_and_grad(x, y)
    gpu.reset_state()
    gpu.train_step(x, y)
    g = grads["fc2.weight"].get()
    v = gpu.optimizer.state_dict()["exp_avg_sq"]["fc2.weight"]
    # 1 - 0.999 rounded once to float32 (torch's value), then two products: within their
    # roundings (~2e-7 relative); 1 - 0.999f would be 1.3e-5 off
    g_b = bd.exact(g.astype(np.float64))
    bd.assert_within(v, bd.const(1.0 - 0.999) * g_b * g_b, what="exp_avg_sq")
    assert np.float32(1.0 - 0.999) != np.float32(1) - np.float32(0.999)


def test_load_state_dict_swaps_the_weights_whole(cuda):
    _, gpu, w = pair(seed=7)
    old = gpu._engine._weights
    kept = [a.copy() for a in old]
    gpu.load_state_dict(firing_weights(SMALL, 8))
    assert gpu._engine._weights is not old
    for a, b in zip(old, kept):          # a predict holding the old tuple sees it unchanged
        np.testing.assert_array_equal(a.get(), b.get())


def test_every_call_runs_in_its_own_device_context(cuda):
    if not hasattr(cuda.cp.cuda.Device, "entered"):
        pytest.skip("counts device contexts on the stand-in only")
    cpu = AIVANet(**SMALL, seed=9)
    gpu = AIVANet(**SMALL, seed=9).to("cuda:1")
    x = safe_inputs(cpu.state_dict(), (3, SMALL["input_size"]), seed=9)
    calls = [lambda: gpu(x), lambda: gpu.predict_proba(x),
             lambda: gpu.train_step(x, np.zeros(3, np.int64)), lambda: gpu.state_dict(),
             lambda: gpu.forward_sequence(x[None]), lambda: gpu.loss_and_grad(x, [0, 1, 2])]
    for call in calls:
        gpu.reset_state()
        cuda.cp.cuda.Device.entered.clear()
        call()
        entered = cuda.cp.cuda.Device.entered
        assert entered and set(entered) == {1}, entered


@pytest.mark.parametrize("batch", [1, 7, 33])
def test_default_size_sequences_and_gradients(cuda, batch):
    # Unscreened inputs: at this size a membrane within its bound (~1e-3) of the threshold
    # in about half the rows may spike either way in each engine.  The states agree at
    # every neuron that was clear at both steps, the probabilities within 2B on the streams
    # clear at both; the gradients, from states that may differ at the others, are each
    # checked against a reference that follows that engine's own state.
    w = firing_weights(DEFAULT, 10 + batch)
    cpu = AIVANet(**DEFAULT, seed=0)
    cpu.load_state_dict(w)
    gpu = AIVANet(**DEFAULT, seed=0)
    gpu.load_state_dict(w)
    gpu.to("cuda")
    xs = np.random.default_rng(batch).standard_normal((2, batch, DEFAULT["input_size"]))
    ref = bd.BoundedNet(w, refractory_period=2)
    first = ref.forward(xs[0])
    second = ref.remask(ref.forward(xs[1]), ~first.out)
    clear = ~first.ambiguous & ~second.ambiguous
    rows = clear.all(axis=1)
    p_gpu, p_cpu = gpu.forward_sequence(xs).get(), cpu.forward_sequence(xs)
    bd.assert_pair(p_gpu[0], p_cpu[0], first.p, rows=~first.unresolved_rows)
    bd.assert_pair(p_gpu[1], p_cpu[1], second.p, rows=rows)
    np.testing.assert_array_equal(gpu._engine.get_state().get()[clear],
                                  cpu._engine.get_state()[clear])
    y = np.arange(batch) % DEFAULT["num_tools"]
    for net, get in ((cpu, lambda a: a), (gpu, lambda a: a.get())):
        mask = get(net._engine.get_state()) == 0          # with the state of two steps
        loss, g = net.loss_and_grad(xs[0], y)
        loss_b, g_b, _ = bd.BoundedNet(w, refractory_period=2).loss_and_grad(
            xs[0], y, mask=mask, state=get(net._engine.get_state()))
        bd.assert_within(loss, loss_b, what="loss")
        for k in g:
            bd.assert_within(get(g[k]), g_b[k], what=k)
    assert (~mask).any()


def test_adam_matches_the_cpu_optimizer_on_the_same_gradients(cuda):
    from aiva_cy._adam import Adam
    rng = np.random.default_rng(11)
    shape = (37, 5)
    w_cpu = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    w_gpu = cuda.cp.asarray(w_cpu)
    cpu = Adam([shape], names=("w",), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.01)
    gpu = cuda.CupyAdam([shape], names=("w",), lr=1e-2, betas=(0.8, 0.99), weight_decay=0.01)
    W, M, V = bd.exact(w_cpu), bd.exact(np.zeros(shape)), bd.exact(np.zeros(shape))
    for step in range(10):
        g = (rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 2)).astype(np.float32)
        cpu.update([w_cpu], [g])
        gpu.update([w_gpu], [cuda.cp.asarray(g)])
        W, M, V = bd.adam_update(W, g, M, V, step + 1, lr=1e-2, betas=(0.8, 0.99),
                                 weight_decay=0.01)
    # each within the float32 update's bound (the GPU contracts a * b + c into one
    # rounding (FMA), the CPU build does not: fewer roundings, within the same bound), so
    # within twice it of each other; a wrong formula is off by orders of magnitude more
    bd.assert_pair(w_gpu.get(), w_cpu, W, what="weights")
    s_cpu, s_gpu = cpu.state_dict(), gpu.state_dict()
    assert s_gpu["step"] == s_cpu["step"] == 10
    for key, want in (("exp_avg", M), ("exp_avg_sq", V)):
        bd.assert_pair(s_gpu[key]["w"], s_cpu[key]["w"], want, what=key)


def test_fit_save_pickle_and_moves(cuda, tmp_path):
    cpu, gpu, w = pair(seed=12)
    X = safe_inputs(w, (48, SMALL["input_size"]), seed=12)
    y = np.arange(48) % SMALL["num_tools"]
    # One step (one batch of 48) from the same weights: the loss within 2B, the accuracy
    # equal where every row's decision is clear of its bounds, the weights each within
    # the Adam step's bound on a gradient within its own bound of the reference's.
    h_c = cpu.fit(X, y, epochs=1, batch_size=48, seed=0, verbose=0)
    h_g = gpu.fit(X, y, epochs=1, batch_size=48, seed=0, verbose=0)
    loss_b, g_b, step = bd.BoundedNet(w).loss_and_grad(X, y)
    bd.assert_pair(h_g["loss"][0], h_c["loss"][0], loss_b, what="loss")
    if bd.argmax_sure(step.p).all():
        assert h_g["accuracy"] == h_c["accuracy"]
    for k, v in cpu.state_dict().items():
        zero = bd.exact(np.zeros(w[k].shape))
        g = bd.Bounded(g_b[k].v, g_b[k].e, g_b[k].err, 0.0)
        want = bd.adam_update(bd.exact(w[k]), g, zero, zero, 1)[0]
        bd.assert_pair(gpu.state_dict()[k], v, want, what=k)
    gpu.fit(X, y, epochs=2, batch_size=16, seed=0, verbose=0)         # more steps, batches
    gpu(X[:4])                                          # some state to carry along
    gpu.save(tmp_path / "g.npz")
    for device in ("cpu", "cuda"):
        loaded = AIVANet.load(tmp_path / "g.npz", device=device)
        assert loaded.device == device
        for k, v in gpu.state_dict().items():
            np.testing.assert_array_equal(loaded.state_dict()[k], v)
    clone = pickle.loads(pickle.dumps(gpu))
    assert clone.device == "cuda"
    _assert_same(_snapshot(clone), _snapshot(gpu))
    before = _snapshot(gpu)
    back = gpu.to("cpu")
    assert back.device == "cpu" and isinstance(back.predict_proba(X[:2]), np.ndarray)
    state = back._engine.get_state()
    again = back.to("cuda")
    np.testing.assert_array_equal(again._engine.get_state().get(), state)
    _assert_same(_snapshot(again), before)


def test_an_adam_step_that_would_overflow_changes_nothing(cuda):
    _, gpu, w = pair(seed=13)
    x = safe_inputs(w, (6, SMALL["input_size"]), seed=13)
    y = np.arange(6) % SMALL["num_tools"]
    gpu.train_step(x, y)
    gpu.reset_state()
    gpu(x)
    opt = gpu.optimizer
    opt.lr = 3e38            # finite, but the first update takes every weight past float32
    before = _snapshot(gpu)
    with pytest.raises(FloatingPointError, match="Adam step"):
        gpu.train_step(x, y)
    _assert_same(_snapshot(gpu), before)


def test_optimizer_settings_are_checked_on_the_gpu_too(cuda):
    _, gpu, _ = pair(seed=14)
    opt = gpu.optimizer
    for name, bad in (("lr", float("nan")), ("lr", -1.0), ("eps", 0.0), ("weight_decay", 1e39),
                      ("beta1", 1.0), ("beta2", float("inf"))):
        with pytest.raises(ValueError, match=name):
            setattr(opt, name, bad)
    with pytest.raises(ValueError, match="betas"):
        opt.betas = (0.9, 1.0)
    opt.lr, opt.betas = 0.01, (0.8, 0.99)
    assert (opt.lr, opt.betas) == (0.01, (0.8, 0.99))


@pytest.mark.parametrize("sizes,batch", [(SMALL, 1), (SMALL, 7), (DEFAULT, 3)])
def test_sequences_on_cuda_match_the_cpu(cuda, sizes, batch):
    """forward_sequence (time-parallel products, one recurrence kernel) and episodes
    (weighted steps, steps without a target) give the CPU engine's numbers."""
    steps = 5
    if sizes is DEFAULT:   # spikes no rounding can flip (see conftest.exact_default_case)
        w, xs, threshold = exact_default_case(steps, batch, seed=batch)
    else:
        w, threshold = firing_weights(sizes, 11), 0.5
        xs = safe_inputs(w, (steps, batch, sizes["input_size"]), seed=batch)
    cpu = AIVANet(**sizes, seed=0, threshold=threshold)
    cpu.load_state_dict(w)
    gpu = AIVANet(**sizes, seed=0, threshold=threshold)
    gpu.load_state_dict(w)
    gpu.to("cuda")
    np.testing.assert_allclose(gpu.forward_sequence(xs).get(), cpu.forward_sequence(xs),
                               atol=1e-5, rtol=0)
    np.testing.assert_array_equal(gpu.get_state().get(), cpu.get_state())
    rng = np.random.default_rng(batch)
    ys = rng.integers(0, sizes["num_tools"], (steps, batch))
    ys[1] = -1
    sw = rng.uniform(0.5, 2.0, (steps, batch))
    l_c, g_c = cpu.loss_and_grad_sequence(xs, ys, sample_weight=sw)
    l_g, g_g = gpu.loss_and_grad_sequence(xs, ys, sample_weight=sw)
    assert l_g == pytest.approx(l_c, rel=1e-5)
    for k, g in g_c.items():
        scale = np.abs(g).max() + 1e-30
        np.testing.assert_allclose(g_g[k].get(), g, rtol=0, atol=1e-4 * scale, err_msg=k)
    before = gpu.state_dict()
    with pytest.raises(ValueError, match=r"\[0, "):
        gpu.train_sequence(xs, np.full((steps, batch), sizes["num_tools"]))
    for k, v in gpu.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    l1 = gpu.train_sequence(xs, ys, sample_weight=sw)
    l2 = cpu.train_sequence(xs, ys, sample_weight=sw)
    assert l1 == pytest.approx(l2, rel=1e-5)
    for k, v in cpu.state_dict().items():
        np.testing.assert_allclose(gpu.state_dict()[k], v, atol=1e-5, rtol=0)
