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
and numbers need no global at all.  The callables above are wrapped: ``ndarray`` may only be
the class handed to ``_reconstruct``, which may only build the empty array NumPy itself
writes (the data arrives later, sized by the file), and no object dtype gets through.
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


# ---------------------------------------------------------------------------------------
# the restricted unpickler
# ---------------------------------------------------------------------------------------
# The real NumPy callables, found through NumPy's own reduce methods rather than by module
# path: the path differs between NumPy 1.x (numpy.core) and 2.x (numpy._core), and
# importing numpy.core on 2.x warns.
_RECONSTRUCT: Callable[..., Any] = np.empty(0).__reduce__()[0]  # type: ignore[assignment]
_FROMBUFFER: Callable[..., Any] = np.empty(1).__reduce_ex__(5)[0]  # type: ignore[assignment]
_SCALAR: Callable[..., Any] = np.float64(0.0).__reduce__()[0]  # type: ignore[assignment]


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` in the stream: ``_reconstruct`` accepts it as its
    class argument, but it cannot be called, so the pickle cannot use ``ndarray(...)``
    to build an array of its own choosing."""

    def __repr__(self) -> str:
        return "numpy.ndarray (as _reconstruct's argument only)"


_NDARRAY = _NdarrayToken()


def _no_objects(where: str, dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise ForbiddenPickleError(f"{where}: object dtype {dt} refused (it would unpickle "
                                   f"arbitrary Python objects)")
    return dt


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise ForbiddenPickleError(f"_reconstruct of {subtype!r} refused: only numpy.ndarray")
    # NumPy writes an empty placeholder ((0,), b"b") and fills it from the state that follows;
    # a non-empty shape here would only be an allocation the file does not pay for.
    if (not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape)
            or 0 not in shape):
        raise ForbiddenPickleError(f"_reconstruct with shape {shape!r} refused: NumPy writes "
                                   f"an empty placeholder")
    if not isinstance(dtype, (bytes, str)):
        raise ForbiddenPickleError(f"_reconstruct with dtype {dtype!r} refused")
    _no_objects("_reconstruct", dtype)
    return _RECONSTRUCT(np.ndarray, shape, dtype)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray)):
        raise ForbiddenPickleError(f"_frombuffer of a {type(buf).__name__} refused")
    _no_objects("_frombuffer", dtype)
    # NumPy checks that the buffer holds exactly shape's elements.
    return _FROMBUFFER(buf, dtype, shape, order)


def _scalar(dtype: Any, *args: Any) -> Any:
    _no_objects("scalar", dtype)
    return _SCALAR(dtype, *args)


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    return _no_objects("dtype", np.dtype(spec, bool(align), bool(copy)))


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocols 0-2 spell a bytes object as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding != "latin1":
        raise ForbiddenPickleError(f"_codecs.encode({type(text).__name__}, {encoding!r}) "
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
                f"{[type(a).__name__ for a in args]} refused: only bytes and ints (a naive "
                f"date, time or duration)")
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


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise ForbiddenPickleError(
                f"the file refers to {module}.{name}, which is not part of a dict of NumPy "
                f"arrays and metadata: refused without running it (the file may be "
                f"malicious)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenPickleError("persistent ids refused")


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
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"PK\x03\x04"):
        raise ValueError(f"'{path}' is a zip archive (an .npz checkpoint or a torch file?), "
                         f"not a pickle of AIVA's weight dict")
    try:
        obj = _RestrictedUnpickler(_bytes_io.BytesIO(data), encoding="latin1").load()
    except ForbiddenPickleError as exc:
        raise ValueError(f"'{path}': {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:   # untrusted bytes make the unpickler raise many types
        raise ValueError(f"'{path}' is not a readable pickle ({type(exc).__name__}: {exc})"
                         ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"'{path}' holds a {type(obj).__name__}; AIVA's weight file is a dict "
                         f"with keys {', '.join(map(repr, REQUIRED_KEYS))}")
    for key, value in obj.items():
        if isinstance(value, np.ndarray) and value.dtype.hasobject:   # belt and braces
            raise ValueError(f"'{path}': entry {key!r} has object dtype")
    return obj


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
    out = float(value)
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
