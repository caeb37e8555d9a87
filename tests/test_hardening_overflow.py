"""Finite input near float32's maximum that overflows fc1's product: NaN hidden units never
spike, so the answer would be silently wrong.  Both engines refuse it (the CPU's C core
checks the membrane potentials after the products; the CUDA engine sets BAD_HIDDEN)."""
from __future__ import annotations

import numpy as np
import pytest

from aiva_cy import AIVANet
from conftest import SMALL, firing_weights
from test_cuda_engine import cuda  # noqa: F401 (the fixture)

MESSAGE = "too large for these weights"


def _snapshot(net):
    state = net._engine.get_state()
    state = None if state is None else np.array(getattr(state, "get", lambda: state)())
    return {k: np.array(v) for k, v in net.state_dict().items()}, state


def _assert_same(a, b):
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k])
    assert (a[1] is None) == (b[1] is None)
    if a[1] is not None:
        np.testing.assert_array_equal(a[1], b[1])


WIDE = dict(SMALL, input_size=4096)


def layouts(w, batch):
    """Weights and x (3e38 where used) for which x @ fc1 overflows float32 to +Inf in some
    partial sums and -Inf in others.  Whether the sum is then NaN depends on how the BLAS
    splits the sum (SIMD lanes, blocks of K; a sequential FMA sum stays at one Inf), so
    several layouts are tried: each must either be refused or give finite probabilities,
    and on any optimised BLAS at least one splits its sum."""
    n = w["fc1.weight"].shape[0]
    signs = {"alternating": np.where(np.arange(n) % 2 == 0, 1.0, -1.0),
             "halves": np.where(np.arange(n) < n // 2, 1.0, -1.0),
             "quarters": np.where((np.arange(n) // (n // 4)) % 2 == 0, 1.0, -1.0)}
    for name, sign in signs.items():
        fc1 = np.repeat(sign[:, None], w["fc1.weight"].shape[1], axis=1).astype(np.float32)
        x = np.full((batch, n), 3e38, np.float32)
        yield name, dict(w, **{"fc1.weight": fc1}), x


def check_refused_or_finite(net, w, x, refused):
    """Each inference path sums on its own (packed or not, gemv or gemm): each must refuse
    the input (changing nothing) or answer with finite probabilities."""
    net.load_state_dict(w)
    calls = (net.predict_proba, net, net.forward, lambda x: net.forward_sequence(np.stack([x, x])))
    for call in calls:
        before = _snapshot(net)
        try:
            probs = call(x)
        except ValueError as exc:
            assert MESSAGE in str(exc)
            _assert_same(_snapshot(net), before)
            refused.append(True)
        else:
            assert np.isfinite(probs).all()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_cpu_refuses_input_that_overflows_fc1(precision):
    net = AIVANet(**WIDE, seed=0)
    if precision == "bfloat16":
        try:
            net.set_precision("bfloat16")
        except ImportError:
            pytest.skip("no BLAS with bf16 products")
    refused = []
    for batch in (1, 4):
        for _, w, x in layouts(firing_weights(WIDE, 0), batch):
            net.reset_state()
            net.forward(np.zeros_like(x))          # a state to keep
            check_refused_or_finite(net, w, x, refused)
    assert refused, "no layout overflowed to NaN: the check is not exercised"
    net.reset_state()
    assert np.isfinite(net.predict_proba(np.ones((2, WIDE["input_size"])))).all()


def test_cuda_engine_flags_input_that_overflows_fc1(cuda):
    w0 = firing_weights(WIDE, 3)
    gpu = AIVANet(**WIDE, seed=3).to("cuda")
    refused = []
    for batch in (1, 4):
        for _, w, x in layouts(w0, batch):
            gpu.reset_state()
            check_refused_or_finite(gpu, w, x, refused)
    assert refused, "no layout overflowed to NaN: the check is not exercised"
