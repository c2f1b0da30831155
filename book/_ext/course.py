"""The syllabus page (``book/syllabus.md``), rendered from one source: ``book/course.yml``.

``course.yml`` holds the course plan as data: each chapter's prerequisites and two plans
(weeks of lectures, each with the sections it teaches, those to read before it and after it,
objectives, in-class activity and minutes, and a problem set of exercise labels). The
directives below turn it into MyST text and parse that, so every section and exercise is a
``{numref}``/``{ref}`` that the nitpicky build resolves (and fails on when a label goes away):

``{course-graph}``
    the chapters' dependency graph, drawn with matplotlib into ``book/_generated/`` (a PNG,
    which the HTML and the LaTeX builders both include); the directive's content is the caption.
``{course-chapters}``
    a table: each chapter, what it teaches, what it builds on, the lectures of each plan.
``{course-plan} <plan>``
    the plan's weeks (headings one level below the section the directive is in, or
    ``:heading-level:``), lectures (subheadings) and problem sets. Place it last in its section.
``{course-problem-sets}``
    a table: which problem set of each plan each chapter's exercises are in.
``{course-misconceptions}``
    each chapter's "Common mistakes": each item's bold lead-in and the first sentence after it
    (the lead-in alone where that sentence holds an ``{eval}`` role), read from the notebooks
    when the page is built (not retyped here).

``{course-exams}``
    a table: each chapter's exam question (a multi-step estimate with its marking scheme, in
    cells tagged ``instructor-only``), its title and marks; the student edition, which leaves
    those cells out, says so instead.

An exercise marked ``:class: derivation`` says so in its title on the website
(``book/_static/course.css``). Loading this extension sets ``FLOPSBOOK_VERIFY_ANSWERS`` for the
build's kernels, so that a stale shipped answer fails the build (``flopsbook.exercises``).

In the PDF, the problem sets' exercise numbers link as sphinx-exercise's own references do
(``ExerciseNumbersInLatex``).

The notebooks are read as JSON from the source directory, so the student edition (built from
its own copies) renders the same page. ``problems()`` checks the plan against the notebooks
(every exercise in exactly one problem set of each plan, every section placed, known labels,
the minutes); the build reports each problem as a warning, which the strict build fails on,
and ``tests/test_course.py`` asserts the same. The page is re-read when ``course.yml``, a
notebook, ``_toc.yml`` or this file changes (``env.note_dependency``).
"""

from __future__ import annotations

import io
import itertools
import os
import json
import re
import textwrap
from pathlib import Path

import yaml
from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

# One reader of the notebooks' exercises for the book: the student edition's (it is what
# decides which exercises get a check cell, so the syllabus must see the same ones).
from flopsbook import exercises as _exercises
from flopsbook.editions import cell_text, exercise_labels, split_solutions

logger = logging.getLogger(__name__)

COURSE = Path("book") / "course.yml"
NOTEBOOKS = Path("notebooks")
TOC = Path("_toc.yml")
GRAPH = Path("book") / "_generated" / "course-graph.png"
LECTURE_MINUTES = 80
KINDS = ("figure", "calculator", "check")
# Sections every chapter has that a lecture does not teach.
STRUCTURAL = ("mistakes", "takeaways", "exercises", "references")

_LABEL = re.compile(r"^\((ch-[\w-]+)\)=[ \t]*$", re.M)
_HEADING = re.compile(r"(#{1,6})[ \t]")
# A "Common mistakes" item: "- **Lead-in.** text" or "1. **Lead-in** text".
_LEAD_IN = re.compile(r"^(?:[-*+]|\d+[.)])[ \t]+\*\*(.+?)\*\*", re.M | re.S)
_PREREQUISITE = re.compile(
    r"^\|[ \t]*\{doc\}`(?:[^`<]*<)?([^`<>]+?)>?`[ \t]*\|[ \t]*(Necessary|Helpful)[ \t]*\|", re.M)


# ---- reading the sources (tests/test_course.py uses these too) ---------------------------------


def load_course(root: Path) -> dict:
    return yaml.safe_load((Path(root) / COURSE).read_text(encoding="utf-8"))


def load_notebooks(root: Path, stems) -> dict[str, dict]:
    return {stem: json.loads((Path(root) / NOTEBOOKS / f"{stem}.ipynb").read_text(encoding="utf-8"))
            for stem in stems}


def toc_chapters(root: Path) -> list[str]:
    """The chapter notebooks' stems in ``_toc.yml``'s order."""
    toc = yaml.safe_load((Path(root) / TOC).read_text(encoding="utf-8"))
    return [f["file"].split("/", 1)[1] for f in _toc_files(toc)
            if f["file"].startswith("notebooks/")]


def toc_parts(root: Path) -> dict[str, str]:
    """Each chapter's part caption."""
    toc = yaml.safe_load((Path(root) / TOC).read_text(encoding="utf-8"))
    return {f["file"].split("/", 1)[1]: part.get("caption", "")
            for part in toc.get("parts", []) for f in _toc_files(part)
            if f["file"].startswith("notebooks/")}


def _toc_files(node):
    if isinstance(node, dict):
        if "file" in node:
            yield node
        for value in node.values():
            yield from _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            yield from _toc_files(item)


def sections(nb: dict) -> dict[str, dict]:
    """The notebook's labelled sections in order: label -> {"level", "markdown", "code"}.

    ``level`` is the heading level right after the label (None for a label on a paragraph) and
    ``title`` its text (MyST); ``markdown`` the text from the label to the next label; ``code``
    the sources of the code cells until the next label.
    """
    found: dict[str, dict] = {}
    current = None   # a section runs on over cells until the next label
    for cell in nb["cells"]:
        text = cell_text(cell)
        if cell["cell_type"] == "code":
            if current is not None:
                found[current]["code"].append(text)
            continue
        if cell["cell_type"] != "markdown":
            continue
        pieces = _LABEL.split(text)   # [before, label, after, label, after, ...]
        if current is not None:
            found[current]["markdown"] += "\n\n" + pieces[0]
        for label, body in zip(pieces[1::2], pieces[2::2]):
            first = body.lstrip("\n").split("\n", 1)[0]
            heading = _HEADING.match(first)
            found[label] = {"level": len(heading.group(1)) if heading else None,
                            "title": first[heading.end():].strip() if heading else None,
                            "markdown": body, "code": []}
            current = label
    return found


def _mistake_matches(nb: dict, stem: str):
    """(lead-in match, the item's text after the lead-in) for each "Common mistakes" item."""
    section = sections(nb).get(f"ch-{stem}-mistakes")
    if section is None:
        return []
    text = section["markdown"]
    found = list(_LEAD_IN.finditer(text))
    out = []
    for m, after in itertools.zip_longest(found, found[1:]):
        end = after.start() if after else len(text)
        rest = text[m.end():end].split("\n\n", 1)[0]   # an item ends at the next or a blank line
        out.append((m, rest))
    return out


_EXAM = re.compile(r"\((exam-[\w-]+)\)=\s.*?Exam question \((\d+) marks\):\s*([^\n]+)", re.S)


def exams(nb: dict) -> list[tuple[str, int, str]]:
    """The chapter's exam questions: (label, total marks, title), from the cells that only the
    instructor edition has (``split_solutions``: the student edition's notebook has none)."""
    _, instructor_only = split_solutions(nb)
    return [(m.group(1), int(m.group(2)), m.group(3).strip())
            for cell in instructor_only if cell["cell_type"] == "markdown"
            for m in _EXAM.finditer(cell_text(cell))]


def _escaped(text: str) -> str:
    """``text`` as plain text inside a MyST table cell's link."""
    return re.sub(r"([|\[\]{}`*_])", r"\\\1", text)


def exams_markdown(course: dict, notebooks: dict[str, dict]) -> str:
    rows = [(stem, *exam) for stem in course["chapters"]
            for exam in exams(notebooks.get(stem, {"cells": []}))]
    if not rows:
        return ("The student edition leaves the exam questions and their marking schemes out; "
                "they are in the instructor edition of this page.")
    lines = ["| Chapter | Exam question | Marks |", "|---|---|---|"]
    lines += [f"| {_chapter_ref(stem, course['chapters'][stem].get('short', stem))} | "
              f"[{_escaped(title)}](#{label}) | {total} |" for stem, label, total, title in rows]
    return "\n".join(lines)


def misconceptions(nb: dict, stem: str) -> list[str]:
    """The bold lead-ins of the chapter's "Common mistakes" items (MyST), in order."""
    leads = [" ".join(m.group(1).split()) for m, _ in _mistake_matches(nb, stem)]
    return [lead[:-1] if lead.endswith((".", ":")) else lead for lead in leads]


def first_sentence(text: str) -> str:
    """``text`` up to its first sentence end: the first ". " (or a final ".") outside math
    (``$...$``) and inline code or roles (backticks), and not after an abbreviation; all of
    ``text`` if it has none. Whitespace is collapsed."""
    text = " ".join(text.split())
    math = code = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "`" and not math:
            code = not code
        elif ch == "$" and not code and not (i and text[i - 1] == "\\"):   # \$ is a dollar
            if text.startswith("$$", i):
                i += 1
            math = not math
        elif (ch == "." and not (math or code) and (i + 1 == len(text) or text[i + 1] == " ")
              and not re.search(r"(?:\b(?:e\.g|i\.e|cf|vs|etc|al|Fig|Eq|Sec|Ch|No))$", text[:i])):
            return text[:i + 1]
        i += 1
    return text


def mistakes(nb: dict, stem: str) -> list[str]:
    """Each "Common mistakes" item as the syllabus shows it (MyST): the bold lead-in followed
    by the rest of the item's first sentence after it, cut at the first sentence end after the
    lead-in (math and roles kept whole). Where that sentence holds an ``{eval}`` role, whose
    glued value only the chapter's own page can paste, the lead-in alone."""
    items = []
    for m, rest in _mistake_matches(nb, stem):
        lead = "**" + " ".join(m.group(1).split()) + "**"
        sentence = first_sentence(rest)
        if "{eval}" in sentence or not sentence:
            items.append(lead)
        else:
            items.append(lead + ("" if sentence[0] in ",;:.)" else " ") + sentence)
    return items


def prerequisites(nb: dict) -> list[tuple[str, str]]:
    """(document stem, "Necessary" or "Helpful") for each {doc} row of the prerequisites table."""
    text = "\n".join(cell_text(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    start = text.find("**Prerequisites")
    if start < 0:
        return []
    table = text[start:].split("\n\n", 2)
    table = table[1] if len(table) > 1 else ""
    return [(m.group(1).rsplit("/", 1)[-1], m.group(2)) for m in _PREREQUISITE.finditer(table)]


def check_lines(section: dict) -> list[str]:
    """The first lines of a section's ``# Check:`` cells, without the ``# Check:``."""
    return [code.lstrip().splitlines()[0].removeprefix("# Check:").strip()
            for code in section["code"] if code.lstrip().startswith("# Check")]


def has_kind(section: dict, kind: str) -> bool:
    """Whether a section holds a kernel-free figure or an ipywidgets calculator."""
    code = "\n".join(section["code"])
    if kind == "figure":
        return re.search(r"\binteractive_\w+\(", code) is not None
    if kind == "calculator":
        return re.search(r"\w+_(calculator|explorer)\(", code) is not None
    return False


def placements(plan: dict) -> list[tuple[str, int, bool]]:
    """(exercise label, week number, optional) for every exercise the plan's problem sets name."""
    return [(label, w, optional)
            for w, week in enumerate(plan["weeks"], 1)
            for optional, key in ((False, "required"), (True, "optional"))
            for label in week.get("problem_set", {}).get(key) or []]


def lectures(plan: dict):
    """(week number, lecture number, lecture) over the plan, lectures numbered from 1."""
    n = itertools.count(1)
    for w, week in enumerate(plan["weeks"], 1):
        for lecture in week["lectures"]:
            yield w, next(n), lecture


def _chapter_of(label: str, stems) -> str | None:
    """The chapter stem a ``ch-...`` or ``ex-...`` label belongs to (the longest match)."""
    body = label.split("-", 1)[1] if "-" in label else ""
    matches = [s for s in stems if body == s or body.startswith(s + "-")]
    return max(matches, key=len) if matches else None


def lecture_labels(lecture: dict) -> list[str]:
    """The sections a lecture names: read before it (``pre_reading``), taught, read after."""
    return ((lecture.get("pre_reading") or []) + (lecture.get("sections") or [])
            + (lecture.get("reading") or []))


def lecture_chapters(lecture: dict, stems) -> list[str]:
    labels = lecture_labels(lecture)
    labels += [lecture["activity"]["section"]] if lecture.get("activity") else []
    return list(dict.fromkeys(c for c in (_chapter_of(lbl, stems) for lbl in labels) if c))


def problems(course: dict, notebooks: dict[str, dict], toc: list[str]) -> list[str]:
    """Every way the plan disagrees with the notebooks or with itself, as sentences."""
    out = []
    chapters = course.get("chapters", {})
    stems = list(chapters)
    if stems != toc:
        out.append(f"course.yml's chapters {stems} are not _toc.yml's chapters {toc}")
    for i, (stem, info) in enumerate(chapters.items()):
        for key in ("requires", "helpful"):
            for dep in info.get(key) or []:
                if dep not in stems[:i]:
                    out.append(f"chapter {stem}: {key} {dep!r} is not an earlier chapter")
        if stem in notebooks:   # the chapter's own prerequisites table, earlier chapters only
            table = prerequisites(notebooks[stem])
            for key, kind in (("requires", "Necessary"), ("helpful", "Helpful")):
                listed = {d for d, k in table if k == kind and d in stems[:i]}
                if listed != set(info.get(key) or []):
                    out.append(f"chapter {stem}: {key} {sorted(info.get(key) or [])} but its "
                               f"prerequisites table says {kind} {sorted(listed)}")
    secs = {stem: sections(nb) for stem, nb in notebooks.items()}
    exercises = [lbl for stem in stems if stem in notebooks
                 for lbl in exercise_labels(notebooks[stem])]
    for key, plan in course.get("plans", {}).items():
        where = f"plan {key}"
        taught: dict[str, int] = {}
        placed: set[str] = set()
        for w, n, lec in lectures(plan):
            at = f"{where}, lecture {n}"
            labels = lecture_labels(lec)
            for label in labels:
                stem = _chapter_of(label, stems)
                if stem is None or label not in secs.get(stem, {}):
                    out.append(f"{at}: no section {label!r} in the notebooks")
            if not 2 <= len(lec.get("objectives") or []) <= 4:
                out.append(f"{at}: {len(lec.get('objectives') or [])} objectives, not 2 to 4")
            act = lec.get("activity") or {}
            minutes = lec.get("minutes", 0) + act.get("minutes", 0)
            if not act or minutes > LECTURE_MINUTES or not act.get("text"):
                out.append(f"{at}: needs an activity with text, and at most {LECTURE_MINUTES} "
                           f"minutes in all (has {minutes})")
            if act:
                label, kind = act.get("section", ""), act.get("kind")
                stem = _chapter_of(label, stems)
                sec = secs.get(stem, {}).get(label)
                if kind not in KINDS:
                    out.append(f"{at}: activity kind {kind!r} is not one of {KINDS}")
                elif sec is None:
                    out.append(f"{at}: no section {label!r} for the activity")
                elif kind == "check":
                    if not any(line.startswith(act.get("check") or "\0")
                               for line in check_lines(sec)):
                        out.append(f"{at}: no '# Check:' cell in {label} begins with "
                                   f"{act.get('check')!r}")
                elif not has_kind(sec, kind):
                    out.append(f"{at}: {label} holds no {kind}")
            placed.update(labels + ([act["section"]] if act.get("section") else []))
            mine = lecture_chapters(lec, stems)
            for stem in mine:   # a lecture's chapters count as taught together
                taught.setdefault(stem, w)
            for stem in mine:
                for dep in chapters.get(stem, {}).get("requires") or []:
                    if dep not in taught:
                        out.append(f"{at}: chapter {stem} comes before {dep}, which it requires")
        for stem in stems:
            for label, sec in secs.get(stem, {}).items():
                if (sec["level"] == 2 and label not in placed
                        and not label.endswith(tuple(f"-{s}" for s in STRUCTURAL))):
                    out.append(f"{where}: section {label} is neither taught, read nor used")
        where_placed = placements(plan)
        counts: dict[str, int] = {}
        for label, w, _ in where_placed:
            counts[label] = counts.get(label, 0) + 1
            stem = _chapter_of(label, stems)
            if label not in exercises:
                out.append(f"{where}: problem set {w} names {label!r}, which is no exercise")
            elif taught.get(stem, w + 1) > w:
                out.append(f"{where}: problem set {w} has {label} before its chapter is taught")
        for label in exercises:
            if counts.get(label, 0) != 1:
                out.append(f"{where}: exercise {label} is in {counts.get(label, 0)} problem sets, "
                           f"not 1")
    return out


# ---- the dependency graph ----------------------------------------------------------------------

def reduced_edges(chapters: dict) -> list[tuple[str, str, str]]:
    """(prerequisite, chapter, "requires" | "helpful") for the edges worth drawing.

    A ``requires`` edge implied by a path of ``requires`` edges is left out, and a ``helpful``
    one implied by any path: the picture shows each dependency once, and a solid path still
    means the chapter needs everything along it.
    """
    def reaches(src, dst, kinds, skip):
        stack, seen = [src], set()
        while stack:
            a = stack.pop()
            for b, info in chapters.items():
                for kind in kinds:
                    if a in (info.get(kind) or []) and (a, b) != skip and b not in seen:
                        if b == dst:
                            return True
                        seen.add(b)
                        stack.append(b)
        return False

    edges = []
    for stem, info in chapters.items():
        for dep in info.get("requires") or []:
            if not reaches(dep, stem, ("requires",), (dep, stem)):
                edges.append((dep, stem, "requires"))
        for dep in info.get("helpful") or []:
            if not reaches(dep, stem, ("requires", "helpful"), (dep, stem)):
                edges.append((dep, stem, "helpful"))
    return edges


def graph_layout(chapters: dict) -> dict[str, tuple[float, int]]:
    """stem -> (x, layer): layers by the longest path of ``requires``; within the layers the
    order (of all orders, or of each layer's first 5,040) with the fewest crossings, then the
    shortest edges."""
    layer: dict[str, int] = {}
    for stem, info in chapters.items():   # in reading order, so prerequisites come first
        layer[stem] = 1 + max((layer[d] for d in info.get("requires") or [] if d in layer),
                              default=-1)
    edges = reduced_edges(chapters)
    rows = [[s for s in chapters if layer[s] == i] for i in range(max(layer.values()) + 1)]

    def xs(order):
        return {s: i - (len(order) - 1) / 2 for i, s in enumerate(order)}

    def cost(orders):
        x = {}
        for order in orders:
            x.update(xs(order))
        segments = [(x[a], layer[a], x[b], layer[b]) for a, b, _ in edges]
        crossings = sum(1 for (a0, l0, a1, l1), (b0, m0, b1, m1) in
                        itertools.combinations(segments, 2)
                        if l0 == m0 and l1 == m1 and (a0 - b0) * (a1 - b1) < 0)
        # Edges within a layer should join neighbours; long edges should be short.
        flat = sum(abs(a0 - a1) - 1 for a0, l0, a1, l1 in segments if l0 == l1)
        length = sum(abs(a0 - a1) for a0, _, a1, _ in segments)
        return (crossings, flat, length)

    choices = [list(itertools.islice(itertools.permutations(row), 5040)) for row in rows]
    combinations = 1
    for c in choices:
        combinations *= len(c)
    best = min(itertools.product(*choices), key=cost) if combinations <= 200_000 else rows
    out = {}
    for order in best:
        out.update({s: (x, layer[s]) for s, x in xs(order).items()})
    return out


def draw_graph(chapters: dict, parts: dict[str, str], path: Path) -> str:
    """Draw the dependency graph into ``path`` (PNG, rewritten only when it changed); returns
    the graph as sentences, the image's alternative text."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    pos = graph_layout(chapters)
    number = {stem: i for i, stem in enumerate(chapters, 1)}
    captions = list(dict.fromkeys(parts.get(s, "") for s in chapters))
    palette = ["#dbe9f6", "#fde2c8", "#d9efd5", "#f6d5dc", "#e6dcf2", "#f3ecc2", "#d5eeee",
               "#e8e8e8"]
    colour = {c: palette[i % len(palette)] for i, c in enumerate(captions)}
    width = max(len([s for s in pos if pos[s][1] == lay]) for lay in {p[1] for p in pos.values()})
    layers = 1 + max(p[1] for p in pos.values())
    # Shown about 700 px wide: 2.2 in per node and 14 pt text read as 12 px text.
    fig = Figure(figsize=(2.2 * width + 0.4, 1.3 * layers + 0.9), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0.1, 1, 0.9))
    ax.set_axis_off()
    ax.set_xlim(-width / 2 - 0.05, width / 2 + 0.05)
    ax.set_ylim(-layers + 0.45, 0.55)
    boxes = {}
    for stem, (x, lay) in pos.items():
        label = "\n".join(textwrap.wrap(f"{number[stem]}. {chapters[stem].get('short', stem)}",
                                        17))
        boxes[stem] = ax.text(x, -lay, label, ha="center", va="center", fontsize=14,
                              bbox=dict(boxstyle="round,pad=0.45", linewidth=0.9,
                                        facecolor=colour[parts.get(stem, "")],
                                        edgecolor="#4a4a4a"))
    for dep, stem, kind in reduced_edges(chapters):
        (x0, l0), (x1, l1) = pos[dep], pos[stem]
        bend = 0.25 if abs(l1 - l0) > 1 else 0.0
        ax.annotate("", xy=(x1, -l1), xytext=(x0, -l0),
                    arrowprops=dict(arrowstyle="-|>", color="#333333", linewidth=1.1,
                                    linestyle="-" if kind == "requires" else (0, (4, 3)),
                                    shrinkA=2, shrinkB=2, mutation_scale=12,
                                    patchA=boxes[dep].get_bbox_patch(),
                                    patchB=boxes[stem].get_bbox_patch(),
                                    connectionstyle=f"arc3,rad={bend}"))
    handles = [Patch(facecolor=colour[c], edgecolor="#4a4a4a", label=c) for c in captions if c]
    handles += [Line2D([], [], color="#333333", label="needs"),
                Line2D([], [], color="#333333", linestyle=(0, (4, 3)), label="helpful")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=12.5,
               frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_bytes() != buffer.getvalue():
        path.write_bytes(buffer.getvalue())
    sentences = []
    for stem, info in chapters.items():
        needs = [chapters[d].get("short", d) for d in info.get("requires") or []]
        if needs:
            sentences.append(f"{chapters[stem].get('short', stem)} needs {', '.join(needs)}.")
    return "Chapter dependency graph. " + " ".join(sentences)


# ---- MyST text ---------------------------------------------------------------------------------

def _section_ref(label: str, titles: dict[str, str]) -> str:
    """§ number and title, both links. The title is the notebook's heading as a MyST link, so
    its math is typeset ({ref} and {numref} would print a title's TeX source)."""
    title = titles.get(label)
    if title and not re.search(r"[][{}`]", re.sub(r"\$[^$]*\$", "", title)):   # math is fine
        return f"{{numref}}`§%s <{label}>` [{title}](#{label})"
    return f"{{numref}}`§{{number}} {{name}} <{label}>`"


def section_titles(notebooks: dict[str, dict]) -> dict[str, str]:
    return {label: sec["title"] for nb in notebooks.values()
            for label, sec in sections(nb).items() if sec["title"]}


def _chapter_ref(stem: str, short: str | None = None) -> str:
    if short is None:
        return f"{{numref}}`Chapter %s <ch-{stem}>`"
    short = short.replace("{", "{{").replace("}", "}}")
    return f"{{numref}}`{{number}}. {short} <ch-{stem}>`"


def _exercise_refs(labels, order) -> str:
    """The exercises' numbers, in the book's order (an unknown label last: problems() names it)."""
    rank = {lbl: i for i, lbl in enumerate(order)}
    return ", ".join(f"{{numref}}`%s <{lbl}>`"
                     for lbl in sorted(labels, key=lambda lbl: rank.get(lbl, len(rank))))


def lecture_anchor(plan_key: str, n: int) -> str:
    return f"syllabus-{plan_key}-lecture-{n}"


def week_anchor(plan_key: str, w: int) -> str:
    return f"syllabus-{plan_key}-week-{w}"


ACTIVITY = {
    "figure": "The kernel-free figure of {ref}, on the website (no kernel needed).",
    "calculator": "The calculator of {ref}, in JupyterLab or Binder (it needs a kernel).",
    "check": "The check cell of {ref} that begins `{check} …`, run live in JupyterLab.",
}


def plan_markdown(course: dict, key: str, order: list[str], titles: dict[str, str],
                  level: int = 3) -> str:
    plan = course["plans"][key]
    h = "#" * level
    lines = []
    last_week = 0
    for w, n, lec in lectures(plan):
        week = plan["weeks"][w - 1]
        if w != last_week:
            if last_week:
                lines += _problem_set_lines(plan["weeks"][last_week - 1], last_week, order)
            lines += [f"({week_anchor(key, w)})=", f"{h} Week {w}: {week['title']}", ""]
            last_week = w
        act = lec["activity"]
        lines += [f"({lecture_anchor(key, n)})=", f"{h}# Lecture {n}: {lec['title']}", ""]
        if lec.get("pre_reading"):
            lines += ["**Read before the lecture.** "
                      + "; ".join(_section_ref(s, titles) for s in lec["pre_reading"]) + ".", ""]
        lines += ["**Sections.** " + "; ".join(_section_ref(s, titles) for s in lec["sections"])
                  + ".", ""]
        if lec.get("reading"):
            lines += ["**Reading.** " + "; ".join(_section_ref(s, titles) for s in lec["reading"])
                      + ".", ""]
        lines += ["**Objectives.** After the lecture students can", ""]
        lines += [f"{i}. {' '.join(o.split())}" for i, o in enumerate(lec["objectives"], 1)] + [""]
        what = ACTIVITY[act["kind"]].format(ref=_section_ref(act["section"], titles),
                                            check=f"# Check: {act.get('check', '')}")
        lines += [f"**In class, {act['minutes']} minutes.** {what} {' '.join(act['text'].split())}",
                  "", f"*Time: {lec['minutes']} minutes of lecture, {act['minutes']} of activity.*",
                  ""]
    lines += _problem_set_lines(plan["weeks"][last_week - 1], last_week, order)
    return "\n".join(lines)


def _problem_set_lines(week: dict, w: int, order: list[str]) -> list[str]:
    ps = week.get("problem_set", {})
    required = _exercise_refs(ps.get("required") or [], order)
    text = f"**Problem set {w}.** Required: exercises {required}."
    if ps.get("optional"):
        text += f" Optional: {_exercise_refs(ps['optional'], order)}."
    return [text, ""]


def chapters_markdown(course: dict) -> str:
    chapters = course["chapters"]
    number = {stem: i for i, stem in enumerate(chapters, 1)}
    plans = course["plans"]
    head = ["Chapter", "What it teaches", "Builds on"] + [f"{k.capitalize()} lectures"
                                                          for k in plans]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stem, info in chapters.items():
        needs = ", ".join(str(number[d]) for d in info.get("requires") or []) or "—"
        if info.get("helpful"):
            needs += f" (helpful: {', '.join(str(number[d]) for d in info['helpful'])})"
        cells = [_chapter_ref(stem, info.get("short", stem)),
                 " ".join(info.get("teaches", "").split()), needs]
        for key, plan in plans.items():
            ns = [n for _, n, lec in lectures(plan) if stem in lecture_chapters(lec, chapters)]
            cells.append(", ".join(f"{{ref}}`{n} <{lecture_anchor(key, n)}>`" for n in ns))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def problem_sets_markdown(course: dict, notebooks: dict[str, dict]) -> str:
    chapters = course["chapters"]
    order = [lbl for stem in chapters for lbl in exercise_labels(notebooks[stem])]
    plans = course["plans"]
    head = ["Chapter"] + [plans[k].get("title", k).removeprefix("The ").capitalize() for k in plans]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stem in chapters:
        cells = [_chapter_ref(stem, chapters[stem].get("short", stem))]
        for key, plan in plans.items():
            parts = []
            for w, week in enumerate(plan["weeks"], 1):
                ps = week.get("problem_set", {})
                mine = {k: [lbl for lbl in ps.get(k) or [] if _chapter_of(lbl, chapters) == stem]
                        for k in ("required", "optional")}
                if not any(mine.values()):
                    continue
                text = f"{{ref}}`set {w} <{week_anchor(key, w)}>`: "
                text += _exercise_refs(mine["required"], order) if mine["required"] else ""
                if mine["optional"]:
                    text += ("; " if mine["required"] else "") + "optional " + _exercise_refs(
                        mine["optional"], order)
                parts.append(text)
            cells.append(" · ".join(parts))
        lines.append("| " + " | ".join(cells) + " |")
    totals = ["In all"]
    for plan in plans.values():
        p = placements(plan)
        req = sum(1 for _, _, opt in p if not opt)
        totals.append(f"{len(plan['weeks'])} sets: {req} required, {len(p) - req} optional")
    lines.append("| " + " | ".join(totals) + " |")
    return "\n".join(lines)


def misconceptions_markdown(course: dict, notebooks: dict[str, dict]) -> str:
    lines = []
    for stem in course["chapters"]:
        lines += [f"**{_chapter_ref(stem)}, {{ref}}`ch-{stem}`** "
                  f"({{ref}}`its common mistakes <ch-{stem}-mistakes>`):", ""]
        lines += [f"- {item}" for item in mistakes(notebooks[stem], stem)] + [""]
    return "\n".join(lines)


# ---- the directives ----------------------------------------------------------------------------

class _CourseDirective(SphinxDirective):
    """Reads the sources, notes them as the page's dependencies, reports the plan's problems."""

    def _read(self) -> tuple[dict, dict[str, dict]]:
        root = Path(self.env.srcdir)
        course = load_course(root)
        toc = toc_chapters(root)
        stems = [s for s in dict.fromkeys(list(course.get("chapters", {})) + toc)
                 if (root / NOTEBOOKS / f"{s}.ipynb").is_file()]
        notebooks = load_notebooks(root, stems)
        for path in [COURSE, TOC, *(NOTEBOOKS / f"{s}.ipynb" for s in stems)]:
            self.env.note_dependency(str(root / path))
        self.env.note_dependency(__file__)
        return course, notebooks

    def sources(self) -> tuple[dict, dict[str, dict]]:
        course, notebooks = self._read()
        if not self.env.temp_data.get("course_checked"):   # once per page (temp_data is per page)
            self.env.temp_data["course_checked"] = True
            for problem in problems(course, notebooks, toc_chapters(Path(self.env.srcdir))):
                logger.warning(f"course.yml: {problem}", location=(self.env.docname, self.lineno),
                               type="course", subtype="plan")
        return course, notebooks

    def parse(self, text: str) -> list[nodes.Node]:
        holder = nodes.Element()
        self.state.nested_parse(StringList(text.splitlines(), source=str(COURSE)),
                                self.content_offset, holder)
        return holder.children

    def parse_here(self, text: str) -> list[nodes.Node]:
        """Parse ``text``, headings included, straight into the section the directive is in
        (the way Sphinx's ``nested_parse_with_titles`` does): its headings become subsections.
        The directive then returns nothing, so it must come last in its section."""
        self.state.nested_parse(StringList(text.splitlines(), source=str(COURSE)),
                                self.content_offset, self.state_machine.node, match_titles=True)
        return []


class CourseGraph(_CourseDirective):
    """The dependency graph as a figure; the directive's content is its caption."""

    has_content = True
    option_spec = {"name": directives.unchanged, "width": directives.unchanged}

    def run(self):
        course, _ = self.sources()
        root = Path(self.env.srcdir)
        alt = draw_graph(course["chapters"], toc_parts(root), root / GRAPH)
        figure = nodes.figure()
        figure += nodes.image(uri="/" + GRAPH.as_posix(), alt=alt,
                              width=self.options.get("width", "100%"))
        if self.content:
            body = self.parse("\n".join(self.content))
            if body and isinstance(body[0], nodes.paragraph):
                figure += nodes.caption(body[0].rawsource, "", *body[0].children)
                if len(body) > 1:
                    figure += nodes.legend("", *body[1:])
        if "name" in self.options:
            self.add_name(figure)
        return [figure]


class CourseChapters(_CourseDirective):
    def run(self):
        course, _ = self.sources()
        return self.parse(chapters_markdown(course))


class CoursePlan(_CourseDirective):
    required_arguments = 1
    option_spec = {"heading-level": directives.positive_int}

    def run(self):
        course, notebooks = self.sources()
        key = self.arguments[0]
        if key not in course.get("plans", {}):
            logger.warning(f"course.yml has no plan {key!r}", location=(self.env.docname,
                                                                         self.lineno))
            return []
        order = [lbl for stem in course["chapters"] if stem in notebooks
                 for lbl in exercise_labels(notebooks[stem])]
        level = self.options.get("heading-level", self.state.memo.section_level + 1)
        return self.parse_here(plan_markdown(course, key, order, section_titles(notebooks), level))


class CourseProblemSets(_CourseDirective):
    def run(self):
        course, notebooks = self.sources()
        return self.parse(problem_sets_markdown(course, notebooks))


class CourseMisconceptions(_CourseDirective):
    def run(self):
        course, notebooks = self.sources()
        for stem in course["chapters"]:
            if "{eval}" in " ".join(misconceptions(notebooks.get(stem, {"cells": []}), stem)):
                logger.warning(f"{stem}: a Common-mistakes lead-in holds an {{eval}} role, which "
                               f"only its own page can paste", location=(self.env.docname,
                                                                         self.lineno))
        return self.parse(misconceptions_markdown(course, notebooks))


class CourseExams(_CourseDirective):
    def run(self):
        course, notebooks = self.sources()
        return self.parse(exams_markdown(course, notebooks))


class ExerciseNumbersInLatex(SphinxPostTransform):
    """The PDF's links to another chapter's exercise, numbered as sphinx-exercise numbers them.

    sphinx-exercise prints an exercise reference as ``\\hyperref[exercise:<label>]{...}`` only
    when it is on the exercise's own page; the LaTeX writer turns a reference from another page
    (the syllabus's problem sets) into ``\\ref`` of a label that sphinx-exercise never defines,
    printed "??". This gives those the same form, with the number Sphinx resolved.
    """

    default_priority = 25   # after sphinx-exercise's own (22)
    formats = ("latex",)

    def run(self, **kwargs):
        try:
            from sphinx_exercise.nodes import (exercise_enumerable_node,
                                               exercise_latex_number_reference)
        except ImportError:
            return
        registry = getattr(self.env, "sphinx_exercise_registry", {})
        for node in list(self.document.findall(addnodes.number_reference)):
            uri = node.get("refuri", "")
            label = uri.rpartition("#")[2] if "#" in uri else node.get("refid", "")
            if isinstance(registry.get(label, {}).get("node"), exercise_enumerable_node):
                number = exercise_latex_number_reference(refid=label)
                number += nodes.Text(node.astext())
                node.replace_self(number)


def _derivation_style(app, config):
    # book/_static/course.css marks derivation exercises in their titles (HTML only).
    config.html_static_path.append(str(Path(__file__).parents[1] / "_static"))


def setup(app):
    app.connect("config-inited", _derivation_style)
    app.add_css_file("course.css")
    # The build executes the chapters: a worked solution whose number is not the shipped answer
    # must fail it (a stale answer file), not make a new problem as in a reader's kernel.
    os.environ.setdefault(_exercises.VERIFY_ENV, "1")
    app.add_post_transform(ExerciseNumbersInLatex)
    app.add_directive("course-exams", CourseExams)
    app.add_directive("course-graph", CourseGraph)
    app.add_directive("course-chapters", CourseChapters)
    app.add_directive("course-plan", CoursePlan)
    app.add_directive("course-problem-sets", CourseProblemSets)
    app.add_directive("course-misconceptions", CourseMisconceptions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
