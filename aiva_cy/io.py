"""Saving and loading AIVANet checkpoints, and importing NumPy BioNeuron weights.

One checkpoint is one file, written atomically, with no pickle inside:

* ``.npz`` — a NumPy zip archive of ``.npy`` arrays (read with ``allow_pickle=False``);
* ``.safetensors`` — the same arrays, with the JSON entries in the file's metadata
  (needs the ``safetensors`` package).

Arrays (state_dict layout, "x @ W"):

* ``fc1.weight``, ``spiking.weight``, ``fc2.weight`` — float32 weights;
* ``state.refractory_left`` — int32 (batch, spiking_size), only when the state is not empty;
* ``optimizer.exp_avg.<key>``, ``optimizer.exp_avg_sq.<key>`` — float32 Adam moments, only
  with ``include_optimizer``.

JSON entries (0-d unicode arrays in ``.npz``, metadata strings in ``.safetensors``):

* ``__format__`` — ``{"format": "aiva_cy", "version": 1}``;
* ``__config__`` — ``net.config`` (the architecture's constructor arguments);
* ``__optimizer__`` — ``{"lr", "betas", "eps", "weight_decay", "step"}``, only with
  ``include_optimizer``.

``AIVANet.save`` / ``AIVANet.load`` / ``AIVANet.from_bioneuron`` call the functions here.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import struct
import tempfile
import zipfile
from typing import IO, TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Tuple, Type, Union

import numpy as np

from aiva_cy._core import PARAM_NAMES

if TYPE_CHECKING:  # only for annotations: net.py imports this module lazily
    from aiva_cy.net import AIVANet

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "SUFFIXES", "save", "load", "from_bioneuron"]

FORMAT_NAME = "aiva_cy"
#: The newest format version this module writes and reads.
FORMAT_VERSION = 1
SUFFIXES = (".npz", ".safetensors")

PathLike = Union[str, "os.PathLike[str]"]

_FORMAT_KEY = "__format__"
_CONFIG_KEY = "__config__"
_OPTIMIZER_KEY = "__optimizer__"
_JSON_KEYS = (_FORMAT_KEY, _CONFIG_KEY, _OPTIMIZER_KEY)
_STATE_KEY = "state.refractory_left"
_MOMENTS = ("exp_avg", "exp_avg_sq")


def _moment_key(moment: str, param: str) -> str:
    return f"optimizer.{moment}.{param}"


_OPTIMIZER_ARRAYS = tuple(_moment_key(m, k) for m in _MOMENTS for k in PARAM_NAMES)


# ---------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------
def _path_and_kind(path: Any) -> Tuple[str, str]:
    """(path as str, "npz" or "safetensors"); the suffix alone decides the format."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    path = os.fsdecode(os.fspath(path))
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"'{path}': unsupported file suffix {suffix or '(none)'!r}; "
                         f"use one of {', '.join(SUFFIXES)}")
    return path, suffix[1:]


def _import_safetensors() -> Any:
    try:
        import safetensors.numpy
    except ImportError as exc:
        raise ImportError("reading or writing .safetensors files needs the safetensors package: "
                          "pip install safetensors (or save as .npz)") from exc
    return safetensors.numpy


# ---------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------
def _host(a: Any) -> np.ndarray:
    """A C-contiguous NumPy copy-or-view of a NumPy or CuPy array (a CUDA net saves too)."""
    if type(a).__module__.startswith("cupy"):
        a = a.get()
    return np.ascontiguousarray(a)


def _collect(net: "AIVANet", include_optimizer: bool) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Everything a checkpoint holds: arrays by key, and the JSON entries as strings."""
    arrays = {k: _host(v).astype(np.float32, copy=False) for k, v in net.state_dict().items()}
    state = net._engine.get_state()
    if state is not None:
        arrays[_STATE_KEY] = _host(state).astype(np.int32, copy=False)
    # allow_nan=False: a non-finite hyper-parameter would write a file no JSON reader accepts.
    dump: Callable[[Any], str] = lambda obj: json.dumps(obj, allow_nan=False, sort_keys=True)
    header = {_FORMAT_KEY: dump({"format": FORMAT_NAME, "version": FORMAT_VERSION}),
              _CONFIG_KEY: dump(net.config)}
    if include_optimizer:
        opt = net.optimizer.state_dict()
        header[_OPTIMIZER_KEY] = dump({
            "lr": float(opt["lr"]), "betas": [float(b) for b in opt["betas"]],
            "eps": float(opt["eps"]), "weight_decay": float(opt["weight_decay"]),
            "step": int(opt["step"])})
        for moment in _MOMENTS:
            for k in PARAM_NAMES:
                arrays[_moment_key(moment, k)] = _host(opt[moment][k]).astype(np.float32,
                                                                              copy=False)
    return arrays, header


def _write_npz(f: IO[bytes], arrays: Mapping[str, np.ndarray], header: Mapping[str, str]) -> None:
    # The JSON goes in as 0-d unicode arrays: np.load reads those without pickle.
    entries: Dict[str, np.ndarray] = {k: np.array(v) for k, v in header.items()}
    entries.update(arrays)
    np.savez(f, allow_pickle=False, **entries)


def _current_umask() -> int:
    # Linux reports the umask without changing it; elsewhere set-and-restore is the only way.
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write(file)`` to a temporary file beside ``path``, then rename it over
    ``path``: readers see the old file or the new one, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        try:
            mode = os.stat(path).st_mode & 0o777
        except OSError:
            mode = 0o666 & ~_current_umask()
        with contextlib.suppress(OSError, AttributeError):   # no fchmod on Windows
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            fd = -1                      # the file object owns the descriptor now
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd != -1:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable; best effort (directories cannot be opened on Windows).
    with contextlib.suppress(OSError, AttributeError):
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save(net: "AIVANet", path: PathLike, *, include_optimizer: bool = True) -> None:
    """Write ``net`` to ``path`` (``.npz`` or ``.safetensors``), atomically.

    Holds the weights, the config, the format version, the refractory state (when not
    empty) and, with ``include_optimizer``, Adam's hyper-parameters, step and moments.
    """
    path, kind = _path_and_kind(path)
    # Checked before anything is written: a missing package must not leave a temp file.
    st = _import_safetensors() if kind == "safetensors" else None
    arrays, header = _collect(net, bool(include_optimizer))
    if st is None:
        _atomic_write(path, lambda f: _write_npz(f, arrays, header))
    else:
        payload = st.save(arrays, metadata=dict(header))

        def write_payload(f: IO[bytes]) -> None:
            f.write(payload)

        _atomic_write(path, write_payload)


# ---------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------
def _read_npz(data: bytes) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    if not data.startswith(b"PK\x03\x04"):
        raise ValueError("not an .npz archive (no zip signature)")
    buffer = io.BytesIO(data)
    # np.load checks no checksums: verify every member's CRC first, so a flipped byte
    # anywhere in the data is reported instead of loaded.
    with zipfile.ZipFile(buffer) as zf:
        bad = zf.testzip()
        if bad is not None:
            raise ValueError(f"member {bad!r} fails its CRC check")
    buffer.seek(0)
    arrays: Dict[str, np.ndarray] = {}
    header: Dict[str, str] = {}
    with np.load(buffer, allow_pickle=False) as npz:
        for key in npz.files:
            arr = npz[key]
            if key in _JSON_KEYS:
                header[key] = _json_text(key, arr)
            else:
                arrays[key] = arr
    return arrays, header


def _json_text(key: str, arr: np.ndarray) -> str:
    """A JSON entry stored as a 0-d unicode array, or as UTF-8 bytes in a uint8 array."""
    if arr.dtype.kind == "U" and arr.ndim == 0:
        return str(arr[()])
    if arr.dtype == np.uint8 and arr.ndim == 1:
        return arr.tobytes().decode("utf-8")
    raise ValueError(f"entry {key!r} must be a JSON string, got a {arr.dtype} array of "
                     f"shape {arr.shape}")


def _read_safetensors(data: bytes) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    st = _import_safetensors()
    # The metadata is in the JSON header: u64 little-endian length, then the JSON text.
    if len(data) < 8:
        raise ValueError("too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"header claims {n} bytes but the file has {len(data) - 8} after it")
    head = json.loads(data[8:8 + n].decode("utf-8"))
    if not isinstance(head, dict):
        raise ValueError("safetensors header is not a JSON object")
    metadata = head.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("safetensors metadata is not a mapping of strings")
    header = {k: v for k, v in metadata.items() if k in _JSON_KEYS}
    return dict(st.load(data)), header


def _parse_json(path: str, header: Mapping[str, str], key: str) -> Any:
    try:
        # parse_constant: refuse NaN/Infinity, which no valid checkpoint contains.
        return json.loads(header[key], parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"'{path}': entry {key!r} is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _check_format(path: str, header: Mapping[str, str]) -> None:
    if _FORMAT_KEY not in header:
        raise ValueError(f"'{path}' is not an aiva_cy checkpoint (no {_FORMAT_KEY!r} entry); "
                         f"it may have been written by another tool")
    fmt = _parse_json(path, header, _FORMAT_KEY)
    if not isinstance(fmt, dict) or fmt.get("format") != FORMAT_NAME:
        raise ValueError(f"'{path}' is not an aiva_cy checkpoint ({_FORMAT_KEY!r} is {fmt!r})")
    version = fmt.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"'{path}': invalid aiva_cy format version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"'{path}' has aiva_cy format version {version}; this aiva_cy reads "
                         f"version {FORMAT_VERSION} and older: upgrade aiva_cy to load it")


def _check_float32(path: str, key: str, arr: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    # float32 only: a float64 file would silently lose precision, and bit-exact resumption
    # is the point of a checkpoint.
    if arr.dtype.kind != "f" or arr.dtype.itemsize != 4:
        raise ValueError(f"'{path}': array {key!r} must be float32, got {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"'{path}': array {key!r} must have shape {shape} for the stored "
                         f"config, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"'{path}': array {key!r} contains NaN or Inf")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _config_shapes(path: str, config: Mapping[str, Any]) -> Dict[str, Tuple[int, int]]:
    sizes = {}
    for name in ("input_size", "hidden_size", "spiking_size", "num_tools"):
        v = config.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"'{path}': config {name!r} must be a positive int, got {v!r}")
        sizes[name] = v
    return {"fc1.weight": (sizes["input_size"], sizes["hidden_size"]),
            "spiking.weight": (sizes["hidden_size"], sizes["spiking_size"]),
            "fc2.weight": (sizes["spiking_size"], sizes["num_tools"])}


def _optimizer_header(path: str, opt: Any) -> Tuple[Dict[str, Any], int]:
    """(constructor keywords lr/betas/eps/weight_decay, step); the constructor checks values."""
    if not isinstance(opt, dict):
        raise ValueError(f"'{path}': {_OPTIMIZER_KEY!r} must be a JSON object, got {opt!r}")
    missing = [k for k in ("lr", "betas", "eps", "weight_decay", "step") if k not in opt]
    if missing:
        raise ValueError(f"'{path}': {_OPTIMIZER_KEY!r} lacks {missing}")
    step = opt["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"'{path}': optimizer step must be an int >= 0, got {step!r}")
    betas = opt["betas"]
    if not isinstance(betas, list) or len(betas) != 2:
        raise ValueError(f"'{path}': optimizer betas must be a pair, got {betas!r}")
    return {"lr": opt["lr"], "betas": tuple(betas), "eps": opt["eps"],
            "weight_decay": opt["weight_decay"]}, step


def load(cls: Type["AIVANet"], path: PathLike, *, device: str = "cpu",
         precision: Optional[str] = None) -> "AIVANet":
    """Read a checkpoint written by :func:`save`; every error names the path and the problem.
    ``precision`` ("float32" or "bfloat16") overrides the one saved in the config.

    Raises FileNotFoundError for a missing file, ValueError for anything that is not a
    complete, valid aiva_cy checkpoint of a version this module reads, ImportError for a
    ``.safetensors`` file without the safetensors package.
    """
    path, kind = _path_and_kind(path)
    if kind == "safetensors":
        _import_safetensors()
    # One read, then parse from memory: no file handle outlives this call, and the parsers
    # see a fixed-size buffer however the file changes meanwhile.
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file: cannot load an AIVANet checkpoint",
                                path) from None
    if not data:
        raise ValueError(f"'{path}' is empty")
    try:
        arrays, header = _read_npz(data) if kind == "npz" else _read_safetensors(data)
    except MemoryError:
        raise                      # a real shortage, not a property of the file
    except Exception as exc:       # third-party parsers on untrusted bytes raise many types
        raise ValueError(f"'{path}' is not a readable .{kind} checkpoint; it may be truncated, "
                         f"corrupt or written by another tool ({type(exc).__name__}: {exc})"
                         ) from exc
    return _build(cls, path, arrays, header, device, precision)


def _build(cls: Type["AIVANet"], path: str, arrays: Dict[str, np.ndarray],
           header: Mapping[str, str], device: str, precision: Optional[str] = None) -> "AIVANet":
    _check_format(path, header)
    if _CONFIG_KEY not in header:
        raise ValueError(f"'{path}': the {_CONFIG_KEY!r} entry is missing")
    config = _parse_json(path, header, _CONFIG_KEY)
    if not isinstance(config, dict):
        raise ValueError(f"'{path}': {_CONFIG_KEY!r} must be a JSON object, got {config!r}")

    with_optimizer = _OPTIMIZER_KEY in header
    required = PARAM_NAMES + (_OPTIMIZER_ARRAYS if with_optimizer else ())
    missing = [k for k in required if k not in arrays]
    unexpected = sorted(set(arrays) - set(required) - {_STATE_KEY})
    if missing or unexpected:
        raise ValueError(f"'{path}': arrays do not match an aiva_cy checkpoint: missing "
                         f"{missing}, unexpected {unexpected}")

    # Shapes before construction: the config could ask for any size, the arrays cannot lie
    # about theirs, so nothing larger than the file is ever allocated.
    shapes = _config_shapes(path, config)
    weights = {k: _check_float32(path, k, arrays[k], shapes[k]) for k in PARAM_NAMES}
    opt_args: Dict[str, Any] = {}
    opt_state: Optional[Dict[str, Any]] = None
    if with_optimizer:
        opt_args, step = _optimizer_header(path, _parse_json(path, header, _OPTIMIZER_KEY))
        opt_state = {"step": step, **opt_args}
        for moment in _MOMENTS:
            opt_state[moment] = {k: _check_float32(path, _moment_key(moment, k),
                                                   arrays[_moment_key(moment, k)], shapes[k])
                                 for k in PARAM_NAMES}
    state = arrays.get(_STATE_KEY)
    if state is not None and (state.dtype.kind not in "iu" or state.dtype.itemsize != 4):
        raise ValueError(f"'{path}': array {_STATE_KEY!r} must be int32, got {state.dtype}")

    try:
        if precision is not None:
            config["precision"] = precision
        net = cls(**config, **opt_args, seed=0)
        net.load_state_dict(weights)
        net._engine.set_state(state)
        if opt_state is not None:
            net.optimizer.load_state_dict(opt_state)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"'{path}': invalid checkpoint contents: {exc}") from None
    if device != "cpu":
        net.to(device)
    return net


# ---------------------------------------------------------------------------------------
# NumPy BioNeuron
# ---------------------------------------------------------------------------------------
def _bio_matrix(name: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"BioNeuron {name} must be a 2-D array of numbers: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"BioNeuron {name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"BioNeuron {name} must be a non-empty 2-D array, got shape {arr.shape}")
    with np.errstate(over="ignore"):   # float64 past float32's range becomes Inf: reported below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"BioNeuron {name} contains NaN or Inf (or a value too large for "
                         f"float32)")
    return out


def from_bioneuron(cls: Type["AIVANet"], obj: Any, *, threshold: Optional[float] = None,
                   **kwargs: Any) -> "AIVANet":
    """An AIVANet holding a NumPy BioNeuron's weights (converted to float32).

    ``obj`` is a BioNeuron-like object (``fc1``, ``spiking1.weights``, ``fc2``) or a mapping
    with keys ``fc1``, ``spiking1_weights``, ``fc2`` (what ``BioNeuron.state_dict()`` returns).
    The sizes come from the arrays.  The threshold is ``threshold`` if given, else the
    BioNeuron's current one (``spiking1.threshold``, or ``"threshold"`` in a mapping), else
    1.0, the BioNeuron's initial value.  Other keywords (``refractory_period``, ``lr``, ...)
    go to the constructor; note the BioNeuron's refractory period is in seconds and
    AIVANet's in steps, so it is not carried over.
    """
    if isinstance(obj, Mapping):
        missing = [k for k in ("fc1", "spiking1_weights", "fc2") if k not in obj]
        if missing:
            raise ValueError(f"BioNeuron mapping lacks keys {missing}; expected 'fc1', "
                             f"'spiking1_weights' and 'fc2'")
        raw = (obj["fc1"], obj["spiking1_weights"], obj["fc2"])
        own_threshold = obj.get("threshold", 1.0)
    elif hasattr(obj, "fc1") and hasattr(obj, "fc2") and hasattr(getattr(obj, "spiking1", None),
                                                                   "weights"):
        raw = (obj.fc1, obj.spiking1.weights, obj.fc2)
        own_threshold = getattr(obj.spiking1, "threshold", 1.0)
    else:
        raise TypeError(f"from_bioneuron expects a BioNeuron (attributes fc1, spiking1.weights, "
                        f"fc2) or a mapping with keys 'fc1', 'spiking1_weights', 'fc2', got "
                        f"{type(obj).__name__}")
    fc1, spiking, fc2 = (_bio_matrix(n, a) for n, a in
                         zip(("fc1", "spiking1.weights", "fc2"), raw))
    if fc1.shape[1] != spiking.shape[0]:
        raise ValueError(f"BioNeuron fc1 has shape {fc1.shape} but spiking1.weights has shape "
                         f"{spiking.shape}: fc1's columns must equal spiking1.weights' rows")
    if spiking.shape[1] != fc2.shape[0]:
        raise ValueError(f"BioNeuron spiking1.weights has shape {spiking.shape} but fc2 has "
                         f"shape {fc2.shape}: spiking1.weights' columns must equal fc2's rows")
    sizes = ("input_size", "num_tools", "hidden_size", "spiking_size")
    clash = [k for k in sizes if k in kwargs]
    if clash:
        raise TypeError(f"from_bioneuron takes the sizes from the arrays; do not pass {clash}")
    if threshold is None:
        threshold = own_threshold
    # The net's own init is overwritten at once; a fixed seed keeps construction deterministic.
    kwargs.setdefault("seed", 0)
    net = cls(input_size=fc1.shape[0], num_tools=fc2.shape[1], hidden_size=fc1.shape[1],
              spiking_size=spiking.shape[1], threshold=threshold, **kwargs)
    net.load_state_dict({"fc1.weight": fc1, "spiking.weight": spiking, "fc2.weight": fc2})
    return net
