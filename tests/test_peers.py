"""Tests of the benchmark peers (aiva_cy.bench.bioneuron_numpy, aiva_cy.bench.peers).

The peers are checked against float64 numpy versions of one time step and training
(docs/contract.md) written out below; only the ONNX Runtime peer uses aiva_cy (its exporter
builds the graph).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import pytest

import bounds as bd
from aiva_cy.bench import bioneuron_numpy as bn
from aiva_cy.bench import peers

# Small model so that the tests run in well under a second.
N_IN, N_HID, N_SPK, N_TOOLS, BATCH = 16, 32, 24, 5, 8
THRESHOLD, SLOPE, REFRACTORY = 0.5, 25.0, 2


# --------------------------------------------------------------------------- float64 references


def ref_forward(
    w: Dict[str, np.ndarray], x: np.ndarray, threshold: float, mask: Optional[np.ndarray] = None
) -> Dict[str, np.ndarray]:
    """docs/contract.md, "One time step", one step, float64."""
    x = np.asarray(x, dtype=np.float64)
    h = np.tanh(x @ w["fc1.weight"].astype(np.float64))
    v = h @ w["spiking.weight"].astype(np.float64)
    if mask is None:
        mask = np.ones_like(v)
    out = (v >= threshold).astype(np.float64) * mask
    z = out @ w["fc2.weight"].astype(np.float64)
    zs = z - z.max(axis=-1, keepdims=True)
    p = np.exp(zs) / np.exp(zs).sum(axis=-1, keepdims=True)
    return {"x": x, "h": h, "v": v, "mask": mask, "out": out, "z": z, "p": p}


def ref_loss_and_grad(
    w: Dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    threshold: float,
    slope: float,
    mask: Optional[np.ndarray] = None,
) -> Tuple[float, Dict[str, np.ndarray]]:
    """docs/contract.md, "Training", float64."""
    f = ref_forward(w, x, threshold, mask)
    b = x.shape[0]
    zs = f["z"] - f["z"].max(axis=-1, keepdims=True)
    logp = zs - np.log(np.exp(zs).sum(axis=-1, keepdims=True))
    loss = float(-logp[np.arange(b), y].mean())
    onehot = np.eye(w["fc2.weight"].shape[1])[y]
    dz = (f["p"] - onehot) / b
    g_fc2 = f["out"].T @ dz
    dv = (dz @ w["fc2.weight"].astype(np.float64).T) * f["mask"]
    dv /= (1.0 + slope * np.abs(f["v"] - threshold)) ** 2
    g_spk = f["h"].T @ dv
    g_fc1 = f["x"].T @ ((dv @ w["spiking.weight"].astype(np.float64).T) * (1.0 - f["h"] ** 2))
    return loss, {"fc1.weight": g_fc1, "spiking.weight": g_spk, "fc2.weight": g_fc2}


def make_case(seed: int = 0, batch: int = BATCH) -> Tuple[Dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """float32 weights and inputs where a good fraction of neurons fire and every membrane
    lies farther from the threshold than its float32 bound (bounds.py): float32 and
    float64 agree on every spike."""
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        w = {
            "fc1.weight": (rng.standard_normal((N_IN, N_HID)) / np.sqrt(N_IN)).astype(np.float32),
            "spiking.weight": (rng.standard_normal((N_HID, N_SPK)) * 1.5 / np.sqrt(N_HID)).astype(np.float32),
            "fc2.weight": rng.standard_normal((N_SPK, N_TOOLS)).astype(np.float32),
        }
        x = rng.standard_normal((batch, N_IN)).astype(np.float32)
        y = rng.integers(0, N_TOOLS, size=batch)
        v = ref_forward(w, x, THRESHOLD)["v"]
        rate = float((v >= THRESHOLD).mean())
        if 0.15 <= rate <= 0.85 and not bd.ambiguous_rows(w, x, THRESHOLD).any():
            return w, x, y
    raise RuntimeError("could not draw a usable test case")


# --------------------------------------------------------------------------- numpy BioNeuron


def small_bioneuron(**kw: object) -> bn.BioNeuron:
    return bn.BioNeuron(input_size=N_IN, num_tools=N_TOOLS, hidden_size=N_HID, spiking_size=N_SPK, seed=3, **kw)  # type: ignore[arg-type]


def test_bioneuron_shapes_and_init() -> None:
    net = bn.BioNeuron(seed=1)
    assert net.fc1.shape == (512, 2048) and net.fc1.dtype == np.float64
    assert net.spiking1.weights.shape == (2048, 1024) and net.spiking1.weights.dtype == np.float64
    assert net.fc2.shape == (1024, 20)
    assert abs(net.fc1.std() - 1.0) < 0.01
    assert abs(net.spiking1.weights.std() - np.sqrt(2.0 / 2048)) < 0.001
    assert net.spiking1.threshold == 1.0 and net.spiking1.refractory_period == 0.05
    sd = net.state_dict()
    assert set(sd) == {"fc1", "spiking1_weights", "fc2"}
    np.testing.assert_array_equal(sd["spiking1_weights"], net.spiking1.weights)
    sd["fc1"][0, 0] += 1.0  # copies, not views
    assert sd["fc1"][0, 0] != net.fc1[0, 0]
    # Same seed, same weights.
    np.testing.assert_array_equal(bn.BioNeuron(seed=1).fc2, net.fc2)


def test_bioneuron_forward_probabilities() -> None:
    net = small_bioneuron()
    p = net.forward(np.random.default_rng(0).standard_normal(N_IN))
    assert p.shape == (N_TOOLS,)
    assert np.all(p >= 0.0)
    assert abs(p.sum() - 1.0) <= bd.softmax_sum_bound(N_TOOLS, u=bd.U64)


def test_bioneuron_rejects_batches() -> None:
    net = small_bioneuron()
    with pytest.raises(ValueError):
        net.forward(np.zeros((2, N_IN)))
    with pytest.raises(ValueError):
        net.forward(np.zeros(N_IN + 1))


def test_bioneuron_threshold_decays_to_floor() -> None:
    net = small_bioneuron()
    x = np.random.default_rng(1).standard_normal(N_IN)
    for n in range(1, 101):
        net.forward(x)
        # n float64 products against pow: gamma_(n+1) relative
        assert net.spiking1.threshold == pytest.approx(max(0.3, 0.98**n),
                                                       rel=float(bd.gamma(n + 1, bd.U64)))
    assert net.spiking1.threshold == 0.3
    fixed = small_bioneuron(adaptive_threshold=False)
    for _ in range(5):
        fixed.forward(x)
    assert fixed.spiking1.threshold == 1.0


def test_bioneuron_refractory_blocks_recent_spikes(monkeypatch: pytest.MonkeyPatch) -> None:
    net = small_bioneuron(adaptive_threshold=False)
    layer = net.spiking1
    clock = [1000.0]
    monkeypatch.setattr(bn.time, "time", lambda: clock[0])
    h = np.full(N_HID, 0.9)
    potential = h @ layer.weights
    assert (potential > 1.0).any() and (potential <= 1.0).any()

    first = layer.forward(h)
    np.testing.assert_array_equal(first, (potential > 1.0).astype(float))
    np.testing.assert_array_equal(layer.last_spike_time[first > 0], 1000.0)

    clock[0] = 1000.03  # within 0.05 s: everything that fired stays silent
    second = layer.forward(h)
    assert second.sum() == 0.0

    clock[0] = 1000.06  # past the period: the same neurons fire again
    third = layer.forward(h)
    np.testing.assert_array_equal(third, first)
    np.testing.assert_array_equal(layer.last_spike_time[third > 0], 1000.06)


def test_bioneuron_without_dynamics_matches_formula() -> None:
    net = small_bioneuron(adaptive_threshold=False, refractory_period=0.0)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((6, N_IN)) * 3.0
    got = bn.forward_batch_loop(net, X)
    # Run twice: without dynamics consecutive calls must not influence each other.
    got2 = bn.forward_batch_loop(net, X)
    spikes = (np.tanh(X @ net.fc1) @ net.spiking1.weights > 1.0).astype(np.float64)
    assert 0.0 < spikes.mean() < 1.0
    z = spikes @ net.fc2
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    # two float64 computations (a row at a time, and batched): within twice the float64
    # bound of the exact step, where no membrane is within its bound of the threshold
    weights = {"fc1.weight": net.fc1, "spiking.weight": net.spiking1.weights,
               "fc2.weight": net.fc2}
    step = bd.BoundedNet(weights, threshold=1.0, refractory_period=0, u=bd.U64).forward(X)
    assert not step.ambiguous.any()
    bd.assert_pair(got, expected, step.p)
    np.testing.assert_array_equal(got, got2)


# --------------------------------------------------------------------------- peers module


def test_available_peers_reports_bools() -> None:
    av = peers.available_peers()
    assert set(av) == {"torch", "onnxruntime"}
    assert all(isinstance(v, bool) for v in av.values())


# --------------------------------------------------------------------------- PyTorch


def test_torch_forward_matches_numpy() -> None:
    torch = pytest.importorskip("torch")
    w, x, _ = make_case(0)
    model, _ = peers.make_torch(w, THRESHOLD, SLOPE, REFRACTORY)
    assert set(model.state_dict()) == set(peers.WEIGHT_KEYS)
    ref = ref_forward(w, x, THRESHOLD)
    bounded = bd.BoundedNet(w, threshold=THRESHOLD, refractory_period=0).forward(x)
    with torch.no_grad():
        logits, probs, left = model(torch.from_numpy(x))
    bd.assert_probs(probs.numpy(), bounded)
    bd.assert_probs(logits.numpy(), bounded, logits=True)
    np.testing.assert_array_equal(left.numpy(), ref["out"] * REFRACTORY)
    # 1-D input is a batch of one.
    p1 = peers.torch_predict_proba(model, x[0])
    assert tuple(p1.shape) == (N_TOOLS,)
    bd.assert_within(p1.numpy(), bounded.p[0])


def test_torch_refractory_countdown_matches_ring_buffer() -> None:
    torch = pytest.importorskip("torch")
    w, x, _ = make_case(1)
    model, _ = peers.make_torch(w, THRESHOLD, SLOPE, REFRACTORY)
    # Feed the same input repeatedly: neurons that fire must be silent for exactly
    # REFRACTORY steps afterwards (the history of past outputs in docs/contract.md, "One time step" of past outputs).
    history: list = []
    left = None
    for _ in range(7):
        past = history[-REFRACTORY:]
        mask = np.ones((BATCH, N_SPK)) if not past else 1.0 - np.maximum.reduce(past)
        ref = ref_forward(w, x, THRESHOLD, mask)
        bounded = bd.BoundedNet(w, threshold=THRESHOLD).forward(x, mask=mask > 0)
        with torch.no_grad():
            _, probs, left = model(torch.from_numpy(x), left)
        bd.assert_probs(probs.numpy(), bounded)
        history.append(ref["out"])
    counts = np.array(history).sum(axis=0)
    # A neuron above threshold fires on steps 1, 4, 7 with a period of 2.
    assert counts.max() == 3 and set(np.unique(counts)) <= {0.0, 3.0}


@pytest.mark.parametrize("with_state", [False, True])
def test_torch_gradients_match_numpy(with_state: bool) -> None:
    pytest.importorskip("torch")
    w, x, y = make_case(2)
    cfg = {"threshold": THRESHOLD, "surrogate_slope": SLOPE, "refractory_period": REFRACTORY}
    left = None
    mask = None
    if with_state:
        left = np.random.default_rng(5).integers(0, REFRACTORY + 1, size=(BATCH, N_SPK)).astype(np.float32)
        mask = (left == 0).astype(np.float64)
        assert 0.0 < mask.mean() < 1.0
    ref_loss, ref_grads = ref_loss_and_grad(w, x.astype(np.float64), y, THRESHOLD, SLOPE, mask)
    assert all(np.abs(g).max() > 0 for g in ref_grads.values())
    open_ = None if mask is None else mask > 0

    def bounded(u):
        net = bd.BoundedNet(w, threshold=THRESHOLD, refractory_period=0, surrogate_slope=SLOPE,
                            u=u)
        loss, grads, _ = net.loss_and_grad(x, y, mask=open_)
        return loss, grads

    # float64: torch's and the reference's, two float64 computations: twice the bound
    loss_b, g_b = bounded(bd.U64)
    loss64, g64 = peers.torch_loss_and_grad(w, cfg, x, y, left, dtype="float64")
    bd.assert_pair(loss64, ref_loss, loss_b, what="loss")
    for k in peers.WEIGHT_KEYS:
        assert g64[k].dtype == np.float64 and g64[k].shape == w[k].shape
        bd.assert_pair(g64[k], ref_grads[k], g_b[k], what=k)

    loss_b, g_b = bounded(bd.U32)
    loss32, g32 = peers.torch_loss_and_grad(w, cfg, x, y, left)
    bd.assert_within(loss32, loss_b, what="loss")
    for k in peers.WEIGHT_KEYS:
        bd.assert_within(g32[k], g_b[k], what=k)


def test_torch_train_step_is_adam_on_the_spec_gradient() -> None:
    torch = pytest.importorskip("torch")
    w, x, y = make_case(3)
    lr = 1e-3
    model, opt = peers.make_torch(w, THRESHOLD, SLOPE, REFRACTORY, lr=lr, dtype="float64")
    assert isinstance(opt, torch.optim.Adam)
    ref_loss, ref_grads = ref_loss_and_grad(w, x.astype(np.float64), y, THRESHOLD, SLOPE)
    loss_b, g_b, _ = bd.BoundedNet(w, threshold=THRESHOLD, refractory_period=0,
                                   surrogate_slope=SLOPE, u=bd.U64).loss_and_grad(x, y)
    loss = peers.torch_train_step(model, opt, x, y)
    assert isinstance(loss, float)
    bd.assert_pair(loss, ref_loss, loss_b, what="loss")
    # First Adam step with bias correction: w -= lr * g / (|g| + eps') ~ lr * sign(g).
    # torch's float64 step on its float64 gradient (within twice the gradient's bound of
    # the reference's): adam_update carries that through; both sides are then rounded to
    # float32 (weights_numpy), which may put them one float32 step apart.
    after = model.weights_numpy()
    for k in peers.WEIGHT_KEYS:
        g = ref_grads[k]
        m_hat, v_hat = g, g * g
        expected = w[k].astype(np.float64) - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        g_torch = bd.Bounded(g, 2 * g_b[k].e, 2 * g_b[k].err, 0.0, u=bd.U64)
        zeros = bd.exact(np.zeros(g.shape), u=bd.U64)
        want = bd.adam_update(bd.exact(w[k].astype(np.float64), u=bd.U64), g_torch, zeros,
                              zeros, 1, lr=lr, u=bd.U64)[0]
        assert (np.abs(want.v - expected) <= want.err).all()
        step32 = np.spacing(np.abs(expected).astype(np.float32)).astype(np.float64)
        bd.assert_within(after[k], bd.widen(want, step32 + want.err), what=k)


# --------------------------------------------------------------------------- ONNX Runtime


def test_onnx_matches_numpy() -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    w, x, _ = make_case(4, batch=13)
    sess = peers.make_onnx_session(w, THRESHOLD, intra_op_threads=1)
    step = bd.BoundedNet(w, threshold=THRESHOLD, refractory_period=0).forward(x)
    p = peers.onnx_predict(sess, x)
    assert p.shape == (13, N_TOOLS) and p.dtype == np.float32
    bd.assert_probs(p, step)
    # Dynamic batch: batch 1 and a 1-D vector work on the same session.
    bd.assert_within(peers.onnx_predict(sess, x[:1]), step.p[:1])
    p1 = peers.onnx_predict(sess, x[2])
    assert p1.shape == (N_TOOLS,)
    bd.assert_within(p1, step.p[2])
