"""``aiva-cy convert OLD.pkl NEW.npz``: AIVA's pickled NumPy weights → an aiva_cy checkpoint.

AIVA keeps the weights of its NumPy decision core in a pickle of a dict with the keys
``fc1`` (input_size, hidden), ``spiking1_weights`` (hidden, spiking) and ``fc2``
(spiking, num_tools): float64 arrays in the "x @ W" layout.  This module reads such a file
and writes an ``.npz`` (or ``.safetensors``) checkpoint that ``AIVANet.load`` and
``aiva_cy.compat.ScalableBioNet.load`` read, without pickle.

Reading a pickle can run arbitrary code, so nothing here reads one unless the caller says
it trusts the file (``trust_pickle=True``, ``--trust-pickle``), and even then the file is
read with a restricted unpickler that resolves no name outside this list:

============================================  =====================================================
global in the pickle stream                    why it is there
============================================  =====================================================
``numpy.ndarray``, ``numpy.dtype``              every array pickle names its class and its dtype
``numpy.core.multiarray._reconstruct``          ``ndarray.__reduce__`` (protocols 0-4), NumPy 1.x
``numpy._core.multiarray._reconstruct``         the same, NumPy 2.x
``numpy.core.numeric._frombuffer``              ``ndarray.__reduce_ex__`` at protocol 5, NumPy 1.x
``numpy._core.numeric._frombuffer``             the same, NumPy 2.x
``numpy.core.multiarray.scalar`` (and _core)   a NumPy scalar, e.g. an ``np.float64`` threshold
``_codecs.encode`` (``"latin1"`` only)          how protocols 0-2 spell ``bytes`` (the raw data)
``__builtin__.bytes``, ``builtins.bytes``       how protocols 0-2 spell ``b""`` (an empty array's
(no arguments only)                            data)
``datetime.datetime``, ``datetime.date``,       the save time in the metadata of AIVA's
``datetime.timedelta`` (bytes and int          ``AIModelManager``; reported, then dropped with
arguments only)                                the rest of the metadata
============================================  =====================================================

Everything else a pickle can name — ``os.system``, ``builtins.eval``, any class — is refused
before it is looked up, so a payload in the file never runs.  Dicts, lists, tuples, strings
and numbers need no global at all.  None of NumPy's own unpickling code runs on the file's
values: the names above resolve to stand-ins that record their arguments, BUILD (which
would call ``dtype.__setstate__`` or ``ndarray.__setstate__``) only records the state of a
stand-in and is refused on anything else, and an array is made from a validated triple —
a plain number dtype (bool, int, uint, float: no fields, subarray or object), a shape of at
most 32 non-negative ints, and data bytes of exactly itemsize x elements — with
``np.frombuffer(...).reshape(...).copy()``.

Before any of it is unpickled, the bytes are scanned with :mod:`pickletools`: at most
``MAX_OPCODES`` opcodes, containers nested at most ``MAX_DEPTH`` deep, memo indices stored
before they are read and within the opcode count, every declared length within the file
(so a small file cannot make the reader allocate much more than its size).  The file itself
is read only if it is a regular file of at most ``MAX_PICKLE_BYTES``.  Every problem is a
ValueError naming it; nothing in the file can crash the interpreter or exhaust memory.
"""
from __future__ import annotations

import argparse
import datetime as _datetime
import io as _bytes_io
import math
import numbers
import os
import pickle
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["ConversionReport", "PICKLE_WARNING", "THRESHOLDS", "add_parser", "convert",
           "dates_in", "main", "read_weights_pickle"]

PathLike = Union[str, "os.PathLike[str]"]

REQUIRED_KEYS = ("fc1", "spiking1_weights", "fc2")
#: The optional threshold entry from_bioneuron also reads from a mapping.
THRESHOLD_KEY = "threshold"
#: The thresholds --threshold names.  AIVA's layer starts at 1.0 and multiplies its threshold
#: by 0.98 BEFORE the spike test of every call, down to 0.3: its first call tests at 0.98,
#: its 60th and every later one at 0.3.
THRESHOLDS = {"first": 0.98, "steady": 0.3}
#: Without --threshold or a "threshold" entry: AIVA's first decision.
DEFAULT_THRESHOLD = THRESHOLDS["first"]
#: Steps (calls) a neuron stays silent after it fired.  AIVA's period is 0.05 s of wall-clock
#: time, which calls further apart never meet (an agent answering requests): 0.
DEFAULT_REFRACTORY_PERIOD = 0

PICKLE_WARNING = (
    "a pickle file can run arbitrary code while it is being read. Convert only files whose "
    "origin you trust. With --trust-pickle aiva_cy reads the file through a restricted "
    "unpickler that admits only dicts, lists, NumPy arrays and dates, and refuses everything "
    "else before it can run.")


class ForbiddenPickleError(pickle.UnpicklingError):
    """The pickle names something other than a dict, a list or a NumPy array."""


class _Malformed(ValueError):
    """The pre-scan found a structure the reader refuses (worded, then given the path)."""


# ---------------------------------------------------------------------------------------
# the restricted unpickler
# ---------------------------------------------------------------------------------------
# Nothing the file says reaches NumPy's own pickle machinery (dtype.__setstate__,
# ndarray.__setstate__, _reconstruct): each admitted global is a stand-in that records its
# arguments, BUILD on a stand-in records its state, and an array is made only from a
# validated (dtype string, shape, bytes) triple with np.frombuffer.  The unpickler is
# pickle's pure-Python one, so that BUILD can be intercepted and the memo is a dict (no
# table sized by an index the file chooses).

#: The dtypes an array or a scalar may have: plain numbers, spelled as NumPy pickles them.
SIMPLE_DTYPES = frozenset(f"{kind}{size}" for kind, sizes in
                          (("b", (1,)), ("i", (1, 2, 4, 8)), ("u", (1, 2, 4, 8)),
                           ("f", (2, 4, 8))) for size in sizes)
#: The largest pickle read (AIVA's default net is 25 MB of float64 weights).
MAX_PICKLE_BYTES = 1 << 30
#: Opcodes in one pickle; an AIVA weight file has a few hundred.
MAX_OPCODES = 1_000_000
#: How deeply containers (tuples, lists, dicts, sets, reduce arguments) may nest.  AIVA's
#: dict nests 3 deep; hashing or comparing a tuple 10**5 deep recurses in C and crashes.
MAX_DEPTH = 64
#: Dimensions of one array.
MAX_NDIM = 32


class _Stub:
    """A value the file asked for, not yet made: only its recorded, validated parts."""

    __hash__ = None   # type: ignore[assignment]   # never a dict key or set member
    __slots__ = ("value", "built")

    def __init__(self) -> None:
        self.value: Any = None
        self.built = False


class _DtypeStub(_Stub):
    __slots__ = ("spec",)

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.spec = spec

    def __repr__(self) -> str:
        return f"dtype({self.spec!r})"


class _ArrayStub(_Stub):
    __slots__ = ()

    def __repr__(self) -> str:
        return "ndarray (awaiting its state)"


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` in the stream: ``_reconstruct`` accepts it as its
    class argument, but it cannot be called, so the pickle cannot use ``ndarray(...)``
    to build an array of its own choosing."""

    def __repr__(self) -> str:
        return "numpy.ndarray (as _reconstruct's argument only)"


_NDARRAY = _NdarrayToken()


def _dtype_spec(where: str, spec: Any) -> str:
    if isinstance(spec, bytes):
        spec = spec.decode("latin1")
    if isinstance(spec, str) and spec[:1] == "O":
        raise ForbiddenPickleError(f"{where}: object dtype {_brief(spec)} refused (it would "
                                   f"unpickle arbitrary Python objects)")
    if not isinstance(spec, str) or spec not in SIMPLE_DTYPES:
        raise ForbiddenPickleError(
            f"{where}: dtype {_brief(spec)} refused: only the plain number types "
            f"{', '.join(sorted(SIMPLE_DTYPES))}")
    return spec


def _built_dtype(where: str, dtype: Any) -> np.dtype:
    # Only _build_dtype makes dtypes here (BUILD then puts it in the stand-in's place);
    # checked again all the same.
    if (not isinstance(dtype, np.dtype) or dtype.fields is not None
            or dtype.subdtype is not None or f"{dtype.kind}{dtype.itemsize}" not in SIMPLE_DTYPES):
        raise ForbiddenPickleError(f"{where}: {_brief(dtype)} is not a dtype NumPy wrote")
    return dtype


def _brief(value: Any) -> str:
    """A short description of an untrusted value (never a repr of unbounded size)."""
    if isinstance(value, (bool, int, float, type(None))):
        text = repr(value)
        return text if len(text) <= 40 else f"an int of {len(text)} digits"
    if isinstance(value, (str, bytes, bytearray)):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    if isinstance(value, (tuple, list, dict)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _global_name(module: Any, name: Any) -> str:
    if isinstance(module, str) and isinstance(name, str) and len(module) + len(name) < 200:
        return f"{module}.{name}"
    return f"{_brief(module)}.{_brief(name)}"


def _shape(where: str, shape: Any) -> Tuple[int, ...]:
    if (not isinstance(shape, tuple) or len(shape) > MAX_NDIM
            or not all(type(n) is int and 0 <= n < 2**62 for n in shape)):
        raise ForbiddenPickleError(f"{where}: shape {_brief(shape)} refused: a tuple of at "
                                   f"most {MAX_NDIM} non-negative ints")
    return shape


def _make_array(where: str, shape: Any, dtype: np.dtype, data: Any, fortran: bool
                ) -> np.ndarray:
    shape = _shape(where, shape)
    if not isinstance(data, (bytes, bytearray)):
        raise ForbiddenPickleError(f"{where}: array data must be bytes, got {_brief(data)}")
    count = math.prod(shape)
    if count * dtype.itemsize != len(data):
        raise ForbiddenPickleError(f"{where}: shape {shape} of {dtype} needs "
                                   f"{count * dtype.itemsize} bytes, the file gives {len(data)}")
    flat = np.frombuffer(bytes(data), dtype=dtype, count=count)
    return flat.reshape(shape, order="F" if fortran else "C").copy()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _ArrayStub:
    if subtype is not _NDARRAY:
        raise ForbiddenPickleError(f"_reconstruct of {_brief(subtype)} refused: only "
                                   f"numpy.ndarray")
    # NumPy writes an empty placeholder ((0,), b"b") and fills it from the state that follows.
    if shape != (0,) or type(shape) is not tuple or dtype not in (b"b", "b"):
        raise ForbiddenPickleError(f"_reconstruct with shape {_brief(shape)} and dtype "
                                   f"{_brief(dtype)} refused: NumPy writes an empty placeholder")
    return _ArrayStub()


def _build_array(stub: _ArrayStub, state: Any) -> np.ndarray:
    # ndarray.__reduce__'s state: (version, shape, dtype, is_fortran, data); the version is
    # absent in the oldest files.
    if isinstance(state, tuple) and len(state) == 5 and type(state[0]) is int and state[0] == 1:
        state = state[1:]
    if not isinstance(state, tuple) or len(state) != 4 or type(state[2]) is not bool:
        raise ForbiddenPickleError(f"array state {_brief(state)} refused: NumPy writes "
                                   f"(1, shape, dtype, is_fortran, bytes)")
    shape, dtype, fortran, data = state[0], state[1], state[2], state[3]
    arr = _make_array("array", shape, _built_dtype("array", dtype), data, fortran)
    # ndarray.__setstate__ turns swapped data native; what the plain unpickler gives.
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if order not in ("C", "F"):
        raise ForbiddenPickleError(f"_frombuffer with order {_brief(order)} refused")
    return _make_array("_frombuffer", shape, _built_dtype("_frombuffer", dtype), buf,
                       order == "F")


def _scalar(dtype: Any, *args: Any) -> Any:
    dt = _built_dtype("scalar", dtype)
    if len(args) != 1:
        raise ForbiddenPickleError(f"scalar with {len(args)} data arguments refused")
    return _make_array("scalar", (), dt, args[0], False)[()]


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> _DtypeStub:
    if type(align) is not bool or type(copy) is not bool:
        raise ForbiddenPickleError("dtype(...) with non-bool flags refused")
    return _DtypeStub(_dtype_spec("dtype", spec))


def _build_dtype(stub: _DtypeStub, state: Any) -> np.dtype:
    # dtype.__reduce__'s state for a plain number type: (3, byte order, None, None, None,
    # -1, -1, 0).  Fields, subarrays, sizes, alignments and flags are refused, not applied.
    if (not isinstance(state, tuple) or len(state) != 8 or state[0] != 3
            or type(state[0]) is not int or state[1] not in ("<", ">", "|", "=")
            or state[2:5] != (None, None, None) or state[5:] != (-1, -1, 0)
            or not all(type(v) is int for v in state[5:])):
        raise ForbiddenPickleError(
            f"dtype state {_brief(state)} refused: a plain number type's is (3, byte order, "
            f"None, None, None, -1, -1, 0) (no fields, subarray or object)")
    dt = np.dtype(stub.spec)
    if state[1] in "<>" and dt.itemsize > 1:
        dt = dt.newbyteorder(state[1])
    return dt


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocols 0-2 spell a bytes object as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding != "latin1":
        raise ForbiddenPickleError(f"_codecs.encode({type(text).__name__}, {_brief(encoding)}) "
                                   f"refused: only the latin1 spelling of bytes")
    return text.encode("latin1")


def _time_type(cls: Any) -> Callable[..., Any]:
    # datetime.__reduce__ gives (cls, (bytes state,)) for a naive datetime or a date and
    # (timedelta, (days, seconds, microseconds)); with bytes and ints these constructors
    # build a value and run nothing.  A tzinfo argument would be an object: refused.
    def build(*args: Any) -> Any:
        if not 1 <= len(args) <= 8 or not all(type(a) in (bytes, int) for a in args):
            raise ForbiddenPickleError(
                f"datetime.{cls.__name__} with arguments of types "
                f"{[type(a).__name__ for a in args][:8]} refused: only bytes and ints (a "
                f"naive date, time or duration)")
        return cls(*args)
    return build


def _empty_bytes(*args: Any) -> bytes:
    # Protocols 0-2 spell b"" as bytes(); with an argument bytes() could allocate at will.
    if args:
        raise ForbiddenPickleError("bytes(...) with arguments refused: only b\"\"")
    return b""


_ALLOWED: Dict[Tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
    # find_class sees the stream's own module name; protocols 0-2 write Python 2's.
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
    ("datetime", "datetime"): _time_type(_datetime.datetime),
    ("datetime", "date"): _time_type(_datetime.date),
    ("datetime", "timedelta"): _time_type(_datetime.timedelta),
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _frombuffer
del _core


class _Memo(dict):  # type: ignore[type-arg]
    """The unpickler's memo: a stand-in stored before its BUILD reads back as what it
    became."""

    def __getitem__(self, key: Any) -> Any:
        value = dict.__getitem__(self, key)
        return value.value if isinstance(value, _Stub) and value.built else value


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    stack: List[Any]          # the pure-Python unpickler's own

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.memo = _Memo()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise ForbiddenPickleError(
                f"the file refers to {_global_name(module, name)}, which is not part of a "
                f"dict of NumPy arrays and metadata: refused without running it (the file may "
                f"be malicious)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenPickleError("persistent ids refused")

    def load_build(self) -> None:
        state = self.stack.pop()
        stub = self.stack[-1]
        if isinstance(stub, _DtypeStub) and not stub.built:
            stub.value = _build_dtype(stub, state)
        elif isinstance(stub, _ArrayStub) and not stub.built:
            stub.value = _build_array(stub, state)
        else:
            raise ForbiddenPickleError(f"BUILD (setting the state) of {_brief(stub)} refused: "
                                       f"only NumPy's dtypes and arrays are built")
        stub.built = True
        self.stack[-1] = stub.value

    dispatch[pickle.BUILD[0]] = load_build  # type: ignore[assignment]


# Opcodes that make a container of the items above the topmost MARK, or of the top n items.
_FROM_MARK = {"TUPLE", "LIST", "DICT", "FROZENSET"}
_FROM_TOP = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "REDUCE": 2, "BUILD": 2}
#: Opcodes no dict of NumPy arrays and dates uses, refused outright.
_REFUSED_OPS = {
    "PERSID": "persistent ids", "BINPERSID": "persistent ids",
    "EXT1": "the copyreg extension registry", "EXT2": "the copyreg extension registry",
    "EXT4": "the copyreg extension registry", "NEXT_BUFFER": "out-of-band buffers",
    "INST": "instances of classes", "OBJ": "instances of classes",
    "NEWOBJ": "instances of classes", "NEWOBJ_EX": "instances of classes"}
_ADD_FROM_MARK = {"APPENDS", "SETITEMS", "ADDITEMS"}
_ADD_FROM_TOP = {"APPEND": 1, "SETITEM": 2}
_NEW_CONTAINER = {"EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}


def _prescan(data: bytes) -> None:
    """Refuse a pickle whose structure is pathological before any of it is unpickled:
    too many opcodes, containers nested more than MAX_DEPTH deep, memo indices that were
    never stored or exceed the opcode count, lengths past the end of the file (pickletools
    checks those: a declared length is never allocated before its bytes are there).

    The nesting is followed on a model of the unpickler's stack that holds each item's
    depth; the memo keeps the depth an item had when stored.  Tuples and frozensets — the
    values hashed and compared in C without a recursion guard — are immutable, so their
    depth is exact; a list or dict changed after it was stored is guarded by Python's
    recursion check, which the reader turns into a ValueError."""
    import pickletools

    stack: List[int] = []
    marks: List[int] = []
    memo: Dict[int, int] = {}

    def pop(n: int) -> int:
        if n > len(stack) or (marks and len(stack) - n < marks[-1]):
            raise ValueError("it pops more items than its stack holds")
        deepest = max(stack[len(stack) - n:], default=0)
        del stack[len(stack) - n:]
        return deepest

    def pop_mark() -> int:
        if not marks:
            raise ValueError("it uses a MARK it never set")
        at = marks.pop()
        deepest = max(stack[at:], default=0)
        del stack[at:]
        return deepest

    def push(depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ValueError(f"it nests containers more than {MAX_DEPTH} deep")
        stack.append(depth)

    count = 0
    try:
        for op, arg, pos in pickletools.genops(data):
            count += 1
            if count > MAX_OPCODES:
                raise ValueError(f"it has more than {MAX_OPCODES} opcodes")
            name = op.name
            if name == "MARK":
                if len(marks) > MAX_DEPTH:
                    raise ValueError(f"it nests containers more than {MAX_DEPTH} deep")
                marks.append(len(stack))
            elif name == "STOP":
                break
            elif name in _FROM_MARK:
                deepest = pop_mark()
                push(deepest + 1)
            elif name in _FROM_TOP:
                push(pop(_FROM_TOP[name]) + 1)
            elif name in _ADD_FROM_MARK:
                deepest = pop_mark()
                push(max(pop(1), deepest + 1))
            elif name in _ADD_FROM_TOP:
                deepest = pop(_ADD_FROM_TOP[name])
                push(max(pop(1), deepest + 1))
            elif name in _NEW_CONTAINER:
                push(1)
            elif name == "POP":
                pop(1)
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                push(stack[-1] if stack else 0)
            elif name == "STACK_GLOBAL":
                pop(2)
                push(0)
            elif name in _PUTS or name == "MEMOIZE":
                index = len(memo) if name == "MEMOIZE" else arg
                if not isinstance(index, int) or not 0 <= index <= MAX_OPCODES:
                    raise ValueError(f"memo index {_brief(index)} is out of range")
                if not stack:
                    raise ValueError("it stores an empty stack in the memo")
                memo[index] = stack[-1]
            elif name in _GETS:
                if arg not in memo:
                    raise ValueError(f"memo index {_brief(arg)} was never stored")
                push(memo[arg])
            elif name in _REFUSED_OPS:
                raise ForbiddenPickleError(f"opcode {name} refused ({_REFUSED_OPS[name]})")
            elif name == "FRAME" and isinstance(arg, int) and arg > len(data) - int(pos or 0):
                raise ValueError(f"a frame of {arg} bytes, more than the file holds")
            elif name in ("PROTO", "FRAME", "READONLY_BUFFER"):
                pass
            else:
                # Every other opcode pushes one value it reads from the stream (a number, a
                # string, None, True, a global).
                push(0)
        else:
            raise ValueError("it ends without a STOP opcode")
    except ForbiddenPickleError:
        raise
    except (ValueError, KeyError, IndexError, EOFError, UnicodeDecodeError,
            OverflowError) as exc:
        raise _Malformed(f"malformed pickle: {_brief(str(exc))[1:-1]}") from None


def _validated_path(name: str, value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(value).__name__} "
                        f"{value!r}")
    return os.fsdecode(os.fspath(value))


def read_weights_pickle(src: PathLike, *, trust_pickle: bool) -> Dict[Any, Any]:
    """The dict in an AIVA weight pickle, read with the restricted unpickler.

    Raises ValueError when ``trust_pickle`` is not True, when the file names anything but
    dicts, lists, NumPy arrays and dates (nothing in it runs), or when it is not a readable
    pickle of a dict.  Checks no keys or shapes: :func:`convert` does.
    """
    path = _validated_path("src", src)
    _check_trust(trust_pickle, path)
    data = _read_bounded(path)
    if data.startswith(b"PK\x03\x04"):
        raise ValueError(f"'{path}' is a zip archive (an .npz checkpoint or a torch file?), "
                         f"not a pickle of AIVA's weight dict")
    try:
        _prescan(data)
        obj = _RestrictedUnpickler(_bytes_io.BytesIO(data), encoding="latin1").load()
        _check_no_stubs(obj)
    except ForbiddenPickleError as exc:
        raise ValueError(f"'{path}': {exc}") from None
    except _Malformed as exc:
        raise ValueError(f"'{path}' is not a readable pickle ({exc})") from None
    except MemoryError:
        raise ValueError(f"'{path}': not enough memory to read it (the file may be "
                         f"malicious)") from None
    except RecursionError:
        raise ValueError(f"'{path}': it nests too deeply to read") from None
    except Exception as exc:   # untrusted bytes make the unpickler raise many types
        raise ValueError(f"'{path}' is not a readable pickle ({type(exc).__name__}: "
                         f"{_brief(str(exc))})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"'{path}' holds a {type(obj).__name__}; AIVA's weight file is a dict "
                         f"with keys {', '.join(map(repr, REQUIRED_KEYS))}")
    return obj


def _read_bounded(path: str) -> bytes:
    """The bytes of a regular file of at most MAX_PICKLE_BYTES: a FIFO, a device or a
    directory is refused before it is read (opened without blocking), a larger file before
    a byte of it is read."""
    from aiva_cy._readers import open_regular, read_exactly

    f, size = open_regular(path, "a pickle of AIVA's weights")
    with f:
        if size > MAX_PICKLE_BYTES:
            raise ValueError(f"'{path}' has {size} bytes, more than the {MAX_PICKLE_BYTES} "
                             f"an AIVA weight pickle is read up to")
        data = read_exactly(f, size, f"'{path}'")
        if f.read(1):
            raise ValueError(f"'{path}' grew while it was read")
    return data


def _check_no_stubs(obj: Any) -> None:
    """Refuse a result that still holds a stand-in (an array or dtype whose state never
    came): iteratively, as the pre-scan bounded only what it could see."""
    todo: List[Any] = [obj]
    seen = set()
    while todo:
        value = todo.pop()
        if isinstance(value, _Stub):
            raise ForbiddenPickleError(f"{_brief(value)} is never given its state")
        if not isinstance(value, (dict, list, tuple, set, frozenset)) or id(value) in seen:
            continue
        seen.add(id(value))
        todo.extend(value.values() if isinstance(value, dict) else value)
        if isinstance(value, dict):
            todo.extend(value)


_TIME_TYPES = (_datetime.date, _datetime.timedelta)   # datetime.datetime is a date


def dates_in(obj: Any, limit: int = 20) -> List[str]:
    """Where ``obj`` (what :func:`read_weights_pickle` returned) holds dates, times or
    durations: ``"'metadata'['saved_at'] = 2024-05-01 12:00:00"``, at most ``limit``."""
    found: List[str] = []
    todo: List[Tuple[str, Any]] = [("", obj)]   # iterative: a pickle may nest deeply
    seen = set()                                # and may hold a list that holds itself
    while todo and len(found) < limit:
        where, value = todo.pop()
        if isinstance(value, _TIME_TYPES):
            found.append(f"{where} = {value}")
        elif not isinstance(value, (dict, list, tuple)) or id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, dict):
            todo.extend((f"{where}[{k!r}]" if where else repr(k), v)
                        for k, v in reversed(list(value.items())))
        elif isinstance(value, (list, tuple)):
            todo.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return found


def _check_trust(trust_pickle: Any, path: str) -> None:
    if not isinstance(trust_pickle, bool):
        raise TypeError(f"trust_pickle must be True or False, got {type(trust_pickle).__name__} "
                        f"{trust_pickle!r}")
    if not trust_pickle:
        raise ValueError(f"refusing to read '{path}': {PICKLE_WARNING} Pass trust_pickle=True "
                         f"(--trust-pickle on the command line) if you trust this file.")


# ---------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert` wrote."""

    source: str
    destination: str
    input_size: int
    hidden_size: int
    spiking_size: int
    num_tools: int
    num_parameters: int
    threshold: float
    threshold_source: str
    refractory_period: int
    bytes_written: int
    ignored_keys: Tuple[str, ...]
    #: Dates and times found in the file's metadata, as ``"where = value"``; not carried over.
    dropped_dates: Tuple[str, ...] = ()
    refractory_source: str = "given"

    def summary(self) -> str:
        """What was written, and what each choice made for it means."""
        lines = [
            f"wrote {self.destination} ({self.bytes_written:,} bytes) from {self.source}",
            f"  fc1.weight      ({self.input_size}, {self.hidden_size})",
            f"  spiking.weight  ({self.hidden_size}, {self.spiking_size})",
            f"  fc2.weight      ({self.spiking_size}, {self.num_tools})",
            f"  {self.num_parameters:,} weights, float64 -> float32",
            f"  threshold {self.threshold!r} ({self.threshold_source}); spikes fire at "
            f"potential >= threshold",
        ]
        lines.extend(_explain(
            "AIVA's layer tests at 1.0 x 0.98 = 0.98 on its first call, 2% lower on each "
            "later one, and at 0.3 from its 60th: --threshold first (0.98, the default) gives "
            "a fresh AIVA net's decisions, --threshold steady (0.3) those of a service that "
            "has run longer. ScalableBioNet.load(path, adaptive_threshold=True) replays the "
            "schedule from this threshold."))
        lines.append(f"  refractory period {self.refractory_period} calls "
                     f"({self.refractory_source})")
        lines.extend(_explain(
            ("no refractory mask: a neuron may fire on every call" if self.refractory_period == 0
             else f"a neuron that fired stays silent for the next {self.refractory_period} "
                  f"calls of its stream") +
            "; AIVA's period is 0.05 s of wall-clock time: 0 calls matches calls more than "
            "50 ms apart (an agent answering requests), floor(0.05 / dt) calls every dt "
            "seconds."))
        if self.ignored_keys:
            lines.append(f"  ignored entries (not carried over): {', '.join(self.ignored_keys)}")
        if self.dropped_dates:
            lines.append("  dates and times in them, dropped:")
            lines.extend(f"    {d}" for d in self.dropped_dates)
        return "\n".join(lines)


def _explain(text: str) -> List[str]:
    return textwrap.wrap(text, width=92, initial_indent="    ", subsequent_indent="    ")


def _real(name: str, value: Any) -> float:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        out = float(value)
    except OverflowError:     # an int such as 10**400
        raise ValueError(f"{name} must be finite, got an int too large for a float "
                         f"({_brief(value)})") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


def _steps(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int (steps), got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return int(value)


def _threshold_arg(value: Any) -> Tuple[float, str]:
    """(threshold, what it means) from a number or one of the names in THRESHOLDS."""
    if isinstance(value, str):
        if value not in THRESHOLDS:
            raise TypeError(f"threshold must be a real number or one of "
                            f"{', '.join(map(repr, THRESHOLDS))}, got {value!r}")
        return THRESHOLDS[value], {"first": "first: AIVA's first call",
                                   "steady": "steady: AIVA's floor, from its 60th call"}[value]
    return _real("threshold", value), "given"


def convert(src: PathLike, dst: PathLike, *, trust_pickle: bool,
            threshold: Optional[Union[float, str]] = None,
            refractory_period: Optional[int] = None) -> ConversionReport:
    """Convert AIVA's pickled weight dict at ``src`` into an aiva_cy checkpoint at ``dst``.

    ``trust_pickle`` must be True: reading a pickle can run code (see :data:`PICKLE_WARNING`);
    the file is read with a restricted unpickler in any case.  ``dst`` ends in ``.npz`` or
    ``.safetensors`` and is written atomically, without optimizer state.  The threshold is
    ``threshold`` if given (a number, ``"first"`` = 0.98 or ``"steady"`` = 0.3), else the
    file's ``"threshold"`` entry, else 0.98: AIVA's layer lowers its threshold from 1.0 by
    x0.98 before its first spike test, so 0.98 reproduces a fresh AIVA net's first decision
    (``AIVANet.from_bioneuron`` defaults to the 1.0 the layer starts at).
    ``refractory_period`` is in calls (default 0: AIVA's 0.05 s never engages between calls
    further apart).  Dates and times in the file's metadata are admitted, reported in
    ``dropped_dates`` and not carried over, like every entry but the weights.

    Every check (arguments, keys, 2-D shapes that chain, real finite numbers that fit in
    float32) runs before anything is written; on any error ``dst`` is left as it was.
    """
    from aiva_cy.io import SUFFIXES
    from aiva_cy.net import AIVANet

    src_path = _validated_path("src", src)
    dst_path = _validated_path("dst", dst)
    suffix = os.path.splitext(dst_path)[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"dst '{dst_path}' must end in {' or '.join(SUFFIXES)}, got "
                         f"{suffix or 'no suffix'!r}")
    _check_trust(trust_pickle, src_path)
    given_source = ""
    if threshold is not None:
        threshold, given_source = _threshold_arg(threshold)
    if refractory_period is None:
        refractory, refractory_source = DEFAULT_REFRACTORY_PERIOD, "default"
    else:
        refractory, refractory_source = _steps("refractory_period", refractory_period), "given"

    weights = read_weights_pickle(src_path, trust_pickle=trust_pickle)
    missing = [k for k in REQUIRED_KEYS if k not in weights]
    if missing:
        raise ValueError(f"'{src_path}' lacks {missing}: AIVA's weight file is a dict with keys "
                         f"{', '.join(map(repr, REQUIRED_KEYS))}; it has "
                         f"{sorted(map(repr, weights))}")
    if threshold is not None:
        source = given_source
    elif THRESHOLD_KEY in weights:
        try:
            threshold = _real(f"'{src_path}' entry 'threshold'", weights[THRESHOLD_KEY])
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        source = "the file's 'threshold' entry"
    else:
        threshold = DEFAULT_THRESHOLD
        source = "default, first: AIVA's first call"
    ignored = tuple(sorted(repr(k) for k in weights
                           if k not in REQUIRED_KEYS and k != THRESHOLD_KEY))
    try:
        net = AIVANet.from_bioneuron({k: weights[k] for k in REQUIRED_KEYS},
                                     threshold=threshold, refractory_period=refractory)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"'{src_path}': {exc}") from None
    net.save(dst_path, include_optimizer=False)
    return ConversionReport(
        source=src_path, destination=dst_path, input_size=net.input_size,
        hidden_size=net.hidden_size, spiking_size=net.spiking_size, num_tools=net.num_tools,
        num_parameters=net.num_parameters, threshold=net.threshold, threshold_source=source,
        refractory_period=net.refractory_period, bytes_written=os.path.getsize(dst_path),
        ignored_keys=ignored, dropped_dates=tuple(dates_in(weights)),
        refractory_source=refractory_source)


# ---------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------
_DESCRIPTION = (
    "Convert AIVA's NumPy weight file (a pickle of a dict with fc1, spiking1_weights and fc2, "
    "float64, \"x @ W\" layout) into an aiva_cy checkpoint (.npz or .safetensors, no pickle "
    "inside) that AIVANet.load and aiva_cy.compat.ScalableBioNet.load read. "
    "WARNING: " + PICKLE_WARNING)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``convert`` subcommand on an ``argparse`` subparsers object.

    The parser's ``func`` default runs it: ``args.func(args)`` returns the exit status.
    """
    parser = subparsers.add_parser(
        "convert", help="convert AIVA's pickled NumPy weights to an aiva_cy checkpoint",
        description=_DESCRIPTION)
    _add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="OLD.pkl", help="AIVA's pickled weight dict")
    parser.add_argument("dst", metavar="NEW.npz", help="checkpoint to write (.npz or "
                        ".safetensors); replaced atomically")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="required: confirm you trust OLD.pkl (pickle can run code)")
    parser.add_argument("--threshold", type=_cli_threshold, default=None,
                        metavar="{first,steady,NUMBER}",
                        help="spike threshold: 'first' (0.98, AIVA's first call: a fresh "
                        "AIVA net's decisions), 'steady' (0.3, where AIVA's threshold settles "
                        "from its 60th call: a service that has been running) or a number "
                        "(default: the file's 'threshold' entry, else 'first')")
    parser.add_argument("--refractory-period", type=int, default=None, metavar="CALLS",
                        help="calls a neuron stays silent after it fired (default "
                        f"{DEFAULT_REFRACTORY_PERIOD}: AIVA's 0.05 s never engages between "
                        "calls more than 50 ms apart; floor(0.05 / dt) for calls every dt s)")


def _cli_threshold(text: str) -> Union[float, str]:
    if text in THRESHOLDS:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'first', 'steady' or a number, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed ``convert`` command; returns the exit status."""
    prog = "aiva-cy convert"
    if not args.trust_pickle:
        print(f"{prog}: refusing to read '{args.src}': {PICKLE_WARNING} Run again with "
              f"--trust-pickle if you trust this file.", file=sys.stderr)
        return 2
    print(f"{prog}: reading '{args.src}' with a restricted unpickler (dicts, lists, NumPy "
          f"arrays and dates only)", file=sys.stderr)
    try:
        report = convert(args.src, args.dst, trust_pickle=True, threshold=args.threshold,
                         refractory_period=args.refractory_period)
    except (OSError, ValueError, TypeError, ImportError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m aiva_cy.convert OLD.pkl NEW.npz --trust-pickle``."""
    parser = argparse.ArgumentParser(prog="aiva-cy convert", description=_DESCRIPTION)
    _add_arguments(parser)
    args = parser.parse_args(None if argv is None else list(argv))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
