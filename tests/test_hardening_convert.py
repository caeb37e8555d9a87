"""Hardening of ``aiva-cy convert``'s restricted unpickler and of its input file: dtype and
array state it must not hand to NumPy, pathological but valid pickles, files that are not
regular.  Each input that used to crash, hang or allocate without bound runs in a child
process with a memory limit and a timeout, so that a regression fails the test instead of
the run."""
from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aiva_cy import convert as convert_module
from aiva_cy.convert import convert, read_weights_pickle

REPO = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 3 << 30

CHILD = textwrap.dedent("""
    import os, resource, sys
    # No cap under AddressSanitizer, which reserves terabytes of address space.
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from aiva_cy.convert import read_weights_pickle
    try:
        read_weights_pickle(sys.argv[1], trust_pickle=True)
    except ValueError as exc:
        print("ValueError:", exc)
    else:
        print("read")
""")


def read_in_child(path: Path, timeout: float = 60) -> str:
    """What reading ``path`` prints in a child process ("ValueError: ..." or "read");
    fails on a crash, any other exception or a hang."""
    try:
        result = subprocess.run([sys.executable, "-c", CHILD.format(limit=MEMORY_LIMIT),
                                 str(path)], capture_output=True, text=True, timeout=timeout,
                                cwd=str(REPO))
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading {path.name} did not finish in {timeout} s")
    assert result.returncode == 0, (f"reading {path.name} failed (status "
                                    f"{result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout.strip()


def stream(ops: bytes, protocol: int = 2) -> bytes:
    return bytes([0x80, protocol]) + ops + b"."


class _Reduced:
    """Pickles as whatever ``reduce`` says: a hand-made NumPy dtype or array reduction."""

    def __init__(self, *reduce: Any) -> None:
        self.reduce = reduce

    def __reduce__(self) -> Any:
        return self.reduce


def dtype_with_state(spec: str, state: Any) -> _Reduced:
    return _Reduced(np.dtype, (spec, False, True), state)


PLAIN = (3, "<", None, None, None, -1, -1, 0)


# ---------------------------------------------------------------------------------------
# 1. dtype and array state never reaches NumPy's __setstate__
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("evil, message", [
    # A field outside the item (read out of bounds by NumPy's setstate / the array).
    (dtype_with_state("f8", (3, "|", None, ("a",), {"a": (np.dtype("f8"), 1 << 20)}, 8, 1, 16)),
     "dtype state"),
    # A 2**40-element subarray.
    (dtype_with_state("f8", (3, "<", (np.dtype("f8"), (1 << 40,)), None, None, -1, -1, 0)),
     "dtype state"),
    # A field whose type is no dtype.
    (dtype_with_state("f8", (3, "|", None, ("a",), {"a": ("not a dtype", 0)}, 8, 1, 16)),
     "dtype state"),
    # Sizes and flags the type does not have.
    (dtype_with_state("f8", (3, "<", None, None, None, 1 << 30, 1, 0)), "dtype state"),
    (dtype_with_state("f8", (3, "<", None, None, None, -1, -1, 63)), "dtype state"),
    # A void dtype of 256 MiB.
    (dtype_with_state("V268435456", (3, "|", None, None, None, 268435456, 1, 0)),
     "dtype 'V268435456' refused"),
    (dtype_with_state("c16", PLAIN), "dtype 'c16' refused"),
])
def test_dtype_state_is_validated_not_applied(tmp_path: Path, evil: Any, message: str) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"fc1": evil}, protocol=2))
    out = read_in_child(path)
    assert out.startswith("ValueError:") and message in out, out
    assert len(out) < 600, "the message must not dump the file's (or the heap's) bytes"


@pytest.mark.parametrize("state, message", [
    ((1, (1 << 20,), np.dtype("f8"), False, b"\0" * 8), "needs 8388608 bytes"),
    ((1, (2, -1), np.dtype("f8"), False, b"\0" * 16), "shape"),
    ((1, (2,), np.dtype("f8"), False, [1.0, 2.0]), "must be bytes"),
    ((1, (2,), "f8", False, b"\0" * 16), "not a dtype"),
    ((1, (2,), np.dtype("f8"), 1, b"\0" * 16), "array state"),
])
def test_array_state_is_validated(tmp_path: Path, state: Any, message: str) -> None:
    placeholder = _Reduced(np.empty(0).__reduce__()[0], (np.ndarray, (0,), b"b"), state)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"fc1": placeholder}, protocol=2))
    out = read_in_child(path)
    assert out.startswith("ValueError:") and message in out, out


def test_build_on_an_admitted_callable_is_refused(tmp_path: Path) -> None:
    # BUILD on the dtype stand-in function: would set attributes on the unpickler's own
    # functions for the rest of the process.
    ops = (b"cnumpy\ndtype\n}X\x07\x00\x00\x00__doc__X\x04\x00\x00\x00evil" + b"sb0}")
    path = tmp_path / "evil.pkl"
    path.write_bytes(stream(ops))
    before = {k: dict(getattr(v, "__dict__", {})) for k, v in convert_module._ALLOWED.items()}
    with pytest.raises(ValueError, match="BUILD"):
        read_weights_pickle(path, trust_pickle=True)
    after = {k: dict(getattr(v, "__dict__", {})) for k, v in convert_module._ALLOWED.items()}
    assert after == before
    assert convert_module._ALLOWED[("numpy", "dtype")].__doc__ != "evil"


def test_an_array_whose_state_never_comes_is_refused(tmp_path: Path) -> None:
    ops = (b"}X\x03\x00\x00\x00fc1cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
           b"K\x00\x85C\x01b\x87Rs")
    path = tmp_path / "evil.pkl"
    path.write_bytes(stream(ops))
    with pytest.raises(ValueError, match="never given its state"):
        read_weights_pickle(path, trust_pickle=True)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_arrays_still_read_exactly(tmp_path: Path, protocol: int) -> None:
    arrays = {"f8": np.arange(12.0).reshape(3, 4) / 7, "f4": np.arange(6, dtype="<f4"),
              "be": np.arange(4, dtype=">i4"), "u1": np.arange(3, dtype=np.uint8),
              "bool": np.array([True, False]), "f16": np.arange(3, dtype=np.float16),
              "F": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "empty": np.zeros((0, 5))}
    obj = {**arrays, "scalar": np.float32(0.5), "same": arrays["f8"]}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    back = read_weights_pickle(path, trust_pickle=True)
    for key, arr in arrays.items():
        assert isinstance(back[key], np.ndarray)
        np.testing.assert_array_equal(back[key], arr)
        assert back[key].shape == arr.shape
        assert back[key].flags.writeable
    # The memo gives back the array that the stand-in became, not the stand-in.
    assert isinstance(back["same"], np.ndarray)
    np.testing.assert_array_equal(back["same"], arrays["f8"])
    assert back["scalar"] == np.float32(0.5) and back["scalar"].dtype == np.float32


# ---------------------------------------------------------------------------------------
# 2. pathological but valid pickles
# ---------------------------------------------------------------------------------------
def test_deeply_nested_tuple_key_is_refused(tmp_path: Path) -> None:
    # 200 KB: a tuple 100000 deep as a dict key; hashing it recursed in C and crashed.
    ops = b"}N" + b"\x85" * 200_000 + b"Ns"
    path = tmp_path / "deep.pkl"
    path.write_bytes(stream(ops))
    out = read_in_child(path)
    assert out.startswith("ValueError:") and "nests containers more than" in out, out


@pytest.mark.parametrize("ops, message", [
    (b"(" * 100_000 + b"N", "nests containers more than"),
    (b"]" * 1000 + b"a" * 999, "nests containers more than"),
    # A memo index near 2**32: the C unpickler sized its memo table by it (32 GiB).
    (b"Nr\xf0\xff\xff\xffN0", "memo index"),
    (b"h\x05", "memo index 5 was never stored"),
    # Declared lengths of 2**40 bytes with nothing behind them.
    (b"\x8e" + struct.pack("<Q", 1 << 40), "malformed pickle"),
    (b"\x8d" + struct.pack("<Q", 1 << 40), "malformed pickle"),
    (b"\x96" + struct.pack("<Q", 1 << 40), "malformed pickle"),
    (b"\x8a\xff\xff\xff\x7f", "malformed pickle"),
    (b"\x95" + struct.pack("<Q", 1 << 40) + b"N", "malformed pickle"),
    (b"Na", "it pops more items"),
    (b"\x97", "NEXT_BUFFER"),
    (b"\x82\x01", "EXT1"),
])
def test_pathological_pickles_are_value_errors(tmp_path: Path, ops: bytes, message: str) -> None:
    path = tmp_path / "bad.pkl"
    path.write_bytes(stream(ops, protocol=5 if b"\x97" in ops or b"\x96" in ops else 4))
    out = read_in_child(path)
    assert out.startswith("ValueError:"), out
    assert any(m in out for m in message.split("|")), out


def test_opcode_count_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_module, "MAX_OPCODES", 1000)
    path = tmp_path / "long.pkl"
    path.write_bytes(pickle.dumps({"x": list(range(2000))}, protocol=2))
    with pytest.raises(ValueError, match="more than 1000 opcodes"):
        read_weights_pickle(path, trust_pickle=True)


def test_huge_threshold_entry_is_a_value_error(tmp_path: Path) -> None:
    weights = {"fc1": np.ones((3, 4)), "spiking1_weights": np.ones((4, 5)),
               "fc2": np.ones((5, 2)), "threshold": 10**400}
    src = tmp_path / "w.pkl"
    src.write_bytes(pickle.dumps(weights, protocol=4))
    with pytest.raises(ValueError, match="threshold"):
        convert(src, tmp_path / "out.npz", trust_pickle=True)
    assert not (tmp_path / "out.npz").exists()


# ---------------------------------------------------------------------------------------
# 3. the input file: regular, bounded, never blocking
# ---------------------------------------------------------------------------------------
def test_fifo_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "w.pkl"
    os.mkfifo(fifo)
    out = read_in_child(fifo, timeout=30)
    assert out.startswith("ValueError:") and "not a regular file" in out, out


def test_device_is_refused(tmp_path: Path) -> None:
    out = read_in_child(Path("/dev/zero"), timeout=30)
    assert out.startswith("ValueError:") and "not a regular file" in out, out


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a regular file"):
        read_weights_pickle(tmp_path, trust_pickle=True)


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "sparse.pkl"
    with open(big, "wb") as f:       # sparse: no disk, but a 4 GiB read for a naive reader
        f.truncate(4 << 30)
    out = read_in_child(big, timeout=30)
    assert out.startswith("ValueError:") and "more than the" in out, out


def test_missing_file_names_the_pickle(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pickle"):
        read_weights_pickle(tmp_path / "nope.pkl", trust_pickle=True)
