"""Tests for ``aiva-cy convert`` (aiva_cy.convert): AIVA's pickled weights to a checkpoint."""

from __future__ import annotations

import base64
import builtins
import datetime
import os
import pickle
import pickletools
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

from aiva_cy import AIVANet
from aiva_cy import convert as convert_module
from aiva_cy.compat import ScalableBioNet
from aiva_cy.convert import ConversionReport, convert
from aiva_cy.reference import membrane_margin

from aiva_cy.bench.bioneuron_numpy import BioNeuron
from aiva_like import (AivaCore, aiva_weights, model_manager_pickle, model_updater_pickle,
                       unit_rows)

REPO = Path(__file__).resolve().parents[1]
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
# conversion: the same net as from_bioneuron, AIVA's first decisions
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_converted_file_gives_from_bioneuron_probabilities(tmp_path: Path, protocol: int) -> None:
    weights = bio_weights(seed=protocol)
    src = write_pickle(tmp_path / "aiva.pkl", weights, protocol)
    # The converter's defaults: AIVA's first-call threshold, no refractory mask.
    expected_net = AIVANet.from_bioneuron(weights, threshold=0.98, refractory_period=0)

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
        assert core.net.threshold == expected_net.threshold == 0.98
        assert core.net.refractory_period == 0
    assert isinstance(report, ConversionReport)
    assert (report.input_size, report.hidden_size, report.spiking_size, report.num_tools) == (
        24, 40, 30, 5)
    assert report.num_parameters == 24 * 40 + 40 * 30 + 30 * 5
    assert report.threshold == 0.98 and report.bytes_written == (tmp_path / "fn.npz").stat().st_size
    assert report.dropped_dates == ()


def test_default_size_conversion_matches_the_bioneuron(tmp_path: Path) -> None:
    """AIVA's real shapes, and a check against the float64 BioNeuron itself (threshold
    pinned, no refractory period, inputs away from the threshold)."""
    bio = BioNeuron(seed=7, adaptive_threshold=False, refractory_period=0.0)
    src = write_pickle(tmp_path / "aiva.pkl", bio.state_dict())
    report = convert(src, tmp_path / "aiva.npz", trust_pickle=True, threshold=1.0)
    assert report.num_parameters == 3_166_208
    core = ScalableBioNet.load(tmp_path / "aiva.npz")
    assert core.total_params == 3_166_208
    sd = {"fc1.weight": bio.fc1, "spiking.weight": bio.spiking1.weights}
    rng = np.random.default_rng(1)
    X = [x for x in rng.standard_normal((60, 512)) if membrane_margin(sd, x, 1.0) > 1e-3][:8]
    assert len(X) >= 4
    for x in X:
        # float32 logits of ~500 spikes: relative error ~1e-5; a flipped spike would move
        # a logit by O(1) and a probability by far more.
        np.testing.assert_allclose(core.forward(x), bio.forward(x), rtol=1e-4, atol=1e-7)


def _first_decisions(path: Path, weights: Dict[str, np.ndarray], X: np.ndarray) -> int:
    """Rows of X on which the checkpoint's decision (one call from an empty state) is the
    one AIVA's freshly built core makes on its first call."""
    got = AIVANet.load(path).predict(X)
    return int((got == AivaCore(weights).first_decisions(X).argmax(axis=1)).sum())


def test_the_default_threshold_gives_aivas_first_decisions(tmp_path: Path) -> None:
    weights = aiva_weights(seed=11)
    X = unit_rows(300, 1024, seed=12)
    src = model_updater_pickle(tmp_path / "updater.pkl", weights)
    convert(src, tmp_path / "default.npz", trust_pickle=True)
    convert(src, tmp_path / "start.npz", trust_pickle=True, threshold=1.0)
    default = _first_decisions(tmp_path / "default.npz", weights, X)
    start = _first_decisions(tmp_path / "start.npz", weights, X)
    assert default >= 297, default            # >= 99% (300/300 measured)
    assert start < default                    # AIVA never tests at its starting 1.0


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_model_manager_pickle_with_dates_converts(tmp_path: Path, protocol: int,
                                                  capsys: pytest.CaptureFixture) -> None:
    weights = aiva_weights(seed=13)
    src = model_manager_pickle(tmp_path / "manager.pkl", weights, protocol)
    names = {arg for _, arg, _ in pickletools.genops(src.read_bytes()) if isinstance(arg, str)}
    assert {"datetime", "date", "timedelta"} & names or "datetime datetime" in names
    report = convert(src, tmp_path / "manager.npz", trust_pickle=True)
    assert report.ignored_keys == ("'metadata'",)
    assert report.dropped_dates == (
        "'metadata'['saved_at'] = 2024-05-01 12:30:05.000250",
        "'metadata'['history'][0]['day'] = 2024-04-30",
        "'metadata'['history'][0]['took'] = 0:03:02")
    assert "dates and times in them, dropped:" in report.summary()
    assert "'metadata'['saved_at'] = 2024-05-01 12:30:05.000250" in report.summary()
    X = unit_rows(300, 1024, seed=14)
    assert _first_decisions(tmp_path / "manager.npz", weights, X) >= 297
    assert cli([str(src), str(tmp_path / "cli.npz"), "--trust-pickle"]) == 0
    assert "0:03:02" in capsys.readouterr().out


def test_threshold_choice(tmp_path: Path) -> None:
    weights = bio_weights()
    src = write_pickle(tmp_path / "a.pkl", weights)
    given = convert(src, tmp_path / "given.npz", trust_pickle=True, threshold=0.45)
    assert given.threshold == 0.45 and given.threshold_source == "given"
    assert ScalableBioNet.load(tmp_path / "given.npz").spiking1.threshold == 0.45
    for name, value in (("first", 0.98), ("steady", 0.3)):
        named = convert(src, tmp_path / f"{name}.npz", trust_pickle=True, threshold=name)
        assert named.threshold == value and named.threshold_source.startswith(name)
        assert cli([str(src), str(tmp_path / f"{name}-cli.npz"), "--trust-pickle",
                    "--threshold", name]) == 0
        assert AIVANet.load(tmp_path / f"{name}-cli.npz").threshold == value

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
    with pytest.raises(SystemExit) as exc:
        cli([str(src), str(tmp_path / "d.npz"), "--trust-pickle", "--threshold", "later"])
    assert exc.value.code == 2 and not (tmp_path / "d.npz").exists()


def test_cli_reports_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = write_pickle(tmp_path / "a.pkl", bio_weights())
    assert cli([str(src), str(tmp_path / "out.npz"), "--trust-pickle"]) == 0
    out, err = capsys.readouterr()
    assert "restricted unpickler" in err
    size = (tmp_path / "out.npz").stat().st_size
    flat = " ".join(out.split())
    for text in (f"{size:,} bytes", "fc1.weight (24, 40)", "spiking.weight (40, 30)",
                 "fc2.weight (30, 5)", "2,310 weights", "threshold 0.98 (default, first",
                 "--threshold steady (0.3) those of a service that has run longer",
                 "refractory period 0 calls (default", "no refractory mask",
                 "floor(0.05 / dt) calls every dt seconds"):
        assert text in flat, text
    assert max(map(len, out.splitlines()[1:])) <= 96       # wrapped for a terminal


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
def test_allowlist_is_exactly_what_numpy_pickles_and_dates_need() -> None:
    expected = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                ("__builtin__", "bytes"), ("builtins", "bytes"), ("datetime", "datetime"),
                ("datetime", "date"), ("datetime", "timedelta")}
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


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_dates_read_back(tmp_path: Path, protocol: int) -> None:
    obj = {"when": datetime.datetime(2023, 12, 31, 23, 59, 59, 999999),
           "day": datetime.date(1999, 1, 2), "took": datetime.timedelta(days=-2, seconds=7)}
    src = write_pickle(tmp_path / "d.pkl", obj, protocol)
    assert convert_module.read_weights_pickle(src, trust_pickle=True) == obj
    assert convert_module.dates_in(obj) == ["'when' = 2023-12-31 23:59:59.999999",
                                            "'day' = 1999-01-02", "'took' = -2 days, 0:00:07"]
    loop: List[Any] = [obj["day"]]
    loop.append(loop)                         # a pickle can hold a list that holds itself
    assert convert_module.dates_in({"m": loop}) == ["'m'[0] = 1999-01-02"]


@pytest.mark.parametrize("stream, message", [
    # a timezone-aware datetime: its tzinfo is an object (and datetime.timezone is not allowed)
    (pickle.dumps(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc), 2),
     "datetime.timezone"),
    # datetime with a string argument (a str would be parsed as something else entirely)
    (_handmade(b"cdatetime\ndatetime\nX\x01\x00\x00\x00aX\x01\x00\x00\x00b\x86R"),
     "only bytes and ints"),
    # a list argument
    (_handmade(b"cdatetime\ntimedelta\n]\x85R"), "only bytes and ints"),
    # bools are not ints here
    (_handmade(b"cdatetime\ndate\n\x88\x88\x88\x87R"), "only bytes and ints"),
    # a name of the datetime module that is not a value type
    (_handmade(b"cdatetime\nsys\n."), "datetime.sys"),
])
def test_date_arguments_are_validated(tmp_path: Path, stream: bytes, message: str) -> None:
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
    # Refused while reading now: a string dtype is no plain number type.
    (lambda w: w.update(fc1=np.full((24, 40), "a")), r"dtype 'U1' refused"),
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


