"""Property-based fuzz targets for tests/test_fuzz.py, run in a child process so that a
crash (a signal) is seen as one instead of taking the test run down.

    python tests/fuzz_targets.py TARGET EXAMPLES

Each target calls a public entry point with generated arguments and accepts only two
outcomes: a correct result (checked against the float64 reference or the original) or the
documented exception, after which the net must be exactly as it was."""
from __future__ import annotations

import io
import math
import os
import pickle
import shutil
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# Like `python -m pytest` from the repository root: the in-place build there, then tests/.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
import bounds as bd  # noqa: E402
from conftest import firing_weights  # noqa: E402

from aiva_cy import AIVANet  # noqa: E402

SIZES = dict(input_size=6, num_tools=3, hidden_size=10, spiking_size=8)
WEIGHTS = firing_weights(SIZES, 0)
INPUT_ERRORS = (ValueError, TypeError)
TRAIN_ERRORS = (ValueError, TypeError, FloatingPointError)


def fresh_net(**kwargs) -> AIVANet:
    net = AIVANet(**SIZES, seed=0, **kwargs)
    net.load_state_dict(WEIGHTS)
    return net


def snapshot(net: AIVANet):
    opt = net.optimizer.state_dict()
    state = net._engine.get_state()
    return net.state_dict(), opt, None if state is None else state.copy()


def assert_unchanged(net: AIVANet, snap) -> None:
    weights, opt, state = snap
    for k, v in net.state_dict().items():
        assert np.array_equal(v, weights[k]), f"{k} changed by a failed call"
    now = net.optimizer.state_dict()
    for key in ("lr", "betas", "eps", "weight_decay", "step"):
        assert now[key] == opt[key], f"optimizer {key} changed by a failed call"
    for m in ("exp_avg", "exp_avg_sq"):
        for k in now[m]:
            assert np.array_equal(now[m][k], opt[m][k]), f"{m}[{k}] changed by a failed call"
    s = net._engine.get_state()
    assert (s is None) == (state is None) and (s is None or np.array_equal(s, state)), \
        "refractory state changed by a failed call"


# ---------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------
def _dims(wanted: int):
    return st.one_of(st.just(wanted), st.integers(0, 9))


FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.int8, np.uint16,
                          np.bool_, np.complex64])


@st.composite
def arrays_like(draw, last: int, max_ndim: int = 3):
    """Arrays that are often the right shape and often not, of many dtypes and layouts."""
    ndim = draw(st.integers(0, max_ndim))
    shape = tuple(draw(_dims(last)) if i == ndim - 1 else draw(st.integers(0, 5))
                  for i in range(ndim))
    dtype = draw(DTYPES)
    elements = None
    if np.dtype(dtype).kind == "f":
        elements = draw(st.sampled_from([
            st.floats(-3, 3, width=np.dtype(dtype).itemsize * 8),
            st.floats(width=np.dtype(dtype).itemsize * 8)]))
    arr = draw(hnp.arrays(dtype, shape, elements=elements))
    layout = draw(st.sampled_from(["c", "f", "strided", "list", "misaligned", "masked"]))
    if layout == "f":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim:
        arr = np.repeat(arr, 2, axis=-1)[..., ::2]
    elif layout == "list":
        return arr.tolist()
    elif layout == "misaligned" and arr.dtype.itemsize > 1:
        raw = b"\0" + arr.tobytes()
        arr = np.frombuffer(raw, arr.dtype, arr.size, offset=1).reshape(arr.shape)
    elif layout == "masked":
        arr = np.ma.masked_array(arr)
    return arr


ODD_VALUES = st.one_of(st.none(), st.text(max_size=3), st.booleans(), FLOATS,
                       st.integers(-10**3, 10**3), st.just(10**400), st.just(-10**400),
                       st.lists(st.integers(-2, 2), max_size=3), st.just(object()))


def margin_ok(x: np.ndarray) -> bool:
    """Every membrane farther from the threshold than its float32 bound (bounds.py)."""
    return not bd.ambiguous_rows(WEIGHTS, x.reshape(-1, SIZES["input_size"]), 0.5).any()


def check_probs(p, batch_shape) -> None:
    p = np.asarray(p)
    assert p.dtype == np.float32, p.dtype
    assert p.shape == batch_shape + (SIZES["num_tools"],), (p.shape, batch_shape)
    assert np.isfinite(p).all() and (p >= 0).all()
    assert (np.abs(p.sum(axis=-1) - 1.0) <= bd.softmax_sum_bound(SIZES["num_tools"])).all()


def as_float64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------------------
def target_inference(examples: int) -> None:
    net = fresh_net()
    ref = bd.BoundedNet(WEIGHTS)

    @settings(max_examples=examples, deadline=None, database=None)
    @given(x=arrays_like(SIZES["input_size"]), call=st.sampled_from(
        ["predict_proba", "predict", "decide", "forward", "call", "forward_sequence"]),
        confidence=st.one_of(st.floats(0, 1), ODD_VALUES), reset=st.booleans())
    def run(x, call, confidence, reset):
        if reset:
            net.reset_state()
        snap = snapshot(net)
        try:
            if call == "decide":
                out = net.decide(x, confidence=confidence)
            elif call == "call":
                out = net(x)
            else:
                out = getattr(net, call)(x)
        except INPUT_ERRORS:
            assert_unchanged(net, snap)
            return
        arr = as_float64(x)
        assert np.isfinite(arr).all(), "non-finite input accepted"
        if call == "forward_sequence":
            check_probs(out, arr.shape[:-1])
            return
        batch_shape = arr.shape[:-1]
        if call in ("predict_proba", "forward", "call"):
            check_probs(out, batch_shape)
        if call in ("predict_proba", "predict", "decide") and margin_ok(arr):
            want = ref.forward(arr.reshape(-1, SIZES["input_size"])).p
            if call == "predict_proba":
                bd.assert_within(np.atleast_2d(out), want, what="predict_proba")
            elif call == "predict":
                # the chosen tool's reference probability is within the two bounds of the top
                assert bd.argmax_consistent(out, want).all()
            else:
                assert 0.0 <= float(confidence) <= 1.0
        if call in ("forward", "call"):
            net.reset_state()

    run()


def target_training(examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(x=arrays_like(SIZES["input_size"], 2), y=st.one_of(
        arrays_like(0, 1).filter(lambda a: True), st.lists(st.integers(-1, 4), max_size=6),
        ODD_VALUES),
        call=st.sampled_from(["train_step", "loss_and_grad", "fit", "evaluate"]),
        lr=st.sampled_from([1e-3, 1.0, 1e30, 3e38]), batch_size=st.one_of(
            st.integers(-1, 7), ODD_VALUES))
    def run(x, y, call, lr, batch_size):
        net = fresh_net(lr=lr)
        snap = snapshot(net)
        try:
            if call == "fit":
                out = net.fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
            elif call == "evaluate":
                out = net.evaluate(x, y, batch_size=batch_size)
            else:
                out = getattr(net, call)(x, y)
        except TRAIN_ERRORS as exc:
            if call != "fit":        # fit's completed batches stay (documented)
                assert_unchanged(net, snap)
            del exc
            return
        weights = net.state_dict()
        assert all(np.isfinite(w).all() for w in weights.values()), "non-finite weights"
        if call in ("train_step", "loss_and_grad"):
            loss = out if call == "train_step" else out[0]
            assert math.isfinite(loss) and loss >= 0
        elif call == "evaluate":
            assert math.isfinite(out["loss"]) and 0 <= out["accuracy"] <= 1
        else:
            assert all(math.isfinite(v) for v in out["loss"])

    run()


def target_constructor(examples: int) -> None:
    keys = ["input_size", "num_tools", "hidden_size", "spiking_size", "threshold",
            "refractory_period", "surrogate_slope", "seed", "device", "lr", "betas", "eps",
            "weight_decay"]
    small = st.one_of(st.integers(-2, 12), ODD_VALUES, st.tuples(FLOATS, FLOATS))

    @settings(max_examples=examples, deadline=None, database=None)
    @given(kwargs=st.dictionaries(st.sampled_from(keys), small, max_size=5))
    def run(kwargs):
        args = {"input_size": 4, "num_tools": 3, "hidden_size": 5, "spiking_size": 4, **kwargs}
        try:
            net = AIVANet(**args)
        except INPUT_ERRORS:
            return
        except RuntimeError as exc:      # device="cuda" without CuPy or a GPU
            assert "cuda" in str(args.get("device", "")).lower(), exc
            return
        for k in ("input_size", "num_tools", "hidden_size", "spiking_size",
                  "refractory_period", "threshold", "surrogate_slope"):
            if k in args:
                assert getattr(net, k) == args[k], k
        p = net.predict_proba(np.zeros(args["input_size"]))
        assert np.isfinite(p).all()

    run()


def target_optimizer(examples: int) -> None:
    names = ["lr", "eps", "weight_decay", "beta1", "beta2", "betas"]

    @settings(max_examples=examples, deadline=None, database=None)
    @given(settings_=st.dictionaries(st.sampled_from(names), st.one_of(
        ODD_VALUES, st.tuples(FLOATS, FLOATS), st.floats(0, 1e39)), max_size=3),
        via=st.sampled_from(["setattr", "load_state_dict"]))
    def run(settings_, via):
        net = fresh_net()
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((4, SIZES["input_size"])), np.arange(4) % 3
        net.train_step(x, y)
        net.reset_state()
        snap = snapshot(net)
        try:
            if via == "setattr":
                for k, v in settings_.items():
                    setattr(net.optimizer, k, v)
            else:
                state = net.optimizer.state_dict()
                b1, b2 = state["betas"]
                for k, v in settings_.items():
                    if k in ("beta1", "beta2"):
                        state["betas"] = (v, b2) if k == "beta1" else (b1, v)
                    else:
                        state[k] = v
                net.optimizer.load_state_dict(state)
        except INPUT_ERRORS:
            if via == "load_state_dict":
                assert_unchanged(net, snap)
            return
        o = net.optimizer
        for v in (o.lr, o.eps, o.weight_decay, *o.betas):
            assert math.isfinite(v) and v >= 0
        assert o.eps > 0 and all(b < 1 for b in o.betas)
        snap = snapshot(net)
        try:
            net.train_step(x, y)
        except FloatingPointError:
            assert_unchanged(net, snap)
            return
        assert all(np.isfinite(w).all() for w in net.state_dict().values())
        opt = net.optimizer.state_dict()
        assert all(np.isfinite(a).all() for m in ("exp_avg", "exp_avg_sq")
                   for a in opt[m].values())

    run()


def target_state_dict(examples: int) -> None:
    shapes = {"fc1.weight": (6, 10), "spiking.weight": (10, 8), "fc2.weight": (8, 3)}

    @st.composite
    def state_dicts(draw):
        d = {}
        for k, shape in shapes.items():
            if draw(st.integers(0, 9)) == 0:
                continue
            d[k] = draw(st.one_of(arrays_like(shape[1], 2), ODD_VALUES,
                                  hnp.arrays(np.float32, shape,
                                             elements=st.floats(-2, 2, width=32))))
        if draw(st.booleans()):
            d[draw(st.text(max_size=4))] = draw(ODD_VALUES)
        return d

    @settings(max_examples=examples, deadline=None, database=None)
    @given(d=state_dicts(), strict=st.booleans())
    def run(d, strict):
        net = fresh_net()
        snap = snapshot(net)
        try:
            net.load_state_dict(d, strict=strict)
        except INPUT_ERRORS:
            assert_unchanged(net, snap)
            return
        for k, v in net.state_dict().items():
            np.testing.assert_array_equal(v, np.asarray(d[k], dtype=np.float32))

    run()


def target_loaders(examples: int) -> None:
    original = fresh_net()
    rng = np.random.default_rng(0)
    original.train_step(rng.standard_normal((3, SIZES["input_size"])), np.arange(3))
    valid = {}
    tmp = tempfile.mkdtemp()
    suffixes = [".npz"]
    try:
        import safetensors  # noqa: F401
        suffixes.append(".safetensors")
    except ImportError:
        pass
    for suffix in suffixes:
        path = os.path.join(tmp, "valid" + suffix)
        original.save(path)
        with open(path, "rb") as f:
            valid[suffix] = f.read()
    want = original.state_dict()

    @st.composite
    def corrupt(draw, data: bytes):
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            how = draw(st.sampled_from(["flip", "cut", "insert", "delete", "zero"]))
            if not buf:
                break
            pos = draw(st.one_of(st.integers(0, len(buf) - 1), st.integers(0, min(len(buf), 600) - 1),
                                 st.integers(max(0, len(buf) - 800), len(buf) - 1)))
            if how == "flip":
                buf[pos] ^= draw(st.integers(1, 255))
            elif how == "cut":
                del buf[pos:]
            elif how == "insert":
                buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
            elif how == "delete":
                del buf[pos:pos + draw(st.integers(1, 16))]
            else:
                buf[pos:pos + 8] = bytes(8)
        return bytes(buf)

    @settings(max_examples=examples, deadline=None, database=None)
    @given(data=st.data(), suffix=st.sampled_from(suffixes))
    def run(data, suffix):  # (tmp is removed after run_made_up below)
        blob = data.draw(corrupt(valid[suffix]))
        path = os.path.join(tmp, "fuzz" + suffix)
        with open(path, "wb") as f:
            f.write(blob)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                net = AIVANet.load(path)
        except (ValueError, OSError):
            return
        # Anything that loads is the checkpoint that was saved: CRCs and the checksum
        # leave no other outcome.
        assert net.config == original.config
        for k, v in net.state_dict().items():
            assert np.array_equal(v, want[k]), f"{k} loaded with different values"
        assert net.optimizer.step == original.optimizer.step

    run()

    @settings(max_examples=examples, deadline=None, database=None)
    @given(entries=st.dictionaries(st.sampled_from(
        ["fc1.weight", "spiking.weight", "fc2.weight", "__format__", "__config__",
         "__optimizer__", "state.refractory_left", "extra"]),
        st.one_of(arrays_like(3, 2), st.text(max_size=40).map(np.array),
                  st.sampled_from(['{"format": "aiva_cy", "version": 1}',
                                   '{"input_size": 6, "num_tools": 3, "hidden_size": 10, '
                                   '"spiking_size": 8, "threshold": 0.5, '
                                   '"refractory_period": 2, "surrogate_slope": 25.0}',
                                   '{"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, '
                                   '"weight_decay": 0, "step": 1}']).map(np.array)),
        max_size=8))
    def run_made_up(entries):
        path = os.path.join(tmp, "made_up.npz")
        arrays = {k: np.asarray(v) for k, v in entries.items()
                  if not isinstance(v, list) and np.asarray(v).dtype != object}
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        try:
            net = AIVANet.load(path)
        except (ValueError, OSError):
            return
        assert all(np.isfinite(w).all() for w in net.state_dict().values())

    try:
        run_made_up()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def target_bioneuron(examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None)
    @given(fc1=arrays_like(10, 2), spiking=arrays_like(8, 2), fc2=arrays_like(3, 2),
           threshold=st.one_of(st.none(), ODD_VALUES))
    def run(fc1, spiking, fc2, threshold):
        obj = {"fc1": fc1, "spiking1_weights": spiking, "fc2": fc2}
        try:
            net = AIVANet.from_bioneuron(obj, threshold=threshold)
        except INPUT_ERRORS:
            return
        np.testing.assert_array_equal(net.state_dict()["fc1.weight"],
                                      np.asarray(fc1, dtype=np.float32))
        assert math.isfinite(net.threshold)

    run()


def target_pickle(examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None)
    @given(steps=st.integers(0, 3), forward=st.integers(0, 2), data=st.data())
    def run(steps, forward, data):
        net = fresh_net()
        rng = np.random.default_rng(steps)
        for _ in range(steps):
            net.train_step(rng.standard_normal((2, SIZES["input_size"])), np.arange(2))
        for _ in range(forward):
            net.forward(rng.standard_normal((2, SIZES["input_size"])))
        blob = pickle.dumps(net)
        back = pickle.loads(blob)
        assert_unchanged(back, snapshot(net))
        # A truncated or altered pickle either fails to load or fails its checks; it never
        # crashes the interpreter.
        cut = data.draw(st.integers(1, len(blob) - 1))
        try:
            pickle.loads(blob[:cut])
        except Exception:
            pass

    run()


def _op(code: bytes, arg: bytes = b"") -> bytes:
    return code + arg


# Snippets of pickle opcodes with arguments, the converter's alphabet: pushes, containers,
# the memo (stored, read back, far out of range), globals it admits and refuses, REDUCE and
# BUILD, protocol and frame markers, and lengths that promise more than the file holds.
_GLOBALS = [b"numpy\ndtype", b"numpy\nndarray", b"numpy._core.multiarray\n_reconstruct",
            b"numpy._core.multiarray\nscalar", b"numpy._core.numeric\n_frombuffer",
            b"_codecs\nencode", b"builtins\nbytes", b"datetime\ndatetime",
            b"datetime\ntimedelta", b"os\nsystem", b"builtins\neval", b"numpy\nload"]
_SIMPLE = [b"N", b"\x88", b"\x89", b"}", b"]", b")", b"(", b"t", b"l", b"d", b"a", b"e",
           b"s", b"u", b"\x85", b"\x86", b"\x87", b"\x8f", b"\x90", b"\x91", b"0", b"1", b"2",
           b"R", b"b", b"\x93", b"\x94", b".", b"\x97", b"\x98", b"\x81", b"\x92", b"o", b"Q"]


@st.composite
def pickle_snippets(draw) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind <= 2:
        return draw(st.sampled_from(_SIMPLE))
    if kind == 3:
        return _op(b"K", bytes([draw(st.integers(0, 255))]))
    if kind == 4:
        text = draw(st.sampled_from([b"f8", b"<", b"b", b"latin1", b"fc1", b"threshold",
                                     b"V268435456", b"O8", b"c16", b"a"]))
        return draw(st.sampled_from([b"\x8c" + bytes([len(text)]) + text,
                                     b"C" + bytes([len(text)]) + text]))
    if kind == 5:
        return b"c" + draw(st.sampled_from(_GLOBALS)) + b"\n"
    if kind == 6:
        index = draw(st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1)))
        return draw(st.sampled_from([b"q" + bytes([index % 256]), b"h" + bytes([index % 256]),
                                     b"r" + index.to_bytes(4, "little"),
                                     b"j" + index.to_bytes(4, "little")]))
    if kind == 7:
        n = draw(st.one_of(st.integers(0, 16), st.just(2**40), st.integers(0, 2**63)))
        return draw(st.sampled_from([b"\x8e", b"\x8d", b"\x96", b"\x95"])) + n.to_bytes(8, "little")
    if kind == 8:
        return b"\x80" + bytes([draw(st.integers(0, 6))])
    # Repetition: deep nesting from a few bytes.
    return draw(st.sampled_from([b"N", b"(", b"]", b"\x85", b"(N"])) * draw(
        st.sampled_from([10, 100, 1000, 20000]))


def _aiva_like(seed: int):
    rng = np.random.default_rng(seed)
    return {"fc1": rng.standard_normal((4, 5)), "spiking1_weights": rng.standard_normal((5, 3)),
            "fc2": np.asfortranarray(rng.standard_normal((3, 2))), "threshold": np.float64(0.3),
            "metadata": {"step": 3, "when": __import__("datetime").datetime(2024, 5, 1),
                         "shape": (4, 5), "flags": np.array([True, False])}}


def target_convert_pickle(examples: int) -> None:
    """The converter's restricted reader on hypothesis-made opcode streams and on valid
    AIVA-like pickles (protocols 0-5) with bytes changed, inserted or removed: a dict comes
    back, or a ValueError; never another exception, a crash or unbounded memory."""
    import resource

    from aiva_cy.convert import read_weights_pickle

    # A cap on address space turns unbounded allocation into a quick failure; under
    # AddressSanitizer (.ci/sanitizers.sh), which reserves terabytes of it, no cap.
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "fuzz.pkl"

    def check(blob: bytes) -> None:
        path.write_bytes(blob)
        try:
            got = read_weights_pickle(path, trust_pickle=True)
        except ValueError as exc:
            assert len(str(exc)) < 2000, "an error message of unbounded size"
        else:
            assert isinstance(got, dict)

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(proto=st.integers(0, 5), snippets=st.lists(pickle_snippets(), max_size=40))
    def streams(proto, snippets):
        check(b"\x80" + bytes([proto]) + b"".join(snippets) + b".")

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(proto=st.integers(0, 5), seed=st.integers(0, 3), data=st.data())
    def mutated(proto, seed, data):
        blob = bytearray(pickle.dumps(_aiva_like(seed), protocol=proto))
        if data.draw(st.booleans()):
            assert isinstance(read_weights_pickle(
                (path.write_bytes(bytes(blob)), path)[1], trust_pickle=True), dict)
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(blob) - 1))
            how = data.draw(st.integers(0, 2))
            if how == 0:
                blob[at] = data.draw(st.integers(0, 255))
            elif how == 1:
                blob[at:at] = data.draw(pickle_snippets())
            else:
                del blob[at:at + data.draw(st.integers(1, 8))]
        check(bytes(blob))

    try:
        streams()
        mutated()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


TARGETS = {name[len("target_"):]: fn for name, fn in globals().items()
           if name.startswith("target_")}

if __name__ == "__main__":
    name, count = sys.argv[1], int(sys.argv[2])
    TARGETS[name](count)
    print(f"fuzz {name}: {count} examples passed")
