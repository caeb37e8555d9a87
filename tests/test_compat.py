"""Tests for the AIVA drop-in (aiva_cy.compat) and ``aiva-cy convert`` (aiva_cy.convert)."""

from __future__ import annotations

import base64
import builtins
import io
import logging
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from aiva_cy import AIVANet
from aiva_cy import convert as convert_module
from aiva_cy.compat import AntiHallucinationModule, ScalableBioNet
from aiva_cy.convert import ConversionReport, convert

import bounds as bd
from aiva_cy.bench.bioneuron_numpy import BioNeuron  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
from conftest import firing_weights, safe_inputs  # noqa: E402
from test_cuda_engine import cuda  # noqa: E402,F401  (fixture: NumPy stand-in, or a real GPU)

SMALL: Dict[str, Any] = dict(input_size=24, num_tools=5, hidden_size=40, spiking_size=30)


def bio_weights(seed: int = 0, **sizes: int) -> Dict[str, np.ndarray]:
    """The NumPy BioNeuron's weight dict: what AIVA pickles."""
    return BioNeuron(**(sizes or SMALL), seed=seed).state_dict()


def write_pickle(path: Path, obj: Any, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def cli(argv: List[str]) -> int:
    """``aiva-cy convert ARGV...`` through the package's command-line entry point."""
    from aiva_cy.__main__ import main
    return main(["convert", *argv])


# ---------------------------------------------------------------------------------------
# conversion: the same net as from_bioneuron
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_converted_file_gives_from_bioneuron_probabilities(tmp_path: Path, protocol: int) -> None:
    weights = bio_weights(seed=protocol)
    src = write_pickle(tmp_path / "aiva.pkl", weights, protocol)
    expected_net = AIVANet.from_bioneuron(weights)

    report = convert(src, tmp_path / "fn.npz", trust_pickle=True)
    assert cli([str(src), str(tmp_path / "cli.npz"), "--trust-pickle"]) == 0

    X = np.random.default_rng(protocol).standard_normal((6, SMALL["input_size"]))
    want = np.array([expected_net.forward(x) for x in X])   # one stream, six steps
    assert want.std() > 0          # not a degenerate net: the spikes change the output
    for path in (tmp_path / "fn.npz", tmp_path / "cli.npz"):
        core = ScalableBioNet.load(path)
        got = np.array([core.forward(x) for x in X])
        np.testing.assert_array_equal(got, want)
        for key, value in core.net.state_dict().items():
            np.testing.assert_array_equal(value, expected_net.state_dict()[key])
        assert core.net.threshold == expected_net.threshold == 1.0
        assert core.net.refractory_period == expected_net.refractory_period
    assert isinstance(report, ConversionReport)
    assert (report.input_size, report.hidden_size, report.spiking_size, report.num_tools) == (
        24, 40, 30, 5)
    assert report.num_parameters == 24 * 40 + 40 * 30 + 30 * 5
    assert report.threshold == 1.0 and report.bytes_written == (tmp_path / "fn.npz").stat().st_size


def test_default_size_conversion_matches_the_bioneuron(tmp_path: Path) -> None:
    """AIVA's real shapes, and a check against the float64 BioNeuron itself (threshold
    pinned, no refractory period, inputs away from the threshold)."""
    bio = BioNeuron(seed=7, adaptive_threshold=False, refractory_period=0.0)
    src = write_pickle(tmp_path / "aiva.pkl", bio.state_dict())
    report = convert(src, tmp_path / "aiva.npz", trust_pickle=True, refractory_period=0)
    assert report.num_parameters == 3_166_208
    core = ScalableBioNet.load(tmp_path / "aiva.npz")
    assert core.total_params == 3_166_208
    sd = {"fc1.weight": bio.fc1, "spiking.weight": bio.spiking1.weights, "fc2.weight": bio.fc2}
    X = np.random.default_rng(1).standard_normal((8, 512))
    # the float64 BioNeuron's weights rounded to float32 by the conversion: the bound
    # includes that rounding; a row with a membrane within its bound of the threshold must
    # match one of its possible spikings (a flipped spike moves a logit by O(1))
    ref = bd.BoundedNet(sd, threshold=1.0, refractory_period=0).forward(X)
    ref64 = bd.BoundedNet(sd, threshold=1.0, refractory_period=0, u=bd.U64).forward(X)
    assert (~ref.unresolved_rows).sum() >= 2
    for i, x in enumerate(X):
        bd.assert_probs(core.forward(x)[None], ref_row(ref, i))
        if not ref64.unresolved_rows[i]:          # the BioNeuron is the float64 reference
            bd.assert_within(bio.forward(x), ref64.p[i], what="BioNeuron")


def ref_row(step: "bd.Step", i: int) -> "bd.Step":
    """Row i of a bounded reference step, as a step of its own."""
    return bd.Step(**{**step.__dict__, **{k: getattr(step, k)[i:i + 1] for k in (
        "raw", "mask", "out", "ambiguous", "resolved", "z", "p")}})


def test_threshold_choice(tmp_path: Path) -> None:
    weights = bio_weights()
    src = write_pickle(tmp_path / "a.pkl", weights)
    given = convert(src, tmp_path / "given.npz", trust_pickle=True, threshold=0.3)
    assert given.threshold == 0.3 and given.threshold_source == "given"
    assert ScalableBioNet.load(tmp_path / "given.npz").spiking1.threshold == 0.3

    src2 = write_pickle(tmp_path / "b.pkl", {**weights, "threshold": np.float64(0.42),
                                             "version": "1"})
    from_file = convert(src2, tmp_path / "file.npz", trust_pickle=True)
    assert from_file.threshold == 0.42 and "threshold" in from_file.threshold_source
    assert from_file.ignored_keys == ("'version'",)
    assert AIVANet.from_bioneuron({**weights, "threshold": 0.42}).threshold == 0.42

    assert cli([str(src), str(tmp_path / "c.npz"), "--trust-pickle", "--threshold", "0.35",
                "--refractory-period", "3"]) == 0
    net = AIVANet.load(tmp_path / "c.npz")
    assert (net.threshold, net.refractory_period) == (0.35, 3)


def test_cli_reports_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = write_pickle(tmp_path / "a.pkl", bio_weights())
    assert cli([str(src), str(tmp_path / "out.npz"), "--trust-pickle"]) == 0
    out, err = capsys.readouterr()
    assert "restricted unpickler" in err
    size = (tmp_path / "out.npz").stat().st_size
    for text in (f"{size:,} bytes", "fc1.weight      (24, 40)", "spiking.weight  (40, 30)",
                 "fc2.weight      (30, 5)", "2,310 weights", "threshold 1.0",
                 "refractory period 2 steps"):
        assert text in out, text


@pytest.mark.parametrize("module", [["aiva_cy"], ["aiva_cy.convert"]])
def test_cli_runs_as_a_module(tmp_path: Path, module: List[str]) -> None:
    src = write_pickle(tmp_path / "a.pkl", bio_weights())
    argv = ["convert"] if module == ["aiva_cy"] else []
    done = subprocess.run([sys.executable, "-m", *module, *argv, str(src),
                           str(tmp_path / "o.npz"), "--trust-pickle"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    ScalableBioNet.load(tmp_path / "o.npz")


def test_safetensors_destination(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    weights = bio_weights()
    src = write_pickle(tmp_path / "a.pkl", weights)
    convert(src, tmp_path / "a.safetensors", trust_pickle=True)
    core = ScalableBioNet.load(tmp_path / "a.safetensors")
    np.testing.assert_array_equal(core.fc1, weights["fc1"].astype(np.float32))


# ---------------------------------------------------------------------------------------
# the restricted unpickler
# ---------------------------------------------------------------------------------------
def test_allowlist_is_exactly_what_numpy_pickles_need() -> None:
    expected = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                ("__builtin__", "bytes"), ("builtins", "bytes")}
    for core in ("numpy.core", "numpy._core"):
        expected |= {(f"{core}.multiarray", "_reconstruct"), (f"{core}.multiarray", "scalar"),
                     (f"{core}.numeric", "_frombuffer")}
    assert set(convert_module._ALLOWED) == expected


ARRAY_KINDS = {
    "c_order": np.arange(12.0).reshape(3, 4),
    "f_order": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "strided_view": np.arange(24.0).reshape(4, 6)[::2, ::-1],
    "big_endian": np.arange(6.0).reshape(2, 3).astype(">f8"),
    "float32": np.arange(6, dtype=np.float32).reshape(3, 2),
    "int": np.arange(6).reshape(2, 3),
    "bool": np.eye(2, dtype=bool),
    "empty": np.zeros((0, 3)),
}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_protocol_and_layout_reads_back(tmp_path: Path, protocol: int) -> None:
    obj = {**ARRAY_KINDS, "scalar": np.float64(0.25), "list": [1.5, [2, 3]], "tuple": (1, "a"),
           "bytes": b"\x00\xff"}
    src = write_pickle(tmp_path / "all.pkl", obj, protocol)
    back = convert_module.read_weights_pickle(src, trust_pickle=True)
    # What an unrestricted unpickler makes of the same file (NumPy itself turns big-endian
    # data native below protocol 5).
    plain = pickle.loads(src.read_bytes())
    assert set(back) == set(obj)
    for key, arr in ARRAY_KINDS.items():
        assert back[key].dtype == plain[key].dtype and back[key].shape == arr.shape, key
        assert back[key].dtype.newbyteorder("=") == arr.dtype.newbyteorder("="), key
        np.testing.assert_array_equal(back[key], arr)
    assert back["scalar"] == 0.25 and back["list"] == [1.5, [2, 3]]
    assert back["tuple"] == (1, "a") and back["bytes"] == b"\x00\xff"


# Written by NumPy 1.26.4 (pickle.dumps, protocols 2 and 5) from
#   {"fc1": arange(12.).reshape(3, 4) / 8 - .5, "spiking1_weights": arange(20.).reshape(4, 5)
#    / 16 - .5, "fc2": asfortranarray(arange(10.).reshape(5, 2) / 4 - 1),
#    "threshold": float64(.25)}
# They name numpy.core.multiarray._reconstruct / numpy.core.numeric._frombuffer, which NumPy 2
# moved to numpy._core.
NUMPY1_PICKLES = {
    2: "gAJ9cQAoWAMAAABmYzFxAWNudW1weS5jb3JlLm11bHRpYXJyYXkKX3JlY29uc3RydWN0CnECY251bXB5Cm5kYXJy"
       "YXkKcQNLAIVxBGNfY29kZWNzCmVuY29kZQpxBVgBAAAAYnEGWAYAAABsYXRpbjFxB4ZxCFJxCYdxClJxCyhLAUsD"
       "SwSGcQxjbnVtcHkKZHR5cGUKcQ1YAgAAAGY4cQ6JiIdxD1JxEChLA1gBAAAAPHERTk5OSv////9K/////0sAdHES"
       "YoloBVhvAAAAAAAAAAAAw6DCvwAAAAAAAMOYwr8AAAAAAADDkMK/AAAAAAAAw4DCvwAAAAAAAAAAAAAAAAAAw4A/"
       "AAAAAAAAw5A/AAAAAAAAw5g/AAAAAAAAw6A/AAAAAAAAw6Q/AAAAAAAAw6g/AAAAAAAAw6w/cRNoB4ZxFFJxFXRx"
       "FmJYEAAAAHNwaWtpbmcxX3dlaWdodHNxF2gCaANLAIVxGGgJh3EZUnEaKEsBSwRLBYZxG2gQiWgFWLsAAAAAAAAA"
       "AADDoMK/AAAAAAAAw5zCvwAAAAAAAMOYwr8AAAAAAADDlMK/AAAAAAAAw5DCvwAAAAAAAMOIwr8AAAAAAADDgMK/"
       "AAAAAAAAwrDCvwAAAAAAAAAAAAAAAAAAwrA/AAAAAAAAw4A/AAAAAAAAw4g/AAAAAAAAw5A/AAAAAAAAw5Q/AAAA"
       "AAAAw5g/AAAAAAAAw5w/AAAAAAAAw6A/AAAAAAAAw6I/AAAAAAAAw6Q/AAAAAAAAw6Y/cRxoB4ZxHVJxHnRxH2JY"
       "AwAAAGZjMnEgaAJoA0sAhXEhaAmHcSJScSMoSwFLBUsChnEkaBCIaAVYXQAAAAAAAAAAAMOwwr8AAAAAAADDoMK/"
       "AAAAAAAAAAAAAAAAAADDoD8AAAAAAADDsD8AAAAAAADDqMK/AAAAAAAAw5DCvwAAAAAAAMOQPwAAAAAAAMOoPwAA"
       "AAAAAMO0P3ElaAeGcSZScSd0cShiWAkAAAB0aHJlc2hvbGRxKWNudW1weS5jb3JlLm11bHRpYXJyYXkKc2NhbGFy"
       "CnEqaBBoBVgJAAAAAAAAAAAAw5A/cStoB4ZxLFJxLYZxLlJxL3Uu",
    5: "gAWVYAIAAAAAAAB9lCiMA2ZjMZSMEm51bXB5LmNvcmUubnVtZXJpY5SMC19mcm9tYnVmZmVylJOUKJZgAAAAAAAA"
       "AAAAAAAAAOC/AAAAAAAA2L8AAAAAAADQvwAAAAAAAMC/AAAAAAAAAAAAAAAAAADAPwAAAAAAANA/AAAAAAAA2D8A"
       "AAAAAADgPwAAAAAAAOQ/AAAAAAAA6D8AAAAAAADsP5SMBW51bXB5lIwFZHR5cGWUk5SMAmY4lImIh5RSlChLA4wB"
       "PJROTk5K/////0r/////SwB0lGJLA0sEhpSMAUOUdJRSlIwQc3Bpa2luZzFfd2VpZ2h0c5RoBCiWoAAAAAAAAAAA"
       "AAAAAADgvwAAAAAAANy/AAAAAAAA2L8AAAAAAADUvwAAAAAAANC/AAAAAAAAyL8AAAAAAADAvwAAAAAAALC/AAAA"
       "AAAAAAAAAAAAAACwPwAAAAAAAMA/AAAAAAAAyD8AAAAAAADQPwAAAAAAANQ/AAAAAAAA2D8AAAAAAADcPwAAAAAA"
       "AOA/AAAAAAAA4j8AAAAAAADkPwAAAAAAAOY/lGgLSwRLBYaUaA90lFKUjANmYzKUaAQollAAAAAAAAAAAAAAAAAA"
       "8L8AAAAAAADgvwAAAAAAAAAAAAAAAAAA4D8AAAAAAADwPwAAAAAAAOi/AAAAAAAA0L8AAAAAAADQPwAAAAAAAOg/"
       "AAAAAAAA9D+UaAtLBUsChpSMAUaUdJRSlIwJdGhyZXNob2xklIwVbnVtcHkuY29yZS5tdWx0aWFycmF5lIwGc2Nh"
       "bGFylJOUaAtDCAAAAAAAANA/lIaUUpR1Lg==",
}


@pytest.mark.parametrize("protocol", sorted(NUMPY1_PICKLES))
def test_numpy1_pickles_convert(tmp_path: Path, protocol: int) -> None:
    src = tmp_path / "np1.pkl"
    src.write_bytes(base64.b64decode(NUMPY1_PICKLES[protocol]))
    names = {arg for op, arg, _ in __import__("pickletools").genops(src.read_bytes())
             if isinstance(arg, str) and "numpy" in arg}
    assert any(n.startswith("numpy.core") for n in names)   # really the NumPy 1.x spelling
    report = convert(src, tmp_path / "np1.npz", trust_pickle=True)
    assert report.threshold == 0.25
    core = ScalableBioNet.load(tmp_path / "np1.npz")
    np.testing.assert_array_equal(core.fc1, np.arange(12.0).reshape(3, 4) / 8 - 0.5)
    np.testing.assert_array_equal(core.spiking1.weights, np.arange(20.0).reshape(4, 5) / 16 - 0.5)
    np.testing.assert_array_equal(core.fc2, np.arange(10.0).reshape(5, 2) / 4 - 1)


class _Payload:
    """Unpickling this runs ``func(*args)``: how a malicious pickle runs code."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> Any:
        return self.func, self.args


def _payloads(marker: Path) -> Dict[str, Any]:
    weights = bio_weights()
    touch = f"touch {marker}"
    return {
        "os.system": {**weights, "fc1": _Payload(os.system, touch)},
        "builtins.open": {**weights, "extra": _Payload(builtins.open, str(marker), "w")},
        "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.call": [_Payload(subprocess.call, ["touch", str(marker)])],
        "a class": {**weights, "fc2": _Payload(Path, str(marker))},
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.open", "builtins.exec",
                                  "subprocess.call", "a class"])
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_code_payload_is_refused_without_running(tmp_path: Path, kind: str,
                                                 protocol: int) -> None:
    marker = tmp_path / "PWNED"
    src = write_pickle(tmp_path / "evil.pkl", _payloads(marker)[kind], protocol)
    dst = tmp_path / "out.npz"
    with pytest.raises(ValueError, match="refused without running it"):
        convert(src, dst, trust_pickle=True)
    assert not marker.exists()
    assert cli([str(src), str(dst), "--trust-pickle"]) == 1
    assert not marker.exists() and not dst.exists()
    # The control: an ordinary unpickler would have run it.
    pickle.loads(src.read_bytes())
    assert marker.exists() or kind == "a class"


def _handmade(ops: bytes) -> bytes:
    return b"\x80\x02" + ops + b"."


@pytest.mark.parametrize("stream, message", [
    # ndarray((10**9,)): numpy.ndarray may only be _reconstruct's class argument
    (_handmade(b"cnumpy\nndarray\nJ\x00\xca\x9a;\x85R"), "not callable"),
    # _reconstruct asked for a huge placeholder instead of NumPy's empty one
    (_handmade(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\xca\x9a;\x85"
               b"C\x01b\x87R"), "empty placeholder"),
    # _reconstruct of something other than ndarray
    (_handmade(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\ndtype\nK\x00\x85C\x01b\x87R"),
     "only numpy.ndarray"),
    # bytes(10**9): only the empty bytes() of protocols 0-2
    (_handmade(b"c__builtin__\nbytes\nJ\x00\xca\x9a;\x85R"), "only b\"\""),
    # _codecs.encode with an encoding other than latin1
    (_handmade(b"c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R"), "latin1"),
    # an object dtype would unpickle arbitrary objects into the array
    (_handmade(b"cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R"), "object dtype"),
    # a name that merely lives in an allowed module
    (_handmade(b"cnumpy\nload\nX\x01\x00\x00\x00x\x85R"), "numpy.load"),
    (_handmade(b"cnumpy._core.multiarray\nfromfile\nX\x01\x00\x00\x00x\x85R"), "fromfile"),
])
def test_abuse_of_allowed_names_is_refused(tmp_path: Path, stream: bytes, message: str) -> None:
    src = tmp_path / "evil.pkl"
    src.write_bytes(stream)
    with pytest.raises(ValueError, match=message):
        convert_module.read_weights_pickle(src, trust_pickle=True)


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    src = write_pickle(tmp_path / "obj.pkl", {**bio_weights(),
                                               "fc1": np.array([[1.0, None]], dtype=object)})
    with pytest.raises(ValueError, match="object dtype"):
        convert(src, tmp_path / "o.npz", trust_pickle=True)


# ---------------------------------------------------------------------------------------
# refusals: trust, shapes, numbers, files
# ---------------------------------------------------------------------------------------
def test_missing_trust_pickle_is_refused_before_reading(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "PWNED"
    src = write_pickle(tmp_path / "evil.pkl", _payloads(marker)["os.system"])
    dst = tmp_path / "out.npz"
    assert cli([str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert "arbitrary code" in err and "--trust-pickle" in err
    with pytest.raises(ValueError, match="arbitrary code.*trust_pickle=True"):
        convert(src, dst, trust_pickle=False)
    with pytest.raises(TypeError, match="trust_pickle must be True or False"):
        convert(src, dst, trust_pickle="yes")   # type: ignore[arg-type]
    with pytest.raises(TypeError):
        convert(src, dst)                       # type: ignore[call-arg]
    assert not marker.exists() and not dst.exists()


def test_help_says_pickle_can_run_code(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        convert_module.main(["--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "pickle file can run arbitrary code" in out and "--trust-pickle" in out


@pytest.mark.parametrize("change, message", [
    (lambda w: w.pop("spiking1_weights"), r"lacks \['spiking1_weights'\]"),
    (lambda w: w.update(spiking1_weights=w["spiking1_weights"][:-1]),
     r"fc1 has shape \(24, 40\) but spiking1.weights has shape \(39, 30\)"),
    (lambda w: w.update(fc2=w["fc2"][:, :-1].T), r"spiking1.weights has shape \(40, 30\) but fc2"),
    (lambda w: w.update(fc2=w["fc2"].ravel()), r"fc2 must be a non-empty 2-D array"),
    (lambda w: w.update(fc1=np.zeros((24, 0))), r"fc1 must be a non-empty 2-D array"),
    (lambda w: w["spiking1_weights"].__setitem__((3, 4), np.nan), r"spiking1.weights contains NaN"),
    (lambda w: w["fc1"].__setitem__((0, 0), np.inf), r"fc1 contains NaN or Inf"),
    (lambda w: w["fc2"].__setitem__((0, 0), 1e300), r"too large for float32"),
    (lambda w: w.update(fc1=np.full((24, 40), "a")), r"fc1 must hold real numbers"),
    (lambda w: w.update(threshold="high"), r"entry 'threshold' must be a real number"),
    (lambda w: w.update(threshold=float("nan")), r"entry 'threshold' must be finite"),
])
def test_bad_weights_are_refused_and_dst_is_untouched(tmp_path: Path, change: Any,
                                                      message: str) -> None:
    weights = bio_weights()
    change(weights)
    src = write_pickle(tmp_path / "bad.pkl", weights)
    dst = tmp_path / "out.npz"
    dst.write_bytes(b"previous contents")
    with pytest.raises(ValueError, match=message) as exc:
        convert(src, dst, trust_pickle=True)
    assert str(src) in str(exc.value)
    assert dst.read_bytes() == b"previous contents"
    assert cli([str(src), str(dst), "--trust-pickle"]) == 1
    assert dst.read_bytes() == b"previous contents"
    assert not list(tmp_path.glob(".*.tmp"))          # no temporary file left behind


@pytest.mark.parametrize("content, message", [
    (pickle.dumps([1, 2]), "holds a list; AIVA's weight file is a dict"),
    (pickle.dumps(np.zeros(3)), "holds a ndarray"),
    (b"", "not a readable pickle"),
    (b"not a pickle at all", "not a readable pickle"),
    (pickle.dumps(bio_weights())[:500], "not a readable pickle"),
    (b"PK\x03\x04" + b"\x00" * 40, "zip archive"),
])
def test_unreadable_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    src = tmp_path / "x.pkl"
    src.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        convert(src, tmp_path / "x.npz", trust_pickle=True)
    assert not (tmp_path / "x.npz").exists()


def test_bad_arguments_are_refused_before_reading(tmp_path: Path) -> None:
    src = write_pickle(tmp_path / "a.pkl", bio_weights())
    with pytest.raises(ValueError, match=r"dst '.*a\.pkl2' must end in \.npz or \.safetensors"):
        convert(src, tmp_path / "a.pkl2", trust_pickle=True)
    with pytest.raises(ValueError, match="threshold must be finite"):
        convert(src, tmp_path / "a.npz", trust_pickle=True, threshold=float("inf"))
    with pytest.raises(TypeError, match="threshold must be a real number"):
        convert(src, tmp_path / "a.npz", trust_pickle=True, threshold="0.5")  # type: ignore
    with pytest.raises(ValueError, match="refractory_period must be >= 0"):
        convert(src, tmp_path / "a.npz", trust_pickle=True, refractory_period=-1)
    with pytest.raises(TypeError, match="src must be a str or os.PathLike"):
        convert(3, tmp_path / "a.npz", trust_pickle=True)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        convert(tmp_path / "missing.pkl", tmp_path / "a.npz", trust_pickle=True)
    assert cli([str(tmp_path / "missing.pkl"), str(tmp_path / "a.npz"), "--trust-pickle"]) == 1
    assert not (tmp_path / "a.npz").exists()


# ---------------------------------------------------------------------------------------
# compat.ScalableBioNet
# ---------------------------------------------------------------------------------------
def test_scalable_bionet_call_shapes() -> None:
    core = ScalableBioNet(512, 20)
    assert core.total_params == 3_166_208
    assert (core.params_fc1, core.params_spiking1, core.params_fc2) == (
        512 * 2048, 2048 * 1024, 1024 * 20)
    assert (core.hidden_size_1, core.hidden_size_2) == (2048, 1024)
    assert (core.input_size, core.num_tools, core.hidden_size, core.spiking_size) == (
        512, 20, 2048, 1024)
    assert core.spiking1.params == core.params_spiking1 and core.spiking_layer is core.spiking1
    x = np.random.default_rng(0).standard_normal(512)
    probs = core.forward(x)
    assert type(probs) is np.ndarray and probs.dtype == np.float32 and probs.shape == (20,)
    assert abs(float(probs.sum()) - 1.0) <= bd.softmax_sum_bound(20) and (probs >= 0).all()
    assert core(x).shape == (20,)
    assert isinstance(core.net, AIVANet)


def test_forward_is_the_nets_stateful_step() -> None:
    core = ScalableBioNet(24, 5, seed=3, hidden_size=40, spiking_size=30)
    twin = AIVANet(**SMALL, seed=3)
    X = np.random.default_rng(2).standard_normal((5, SMALL["input_size"]))
    for x in X:
        np.testing.assert_array_equal(core.forward(x), twin.forward(x))
    core.reset_state()
    twin.reset_state()
    batch = core.forward(X)                     # batch: five streams at once
    np.testing.assert_array_equal(batch, twin.forward(X))
    assert batch.shape == (5, SMALL["num_tools"])


def test_seed_gives_the_same_weights() -> None:
    a, b, c = (ScalableBioNet(8, 3, seed=s, hidden_size=16, spiking_size=12) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.fc1, b.fc1)
    assert not np.array_equal(a.fc1, c.fc1)


@pytest.mark.parametrize("args, kwargs, error, message", [
    ((0, 20), {}, ValueError, "input_size"),
    ((512, 0), {}, ValueError, "num_tools"),
    (("512", 20), {}, TypeError, "input_size must be an int"),
    ((512, 2.5), {}, TypeError, "num_tools must be an int"),
    ((512, 20, -1), {}, ValueError, "seed"),
    ((512, 20), {"threshold": float("nan")}, ValueError, "threshold"),
    ((512, 20), {"refractory_period": -1}, ValueError, "refractory_period"),
    ((512, 20), {"device": "tpu"}, ValueError, "device"),
])
def test_constructor_validates(args: Any, kwargs: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        ScalableBioNet(*args, **kwargs)


def test_forward_validates_input() -> None:
    core = ScalableBioNet(8, 3, seed=0)
    with pytest.raises(ValueError, match=r"x must have shape \(8,\)"):
        core.forward(np.zeros(7))
    with pytest.raises(ValueError, match="NaN"):
        core.forward(np.full(8, np.nan))
    with pytest.raises(TypeError, match="real numbers"):
        core.forward(["a"] * 8)


def test_weights_in_aiva_names() -> None:
    core = ScalableBioNet(8, 3, seed=0, hidden_size=6, spiking_size=5)
    sd = core.net.state_dict()
    np.testing.assert_array_equal(core.fc1, sd["fc1.weight"])
    np.testing.assert_array_equal(core.spiking1.weights, sd["spiking.weight"])
    np.testing.assert_array_equal(core.fc2, sd["fc2.weight"])
    with pytest.raises(ValueError, match="read-only"):
        core.fc1[0, 0] = 1.0                    # would silently change nothing: refused
    new = np.ones((8, 6))
    core.fc1 = new
    np.testing.assert_array_equal(core.net.state_dict()["fc1.weight"], new)
    core.spiking1.weights = core.spiking1.weights * 2
    np.testing.assert_array_equal(core.net.state_dict()["spiking.weight"], sd["spiking.weight"] * 2)
    with pytest.raises(ValueError, match=r"ScalableBioNet.fc2: .*shape \(5, 3\)"):
        core.fc2 = np.ones((3, 5))
    with pytest.raises(ValueError, match="ScalableBioNet.fc2: .*NaN"):
        core.fc2 = np.full((5, 3), np.nan)
    np.testing.assert_array_equal(core.fc2, sd["fc2.weight"])    # failed sets changed nothing
    bio_sd = core.state_dict()
    assert set(bio_sd) == {"fc1", "spiking1_weights", "fc2"}
    back = AIVANet.from_bioneuron(core, threshold=core.spiking1.threshold)
    np.testing.assert_array_equal(back.state_dict()["fc1.weight"], new)


def test_training_saving_and_pickling_go_through_net(tmp_path: Path) -> None:
    core = ScalableBioNet(8, 3, seed=0, hidden_size=16, spiking_size=12)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((32, 8)), rng.integers(0, 3, 32)
    before = core.fc2
    core.net.train_step(X, y)
    assert not np.array_equal(core.fc2, before)
    core.save(tmp_path / "core.npz")
    again = ScalableBioNet.load(tmp_path / "core.npz")
    also = ScalableBioNet.from_file(tmp_path / "core.npz")
    for other in (again, also, pickle.loads(pickle.dumps(core))):
        np.testing.assert_array_equal(other.net.predict_proba(X), core.net.predict_proba(X))
        assert other.net.optimizer.step == 1
    with pytest.raises(TypeError, match="net must be an aiva_cy.AIVANet"):
        ScalableBioNet.from_net(BioNeuron(**SMALL, seed=0))   # type: ignore[arg-type]
    wrapped = ScalableBioNet.from_net(core.net)
    assert wrapped.net is core.net


def test_from_bioneuron_in_memory() -> None:
    bio = BioNeuron(**SMALL, seed=4)
    core = ScalableBioNet.from_bioneuron(bio.state_dict())
    net = AIVANet.from_bioneuron(bio)
    x = np.random.default_rng(0).standard_normal(SMALL["input_size"])
    np.testing.assert_array_equal(core.forward(x), net.forward(x))


def test_a_cuda_net_answers_in_numpy(cuda: Any) -> None:
    sizes = dict(input_size=24, num_tools=5, hidden_size=40, spiking_size=30)
    w = firing_weights(sizes, seed=0)
    cpu = ScalableBioNet(24, 5, hidden_size=40, spiking_size=30)
    gpu = ScalableBioNet(24, 5, hidden_size=40, spiking_size=30, device="cuda")
    cpu.net.load_state_dict(w)
    gpu.net.load_state_dict(w)
    assert gpu.net.device == "cuda"
    xs = safe_inputs(w, (3, 24), seed=1)
    ref = bd.BoundedNet(w, refractory_period=cpu.net.refractory_period)
    for x in xs:                                  # three steps of one stream
        got = gpu.forward(x)
        assert type(got) is np.ndarray and got.shape == (5,)
        bd.assert_pair(got, cpu.forward(x), ref.step(x[None]).p[0])   # clear: 2B
    for name in ("fc1", "fc2"):
        assert type(getattr(gpu, name)) is np.ndarray
        np.testing.assert_array_equal(getattr(gpu, name), getattr(cpu, name))
    assert all(type(v) is np.ndarray for v in gpu.state_dict().values())
    gpu.fc2 = cpu.fc2 * 2
    np.testing.assert_array_equal(gpu.fc2, cpu.fc2 * 2)
    # check() takes the net's own (CuPy) output as well.
    passed, confidence = AntiHallucinationModule(0.5).check(gpu.net.predict_proba(xs[0]))
    assert confidence == float(gpu.net.predict_proba(xs[0]).get().max())   # the same call


# ---------------------------------------------------------------------------------------
# compat.AntiHallucinationModule
# ---------------------------------------------------------------------------------------
def test_check_semantics(caplog: pytest.LogCaptureFixture) -> None:
    module = AntiHallucinationModule()
    assert module.confidence_threshold == 0.7
    passed, confidence = module.check(np.array([0.1, 0.7, 0.2]))
    assert (passed, confidence) == (True, 0.7)                 # at the threshold: passes
    assert type(passed) is bool and type(confidence) is float
    with caplog.at_level(logging.WARNING, logger="aiva_cy.compat"):
        assert module.check([0.31, 0.69]) == (False, 0.69)     # a list works too
    assert "0.69 < 0.70" in caplog.text
    assert AntiHallucinationModule(confidence_threshold=0.3).check([0.31, 0.69])[0] is True
    assert module.check_confidence([0.6, 0.4], threshold=0.5) == (True, 0.6)
    assert module.check(np.array([0.6, 0.4], dtype=np.float32))[1] == float(np.float32(0.6))
    module.confidence_threshold = 0.5
    assert module.check([0.5, 0.5]) == (True, 0.5)


def test_check_agrees_with_decide() -> None:
    core = ScalableBioNet(16, 4, seed=0, hidden_size=32, spiking_size=24)
    X = np.random.default_rng(5).standard_normal((20, 16))
    # The median confidence as the level: some decisions pass, some do not.
    level = float(np.median(core.net.predict_proba(X).max(axis=1)))
    module = AntiHallucinationModule(level)
    results = []
    for x in X:
        core.reset_state()
        passed, confidence = module.check(core.forward(x))
        tool, top, ok = core.net.decide(x, confidence=level)
        assert (passed, confidence) == (ok, top)
        results.append(passed)
    assert 0 < sum(results) < len(results)


@pytest.mark.parametrize("value, error", [
    (1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError), (True, TypeError),
    ("0.7", TypeError), (None, TypeError)])
def test_confidence_threshold_is_validated(value: Any, error: type) -> None:
    with pytest.raises(error, match="confidence_threshold"):
        AntiHallucinationModule(value)
    module = AntiHallucinationModule()
    with pytest.raises(error, match="confidence_threshold"):
        module.confidence_threshold = value
    assert module.confidence_threshold == 0.7
    if value is not None:
        with pytest.raises(error, match="threshold"):
            module.check_confidence([0.9, 0.1], threshold=value)


@pytest.mark.parametrize("probs, error, message", [
    (np.ones((2, 3)) / 3, ValueError, "1-D"),
    (np.array([]), ValueError, "non-empty"),
    (np.array([0.5, np.nan]), ValueError, "NaN"),
    (["a", "b"], TypeError, "real numbers"),
    ([[0.5], [0.5, 0.5]], ValueError, "1-D array of numbers"),
])
def test_check_validates_probs(probs: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        AntiHallucinationModule().check(probs)


def test_multi_layer_validation_and_stats() -> None:
    module = AntiHallucinationModule(0.5)
    p = np.array([0.8, 0.1, 0.1])
    passed, final, record = module.multi_layer_validation(p)
    stability = max(0.0, min(1.0, 1.0 - p.std() / p.mean()))
    # the module's float64 arithmetic against the same formulas here, perhaps summed in
    # another order: a few roundings of 2**-53 apart
    few_ulp = 8 * 2.0 ** -53
    assert record["basic_confidence"] == 0.8
    assert record["stability"] == pytest.approx(stability, rel=few_ulp)
    assert record["consistency"] == pytest.approx(1 / 3, rel=few_ulp)
    assert final == pytest.approx(np.mean([0.8, stability, 1 / 3]), rel=few_ulp)
    assert record["consensus_reached"] is False and passed is False   # 0.8 alone exceeds 0.6
    stats = module.get_validation_stats()
    assert stats["total_validations"] == 1
    assert stats["recent_average_confidence"] == pytest.approx(final, rel=few_ulp)
    for _ in range(100):
        module.multi_layer_validation(np.array([0.9, 0.9]))   # stability 1, consistency 1
    assert len(module.validation_history) == 50               # 101 records: trimmed to 50
    assert module.multi_layer_validation([0.9, 0.9])[0] is True
    assert len(module.validation_history) == 51
    assert AntiHallucinationModule().get_validation_stats() == {"total_validations": 0}


# ---------------------------------------------------------------------------------------
# README: the integration section's Python blocks run as written
# ---------------------------------------------------------------------------------------
_needs_readme = pytest.mark.skipif(not (REPO / "README.md").exists(),
                                   reason="the README is not next to these tests (installed copy)")


def _integration_blocks() -> List[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Integrating with AIVA")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@_needs_readme
def test_readme_integration_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = _integration_blocks()
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})


@_needs_readme
def test_readme_convert_command_is_the_real_one() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Integrating with AIVA"):]
    assert "aiva-cy convert" in section and "--trust-pickle" in section
