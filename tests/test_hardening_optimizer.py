"""Adam's hyper-parameters are checked wherever they enter, and a step that would leave a
weight or a moment non-finite raises FloatingPointError and changes nothing."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

import bounds as bd

from aiva_cy import AIVANet
from aiva_cy._adam import Adam
from conftest import SMALL

BAD_VALUES = {
    "lr": [-1.0, math.nan, math.inf, 1e39, 10**400],
    "eps": [0.0, -1e-8, math.nan, 1e39, 1e-50],
    "weight_decay": [-0.1, math.nan, math.inf, 1e39],
}
BAD_BETAS = [(0.9, 1.0), (1.0, 0.999), (-0.1, 0.999), (math.nan, 0.999), (0.9, math.inf)]


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, SMALL["input_size"])), np.arange(n) % SMALL["num_tools"]


def _snapshot(net):
    opt = net.optimizer.state_dict()
    return net.state_dict(), opt


def _assert_same(net, snap):
    weights, opt = snap
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, weights[k])
    now = net.optimizer.state_dict()
    assert now["step"] == opt["step"]
    for moment in ("exp_avg", "exp_avg_sq"):
        for k, v in now[moment].items():
            np.testing.assert_array_equal(v, opt[moment][k])
    for key in ("lr", "betas", "eps", "weight_decay"):
        assert now[key] == opt[key]


@pytest.mark.parametrize("name,value", [(n, v) for n, vs in BAD_VALUES.items() for v in vs])
def test_bad_hyperparameter_is_rejected_by_constructor_setter_and_load(name, value):
    with pytest.raises(ValueError, match=name):
        AIVANet(**SMALL, **{name: value})
    net = AIVANet(**SMALL, seed=0)
    net.train_step(*_batch())
    snap = _snapshot(net)
    with pytest.raises(ValueError, match=name):
        setattr(net.optimizer, name, value)
    state = net.optimizer.state_dict()
    state[name] = value
    with pytest.raises(ValueError, match=name):
        net.optimizer.load_state_dict(state)
    _assert_same(net, snap)


@pytest.mark.parametrize("betas", BAD_BETAS)
def test_bad_betas_are_rejected_everywhere(betas):
    with pytest.raises(ValueError, match="beta"):
        AIVANet(**SMALL, betas=betas)
    net = AIVANet(**SMALL, seed=0)
    snap = _snapshot(net)
    with pytest.raises(ValueError, match="beta"):
        net.optimizer.betas = betas
    with pytest.raises(ValueError, match="beta"):
        net.optimizer.beta2 = betas[1] if not 0 <= betas[1] < 1 else betas[0]
    state = net.optimizer.state_dict()
    state["betas"] = betas
    with pytest.raises(ValueError, match="beta"):
        net.optimizer.load_state_dict(state)
    _assert_same(net, snap)


def test_eps_zero_no_longer_trains_into_nan():
    # Before: AIVANet(eps=0.0) trained and left NaN wherever a weight had no gradient.
    with pytest.raises(ValueError, match="eps must be > 0"):
        AIVANet(**SMALL, eps=0.0)


@pytest.mark.parametrize("setting", [dict(lr=1e38), dict(lr=3e38), dict(weight_decay=3e38)])
def test_step_that_would_overflow_raises_and_changes_nothing(setting):
    # Before: lr=1e38 (finite in float32) made every weight Inf/NaN in one step, and save
    # then wrote a file load refused.
    net = AIVANet(**SMALL, seed=0)
    x, y = _batch()
    net.train_step(x, y)
    net.reset_state()
    for k, v in setting.items():
        setattr(net.optimizer, k, v)
    snap = _snapshot(net)
    with pytest.raises(FloatingPointError, match="unchanged"):
        net.train_step(x, y)
    _assert_same(net, snap)
    assert net.state_batch_size is None       # the refractory state did not advance either
    net.optimizer.lr, net.optimizer.eps, net.optimizer.weight_decay = 1e-3, 1e-8, 0.0
    net.train_step(x, y)                       # and the net trains on from where it was
    assert net.optimizer.step == 2


def test_large_but_finite_step_is_taken():
    # The exact check (taken when the cheap bound cannot prove a step safe) lets a step
    # whose results are finite through: lr=1e30 moves weights by ~1e30, which float32 holds.
    net = AIVANet(**SMALL, seed=0, lr=1e30)
    net.train_step(*_batch())
    assert net.optimizer.step == 1
    assert all(np.isfinite(v).all() for v in net.state_dict().values())
    assert max(float(np.abs(v).max()) for v in net.state_dict().values()) > 1e29


def test_update_with_nonfinite_gradient_changes_nothing():
    rng = np.random.default_rng(1)
    opt = Adam([(3, 4)])
    w = rng.standard_normal((3, 4)).astype(np.float32)
    g = rng.standard_normal((3, 4)).astype(np.float32)
    opt.update([w], [g])
    w_before, state = w.copy(), opt.state_dict()
    g[1, 2] = np.nan
    with pytest.raises(FloatingPointError):
        opt.update([w], [g])
    np.testing.assert_array_equal(w, w_before)
    assert opt.step == 1
    np.testing.assert_array_equal(opt.state_dict()["exp_avg_sq"]["0"], state["exp_avg_sq"]["0"])


def test_negative_or_nonfinite_moments_are_rejected():
    net = AIVANet(**SMALL, seed=0)
    net.train_step(*_batch())
    snap = _snapshot(net)
    for moment, value in (("exp_avg_sq", -1e-6), ("exp_avg", np.nan), ("exp_avg_sq", 1e39)):
        state = net.optimizer.state_dict()
        state[moment]["fc2.weight"] = state[moment]["fc2.weight"].astype(np.float64)
        state[moment]["fc2.weight"][0, 0] = value
        with pytest.raises(ValueError, match=moment):
            net.optimizer.load_state_dict(state)
    state = net.optimizer.state_dict()
    state["amsgrad"] = True
    with pytest.raises(ValueError, match="unknown keys"):
        net.optimizer.load_state_dict(state)
    _assert_same(net, snap)


def test_pickled_optimizer_keeps_checked_settings():
    net = AIVANet(**SMALL, seed=0, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    net.train_step(*_batch())
    copy = pickle.loads(pickle.dumps(net))
    assert copy.optimizer.state_dict()["betas"] == (0.8, 0.99)
    assert (copy.optimizer.lr, copy.optimizer.eps, copy.optimizer.weight_decay) == (0.01, 1e-6, 0.1)


@pytest.mark.parametrize("betas,weight_decay", [((0.9, 0.999), 0.0), ((0.8, 0.99), 0.01),
                                                ((0.5, 0.9999), 0.0)])
def test_moments_match_a_float64_reference_of_torch_formula(betas, weight_decay):
    # torch computes 1 - beta in double and hands the kernel that value; 1 - 0.999f in
    # float32 is 1.3e-5 (relative) away from it, which showed in exp_avg_sq (the old code).
    rng = np.random.default_rng(7)
    shapes = [(5, 7), (33,)]
    lr, eps = 1e-3, 1e-8
    b1, b2 = betas
    opt = Adam(shapes, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    ws = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ref_w = [w.astype(np.float64) for w in ws]
    ref_m = [np.zeros(s) for s in shapes]
    ref_v = [np.zeros(s) for s in shapes]
    # the bounds of the float32 update's roundings, carried from step to step
    B = [(bd.exact(w), bd.exact(np.zeros(s)), bd.exact(np.zeros(s))) for w, s in zip(ws, shapes)]
    for step in range(1, 9):
        gs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        opt.update(ws, gs)
        for i, g in enumerate(gs):
            g64 = g.astype(np.float64) + weight_decay * ref_w[i]
            ref_m[i] = b1 * ref_m[i] + (1 - b1) * g64
            ref_v[i] = b2 * ref_v[i] + (1 - b2) * g64 * g64
            denom = np.sqrt(ref_v[i]) / math.sqrt(1 - b2 ** step) + eps
            ref_w[i] = ref_w[i] - lr / (1 - b1 ** step) * ref_m[i] / denom
            B[i] = bd.adam_update(*B[i][:1], g, *B[i][1:], step, lr=lr, betas=betas, eps=eps,
                                  weight_decay=weight_decay)
            # the bounds' values are these formulas in float64, in another order: some
            # dozens of roundings of 2**-53 apart, relative to the largest entry
            for ref, bounded in zip((ref_w[i], ref_m[i], ref_v[i]), B[i]):
                np.testing.assert_allclose(bounded.v, ref, rtol=0,
                                           atol=1e-13 * np.abs(ref).max())
        state = opt.state_dict()
        for i in range(len(shapes)):
            w_b, m_b, v_b = B[i]
            bd.assert_within(state["exp_avg_sq"][str(i)], v_b, what="exp_avg_sq")
            bd.assert_within(state["exp_avg"][str(i)], m_b, what="exp_avg")
            bd.assert_within(ws[i], w_b, what="weights")


def test_optimizer_state_dict_is_a_copy():
    # Before: the untransposed moment (fc2) was the live array, so a save taken during
    # training wrote moments of a later step than its weights.
    net = AIVANet(**SMALL, seed=0)
    x, y = _batch()
    net.train_step(x, y)
    state = net.optimizer.state_dict()
    kept = {m: {k: v.copy() for k, v in state[m].items()} for m in ("exp_avg", "exp_avg_sq")}
    net.train_step(x, y)
    for m in kept:
        for k, v in kept[m].items():
            np.testing.assert_array_equal(state[m][k], v)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_backward_bounds_cover_every_gradient_and_adam_uses_them(precision):
    """The bounds the backward pass hands Adam (so its safety proof needs no second read of
    the gradients) are at least the largest |gradient| entry, in both precisions."""
    from aiva_cy._core import blas_info
    entry = blas_info()["precisions"][precision]
    if not entry["available"]:
        pytest.skip(f"no {precision} products here: {entry['missing']}")
    rng = np.random.default_rng(5)
    for B in (1, 7, 33):
        net = AIVANet(input_size=24, num_tools=5, hidden_size=40, spiking_size=30, seed=B,
                      precision=precision)
        x = rng.standard_normal((B, 24)) * 3
        y = rng.integers(0, 5, B)
        _, grads = net.loss_and_grad(x, y)
        bounds = net._engine.grad_bounds
        for bound, key in zip(bounds, ("fc1.weight", "spiking.weight", "fc2.weight")):
            assert np.abs(grads[key]).max() <= bound, (B, key)
    with pytest.raises(ValueError, match="grad_bounds"):
        net.optimizer.update(net._engine.params(), [np.zeros_like(p) for p in net._engine.params()],
                             None, [1.0, float("nan"), 1.0])
