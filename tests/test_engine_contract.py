"""Both engines against the written-down contract, aiva_cy._engine.EngineProtocol: the same
public names, the same parameters and defaults, the same answers and errors at the seams.

The CUDA engine is inspected on the NumPy stand-in for CuPy (tests/test_cuda_engine.py's
``cuda`` fixture), so no GPU and no CuPy import are needed; where a GPU is present the same
checks run on the real one too.  As in thinc's test_ops_consistency, an engine may not grow
a public method the contract does not have, nor take other arguments for one it has.
"""
import inspect

import numpy as np
import pytest

from aiva_cy import AIVANet, _core, _model
from aiva_cy._engine import EngineProtocol

from conftest import SMALL, firing_weights, safe_inputs
from test_cuda_engine import cuda  # noqa: F401  (fixture: NumPy stand-in, or a real GPU)


def _protocol_members():
    """{name: "method" | "data"}: the Protocol's methods, and its properties and annotated
    attributes (data: read, never called)."""
    members = {}
    for name, value in vars(EngineProtocol).items():
        if name.startswith("_"):
            continue
        members[name] = "data" if isinstance(value, property) else "method"
    for name in EngineProtocol.__annotations__:
        members[name] = "data"
    return members


MEMBERS = _protocol_members()


def _public(obj):
    return {n for n in dir(obj) if not n.startswith("_")}


def _params(fn):
    """(name, kind, default) of each parameter after self."""
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in list(sig.parameters.values())[1:]]


@pytest.fixture
def engines(cuda):  # noqa: F811  (the imported fixture)
    w = firing_weights(SMALL, 0)
    cpu = AIVANet(**SMALL, seed=0)
    cpu.load_state_dict(w)
    gpu = AIVANet(**SMALL, seed=0)
    gpu.load_state_dict(w)
    gpu.to("cuda")
    assert type(cpu._engine) is _core.Engine and type(gpu._engine) is cuda.CupyEngine
    return cpu, gpu, w


def test_the_protocol_is_not_empty():
    # A contract that lost its methods would pass every comparison below.
    assert {"forward", "forward_sequence", "predict", "loss_and_grad", "train_step",
            "get_state", "set_state", "get_weights", "set_weights", "gradients", "to",
            "as_x", "as_xs", "as_y", "blas_products"} <= {k for k, v in MEMBERS.items()
                                                          if v == "method"}
    assert {"device", "input_size", "precision", "state_batch_size"} <= set(MEMBERS)


def test_both_engines_have_exactly_the_contracts_public_names(engines):
    for net in engines[:2]:
        engine = net._engine
        assert _public(engine) == set(MEMBERS), type(engine)
        assert isinstance(engine, EngineProtocol)


def test_both_engines_take_the_contracts_arguments(engines):
    for net in engines[:2]:
        cls = type(net._engine)
        for name, kind in MEMBERS.items():
            if kind == "data":
                assert not callable(getattr(net._engine, name)), (cls.__name__, name)
                continue
            assert callable(getattr(cls, name)), (cls.__name__, name)
            assert _params(getattr(cls, name)) == _params(getattr(EngineProtocol, name)), \
                (cls.__name__, name)


def test_both_engines_convert_input_alike(engines):
    cpu, gpu, w = engines
    n = SMALL["input_size"]
    x = safe_inputs(w, (3, n), seed=1)
    for net in (cpu, gpu):
        e = net._engine
        arr, one = e.as_x(x[0].tolist())
        assert one and arr.shape == (1, n) and arr.dtype == np.float32
        np.testing.assert_array_equal(e.to_host(arr), x[:1].astype(np.float32))
        seq, one = e.as_xs(x)
        assert one and seq.shape == (3, 1, n)
        seq, one = e.as_xs(x[None])
        assert not one and seq.shape == (1, 3, n)
        labels = e.to_host(e.as_y([0, 1.0, 2], 3))
        assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2]
        assert e.to("cpu" if net is cpu else e.device, net.optimizer) == (e, net.optimizer)


BAD_INPUT = [   # SMALL: input_size 24, num_tools 5, spiking_size 30, refractory_period 2
    ("as_x", (np.zeros((2, 3)),), ValueError, r"x must have shape \(24,\) or \(batch >= 1, 24\)"),
    ("as_x", (np.array(["a"] * 24),), TypeError, "x must hold real numbers"),
    ("as_xs", (np.zeros((2, 2, 2, 24)),), ValueError, r"xs must have shape \(steps >= 1, 24\)"),
    ("as_xs", (np.full((2, 24), np.nan),), ValueError, "xs contains NaN or Inf"),
    ("as_y", ([0, 9], 2), ValueError,
     r"y must hold integer labels in \[0, 5\) \(ints, or floats with integral values\), got values from 0 to 9"),
    ("as_y", ([0.5, 1], 2), ValueError, "non-integer"),
    ("as_y", ([0, 1, 2], 2), ValueError, r"one label per row of x: shape \(2,\)"),
    ("set_state", (np.full((2, 30), 7),), ValueError,
     r"refractory state must hold integers in \[0, 2\]"),
    ("set_state", (np.zeros((2, 3)),), ValueError,
     r"refractory state must have shape \(batch >= 1, 30\)"),
    ("set_precision", ("float16",), ValueError,
     "precision must be 'float32', 'bfloat16', 'int8' or 'auto', got 'float16'"),
]


@pytest.mark.parametrize("method,args,error,pattern", BAD_INPUT, ids=[b[0] + str(i) for i, b in
                                                                    enumerate(BAD_INPUT)])
def test_both_engines_refuse_bad_input_in_the_same_words(engines, method, args, error, pattern):
    assert SMALL["input_size"] == 24 and SMALL["num_tools"] == 5 and SMALL["spiking_size"] == 30
    for net in engines[:2]:
        with pytest.raises(error, match=pattern):
            getattr(net._engine, method)(*args)


@pytest.mark.parametrize("precision", ["bfloat16", "int8", "auto"])
def test_the_cuda_engine_refuses_reduced_precision_in_the_models_words(engines, precision):
    # The CPU engine runs them (where oneDNN is installed: aiva_cy._blas); the CUDA one runs
    # float32 only, and says so as aiva_cy._model.check_device_precision words it.
    gpu = engines[1]
    with pytest.raises(NotImplementedError) as raised:
        gpu._engine.set_precision(precision)
    with pytest.raises(NotImplementedError) as model:
        _model.check_device_precision(gpu.device, precision)
    assert str(raised.value) == str(model.value)
    assert "CPU only" in str(raised.value) and "precision='float32'" in str(raised.value)
    with pytest.raises(NotImplementedError, match="CPU only"):
        gpu.set_precision(precision)
    assert gpu.precision == "float32" and gpu._engine.effective_precision == "float32"
    assert gpu._engine.quantized() is None


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_both_engines_word_a_failed_step_alike(engines):
    cpu, gpu, w = engines
    huge = dict(w, **{"fc2.weight": np.full_like(w["fc2.weight"], 3e38)})
    x = safe_inputs(w, (4, SMALL["input_size"]), seed=2)
    messages = {}
    for net in (cpu, gpu):
        net.load_state_dict(huge)
        with pytest.raises(FloatingPointError) as train:
            net.train_step(x, np.zeros(4, np.int64))
        with pytest.raises(ValueError) as infer:
            net.predict_proba(x)
        messages[net.device] = (str(train.value), str(infer.value))
    assert messages["cpu"] == messages["cuda"]
    assert "logits are not finite" in messages["cpu"][0]


def test_the_c_core_holds_the_same_facts():
    c = _core.C_CONSTANTS
    assert c["GRAD_LIMIT"] == _model.GRAD_LIMIT
    for name in ("ERR_INPUT_NONFINITE", "ERR_OUTPUT_NONFINITE", "ERR_LABEL",
                 "ERR_GRAD_NONFINITE", "ERR_SIZE", "ERR_HIDDEN_NONFINITE", "ERR_PROVIDER"):
        assert c[name] == getattr(_model, name), name
    assert len({c[k] for k in c if k.startswith("ERR_")}) == 7
