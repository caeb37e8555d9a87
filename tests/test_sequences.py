"""Sequences first-class: forward_sequence computes all T steps' products at once with the
numbers of stepping, and episodes train with the contract's gradient per step, summed.

Tolerances: float32 against the float64 reference, per element, from the forward error
bound of a float32 dot product of K terms, gamma_K = K u / (1 - K u) times the sum of
|terms| (u = 2**-24), carried through the layers (tests/c/test_core.c derives the same
bound element by element; here its largest value over the arrays is used).  Inputs are
screened so that no membrane lies within that bound of the threshold, where a spike may
honestly go either way.
"""
import numpy as np
import pytest

from aiva_cy import AIVANet
from aiva_cy.reference import ReferenceNet, sequence_loss_and_grad
from conftest import SMALL, DEFAULT, exact_default_case, firing_weights

U = 2.0 ** -24


def gamma(k):
    return k * U / (1 - k * U)


def membrane_bound(w, xs2d):
    """A bound on |v_float32 - v_exact| per row and neuron (the hidden layer's product
    error through 1-Lipschitz tanh, plus the spiking product's own)."""
    x = np.abs(np.asarray(xs2d, np.float64))
    w1, w2 = (np.abs(np.asarray(w[k], np.float64)) for k in ("fc1.weight", "spiking.weight"))
    i, h = w1.shape
    eh = gamma(i) * (x @ w1) + 8 * U          # + the rational tanh's few ulp
    hv = np.tanh(np.abs(np.asarray(xs2d, np.float64) @ np.asarray(w["fc1.weight"], np.float64)))
    return eh @ w2 + gamma(h) * ((hv + eh) @ w2)


def screened_episode(w, steps, batch, seed, threshold=0.5):
    """N(0,1) inputs (T, B, in) whose membranes all stay farther than their bound from the
    threshold, and the bound on the logits' error given equal spikes."""
    rng = np.random.default_rng(seed)
    n_in = w["fc1.weight"].shape[0]
    for _ in range(50):
        xs = rng.standard_normal((steps, batch, n_in))
        flat = xs.reshape(-1, n_in)
        v = np.tanh(flat @ w["fc1.weight"].astype(np.float64)) @ w["spiking.weight"].astype(np.float64)
        if (np.abs(v - threshold) > 2 * membrane_bound(w, flat)).all():
            return xs
    pytest.skip("could not draw inputs away from the threshold")


def logits_bound(w):
    fc2 = np.abs(np.asarray(w["fc2.weight"], np.float64))
    return gamma(fc2.shape[0]) * fc2.sum(axis=0).max()


@pytest.mark.parametrize("sizes,steps,batch", [(SMALL, 1, 1), (SMALL, 7, 1), (SMALL, 5, 7),
                                               (SMALL, 3, 33), (DEFAULT, 9, 1), (DEFAULT, 4, 7),
                                               (DEFAULT, 2, 33)])
def test_forward_sequence_matches_stepping_and_the_reference(sizes, steps, batch):
    if sizes is DEFAULT:
        w, xs, threshold = exact_default_case(steps, batch, seed=steps + batch)
    else:
        w, threshold = firing_weights(sizes, 1), 0.5
        xs = screened_episode(w, steps, batch, seed=steps * 100 + batch)
    net = AIVANet(**sizes, seed=0, threshold=threshold)
    net.load_state_dict(w)
    got = net.forward_sequence(xs)
    state_seq = net.get_state()
    net.reset_state()
    stepped = np.stack([net.forward(x) for x in xs])
    state_step = net.get_state()
    ref = ReferenceNet(w, threshold=threshold)
    want = np.stack([ref.step(x) for x in xs])
    # Equal spikes (screened inputs): probabilities move by at most ~2 * the logits' bound
    # (softmax is 1-Lipschitz in the max-norm of logit differences, times p <= 1), doubled
    # for two float32 computations, plus a few ulp of the softmax itself.
    tol = 2 * 2 * logits_bound(w) + 64 * U
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    np.testing.assert_allclose(got, stepped, rtol=0, atol=tol)
    np.testing.assert_array_equal(state_seq, state_step)
    assert got.shape == (steps, batch, sizes["num_tools"])


def test_forward_sequence_chunks_over_steps(monkeypatch):
    from aiva_cy import _core as core
    w = firing_weights(SMALL, 2)
    xs = screened_episode(w, 23, 3, seed=5)
    whole = AIVANet(**SMALL, seed=0)
    whole.load_state_dict(w)
    want = whole.forward_sequence(xs)
    # Chunks of 7 rows: 2 steps of 3 streams per chunk, 12 chunks, the state carried across.
    monkeypatch.setattr(core, "WORKSPACE_LIMIT",
                        core._row_bytes(SMALL["hidden_size"], SMALL["spiking_size"],
                                        SMALL["num_tools"], SMALL["input_size"]) * 7)
    chunked = AIVANet(**SMALL, seed=0)
    chunked.load_state_dict(w)
    got = chunked.forward_sequence(xs)
    np.testing.assert_allclose(got, want, rtol=0, atol=2 * 2 * logits_bound(w) + 64 * U)
    np.testing.assert_array_equal(chunked.get_state(), whole.get_state())
    # A failure in a later chunk leaves the state as it was.
    bad = xs.copy()
    bad[20, 1, 0] = np.nan
    before = chunked.get_state()
    with pytest.raises(ValueError, match="NaN"):
        chunked.forward_sequence(bad)
    np.testing.assert_array_equal(chunked.get_state(), before)


def grad_tolerance(w, g_ref, rows):
    """Bound on a float32 gradient entry's error against float64, per gradient: the products
    sum `rows` terms (gamma_rows) of factors themselves within their forward bounds; the
    largest relative forward error (the membrane's, through the surrogate's slope 2k) is
    taken for all.  Stated loosely but derived: 4 * (gamma_rows + gamma_K + 2k e_v) * scale."""
    scale = {k: np.abs(v).max() + 1e-30 for k, v in g_ref.items()}
    k_width = max(w["fc1.weight"].shape + w["spiking.weight"].shape)
    return {k: 4 * (gamma(rows) + gamma(k_width) + 2 * 25.0 * 1e-5) * scale[k] for k in g_ref}


@pytest.mark.parametrize("sizes,steps,batch", [(SMALL, 1, 1), (SMALL, 6, 1), (SMALL, 5, 7),
                                               (SMALL, 4, 33), (DEFAULT, 3, 7)])
def test_episode_loss_and_gradients_match_the_reference(sizes, steps, batch):
    if sizes is DEFAULT:
        w, xs, threshold = exact_default_case(steps, batch, seed=steps * batch)
    else:
        w, threshold = firing_weights(sizes, 3), 0.5
        xs = screened_episode(w, steps, batch, seed=steps + 31 * batch)
    rng = np.random.default_rng(steps)
    ys = rng.integers(0, sizes["num_tools"], (steps, batch))
    ys[rng.random((steps, batch)) < 0.3] = -1            # steps without a target
    ys[0, 0] = 1                                         # at least one target
    sw = rng.uniform(0.1, 2.0, (steps, batch))
    net = AIVANet(**sizes, seed=0, threshold=threshold)
    net.load_state_dict(w)
    net.forward(xs[0])                                    # a stream state the episode ignores
    held = net.get_state()
    loss, grads = net.loss_and_grad_sequence(xs, ys, sample_weight=sw)
    want_loss, want_grads, _ = sequence_loss_and_grad(w, xs, ys, sw, threshold=threshold)
    np.testing.assert_array_equal(net.get_state(), held)
    assert loss == pytest.approx(want_loss, rel=4 * gamma(sizes["spiking_size"]) + 1e-6)
    tol = grad_tolerance(w, want_grads, steps * batch)
    for k, g in grads.items():
        np.testing.assert_allclose(g, want_grads[k], rtol=0, atol=tol[k], err_msg=k)


def test_episode_weights_and_targets():
    w = firing_weights(SMALL, 4)
    xs = screened_episode(w, 4, 3, seed=9)
    net = AIVANet(**SMALL, seed=0)
    net.load_state_dict(w)
    ys = np.array([[0, 1, 2], [-1, -1, -1], [3, 4, 0], [1, -1, 2]])
    # (B,) weights broadcast over steps; (T, in) is one stream.
    l1, _ = net.loss_and_grad_sequence(xs, ys, sample_weight=[1.0, 2.0, 0.5])
    want, _, _ = sequence_loss_and_grad(w, xs, ys, np.array([1.0, 2.0, 0.5])[None, :])
    assert l1 == pytest.approx(want, rel=1e-5)
    l2, _ = net.loss_and_grad_sequence(xs[:, 0], ys[:, 0])
    want2, _, _ = sequence_loss_and_grad(w, xs[:, :1], ys[:, :1])
    assert l2 == pytest.approx(want2, rel=1e-5)
    with pytest.raises(ValueError, match="no step has a target"):
        net.loss_and_grad_sequence(xs, -np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"ys must hold one label per step"):
        net.loss_and_grad_sequence(xs, ys[:3])
    with pytest.raises(ValueError, match="argmax"):
        net.loss_and_grad_sequence(xs, np.eye(SMALL["num_tools"])[np.maximum(ys, 0)])
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        net.loss_and_grad_sequence(xs, ys + 5)
    with pytest.raises(ValueError, match="sample_weight"):
        net.loss_and_grad_sequence(xs, ys, sample_weight=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="sample_weight"):
        net.loss_and_grad_sequence(xs, ys, sample_weight=np.ones(5))
    with pytest.raises(TypeError, match="bool"):
        net.loss_and_grad_sequence(xs, ys > 0)
    with pytest.raises(ValueError, match="xs must have shape"):
        net.loss_and_grad_sequence(xs[0, 0], ys)
    bad = xs.copy()
    bad[2, 1, 3] = np.inf
    with pytest.raises(ValueError, match="xs"):
        net.loss_and_grad_sequence(bad, ys)


def test_train_sequence_changes_nothing_on_failure_and_learns():
    net = AIVANet(**SMALL, seed=0)
    net.load_state_dict(firing_weights(SMALL, 5))
    before = net.state_dict()
    with pytest.raises(ValueError):
        net.train_sequence(np.ones((3, 2, SMALL["input_size"])), np.full((3, 2), 7))
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert net.optimizer.step == 0
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((6, 4, SMALL["input_size"]))
    ys = rng.integers(0, SMALL["num_tools"], (6, 4))
    first = net.train_sequence(xs, ys)
    for _ in range(30):
        last = net.train_sequence(xs, ys)
    assert net.optimizer.step == 31
    assert last < 0.7 * first


def test_the_sequence_benchmark_cases_run():
    """Each case of the sequence rows runs (the timings themselves are the benchmark's)."""
    from aiva_cy.bench import sequences
    net = AIVANet(seed=0)
    rows = sequences.cases(net, have_torch=False)
    assert set(rows) == set(sequences.TARGETS)
    for label, calls in rows.values():
        for name, call in calls.items():
            call()
    seq = rows["forward_sequence"][1]["forward_sequence"]()
    assert seq.shape == (64, 1, 20)
