"""The CUDA engine's orchestration, run on the CPU against a stand-in for CuPy.

No GPU is needed: a fake ``cupy`` module backed by NumPy stands in, and each fused
``ElementwiseKernel`` is replaced by the NumPy expression its CUDA source computes.  This
checks everything around the kernels — shapes, the refractory state and its commit, the
backward products, the optimizer's flow, moving between devices, pickling and saving — and
that the results equal the CPU engine's.  The CUDA sources themselves are checked only by
``benchmarks/gpu_check.py`` on a real GPU.
"""
import importlib
import pickle
import sys
import types

import numpy as np
import pytest

from aiva_cy import AIVANet

from conftest import SMALL, firing_weights, safe_inputs


class FakeCupyArray(np.ndarray):
    """A NumPy array that answers .get() like a CuPy array."""

    def get(self):
        return np.asarray(self).copy()


FakeCupyArray.__module__ = "cupy._fake"


def _wrap(a):
    return np.asarray(a).view(FakeCupyArray)


def _kernel(in_params, out_params, operation, name):
    def spike(v, left, thr):
        open_ = np.asarray(left) == 0
        return _wrap(((np.asarray(v) >= thr) & open_).astype(np.float32)), _wrap(open_)

    def commit(spikes, R, left):
        left[...] = np.where(np.asarray(spikes) != 0, R, np.maximum(np.asarray(left) - 1, 0))

    def surrogate(ds, v, open_, thr, k):
        a = np.float32(1) + np.float32(k) * np.abs(np.asarray(v) - np.float32(thr))
        return _wrap(np.where(open_, np.asarray(ds) / (a * a), np.float32(0)).astype(np.float32))

    def tanh_back(dh, h):
        return _wrap((np.asarray(dh) * (np.float32(1) - np.asarray(h) ** 2)).astype(np.float32))

    def adam(g, b1, b2, eps, wd, step_size, bc2_sqrt, w, m, v):
        gi = np.asarray(g) + wd * np.asarray(w)
        m[...] = m + (np.float32(1) - b1) * (gi - m)
        v[...] = b2 * v + (np.float32(1) - b2) * gi * gi
        w[...] = w - step_size * m / (np.sqrt(v) / bc2_sqrt + eps)

    return {"aiva_spike": spike, "aiva_commit": commit, "aiva_surrogate": surrogate,
            "aiva_tanh_back": tanh_back, "aiva_adam": adam}[name]


class _Device:
    def __init__(self, index=0):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


def _fake_cupy():
    cp = types.ModuleType("cupy")
    for name in ("float32", "int32", "int64", "tanh", "exp", "log", "isfinite", "abs", "sqrt"):
        setattr(cp, name, getattr(np, name))
    cp.asarray = lambda a, dtype=None: _wrap(np.array(a, dtype=dtype))
    cp.ascontiguousarray = lambda a, dtype=None: _wrap(np.ascontiguousarray(a, dtype=dtype))
    cp.zeros = lambda shape, dtype=np.float32: _wrap(np.zeros(shape, dtype))
    cp.empty = lambda shape, dtype=np.float32: _wrap(np.empty(shape, dtype))
    cp.arange = lambda n: _wrap(np.arange(n))
    cp.ElementwiseKernel = _kernel
    cp.cuda = types.SimpleNamespace(Device=_Device,
                                    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    return cp


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    import aiva_cy._cuda as cuda_module
    cuda_module = importlib.reload(cuda_module)
    cuda_module._kernels.clear()
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


def test_forward_sequence_and_predict_match_cpu(fake_cuda):
    cpu, gpu, w = pair()
    assert gpu.device == "cuda"
    xs = safe_inputs(w, (6, 5, SMALL["input_size"]), seed=0)
    got = gpu.forward_sequence(xs)
    assert type(got).__module__.startswith("cupy")
    np.testing.assert_allclose(got.get(), cpu.forward_sequence(xs), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(gpu._engine.get_state().get(), cpu._engine.get_state())
    np.testing.assert_allclose(gpu(xs[0]).get(), cpu(xs[0]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(gpu.predict_proba(xs[1]).get(), cpu.predict_proba(xs[1]),
                               atol=1e-5, rtol=0)
    assert gpu.predict(xs[1][0]) == cpu.predict(xs[1][0])
    with pytest.raises(ValueError, match="reset_state"):
        gpu(xs[0][:2])


def test_training_matches_cpu_and_moves_back(fake_cuda):
    cpu, gpu, w = pair(seed=1)
    xs = safe_inputs(w, (3, 8, SMALL["input_size"]), seed=1)
    y = np.arange(8) % SMALL["num_tools"]
    loss_c, g_c = cpu.loss_and_grad(xs[0], y)
    loss_g, g_g = gpu.loss_and_grad(xs[0], y)
    assert loss_g == pytest.approx(loss_c, rel=1e-5)
    for k in g_c:
        np.testing.assert_allclose(g_g[k].get(), g_c[k], rtol=1e-4, atol=1e-6)
    for x in xs:
        cpu.reset_state(); gpu.reset_state()
        assert gpu.train_step(x, y) == pytest.approx(cpu.train_step(x, y), rel=1e-5)
    for k, v in cpu.state_dict().items():
        np.testing.assert_allclose(gpu.state_dict()[k], v, atol=1e-5, rtol=0)
    assert gpu.optimizer.step == cpu.optimizer.step == 3
    history = gpu.fit(xs.reshape(-1, SMALL["input_size"]), np.tile(y, 3), epochs=1,
                      batch_size=8, verbose=0)
    assert len(history["loss"]) == 1
    back = gpu.to("cpu")
    assert back.device == "cpu" and back.optimizer.step == 6
    assert isinstance(back.predict_proba(xs[0]), np.ndarray)


def test_pickle_and_save_of_a_cuda_net(fake_cuda, tmp_path):
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
