"""The error bounds the numerical tests take their tolerances from (bounds.py): their
float64 values are the reference's, their constants cover the functions in use, and they
bound real float32 computations without being vacuous."""
import numpy as np
import pytest

import bounds as bd
from aiva_cy import AIVANet
from aiva_cy.reference import ReferenceNet

from conftest import DEFAULT, SMALL, firing_weights, safe_inputs

MEDIUM = dict(input_size=64, num_tools=10, hidden_size=96, spiking_size=80)


def dense_grid(n, top=9.0, seed=0):
    """float32 arguments over [-top, top]: half log-uniform in magnitude down to 1e-6 (the
    small-argument branches), half uniform."""
    rng = np.random.default_rng(seed)
    mag = np.exp(rng.uniform(np.log(1e-6), np.log(top), n // 2))
    y = np.concatenate([mag, rng.uniform(-top, top, n - n // 2)]).astype(np.float32)
    y[: n // 4] *= -1
    return y


def rel_err_in_u(got, exact):
    return float((np.abs(np.asarray(got, np.float64) - exact) / (np.abs(exact) * bd.U32)).max())


def engine_tanh(y):
    """The engine's own tanh of float32 y, read through a gradient that multiplies it by an
    exact 0.5: fc1 = y (input 1.0, one product each), no spikes (threshold 1e30), fc2 makes
    z = 0 so dz = (-0.5, 0.5), dv = 0.5 with slope 0, and g_spiking = h * 0.5."""
    n = y.size
    net = AIVANet(input_size=1, num_tools=2, hidden_size=n, spiking_size=1, threshold=1e30,
                  surrogate_slope=0.0, refractory_period=0)
    net.load_state_dict({"fc1.weight": y[None, :], "spiking.weight": np.zeros((n, 1)),
                         "fc2.weight": np.array([[0.0, 1.0]])})
    _, g = net.loss_and_grad(np.ones((1, 1)), [0])
    return 2.0 * g["spiking.weight"][:, 0].astype(np.float64)


def test_tanh_bound_covers_the_engines_tanh():
    y = dense_grid(1 << 20)
    got = rel_err_in_u(engine_tanh(y), np.tanh(y.astype(np.float64)))
    print(f"engine tanh: {got:.3g} u relative")
    assert got <= bd.TANH_REL / bd.U32


def test_tanh_and_exp_bounds_cover_numpy_and_onnxruntime():
    y = dense_grid(1 << 20, seed=1)
    t, neg = np.tanh(y.astype(np.float64)), -np.abs(y) * 9.6       # exp down to -86
    results = {"numpy tanh": rel_err_in_u(np.tanh(y), t),
               "numpy exp": rel_err_in_u(np.exp(neg), np.exp(neg.astype(np.float64)))}
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        onnx = None
    if onnx is not None:
        from onnx import TensorProto, helper
        nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Exp", ["x"], ["e"])]
        graph = helper.make_graph(
            nodes, "fns", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None]) for n in ("t", "e")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        results["onnxruntime tanh"] = rel_err_in_u(sess.run(None, {"x": y})[0], t)
        results["onnxruntime exp"] = rel_err_in_u(sess.run(None, {"x": neg})[1],
                                                  np.exp(neg.astype(np.float64)))
    for name, got in results.items():
        print(f"{name}: {got:.3g} u relative")
        limit = bd.TANH_REL if "tanh" in name else bd.EXP_REL
        assert got <= limit / bd.U32, name


@pytest.mark.parametrize("sizes", [SMALL, DEFAULT], ids=["small", "default"])
def test_softmax_evaluation_bound_holds_for_the_engines_own_logits(sizes):
    # with_logits hands out the engine's float32 z of the same call: its probabilities are
    # softmax(z) up to the evaluation error alone.
    w = firing_weights(sizes, 2)
    net = AIVANet(**sizes)
    net.load_state_dict(w)
    x = np.random.default_rng(0).standard_normal((64, sizes["input_size"]))
    p, z = net._engine.predict(np.ascontiguousarray(x, np.float32), with_logits=True)
    bd.assert_within(p, bd.softmax(bd.exact(z)), what="p from the engine's z")
    assert np.abs(p.sum(axis=1, dtype=np.float32) - 1).max() <= bd.softmax_sum_bound(
        sizes["num_tools"])


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("sizes", [SMALL, MEDIUM], ids=["small", "medium"])
def test_bounded_values_are_the_references(sizes, precision):
    """BoundedNet computes its values with the reference's formulas (aiva_cy.reference,
    and for bfloat16 the same with bf16-rounded operands)."""
    w = firing_weights(sizes, 3)
    x = safe_inputs(w, (9, sizes["input_size"]), seed=3, precision=precision)
    y = np.arange(9) % sizes["num_tools"]
    b = bd.BoundedNet(w, refractory_period=2, surrogate_slope=4.0, precision=precision)
    if precision == "float32":
        ref = ReferenceNet(w, refractory_period=2, surrogate_slope=4.0)
    else:
        from test_bf16 import BF16Reference
        ref = BF16Reference(w, refractory_period=2, surrogate_slope=4.0)
    for _ in range(2):                        # the second step with the mask of the first
        loss, g, s = b.loss_and_grad(x, y)
        loss_ref, g_ref = ref.loss_and_grad(x, y)
        assert loss.v == pytest.approx(loss_ref, rel=1e-12)
        for k in g:
            np.testing.assert_allclose(g[k].v, g_ref[k], rtol=1e-9,
                                       atol=1e-12 * np.abs(g_ref[k]).max())
    assert (~s.mask).any()


@pytest.mark.parametrize("sizes", [SMALL, MEDIUM, DEFAULT], ids=["small", "medium", "default"])
def test_bounds_hold_for_a_numpy_float32_step_and_are_not_vacuous(sizes):
    """NumPy's float32 step (its own BLAS, tanh and exp) is another float32 engine: within
    the bounds, and no more than ~3 orders of magnitude inside them at these sizes."""
    w = firing_weights(sizes, 4)
    b = bd.BoundedNet(w, refractory_period=0)
    x = np.random.default_rng(4).standard_normal((33, sizes["input_size"]))
    s = b.forward(x)
    x32 = x.astype(np.float32)
    a = x32 @ w["fc1.weight"]
    v = np.tanh(a) @ w["spiking.weight"]
    for name, got, want in (("a", a, s.a), ("v", v, s.v)):
        bd.assert_within(got, want, what=name)
        ratio = (np.abs(got - want.v) / want.err).max()
        print(f"{name}: observed / bound {ratio:.3g}")
        assert ratio > 1e-4, name
    # spikes: equal wherever the bound says they must be
    assert ((v >= 0.5) == s.raw)[~s.ambiguous].all()


def test_worst_case_sum_bound_holds_in_the_worst_order():
    # A sequential float32 sum of same-sign terms (stagnation: the case where rounding
    # errors do not cancel): the worst-case bound holds; it is what `err` falls back to.
    t = np.full(1 << 16, 1.0 + 2 ** -10, np.float32)
    s = float(np.cumsum(t, dtype=np.float32)[-1])      # sequential in float32
    exact = float(t.astype(np.float64).sum())
    print(f"error {abs(s - exact):.3g}, worst-case bound {bd.gamma(t.size) * exact:.3g}")
    assert 0 < abs(s - exact) <= bd.gamma(t.size) * exact


def test_bf16_rounding_of_a_computed_value():
    rng = np.random.default_rng(5)
    v = rng.standard_normal(100_000)
    err = np.abs(rng.standard_normal(100_000)) * 1e-4 * np.abs(v)
    rounded = bd.Bounded(v, err, err, 0.0).to_bf16()
    # any value the engine may hold, rounded to bf16, is within the bound of bf(v)
    for t in (-1.0, -0.5, 0.5, 1.0):
        engine = (v + t * err).astype(np.float32)
        assert (np.abs(bd.bf(engine) - rounded.v) <= rounded.err).all()
    assert (rounded.err == 0).mean() > 0.9         # exact except near a boundary


@pytest.mark.parametrize("qmax", [127, 63])
def test_int8_quantization_of_a_computed_value(qmax):
    rng = np.random.default_rng(7)
    v = np.tanh(rng.standard_normal((400, 300)) * 2)      # rows of h, each with its own max
    err = np.abs(rng.standard_normal(v.shape)) * 1e-6
    quantized = bd.Bounded(v, err, err, 0.0).to_int8(qmax)
    q, s = bd.quantize_rows(v, qmax)
    assert np.array_equal(quantized.v, q * s)
    # any value the engine may hold, quantized per row as it does, is within the bound
    for t in (-1.0, -0.5, 0.5, 1.0):
        eq, es = bd.quantize_rows((v + t * err * rng.choice([-1, 1], v.shape)).astype(np.float32),
                                  qmax)
        assert (np.abs(eq * es - quantized.v) <= quantized.err).all()
    # a whole step of error only where a boundary lies within err: elsewhere the scale's drift
    assert (quantized.err < 0.01 * s).mean() > 0.9
    # an exact input (x) quantizes exactly
    assert not bd.exact(v).to_int8(qmax).err.any()


def test_softmax_perturbation_bound():
    rng = np.random.default_rng(6)
    for scale in (1.0, 10.0, 40.0):
        z = rng.standard_normal((200, 20)) * scale
        d = 1e-3
        delta = rng.uniform(-d, d, z.shape)
        p0 = bd.softmax(bd.Bounded(z, d, d, 0.0, u=0.0))
        p1 = bd.softmax(bd.exact(z + delta, u=0.0)).v
        assert (np.abs(p1 - p0.v) <= p0.err).all()


def test_adam_update_values_are_the_reference_formulas():
    from aiva_cy.reference import adam_step
    rng = np.random.default_rng(7)
    w = rng.standard_normal(50)
    W, M, V = bd.exact(w), bd.exact(np.zeros(50)), bd.exact(np.zeros(50))
    m = v = np.zeros(50)
    for t in range(1, 6):
        g = rng.standard_normal(50).astype(np.float32)
        W, M, V = bd.adam_update(W, g, M, V, t, lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)
        w, m, v = adam_step(w, g.astype(np.float64), m, v, t, lr=0.01, betas=(0.8, 0.99),
                            weight_decay=0.1)
        np.testing.assert_allclose(W.v, w, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(M.v, m, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(V.v, v, rtol=1e-12, atol=1e-15)
