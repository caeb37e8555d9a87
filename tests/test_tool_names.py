"""Tool names: AIVANet(tool_names=[...]) in the config, every file and copy of a net, in
decide(names=True), and as labels."""
import asyncio
import json
import pickle

import numpy as np
import pytest

import aiva_cy
from aiva_cy import AIVANet
from aiva_cy.serve import Batcher

NAMES = ["nmap", "sqlmap", "nikto", "ffuf"]


def small(names=NAMES, **kw):
    return AIVANet(6, 4, hidden_size=24, spiking_size=16, seed=3, tool_names=names, **kw)


def rows(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 6)).astype(np.float32)


def test_config_repr_and_default():
    net = small()
    assert net.tool_names == tuple(NAMES) and net.config["tool_names"] == tuple(NAMES)
    assert "tool_names=['nmap', 'sqlmap', 'nikto', 'ffuf']" in repr(net)
    plain = AIVANet(6, 4, hidden_size=24, spiking_size=16, seed=3)
    assert plain.tool_names is None and "tool_names" not in repr(plain)
    # The names are the net's own: changing the caller's list changes nothing.
    mine = list(NAMES)
    net = small(mine)
    mine[0] = "changed"
    assert net.tool_names[0] == "nmap"


@pytest.mark.parametrize("bad, exc, msg", [
    ("nmap", TypeError, "sequence of strings"),
    (5, TypeError, "sequence of strings"),
    (["a", "b", "c", 4], TypeError, "non-empty strings, got 4"),
    (["a", "", "c", "d"], TypeError, "non-empty strings, got ''"),
    (["a", "b", "a", "d"], ValueError, "distinct, got 'a' more than once"),
    (["a", "b", "c"], ValueError, r"each of the 4 tools \(num_tools\), got 3 names"),
])
def test_bad_names(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        small(bad)
    net = small()
    with pytest.raises(exc, match=msg):
        net.tool_names = bad
    assert net.tool_names == tuple(NAMES)      # a rejected setting changes nothing


def test_setter():
    net = AIVANet(6, 4, hidden_size=24, spiking_size=16, seed=3)
    net.tool_names = NAMES
    assert net.tool_names == tuple(NAMES)
    net.tool_names = None
    assert net.tool_names is None


def test_decide_names_matches_indices():
    net = small()
    x = rows(9)
    tool, conf, ok = net.decide(x)
    named, conf2, ok2 = net.decide(x, names=True)
    assert list(named) == [NAMES[i] for i in tool]
    np.testing.assert_array_equal(conf, conf2)
    np.testing.assert_array_equal(ok, ok2)
    one = net.decide(x[0], 0.2, names=True)
    assert isinstance(one[0], str) and one[0] == NAMES[net.decide(x[0])[0]]
    assert one[2] == (one[1] >= 0.2)


def test_decide_names_errors():
    plain = AIVANet(6, 4, hidden_size=24, spiking_size=16, seed=3)
    with pytest.raises(ValueError, match="needs the net's tool_names"):
        plain.decide(rows(1)[0], names=True)
    with pytest.raises(TypeError, match="names must be True or False"):
        small().decide(rows(1)[0], names="yes")


def test_checkpoint_pickle_and_onnx_keep_names(tmp_path):
    net = small()
    path = tmp_path / "named.npz"
    net.save(path)
    back = AIVANet.load(path)
    assert back.tool_names == tuple(NAMES)
    assert pickle.loads(pickle.dumps(net)).tool_names == tuple(NAMES)
    onnx = pytest.importorskip("onnx")
    net.export_onnx(tmp_path / "named.onnx")
    model = onnx.load(str(tmp_path / "named.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["aiva_cy.config"])["tool_names"] == NAMES


def test_checkpoint_without_names_loads(tmp_path):
    """A checkpoint from before tool_names (no such key in its config) loads with None."""
    from aiva_cy import io
    net = AIVANet(6, 4, hidden_size=24, spiking_size=16, seed=3)
    snap = net._snapshot(include_optimizer=False)
    config = dict(snap.config)
    del config["tool_names"]
    path = tmp_path / "old.npz"
    io.save(snap._replace(config=config), path)
    assert AIVANet.load(path).tool_names is None


def test_names_as_labels_equal_indices():
    x = rows(12, seed=1)
    idx = np.arange(12) % 4
    a, b = small(), small()
    la = a.train_step(x, idx)
    lb = b.train_step(x, [NAMES[i] for i in idx])
    assert la == lb
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    ga = small().loss_and_grad(x, idx)
    gb = small().loss_and_grad(x, np.array([NAMES[i] for i in idx]))
    assert ga[0] == gb[0]
    named_y = np.array([NAMES[i] for i in idx], dtype=object)
    ea, eb = a.evaluate(x, idx), a.evaluate(x, named_y)
    assert ea == eb
    ha = small().fit(x, idx, epochs=2, batch_size=4, seed=0, verbose=0,
                     validation_data=(x[:4], idx[:4]))
    hb = small().fit(x, [NAMES[i] for i in idx], epochs=2, batch_size=4, seed=0, verbose=0,
                     validation_data=(x[:4], [NAMES[i] for i in idx[:4]]))
    assert ha == hb


def test_names_as_episode_labels():
    xs = np.random.default_rng(2).normal(size=(5, 3, 6)).astype(np.float32)   # (T, B, in)
    ys = np.arange(15).reshape(5, 3) % 4
    a = small().loss_and_grad_sequence(xs, ys)[0]
    b = small().loss_and_grad_sequence(xs, np.array(NAMES)[ys])[0]
    assert a == b


@pytest.mark.parametrize("y, exc, msg", [
    (["nmap", "masscan", "ffuf"], ValueError, r"not among the net's tool_names: \['masscan'\]"),
    ([b"nmap", b"ffuf", b"nikto"], None, None),                     # bytes names are names
])
def test_label_names_errors(y, exc, msg):
    net = small()
    if exc is None:
        net.train_step(rows(3), y)
        return
    with pytest.raises(exc, match=msg):
        net.train_step(rows(3), y)


def test_strings_without_names_say_what_is_accepted():
    plain = AIVANet(6, 4, hidden_size=24, spiking_size=16, seed=3)
    with pytest.raises(TypeError, match=r"integer labels in \[0, 4\).*got strings.*"
                                        r"tool_names=\[\.\.\.\].*AIVAClassifier"):
        plain.train_step(rows(3), ["a", "b", "c"])


def test_batcher_names():
    net = small()
    x = rows(1)[0]
    with Batcher(net) as b:
        tool, conf, ok = b.decide(x, names=True)
        assert tool == NAMES[net.decide(x)[0]]
        assert asyncio.run(b.adecide(x, names=True))[0] == tool
    with Batcher(AIVANet(6, 4, hidden_size=24, spiking_size=16)) as plain:
        with pytest.raises(ValueError, match="needs the net's tool_names"):
            plain.decide(x, names=True)


def test_sklearn_names_the_net():
    pytest.importorskip("sklearn")
    from aiva_cy.sklearn import AIVAClassifier
    x = rows(40, seed=4)
    y = np.array(NAMES)[np.arange(40) % 4]
    clf = AIVAClassifier(epochs=1, random_state=0).fit(x, y)
    assert clf.net_.tool_names == tuple(sorted(NAMES))
    assert list(clf.net_.decide(x[:5], names=True)[0]) == list(clf.predict(x[:5]))

