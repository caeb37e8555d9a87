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
  ``include_optimizer``;
* ``__sha256__`` — ``.safetensors`` only: a SHA-256 of every entry and array, checked on
  load (safetensors has no checksum of its own; an ``.npz`` member carries a CRC-32).

Loading checks every key, type and range (an unknown or missing key is an error), and
reads nothing that the config does not allow: names and headers come before any data.

``AIVANet.save`` / ``AIVANet.load`` / ``AIVANet.from_bioneuron`` call the functions here.
"""
from __future__ import annotations

import contextlib
import errno
import json
import hashlib
import os
import stat
import struct
import tempfile
import warnings
import zipfile
from typing import IO, TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Tuple, Type, Union

import numpy as np

from aiva_cy._checks import adam_betas, adam_value, float_arg, int_arg
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
_DIGEST_KEY = "__sha256__"    # safetensors only: npz members carry their own CRC
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
    def dump(obj: Any) -> str:
        try:
            return json.dumps(obj, allow_nan=False, sort_keys=True)
        except ValueError:   # "Out of range float values are not JSON compliant"
            raise ValueError(f"cannot save: a setting is NaN or infinite ({obj!r}); a "
                             f"checkpoint holds finite values only") from None

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


def _digest(arrays: Mapping[str, np.ndarray], header: Mapping[str, str]) -> str:
    """SHA-256 over every JSON entry and every array's name, dtype, shape and bytes, each
    part length-prefixed so that no two different contents hash the same stream."""
    h = hashlib.sha256()

    def part(data: Union[bytes, memoryview]) -> None:
        h.update(struct.pack("<Q", len(data)))
        h.update(data)

    for key in sorted(header):
        part(key.encode("utf-8"))
        part(header[key].encode("utf-8"))
    for key in sorted(arrays):
        arr = np.ascontiguousarray(arrays[key])
        part(key.encode("utf-8"))
        part(f"{arr.dtype.newbyteorder('<').str}{arr.shape}".encode("ascii"))
        part(memoryview(arr.astype(arr.dtype.newbyteorder("<"), copy=False)).cast("B"))  # type: ignore[arg-type]  # ndarray is a buffer
    return h.hexdigest()


def _write_npz(f: IO[bytes], arrays: Mapping[str, np.ndarray], header: Mapping[str, str]) -> None:
    # The JSON goes in as 0-d unicode arrays: np.load reads those without pickle.
    entries: Dict[str, np.ndarray] = {k: np.array(v) for k, v in header.items()}
    entries.update(arrays)
    # No allow_pickle=: NumPy before 2.2 stores that keyword as one more array named
    # "allow_pickle". Nothing here is an object array, so no pickle is written anyway.
    np.savez(f, **entries)  # type: ignore[arg-type]  # (numpy's stub types **kwds as bool)


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


# Temporary files are named ".aiva_cy-save-<pid>-<random>.tmp" beside the target: short,
# so that any legal target name still fits, and recognisable, so that those of a process
# that died mid-save (kill -9) can be removed by a later save in the same directory.
_TMP_PREFIX = ".aiva_cy-save-"
_TMP_SUFFIX = ".tmp"


def _remove_stale_temps(directory: str) -> None:
    """Remove our temp files whose writing process no longer exists (best effort)."""
    try:
        names = [n for n in os.listdir(directory)
                 if n.startswith(_TMP_PREFIX) and n.endswith(_TMP_SUFFIX)]
    except OSError:
        return
    for name in names:
        pid_text = name[len(_TMP_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue                       # alive (or not ours to signal): leave it
        except ProcessLookupError:
            pass
        except (PermissionError, OSError, OverflowError):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))


def _save_target(path: str) -> str:
    """Where the bytes go: through a symlink to its target (what np.save and torch.save
    users expect), and never over a file this user may not write."""
    target = os.path.realpath(path) if os.path.islink(path) else path
    if os.path.exists(target):
        if os.path.isdir(target):
            raise IsADirectoryError(errno.EISDIR, "is a directory: cannot save a checkpoint "
                                    "over it", path)
        if not os.access(target, os.W_OK):
            raise PermissionError(errno.EACCES, "no permission to write this file (save "
                                  "replaces it by a rename, which would bypass that)", path)
    return target


def _atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write(file)`` to a temporary file beside ``path``'s target, then
    rename it over the target: readers see the old file or the new one, never half of one.
    An OSError names ``path``, not the temporary file."""
    target = _save_target(path)
    directory = os.path.dirname(os.path.abspath(target))
    _remove_stale_temps(directory)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{_TMP_PREFIX}{os.getpid()}-",
                                   suffix=_TMP_SUFFIX)
    except OSError as exc:
        raise _named(exc, path) from exc
    try:
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        try:
            mode = os.stat(target).st_mode & 0o777
        except OSError:
            mode = 0o666 & ~_current_umask()
        with contextlib.suppress(OSError, AttributeError):   # no fchmod on Windows
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            fd = -1                      # the file object owns the descriptor now
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        if fd != -1:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _named(exc, path) from exc
        raise
    # Make the rename itself durable; best effort (directories cannot be opened on Windows).
    with contextlib.suppress(OSError, AttributeError):
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _named(exc: OSError, path: str) -> OSError:
    """The same kind of OSError, naming the checkpoint's path instead of a temp file."""
    if exc.errno is None:
        return exc
    return type(exc)(exc.errno, f"cannot save the checkpoint: {exc.strerror}", path)


def save(net: "AIVANet", path: PathLike, *, include_optimizer: bool = True) -> None:
    """Write ``net`` to ``path`` (``.npz`` or ``.safetensors``), atomically.

    Holds the weights, the config, the format version, the refractory state (when not
    empty) and, with ``include_optimizer``, Adam's hyper-parameters, step and moments.
    """
    path, kind = _path_and_kind(path)
    # Checked before anything is written: a missing package must not leave a temp file.
    st = _import_safetensors() if kind == "safetensors" else None
    with net._lock:       # weights, state and moments of one step; written outside the lock
        arrays, header = _collect(net, bool(include_optimizer))
    if st is None:
        _atomic_write(path, lambda f: _write_npz(f, arrays, header))
    else:
        payload = st.save(arrays, metadata={**header, _DIGEST_KEY: _digest(arrays, header)})

        def write_payload(f: IO[bytes]) -> None:
            f.write(payload)

        _atomic_write(path, write_payload)


# ---------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------
# Nothing is read from a file before what it claims is checked against what a checkpoint
# of its config can hold: names first, then the small JSON entries, then each array's
# header (dtype, shape, size), and only then its data, never more bytes than that header
# promised.  A small file cannot make the loader allocate more than such a checkpoint.
_JSON_LIMIT = 1 << 20           # bytes of one JSON entry
_SAFETENSORS_HEADER_LIMIT = 1 << 24
_NPY_HEADER_LIMIT = 1 << 16     # bytes of an .npy member's own header


class _Corrupt(ValueError):
    """A problem found while reading, already worded with the path."""


def _open_regular(path: str) -> Tuple[IO[bytes], int]:
    """A regular file (a symlink to one is fine) opened for reading, and its size.  Opened
    without blocking, so that a FIFO is refused instead of waiting for a writer forever."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such file: cannot load an AIVANet checkpoint",
                                path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"'{path}' is not a regular file (a directory, device, FIFO or "
                             f"socket); a checkpoint is a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def _read_exactly(f: IO[bytes], n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{what} is truncated: {len(data)} of {n} bytes")
    return data


def _npy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str,
                check: Callable[[Tuple[int, ...], np.dtype], None]) -> np.ndarray:
    """One .npy member: header first, ``check(shape, dtype)``, then exactly its data."""
    with zf.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f"array {key!r}: unsupported .npy version {version}")
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise ValueError(f"array {key!r} must hold plain numbers, got dtype {dtype}")
        check(shape, dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        data = _read_exactly(member, nbytes, f"array {key!r}")
        if member.read(1):         # reading to the end also verifies the member's CRC
            raise ValueError(f"array {key!r} has data past its declared shape {shape}")
    arr = np.frombuffer(data, dtype=dtype)
    return arr.reshape(shape, order="F" if fortran else "C")


def _json_member_check(key: str) -> Callable[[Tuple[int, ...], np.dtype], None]:
    def check(shape: Tuple[int, ...], dtype: np.dtype) -> None:
        ok = ((dtype.kind == "U" and shape == ()) or (dtype == np.uint8 and len(shape) == 1))
        if not ok:
            raise ValueError(f"entry {key!r} must be a JSON string, got a {dtype} array of "
                             f"shape {shape}")
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > _JSON_LIMIT:
            raise ValueError(f"entry {key!r} is larger than {_JSON_LIMIT} bytes")
    return check


def _array_check(path: str, key: str, spec: "_Spec") -> Callable[[Tuple[int, ...], np.dtype], None]:
    def check(shape: Tuple[int, ...], dtype: np.dtype) -> None:
        spec.check(path, key, tuple(shape), dtype)
    return check


def _read_npz(f: IO[bytes], size: int, path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    if f.read(4) != b"PK\x03\x04":
        raise ValueError("not an .npz archive (no zip signature)")
    f.seek(0)
    arrays: Dict[str, np.ndarray] = {}
    header: Dict[str, str] = {}
    with zipfile.ZipFile(f) as zf:
        members: Dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if key in members:
                raise _Corrupt(f"'{path}': member {info.filename!r} appears twice")
            members[key] = info
        # Names before any data: an unexpected member is never decompressed.
        for key in _JSON_KEYS:
            if key in members:
                if members[key].file_size > _JSON_LIMIT + _NPY_HEADER_LIMIT:
                    raise _Corrupt(f"'{path}': entry {key!r} is larger than {_JSON_LIMIT} bytes")
                header[key] = _json_text(key, _npy_member(zf, members[key], key,
                                                          _json_member_check(key)))
        specs = _expected_arrays(path, header)
        _check_names(path, specs, [k for k in members if k not in _JSON_KEYS])
        for key, spec in specs.items():
            if key not in members:
                continue
            if members[key].file_size > spec.max_bytes + _NPY_HEADER_LIMIT:
                raise _Corrupt(f"'{path}': array {key!r} declares {members[key].file_size} "
                               f"bytes, more than {spec.what} can hold")
            arrays[key] = _npy_member(zf, members[key], key, _array_check(path, key, spec))
    return arrays, header


def _json_text(key: str, arr: np.ndarray) -> str:
    """A JSON entry stored as a 0-d unicode array, or as UTF-8 bytes in a uint8 array."""
    if arr.dtype.kind == "U" and arr.ndim == 0:
        return str(arr[()])
    if arr.dtype == np.uint8 and arr.ndim == 1:
        return arr.tobytes().decode("utf-8")
    raise ValueError(f"entry {key!r} must be a JSON string, got a {arr.dtype} array of "
                     f"shape {arr.shape}")


_ST_DTYPES: Dict[str, np.dtype[Any]] = {"F32": np.dtype("<f4"), "I32": np.dtype("<i4"), "F64": np.dtype("<f8"),
              "F16": np.dtype("<f2"), "I64": np.dtype("<i8"), "U8": np.dtype("u1"),
              "I8": np.dtype("i1"), "U32": np.dtype("<u4"), "I16": np.dtype("<i2")}


def _read_safetensors(f: IO[bytes], size: int, path: str
                      ) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    _import_safetensors()
    # u64 little-endian length, the JSON header, then the tensors' bytes.
    if size < 8:
        raise ValueError("too short for a safetensors header")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8 or n > _SAFETENSORS_HEADER_LIMIT:
        raise ValueError(f"header claims {n} bytes but the file has {size - 8} after it")
    head = json.loads(_read_exactly(f, n, "the header").decode("utf-8"))
    if not isinstance(head, dict):
        raise ValueError("safetensors header is not a JSON object")
    metadata = head.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("safetensors metadata is not a mapping of strings")
    header = {k: v for k, v in metadata.items() if k in _JSON_KEYS}
    specs = _expected_arrays(path, header)       # a file of another tool stops here
    unknown = sorted(set(metadata) - set(_JSON_KEYS) - {_DIGEST_KEY})
    if unknown:
        raise _Corrupt(f"'{path}': unknown metadata keys {unknown}")
    _check_names(path, specs, list(head))
    data_size = size - 8 - n
    spans = []
    for key, entry in head.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"tensor {key!r}: malformed entry {entry!r}")
        dtype = _ST_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        shape, offsets = entry["shape"], entry["data_offsets"]
        if (dtype is None or not isinstance(shape, list) or not isinstance(offsets, list)
                or len(offsets) != 2
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                           for d in shape + offsets)):
            raise ValueError(f"tensor {key!r}: malformed entry {entry!r}")
        specs[key].check(path, key, tuple(shape), dtype)
        start, end = offsets
        if end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or end > data_size:
            raise ValueError(f"tensor {key!r}: offsets {offsets} do not fit its shape {shape} "
                             f"and the {data_size} data bytes")
        spans.append((start, end, key, dtype, tuple(shape)))
    spans.sort()
    covered = 0
    for start, end, key, _, _ in spans:
        if start != covered:
            raise ValueError(f"tensor {key!r}: data not contiguous at byte {start}")
        covered = end
    if covered != data_size:
        raise ValueError(f"{data_size - covered} bytes after the last tensor")
    data = _read_exactly(f, data_size, "the tensor data")
    arrays = {key: np.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize,
                                 offset=start).reshape(shape)
              for start, end, key, dtype, shape in spans}
    digest = metadata.get(_DIGEST_KEY)
    if digest is None:
        warnings.warn(f"'{path}' carries no {_DIGEST_KEY!r} entry (written by an older aiva_cy "
                      f"or another tool): its contents cannot be verified", UserWarning,
                      stacklevel=4)
    elif digest != _digest(arrays, header):
        raise _Corrupt(f"'{path}': the contents do not match the file's checksum "
                       f"({_DIGEST_KEY}): the file is corrupt")
    return arrays, header


def _parse_json(path: str, header: Mapping[str, str], key: str) -> Any:
    try:
        # parse_constant: refuse NaN/Infinity, which no valid checkpoint contains.
        return json.loads(header[key], parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise _Corrupt(f"'{path}': entry {key!r} is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _check_format(path: str, header: Mapping[str, str]) -> None:
    if _FORMAT_KEY not in header:
        raise _Corrupt(f"'{path}' is not an aiva_cy checkpoint (no {_FORMAT_KEY!r} entry); "
                       f"it may have been written by another tool")
    fmt = _parse_json(path, header, _FORMAT_KEY)
    if not isinstance(fmt, dict) or fmt.get("format") != FORMAT_NAME:
        raise _Corrupt(f"'{path}' is not an aiva_cy checkpoint ({_FORMAT_KEY!r} is {fmt!r})")
    version = fmt.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _Corrupt(f"'{path}': invalid aiva_cy format version {version!r}")
    if version > FORMAT_VERSION:
        raise _Corrupt(f"'{path}' has aiva_cy format version {version}; this aiva_cy reads "
                       f"version {FORMAT_VERSION} and older: upgrade aiva_cy to load it")
    unknown = sorted(set(fmt) - {"format", "version"})
    if unknown:
        raise _Corrupt(f"'{path}': {_FORMAT_KEY!r} has unknown keys {unknown}")


#: The config keys every checkpoint holds, with their checks; "precision" may be present.
_CONFIG_CHECKS: Dict[str, Callable[[str, Any], Any]] = {
    "input_size": lambda k, v: int_arg(k, v, 1),
    "num_tools": lambda k, v: int_arg(k, v, 1),
    "hidden_size": lambda k, v: int_arg(k, v, 1),
    "spiking_size": lambda k, v: int_arg(k, v, 1),
    "threshold": lambda k, v: float_arg(k, v),
    "refractory_period": lambda k, v: int_arg(k, v, 0),
    "surrogate_slope": lambda k, v: float_arg(k, v, 0.0),
}
_OPTIONAL_CONFIG_KEYS = ("precision",)
_OPTIMIZER_FIELDS = ("lr", "betas", "eps", "weight_decay", "step")


def _check_config(path: str, header: Mapping[str, str]) -> Dict[str, Any]:
    if _CONFIG_KEY not in header:
        raise _Corrupt(f"'{path}': the {_CONFIG_KEY!r} entry is missing")
    config = _parse_json(path, header, _CONFIG_KEY)
    if not isinstance(config, dict):
        raise _Corrupt(f"'{path}': {_CONFIG_KEY!r} must be a JSON object, got {config!r}")
    missing = [k for k in _CONFIG_CHECKS if k not in config]
    unknown = sorted(k for k in config if k not in _CONFIG_CHECKS
                     and k not in _OPTIONAL_CONFIG_KEYS)
    if missing or unknown:
        raise _Corrupt(f"'{path}': {_CONFIG_KEY!r} must hold exactly the keys "
                       f"{list(_CONFIG_CHECKS)}: missing {missing}, unknown {unknown}")
    checked = dict(config)
    for key, check in _CONFIG_CHECKS.items():
        try:
            checked[key] = check(key, config[key])
        except (TypeError, ValueError) as exc:
            raise _Corrupt(f"'{path}': config {key!r}: {exc}") from None
    return checked


def _optimizer_header(path: str, header: Mapping[str, str]) -> Tuple[Dict[str, Any], int]:
    """(constructor keywords lr/betas/eps/weight_decay, step), every value checked."""
    opt = _parse_json(path, header, _OPTIMIZER_KEY)
    if not isinstance(opt, dict):
        raise _Corrupt(f"'{path}': {_OPTIMIZER_KEY!r} must be a JSON object, got {opt!r}")
    missing = [k for k in _OPTIMIZER_FIELDS if k not in opt]
    unknown = sorted(k for k in opt if k not in _OPTIMIZER_FIELDS)
    if missing or unknown:
        raise _Corrupt(f"'{path}': {_OPTIMIZER_KEY!r} lacks {missing}" if not unknown else
                       f"'{path}': {_OPTIMIZER_KEY!r} must hold exactly the keys "
                       f"{list(_OPTIMIZER_FIELDS)}: missing {missing}, unknown {unknown}")
    try:
        step = int_arg("optimizer step", opt["step"], 0, 2**62)
        if not isinstance(opt["betas"], list):
            raise ValueError(f"optimizer betas must be a pair, got {opt['betas']!r}")
        args = {"lr": adam_value("lr", opt["lr"]), "betas": adam_betas(opt["betas"]),
                "eps": adam_value("eps", opt["eps"]),
                "weight_decay": adam_value("weight_decay", opt["weight_decay"])}
    except (TypeError, ValueError) as exc:
        raise _Corrupt(f"'{path}': {_OPTIMIZER_KEY!r}: {exc}") from None
    return args, step


class _Spec:
    """What one array of a checkpoint must be: dtype kind, shape (rows of the refractory
    state free up to max_rows)."""

    def __init__(self, kinds: str, shape: Tuple[int, ...], max_rows: int = 0):
        self.kinds, self.shape, self.max_rows = kinds, shape, max_rows
        rows = max_rows or shape[0]
        self.max_bytes = rows * int(np.prod(shape[1:], dtype=np.int64)) * 4
        self.what = "this config's checkpoint"

    def check(self, path: str, key: str, shape: Tuple[int, ...], dtype: np.dtype) -> None:
        word = "float32" if self.kinds == "f" else "int32"
        if dtype.kind not in self.kinds or dtype.itemsize != 4:
            raise _Corrupt(f"'{path}': array {key!r} must be {word}, got {dtype}")
        if self.max_rows:
            ok = len(shape) == 2 and shape[1] == self.shape[1] and 1 <= shape[0] <= self.max_rows
            want = f"(batch <= {self.max_rows}, {self.shape[1]})"
        else:
            ok, want = shape == self.shape, str(self.shape)
        if not ok:
            raise _Corrupt(f"'{path}': array {key!r} must have shape {want} for the stored "
                           f"config, got {shape}")


def _expected_arrays(path: str, header: Mapping[str, str]) -> Dict[str, _Spec]:
    """Every array the checkpoint described by ``header`` may hold, with its spec."""
    _check_format(path, header)
    c = _check_config(path, header)
    shapes = {"fc1.weight": (c["input_size"], c["hidden_size"]),
              "spiking.weight": (c["hidden_size"], c["spiking_size"]),
              "fc2.weight": (c["spiking_size"], c["num_tools"])}
    specs = {k: _Spec("f", shapes[k]) for k in PARAM_NAMES}
    if _OPTIMIZER_KEY in header:
        _optimizer_header(path, header)
        specs.update({_moment_key(m, k): _Spec("f", shapes[k]) for m in _MOMENTS
                      for k in PARAM_NAMES})
    # The state is what a forward at some batch left; the engine takes at most this many
    # rows in one call.
    specs[_STATE_KEY] = _Spec("iu", (0, c["spiking_size"]),
                              max_rows=max(1, 2**30 // max(c["hidden_size"], c["spiking_size"])))
    return specs


def _check_names(path: str, specs: Mapping[str, _Spec], names: Any) -> None:
    required = [k for k in specs if k != _STATE_KEY]
    missing = [k for k in required if k not in names]
    unexpected = sorted(str(k) for k in names if k not in specs)
    if missing or unexpected:
        raise _Corrupt(f"'{path}': arrays do not match an aiva_cy checkpoint: missing "
                       f"{missing}, unexpected {unexpected}")


def load(cls: Type["AIVANet"], path: PathLike, *, device: str = "cpu",
         precision: Optional[str] = None) -> "AIVANet":
    """Read a checkpoint written by :func:`save`; every error names the path and the problem.
    ``precision`` (one of AIVANet's precisions) overrides the one saved in the config.

    Raises FileNotFoundError for a missing file, ValueError for anything that is not a
    complete, valid aiva_cy checkpoint of a version this module reads (a directory, FIFO or
    device included), ImportError for a ``.safetensors`` file without the safetensors
    package.  A ``.safetensors`` file without a checksum loads with a UserWarning.
    """
    path, kind = _path_and_kind(path)
    if kind == "safetensors":
        _import_safetensors()
    f, size = _open_regular(path)
    with f:
        if size == 0:
            raise ValueError(f"'{path}' is empty")
        try:
            arrays, header = (_read_npz if kind == "npz" else _read_safetensors)(f, size, path)
        except (MemoryError, _Corrupt):
            raise                  # a real shortage, or a message that already names the path
        except Exception as exc:   # third-party parsers on untrusted bytes raise many types
            raise ValueError(f"'{path}' is not a readable .{kind} checkpoint; it may be "
                             f"truncated, corrupt or written by another tool "
                             f"({type(exc).__name__}: {exc})") from exc
    return _build(cls, path, arrays, header, device, precision)


def _build(cls: Type["AIVANet"], path: str, arrays: Dict[str, np.ndarray],
           header: Mapping[str, str], device: str, precision: Optional[str] = None) -> "AIVANet":
    config = _check_config(path, header)
    weights = {k: _finite(path, k, arrays[k]) for k in PARAM_NAMES}
    opt_args: Dict[str, Any] = {}
    opt_state: Optional[Dict[str, Any]] = None
    if _OPTIMIZER_KEY in header:
        opt_args, step = _optimizer_header(path, header)
        opt_state = {"step": step, **opt_args}
        for moment in _MOMENTS:
            opt_state[moment] = {k: _finite(path, _moment_key(moment, k),
                                            arrays[_moment_key(moment, k)])
                                 for k in PARAM_NAMES}
    try:
        if precision is not None:
            config["precision"] = precision
        net = cls(**config, **opt_args, seed=0)
        net.load_state_dict(weights)
        net._engine.set_state(arrays.get(_STATE_KEY))
        if opt_state is not None:
            net.optimizer.load_state_dict(opt_state)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"'{path}': invalid checkpoint contents: {exc}") from None
    if device != "cpu":
        net.to(device)
    return net


def _finite(path: str, key: str, arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise _Corrupt(f"'{path}': array {key!r} contains NaN or Inf")
    return arr


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
