"""Formatting and parsing of counts, bytes, rates and durations.

GB means 1e9 bytes and GiB means 2**30 bytes; every printed figure names its unit. The
parsers read the text quantities that the formulas accept for a single value ("15T", "80GB",
"3.35 TB/s", "989 TFLOP/s"); ``format_count`` and ``format_rate`` print text that
``parse_quantity`` and ``parse_rate`` read back.
"""

from __future__ import annotations

import math
import numbers
import re

from numpy import bool_ as np_bool

from ._validate import as_bool

_SI = [(1e24, "Y"), (1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"),
       (1e6, "M"), (1e3, "k"), (1.0, "")]
_COUNT_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_BYTE_UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "PB": 1e15,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "PIB": 2**50}
_NUMBER = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"


def _finite(name, x) -> float:
    if isinstance(x, (bool, np_bool)) or not isinstance(x, numbers.Real):
        raise ValueError(f"{name} must be a number, got {x!r:.60}")
    try:
        x = float(x)
    except OverflowError:
        raise ValueError(f"{name} must be a finite number >= 0, got a number too large for "
                         "a float") from None
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {x!r:.60}")
    return x


def _digits(digits) -> int:
    if isinstance(digits, (bool, np_bool)) or not isinstance(digits, numbers.Integral) \
            or not 1 <= digits <= 15:
        raise ValueError(f"digits must be a whole number from 1 to 15, got {digits!r:.60}")
    return int(digits)


def _round(x: float, digits: int) -> float:
    """``x`` rounded to ``digits`` significant figures: done before a unit is chosen, so that
    999,999 bytes print as "1 MB", not "1e+03 kB"."""
    return float(f"{x:.{digits}g}") if x else 0.0


def _sig(x: float, digits: int) -> str:
    """``digits`` significant figures without trailing zeros or exponent (for 1 <= x < 1000)."""
    if x >= 1e6:  # beyond the largest unit: a mantissa and an exponent, not 200 digits
        return f"{x:.{digits}g}"
    return f"{x:.{digits}g}" if x < 10**digits else f"{x:.0f}"


def _scaled(x: float, scales, digits: int):
    """(mantissa text, unit) with the largest unit that keeps the rounded mantissa >= 1."""
    for scale, unit in scales:
        if _round(x / scale, digits) >= 1:
            return _sig(_round(x / scale, digits), digits), unit
    scale, unit = scales[-1]
    return f"{_round(x / scale, digits):.{digits}g}", unit


def format_flops(x, *, per_second: bool = False, digits: int = 3) -> str:
    """A FLOP count or rate as text, with its unit.

    3.14e23 -> "3.14e23 FLOPs"; with ``per_second``, 3.12e14 (FLOP/s) -> "312 TFLOP/s" (SI
    prefixes, powers of 1000). Counts below 1e6 are printed in full ("123 FLOPs").

    Args:
        x (float): A FLOP count, or with ``per_second`` a rate in FLOP/s: one finite number
            >= 0 (a Python or numpy scalar, not an array or text).

    Keyword Args:
        per_second (bool): Print ``x`` as a rate in FLOP/s with an SI prefix. Default False.
        digits (int): Significant figures, a whole number from 1 to 15. Default 3.

    Returns:
        str: The text, e.g. ``"3.14e23 FLOPs"`` or ``"312 TFLOP/s"``.

    Raises:
        ValueError: If ``x`` is not a finite number >= 0, ``per_second`` is not True or False,
            or ``digits`` is not a whole number from 1 to 15; the message names the argument.
    """
    x, digits = _finite("x", x), _digits(digits)
    if as_bool("per_second", per_second):
        mantissa, prefix = _scaled(x, _SI, digits)
        return f"{mantissa} {prefix}FLOP/s"
    if _round(x, digits) < 1e6:
        return f"{_sig(_round(x, digits), digits) if x >= 1 else f'{x:.{digits}g}'} FLOPs"
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    return f"{mantissa}e{int(exponent)} FLOPs"


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def power_of_ten(exponent: int) -> str:
    """23 -> "10²³": a power of ten as prose and plot labels write it."""
    return "10" + str(int(exponent)).translate(_SUPERSCRIPT)


def format_sci(x, unit: str = "", *, digits: int = 3) -> str:
    """A number in scientific notation for prose: 5.76e23 -> "5.76 × 10²³".

    With ``unit="FLOPs"`` the unit follows: "5.76 × 10²³ FLOPs".

    Args:
        x (float): One finite number >= 0 (a Python or numpy scalar, not an array or text).
        unit (str): The unit, appended after a space. Default ``""``: none.

    Keyword Args:
        digits (int): Significant figures, a whole number from 1 to 15. Default 3.

    Returns:
        str: The text, e.g. ``"5.76 × 10²³ FLOPs"``.

    Raises:
        ValueError: If ``x`` is not a finite number >= 0, ``unit`` is not a str or ``digits`` is
            not a whole number from 1 to 15; the message names the argument.
    """
    x, digits = _finite("x", x), _digits(digits)
    if not isinstance(unit, str):
        raise ValueError(f"unit must be a str such as 'FLOPs', got {unit!r:.60}")
    mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
    return f"{mantissa} × {power_of_ten(exponent)}" + (f" {unit}" if unit else "")


_COUNT_UNITS = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"), (1.0, "")]


def format_count(x, *, digits: int = 3) -> str:
    """Parameters or tokens with the suffixes ``parse_quantity`` reads: 40.3e9 -> "40.3B".

    The suffixes are K (1e3), M (1e6), B (1e9) and T (1e12); below 1000 there is none.

    Args:
        x (float): A count (parameters, tokens, ...): one finite number >= 0 (a Python or
            numpy scalar, not an array or text).

    Keyword Args:
        digits (int): Significant figures, a whole number from 1 to 15. Default 3.

    Returns:
        str: The text, e.g. ``"40.3B"``.

    Raises:
        ValueError: If ``x`` is not a finite number >= 0, or ``digits`` is not a whole number
            from 1 to 15; the message names the argument.
    """
    x, digits = _finite("x", x), _digits(digits)
    mantissa, suffix = _scaled(x, _COUNT_UNITS, digits)
    return f"{mantissa}{suffix}" if x >= 1 else f"{x:.{digits}g}"


def format_bytes(x, binary: bool = False, *, digits: int = 3) -> str:
    """Bytes with a decimal (GB = 1e9) or, with ``binary``, a binary (GiB = 2**30) unit.

    Decimal units are B, kB, MB, GB, TB and PB; binary ones B, KiB, MiB, GiB, TiB and PiB.

    Args:
        x (float): A size in bytes: one finite number >= 0 (a Python or numpy scalar, not an
            array or text).
        binary (bool): Use powers of 1024 (KiB, MiB, GiB, ...) instead of powers of 1000.
            Default False.

    Keyword Args:
        digits (int): Significant figures, a whole number from 1 to 15. Default 3.

    Returns:
        str: The text, e.g. ``"80 GB"``, or ``"80 GiB"`` with ``binary``.

    Raises:
        ValueError: If ``x`` is not a finite number >= 0, ``binary`` is not True or False, or
            ``digits`` is not a whole number from 1 to 15; the message names the argument.
    """
    x, digits = _finite("x", x), _digits(digits)
    base, names = (1024.0, ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]) \
        if as_bool("binary", binary) else (1000.0, ["B", "kB", "MB", "GB", "TB", "PB"])
    scales = [(base**i, u) for i, u in reversed(list(enumerate(names)))]
    if _round(x, digits) < base:
        return f"{x:.0f} B" if x >= 1 or x == 0 else f"{x:.{digits}g} B"
    mantissa, unit = _scaled(x, scales, digits)
    return f"{mantissa} {unit}"


def format_rate(x, *, digits: int = 3) -> str:
    """Bytes per second with SI prefixes: 3.35e12 -> "3.35 TB/s" (what ``parse_rate`` reads).

    Args:
        x (float): A bandwidth in bytes/s: one finite number >= 0 (a Python or numpy scalar,
            not an array or text).

    Keyword Args:
        digits (int): Significant figures, a whole number from 1 to 15. Default 3.

    Returns:
        str: The text, e.g. ``"3.35 TB/s"``.

    Raises:
        ValueError: If ``x`` is not a finite number >= 0, or ``digits`` is not a whole number
            from 1 to 15; the message names the argument.
    """
    x, digits = _finite("x", x), _digits(digits)
    mantissa, prefix = _scaled(x, _SI, digits)
    return f"{mantissa} {prefix}B/s"


_DURATIONS = [(365.25 * 86400, "years"), (86400, "days"), (3600, "h"), (60, "min"), (1, "s"),
              (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")]


def format_duration(seconds, *, digits: int = 3) -> str:
    """Seconds in the largest unit that keeps the rounded number >= 1.

    1.16e6 -> "13.4 days", 59.9996 -> "1 min". The units are years (of 365.25 days), days, h,
    min, s, ms, µs and ns; 0 is "0 s".

    Args:
        seconds (float): A duration in seconds: one finite number >= 0 (a Python or numpy
            scalar, not an array or text).

    Keyword Args:
        digits (int): Significant figures, a whole number from 1 to 15. Default 3.

    Returns:
        str: The text, e.g. ``"13.4 days"``.

    Raises:
        ValueError: If ``seconds`` is not a finite number >= 0, or ``digits`` is not a whole
            number from 1 to 15; the message names the argument.
    """
    s, digits = _finite("seconds", seconds), _digits(digits)
    if s == 0:
        return "0 s"
    mantissa, unit = _scaled(s, _DURATIONS, digits)
    return f"{mantissa} {unit}"


def _str(text, example: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"text must be a str such as {example}, got {text!r:.60}")
    return text.strip()


def parse_quantity(text) -> float:
    """A count such as "175B", "1.4T", "6.7e9" or "82 B" -> float (K, M, B/G, T suffixes).

    The suffixes are powers of 1000, in either case: K = 1e3, M = 1e6, B or G = 1e9, T = 1e12.

    Args:
        text (str | float): The count as text; a Python number (int or float) is returned as a
            float.

    Returns:
        float: The count.

    Raises:
        ValueError: If ``text`` is neither a str nor a number, cannot be read as a count, or is
            negative or not finite; the message names it and shows what it accepts.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return _finite("text", text)
    m = re.fullmatch(_NUMBER + r"\s*([a-zA-Z]?)", _str(text, "'175B'"))
    if not m or m.group(2).upper() not in _COUNT_SUFFIX:
        raise ValueError(f"cannot read {text!r:.60} as a count: write a number with an optional "
                         f"suffix K, M, B (or G) or T, e.g. '175B' or '1.4T'")
    return _finite("text", float(m.group(1)) * _COUNT_SUFFIX[m.group(2).upper()])


def parse_bytes(text) -> float:
    """A size such as "80GiB", "141 GB", "512MiB" or "2TB" -> bytes (GB = 1e9, GiB = 2**30).

    The unit is required and may be written in either case: B, kB, MB, GB, TB, PB (powers of
    1000) or KiB, MiB, GiB, TiB, PiB (powers of 1024).

    Args:
        text (str): The size as text.

    Returns:
        float: The size in bytes.

    Raises:
        ValueError: If ``text`` is not a str, cannot be read as a size, or is negative or not
            finite; the message names it and lists the units.
    """
    m = re.fullmatch(_NUMBER + r"\s*([a-zA-Z]+)", _str(text, "'80GiB'"))
    _not_bits(text, m.group(2) if m else "")
    if not m or m.group(2).upper() not in _BYTE_UNITS:
        raise ValueError(f"cannot read {text!r:.60} as a size: write a number and a unit, one of "
                         "B, kB, MB, GB, TB, PB (powers of 1000) or KiB, MiB, GiB, TiB, PiB "
                         "(powers of 1024)")
    return _finite("text", float(m.group(1)) * _BYTE_UNITS[m.group(2).upper()])


def _not_bits(text, unit: str) -> None:
    # "400 Gb/s" is a network's gigabits; read as bytes it would be 8x too fast.
    if unit.endswith("b") and not unit.endswith("ib"):
        raise ValueError(f"cannot read {text!r:.60}: a lowercase b means bits; write B for bytes "
                         "(e.g. '80GB', '50 GB/s'), or divide a bit rate by 8")


def _per_second(text, what: str, units: dict, example: str) -> float:
    # "/s", "ps", or FLOPS with the S doing the work ("989 TFLOPS", the datasheets' spelling)
    m = re.fullmatch(_NUMBER + r"\s*([a-zA-Z]*?)\s*(?:/\s*s|ps|(?<=FLOP)S)", _str(text, example))
    unit = m.group(2).upper() if m else None
    if what == "a bandwidth":
        _not_bits(text, m.group(2) if m else "")
    if unit not in units:
        raise ValueError(f"cannot read {text!r:.60} as {what}: write a number and a unit per "
                         f"second, e.g. {example}")
    return _finite("text", float(m.group(1)) * units[unit])


_SI_PREFIX = {p.upper(): s for s, p in _SI}
_RATE_UNITS = {f"{prefix}B": scale for prefix, scale in _SI_PREFIX.items()} | {
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_FLOP_RATE_UNITS = {f"{prefix}FLOP": scale for prefix, scale in _SI_PREFIX.items()} | {
    f"{prefix}FLOPS": scale for prefix, scale in _SI_PREFIX.items()}


def parse_rate(text) -> float:
    """A bandwidth such as "3.35 TB/s", "900GB/s" or "50 GiB/s" -> bytes per second.

    Units: B/s with an SI prefix (kB/s, MB/s, GB/s, TB/s, ..., powers of 1000) or KiB/s, MiB/s,
    GiB/s, TiB/s (powers of 1024); the unit before "/s" may be written in either case, and "ps"
    may replace "/s" ("900 GBps").

    Args:
        text (str): The bandwidth as text.

    Returns:
        float: The bandwidth in bytes/s.

    Raises:
        ValueError: If ``text`` is not a str, cannot be read as a bandwidth, or is negative or
            not finite; the message names it and shows an example.
    """
    return _per_second(text, "a bandwidth", _RATE_UNITS, "'3.35 TB/s' or '900 GB/s'")


def parse_flop_rate(text) -> float:
    """A compute rate such as "989 TFLOP/s" or "312 TFLOPS/s" -> FLOP/s.

    Units: FLOP/s (or FLOPS/s) with an SI prefix (kFLOP/s, ..., TFLOP/s, PFLOP/s, powers of
    1000); the unit before "/s" may be written in either case.

    Args:
        text (str): The compute rate as text.

    Returns:
        float: The rate in FLOP/s.

    Raises:
        ValueError: If ``text`` is not a str, cannot be read as a FLOP rate, or is negative or
            not finite; the message names it and shows an example.
    """
    return _per_second(text, "a FLOP rate", _FLOP_RATE_UNITS, "'989 TFLOP/s'")
