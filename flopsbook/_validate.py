"""Argument checks shared by every formula: one calling convention for the whole package.

Formulas accept Python numbers or numpy arrays and broadcast. Bad input must fail early with a
``ValueError`` that names the argument, so a reader never sees a NaN, a TypeError or a numpy
traceback. The convention (every public function, tested in ``tests/test_convention.py``):

- a model argument is a ``Transformer`` or a registry name (``as_spec``);
- a hardware argument is a ``Hardware`` or a registry name (``as_hardware``); a peak FLOP/s
  argument also takes one (``as_peak``: its 16-bit peak, or the ``dtype`` given);
- a scalar text quantity ("15T", "128k", "80GB", "3.35 TB/s") is read where a number is, for a
  single value only: a list of strings stays an error. The argument's ``kind`` says how: a
  registry name first (a model's parameter count, a device's memory, bandwidth or peak), then
  the text is parsed as a count, bytes, bytes/s or FLOP/s.
"""

from __future__ import annotations

import numbers

import numpy as np

# What a text argument means, by kind: the parser in flopsbook.units and, where a registry name
# makes sense, what the name stands for.
# "active_params" is the N of C = 6ND: a model stands for the parameters one token uses (all of
# them for a dense model, the active ones for a mixture of experts); "params" for all of them.
KINDS = ("count", "params", "active_params", "bytes", "rate", "flop_rate")
_PARAM_KINDS = ("params", "active_params")


def shown(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a 400-digit int must not fill the screen."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + " ...>"


def _text(name: str, value: str, kind: str) -> float:
    from . import units
    from .registry import _HARDWARE, _MODELS

    key = value.strip()
    if kind in _PARAM_KINDS and key in _MODELS:
        from .spec import param_count
        return float(param_count(_MODELS[key], active=kind == "active_params"))
    if key in _HARDWARE and kind in ("bytes", "rate", "flop_rate"):
        h = _HARDWARE[key]
        return {"bytes": h.memory_bytes, "rate": h.bandwidth, "flop_rate": h.peak_16bit}[kind]
    parse = {"count": units.parse_quantity, "params": units.parse_quantity,
             "active_params": units.parse_quantity,
             "bytes": units.parse_bytes, "rate": units.parse_rate,
             "flop_rate": units.parse_flop_rate}[kind]
    try:
        return parse(key)
    except ValueError as err:
        # A word that is no quantity was probably a misspelt model or accelerator name.
        from .registry import closest_names

        table = _MODELS if kind in _PARAM_KINDS else _HARDWARE if kind != "count" else {}
        close = closest_names(key, sorted(table)) if table and key[:1].isalpha() else []
        what = "model" if kind in _PARAM_KINDS else "hardware"
        hint = f" (or a {what} name; closest: {', '.join(close)})" if close else ""
        raise ValueError(f"{name}: {err}{hint}") from None


def _numeric(name: str, value, kind: str | None) -> np.ndarray:
    """``value`` as a float64 array, refusing anything that is not a real number."""
    if kind is not None and isinstance(value, str):
        return np.asarray(_text(name, value, kind))
    if kind in _PARAM_KINDS:
        from .spec import Transformer, param_count
        if isinstance(value, Transformer):
            return np.asarray(float(param_count(value, active=kind == "active_params")))
    what = "a number or an array of numbers"
    if kind is not None:
        what += " (or one text quantity such as " + {
            "count": "'15T' or '128k'", "params": "'7B' or a model name",
            "active_params": "'7B' or a model name",
            "bytes": "'80GB' or '80GiB'", "rate": "'3.35 TB/s'",
            "flop_rate": "'989 TFLOP/s' or a hardware name"}[kind] + ")"
    if value is None or isinstance(value, (bool, np.bool_, str, bytes, dict, set)):
        raise ValueError(f"{name} must be {what}, got {shown(value)}")
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be {what}, got {shown(value)}") from None
    if raw.dtype.kind in "iuf":
        return np.asarray(raw, dtype=np.float64)  # no copy when it is float64 already
    if raw.dtype.kind == "O":  # Python ints beyond int64, or a ragged/mixed list
        flat = raw.ravel().tolist()
        if all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
               for v in flat):
            try:
                return np.asarray(raw, dtype=np.float64)
            except OverflowError:
                raise ValueError(f"{name} is too large to be a float64 (max about 1.8e308), "
                                 f"got {shown(value)}") from None
            except (TypeError, ValueError):
                pass
    raise ValueError(f"{name} must be {what}, got {shown(value)}")


def as_array(name: str, value, *, allow_zero: bool = False, integer: bool = False,
             upper: float | None = None, kind: str | None = None) -> np.ndarray:
    """Return ``value`` as a float64 array after checking every element.

    Elements must be real numbers (no strings, booleans or complex numbers, in arrays either),
    finite and positive (or non-negative with ``allow_zero``), whole numbers with ``integer``,
    and at most ``upper`` when given. With ``kind`` (one of ``KINDS``) a single string is read
    as that kind of quantity.
    """
    arr = _numeric(name, value, kind)
    whole = isinstance(value, np.ndarray) and value.dtype.kind in "iu"  # skip the floor test
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {shown(value)}")
    bad = (arr < 0) if allow_zero else (arr <= 0)
    if bad.any():
        first = arr[bad].flat[0] if arr.ndim else arr
        allowed = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {allowed}, got {float(first):g}")
    if integer and not whole and (arr != np.floor(arr)).any():
        raise ValueError(f"{name} must be a whole number, got {shown(value)}")
    if upper is not None and (arr > upper).any():
        raise ValueError(f"{name} must be <= {upper}, got {shown(value)}")
    return arr


def as_fraction(name: str, value) -> np.ndarray:
    """A utilisation such as MFU: in (0, 1]."""
    return as_array(name, value, upper=1.0)


def result(arr, *, allow_inf: bool = False):
    """0-d results come back as numpy float64 scalars (a ``float``), others as arrays.

    A result beyond float64 (inputs near 1e308 multiplied together) is a ``ValueError``, not an
    ``inf`` that turns into NaN downstream; ``allow_inf`` is for formulas whose ``inf`` means
    something (an unreachable loss needs infinitely many tokens).
    """
    arr = np.asarray(arr, dtype=np.float64)
    bad = np.isnan(arr) if allow_inf else ~np.isfinite(arr)
    if bad.any():
        raise ValueError("the result overflows float64 (about 1.8e308): the inputs are too "
                         "large for this formula; check their magnitudes and units")
    return arr[()] if arr.ndim == 0 else arr


def positive_int(name: str, value) -> int:
    """A single size (layers, widths, heads): a positive Python or numpy integer."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a positive int, got {shown(value)}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {shown(value)}")
    return int(value)


def nonnegative_int(name: str, value) -> int:
    """A single count that may be zero (shared experts, dense layers): an int >= 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {shown(value)}")
    return int(value)


def as_bool(name: str, value) -> bool:
    """A switch such as ``causal``: True or False (numpy booleans too), nothing truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {shown(value)}")
    return bool(value)


def choice(name: str, value, allowed):
    """``value`` if it is one of ``allowed`` (compared by type too: True is not 1)."""
    def same(a):
        if isinstance(value, (bool, np.bool_)) != isinstance(a, bool):
            return False
        if isinstance(a, str):
            return isinstance(value, str) and value == a
        return isinstance(value, numbers.Integral) and value == a

    hits = [a for a in allowed if same(a)]
    if not hits:
        options = " | ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {options}, got {shown(value)}")
    return hits[0]


def _entry(value, name: str, kind: str, cls, table: dict):
    """``value`` itself if it is a ``cls``, else the registry entry of that name."""
    from .registry import _lookup

    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        return _lookup(kind, value, table, name)
    raise ValueError(f"{name} must be a {cls.__name__} or a {kind} name (one of "
                     f"{', '.join(table)}), got {shown(value)}")


def as_spec(m, name: str = "m"):
    """A ``Transformer``, or the registry model of that name."""
    from .registry import _MODELS
    from .spec import Transformer

    return _entry(m, name, "model", Transformer, _MODELS)


def as_hardware(hardware, name: str = "hardware"):
    """A ``Hardware``, or the registry accelerator of that name."""
    from .registry import _HARDWARE, Hardware

    return _entry(hardware, name, "hardware", Hardware, _HARDWARE)


def as_peak(name: str, value, dtype=None) -> np.ndarray:
    """Peak FLOP/s: a number (array), a text rate, or a ``Hardware``/name, whose 16-bit peak
    (``Hardware.peak_16bit``) or ``dtype`` peak is taken."""
    from .registry import _HARDWARE, Hardware

    if isinstance(value, Hardware) or (isinstance(value, str) and value.strip() in _HARDWARE):
        h = as_hardware(value, name)
        return np.asarray(h.peak_16bit if dtype is None else h.peak(dtype))
    if dtype is not None:
        raise ValueError(f"dtype={dtype!r} chooses a peak of a Hardware; {name} is a number "
                         "here: pass the Hardware (or its name) instead, or leave dtype out")
    return as_array(name, value, kind="flop_rate")


def as_bandwidth(name: str, value) -> np.ndarray:
    """Bytes/s: a number (array), a text rate ("3.35 TB/s"), or a ``Hardware``/name, whose
    HBM ``bandwidth`` is taken."""
    from .registry import Hardware

    if isinstance(value, Hardware):
        return np.asarray(value.bandwidth)
    return as_array(name, value, kind="rate")


def formula(fn):
    """Decorator of every public numeric function: numpy's overflow warnings stay quiet (a
    result beyond float64 is refused by ``result()`` with a clear message instead), and arrays
    that cannot broadcast together are a ``ValueError`` naming the arguments and their shapes,
    not numpy's "operands could not be broadcast"."""
    import functools
    import inspect

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return fn(*args, **kwargs)
        except ValueError as err:
            # numpy's own wording only: "broadcast" is also a collective's name.
            if not ("could not be broadcast" in str(err) or "cannot be broadcast" in str(err)):
                raise
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                raise err from None
            shapes = {k: np.shape(v) for k, v in bound.arguments.items()
                      if isinstance(v, (list, tuple, np.ndarray)) and np.ndim(v) > 0}
            listed = ", ".join(f"{k} {s}" for k, s in shapes.items())
            raise ValueError(f"{fn.__name__}: the array arguments do not broadcast together "
                             f"({listed}); give them compatible shapes") from None

    return wrapper
