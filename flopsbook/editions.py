"""Two editions from one source: the book as it is (readers, instructors) and a student edition.

``python -m flopsbook.editions student DEST`` writes the student edition: the chapters' notebooks
without their worked solutions, instructor-only cells or answer records, with a check cell after
every exercise that has a numeric answer (``flopsbook.check``), under ``DEST/notebooks``; the
website built from them under ``DEST/html``; the sources it was built from under
``DEST/source``. Nothing of a solution reaches the edition's files (pages, search index,
downloadable notebooks): ``leak-check`` proves it on the built site.

``python -m flopsbook.editions answers [CHAPTER ...]`` executes the chapters and rewrites their
shipped answers (``flopsbook/data/answers/``) from the solutions' ``record_answer`` calls.

The package and the public repository still hold the whole book, solutions included: the
edition stops casual peeking, not a determined reader.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import exercises

ROOT = Path(__file__).resolve().parent.parent
INSTRUCTOR_TAG = "instructor-only"   # a cell only the instructor edition shows (exam questions)
SOLUTION_START, SOLUTION_END = "{solution-start}", "{solution-end}"
_EXERCISE = re.compile(r"^(`{3,}|:{3,})\{exercise\}[^\n]*\n((?:[ \t]*:[\w-]+:[^\n]*\n)*)", re.M)
_LABEL = re.compile(r"^[ \t]*:label:[ \t]*(\S+)", re.M)
_PLAIN_SOLUTION = re.compile(r"^(`{3,}|:{3,})\{solution\}.*?^\1[ \t]*$\n?", re.M | re.S)


def cell_text(cell) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def exercise_labels(nb: dict) -> list[str]:
    """The labels of the notebook's exercises, in order."""
    labels = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for m in _EXERCISE.finditer(cell_text(cell)):
            found = _LABEL.search(m.group(2))
            if found:
                labels.append(found.group(1))
    return labels


def _is_instructor(cell) -> bool:
    return INSTRUCTOR_TAG in cell.get("metadata", {}).get("tags", [])


def split_solutions(nb: dict) -> tuple[list, list]:
    """(the cells a student sees, the cells only the instructor edition has), in order.

    A gated solution is every cell from its ``{solution-start}`` to its ``{solution-end}``; a
    plain ``{solution}`` directive is cut out of its cell (the rest of the cell stays).
    """
    kept, removed, inside = [], [], False
    for cell in nb["cells"]:
        text = cell_text(cell)
        starts = cell["cell_type"] == "markdown" and SOLUTION_START in text
        if starts and inside:
            raise ValueError(f"a {SOLUTION_START} inside an open solution: {text[:60]!r}")
        if starts:
            inside = True
        if inside or _is_instructor(cell):
            removed.append(cell)
        elif cell["cell_type"] == "markdown" and _PLAIN_SOLUTION.search(text):
            removed.append(dict(cell, source="".join(m.group(0) for m in
                                                     _PLAIN_SOLUTION.finditer(text))))
            kept.append(dict(cell, source=_PLAIN_SOLUTION.sub("", text)))
        else:
            kept.append(cell)
        if inside and cell["cell_type"] == "markdown" and SOLUTION_END in text:
            inside = False
    if inside:
        raise ValueError(f"a {SOLUTION_START} without its {SOLUTION_END}")
    return kept, removed


def check_cell(label: str, key: dict, cell_id: str) -> dict:
    """The student edition's code cell that checks the answers to exercise ``label``."""
    parts = key["parts"]
    lines = ["# Your answer: replace None with a number and run the cell.",
             "# (check knows the answers to the book's values, not to edited ones.)"]
    if len(parts) == 1 and parts[0]["part"] is None:
        p = parts[0]
        lines.append(f'fb.check("{label}", None)   # {p["prompt"]}, in {p["unit"]}')
    else:
        lines.append(f'fb.check("{label}", {{')
        lines += [f'    "{p["part"]}": None,   # {p["prompt"]}, in {p["unit"]}' for p in parts]
        lines.append("})")
    return {"cell_type": "code", "execution_count": None, "id": cell_id,
            "metadata": {"tags": ["student-check"]}, "outputs": [], "source": "\n".join(lines)}


def student_notebook(nb: dict, keys: dict | None = None) -> dict:
    """A copy of chapter notebook ``nb`` for students: no solutions, a check cell per exercise.

    ``keys`` are the shipped answer keys (``exercises.exercises()``); an exercise that records a
    number but has none shipped is an error (run ``answers``).
    """
    keys = exercises.exercises() if keys is None else keys
    kept, _ = split_solutions(nb)
    cells = []
    for cell in kept:
        cells.append(cell)
        if cell["cell_type"] != "markdown":
            continue
        for label in exercise_labels({"cells": [cell]}):
            if label not in keys:
                raise ValueError(f"exercise {label!r} has no shipped answer key: its solution must "
                                 f"call record_answer or record_no_number, then run "
                                 f"`python -m flopsbook.editions answers`")
            if "parts" in keys[label]:
                cells.append(check_cell(label, keys[label], f"check-{label}"))
    cells = [_student_code(c) if c["cell_type"] == "code" else c for c in cells]
    return dict(nb, cells=cells)


_PARAMETERS = re.compile(r"^# Exercise parameters \((ex-[\w-]+)\): [^\n]*")


def _student_code(cell: dict) -> dict:
    """A code cell without outputs (a copy: ``nb`` is not changed). An exercise's parameter cell
    says that its check cell knows the printed values only: the solution, whose record_answer
    would make an edited value a new problem, is not in this edition."""
    source = _PARAMETERS.sub(lambda m: f"# Exercise parameters ({m.group(1)}): the values the "
                             f"statement prints; the check cell knows the answers to these only.",
                             cell_text(cell), count=1)
    return dict(cell, source=source, outputs=[], execution_count=None)


# ---- leak check -------------------------------------------------------------------------------

_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$|\{[\w:-]+\}`[^`]*`|`[^`]*`", re.S)
_PROSE_RUN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ,.;:()]{50,}")


# Text that only a solution puts on a page: sphinx-exercise's title, the gate, an answer record.
# (The directive's name alone is no marker: the API page documents it.)
_MARKERS = ("Solution to Exercise", "```" + SOLUTION_START, "```{solution}", 'record_answer("ex-',
            'record_no_number("ex-')


def _normal(text: str) -> str:
    return " ".join(text.split())


def _prose(cell) -> str:
    """A markdown cell's plain prose: directive fences and options, math and roles cut to '|'."""
    text = re.sub(r"^(`{3,}|:{3,}).*$|^:[\w-]+:.*$", " | ", cell_text(cell), flags=re.M)
    return _MATH.sub(" | ", _normal(text))


def searchable(cells: list) -> str:
    """The cells' text as ``fragments`` cuts it: a fragment of a cell is a substring of this."""
    return " | ".join(_prose(c) if c["cell_type"] == "markdown" else _normal(cell_text(c))
                      for c in cells)


def fragments(removed_cells: list) -> set[str]:
    """Distinctive pieces of the removed cells: runs of plain prose and long lines of code."""
    found = set()
    for cell in removed_cells:
        text = cell_text(cell)
        if cell["cell_type"] == "markdown":
            for run in _PROSE_RUN.findall(_prose(cell)):
                run = run.strip(" ,.;:(")
                if len(run.split()) >= 8:
                    found.add(run)
        else:
            found.update(_normal(line) for line in text.splitlines()
                         if len(line.strip()) >= 30 and not line.strip().startswith("#"))
    return found


def _file_text(path: Path) -> str:
    raw = path.read_text(encoding="utf-8", errors="ignore")
    if path.suffix == ".ipynb":
        try:
            nb = json.loads(raw)
            raw = "\n".join(cell_text(c) + "\n" + json.dumps(c.get("outputs", [])) for c in nb["cells"])
        except (ValueError, KeyError):
            pass
    elif path.suffix in (".html", ".htm"):
        raw = re.sub(r"<[^>]+>", "", raw)
    return _normal(html.unescape(raw))


def leak_check(site: Path, notebooks: list[Path]) -> dict:
    """Which solution fragments of ``notebooks`` (instructor sources) appear under ``site``.

    Returns {"fragments", "files", "found": {fragment: first file}, "markers": {file: marker}}.
    Fragments that also occur outside the solutions (a shared code line) are not counted.
    """
    frags, visible = set(), []
    for path in notebooks:
        nb = json.loads(Path(path).read_text())
        kept, removed = split_solutions(nb)
        frags |= set(fragments(removed))
        visible.append(searchable(kept) + " | " + _normal("\n".join(cell_text(c) for c in kept)))
    # A fragment that a student may see anyway (shared code, a line quoted in the prose) is no leak.
    visible = " | ".join(visible)
    frags = {f for f in frags if f not in visible}
    found, markers, files = {}, {}, 0
    for path in sorted(Path(site).rglob("*")):
        if not path.is_file() or path.suffix not in (".html", ".js", ".ipynb", ".md", ".txt", ".json"):
            continue
        files += 1
        text = _file_text(path)
        for frag in frags - found.keys():
            if frag in text:
                found[frag] = str(path.relative_to(site))
        for marker in _MARKERS:
            if marker in text:
                markers.setdefault(str(path.relative_to(site)), marker)
    return {"fragments": len(frags), "files": files, "found": found, "markers": markers}


# ---- the student edition ----------------------------------------------------------------------

def _chapters() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def write_student_sources(dest: Path) -> Path:
    """The student edition's book sources under ``dest/source``; its notebooks under ``dest/notebooks``."""
    import yaml   # Jupyter Book's own dependency: the edition is built where the book is

    source = dest / "source"
    source.mkdir(parents=True, exist_ok=True)
    for old in source.iterdir():   # all but the build, whose execution cache a rebuild reuses
        if old.name != "_build":
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    shutil.copytree(ROOT / "book", source / "book", ignore=shutil.ignore_patterns("_generated"))
    shutil.copy(ROOT / "_toc.yml", source / "_toc.yml")
    (source / "flopsbook").symlink_to(ROOT / "flopsbook")   # book/_ext/package_cache.py hashes it
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["title"] = f"{config['title']} (student edition)"
    # Binder and Colab would open the repository's notebooks, which hold the solutions.
    config["launch_buttons"] = {"binderhub_url": "", "colab_url": "", "thebe": False}
    (source / "_config.yml").write_text(
        "# Written by `python -m flopsbook.editions student`: do not edit, edit ../_config.yml.\n"
        + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    intro = source / "book" / "intro.md"
    text = intro.read_text()
    head, _, rest = text.partition("\n")
    intro.write_text(head + "\n\n```{note}\nThis is the **student edition**: the worked solutions "
                     "are not in it. After each exercise with a numeric answer a cell calls "
                     "`flopsbook.check` on your answer: run it in the notebook. The `flopsbook` "
                     "package and the book's public repository hold the whole book, solutions "
                     "included: this edition stops casual peeking, not a determined reader.\n```\n"
                     + rest)
    keys = exercises.exercises()
    (source / "notebooks").mkdir()
    (dest / "notebooks").mkdir(parents=True, exist_ok=True)
    for path in _chapters():
        nb = student_notebook(json.loads(path.read_text()), keys)
        body = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        (source / "notebooks" / path.name).write_text(body)
        (dest / "notebooks" / path.name).write_text(body)
    return source


def build_student(dest: Path, *, strict: bool = True) -> int:
    dest = Path(dest).resolve()
    source = write_student_sources(dest)
    # The jupyter-book of this Python's environment, also when that environment is not activated.
    beside = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(beside) if beside.exists() else "jupyter-book", "build", str(source)]
    cmd += ["-W", "-n", "--keep-going"] if strict else []
    rc = subprocess.call(cmd)
    if rc:
        return rc
    shutil.rmtree(dest / "html", ignore_errors=True)
    shutil.copytree(source / "_build" / "html", dest / "html")
    return report_leaks(dest / "html")


def report_leaks(site: Path, *, expect: str = "none") -> int:
    """Print the leak check of ``site``; 0 when it is as ``expect``ed ("none", or "all" for the
    instructor site, which must show at least 90% of the fragments: the check can fail)."""
    result = leak_check(Path(site), _chapters())
    n, hits = result["fragments"], len(result["found"])
    print(f"leak check of {site}: {hits} of {n} solution fragments found in {result['files']} files; "
          f"markers in {len(result['markers'])} files")
    if expect == "none":
        for frag, where in list(result["found"].items())[:10]:
            print(f"  LEAK in {where}: {frag[:100]!r}")
        for where, marker in list(result["markers"].items())[:10]:
            print(f"  MARKER {marker!r} in {where}")
        return 1 if hits or result["markers"] else 0
    return 0 if hits >= 0.9 * n and result["markers"] else 1


# ---- shipped answers --------------------------------------------------------------------------

def record_answers(chapters: list[str] | None = None) -> None:
    """Execute chapters (all by default) and rewrite their shipped answers from their records."""
    from nbclient import NotebookClient
    import nbformat

    paths = _chapters() if not chapters else [ROOT / "notebooks" / f"{c.removesuffix('.ipynb')}.ipynb"
                                              for c in chapters]
    for path in paths:
        if not path.is_file():
            raise ValueError(f"chapters: no notebook {path.name}; "
                             f"chapters are {', '.join(p.stem for p in _chapters())}")
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as log:
            os.environ[exercises.RECORD_ENV] = log.name
            try:
                nb = nbformat.read(path, as_version=4)
                NotebookClient(nb, timeout=600, kernel_name="python3",
                               resources={"metadata": {"path": str(path.parent)}}).execute()
            finally:
                del os.environ[exercises.RECORD_ENV]
            rows = [json.loads(line) for line in log.read().splitlines()]
        labels = exercise_labels(json.loads(path.read_text()))
        recorded = {r["label"] for r in rows}
        missing, extra = set(labels) - recorded, recorded - set(labels)
        if missing or extra:
            raise ValueError(f"{path.name}: exercises without a record: {sorted(missing)}; "
                             f"records for no exercise of the chapter: {sorted(extra)}")
        rows.sort(key=lambda r: labels.index(r["label"]))
        out = exercises.write_answers(path.stem, rows)
        print(f"{path.name}: {len(labels)} exercises, {len(rows)} records -> {out.relative_to(ROOT)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flopsbook.editions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("student", help="build the student edition into DEST")
    s.add_argument("dest", type=Path)
    s.add_argument("--no-strict", action="store_true", help="build without -W -n")
    a = sub.add_parser("answers", help="re-execute chapters and rewrite their shipped answers")
    a.add_argument("chapters", nargs="*", help="chapter notebooks' names (default: all)")
    leak = sub.add_parser("leak-check", help="search a built site for solution text")
    leak.add_argument("site", type=Path)
    leak.add_argument("--expect", choices=("none", "all"), default="none",
                      help="'all' for the instructor site (proves the check finds solutions)")
    args = parser.parse_args(argv)
    if args.command == "student":
        return build_student(args.dest, strict=not args.no_strict)
    if args.command == "answers":
        record_answers(args.chapters)
        return 0
    return report_leaks(args.site, expect=args.expect)


if __name__ == "__main__":
    sys.exit(main())
