"""Tests for checkpoints (AIVANet.save / AIVANet.load, aiva_cy.io) and from_bioneuron."""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bounds as bd
from aiva_cy import AIVANet

from aiva_cy.bench.bioneuron_numpy import BioNeuron

SIZES = dict(input_size=16, num_tools=5, hidden_size=32, spiking_size=24)
SUFFIXES = [".npz", ".safetensors"]


def _need(suffix: str) -> None:
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")


def small_net(**kwargs: Any) -> AIVANet:
    return AIVANet(**{**SIZES, "seed": 0, **kwargs})


def batch(seed: int, n: int = 4) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, SIZES["input_size"])),
            rng.integers(0, SIZES["num_tools"], n))


def trained_net(steps: int = 3, reset: bool = False, **kwargs: Any) -> AIVANet:
    """A net with a non-trivial optimizer and (unless reset) a non-empty refractory state."""
    net = small_net(**kwargs)
    for i in range(steps):
        if reset:
            net.reset_state()
        net.train_step(*batch(i))
    return net


def assert_same_net(a: AIVANet, b: AIVANet, *, optimizer: bool = True) -> None:
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sb[k].dtype == np.float32 and np.array_equal(sa[k], sb[k]), k
    ra, rb = a._engine.get_state(), b._engine.get_state()
    assert (ra is None) == (rb is None)
    if ra is not None:
        assert rb.dtype == np.int32 and np.array_equal(ra, rb)
    if optimizer:
        oa, ob = a.optimizer.state_dict(), b.optimizer.state_dict()
        for k in ("lr", "betas", "eps", "weight_decay", "step"):
            assert oa[k] == ob[k], k
        for m in ("exp_avg", "exp_avg_sq"):
            for k in oa[m]:
                assert np.array_equal(oa[m][k], ob[m][k]), (m, k)


def entries(path: Path) -> Dict[str, np.ndarray]:
    """Every entry of an npz checkpoint, for building broken variants."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write_npz(path: Path, data: Dict[str, np.ndarray]) -> Path:
    with open(path, "wb") as f:     # a file object: np.savez appends no second suffix
        np.savez(f, **data)
    return path


def assert_names_path(exc: BaseException, path: Path) -> None:
    assert str(path) in str(exc), f"message does not name the path: {exc}"


# ---------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    _need(suffix)
    net = trained_net(threshold=0.4, refractory_period=3, surrogate_slope=10.0, lr=3e-3,
                      betas=(0.8, 0.99), eps=1e-7, weight_decay=1e-4)
    assert net._engine.get_state() is not None
    path = tmp_path / f"net{suffix}"
    net.save(path)
    assert os.listdir(tmp_path) == [path.name]
    loaded = AIVANet.load(path)
    assert isinstance(loaded, AIVANet)
    assert_same_net(net, loaded)
    x = batch(99)[0]
    assert np.array_equal(net.forward(x), loaded.forward(x))   # state included


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_empty_state_str_path(tmp_path: Path, suffix: str) -> None:
    _need(suffix)
    net = trained_net()
    net.reset_state()
    path = str(tmp_path / f"net{suffix}")
    net.save(path)
    loaded = AIVANet.load(path)
    assert loaded.state_batch_size is None
    assert_same_net(net, loaded)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_without_optimizer(tmp_path: Path, suffix: str) -> None:
    _need(suffix)
    net = trained_net(lr=5e-3)
    path = tmp_path / f"net{suffix}"
    net.save(path, include_optimizer=False)
    loaded = AIVANet.load(path)
    assert_same_net(net, loaded, optimizer=False)
    assert loaded.optimizer.step == 0 and loaded.optimizer.lr == 1e-3
    if suffix == ".npz":
        assert not [k for k in entries(path) if k.startswith(("optimizer.", "__optimizer"))]


def test_npz_layout(tmp_path: Path) -> None:
    """The documented keys, plain dtypes, and JSON entries readable without pickle."""
    net = trained_net()
    path = tmp_path / "net.npz"
    net.save(path)
    data = entries(path)
    assert set(data) == {
        "__format__", "__config__", "__optimizer__", "fc1.weight", "spiking.weight",
        "fc2.weight", "state.refractory_left",
        *(f"optimizer.{m}.{k}" for m in ("exp_avg", "exp_avg_sq")
          for k in ("fc1.weight", "spiking.weight", "fc2.weight"))}
    assert json.loads(str(data["__format__"])) == {"format": "aiva_cy", "version": 1}
    assert json.loads(str(data["__config__"])) == net.config
    opt = json.loads(str(data["__optimizer__"]))
    assert opt["step"] == 3 and opt["betas"] == [0.9, 0.999]
    for k, v in net.state_dict().items():
        assert data[k].dtype == np.float32 and np.array_equal(data[k], v)
    assert data["state.refractory_left"].dtype == np.int32


def test_json_as_uint8_bytes_is_accepted(tmp_path: Path) -> None:
    net = trained_net()
    path = tmp_path / "net.npz"
    net.save(path)
    data = entries(path)
    for k in ("__format__", "__config__", "__optimizer__"):
        data[k] = np.frombuffer(str(data[k]).encode(), dtype=np.uint8)
    assert_same_net(net, AIVANet.load(write_npz(path, data)))


def test_pickle_round_trip() -> None:
    net = trained_net(lr=2e-3)
    assert_same_net(net, pickle.loads(pickle.dumps(net)))


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("reset", [True, False])
def test_resume_is_bit_identical(tmp_path: Path, suffix: str, reset: bool) -> None:
    """Train 3 steps, save, load, train 4 more == 7 steps without a break, bit for bit."""
    _need(suffix)
    straight = small_net(weight_decay=1e-3)
    first = small_net(weight_decay=1e-3)
    path = tmp_path / f"ckpt{suffix}"
    for i in range(7):
        if i == 3:
            first.save(path)
            first = AIVANet.load(path)
        for net in (straight, first):
            if reset:
                net.reset_state()
            net.train_step(*batch(i))
    assert_same_net(straight, first)


def test_save_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "net.npz"
    small_net(seed=1).save(path)
    net = small_net(seed=2)
    net.save(path)
    assert_same_net(net, AIVANet.load(path))
    assert os.listdir(tmp_path) == ["net.npz"]


# ---------------------------------------------------------------------------------------
# bad paths and bad files
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["net.pt", "net", "net.npz.bak", "net.json"])
def test_unsupported_suffix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(ValueError, match=r"\.npz, \.safetensors") as exc:
        small_net().save(path)
    assert_names_path(exc.value, path)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="suffix"):
        AIVANet.load(path)


def test_path_type() -> None:
    with pytest.raises(TypeError, match="path"):
        small_net().save(3)   # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_missing_file(tmp_path: Path, suffix: str) -> None:
    _need(suffix)
    path = tmp_path / f"absent{suffix}"
    with pytest.raises(FileNotFoundError, match="no such file") as exc:
        AIVANet.load(path)
    assert exc.value.filename == str(path)


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, bytes]:
    """A valid checkpoint's bytes per suffix."""
    d = tmp_path_factory.mktemp("valid")
    out = {}
    net = trained_net()
    for suffix in SUFFIXES:
        if suffix == ".safetensors":
            try:
                import safetensors  # noqa: F401
            except ImportError:
                continue
        net.save(d / f"net{suffix}")
        out[suffix] = (d / f"net{suffix}").read_bytes()
    return out


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path: Path, valid_bytes: Dict[str, bytes], suffix: str,
                        keep: float) -> None:
    _need(suffix)
    data = valid_bytes[suffix]
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ValueError) as exc:
        AIVANet.load(path)
    assert_names_path(exc.value, path)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("content", [
    np.random.default_rng(0).bytes(5000),
    b"PK\x03\x04" + np.random.default_rng(1).bytes(5000),
    b"hello, this is a text file\n" * 20,
    b"\x00" * 8,
])
def test_garbage_file(tmp_path: Path, suffix: str, content: bytes) -> None:
    _need(suffix)
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(content)
    with pytest.raises(ValueError) as exc:
        AIVANet.load(path)
    assert_names_path(exc.value, path)


def test_file_from_another_tool_npz(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "other.npz", {"a": np.arange(3), "b": np.eye(2)})
    with pytest.raises(ValueError, match="not an aiva_cy checkpoint") as exc:
        AIVANet.load(path)
    assert_names_path(exc.value, path)


def test_single_npy_named_npz(tmp_path: Path) -> None:
    path = tmp_path / "one.npz"
    with open(path, "wb") as f:
        np.save(f, np.arange(10))
    with pytest.raises(ValueError) as exc:
        AIVANet.load(path)
    assert_names_path(exc.value, path)


def test_pickled_object_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "net.npz"
    trained_net().save(path)
    data = entries(path)
    data["fc2.weight"] = np.array([{"evil": 1}, None], dtype=object)
    write_npz(path, data)   # np.savez pickles the object array
    with pytest.raises(ValueError) as exc:
        AIVANet.load(path)
    assert_names_path(exc.value, path)


def test_file_from_another_tool_safetensors(tmp_path: Path) -> None:
    stn = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "other.safetensors"
    path.write_bytes(stn.save({"a": np.zeros(3, np.float32)}, metadata={"format": "pt"}))
    with pytest.raises(ValueError, match="not an aiva_cy checkpoint") as exc:
        AIVANet.load(path)
    assert_names_path(exc.value, path)


def _set(key: str, value: Any) -> Callable[[Dict[str, Any]], None]:
    def edit(d: Dict[str, Any]) -> None:
        d[key] = value
    return edit


def _json_edit(key: str, **changes: Any) -> Callable[[Dict[str, Any]], None]:
    def edit(d: Dict[str, Any]) -> None:
        obj = json.loads(str(d[key]))
        obj.update(changes)
        d[key] = np.array(json.dumps(obj))
    return edit


BROKEN: Dict[str, tuple] = {
    "wrong shape": (_set("spiking.weight", np.zeros((32, 23), np.float32)), r"shape \(32, 24\)"),
    "transposed": (lambda d: d.update({"fc1.weight": np.ascontiguousarray(d["fc1.weight"].T)}),
                   "shape"),
    "float64 weights": (lambda d: d.update({"fc1.weight": d["fc1.weight"].astype(np.float64)}),
                        "float32"),
    "float64 moments": (lambda d: d.update({"optimizer.exp_avg.fc2.weight":
                                            d["optimizer.exp_avg.fc2.weight"].astype(float)}),
                        "float32"),
    "int weights": (lambda d: d.update({"fc2.weight": d["fc2.weight"].astype(np.int32)}),
                    "float32"),
    "NaN weight": (lambda d: d["fc2.weight"].__setitem__((0, 0), np.nan), "NaN"),
    "Inf moment": (lambda d: d["optimizer.exp_avg_sq.fc1.weight"].__setitem__((1, 1), np.inf),
                   "NaN or Inf"),
    "newer version": (_json_edit("__format__", version=2), r"version 2.*version 1"),
    "version zero": (_json_edit("__format__", version=0), "version"),
    "other format name": (_json_edit("__format__", format="torch"), "not an aiva_cy"),
    "no format": (lambda d: d.pop("__format__"), "not an aiva_cy"),
    "no config": (lambda d: d.pop("__config__"), "__config__"),
    "bad config json": (_set("__config__", np.array("{not json")), "not valid JSON"),
    "config not object": (_set("__config__", np.array("[1, 2]")), "JSON object"),
    "config size mismatch": (_json_edit("__config__", hidden_size=33), "shape"),
    "config bad value": (_json_edit("__config__", threshold="high"), "threshold"),
    "config unknown key": (_json_edit("__config__", colour="red"), "colour"),
    "config NaN": (_set("__config__", np.array('{"threshold": NaN}')), "NaN"),
    "missing weight": (lambda d: d.pop("fc2.weight"), "missing"),
    "missing moment": (lambda d: d.pop("optimizer.exp_avg.fc1.weight"), "missing"),
    "extra array": (_set("bias", np.zeros(3, np.float32)), "unexpected"),
    "bad step": (_json_edit("__optimizer__", step=-1), "step"),
    "bool step": (_json_edit("__optimizer__", step=True), "step"),
    "bad lr": (_json_edit("__optimizer__", lr=-1.0), "lr"),
    "bad betas": (_json_edit("__optimizer__", betas=[0.9]), "betas"),
    "optimizer incomplete": (_set("__optimizer__", np.array('{"lr": 0.1}')), "lacks"),
    "state wrong shape": (_set("state.refractory_left", np.zeros((4, 7), np.int32)), "shape"),
    "state float": (_set("state.refractory_left", np.zeros((4, 24), np.float32)), "int32"),
    "state out of range": (_set("state.refractory_left", np.full((4, 24), 9, np.int32)),
                           "refractory"),
    "json entry wrong type": (_set("__format__", np.arange(3.0)), "JSON string"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_contents(tmp_path: Path, case: str) -> None:
    edit, pattern = BROKEN[case]
    path = tmp_path / "net.npz"
    trained_net().save(path)
    data = entries(path)
    edit(data)
    write_npz(path, data)
    with pytest.raises(ValueError, match=pattern) as exc:
        AIVANet.load(path)
    assert_names_path(exc.value, path)


def test_newer_version_safetensors(tmp_path: Path) -> None:
    stn = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "net.safetensors"
    trained_net().save(path)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    head = json.loads(raw[8:8 + n])
    tensors = stn.load(raw)
    meta = dict(head["__metadata__"])
    meta["__format__"] = json.dumps({"format": "aiva_cy", "version": 7})
    path.write_bytes(stn.save(tensors, metadata=meta))
    with pytest.raises(ValueError, match=r"version 7.*version 1") as exc:
        AIVANet.load(path)
    assert_names_path(exc.value, path)


# ---------------------------------------------------------------------------------------
# corruption: anything but ValueError/OSError (or a valid net) is a bug
# ---------------------------------------------------------------------------------------
def _corruptions(size: int) -> st.SearchStrategy:
    position = st.one_of(st.integers(0, size - 1),                 # anywhere
                         st.integers(0, min(size, 700) - 1),        # headers, JSON entries
                         st.integers(max(0, size - 1500), size - 1))  # zip central directory
    flip = st.tuples(st.just("flip"), st.lists(st.tuples(position, st.integers(1, 255)),
                                               min_size=1, max_size=4))
    cut = st.tuples(st.just("cut"), st.integers(0, size - 1))
    return st.one_of(flip, cut)


def _corrupt(data: bytes, how: tuple) -> bytes:
    kind, arg = how
    if kind == "cut":
        return data[:arg]
    buf = bytearray(data)
    for pos, mask in arg:
        buf[pos] ^= mask
    return bytes(buf)


def _check_corrupt_load(path: Path) -> None:
    try:
        net = AIVANet.load(path)
    except (ValueError, OSError):
        return
    for k, w in net.state_dict().items():
        assert w.dtype == np.float32 and np.isfinite(w).all(), k
    p = net.predict_proba(np.ones(net.input_size, np.float32))
    assert np.isfinite(p).all()


@pytest.mark.parametrize("suffix", SUFFIXES)
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_file_never_crashes(tmp_path: Path, valid_bytes: Dict[str, bytes],
                                      suffix: str, data: st.DataObject) -> None:
    _need(suffix)
    original = valid_bytes[suffix]
    how = data.draw(_corruptions(len(original)))
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(_corrupt(original, how))
    _check_corrupt_load(path)


# ---------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------
class Boom(Exception):
    pass


def _failing_fsync(fd: int) -> None:
    raise Boom("disk on fire")


def _partial_npz(f: Any, arrays: Any, header: Any) -> None:
    f.write(b"PK\x03\x04 half an archive")
    raise Boom("interrupted mid-write")


def _interrupted_npz(f: Any, arrays: Any, header: Any) -> None:
    f.write(b"PK\x03\x04")
    raise KeyboardInterrupt


@pytest.mark.parametrize("target,replacement,error", [
    ("os.fsync", _failing_fsync, Boom),
    ("aiva_cy.io._write_npz", _partial_npz, Boom),
    ("aiva_cy.io._write_npz", _interrupted_npz, KeyboardInterrupt),
])
def test_interrupted_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              target: str, replacement: Callable,
                                              error: type) -> None:
    path = tmp_path / "net.npz"
    old = trained_net()
    old.save(path)
    before = path.read_bytes()
    monkeypatch.setattr(target, replacement)
    with pytest.raises(error):
        trained_net(steps=5).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["net.npz"]
    assert_same_net(old, AIVANet.load(path))


def test_interrupted_first_save_leaves_nothing(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "fsync", _failing_fsync)
    with pytest.raises(Boom):
        small_net().save(tmp_path / "net.npz")
    assert os.listdir(tmp_path) == []


def test_interrupted_safetensors_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("safetensors")
    path = tmp_path / "net.safetensors"
    old = trained_net()
    old.save(path)
    monkeypatch.setattr(os, "fsync", _failing_fsync)
    with pytest.raises(Boom):
        small_net().save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["net.safetensors"]
    assert_same_net(old, AIVANet.load(path))


def test_safetensors_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    path = tmp_path / "net.safetensors"
    with pytest.raises(ImportError, match="pip install safetensors"):
        small_net().save(path)
    assert os.listdir(tmp_path) == []
    path.write_bytes(b"whatever")
    with pytest.raises(ImportError, match="pip install safetensors"):
        AIVANet.load(path)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_new_file_gets_umask_mode(tmp_path: Path) -> None:
    path = tmp_path / "net.npz"
    old = os.umask(0o022)
    try:
        small_net().save(path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644   # not mkstemp's 0600


# ---------------------------------------------------------------------------------------
# NumPy BioNeuron
# ---------------------------------------------------------------------------------------
def make_bio(seed: int = 3) -> BioNeuron:
    return BioNeuron(**SIZES, seed=seed, adaptive_threshold=False, refractory_period=0.0)


def bio_sd(bio: BioNeuron) -> Dict[str, np.ndarray]:
    return {"fc1.weight": bio.fc1, "spiking.weight": bio.spiking1.weights, "fc2.weight": bio.fc2}


def clear_inputs(bio: BioNeuron, threshold: float, n: int = 20, seed: int = 0) -> np.ndarray:
    """Inputs whose membrane potentials all lie farther from the threshold than their
    float32 bound (bounds.py, with the float64 weights' rounding to float32): the
    BioNeuron fires on ``>``, AIVANet on ``>=``, and float32 rounding must not flip a spike."""
    return bd.draw_safe(bio_sd(bio), (n, bio.input_size), seed, threshold, tries=200)


def reference_probs(bio: BioNeuron, X: np.ndarray) -> np.ndarray:
    return np.array([bio.forward(x) for x in X])


def assert_matches_bioneuron(net: AIVANet, bio: BioNeuron, X: np.ndarray) -> None:
    """The net's probabilities within their float32 bound of the float64 step, which the
    BioNeuron computes (within its own float64 bound of it)."""
    threshold = bio.spiking1.threshold
    bd.assert_probs(net.predict_proba(X), bd.BoundedNet(bio_sd(bio), threshold=threshold,
                                                         refractory_period=0).forward(X))
    ref64 = bd.BoundedNet(bio_sd(bio), threshold=threshold, refractory_period=0, u=bd.U64)
    bd.assert_probs(reference_probs(bio, X), ref64.forward(X), what="BioNeuron")


@pytest.mark.parametrize("form", ["object", "dict"])
def test_from_bioneuron_matches(form: str) -> None:
    bio = make_bio()
    X = clear_inputs(bio, 1.0)
    src = bio if form == "object" else bio.state_dict()
    net = AIVANet.from_bioneuron(src, refractory_period=0)
    assert net.threshold == 1.0 and net.refractory_period == 0
    assert (net.input_size, net.num_tools, net.hidden_size, net.spiking_size) == (16, 5, 32, 24)
    for k, a in zip(("fc1.weight", "spiking.weight", "fc2.weight"),
                    (bio.fc1, bio.spiking1.weights, bio.fc2)):
        assert np.array_equal(net.state_dict()[k], a.astype(np.float32))
    assert_matches_bioneuron(net, bio, X)
    # Some spikes and some silences, or the comparison would prove little.
    v = np.tanh(X @ bio.fc1) @ bio.spiking1.weights
    assert 0 < (v > 1.0).mean() < 1


def test_from_bioneuron_uses_its_current_threshold() -> None:
    bio = make_bio()
    bio.spiking1.threshold = 0.7        # where an adaptive threshold would have decayed to
    X = clear_inputs(bio, 0.7)
    net = AIVANet.from_bioneuron(bio, refractory_period=0)
    assert net.threshold == 0.7
    assert_matches_bioneuron(net, bio, X)


def test_from_bioneuron_threshold_override() -> None:
    bio = make_bio()
    X = clear_inputs(bio, 0.5)
    for src in (bio, bio.state_dict()):
        net = AIVANet.from_bioneuron(src, threshold=0.5, refractory_period=0, lr=1e-2)
        assert net.threshold == 0.5 and net.optimizer.lr == 1e-2
        bio.spiking1.threshold = 0.5
        assert_matches_bioneuron(net, bio, X)
        bio.spiking1.threshold = 1.0


def test_from_bioneuron_dict_threshold_and_defaults() -> None:
    d = make_bio().state_dict()
    assert AIVANet.from_bioneuron(d).threshold == 1.0
    assert AIVANet.from_bioneuron({**d, "threshold": 0.8}).threshold == 0.8
    net = AIVANet.from_bioneuron(d)
    assert net.refractory_period == 2      # AIVANet's default: seconds do not carry over


@pytest.mark.parametrize("which,edit", [
    ("spiking1.weights", lambda d: d.update(spiking1_weights=d["spiking1_weights"][:-1])),
    ("fc2", lambda d: d.update(fc2=d["fc2"][:-1])),
])
def test_from_bioneuron_sizes_must_chain(which: str, edit: Callable) -> None:
    d = make_bio().state_dict()
    edit(d)
    with pytest.raises(ValueError, match=which):
        AIVANet.from_bioneuron(d)


@pytest.mark.parametrize("obj,error,pattern", [
    (object(), TypeError, "BioNeuron"),
    ([1, 2, 3], TypeError, "BioNeuron"),
    ({"fc1": np.ones((2, 2))}, ValueError, "spiking1_weights"),
    ({"fc1": np.ones(4), "spiking1_weights": np.ones((4, 2)), "fc2": np.ones((2, 2))},
     ValueError, "2-D"),
    ({"fc1": np.ones((2, 3)), "spiking1_weights": np.full((3, 2), np.nan),
      "fc2": np.ones((2, 2))}, ValueError, "NaN"),
    ({"fc1": np.array([["a"]]), "spiking1_weights": np.ones((1, 1)), "fc2": np.ones((1, 1))},
     TypeError, "real numbers"),
])
def test_from_bioneuron_rejects(obj: Any, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        AIVANet.from_bioneuron(obj)


def test_from_bioneuron_size_kwargs_rejected() -> None:
    with pytest.raises(TypeError, match="sizes"):
        AIVANet.from_bioneuron(make_bio(), hidden_size=8)


def test_files_that_are_not_checkpoints_raise_the_public_checkpoint_error(tmp_path):
    import aiva_cy
    text = tmp_path / "notes.npz"
    text.write_text("not a checkpoint")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    for path in (text, empty, folder):
        with pytest.raises(aiva_cy.CheckpointError, match=str(path.name)) as info:
            AIVANet.load(path)
        assert isinstance(info.value, ValueError)
        assert type(info.value).__module__ == "aiva_cy"
        assert type(info.value).__qualname__ == "CheckpointError"
