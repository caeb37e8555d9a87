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
============================================  =====================================================

Everything else a pickle can name — ``os.system``, ``builtins.eval``, any class — is refused
before it is looked up, so a payload in the file never runs.  Dicts, lists, tuples, strings
and numbers need no global at all.  The callables above are wrapped: ``ndarray`` may only be
the class handed to ``_reconstruct``, which may only build the empty array NumPy itself
writes (the data arrives later, sized by the file), and no object dtype gets through.
"""
from __future__ import annotations

import argparse
import io as _bytes_io
import math
import numbers
import os
import pickle
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["ConversionReport", "PICKLE_WARNING", "add_parser", "convert", "main",
           "read_weights_pickle"]

PathLike = Union[str, "os.PathLike[str]"]

REQUIRED_KEYS = ("fc1", "spiking1_weights", "fc2")
#: The optional threshold entry from_bioneuron also reads from a mapping.
THRESHOLD_KEY = "threshold"
#: Without --threshold or a "threshold" entry: the NumPy BioNeuron's initial threshold
#: (the same default as AIVANet.from_bioneuron, so both give the same net).
DEFAULT_THRESHOLD = 1.0

PICKLE_WARNING = (
    "a pickle file can run arbitrary code while it is being read. Convert only files whose "
    "origin you trust. With --trust-pickle aiva_cy reads the file through a restricted "
    "unpickler that admits only dicts, lists and NumPy arrays and refuses everything else "
    "before it can run.")


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
                f"arrays: refused without running it (the file may be malicious)") from None

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
    dicts, lists and NumPy arrays (nothing in it runs), or when it is not a readable pickle
    of a dict.  Checks no keys or shapes: :func:`convert` does.
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

    def summary(self) -> str:
        lines = [
            f"wrote {self.destination} ({self.bytes_written:,} bytes) from {self.source}",
            f"  fc1.weight      ({self.input_size}, {self.hidden_size})",
            f"  spiking.weight  ({self.hidden_size}, {self.spiking_size})",
            f"  fc2.weight      ({self.spiking_size}, {self.num_tools})",
            f"  {self.num_parameters:,} weights, float64 -> float32",
            f"  threshold {self.threshold!r} ({self.threshold_source}); spikes fire at "
            f"potential >= threshold",
            f"  refractory period {self.refractory_period} steps (the NumPy version's period "
            f"in seconds is not carried over)",
        ]
        if self.ignored_keys:
            lines.append(f"  ignored entries: {', '.join(self.ignored_keys)}")
        return "\n".join(lines)


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


def convert(src: PathLike, dst: PathLike, *, trust_pickle: bool,
            threshold: Optional[float] = None,
            refractory_period: Optional[int] = None) -> ConversionReport:
    """Convert AIVA's pickled weight dict at ``src`` into an aiva_cy checkpoint at ``dst``.

    ``trust_pickle`` must be True: reading a pickle can run code (see :data:`PICKLE_WARNING`);
    the file is read with a restricted unpickler in any case.  ``dst`` ends in ``.npz`` or
    ``.safetensors`` and is written atomically, without optimizer state.  The threshold is
    ``threshold`` if given, else the file's ``"threshold"`` entry, else 1.0 (the NumPy
    BioNeuron's initial threshold — the default of ``AIVANet.from_bioneuron`` too).
    ``refractory_period`` is in steps (default: AIVANet's, 2).

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
    if threshold is not None:
        threshold = _real("threshold", threshold)
    kwargs: Dict[str, Any] = {}
    if refractory_period is not None:
        kwargs["refractory_period"] = _steps("refractory_period", refractory_period)

    weights = read_weights_pickle(src_path, trust_pickle=trust_pickle)
    missing = [k for k in REQUIRED_KEYS if k not in weights]
    if missing:
        raise ValueError(f"'{src_path}' lacks {missing}: AIVA's weight file is a dict with keys "
                         f"{', '.join(map(repr, REQUIRED_KEYS))}; it has "
                         f"{sorted(map(repr, weights))}")
    if threshold is not None:
        source = "given"
    elif THRESHOLD_KEY in weights:
        try:
            threshold = _real(f"'{src_path}' entry 'threshold'", weights[THRESHOLD_KEY])
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        source = "the file's 'threshold' entry"
    else:
        threshold = DEFAULT_THRESHOLD
        source = ("default: the NumPy BioNeuron's initial threshold; its adaptive one decays "
                  "to 0.3 after about 60 calls: pass --threshold to choose")
    ignored = tuple(sorted(repr(k) for k in weights
                           if k not in REQUIRED_KEYS and k != THRESHOLD_KEY))
    try:
        net = AIVANet.from_bioneuron({k: weights[k] for k in REQUIRED_KEYS},
                                     threshold=threshold, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"'{src_path}': {exc}") from None
    net.save(dst_path, include_optimizer=False)
    return ConversionReport(
        source=src_path, destination=dst_path, input_size=net.input_size,
        hidden_size=net.hidden_size, spiking_size=net.spiking_size, num_tools=net.num_tools,
        num_parameters=net.num_parameters, threshold=net.threshold, threshold_source=source,
        refractory_period=net.refractory_period, bytes_written=os.path.getsize(dst_path),
        ignored_keys=ignored)


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
    parser.add_argument("--threshold", type=float, default=None,
                        help="spike threshold (default: the file's 'threshold' entry, else "
                        f"{DEFAULT_THRESHOLD}, the NumPy BioNeuron's initial threshold)")
    parser.add_argument("--refractory-period", type=int, default=None, metavar="STEPS",
                        help="refractory period in steps (default 2)")


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed ``convert`` command; returns the exit status."""
    prog = "aiva-cy convert"
    if not args.trust_pickle:
        print(f"{prog}: refusing to read '{args.src}': {PICKLE_WARNING} Run again with "
              f"--trust-pickle if you trust this file.", file=sys.stderr)
        return 2
    print(f"{prog}: reading '{args.src}' with a restricted unpickler (dicts, lists and NumPy "
          f"arrays only)", file=sys.stderr)
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
