"""Self-checking answers to the book's exercises.

A student calls ``check(label, answer)`` and learns whether a numeric answer is within the
exercise's tolerance, with a hint when it is off by one of the book's classic slips (a factor of
2, 3 or 6, GiB for GB, a power of ten), without being shown the answer.

One source: each worked solution records the numbers it prints, with ``record_answer`` (or says
that the exercise has no number, with ``record_no_number``). The build and ``pytest``'s nbval
check those records against the answers shipped in ``flopsbook/data/answers/<chapter>.json``
(they set ``FLOPSBOOK_VERIFY_ANSWERS``), so a solution that changes while its shipped answer
does not fails; ``python -m flopsbook.editions answers`` re-executes the chapters and rewrites
the files. In a reader's own kernel a solution that records a different number is a new
problem (an exercise's parameters were edited): ``check`` then judges against that number, for
the rest of the session, and a warning says how to ship it. The shipped numbers are XOR-ed with a hash of their label, so they are not readable
at a glance; decoding them takes a few lines of Python. This stops casual peeking, as the
student edition does: the package and the public repository hold the whole book.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import hashlib
import json
import math
import numbers
import os
import struct
import warnings
from functools import lru_cache
from pathlib import Path

ANSWERS_DIR = Path(__file__).parent / "data" / "answers"
# Set by ``python -m flopsbook.editions answers``: record_answer appends here instead of checking.
RECORD_ENV = "FLOPSBOOK_RECORD_ANSWERS"
# Set by the book's build and its test suite: a recorded answer that differs from the shipped
# one fails there (a stale answer file); elsewhere it makes a new problem for this session.
VERIFY_ENV = "FLOPSBOOK_VERIFY_ANSWERS"
DEFAULT_RTOL = 0.02   # a hand calculation with rounded intermediate values lands within 2%

# The book's classic slips: a ratio of a student's answer to the book's and its usual causes, by
# what the answer measures (its unit). Short: a 15-part check prints one line per part.
_SLIPS = {
    "bytes": ((2, "K and V both, 2 bytes per 16-bit value, or all-reduce = 2 x all-gather"),
              (4, "4-byte fp32 vs 1-byte int8 or 2 x 2 bytes"),
              (8, "bits vs bytes"),
              (16, "16 bytes per parameter for mixed-precision Adam"),
              (2**30 / 1e9, "GiB vs GB: 2^30 bytes, not 10^9"),
              (2**20 / 1e6, "MiB vs MB: 2^20 bytes, not 10^6")),
    "time": ((24, "hours vs days"), (60, "minutes vs hours or seconds vs minutes"),
             (3, "training = forward + backward = 3 x forward"),
             (2, "2 FLOPs per multiply-add, causal half, sparse vs dense peak"),
             (6, "6ND: 2 FLOPs per multiply-add x 3 for training")),
    "flops": ((2, "2 FLOPs per multiply-add, or causal attention's half of the scores"),
              (3, "training = forward + backward = 3 x forward"),
              (6, "6ND: 2 FLOPs per multiply-add x 3 for training"),
              (4, "two factors of 2 (multiply-adds, causal halving)")),
    "percent": ((100, "a percentage, not a fraction"),
                (2, "sparse vs dense peak, or 2 FLOPs per multiply-add"),
                (3, "6ND vs 2ND: training is 3 x forward")),
    "other": ((2, "a factor of 2 (a convention: multiply-adds, causal, both K and V)"),
              (3, "a factor of 3 (forward vs training)"),
              (6, "a factor of 6 (6ND)"),
              (4, "two factors of 2")),
}


def _kind(unit: str) -> str:
    u = unit.lower()
    if "%" in u:
        return "percent"
    if "byte" in u or any(w in unit for w in ("GB", "GiB", "MB", "MiB", "TB", "KB")):
        return "bytes"
    if "flop" in u:
        return "flops"
    if u.split(" ")[0] in ("s", "ms", "days", "hours", "gpu-days", "minutes", "seconds") \
            or "days" in u:
        return "time"
    return "other"


class Checked:
    """What ``check`` found: ``bool(result)`` is True when every part is right.

    Attributes:
        label: the exercise.
        correct: True, False, or None while an answer is still ``None``.
        message: the sentence shown in a notebook.
    """

    def __init__(self, label: str, correct: bool | None, message: str):
        self.label, self.correct, self.message = label, correct, message

    def __bool__(self) -> bool:
        return self.correct is True

    def __repr__(self) -> str:
        return self.message


def _key(label: str, part: str | None) -> bytes:
    return hashlib.sha256(f"{label}/{part or ''}".encode()).digest()[:8]


def _encode(label: str, part: str | None, value: float) -> str:
    raw = struct.pack("<d", float(value))
    return base64.b64encode(bytes(a ^ b for a, b in zip(raw, _key(label, part)))).decode()


def _decode(label: str, part: str | None, code: str) -> float:
    raw = base64.b64decode(code)
    return struct.unpack("<d", bytes(a ^ b for a, b in zip(raw, _key(label, part))))[0]


@lru_cache(maxsize=1)
def _shipped() -> dict:
    """Every chapter's answers, by label: {"chapter", "parts": [...]} or {"chapter", "no_number"}."""
    table = {}
    for path in sorted(ANSWERS_DIR.glob("*.json")):
        for label, entry in json.loads(path.read_text())["exercises"].items():
            table[label] = dict(entry, chapter=path.stem)
    return table


def exercises() -> dict:
    """The shipped answer keys without their values: label -> {"chapter", "parts" | "no_number"}.

    Each part is {"part", "unit", "prompt", "rtol"}; ``part`` is None for a one-part exercise.
    The student edition writes its check cells from this.
    """
    out = {}
    for label, entry in _shipped().items():
        if "no_number" in entry:
            out[label] = {"chapter": entry["chapter"], "no_number": entry["no_number"]}
        else:
            out[label] = {"chapter": entry["chapter"],
                          "parts": [{k: p[k] for k in ("part", "unit", "prompt", "rtol")}
                                    for p in entry["parts"]]}
    return out


# A reader's new problems: label -> entry, recorded by this session's solutions (see record_answer).
_LOCAL: dict = {}


def _entry(label) -> dict:
    if isinstance(label, str) and label in _LOCAL:
        return _LOCAL[label]
    if not isinstance(label, str):
        raise ValueError(f"label must be an exercise label such as 'ex-inference-palm', "
                         f"got {label!r}")
    table = _shipped()
    if label not in table:
        close = difflib.get_close_matches(label, sorted(table), n=3, cutoff=0.6)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ValueError(f"label: no exercise {label!r} has an answer to check{hint}. "
                         f"Labels are the exercise's name in the book, e.g. 'ex-inference-palm'.")
    return table[label]


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:   # a numpy 0-d array or a one-element array is fine
            import numpy as np

            arr = np.asarray(value)
            if arr.size != 1 or arr.dtype.kind not in "iuf":
                raise TypeError
            value = arr.item()
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number (an int or a float), "
                             f"got {value!r}") from None
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be a finite number, got a {len(str(value))}-digit int") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def _verdict(answer: float, expected: float, rtol: float, unit: str) -> tuple[bool, str]:
    if abs(answer - expected) <= rtol * abs(expected) or answer == expected:
        return True, "correct"
    if expected == 0 or answer == 0 or (answer > 0) != (expected > 0):
        return False, "not right: check its sign and whether it can be zero"
    ratio = answer / expected
    near = max(rtol, 0.01)
    for factor, why in _SLIPS[_kind(unit)]:
        for r in (factor, 1 / factor):
            if abs(ratio / r - 1) <= near:
                size = f"{factor:.3g} times too {'large' if r > 1 else 'small'}"
                return False, f"not right: about {size}. A classic slip: {why}"
    exponent = round(math.log10(abs(ratio)))
    if exponent != 0 and abs(math.log10(abs(ratio)) - exponent) <= math.log10(1 + near):
        direction = "large" if exponent > 0 else "small"
        return False, f"not right: about 10^{abs(exponent)} times too {direction}; check the unit"
    if abs(math.log10(abs(ratio))) >= 1:
        direction = "large" if ratio > 1 else "small"
        return False, f"not right: more than 10 times too {direction} (the order of magnitude)"
    if rtol == 0:   # a count: no direction, which would let one bisect it
        return False, "not the exact count: check < vs <= and rounding up or down"
    direction = "large" if ratio > 1 else "small"
    return False, f"not within {rtol * 100:.2g}% of the book's answer (yours is too {direction})"


def check(label: str, answer=None, *, part: str | None = None) -> Checked:
    """Whether ``answer`` to exercise ``label`` is right, within the exercise's tolerance.

    Never shows the answer. A wrong answer gets a hint when it is off by a classic slip for what
    it measures (bytes: 2, 4, 8, 16, GiB vs GB; FLOPs: 2, 3, 4, 6; times: 24, 60, 2, 3, 6;
    percentages: 100, 2, 3; anything else: 2, 3, 4, 6) or by a power of ten. ``None`` (the student edition's placeholder)
    says what to fill in.

    Args:
        label: the exercise's label, e.g. ``"ex-inference-palm"``.
        answer: a number, in the unit the check cell names; for a multi-part exercise either a
            number with ``part``, or a dict {part: number} for several parts at once.
        part: which part of a multi-part exercise ``answer`` answers.

    Returns:
        A ``Checked``: its text says what was found; ``bool()`` of it is True when right.

    Raises:
        ValueError: an unknown label, an exercise without a numeric answer (a derivation or an
            explanation), a missing or unknown ``part``, or an answer that is not a number.
    """
    entry = _entry(label)
    if part is not None and not isinstance(part, str):
        raise ValueError(f"part must be a part's name such as 'a', or None, got {part!r}")
    if "no_number" in entry:
        raise ValueError(f"exercise {label!r} has no numeric answer to check: "
                         f"{entry['no_number']}. Compare your working with its worked solution.")
    parts = {p["part"]: p for p in entry["parts"]}
    names = [p for p in parts if p is not None]
    if isinstance(answer, dict):
        if part is not None:
            raise ValueError("answer: a dict of parts answers every part it names; "
                             "pass part=None with it")
        unknown = [k for k in answer if k not in parts]
        if unknown or not names:
            allowed = ", ".join(repr(n) for n in names) or "none (a one-part exercise)"
            raise ValueError(f"answer: exercise {label!r} has no part {unknown[0] if unknown else ''!r}; "
                             f"its parts are {allowed}")
        found = [check(label, value, part=k) for k, value in answer.items()]
        correct = (None if any(c.correct is None for c in found)
                   else all(c.correct for c in found))
        return Checked(label, correct, "\n".join(c.message for c in found))
    if part is None and names:
        raise ValueError(f"part: exercise {label!r} has parts "
                         f"{', '.join(repr(n) for n in names)}; pass part=... "
                         f"or a dict {{part: answer}}")
    if part not in parts:
        allowed = ", ".join(repr(n) for n in names) or "None (a one-part exercise)"
        raise ValueError(f"part must be one of {allowed} for exercise {label!r}, got {part!r}")
    p = parts[part]
    name = f"{label} ({part})" if part is not None else label
    if answer is None:
        return Checked(label, None, f"{name}: replace None with your answer in {p['unit']}.")
    verdict, text = _verdict(_number("answer", answer), _decode(label, part, p["code"]), p["rtol"],
                             p["unit"])
    within = f"within {p['rtol'] * 100:.2g}%" if p["rtol"] else "exactly"
    return Checked(label, verdict, f"{name}: {text}." if not verdict
                   else f"{name}: correct ({within}).")


def record_answer(label: str, value, *, unit: str, prompt: str, part: str | None = None,
                  rtol: float = DEFAULT_RTOL) -> None:
    """In a worked solution: the number it prints is the answer ``check`` accepts.

    In the build and the tests (``FLOPSBOOK_VERIFY_ANSWERS`` set) it checks that the shipped
    answer agrees: a changed solution without ``python -m flopsbook.editions answers`` fails.
    Under that command it records instead. Anywhere else a different answer is a new problem:
    ``check`` accepts this one for the rest of the session, with a warning.

    Args:
        label: the exercise's label.
        value: the answer, as the solution prints it, in ``unit``.
        unit: what the student answers in, e.g. ``"GB (10^9 bytes)"``, ``"ms"``, ``"FLOPs"``.
        prompt: what the number is, in a few words (shown in the student edition's check cell).
        part: the part's name (``"a"``, ``"b"``, ...) for a multi-part exercise, else None.
        rtol: the relative tolerance a right answer lies within (0.02 unless rounding matters).
    """
    value = _number("value", value)
    if not (isinstance(rtol, numbers.Real) and 0 <= rtol < 1):
        raise ValueError(f"rtol must be a number in [0, 1), got {rtol!r}")
    for name, text in (("unit", unit), ("prompt", prompt)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name} must be a short non-empty text, got {text!r}")
    row = {"label": label, "part": part, "unit": unit, "prompt": prompt, "rtol": float(rtol),
           "code": _encode(label, part, value)}
    if _record(row):
        return
    entry = _shipped().get(label)
    shipped = next((p for p in entry.get("parts", ()) if p["part"] == part), None) if entry else None
    differs = shipped is None or any(shipped[k] != row[k] for k in ("unit", "prompt", "rtol")) \
        or not math.isclose(_decode(label, part, shipped["code"]), value, rel_tol=1e-9, abs_tol=0)
    which = f"{label!r} part {part!r}" if part is not None else repr(label)
    _session_answer(label, row, differs, f"the shipped answer to {which} is not this solution's")


def record_no_number(label: str, reason: str) -> None:
    """In a worked solution: the exercise has no numeric answer; ``reason`` says what it asks."""
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(f"reason must be a short non-empty text, got {reason!r}")
    row = {"label": label, "no_number": reason}
    if _record(row):
        return
    entry = _shipped().get(label)
    _session_answer(label, row, entry is None or entry.get("no_number") != reason,
                    f"the shipped answers do not say that {label!r} has no number")


def _verifying() -> bool:
    return os.environ.get(VERIFY_ENV, "") not in ("", "0")


def _session_answer(label: str, row: dict, differs: bool, what: str) -> None:
    """A solution recorded ``row``. When it is not the shipped answer: in the build and the tests
    a stale answer file (an error); elsewhere a new problem, which ``check`` judges by this
    session's answers from then on, and which a later record (an edited value changed back, say)
    keeps up to date."""
    if not differs and label not in _LOCAL:
        return
    if differs and _verifying():
        raise ValueError(f"{what}: run `python -m flopsbook.editions answers` and commit "
                         f"flopsbook/data/answers/")
    chapter = _shipped().get(label, {}).get("chapter")
    if "no_number" in row:
        _LOCAL[label] = {"chapter": chapter, "no_number": row["no_number"]}
    else:
        part = {k: row[k] for k in ("part", "unit", "prompt", "rtol", "code")}
        local = _LOCAL.get(label) or _shipped().get(label) or {}
        parts = list(local.get("parts", ()))
        if parts and (parts[0]["part"] is None) != (part["part"] is None):
            parts = []   # one unnamed part, or named parts: never a mix (write_answers's rule)
        _LOCAL[label] = {"chapter": chapter,
                         "parts": [p for p in parts if p["part"] != part["part"]] + [part]}
    if differs:
        warnings.warn(f"{what}. check() now judges this session's answer to {label!r} (a new "
                      f"problem: were the exercise's values edited?). Book authors: run "
                      f"`python -m flopsbook.editions answers` and commit flopsbook/data/answers/ "
                      f"to ship it.", stacklevel=3)


def _record(row: dict) -> bool:
    path = os.environ.get(RECORD_ENV)
    if not path:
        return False
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    return True


def write_answers(chapter: str, rows: list[dict], directory: Path = ANSWERS_DIR) -> Path:
    """Write one chapter's recorded rows as ``<directory>/<chapter>.json``, in the book's order."""
    exercises_ = {}
    for row in rows:
        label = row["label"]
        if "no_number" in row:
            if label in exercises_:
                raise ValueError(f"exercise {label!r}: record_no_number after record_answer")
            exercises_[label] = {"no_number": row["no_number"]}
            continue
        entry = exercises_.setdefault(label, {"parts": []})
        if "no_number" in entry:
            raise ValueError(f"exercise {label!r}: record_answer after record_no_number")
        if any(p["part"] == row["part"] for p in entry["parts"]):
            raise ValueError(f"exercise {label!r}: part {row['part']!r} recorded twice")
        if entry["parts"] and (row["part"] is None or entry["parts"][0]["part"] is None):
            raise ValueError(f"exercise {label!r}: parts must all be named, or the one part None")
        entry["parts"].append({k: row[k] for k in ("part", "unit", "prompt", "rtol", "code")})
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{chapter}.json"
    path.write_text(json.dumps({
        "note": "Answers recorded by the worked solutions of notebooks/" + chapter + ".ipynb "
                "(python -m flopsbook.editions answers). Values are XOR-ed with a hash of their "
                "label: not secret, only not readable at a glance.",
        "exercises": exercises_}, indent=1, ensure_ascii=False) + "\n")
    _shipped.cache_clear()
    return path
