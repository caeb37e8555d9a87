"""Saving and loading AIVANet checkpoints (and, under its old name, the BioNeuron import).

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

``AIVANet.save`` / ``AIVANet.load`` call the functions here.  The parts live beside it:
:mod:`aiva_cy._format` (names, checksum, what each entry must be), :mod:`aiva_cy._readers`
(the hardened readers), :mod:`aiva_cy._atomic` (atomic writes) and :mod:`aiva_cy._bioneuron`
(``from_bioneuron``, re-exported here).
"""

from __future__ import annotations

import os  # noqa: F401  (aiva_cy.io.os: tests patch os functions through it)
from typing import IO, TYPE_CHECKING, Any, Dict, Mapping, Optional, Type, Union

import numpy as np

from aiva_cy._atomic import atomic_write, check_resolved_suffix
from aiva_cy._bioneuron import bio_matrix as _bio_matrix  # noqa: F401  (its old name)
from aiva_cy._bioneuron import from_bioneuron
from aiva_cy._format import (DIGEST_KEY, FORMAT_NAME, FORMAT_VERSION, MOMENTS, OPTIMIZER_KEY,
                             STATE_KEY, SUFFIXES, Corrupt, PathLike, checked_config, collect,
                             digest, finite, import_safetensors, moment_key, optimizer_header,
                             path_and_kind)
from aiva_cy._model import PARAM_NAMES, Snapshot
from aiva_cy._readers import open_regular, read_npz, read_safetensors

if TYPE_CHECKING:  # only for annotations: net.py imports this module lazily
    from aiva_cy.net import AIVANet

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "SUFFIXES", "save", "load", "from_bioneuron"]


# ---------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------
def _write_npz(f: IO[bytes], arrays: Mapping[str, np.ndarray], header: Mapping[str, str]) -> None:
    # The JSON goes in as 0-d unicode arrays: np.load reads those without pickle.
    entries: Dict[str, np.ndarray] = {k: np.array(v) for k, v in header.items()}
    entries.update(arrays)
    # No allow_pickle=: NumPy before 2.2 stores that keyword as one more array named
    # "allow_pickle". Nothing here is an object array, so no pickle is written anyway.
    np.savez(f, **entries)  # type: ignore[arg-type]  # (numpy's stub types **kwds as bool)


def save(source: Union[Snapshot, "AIVANet"], path: PathLike, *,
         include_optimizer: bool = True) -> None:
    """Write a net to ``path`` (``.npz`` or ``.safetensors``), atomically.

    ``source`` is a :class:`aiva_cy._model.Snapshot` (what ``AIVANet.save`` passes: one
    training step, taken under the net's lock) or an AIVANet (which then takes its own).
    The file holds the weights, the config, the format version, the refractory state (when
    not empty) and, with ``include_optimizer``, Adam's hyper-parameters, step and moments.
    """
    if not isinstance(source, Snapshot):
        source.save(path, include_optimizer=include_optimizer)
        return
    path, kind = path_and_kind(path)
    check_resolved_suffix(path, f"a .{kind} file")
    # Checked before anything is written: a missing package must not leave a temp file.
    st = import_safetensors() if kind == "safetensors" else None
    if not include_optimizer:
        source = source._replace(optimizer=None)
    arrays, header = collect(source)
    if st is None:
        atomic_write(path, lambda f: _write_npz(f, arrays, header))
    else:
        payload = st.save(arrays, metadata={**header, DIGEST_KEY: digest(arrays, header)})

        def write_payload(f: IO[bytes]) -> None:
            f.write(payload)

        atomic_write(path, write_payload)


# ---------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------
def load(cls: Type["AIVANet"], path: PathLike, *, device: str = "cpu",
         precision: Optional[str] = None) -> "AIVANet":
    """Read a checkpoint written by :func:`save`; every error names the path and the problem.
    ``precision`` (one of AIVANet's precisions) overrides the one saved in the config.

    Raises FileNotFoundError for a missing file, aiva_cy.CheckpointError (a ValueError) for anything that is not a
    complete, valid aiva_cy checkpoint of a version this module reads (a directory, FIFO or
    device included), ImportError for a ``.safetensors`` file without the safetensors
    package.  A ``.safetensors`` file without a checksum loads with a UserWarning.
    """
    path, kind = path_and_kind(path)
    if kind == "safetensors":
        import_safetensors()
    try:
        f, size = open_regular(path)
    except ValueError as exc:      # a directory, FIFO, device: not a checkpoint file
        raise Corrupt(str(exc)) from None
    with f:
        if size == 0:
            raise Corrupt(f"'{path}' is empty")
        try:
            arrays, header = (read_npz if kind == "npz" else read_safetensors)(f, size, path)
        except (MemoryError, Corrupt):
            raise                  # a real shortage, or a message that already names the path
        except Exception as exc:   # third-party parsers on untrusted bytes raise many types
            raise Corrupt(f"'{path}' is not a readable .{kind} checkpoint; it may be "
                          f"truncated, corrupt or written by another tool "
                          f"({type(exc).__name__}: {exc})") from exc
    return _build(cls, path, arrays, header, device, precision)


def _build(cls: Type["AIVANet"], path: str, arrays: Dict[str, np.ndarray],
           header: Mapping[str, str], device: str, precision: Optional[str] = None) -> "AIVANet":
    config = checked_config(path, header)
    weights = {k: finite(path, k, arrays[k]) for k in PARAM_NAMES}
    opt_args: Dict[str, Any] = {}
    opt_state: Optional[Dict[str, Any]] = None
    if OPTIMIZER_KEY in header:
        opt_args, step = optimizer_header(path, header)
        opt_state = {"step": step, **opt_args}
        for moment in MOMENTS:
            opt_state[moment] = {k: finite(path, moment_key(moment, k),
                                           arrays[moment_key(moment, k)])
                                 for k in PARAM_NAMES}
    try:
        if precision is not None:
            config["precision"] = precision
        net = cls(**config, **opt_args, seed=0)
        net.load_state_dict(weights)
        net.set_state(arrays.get(STATE_KEY))
        if opt_state is not None:
            net.optimizer.load_state_dict(opt_state)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"'{path}': invalid checkpoint contents: {exc}") from None
    return net.to(device)
