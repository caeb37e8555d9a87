"""ONNX export (``net.export_onnx``) checked with ONNX Runtime against the engine, and the
public refractory state (``net.get_state`` / ``net.set_state``) that the stateful graph
carries.  Tests that need onnx or onnxruntime skip without them; the state tests do not."""
from __future__ import annotations

import os
import stat
import sys

import numpy as np
import pytest

import bounds as bd
from aiva_cy import AIVANet

from conftest import DEFAULT, SMALL, firing_weights, safe_inputs
from test_cuda_engine import cuda, pair  # noqa: F401  (cuda: the CUDA tests' fixture)

# Every comparison below records its largest difference here; the last test prints them.
MAX_DIFF: dict = {}


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def session(ort, path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1          # 2 cores shared with the rest of the suite
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def make_net(sizes, refractory_period=2, seed=0, threshold=0.5):
    net = AIVANet(**sizes, refractory_period=refractory_period, threshold=threshold, seed=seed)
    w = firing_weights(sizes, seed, threshold)
    net.load_state_dict(w)
    return net, w


def check_pair(name, got_onnx, got_net, step):
    """ONNX Runtime's and the engine's probabilities of one step: each within its float32
    bound of the float64 reference (ONNX Runtime rounds differently: another tanh, another
    order of summation; bounds.py covers any float32 evaluation), on every row — a row
    with a membrane within its bound of the threshold must match one of its possible
    spikings — and within 2B of each other on the rows whose spikes are all clear."""
    bd.assert_probs(got_onnx, step, what="onnxruntime p")
    bd.assert_probs(got_net, step, what="aiva_cy p")
    clear = ~step.unresolved_rows
    bd.assert_pair(got_onnx, got_net, step.p, rows=clear, what="onnxruntime - aiva_cy")
    if clear.any():
        record(name, np.abs(np.asarray(got_onnx, np.float64) - got_net)[clear].max())


def record(name, diff):
    MAX_DIFF[name] = max(MAX_DIFF.get(name, 0.0), float(diff))


# ---------------------------------------------------------------------------------------
# stateless: the predict_proba step
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_export(ort, tmp_path_factory):
    net, w = make_net(DEFAULT, refractory_period=2, seed=3)
    path = tmp_path_factory.mktemp("onnx") / "aiva.onnx"
    net.export_onnx(path)
    return net, w, session(ort, path)


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_stateless_equals_predict_proba(default_export, batch):
    net, w, sess = default_export             # one session: the batch dimension is dynamic
    x = np.random.default_rng(batch).standard_normal((batch, DEFAULT["input_size"]))
    step = bd.BoundedNet(w, refractory_period=0).forward(x)
    # The data must exercise the spikes: some neurons fire, not all.
    assert 0.05 < step.raw.mean() < 0.95
    (probs,) = sess.run(None, {"x": x.astype(np.float32)})
    want = net.predict_proba(x)
    assert probs.shape == (batch, DEFAULT["num_tools"]) and probs.dtype == np.float32
    check_pair(f"stateless default b{batch}", probs, want, step)
    assert net.get_state() is None            # predict_proba left the net's state alone


def test_model_structure_and_initializers(ort, tmp_path):
    import onnx
    from onnx import numpy_helper

    net, w = make_net(SMALL, refractory_period=3)
    for stateful in (False, True):
        path = tmp_path / f"m{int(stateful)}.onnx"
        net.export_onnx(path, stateful=stateful)
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for k in ("fc1.weight", "spiking.weight", "fc2.weight"):
            assert inits[k].dtype == np.float32
            np.testing.assert_array_equal(inits[k], w[k])   # the weights, bit for bit
        assert inits["threshold"].dtype == np.float32 and inits["threshold"] == np.float32(0.5)

        def sig(values):
            return [(v.name, v.type.tensor_type.elem_type,
                     [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
                    for v in values]
        F, I32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
        i, s, t = SMALL["input_size"], SMALL["spiking_size"], SMALL["num_tools"]
        want_in = [("x", F, ["batch", i])] + ([("refractory_state", I32, ["batch", s])]
                                              if stateful else [])
        want_out = [("probs", F, ["batch", t])] + ([("next_refractory_state", I32, ["batch", s])]
                                                   if stateful else [])
        assert sig(model.graph.input) == want_in
        assert sig(model.graph.output) == want_out
        meta = {p.key: p.value for p in model.metadata_props}
        assert '"refractory_period": 3' in meta["aiva_cy.config"]
        assert meta["aiva_cy.stateful"] == ("true" if stateful else "false")


@pytest.mark.parametrize("opset", [13, 17])
def test_opsets_run_in_onnxruntime(ort, tmp_path, opset):
    net, w = make_net(SMALL)
    net.export_onnx(tmp_path / "m.onnx", opset=opset)
    x = safe_inputs(w, (9, SMALL["input_size"]), seed=opset).astype(np.float32)
    (probs,) = session(ort, tmp_path / "m.onnx").run(None, {"x": x})
    check_pair(f"stateless small opset {opset}", probs, net.predict_proba(x),
               bd.BoundedNet(w, refractory_period=0).forward(x))


def test_newest_opset_passes_the_checker(ort, tmp_path):
    import onnx

    newest = onnx.defs.onnx_opset_version()
    net, _ = make_net(SMALL)
    net.export_onnx(tmp_path / "m.onnx", stateful=True, opset=newest)
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")), full_check=True)


# ---------------------------------------------------------------------------------------
# stateful: one forward step, state in and out
# ---------------------------------------------------------------------------------------
def run_stateful(sess, xs, state=None):
    """Steps through the stateful graph; returns (probs (T, B, tools), the state after
    each step (T, B, spiking))."""
    steps, batch, _ = xs.shape
    if state is None:
        state = np.zeros((batch, sess.get_inputs()[1].shape[1]), np.int32)
    out, states = [], []
    for t in range(steps):
        probs, state = sess.run(None, {"x": xs[t].astype(np.float32), "refractory_state": state})
        out.append(probs)
        states.append(state)
    return np.stack(out), np.stack(states)


CASES = [("default", DEFAULT, 2, 7), ("default", DEFAULT, 2, 1), ("small", SMALL, 5, 33),
         ("in64-tools10", dict(DEFAULT, input_size=64, num_tools=10), 3, 7),
         ("default-r0", DEFAULT, 0, 7), ("small-r0", SMALL, 0, 5)]


@pytest.mark.parametrize("name, sizes, period, batch", CASES, ids=[
    f"{n}-r{r}-b{b}" for n, _, r, b in CASES])
def test_stateful_six_steps_equal_forward_sequence(ort, tmp_path, name, sizes, period, batch):
    net, w = make_net(sizes, refractory_period=period, seed=period + batch)
    net.export_onnx(tmp_path / "s.onnx", stateful=True)
    sess = session(ort, tmp_path / "s.onnx")
    # At the larger sizes only the first input is screened (row by row) and the rest drawn
    # as they come (a membrane within its bound of the threshold in about half the rows):
    # each side is checked against a reference that follows its own spikes (its state);
    # the two must agree, in their probabilities within 2B and in their states, wherever
    # every spike so far was clear.
    shape = (6, batch, sizes["input_size"])
    if sizes is SMALL:
        xs = safe_inputs(w, shape, seed=batch + period)
    else:
        xs = np.random.default_rng(batch + period).standard_normal(shape)
        xs[0] = bd.safe_rows(w, batch, seed=batch + period)
    # Repeating the first input makes the refractory mask bite: the same neurons want to
    # fire again while they are still silent.
    xs[1] = xs[0]
    probs, states = run_stateful(sess, xs)
    want = net.forward_sequence(xs)
    twin, _ = make_net(sizes, refractory_period=period, seed=period + batch)
    refs = {"onnx": bd.BoundedNet(w, refractory_period=period),
            "net": bd.BoundedNet(w, refractory_period=period)}
    clear = np.ones((batch, sizes["spiking_size"]), bool)      # neuron never ambiguous
    clear_rows = np.ones(batch, bool)                          # stream never ambiguous
    masked, paired = False, 0
    for t in range(6):
        stepped = twin.forward(xs[t])
        s_net = refs["net"].forward(xs[t], state=twin.get_state() if period else None)
        s_onnx = refs["onnx"].forward(xs[t], state=states[t] if period else None)
        for s, p in ((s_net, stepped), (s_onnx, probs[t])):
            bd.assert_probs(p, s)
            clear &= ~(s.resolved | s.ambiguous)
        masked |= bool((s_net.raw & ~s_net.mask).any())
        refs["net"].push(s_net)
        refs["onnx"].push(s_onnx)
        clear_rows &= clear.all(axis=1)
        paired += int(clear_rows.sum())
        bd.assert_pair(want[t], stepped, s_net.p, rows=clear_rows, what="sequence - forward")
        bd.assert_pair(probs[t], stepped, s_net.p, rows=clear_rows, what="onnx - aiva_cy")
        if clear_rows.any():
            record(f"stateful {name} r{period} b{batch}",
                   np.abs(probs[t] - stepped)[clear_rows].max())
    state = states[-1]
    assert state.dtype == np.int32 and state.shape == (batch, sizes["spiking_size"])
    np.testing.assert_array_equal(state[clear], net.get_state()[clear])
    np.testing.assert_array_equal(state[clear], twin.get_state()[clear])
    assert state.min() >= 0 and state.max() <= period
    # compared pairwise somewhere; at the larger sizes some neurons were within the bound
    assert paired and (sizes is SMALL or (~clear).any())
    # The data must exercise what is tested: with a period the mask closes raw spikes.
    assert masked == (period > 0)
    if period == 0:
        assert not state.any()
        # Without a refractory period a stateful step is the stateless one.
        net.export_onnx(tmp_path / "p.onnx")
        (p0,) = session(ort, tmp_path / "p.onnx").run(None, {"x": xs[-1].astype(np.float32)})
        last = bd.BoundedNet(w, refractory_period=0).forward(xs[-1])
        bd.assert_pair(probs[-1], p0, last.p, rows=~last.unresolved_rows)


def test_non_default_size_stateless_round_trip(ort, tmp_path):
    sizes = dict(DEFAULT, input_size=64, num_tools=10)
    net, w = make_net(sizes, refractory_period=3, seed=1)
    net.export_onnx(tmp_path / "m.onnx")
    sess = session(ort, tmp_path / "m.onnx")
    for batch in (1, 7, 256):
        x = np.random.default_rng(batch).standard_normal((batch, 64)).astype(np.float32)
        (probs,) = sess.run(None, {"x": x})
        assert probs.shape == (batch, 10)
        check_pair(f"stateless in64-tools10 b{batch}", probs, net.predict_proba(x),
                   bd.BoundedNet(w, refractory_period=0).forward(x))


def test_state_handed_between_net_and_onnx(ort, tmp_path):
    """A stream can move between the net and the ONNX graph at any step, both ways."""
    net, w = make_net(SMALL, refractory_period=3, seed=4)
    net.export_onnx(tmp_path / "s.onnx", stateful=True)
    sess = session(ort, tmp_path / "s.onnx")
    xs = safe_inputs(w, (6, 4, SMALL["input_size"]), seed=4)
    xs[1] = xs[2] = xs[0]
    # clear inputs: every spike is the reference's, so the states are equal exactly and
    # the probabilities within 2B (two float32 computations) of each other
    ref = bd.BoundedNet(w, refractory_period=3)
    steps = [ref.step(x) for x in xs]
    # The net runs 3 steps, ONNX Runtime takes its state and runs the other 3 ...
    net.forward_sequence(xs[:3])
    p_onnx, s_onnx = run_stateful(sess, xs[3:], state=net.get_state())
    want = net.forward_sequence(xs[3:])
    for t in range(3):
        bd.assert_pair(p_onnx[t], want[t], steps[3 + t].p)
    np.testing.assert_array_equal(s_onnx[-1], net.get_state())
    # ... and back: ONNX Runtime runs 3 steps, a fresh net takes its state for the next 3.
    _, s_mid = run_stateful(sess, xs[:3])
    s_mid = s_mid[-1]
    other, _ = make_net(SMALL, refractory_period=3, seed=4)
    other.set_state(s_mid)
    p_net = other.forward_sequence(xs[3:])
    p_onnx2, s_end = run_stateful(sess, xs[3:], state=s_mid)
    for t in range(3):
        bd.assert_pair(p_net[t], p_onnx2[t], steps[3 + t].p)
    np.testing.assert_array_equal(other.get_state(), s_end[-1])
    assert s_mid.any()


# ---------------------------------------------------------------------------------------
# arguments, missing package, atomic write
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(path=123), TypeError, "path must be a str or os.PathLike, got int"),
    (dict(path=None), TypeError, "path must be a str or os.PathLike"),
    (dict(path="model.npz"), ValueError, "path must end in .onnx"),
    (dict(path="model"), ValueError, "path must end in .onnx"),
    (dict(opset=12), ValueError, "opset must be >= 13"),
    (dict(opset=0), ValueError, "opset must be >= 13"),
    (dict(opset=10**6), ValueError, "opset must be in [13, "),
    (dict(opset=17.0), TypeError, "opset must be an int, got float"),
    (dict(opset="17"), TypeError, "opset must be an int, got str"),
    (dict(opset=True), TypeError, "opset must be an int, got bool"),
    (dict(stateful=1), TypeError, "stateful must be a bool, got int"),
    (dict(stateful="yes"), TypeError, "stateful must be a bool, got str"),
    (dict(stateful=None), TypeError, "stateful must be a bool, got NoneType"),
])
def test_export_arguments_are_checked(ort, tmp_path, kwargs, exc, words):
    net, _ = make_net(SMALL)
    path = kwargs.pop("path", tmp_path / "m.onnx")
    if isinstance(path, str):
        path = str(tmp_path / path)
    with pytest.raises(exc) as info:
        net.export_onnx(path, **kwargs)
    assert words in str(info.value)
    assert os.listdir(tmp_path) == []


def test_export_accepts_numpy_scalars_and_pathlike(ort, tmp_path):
    net, _ = make_net(SMALL)
    net.export_onnx(str(tmp_path / "A.ONNX"), stateful=np.bool_(True), opset=np.int64(17))
    assert os.path.getsize(tmp_path / "A.ONNX") > 0


def test_missing_onnx_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)    # import onnx now raises ImportError
    net, _ = make_net(SMALL)
    with pytest.raises(ImportError, match=r'pip install "aiva_cy\[onnx\]"'):
        net.export_onnx(tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_write_is_atomic(ort, tmp_path, monkeypatch):
    import onnx

    from aiva_cy import io

    net, w = make_net(SMALL)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old model")
    os.chmod(path, 0o640)
    # A failure while writing (here: the final rename) leaves the old file and no temp file.
    real_replace = io.os.replace

    def failing_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        net.export_onnx(path)
    assert path.read_bytes() == b"old model" and os.listdir(tmp_path) == ["m.onnx"]
    monkeypatch.setattr(io.os, "replace", real_replace)
    # A model the checker rejects is never written.
    monkeypatch.setattr(onnx.checker, "check_model", lambda *a, **k: (_ for _ in ()).throw(
        onnx.checker.ValidationError("rejected")))
    with pytest.raises(onnx.checker.ValidationError):
        net.export_onnx(path, stateful=True)
    assert path.read_bytes() == b"old model" and os.listdir(tmp_path) == ["m.onnx"]
    monkeypatch.undo()
    # A successful export replaces the file whole and keeps its mode.
    net.export_onnx(path)
    assert os.listdir(tmp_path) == ["m.onnx"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    model = onnx.load(str(path))
    assert {t.name for t in model.graph.initializer} >= set(w)


# ---------------------------------------------------------------------------------------
# get_state / set_state (no onnx needed)
# ---------------------------------------------------------------------------------------
def test_get_state_is_none_when_empty_and_a_copy_otherwise():
    net, w = make_net(SMALL, refractory_period=2)
    assert net.get_state() is None
    xs = np.random.default_rng(0).standard_normal((2, 3, SMALL["input_size"]))
    net.forward_sequence(xs)
    s = net.get_state()
    assert s.dtype == np.int32 and s.shape == (3, SMALL["spiking_size"])
    assert s.min() >= 0 and s.max() <= 2 and s.any()
    s[:] = 0                                   # a copy: the net's state does not change
    assert net.get_state().any()
    net.reset_state()
    assert net.get_state() is None


def test_set_state_round_trips_and_continues_the_streams():
    net, w = make_net(SMALL, refractory_period=3)
    twin, _ = make_net(SMALL, refractory_period=3)
    xs = np.random.default_rng(1).standard_normal((5, 4, SMALL["input_size"]))
    xs[1] = xs[0]
    net.forward_sequence(xs[:2])
    twin.set_state(net.get_state().astype(np.int64))      # any integer dtype
    assert twin.state_batch_size == 4
    np.testing.assert_array_equal(twin.forward_sequence(xs[2:]), net.forward_sequence(xs[2:]))
    np.testing.assert_array_equal(twin.get_state(), net.get_state())
    # Integral floats are counts too; zeros are the empty state for that batch size.
    twin.set_state(np.zeros((2, SMALL["spiking_size"])))
    np.testing.assert_array_equal(twin.get_state(), np.zeros((2, SMALL["spiking_size"]), np.int32))
    with pytest.raises(ValueError, match="batch"):
        twin(np.zeros((3, SMALL["input_size"])))
    twin.set_state(None)
    assert twin.get_state() is None
    twin(np.zeros((3, SMALL["input_size"])))


@pytest.mark.parametrize("state, exc, words", [
    (np.zeros((2, 7), np.int32), ValueError, "state must have shape (batch >= 1, 30), got (2, 7)"),
    (np.zeros(30, np.int32), ValueError, "state must have shape (batch >= 1, 30), got (30,)"),
    (np.zeros((0, 30), np.int32), ValueError, "got (0, 30)"),
    (np.full((2, 30), 3), ValueError, "state must hold integers in [0, 2]"),
    (np.full((2, 30), -1), ValueError, "state must hold integers in [0, 2]"),
    (np.full((2, 30), 0.5), ValueError, "non-integer"),
    (np.full((2, 30), np.nan), ValueError, "non-integer"),
    (np.zeros((2, 30), bool), TypeError, "dtype bool"),
    (np.array([["a"] * 30]), TypeError, "state must hold real numbers"),
    ("zeros", TypeError, "state must hold real numbers"),
])
def test_set_state_rejects_bad_states_and_changes_nothing(state, exc, words):
    net, _ = make_net(SMALL, refractory_period=2)
    net.forward_sequence(np.random.default_rng(0).standard_normal((2, 3, SMALL["input_size"])))
    before = net.get_state()
    with pytest.raises(exc) as info:
        net.set_state(state)
    assert words in str(info.value)
    np.testing.assert_array_equal(net.get_state(), before)


def test_set_state_with_refractory_period_zero_takes_only_zeros():
    net, _ = make_net(SMALL, refractory_period=0)
    net.set_state(np.zeros((2, SMALL["spiking_size"]), np.int32))
    assert net.state_batch_size == 2
    with pytest.raises(ValueError, match=r"\[0, 0\]"):
        net.set_state(np.ones((2, SMALL["spiking_size"]), np.int32))


def test_zz_report_max_differences(ort):
    """Prints the largest ONNX Runtime vs engine difference of each comparison (-s shows it)."""
    if not MAX_DIFF:
        pytest.skip("no comparison ran in this session")
    for name, diff in sorted(MAX_DIFF.items()):
        print(f"max |onnxruntime - aiva_cy| {name}: {diff:.3g}")
    assert all(np.isfinite(d) for d in MAX_DIFF.values())     # each test checked its bound


# ---------------------------------------------------------------------------------------
# a CUDA net: on the NumPy stand-in for CuPy that the CUDA engine's tests use, and on a real
# GPU where CuPy finds one
# ---------------------------------------------------------------------------------------
def test_cuda_net_exports_and_hands_its_state_over(ort, cuda, tmp_path):
    cpu, gpu, w = pair(seed=5, period=3)
    cpu.export_onnx(tmp_path / "cpu.onnx", stateful=True)
    gpu.export_onnx(tmp_path / "gpu.onnx", stateful=True)
    assert (tmp_path / "cpu.onnx").read_bytes() == (tmp_path / "gpu.onnx").read_bytes()
    xs = safe_inputs(w, (4, 3, SMALL["input_size"]), seed=5)
    xs[1] = xs[0]
    ref = bd.BoundedNet(w, refractory_period=3)
    steps = [ref.step(x) for x in xs]        # clear inputs: the reference's own spikes
    gpu.forward_sequence(xs[:2])
    state = gpu.get_state()
    assert type(state).__module__.startswith("cupy")      # on the net's device
    cpu.set_state(state)                                   # a device array is accepted
    _, s_onnx = run_stateful(session(ort, tmp_path / "gpu.onnx"), xs[2:], state=state.get())
    s_onnx = s_onnx[-1]
    gpu.set_state(np.asarray(state.get(), np.int64))
    got_gpu, got_cpu = gpu.forward_sequence(xs[2:]).get(), cpu.forward_sequence(xs[2:])
    for t in range(2):
        bd.assert_pair(got_gpu[t], got_cpu[t], steps[2 + t].p)
    np.testing.assert_array_equal(gpu.get_state().get(), s_onnx)
    np.testing.assert_array_equal(cpu.get_state(), s_onnx)
    assert s_onnx.any()


def test_build_model_is_the_exported_graph(ort, tmp_path):
    """The benchmark's ONNX Runtime column builds its session with build_model from a plain
    weights dict: it must be the very graph export_onnx writes (one graph, not two)."""
    import onnx

    from aiva_cy.onnx_export import build_model

    net, w = make_net(SMALL, refractory_period=3)
    for stateful in (False, True):
        net.export_onnx(tmp_path / "m.onnx", stateful=stateful)
        exported = onnx.load(str(tmp_path / "m.onnx"))
        built = build_model(w, threshold=0.5, refractory_period=3, stateful=stateful)
        assert built.graph.SerializeToString() == exported.graph.SerializeToString()
        assert built.opset_import == exported.opset_import


def test_bfloat16_net_exports_its_float32_master_weights(ort, tmp_path):
    import onnx

    net, w = make_net(SMALL, refractory_period=2)
    net.export_onnx(tmp_path / "f32.onnx")
    try:
        net.set_precision("bfloat16")
    except ImportError as exc:
        pytest.skip(f"no BLAS with bfloat16 products: {exc}")
    net.export_onnx(tmp_path / "bf16.onnx")
    f32, bf16 = (onnx.load(str(tmp_path / n)) for n in ("f32.onnx", "bf16.onnx"))
    assert f32.graph.SerializeToString() == bf16.graph.SerializeToString()
    meta = {p.key: p.value for p in bf16.metadata_props}
    assert '"precision": "bfloat16"' in meta["aiva_cy.config"]
