"""Check the book's PDF as a reader would open it: its text, by pdftotext.

- the page count lies in the stated range (a missing part or a runaway table moves it);
- every exercise and every worked solution is printed (solutions are open in print);
- no placeholder of the website or the notebooks reaches the page: "Click to show", a
  kernel-free figure's text fallback, an unevaluated {eval}, a raw directive, a missing glue
  value, a LaTeX "??" for an unresolved reference, a Python traceback.

Usage: python .ci/check_pdf.py _build/latex/flops-book.pdf
       python .ci/check_pdf.py _build/latex/problem-sets-four-week.pdf --handout four-week
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = (380, 700)   # 426 pages with 84 exercises; 546 with 105 exercises and 11 exam questions
HANDOUT_PAGES = (8, 80)

PLACEHOLDERS = {
    "Click to show": "a folded cell's button text",
    "<interactive figure": "a kernel-free figure's text fallback (no static PNG)",
    "{eval}": "an unevaluated inline expression",
    "```{": "a raw MyST directive",
    ":class: dropdown": "a raw gated-solution directive's option",
    "Traceback (most recent call last)": "a Python traceback",
    "application/vnd": "a mimetype name",
    "??": "an unresolved reference (LaTeX prints ??)",
    "NotImplementedError": "a renderer error",
}


def exercise_count() -> int:
    from flopsbook.editions import exercise_labels

    return sum(len(exercise_labels(json.loads(path.read_text())))
               for path in sorted((ROOT / "notebooks").glob("*.ipynb")))


def handout_count(plan: str) -> int:
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    from course import load_course, placements   # the handouts' own reader of the plan

    return len(placements(load_course(ROOT)["plans"][plan]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pdf", type=Path)
    parser.add_argument("--handout", metavar="PLAN",
                        help="a plan's problem-set handout: its exercises, no solution")
    args = parser.parse_args(argv)
    info = subprocess.run(["pdfinfo", str(args.pdf)], capture_output=True, text=True, check=True)
    pages = int(re.search(r"^Pages:\s+(\d+)", info.stdout, re.M).group(1))
    text = subprocess.run(["pdftotext", "-layout", str(args.pdf), "-"], capture_output=True,
                          text=True, check=True).stdout
    failures = []
    low, high = HANDOUT_PAGES if args.handout else PAGES
    if not low <= pages <= high:
        failures.append(f"{pages} pages, outside {low}-{high}")
    if args.handout:   # "Exercise 6.3 · derivation (optional) — Inference"
        n, want_solutions = handout_count(args.handout), 0
        exercises = len(re.findall(r"^\s*Exercise \d+\.\d+( · derivation)?( \(optional\))? — ",
                                   text, re.M))
    else:              # the exercise's box title, on a line of its own
        n = want_solutions = exercise_count()
        exercises = len(re.findall(r"^\s*Exercise \d+\.\d+\s*$", text, re.M))
    solutions = len(re.findall(r"Solution to Exercise \d+\.\d+", text))
    if exercises != n or solutions != want_solutions:
        failures.append(f"{exercises} exercises and {solutions} solutions printed, "
                        f"expected {n} and {want_solutions}")
    for needle, what in PLACEHOLDERS.items():
        hits = text.count(needle)
        if hits:
            at = text.index(needle)
            failures.append(f"{hits} x {needle!r} ({what}), first: "
                            f"{' '.join(text[max(0, at - 80):at + 40].split())!r}")
    print(f"{args.pdf}: {pages} pages, {exercises} exercises, {solutions} solutions printed")
    for failure in failures:
        print("  FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
