"""The hardened checkpoint readers: ``.npz`` and ``.safetensors`` files read as untrusted
bytes.

Each reader returns (arrays by key, JSON entries as strings) after checking every name and
header against :func:`aiva_cy._format.expected_arrays` and before reading the data those
headers describe; the caller (:func:`aiva_cy.io.load`) builds the net.  A problem worded
with the path raises :class:`aiva_cy._format.Corrupt`; anything else a third-party parser
raises is reworded by the caller.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import struct
import warnings
import zipfile
from typing import IO, Any, Callable, Dict, Tuple

import numpy as np

from aiva_cy._format import (DIGEST_KEY, JSON_KEYS, Corrupt, Spec, check_names, digest,
                             expected_arrays, import_safetensors)

# Nothing is read from a file before what it claims is checked against what a checkpoint
# of its config can hold: names first, then the small JSON entries, then each array's
# header (dtype, shape, size), and only then its data, never more bytes than that header
# promised.  A small file cannot make the loader allocate more than such a checkpoint.
JSON_LIMIT = 1 << 20           # bytes of one JSON entry
SAFETENSORS_HEADER_LIMIT = 1 << 24
NPY_HEADER_LIMIT = 1 << 16     # bytes of an .npy member's own header


def open_regular(path: str, what: str = "an AIVANet checkpoint") -> Tuple[IO[bytes], int]:
    """A regular file (a symlink to one is fine) opened for reading, and its size.  Opened
    without blocking, so that a FIFO is refused instead of waiting for a writer forever;
    ``what`` the file should be, for the errors."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"no such file: cannot read {what}",
                                path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"'{path}' is not a regular file (a directory, device, FIFO or "
                             f"socket); {what} is a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def read_exactly(f: IO[bytes], n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{what} is truncated: {len(data)} of {n} bytes")
    return data


def npy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str,
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
        data = read_exactly(member, nbytes, f"array {key!r}")
        if member.read(1):         # reading to the end also verifies the member's CRC
            raise ValueError(f"array {key!r} has data past its declared shape {shape}")
    arr = np.frombuffer(data, dtype=dtype)
    return arr.reshape(shape, order="F" if fortran else "C")


def json_member_check(key: str) -> Callable[[Tuple[int, ...], np.dtype], None]:
    def check(shape: Tuple[int, ...], dtype: np.dtype) -> None:
        ok = ((dtype.kind == "U" and shape == ()) or (dtype == np.uint8 and len(shape) == 1))
        if not ok:
            raise ValueError(f"entry {key!r} must be a JSON string, got a {dtype} array of "
                             f"shape {shape}")
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > JSON_LIMIT:
            raise ValueError(f"entry {key!r} is larger than {JSON_LIMIT} bytes")
    return check


def array_check(path: str, key: str, spec: "Spec") -> Callable[[Tuple[int, ...], np.dtype], None]:
    def check(shape: Tuple[int, ...], dtype: np.dtype) -> None:
        spec.check(path, key, tuple(shape), dtype)
    return check


def read_npz(f: IO[bytes], size: int, path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
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
                raise Corrupt(f"'{path}': member {info.filename!r} appears twice")
            members[key] = info
        # Names before any data: an unexpected member is never decompressed.
        for key in JSON_KEYS:
            if key in members:
                if members[key].file_size > JSON_LIMIT + NPY_HEADER_LIMIT:
                    raise Corrupt(f"'{path}': entry {key!r} is larger than {JSON_LIMIT} bytes")
                header[key] = json_text(key, npy_member(zf, members[key], key,
                                                        json_member_check(key)))
        specs = expected_arrays(path, header)
        check_names(path, specs, [k for k in members if k not in JSON_KEYS])
        for key, spec in specs.items():
            if key not in members:
                continue
            if members[key].file_size > spec.max_bytes + NPY_HEADER_LIMIT:
                raise Corrupt(f"'{path}': array {key!r} declares {members[key].file_size} "
                              f"bytes, more than {spec.what} can hold")
            arrays[key] = npy_member(zf, members[key], key, array_check(path, key, spec))
    return arrays, header


def json_text(key: str, arr: np.ndarray) -> str:
    """A JSON entry stored as a 0-d unicode array, or as UTF-8 bytes in a uint8 array."""
    if arr.dtype.kind == "U" and arr.ndim == 0:
        return str(arr[()])
    if arr.dtype == np.uint8 and arr.ndim == 1:
        return arr.tobytes().decode("utf-8")
    raise ValueError(f"entry {key!r} must be a JSON string, got a {arr.dtype} array of "
                     f"shape {arr.shape}")


ST_DTYPES: Dict[str, np.dtype[Any]] = {"F32": np.dtype("<f4"), "I32": np.dtype("<i4"), "F64": np.dtype("<f8"),
              "F16": np.dtype("<f2"), "I64": np.dtype("<i8"), "U8": np.dtype("u1"),
              "I8": np.dtype("i1"), "U32": np.dtype("<u4"), "I16": np.dtype("<i2")}


def read_safetensors(f: IO[bytes], size: int, path: str
                     ) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    import_safetensors()
    # u64 little-endian length, the JSON header, then the tensors' bytes.
    if size < 8:
        raise ValueError("too short for a safetensors header")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8 or n > SAFETENSORS_HEADER_LIMIT:
        raise ValueError(f"header claims {n} bytes but the file has {size - 8} after it")
    head = json.loads(read_exactly(f, n, "the header").decode("utf-8"))
    if not isinstance(head, dict):
        raise ValueError("safetensors header is not a JSON object")
    metadata = head.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("safetensors metadata is not a mapping of strings")
    header = {k: v for k, v in metadata.items() if k in JSON_KEYS}
    specs = expected_arrays(path, header)       # a file of another tool stops here
    unknown = sorted(set(metadata) - set(JSON_KEYS) - {DIGEST_KEY})
    if unknown:
        raise Corrupt(f"'{path}': unknown metadata keys {unknown}")
    check_names(path, specs, list(head))
    data_size = size - 8 - n
    spans = []
    for key, entry in head.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"tensor {key!r}: malformed entry {entry!r}")
        dtype = ST_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
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
    data = read_exactly(f, data_size, "the tensor data")
    arrays = {key: np.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize,
                                 offset=start).reshape(shape)
              for start, end, key, dtype, shape in spans}
    claimed = metadata.get(DIGEST_KEY)
    if claimed is None:
        warnings.warn(f"'{path}' carries no {DIGEST_KEY!r} entry (written by an older aiva_cy "
                      f"or another tool): its contents cannot be verified", UserWarning,
                      stacklevel=4)
    elif claimed != digest(arrays, header):
        raise Corrupt(f"'{path}': the contents do not match the file's checksum "
                      f"({DIGEST_KEY}): the file is corrupt")
    return arrays, header
