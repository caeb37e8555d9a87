"""The model's facts, each written once: the config and its checks, the parameters and their
shapes, the precisions, the limits, and the errors both engines raise.

Every other module imports these instead of spelling them again: the constructor, the
checkpoint reader and unpickling check a config with :func:`check_config`; the weight
initialiser, the engines, ``load_state_dict`` and the checkpoint reader take shapes from
:func:`param_shapes`; both engines word their errors with :func:`engine_error`.

Imports run one way: this module imports only :mod:`aiva_cy._checks` (and NumPy), so the
compiled engine can import it too.  The C core keeps its own copies of the numbers it needs
(``AIVA_GRAD_LIMIT`` and the ``AIVA_ERR_*`` codes of ``src_c/aiva_core.h``); the test of the
engine contract checks them equal to the ones here.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from aiva_cy._checks import float_arg, int_arg, labels_accepted, numeric_array

# ---------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------
#: The state_dict keys, in the order every list of parameters (engine, optimizer) uses.
PARAM_NAMES = ("fc1.weight", "spiking.weight", "fc2.weight")
#: Whether the CPU engine keeps each weight as (out, in), the transpose of the state_dict's
#: "x @ W" layout (see src_c/aiva_core.h).  The CUDA engine keeps every one as (in, out).
PARAM_TRANSPOSED = (True, True, False)

#: The operands of the matrix products: "bfloat16" rounds them, "int8" (inference) quantizes
#: them, "auto" picks the fastest that keeps decisions here (CPU only: oneDNN's products).
PRECISIONS = ("float32", "bfloat16", "int8", "auto")
PRECISION_CHOICES = "'float32', 'bfloat16', 'int8' or 'auto'"
#: What installs the reduced-precision products (oneDNN).
PRECISION_EXTRA = 'pip install "aiva_cy[precision]"'

# ---------------------------------------------------------------------------------------
# limits
# ---------------------------------------------------------------------------------------
#: A gradient entry at or above this (or NaN) fails a training step: Adam squares it, and
#: 1e18**2 is still finite in float32.  The C core's AIVA_GRAD_LIMIT is the same number.
GRAD_LIMIT = 1e18
#: The C core indexes a step's arrays with 32-bit ints: one unchunked step (training) takes
#: at most INDEX_LIMIT // (the widest layer) rows.
INDEX_LIMIT = 2**30
#: int8: the provider's int32 products are exact while every partial sum of u8 by s8 stays
#: in int32: K * 255 * 127 <= 2**31 - 1, so fc1 and the spiking layer take at most this
#: many inputs.
INT8_MAX_K = (2**31 - 1) // (255 * 127)


def max_train_rows(hidden_size: int, spiking_size: int, num_tools: int) -> int:
    """The most rows one training step of the CPU engine takes."""
    return max(1, INDEX_LIMIT // max(hidden_size, spiking_size, num_tools))


# ---------------------------------------------------------------------------------------
# the config
# ---------------------------------------------------------------------------------------
def check_precision(value: Any, name: str = "precision") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {PRECISION_CHOICES}, got {value!r}")
    if value not in PRECISIONS:
        raise ValueError(f"{name} must be {PRECISION_CHOICES}, got {value!r}")
    return value


def check_tool_names(value: Any, name: str = "tool_names") -> Optional[Tuple[str, ...]]:
    """None, or the tools' names in output order: distinct, non-empty strings.  (Their
    number is checked against num_tools by :func:`check_config`.)"""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a sequence of strings, one per tool, or None; got "
                        f"{value!r}")
    names = tuple(value)
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise TypeError(f"{name} must hold non-empty strings, got {bad[0]!r}")
    if len(set(names)) != len(names):
        seen: set = set()
        dup = next(n for n in names if n in seen or seen.add(n))   # type: ignore[func-returns-value]
        raise ValueError(f"{name} must be distinct, got {dup!r} more than once")
    return names


def decision_names(tool_names: Optional[Tuple[str, ...]], names: Any
                   ) -> Optional[Tuple[str, ...]]:
    """The tool_names a ``decide(..., names=names)`` call answers with, or None for indices:
    the one check of ``names`` behind the net's, the Batcher's and the deployment's decide."""
    if not isinstance(names, (bool, np.bool_)):
        raise TypeError(f"names must be True or False, got {names!r}")
    if names and tool_names is None:
        raise ValueError("decide(names=True) needs the net's tool_names: build it with "
                         "AIVANet(..., tool_names=[...]) or set net.tool_names")
    return tool_names if names else None


def check_device_precision(device: str, precision: str) -> None:
    """The reduced-precision products are oneDNN's, on the CPU: any other device runs
    float32 only."""
    if device != "cpu" and precision != "float32":
        raise NotImplementedError(f"precision={precision!r} runs on the CPU only (oneDNN's "
                                  f"products); device={device!r} needs precision='float32'")


def check_int8_sizes(input_size: int, hidden_size: int) -> None:
    """int8 takes fc1 and spiking layers of at most INT8_MAX_K inputs."""
    if max(input_size, hidden_size) > INT8_MAX_K:
        raise ValueError(f"precision='int8' takes layers of at most {INT8_MAX_K} inputs (int32 "
                         f"accumulation stays exact); this net has input_size={input_size}, "
                         f"hidden_size={hidden_size}")


#: The largest surrogate_slope k.  The backward pass scales a membrane gradient by
#: 1 / (1 + k |v - threshold|)^2 in float32.  Membrane potentials lie within a few units of
#: the threshold (unit-variance fc1 pre-activations, LeCun-initialised weights), so at
#: |v - threshold| = 1 the factor must stay a normal float32: (1 + k)^2 <= 2**126, i.e.
#: k <= 2**63 - 1 (about 9.2e18).  Past 2**64 the square itself overflows to Inf and every
#: fc1 and spiking gradient is exactly zero, silently.
SURROGATE_SLOPE_MAX = float(2**63)


def float32_setting(name: str, value: Any, minimum: float = -math.inf,
                    maximum: float = math.inf) -> float:
    """A real-valued setting the engines hold as float32: finite there, and not a non-zero
    value that rounds to 0 (rounding to the nearest float32 is fine).  Returns the value
    as given (a float)."""
    number = float_arg(name, value, minimum)
    if number > maximum:
        raise ValueError(f"{name} must be at most {maximum:.6g}, got {number!r}")
    with np.errstate(over="ignore", under="ignore"):
        held = np.float32(number)
    if not np.isfinite(held):
        raise ValueError(f"{name} must fit in float32 (at most {FLOAT32_MAX:.6g} in magnitude), "
                         f"got {number!r}, which the engines would hold as {float(held)}")
    if number != 0.0 and held == 0.0:
        raise ValueError(f"{name} must be 0 or at least {FLOAT32_TINY:.3g} in magnitude "
                         f"(float32's smallest), got {number!r}, which float32 holds as 0.0")
    return number


FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).smallest_subnormal)

#: The architecture, in the constructor's order: each key with its check.  Every way a
#: setting enters (constructor, checkpoint, unpickling, set_threshold) goes through these.
CONFIG_CHECKS: Dict[str, Callable[[str, Any], Any]] = {
    "input_size": lambda k, v: int_arg(k, v, 1),
    "num_tools": lambda k, v: int_arg(k, v, 1),
    "hidden_size": lambda k, v: int_arg(k, v, 1),
    "spiking_size": lambda k, v: int_arg(k, v, 1),
    "threshold": lambda k, v: float32_setting(k, v),
    "refractory_period": lambda k, v: int_arg(k, v, 0),
    "surrogate_slope": lambda k, v: float32_setting(k, v, 0.0, SURROGATE_SLOPE_MAX),
    "precision": lambda k, v: check_precision(v, k),
    "tool_names": lambda k, v: check_tool_names(v, k),
}


def check_setting(key: str, value: Any) -> Any:
    """One config entry, checked as :func:`check_config` checks it."""
    return CONFIG_CHECKS[key](key, value)
CONFIG_KEYS = tuple(CONFIG_CHECKS)
#: Keys a config may lack, with the value they then take (checkpoints from before a key).
CONFIG_DEFAULTS: Dict[str, Any] = {"precision": "float32", "tool_names": None}
REQUIRED_CONFIG_KEYS = tuple(k for k in CONFIG_KEYS if k not in CONFIG_DEFAULTS)
SIZE_KEYS = ("input_size", "hidden_size", "spiking_size", "num_tools")


def check_config(config: Mapping[str, Any], *, exact: bool = False) -> Dict[str, Any]:
    """A checked copy of ``config``, in CONFIG_KEYS order, defaults filled in.

    Raises TypeError or ValueError naming the key; a missing key is a ValueError too.
    ``exact``: keys outside CONFIG_KEYS are an error as well (a checkpoint); otherwise they
    are ignored (the constructor and unpickling pass only the keys they have).
    """
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    unknown = sorted(str(k) for k in config if k not in CONFIG_CHECKS)
    if missing or (exact and unknown):
        raise ValueError(f"the config must hold exactly the keys {list(REQUIRED_CONFIG_KEYS)} "
                         f"(and optionally {list(CONFIG_DEFAULTS)}): missing {missing}, "
                         f"unknown {unknown}")
    checked = {k: check(k, config.get(k, CONFIG_DEFAULTS.get(k)))
               for k, check in CONFIG_CHECKS.items()}
    names = checked["tool_names"]
    if names is not None and len(names) != checked["num_tools"]:
        raise ValueError(f"tool_names must name each of the {checked['num_tools']} tools "
                         f"(num_tools), got {len(names)} names")
    return checked


def sizes(config: Mapping[str, Any]) -> Tuple[int, int, int, int]:
    """(input_size, hidden_size, spiking_size, num_tools) of a config."""
    return tuple(int(config[k]) for k in SIZE_KEYS)  # type: ignore[return-value]


def param_shapes(input_size: int, hidden_size: int, spiking_size: int,
                 num_tools: int) -> Dict[str, Tuple[int, int]]:
    """Each parameter's shape in the state_dict's "x @ W" layout: (fan_in, fan_out)."""
    return dict(zip(PARAM_NAMES, ((input_size, hidden_size), (hidden_size, spiking_size),
                                  (spiking_size, num_tools))))


def num_parameters(config: Mapping[str, Any]) -> int:
    """Weights of a net of this config (there are no biases)."""
    return sum(a * b for a, b in param_shapes(*sizes(config)).values())


def init_weights(config: Mapping[str, Any], seed: Optional[int]) -> Dict[str, np.ndarray]:
    """LeCun uniform: U(-a, a) with a = sqrt(3 / fan_in), i.e. variance 1/fan_in.  On N(0, 1)
    inputs fc1's pre-activations then have unit variance, so tanh is neither saturated nor
    linear, and the membrane potential has a standard deviation near 0.6 — about a fifth of
    the spiking layer fires at threshold 0.5.  Uniform rather than normal because drawing
    3.2M uniform floats costs a third of the time, and start-up is measured.

    Drawn in the CPU engine's layout and handed over as transposed views, which that engine
    adopts without a copy."""
    rng = np.random.default_rng(seed)
    out = {}
    for (key, (fan_in, fan_out)), transposed in zip(param_shapes(*sizes(config)).items(),
                                                    PARAM_TRANSPOSED):
        shape = (fan_out, fan_in) if transposed else (fan_in, fan_out)
        w = rng.random(shape, dtype=np.float32)             # U[0, 1)
        a = np.float32(math.sqrt(3.0 / fan_in))
        w *= np.float32(2.0) * a
        w -= a
        out[key] = w.T if transposed else w
    return out


class Snapshot(NamedTuple):
    """One training step's net, on the host: what a checkpoint or a pickle holds.  Taken
    under the net's lock (``AIVANet._snapshot``), so weights, state and optimizer belong
    together; written out afterwards, without the lock."""

    config: Dict[str, Any]                 # the checked config (see check_config)
    weights: Dict[str, np.ndarray]         # PARAM_NAMES -> float32, state_dict layout
    state: Optional[np.ndarray]            # int32 (B, spiking_size), or None: empty
    optimizer: Optional[Dict[str, Any]]    # Adam's state_dict(), or None: not included


# ---------------------------------------------------------------------------------------
# the refractory state
# ---------------------------------------------------------------------------------------
def check_state(state: Any, spiking_size: int, refractory_period: int,
                name: str = "state") -> np.ndarray:
    """A refractory state as int32 (B, spiking_size), C order: integers (integral floats
    allowed, bools not) in [0, refractory_period]."""
    arr = numeric_array(name, state)
    n = spiking_size
    if arr.ndim != 2 or arr.shape[1] != n or arr.shape[0] < 1:
        raise ValueError(f"{name} must have shape (batch >= 1, {n}), got {arr.shape}")
    if arr.dtype.kind == "b":
        raise TypeError(f"{name} must hold integer step counts, got dtype bool")
    r = refractory_period
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise ValueError(f"{name} must hold integers in [0, {r}], got non-integer values")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > r:
        raise ValueError(f"{name} must hold integers in [0, {r}] (refractory_period), got "
                         f"values from {lo} to {hi}")
    return np.array(arr, dtype=np.int32, order="C")


# ---------------------------------------------------------------------------------------
# errors, worded once for both engines
# ---------------------------------------------------------------------------------------
# The C core's codes (src_c/aiva_core.h); the CUDA engine maps its flag bits onto them.
ERR_INPUT_NONFINITE, ERR_OUTPUT_NONFINITE, ERR_LABEL, ERR_GRAD_NONFINITE, ERR_SIZE = 1, 2, 3, 4, 5
#: Finite input whose fc1 product overflows float32 (NaN hidden units, which never spike).
ERR_HIDDEN_NONFINITE = 6
#: The reduced-precision provider failed a product (it could not allocate, mostly).
ERR_PROVIDER = 7
#: A CUDA-only kind: the fused Adam check found the update would not be finite (the CPU
#: optimizer raises its own, more detailed FloatingPointError).
ERR_UPDATE_NONFINITE = 16

ERROR_TEXT = {
    ERR_INPUT_NONFINITE: "{name} contains NaN or Inf (or a value too large for float32)",
    ERR_OUTPUT_NONFINITE: "the logits are not finite: the weights are too large for float32",
    ERR_LABEL: "a label is outside [0, num_tools)",
    ERR_GRAD_NONFINITE: "the loss or a gradient is not finite (or overflows float32)",
    ERR_SIZE: "batch size does not fit the workspace",
    ERR_HIDDEN_NONFINITE: "{name} is too large for these weights: fc1's product overflows "
                          "float32 (the hidden units would be NaN and never spike); scale "
                          "{name} down",
    ERR_PROVIDER: "the reduced-precision provider (oneDNN) failed: {detail}",
    ERR_UPDATE_NONFINITE: "this Adam step would leave a weight or moment that is not finite "
                          "(check lr, eps and weight_decay)",
}
_UNCHANGED = "; the net was left unchanged"


def engine_error(code: int, *, training: bool = False, name: str = "x",
                 detail: str = "") -> Exception:
    """The exception for an engine's error code.  A failed training step is a
    FloatingPointError (and changed nothing); in inference, overflowing logits are reported
    like bad input (ValueError); a failed provider is a MemoryError (``detail``: its words)."""
    text = ERROR_TEXT.get(code, ERROR_TEXT[ERR_SIZE]).format(name=name, detail=detail)
    if code == ERR_PROVIDER:
        return MemoryError(text)
    if code in (ERR_GRAD_NONFINITE, ERR_UPDATE_NONFINITE) or (
            training and code == ERR_OUTPUT_NONFINITE):
        return FloatingPointError(text + _UNCHANGED)
    return ValueError(text)


def label_range_error(name: str, num_tools: int, lo: int, hi: int) -> ValueError:
    return ValueError(f"{labels_accepted(name, num_tools)}, got values from {lo} to {hi}")


def batch_mismatch(batch: int, held: int, name: str = "x") -> ValueError:
    """The error for a call whose batch size differs from the refractory state's."""
    return ValueError(f"{name} has batch size {batch} but the net's refractory state holds "
                      f"{held} streams; call reset_state() first to change the batch size")
