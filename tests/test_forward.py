"""The C engine's forward pass against the float64 reference of docs/contract.md, "One time step".

Every probability is checked against the reference within its float32 error bound
(bounds.py: the products' gamma_K, tanh, the threshold, the fc2 product and softmax), and
every spike wherever the membrane is farther from the threshold than its bound."""
import numpy as np
import pytest

import bounds as bd
from aiva_cy import AIVANet
from aiva_cy.reference import ReferenceNet

from conftest import DEFAULT, SMALL, firing_weights, safe_inputs


def make(sizes, refractory_period=2, seed=0, threshold=0.5):
    net = AIVANet(**sizes, refractory_period=refractory_period, threshold=threshold, seed=seed)
    w = firing_weights(sizes, seed, threshold)
    net.load_state_dict(w)
    ref = bd.BoundedNet(w, threshold=threshold, refractory_period=refractory_period)
    return net, ref, w


def state_of(net):
    """The engine's countdown after a step (its output spikes are the entries equal to the
    period): the reference follows the engine where a spike was ambiguous."""
    return net.get_state() if net.refractory_period > 0 else None


def test_default_size_and_parameter_count():
    net = AIVANet()
    assert net.num_parameters == 3_166_208
    assert (net.input_size, net.num_tools, net.hidden_size, net.spiking_size) == (512, 20, 2048, 1024)
    assert net.threshold == 0.5 and net.refractory_period == 2
    sd = net.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {
        "fc1.weight": (512, 2048), "spiking.weight": (2048, 1024), "fc2.weight": (1024, 20)}
    assert all(v.dtype == np.float32 for v in sd.values())


def test_default_init_fires_between_1_and_50_percent_and_seed_repeats():
    net = AIVANet(seed=7)
    x = np.random.default_rng(0).standard_normal((64, 512))
    ref = ReferenceNet(net.state_dict(), threshold=net.threshold)
    rate = ref.forward_cache(x)["raw"].mean()
    assert 0.01 <= rate <= 0.50
    again = AIVANet(seed=7).state_dict()
    other = AIVANet(seed=8).state_dict()
    for k, v in net.state_dict().items():
        assert np.array_equal(v, again[k])
        assert not np.array_equal(v, other[k])


# Every period at the small size; the default size (slow in float64) with periods 0 and 2.
CASES = ([(SMALL, b, r) for b in (1, 7, 33) for r in (0, 1, 2, 5)]
         + [(DEFAULT, b, r) for b in (1, 7, 33) for r in (0, 2)])


@pytest.mark.parametrize("sizes, batch, refractory_period", CASES,
                         ids=[f"{'small' if s is SMALL else 'default'}-b{b}-r{r}" for s, b, r in CASES])
def test_sequence_matches_reference(sizes, batch, refractory_period):
    net, ref, w = make(sizes, refractory_period, seed=batch + refractory_period)
    steps = 8 if sizes is SMALL else 6
    shape = (steps, batch, sizes["input_size"])
    if sizes is SMALL:
        # every membrane clear of its bound (~1e-5): the spikes must equal the reference's
        xs = safe_inputs(w, shape, seed=batch)
    else:
        # the default size's bound (~1e-3) puts some membrane of most rows within it: there
        # either spike is right; the engine's own spikes (its state) carry the reference on,
        # and with period 0 a row's probabilities must match one of its possible spikings
        xs = np.random.default_rng(batch).standard_normal(shape)
    masked_any = False
    for t in range(steps):
        got = net(xs[t])
        s = ref.step(xs[t], state=state_of(net))
        masked_any |= bool((s.raw & ~s.mask).any())
        assert got.shape == (batch, sizes["num_tools"]) and got.dtype == np.float32
        bd.assert_probs(got, s)
    # The data must exercise what is being tested: the mask closes some raw spikes.
    assert masked_any == (refractory_period > 0)


def test_one_dimensional_input_is_a_batch_of_one():
    net, ref, w = make(SMALL)
    x = safe_inputs(w, (6, SMALL["input_size"]), seed=1)
    for t in range(6):
        got = net(x[t])
        assert got.shape == (SMALL["num_tools"],)
        bd.assert_probs(got[None], ref.step(x[t], state=net.get_state()))
    assert net.state_batch_size == 1


def test_forward_sequence_equals_stepping_and_continues_state():
    net, ref, w = make(SMALL, refractory_period=3)
    xs = safe_inputs(w, (7, 5, SMALL["input_size"]), seed=2)
    net(xs[0]); ref.step(xs[0])                       # start from a non-empty state
    got = net.forward_sequence(xs[1:])
    assert got.shape == (6, 5, SMALL["num_tools"])
    for t, x in enumerate(xs[1:]):                    # clear inputs: the reference's spikes
        bd.assert_probs(got[t], ref.step(x))
    np.testing.assert_array_equal(net.get_state(), ref.countdown(5))
    # 2-D sequence: one stream
    net.reset_state(); ref.reset()
    got1 = net.forward_sequence(xs[:, 0, :])
    assert got1.shape == (7, SMALL["num_tools"])
    for t, x in enumerate(xs):
        bd.assert_probs(got1[t][None], ref.step(x[0:1]))


def test_reset_state_empties_the_ring_buffer():
    net, ref, w = make(SMALL, refractory_period=5)
    xs = safe_inputs(w, (4, 3, SMALL["input_size"]), seed=3)
    first = net(xs[0])
    net(xs[1]); net(xs[2])
    net.reset_state()
    assert net.state_batch_size is None
    np.testing.assert_array_equal(net(xs[0]), first)


def test_batch_size_change_raises_until_reset():
    net, _, w = make(SMALL)
    x = safe_inputs(w, (7, SMALL["input_size"]), seed=4)
    net(x)
    with pytest.raises(ValueError, match=r"batch size 3.*7 streams.*reset_state"):
        net(x[:3])
    with pytest.raises(ValueError, match="reset_state"):
        net.forward_sequence(x[None, :3])
    net.reset_state()
    assert net(x[:3]).shape == (3, SMALL["num_tools"])


def test_predict_proba_is_stateless_and_from_an_empty_state():
    net, ref, w = make(SMALL, refractory_period=4)
    xs = safe_inputs(w, (3, 6, SMALL["input_size"]), seed=5)
    net(xs[0]); net(xs[1])
    before = net._engine.get_state()
    p = net.predict_proba(xs[2])
    bd.assert_probs(p, bd.BoundedNet(w, threshold=0.5, refractory_period=4).forward(xs[2]))
    np.testing.assert_array_equal(net._engine.get_state(), before)
    # a different batch size is fine: there is no state involved
    assert net.predict_proba(xs[2][:2]).shape == (2, SMALL["num_tools"])
    assert net.predict_proba(xs[2][0]).shape == (SMALL["num_tools"],)


def test_predict_and_decide():
    net, ref, w = make(SMALL)
    x = safe_inputs(w, (9, SMALL["input_size"]), seed=6)
    p = ref.forward(x).p
    # the choice is the reference's argmax, or a tool within the two bounds of it
    rows = np.arange(9)
    idx = net.predict(x)
    assert idx.dtype == np.int64 and bd.argmax_consistent(idx, p).all()
    assert bd.argmax_consistent(net.predict(x[0]), p[0:1]).all()
    tool, conf, ok = net.decide(x[0], confidence=0.7)
    assert isinstance(tool, int) and isinstance(conf, float) and isinstance(ok, bool)
    assert bd.argmax_consistent(tool, p[0:1]).all()
    bd.assert_within(conf, p[0, tool], what="confidence")
    assert ok == (conf >= 0.7)
    tools, confs, oks = net.decide(x, confidence=0.9)
    assert bd.argmax_consistent(tools, p).all()
    bd.assert_within(confs, p[rows, tools], what="confidences")
    assert np.array_equal(oks, confs >= 0.9)
    assert net.decide(x[0], confidence=0.0)[2] is True


def test_inputs_of_any_dtype_order_and_stride():
    net, ref, w = make(SMALL, refractory_period=0)
    x = safe_inputs(w, (5, SMALL["input_size"]), seed=7)
    want = ref.forward(x)        # the bound includes rounding x to float32, as each does
    variants = [x, x.astype(np.float32), np.asfortranarray(x), x.tolist(),
                np.repeat(x, 2, axis=1)[:, ::2], x[::-1][::-1]]
    for v in variants:
        bd.assert_probs(net.predict_proba(v), want)
    ints = np.random.default_rng(0).integers(-2, 3, (5, SMALL["input_size"]))
    bd.assert_probs(net.predict_proba(ints), ref.forward(ints))
    bools = ints > 0
    bd.assert_probs(net.predict_proba(bools), ref.forward(bools))


def test_state_dict_round_trip_and_copies():
    net, _, w = make(SMALL)
    sd = net.state_dict()
    for k in w:
        assert np.array_equal(sd[k], w[k])
    sd["fc1.weight"][:] = 0          # a copy: the net is untouched
    assert np.array_equal(net.state_dict()["fc1.weight"], w["fc1.weight"])


def test_refractory_mask_blocks_a_neuron_for_exactly_the_period():
    # One neuron, driven far above threshold every step: it fires, stays silent for R steps,
    # fires again.  fc2 maps the spike to tool 1, silence to a uniform softmax.
    for R in (0, 1, 2, 5):
        net = AIVANet(input_size=1, num_tools=2, hidden_size=1, spiking_size=1, refractory_period=R)
        net.load_state_dict({"fc1.weight": np.ones((1, 1)), "spiking.weight": np.ones((1, 1)),
                             "fc2.weight": np.array([[0.0, 5.0]])})
        fired = [net([2.0])[1] > 0.9 for _ in range(13)]
        assert fired == [t % (R + 1) == 0 for t in range(13)], R


# -- property-based: any small shape, batch, period and sequence length ----------------------
from hypothesis import HealthCheck, assume, given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.tuples(st.integers(1, 12), st.integers(1, 24), st.integers(1, 24),
                       st.integers(1, 6)),
       batch=st.integers(1, 9), steps=st.integers(1, 7), period=st.integers(0, 4),
       threshold=st.floats(-0.5, 1.0, width=32), seed=st.integers(0, 2**16))
def test_any_small_shape_matches_reference(sizes, batch, steps, period, threshold, seed):
    i, h, s, t = sizes
    dims = dict(input_size=i, hidden_size=h, spiking_size=s, num_tools=t)
    w = firing_weights(dims, seed, threshold)
    xs = np.random.default_rng(seed).standard_normal((steps, batch, i))
    # every membrane farther from the threshold than its bound
    assume(not bd.ambiguous_rows(w, xs, threshold).any())
    net = AIVANet(**dims, threshold=threshold, refractory_period=period)
    net.load_state_dict(w)
    ref = bd.BoundedNet(w, threshold=threshold, refractory_period=period)
    got = net.forward_sequence(xs)
    for t, x in enumerate(xs):
        bd.assert_probs(got[t], ref.step(x))
    # and the stateless path agrees with a fresh reference on the first step
    bd.assert_probs(net.predict_proba(xs[0]),
                    bd.BoundedNet(w, threshold=threshold).forward(xs[0]))
