"""Bad input: a ValueError or TypeError that names the argument — never a crash, never a
silent wrong answer, never a half-updated net."""
import numpy as np
import pytest

from aiva_cy import AIVANet

from conftest import SMALL

IN = SMALL["input_size"]


@pytest.fixture
def net():
    return AIVANet(**SMALL, seed=0)


def snapshot(net):
    return net.state_dict(), net._engine.get_state(), net.optimizer.state_dict()


def assert_unchanged(net, snap):
    w, state, opt = snap
    for k, v in net.state_dict().items():
        assert np.array_equal(v, w[k])
    s = net._engine.get_state()
    assert (s is None and state is None) or np.array_equal(s, state)
    o = net.optimizer.state_dict()
    assert o["step"] == opt["step"]
    for k in o["exp_avg"]:
        assert np.array_equal(o["exp_avg"][k], opt["exp_avg"][k])


BAD_X = [
    (np.zeros(IN + 1), ValueError, r"x must have shape \(24,\).*got \(25,\)"),
    (np.zeros((3, IN - 1)), ValueError, r"x must have shape.*got \(3, 23\)"),
    (np.zeros((0, IN)), ValueError, r"x must have shape.*batch >= 1.*got \(0, 24\)"),
    (np.zeros((2, 3, IN)), ValueError, r"x must have shape.*got \(2, 3, 24\)"),
    (np.float64(1.0), ValueError, r"x must have shape.*got \(\)"),
    (np.full(IN, np.nan), ValueError, "x contains NaN or Inf"),
    (np.r_[np.zeros(IN - 1), np.inf], ValueError, "x contains NaN or Inf"),
    (np.full(IN, 1e300), ValueError, "x contains NaN or Inf.*too large for float32"),
    (np.array(["a"] * IN), TypeError, "x must hold real numbers"),
    (np.zeros(IN, dtype=complex), TypeError, "x must hold real numbers"),
    ([[1.0] * IN, [1.0] * (IN - 1)], ValueError, "x must be a rectangular array"),
    (None, TypeError, "x must hold real numbers"),
    ({"a": 1}, TypeError, "x must hold real numbers"),
]


@pytest.mark.parametrize("x, exc, msg", BAD_X, ids=range(len(BAD_X)))
@pytest.mark.parametrize("method", ["forward", "predict_proba", "predict", "decide"])
def test_bad_x(net, x, exc, msg, method):
    net(np.zeros((1, IN)))              # a non-empty state that must survive the error
    snap = snapshot(net)
    with pytest.raises(exc, match=msg):
        getattr(net, method)(x)
    assert_unchanged(net, snap)


@pytest.mark.parametrize("x, exc, msg", BAD_X[:3] + BAD_X[5:9], ids=range(7))
@pytest.mark.parametrize("method", ["train_step", "loss_and_grad"])
def test_bad_x_in_training(net, x, exc, msg, method):
    snap = snapshot(net)
    y = np.zeros(np.atleast_2d(x).shape[0] if np.ndim(x) else 1, dtype=int)
    with pytest.raises(exc, match=msg):
        getattr(net, method)(x, y)
    assert_unchanged(net, snap)


# Every kind of wrong label is told the same thing about what is accepted.
ACCEPTED = r"y must hold integer labels in \[0, 5\) \(ints, or floats with integral values\)"
BAD_Y = [
    ([0, 1], ValueError, r"y must hold one label per row of x: shape \(3,\), got \(2,\)"),
    ([0, 1, 5], ValueError, ACCEPTED + r", got values from 0 to 5"),
    ([0, -1, 2], ValueError, ACCEPTED + r", got values from -1"),
    ([0.0, 1.5, 2.0], ValueError, "y must hold integer labels.*non-integer"),
    ([0.0, np.nan, 2.0], ValueError, "y must hold integer labels.*non-integer"),
    (["a", "b", "c"], TypeError, ACCEPTED + r", got strings .*tool_names=\[\.\.\.\]"),
    ([True, False, True], TypeError, ACCEPTED + ", got dtype bool"),
    (np.eye(5)[[0, 1, 2]], ValueError, r"shape \(3,\), got \(3, 5\) \(one-hot labels\? pass "
                                       r"y\.argmax\(axis=1\)\)"),
]


@pytest.mark.parametrize("y, exc, msg", BAD_Y, ids=range(len(BAD_Y)))
@pytest.mark.parametrize("method", ["train_step", "loss_and_grad", "evaluate", "fit"])
def test_bad_y(net, y, exc, msg, method):
    x = np.random.default_rng(0).standard_normal((3, IN))
    snap = snapshot(net)
    kwargs = {"verbose": 0} if method == "fit" else {}
    with pytest.raises(exc, match=msg):
        getattr(net, method)(x, y, **kwargs)
    assert_unchanged(net, snap)


def test_float_labels_with_integer_values_are_accepted(net):
    x = np.random.default_rng(0).standard_normal((3, IN))
    assert np.isfinite(net.train_step(x, np.array([0.0, 1.0, 4.0])))


@pytest.mark.parametrize("kwargs, exc, name", [
    ({"input_size": 0}, ValueError, "input_size"),
    ({"num_tools": 2.5}, TypeError, "num_tools"),
    ({"hidden_size": True}, TypeError, "hidden_size"),
    ({"spiking_size": -3}, ValueError, "spiking_size"),
    ({"threshold": float("nan")}, ValueError, "threshold"),
    ({"threshold": "0.5"}, TypeError, "threshold"),
    ({"refractory_period": -1}, ValueError, "refractory_period"),
    ({"refractory_period": 1.0}, TypeError, "refractory_period"),
    ({"surrogate_slope": -1.0}, ValueError, "surrogate_slope"),
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": "x"}, TypeError, "seed"),
    ({"device": "tpu"}, ValueError, "device"),
    ({"device": 0}, TypeError, "device"),
    ({"lr": -1.0}, ValueError, "lr"),
    ({"betas": (0.9, 1.0)}, ValueError, "betas"),
    ({"betas": 0.9}, TypeError, "betas"),
])
def test_bad_constructor_arguments(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        AIVANet(**{**SMALL, **kwargs})


def test_cuda_without_cupy_or_gpu_is_a_clear_error():
    try:
        import cupy  # noqa: F401
        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a GPU is present")
    except Exception:
        pass
    with pytest.raises(RuntimeError, match="CUDA"):
        AIVANet(**SMALL, device="cuda")
    net = AIVANet(**SMALL)
    with pytest.raises(RuntimeError, match="CUDA"):
        net.to("cuda")
    assert net.device == "cpu"
    assert net.predict_proba(np.zeros(IN)).shape == (SMALL["num_tools"],)


@pytest.mark.parametrize("sd, exc, msg", [
    ({"fc1.weight": np.zeros((24, 40))}, ValueError, "missing"),
    ("weights", TypeError, "state_dict must be a mapping"),
])
def test_bad_state_dict_shape_keys(net, sd, exc, msg):
    with pytest.raises(exc, match=msg):
        net.load_state_dict(sd)


def test_bad_state_dict_values_leave_weights_unchanged(net):
    snap = snapshot(net)
    good = net.state_dict()
    cases = [
        ({**good, "spiking.weight": np.zeros((40, 31))}, ValueError, r"spiking.weight.*shape \(40, 30\)"),
        ({**good, "fc2.weight": np.full((30, 5), np.inf)}, ValueError, r"fc2.weight.*NaN or Inf"),
        ({**good, "fc2.weight": np.full((30, 5), "x")}, TypeError, r"fc2.weight.*real numbers"),
        ({**good, "extra": np.zeros(1)}, ValueError, "unexpected"),
    ]
    for sd, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            net.load_state_dict(sd)
        assert_unchanged(net, snap)
    net.load_state_dict({**good, "extra": np.zeros(1)}, strict=False)


def test_bad_decide_confidence(net):
    with pytest.raises(ValueError, match="confidence"):
        net.decide(np.zeros(IN), confidence=1.5)
    with pytest.raises(TypeError, match="confidence"):
        net.decide(np.zeros(IN), confidence="high")


def test_bad_sequence(net):
    with pytest.raises(ValueError, match=r"xs must have shape"):
        net.forward_sequence(np.zeros((0, 2, IN)))
    with pytest.raises(ValueError, match=r"xs must have shape"):
        net.forward_sequence(np.zeros(IN))
    net(np.zeros((2, IN)))
    snap = snapshot(net)
    xs = np.zeros((4, 2, IN))
    xs[3, 1, 0] = np.nan              # the last step is bad: no step may be applied
    with pytest.raises(ValueError, match="xs contains NaN"):
        net.forward_sequence(xs)
    assert_unchanged(net, snap)


def test_engine_refuses_out_of_bounds_whatever_it_is_handed(net):
    eng = net._engine
    with pytest.raises(ValueError):
        eng.forward(np.zeros((2, IN + 3), np.float32))
    with pytest.raises(ValueError):
        eng.loss_and_grad(np.zeros((2, IN), np.float32), np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="label"):
        eng.loss_and_grad(np.zeros((2, IN), np.float32), np.array([0, 99], np.int64))
    with pytest.raises(ValueError):
        eng.set_state(np.zeros((2, 7), np.int32))
    with pytest.raises(ValueError):
        eng.set_state(np.full((2, SMALL["spiking_size"]), 99, np.int32))
