"""What an aiva_cy checkpoint is: its names, its JSON entries, its checksum, and what each
entry and array must be for a given config.

The writer (:func:`aiva_cy.io.save`) lays a :class:`aiva_cy._model.Snapshot` out with
:func:`collect`; the hardened readers (:mod:`aiva_cy._readers`) check every name and header
against :func:`expected_arrays` before they read any data.  The layout is described in
:mod:`aiva_cy.io`'s docstring.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any, Dict, Mapping, Tuple, Union

import numpy as np

from aiva_cy._checks import adam_betas, adam_value, int_arg
from aiva_cy._model import INDEX_LIMIT, PARAM_NAMES, Snapshot, check_config, param_shapes, sizes

FORMAT_NAME = "aiva_cy"
#: The newest format version this module writes and reads.
FORMAT_VERSION = 1
SUFFIXES = (".npz", ".safetensors")

PathLike = Union[str, "os.PathLike[str]"]

FORMAT_KEY = "__format__"
CONFIG_KEY = "__config__"
OPTIMIZER_KEY = "__optimizer__"
JSON_KEYS = (FORMAT_KEY, CONFIG_KEY, OPTIMIZER_KEY)
DIGEST_KEY = "__sha256__"    # safetensors only: npz members carry their own CRC
STATE_KEY = "state.refractory_left"
MOMENTS = ("exp_avg", "exp_avg_sq")


def moment_key(moment: str, param: str) -> str:
    return f"optimizer.{moment}.{param}"


# ---------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------
def path_and_kind(path: Any) -> Tuple[str, str]:
    """(path as str, "npz" or "safetensors"); the suffix alone decides the format."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    path = os.fsdecode(os.fspath(path))
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"'{path}': unsupported file suffix {suffix or '(none)'!r}; "
                         f"use one of {', '.join(SUFFIXES)}")
    return path, suffix[1:]


def import_safetensors() -> Any:
    try:
        import safetensors.numpy
    except ImportError as exc:
        raise ImportError("reading or writing .safetensors files needs the safetensors package: "
                          "pip install safetensors (or save as .npz)") from exc
    return safetensors.numpy


def digest(arrays: Mapping[str, np.ndarray], header: Mapping[str, str]) -> str:
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


# ---------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------
def dump_json(obj: Any) -> str:
    # allow_nan=False: a non-finite hyper-parameter would write a file no JSON reader accepts.
    try:
        return json.dumps(obj, allow_nan=False, sort_keys=True)
    except ValueError:   # "Out of range float values are not JSON compliant"
        raise ValueError(f"cannot save: a setting is NaN or infinite ({obj!r}); a "
                         f"checkpoint holds finite values only") from None


def collect(snapshot: Snapshot) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Everything a checkpoint of ``snapshot`` holds: arrays by key, and the JSON entries
    as strings (the optimizer's only if the snapshot has it)."""
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in snapshot.weights.items()}
    if snapshot.state is not None:
        arrays[STATE_KEY] = np.ascontiguousarray(snapshot.state, dtype=np.int32)
    header = {FORMAT_KEY: dump_json({"format": FORMAT_NAME, "version": FORMAT_VERSION}),
              CONFIG_KEY: dump_json(snapshot.config)}
    opt = snapshot.optimizer
    if opt is not None:
        header[OPTIMIZER_KEY] = dump_json({
            "lr": float(opt["lr"]), "betas": [float(b) for b in opt["betas"]],
            "eps": float(opt["eps"]), "weight_decay": float(opt["weight_decay"]),
            "step": int(opt["step"])})
        for moment in MOMENTS:
            for k in PARAM_NAMES:
                arrays[moment_key(moment, k)] = np.ascontiguousarray(opt[moment][k],
                                                                     dtype=np.float32)
    return arrays, header


# ---------------------------------------------------------------------------------------
# what a checkpoint must hold
# ---------------------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A file that is not an aiva_cy checkpoint, or a damaged one (truncated, a wrong
    checksum, entries of the wrong shape or kind, an unknown format version).  A
    ValueError, so code that catches ValueError keeps working; its message names the path."""


CheckpointError.__module__ = "aiva_cy"    # the name users see and catch: aiva_cy.CheckpointError
#: The readers' internal name for it.
Corrupt = CheckpointError


def parse_json(path: str, header: Mapping[str, str], key: str) -> Any:
    try:
        # parse_constant: refuse NaN/Infinity, which no valid checkpoint contains.
        return json.loads(header[key], parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise Corrupt(f"'{path}': entry {key!r} is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def check_format(path: str, header: Mapping[str, str]) -> None:
    if FORMAT_KEY not in header:
        raise Corrupt(f"'{path}' is not an aiva_cy checkpoint (no {FORMAT_KEY!r} entry); "
                      f"it may have been written by another tool")
    fmt = parse_json(path, header, FORMAT_KEY)
    if not isinstance(fmt, dict) or fmt.get("format") != FORMAT_NAME:
        raise Corrupt(f"'{path}' is not an aiva_cy checkpoint ({FORMAT_KEY!r} is {fmt!r})")
    version = fmt.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise Corrupt(f"'{path}': invalid aiva_cy format version {version!r}")
    if version > FORMAT_VERSION:
        raise Corrupt(f"'{path}' has aiva_cy format version {version}; this aiva_cy reads "
                      f"version {FORMAT_VERSION} and older: upgrade aiva_cy to load it")
    unknown = sorted(set(fmt) - {"format", "version"})
    if unknown:
        raise Corrupt(f"'{path}': {FORMAT_KEY!r} has unknown keys {unknown}")


OPTIMIZER_FIELDS = ("lr", "betas", "eps", "weight_decay", "step")


def checked_config(path: str, header: Mapping[str, str]) -> Dict[str, Any]:
    if CONFIG_KEY not in header:
        raise Corrupt(f"'{path}': the {CONFIG_KEY!r} entry is missing")
    config = parse_json(path, header, CONFIG_KEY)
    if not isinstance(config, dict):
        raise Corrupt(f"'{path}': {CONFIG_KEY!r} must be a JSON object, got {config!r}")
    try:
        return check_config(config, exact=True)
    except (TypeError, ValueError) as exc:
        raise Corrupt(f"'{path}': {CONFIG_KEY!r}: {exc}") from None


def optimizer_header(path: str, header: Mapping[str, str]) -> Tuple[Dict[str, Any], int]:
    """(constructor keywords lr/betas/eps/weight_decay, step), every value checked."""
    opt = parse_json(path, header, OPTIMIZER_KEY)
    if not isinstance(opt, dict):
        raise Corrupt(f"'{path}': {OPTIMIZER_KEY!r} must be a JSON object, got {opt!r}")
    missing = [k for k in OPTIMIZER_FIELDS if k not in opt]
    unknown = sorted(k for k in opt if k not in OPTIMIZER_FIELDS)
    if missing or unknown:
        raise Corrupt(f"'{path}': {OPTIMIZER_KEY!r} lacks {missing}" if not unknown else
                      f"'{path}': {OPTIMIZER_KEY!r} must hold exactly the keys "
                      f"{list(OPTIMIZER_FIELDS)}: missing {missing}, unknown {unknown}")
    try:
        step = int_arg("optimizer step", opt["step"], 0, 2**62)
        if not isinstance(opt["betas"], list):
            raise ValueError(f"optimizer betas must be a pair, got {opt['betas']!r}")
        args = {"lr": adam_value("lr", opt["lr"]), "betas": adam_betas(opt["betas"]),
                "eps": adam_value("eps", opt["eps"]),
                "weight_decay": adam_value("weight_decay", opt["weight_decay"])}
    except (TypeError, ValueError) as exc:
        raise Corrupt(f"'{path}': {OPTIMIZER_KEY!r}: {exc}") from None
    return args, step


class Spec:
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
            raise Corrupt(f"'{path}': array {key!r} must be {word}, got {dtype}")
        if self.max_rows:
            ok = len(shape) == 2 and shape[1] == self.shape[1] and 1 <= shape[0] <= self.max_rows
            want = f"(batch <= {self.max_rows}, {self.shape[1]})"
        else:
            ok, want = shape == self.shape, str(self.shape)
        if not ok:
            raise Corrupt(f"'{path}': array {key!r} must have shape {want} for the stored "
                          f"config, got {shape}")


def expected_arrays(path: str, header: Mapping[str, str]) -> Dict[str, Spec]:
    """Every array the checkpoint described by ``header`` may hold, with its spec."""
    check_format(path, header)
    c = checked_config(path, header)
    shapes = param_shapes(*sizes(c))
    specs = {k: Spec("f", shapes[k]) for k in PARAM_NAMES}
    if OPTIMIZER_KEY in header:
        optimizer_header(path, header)
        specs.update({moment_key(m, k): Spec("f", shapes[k]) for m in MOMENTS
                      for k in PARAM_NAMES})
    # The state is what a forward at some batch left; the engine takes at most this many
    # rows in one call.
    rows = max(1, INDEX_LIMIT // max(c["hidden_size"], c["spiking_size"]))
    specs[STATE_KEY] = Spec("iu", (0, c["spiking_size"]), max_rows=rows)
    return specs


def check_names(path: str, specs: Mapping[str, Spec], names: Any) -> None:
    required = [k for k in specs if k != STATE_KEY]
    missing = [k for k in required if k not in names]
    unexpected = sorted(str(k) for k in names if k not in specs)
    if missing or unexpected:
        raise Corrupt(f"'{path}': arrays do not match an aiva_cy checkpoint: missing "
                      f"{missing}, unexpected {unexpected}")


def finite(path: str, key: str, arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise Corrupt(f"'{path}': array {key!r} contains NaN or Inf")
    return arr


