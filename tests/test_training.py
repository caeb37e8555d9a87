"""docs/contract.md, "Training": loss and gradients against the float64 reference, Adam against its formulas
(and against PyTorch where installed), FloatingPointError leaving everything untouched, and
fit/evaluate learning a real data set.

Tolerances are the float32 error bounds of bounds.py: the forward pass's, then the
backward pass's products and elementwise steps (the surrogate's slope in v, 1 - h^2), and
for Adam the few roundings of each update, carried from step to step."""

import numpy as np
import pytest

import bounds as bd
from aiva_cy import AIVANet

from conftest import DEFAULT, SMALL, firing_weights, safe_inputs


def make(sizes, refractory_period=2, seed=0, slope=25.0):
    net = AIVANet(**sizes, refractory_period=refractory_period, surrogate_slope=slope, seed=seed)
    w = firing_weights(sizes, seed)
    net.load_state_dict(w)
    return net, bd.BoundedNet(w, threshold=0.5, refractory_period=refractory_period,
                              surrogate_slope=slope), w


def check_step(net, ref, x, y):
    """loss_and_grad of the engine against the bounded reference of the same step (which
    follows the engine's spikes where a membrane was within its bound)."""
    loss, g = net.loss_and_grad(x, y)
    state = net.get_state() if net.refractory_period > 0 else None
    loss_b, g_b, step = ref.loss_and_grad(x, y, state=state)
    assert isinstance(loss, float)
    bd.assert_within(loss, loss_b, what="loss")
    assert set(g) == {"fc1.weight", "spiking.weight", "fc2.weight"}
    for k in g:
        assert g[k].shape == g_b[k].shape and g[k].dtype == np.float32
        bd.assert_within(g[k], g_b[k], what=k)
    return step


@pytest.mark.parametrize("sizes", [SMALL, dict(input_size=64, num_tools=10, hidden_size=96,
                                                spiking_size=80)], ids=["small", "medium"])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_gradients_match_reference_with_active_masks(sizes, batch):
    net, ref, w = make(sizes, refractory_period=2, seed=batch, slope=4.0)
    xs = safe_inputs(w, (4, batch, sizes["input_size"]), seed=batch)
    rng = np.random.default_rng(batch)
    closed_seen = False
    for t in range(4):
        y = rng.integers(0, sizes["num_tools"], batch)
        closed_seen |= bool((~ref.mask(batch)).any())
        check_step(net, ref, xs[t], y)
    assert closed_seen        # the refractory mask really zeroed some surrogate gradients


def test_gradients_at_default_size():
    # Unscreened inputs: about half the rows have a membrane within its bound (~1e-3)
    # of the threshold; the reference takes the engine's spike there (from its state).
    net, ref, w = make(DEFAULT, refractory_period=2, seed=1)
    x = np.random.default_rng(1).standard_normal((7, 512))
    for t in range(2):                      # the second step with the mask of the first
        step = check_step(net, ref, x, (np.arange(7) + t) % 20)
    assert (~step.mask).any()


def test_loss_and_grad_advances_state_and_does_not_update():
    net, ref, w = make(SMALL, refractory_period=3)
    x = safe_inputs(w, (5, SMALL["input_size"]), seed=2)
    net.loss_and_grad(x, np.zeros(5, int))
    assert net.state_batch_size == 5
    for k, v in net.state_dict().items():
        assert np.array_equal(v, w[k])
    assert net.optimizer.step == 0


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_matches_reference_formulas_over_10_steps(weight_decay):
    # Adam on the engine's own gradients, against the formulas in float64; the bound is
    # the float32 update's roundings (about ten per weight and step: the constants, the
    # two moments, sqrt, the denominator, the quotient, the update), carried from step to
    # step through the moments and the weights (bounds.adam_update).
    net, _, w = make(SMALL, refractory_period=1, seed=3)
    net.optimizer.lr = 0.01
    net.optimizer.weight_decay = weight_decay
    xs = safe_inputs(w, (10, 6, SMALL["input_size"]), seed=3)
    rng = np.random.default_rng(3)
    W = {k: bd.exact(v) for k, v in w.items()}
    M = {k: bd.exact(np.zeros(v.shape)) for k, v in w.items()}
    V = {k: bd.exact(np.zeros(v.shape)) for k, v in w.items()}
    for t in range(10):
        y = rng.integers(0, SMALL["num_tools"], 6)
        # the gradient the net will use (same weights, same state)
        snapshot_state = net._engine.get_state()
        _, g = net.loss_and_grad(xs[t], y)
        net._engine.set_state(snapshot_state)
        loss = net.train_step(xs[t], y)
        assert np.isfinite(loss)
        for k in W:
            W[k], M[k], V[k] = bd.adam_update(W[k], g[k], M[k], V[k], t + 1, lr=0.01,
                                              weight_decay=weight_decay)
        for k, v in net.state_dict().items():
            bd.assert_within(v, W[k], what=k)
    st = net.optimizer.state_dict()
    assert st["step"] == 10
    for k in W:
        bd.assert_within(st["exp_avg"][k], M[k], what="exp_avg " + k)
        bd.assert_within(st["exp_avg_sq"][k], V[k], what="exp_avg_sq " + k)


def test_train_step_equals_loss_and_grad_then_optimizer_step():
    a, _, w = make(SMALL, seed=4)
    b, _, _ = make(SMALL, seed=4)
    x = safe_inputs(w, (3, 8, SMALL["input_size"]), seed=4)
    y = np.arange(8) % SMALL["num_tools"]
    for t in range(3):
        loss_a = a.train_step(x[t], y)
        loss_b, _ = b.loss_and_grad(x[t], y)
        params = b._engine.params()
        grads = [b._engine.gradients()[k] for k in ("fc1.weight", "spiking.weight", "fc2.weight")]
        # the optimizer works in the engine's layout: transpose like the engine does
        grads = [np.ascontiguousarray(g.T) if t_ else g
                 for g, t_ in zip(grads, b.optimizer.transposed)]
        b.optimizer.update(params, grads)
        assert loss_a == loss_b
        for k, v in a.state_dict().items():
            assert np.array_equal(v, b.state_dict()[k]), k


def test_optimizer_hyper_parameters_are_readable_and_settable():
    net = AIVANet(**SMALL, lr=0.005, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    opt = net.optimizer
    assert (opt.lr, opt.betas, opt.eps, opt.weight_decay, opt.step) == (0.005, (0.8, 0.99), 1e-6, 0.1, 0)
    opt.lr, opt.betas = 0.01, (0.5, 0.9)
    assert opt.lr == 0.01 and opt.betas == (0.5, 0.9)
    assert "lr=0.01" in repr(opt)


def test_non_finite_loss_raises_and_leaves_everything_as_it_was():
    net, _, w = make(SMALL, seed=5)
    x = safe_inputs(w, (4, SMALL["input_size"]), seed=5)
    net.train_step(x, np.zeros(4, int))              # non-trivial optimizer state
    net.reset_state()
    huge = {**net.state_dict(), "fc2.weight": np.full((30, 5), 3e38, np.float32)}
    huge["fc2.weight"][:, 0] = -3e38                 # logits overflow to +-inf
    net.load_state_dict(huge)
    before = (net.state_dict(), net.optimizer.state_dict())
    with pytest.raises(FloatingPointError, match="logits are not finite.*left unchanged"):
        net.train_step(x, np.zeros(4, int))
    for k, v in net.state_dict().items():
        assert np.array_equal(v, before[0][k])
    after = net.optimizer.state_dict()
    assert after["step"] == before[1]["step"]
    for k in after["exp_avg"]:
        assert np.array_equal(after["exp_avg"][k], before[1]["exp_avg"][k])
        assert np.array_equal(after["exp_avg_sq"][k], before[1]["exp_avg_sq"][k])
    assert net.state_batch_size is None


def test_overflowing_gradient_raises_floating_point_error():
    # Finite logits, but an input so large that the fc1 gradient would overflow float32.
    net = AIVANet(input_size=2, num_tools=2, hidden_size=2, spiking_size=2, surrogate_slope=0.0)
    net.load_state_dict({"fc1.weight": np.full((2, 2), 1e-39), "spiking.weight": np.ones((2, 2)),
                         "fc2.weight": np.array([[1.0, -1.0], [1.0, -1.0]])})
    before = net.state_dict()
    with pytest.raises(FloatingPointError, match="gradient"):
        net.train_step(np.array([[3e38, 3e38]]), [1])
    assert all(np.array_equal(v, before[k]) for k, v in net.state_dict().items())
    assert net.optimizer.step == 0


def test_evaluate_is_from_an_empty_state_and_matches_reference():
    net, ref, w = make(SMALL, refractory_period=2, seed=6)
    x = safe_inputs(w, (40, SMALL["input_size"]), seed=6)
    y = np.arange(40) % SMALL["num_tools"]
    net(x[:3])
    state = net._engine.get_state()
    res = net.evaluate(x, y, batch_size=16)
    step = bd.BoundedNet(w, threshold=0.5).forward(x)
    bd.assert_within(res["loss"], step.loss(y), what="loss")
    # a row counts as right for sure where its label is the argmax by more than the two
    # bounds, as possibly right where the label is within them
    sure = (step.p.v.argmax(1) == y) & bd.argmax_sure(step.p)
    possible = bd.argmax_consistent(y, step.p)
    assert sure.mean() <= res["accuracy"] <= possible.mean()
    assert np.array_equal(net._engine.get_state(), state)


def test_fit_history_validation_and_early_stopping():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, SMALL["input_size"]))
    y = (X[:, 0] > 0).astype(int)
    net = AIVANet(**SMALL, seed=0)
    h = net.fit(X, y, epochs=3, batch_size=16, seed=0, validation_split=0.25, verbose=0)
    assert set(h) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in h.values())
    assert net.state_batch_size is None
    h2 = AIVANet(**SMALL, seed=0).fit(X, y, epochs=3, batch_size=16, seed=0,
                                      validation_split=0.25, verbose=0)
    assert h2 == h                                  # same seeds, same run
    # early stopping: min_delta so large nothing counts as an improvement after epoch 1
    h3 = AIVANet(**SMALL, seed=0).fit(X, y, epochs=50, batch_size=16, seed=0, patience=2,
                                      min_delta=1e9, validation_data=(X[:20], y[:20]), verbose=0)
    assert len(h3["loss"]) == 3
    with pytest.raises(ValueError, match="validation_split"):
        net.fit(X, y, validation_split=1.0, verbose=0)
    with pytest.raises(ValueError, match="not both"):
        net.fit(X, y, validation_split=0.1, validation_data=(X, y), verbose=0)
    with pytest.raises(ValueError, match="epochs"):
        net.fit(X, y, epochs=-1, verbose=0)


def test_fit_restore_best_weights():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((64, SMALL["input_size"]))
    y = rng.integers(0, SMALL["num_tools"], 64)   # noise: validation loss soon gets worse
    net = AIVANet(**SMALL, seed=1)
    net.optimizer.lr = 0.05
    h = net.fit(X, y, epochs=12, batch_size=8, seed=1, validation_data=(X[:16] + 1, y[:16]),
                patience=3, restore_best_weights=True, verbose=0)
    best = int(np.argmin(h["val_loss"]))
    # the same loss, in batches of another size: within twice its float32 bound, where
    # the validation rows' spikes are clear of their bound (the rows are checked for it)
    step = bd.BoundedNet(net.state_dict()).forward(X[:16] + 1)
    assert not step.unresolved_rows.any()
    bd.assert_pair(net.evaluate(X[:16] + 1, y[:16])["loss"], h["val_loss"][best],
                   step.loss(y[:16]))


def test_fit_progress_output(capsys):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((40, SMALL["input_size"]))
    y = rng.integers(0, SMALL["num_tools"], 40)
    AIVANet(**SMALL, seed=2).fit(X, y, epochs=2, batch_size=8, verbose=2)
    err = capsys.readouterr().err
    assert "Epoch 1/2" in err and "Epoch 2/2" in err and "loss" in err
    AIVANet(**SMALL, seed=2).fit(X, y, epochs=2, batch_size=8, verbose=0)
    assert capsys.readouterr().err == ""


def test_digits_reaches_97_percent():
    from aiva_cy.datasets import load_digits
    X_train, y_train = load_digits(split="train")
    X_test, y_test = load_digits(split="test")
    X_train, X_test = X_train / 4, X_test / 4       # the README's recipe: small inputs
    net = AIVANet(input_size=64, num_tools=10, seed=0)
    history = net.fit(X_train, y_train, epochs=20, batch_size=32, seed=0, verbose=0)
    assert history["accuracy"][-1] > 0.99
    accuracy = net.evaluate(X_test, y_test)["accuracy"]
    assert accuracy >= 0.97, accuracy


# -- optional cross-check against PyTorch ---------------------------------------------------
def test_gradients_and_adam_match_pytorch():
    # Each framework's gradient against the bounded reference at its own weights, and each
    # one's Adam step against the formulas on its own gradient and moments: the two agree
    # wherever both bounds do (their weights drift apart by the roundings of every step).
    torch = pytest.importorskip("torch")
    from aiva_cy.bench.peers import make_torch, torch_loss_and_grad, torch_train_step
    net, _, w = make(SMALL, refractory_period=0, seed=7, slope=3.0)
    model, opt = make_torch(w, 0.5, 3.0, 0, lr=0.01, weight_decay=0.01)
    net.optimizer.lr, net.optimizer.weight_decay = 0.01, 0.01
    cfg = {"threshold": 0.5, "surrogate_slope": 3.0, "refractory_period": 0}
    xs = safe_inputs(w, (5, 9, SMALL["input_size"]), seed=7)
    rng = np.random.default_rng(7)
    params = dict(model.named_parameters())

    def torch_moments():
        st = {k: opt.state.get(p, {}) for k, p in params.items()}
        return ({k: np.asarray(v["exp_avg"].detach(), np.float64) if v else np.zeros(w[k].shape)
                 for k, v in st.items()},
                {k: np.asarray(v["exp_avg_sq"].detach(), np.float64) if v else
                 np.zeros(w[k].shape) for k, v in st.items()})

    for t in range(5):
        y = rng.integers(0, SMALL["num_tools"], 9)
        w_net, w_torch = net.state_dict(), model.weights_numpy()
        for weights, grads_of in ((w_net, "net"), (w_torch, "torch")):
            loss_b, g_b, _ = bd.BoundedNet(weights, refractory_period=0,
                                           surrogate_slope=3.0).loss_and_grad(xs[t], y)
            if grads_of == "net":
                net.reset_state()
                loss, g = net.loss_and_grad(xs[t], y)
                net.reset_state()
                st = net.optimizer.state_dict()
                m, v = st["exp_avg"], st["exp_avg_sq"]
                if t == 0:
                    m = v = {k: np.zeros(a.shape) for k, a in w.items()}
            else:
                loss, g = torch_loss_and_grad(weights, cfg, xs[t].astype(np.float32), y)
                m, v = torch_moments()
            bd.assert_within(loss, loss_b, what=f"{grads_of} loss")
            for k in g:
                bd.assert_within(g[k], g_b[k], what=f"{grads_of} {k}")
            want = {k: bd.adam_update(bd.exact(weights[k]), np.asarray(g[k], np.float32),
                                      bd.exact(m[k]), bd.exact(v[k]), t + 1, lr=0.01,
                                      weight_decay=0.01)[0] for k in g}
            if grads_of == "net":
                net.train_step(xs[t], y)
                got = net.state_dict()
            else:
                torch_train_step(model, opt, xs[t].astype(np.float32), y)
                got = model.weights_numpy()
            for k in got:
                bd.assert_within(got[k], want[k], what=f"{grads_of} Adam {k}")
    assert torch.is_tensor(next(iter(params.values())))


from hypothesis import HealthCheck, assume, given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.tuples(st.integers(1, 10), st.integers(1, 20), st.integers(1, 20),
                       st.integers(2, 6)),
       batch=st.integers(1, 9), period=st.integers(0, 3), slope=st.floats(0.0, 30.0, width=32),
       seed=st.integers(0, 2**16))
def test_any_small_shape_gradients_match_reference(sizes, batch, period, slope, seed):
    # No screening for saturated tanh here (as there was with fixed tolerances): the bound
    # carries h's rounding through 1 - h^2, however close to 0 that is.
    i, h, s, t = sizes
    dims = dict(input_size=i, hidden_size=h, spiking_size=s, num_tools=t)
    w = firing_weights(dims, seed)
    xs = np.random.default_rng(seed).standard_normal((2, batch, i))
    y = np.random.default_rng(seed + 1).integers(0, t, batch)
    assume(not bd.ambiguous_rows(w, xs).any())
    net = AIVANet(**dims, refractory_period=period, surrogate_slope=slope)
    net.load_state_dict(w)
    ref = bd.BoundedNet(w, threshold=0.5, refractory_period=period, surrogate_slope=slope)
    for x in xs:                       # the second step runs with the mask of the first
        check_step(net, ref, x, y)


def test_fit_logs_its_epochs_when_not_on_a_terminal(caplog, capsys):
    import logging
    rng = np.random.default_rng(3)
    X = rng.standard_normal((24, SMALL["input_size"]))
    y = rng.integers(0, SMALL["num_tools"], 24)
    with caplog.at_level(logging.INFO, logger="aiva_cy.fit"):
        AIVANet(**SMALL, seed=2).fit(X, y, epochs=2, batch_size=8, verbose=1)
    assert capsys.readouterr().err == ""          # pytest's stderr is no terminal
    lines = [r.getMessage() for r in caplog.records if r.name == "aiva_cy.fit"]
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2 - loss")


def test_fit_callbacks_see_each_epoch_and_can_stop_it():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((24, SMALL["input_size"]))
    y = rng.integers(0, SMALL["num_tools"], 24)
    seen = []

    class Recorder:
        def on_epoch_end(self, epoch, logs):
            seen.append((epoch, sorted(logs)))

    h = AIVANet(**SMALL, seed=2).fit(X, y, epochs=5, batch_size=8, verbose=0,
                                     callbacks=[Recorder(), lambda e, logs: e < 2])
    assert len(h["loss"]) == 3                     # the lambda said stop after epoch 2
    assert seen == [(e, ["accuracy", "loss"]) for e in range(3)]
    with pytest.raises(TypeError, match=r"callbacks\[0\]"):
        AIVANet(**SMALL, seed=2).fit(X, y, epochs=1, verbose=0, callbacks=[42])


def test_fit_refuses_zero_epochs():
    X = np.zeros((4, SMALL["input_size"]))
    with pytest.raises(ValueError, match=r"epochs must be in \[1, .*\], got 0"):
        AIVANet(**SMALL, seed=0).fit(X, [0, 1, 2, 3], epochs=0)


def test_sample_weight_for_rows_is_a_weighted_mean():
    from aiva_cy.reference import ReferenceNet
    rng = np.random.default_rng(5)
    X = rng.standard_normal((8, SMALL["input_size"]))
    y = rng.integers(0, SMALL["num_tools"], 8)
    w = rng.uniform(0, 2, 8)
    w[3] = 0.0
    net = AIVANet(**SMALL, seed=3)
    ref = ReferenceNet(net.state_dict())
    c = ref.forward_cache(X)
    z = c["z"]
    ce = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1) - z[np.arange(8), y]
    got = net.evaluate(X, y, sample_weight=w)["loss"]
    assert got == pytest.approx(float((w * ce).sum() / w.sum()), rel=1e-5)
    # Training with weights: a zero-weight row does not move the weights at all.
    a = AIVANet(**SMALL, seed=3)
    b = AIVANet(**SMALL, seed=3)
    a.fit(X, y, epochs=1, batch_size=8, shuffle=False, verbose=0, sample_weight=w)
    keep = w > 0
    b.fit(X[keep], y[keep], epochs=1, batch_size=8, shuffle=False, verbose=0,
          sample_weight=w[keep])
    for k, v in a.state_dict().items():
        np.testing.assert_allclose(v, b.state_dict()[k], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="sample_weight"):
        net.fit(X, y, epochs=1, verbose=0, sample_weight=-w)


def test_fit_on_episodes_learns_a_task_that_needs_the_carried_state():
    """A cue (A or B), then a query Q that is the same input whichever cue came, then a
    blank step; the label of the query is the cue.  One step alone cannot answer (the query
    is always Q), only the refractory state the cue left can: the neurons the cue fired are
    silent at the query (refractory_period 1), and Q fires A's and B's neurons both, so
    which ones stay silent tells the cue.  The blank fires nothing, so each cue starts clean.
    Trained on episodes the net answers; trained on the query rows alone it is at chance."""
    sizes = dict(input_size=6, num_tools=2, hidden_size=48, spiking_size=40)
    rng = np.random.default_rng(6)
    A, B = rng.standard_normal((2, sizes["input_size"])) * 2.0
    Q = (A + B) * 0.7

    def episodes(n, steps=9):
        X = np.zeros((n, steps, sizes["input_size"]))
        y = np.full((n, steps), -1)              # cue and blank steps: no target
        for i in range(n):
            for t in range(0, steps, 3):
                k = int(rng.integers(2))
                X[i, t], X[i, t + 1], y[i, t + 1] = (A, B)[k], Q, k
        return X, y

    X, y = episodes(256)
    X_test, y_test = episodes(128)
    for seed in (0, 1):
        net = AIVANet(**sizes, refractory_period=1, seed=seed)
        history = net.fit(X, y, epochs=12, batch_size=16, seed=0, verbose=0)
        assert history["accuracy"][-1] > history["accuracy"][0]
        assert net.evaluate(X_test, y_test)["accuracy"] >= 0.95, seed
    on = y >= 0
    rows = AIVANet(**sizes, refractory_period=1, seed=0)
    rows.fit(X[on], y[on], epochs=12, batch_size=32, seed=0, verbose=0)
    assert rows.evaluate(X_test[y_test >= 0], y_test[y_test >= 0])["accuracy"] < 0.65


def test_fit_and_evaluate_on_episodes_check_their_arguments():
    net = AIVANet(**SMALL, seed=0)
    X = np.zeros((4, 3, SMALL["input_size"]))
    with pytest.raises(ValueError, match=r"y for episodes X \(4, 3, 24\) must have shape \(4, 3\)"):
        net.fit(X, np.zeros(4), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="argmax"):
        net.fit(X, np.zeros((4, 3, SMALL["num_tools"])), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="no step has a target"):
        net.fit(X, -np.ones((4, 3)), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="same form|form of X"):
        net.fit(X, np.zeros((4, 3)), epochs=1, verbose=0,
                validation_data=(np.zeros((2, SMALL["input_size"])), [0, 1]))
    net.forward(np.ones((2, SMALL["input_size"])))
    held = net.get_state()
    h = net.fit(X + 0.5, np.ones((4, 3)), epochs=2, batch_size=2, verbose=0,
                validation_split=0.25)
    assert set(h) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    np.testing.assert_array_equal(net.get_state(), held)     # the stream state is kept
    net.evaluate(X, np.ones((4, 3)))
    np.testing.assert_array_equal(net.get_state(), held)
