"""The course plan (book/course.yml) against the book: chapters, sections, exercises, minutes.

The syllabus page (book/syllabus.md) is rendered from course.yml by book/_ext/course.py. These
tests read the notebooks with their own regular expressions, so that a bug in the extension's
parsing cannot hide a gap in the plan; the misconception extraction is the extension's own.
A new exercise fails test_each_plan_places_every_exercise_once until a problem set holds it.
"""

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
COURSE = yaml.safe_load((ROOT / "book" / "course.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
PLANS = list(COURSE["plans"])
MINUTES = 80


def _load_extension():
    path = ROOT / "book" / "_ext" / "course.py"
    spec = importlib.util.spec_from_file_location("course_ext", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ext = _load_extension()


def toc_chapters(node):
    if isinstance(node, dict):
        if str(node.get("file", "")).startswith("notebooks/"):
            yield node["file"].removeprefix("notebooks/")
        for value in node.values():
            yield from toc_chapters(value)
    elif isinstance(node, list):
        for item in node:
            yield from toc_chapters(item)


CHAPTERS = list(toc_chapters(TOC))
NOTEBOOKS = {stem: json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())
             for stem in CHAPTERS}


def markdown(stem):
    return "\n".join("".join(c["source"]) for c in NOTEBOOKS[stem]["cells"]
                     if c["cell_type"] == "markdown")


def section_labels(stem):
    """label -> heading level (None when the label is on a paragraph)."""
    found = {}
    for m in re.finditer(r"^\((ch-[\w-]+)\)=\n(?:(#+) )?", markdown(stem), re.M):
        found[m.group(1)] = len(m.group(2)) if m.group(2) else None
    return found


def exercises(stem):
    return re.findall(r"^```\{exercise\}[^\n]*\n(?::[\w-]+:[^\n]*\n)*?:label: (ex-[\w-]+)",
                      markdown(stem), re.M)


SECTIONS = {stem: section_labels(stem) for stem in CHAPTERS}
ALL_SECTIONS = {label for labels in SECTIONS.values() for label in labels}
EXERCISES = [label for stem in CHAPTERS for label in exercises(stem)]


def lectures(plan):
    return [lec for week in COURSE["plans"][plan]["weeks"] for lec in week["lectures"]]


def named(lec):
    """The sections a lecture names: read before it, taught, read after it."""
    return lec.get("pre_reading", []) + lec["sections"] + lec.get("reading", [])


def chapter_of(label):
    body = label.split("-", 1)[1]
    return max((s for s in CHAPTERS if body == s or body.startswith(s + "-")), key=len)


def test_the_chapters_are_the_tocs():
    assert list(COURSE["chapters"]) == CHAPTERS
    assert len(EXERCISES) == len(set(EXERCISES)) >= 105


def test_prerequisites_name_only_earlier_chapters():
    for i, (stem, info) in enumerate(COURSE["chapters"].items()):
        for dep in (info.get("requires") or []) + (info.get("helpful") or []):
            assert dep in CHAPTERS[:i], (stem, dep)   # earlier in the toc: so acyclic


def test_prerequisites_agree_with_the_chapters_tables():
    # Each notebook's prerequisites table names earlier chapters as Necessary or Helpful.
    for i, stem in enumerate(CHAPTERS):
        text = markdown(stem)
        table = text[text.index("**Prerequisites"):text.index("*Time to learn")]
        rows = re.findall(r"^\| \{doc\}`(?:[^`<]*<)?(?:\.\./notebooks/)?([\w-]+)>?` \| (\w+)",
                          table, re.M)
        earlier = {k: {d for d, kind in rows if kind == k and d in CHAPTERS[:i]}
                   for k in ("Necessary", "Helpful")}
        info = COURSE["chapters"][stem]
        assert set(info.get("requires") or []) == earlier["Necessary"], stem
        assert set(info.get("helpful") or []) == earlier["Helpful"], stem


@pytest.mark.parametrize("plan", PLANS)
def test_every_section_named_exists_in_its_notebook(plan):
    for lec in lectures(plan):
        for label in named(lec) + [lec["activity"]["section"]]:
            assert label in SECTIONS[chapter_of(label)], (lec["title"], label)


@pytest.mark.parametrize("plan", PLANS)
def test_each_plan_covers_every_section(plan):
    placed = {label for lec in lectures(plan)
              for label in named(lec) + [lec["activity"]["section"]]}
    structural = ("-mistakes", "-takeaways", "-exercises", "-references")
    for stem, labels in SECTIONS.items():
        for label, level in labels.items():
            if level == 2 and not label.endswith(structural):
                assert label in placed, f"{plan}: {label} is neither taught nor read"


@pytest.mark.parametrize("plan", PLANS)
def test_each_plan_places_every_exercise_once(plan):
    placed = []
    for week in COURSE["plans"][plan]["weeks"]:
        ps = week["problem_set"]
        placed += (ps.get("required") or []) + (ps.get("optional") or [])
        assert ps.get("required"), week["title"]
    assert sorted(set(placed) - set(EXERCISES)) == [], "labels that are no exercise"
    missing = [e for e in EXERCISES if e not in placed]
    assert missing == [], f"{plan}: exercises in no problem set: {missing}"
    twice = sorted({e for e in placed if placed.count(e) > 1})
    assert twice == [], f"{plan}: exercises in more than one problem set: {twice}"


@pytest.mark.parametrize("plan", PLANS)
def test_problem_sets_follow_their_chapters(plan):
    taught = {}
    for w, week in enumerate(COURSE["plans"][plan]["weeks"], 1):
        for lec in week["lectures"]:
            mine = {chapter_of(label) for label in named(lec)}   # taught together
            for stem in mine:
                taught.setdefault(stem, w)
            for stem in mine:
                for dep in COURSE["chapters"][stem]["requires"]:
                    assert dep in taught, f"{plan}: {stem} before {dep}, which it requires"
        ps = week["problem_set"]
        for label in ps["required"] + (ps.get("optional") or []):
            assert taught.get(chapter_of(label), w + 1) <= w, (plan, w, label)


@pytest.mark.parametrize("plan", PLANS)
def test_every_lecture_has_objectives_an_activity_and_fits(plan):
    for lec in lectures(plan):
        act = lec["activity"]
        assert 2 <= len(lec["objectives"]) <= 4, lec["title"]
        assert act["kind"] in ("figure", "calculator", "check") and act["text"].strip()
        assert 0 < act["minutes"] and 0 < lec["minutes"]
        assert lec["minutes"] + act["minutes"] <= MINUTES, lec["title"]
        assert lec["sections"], lec["title"]


@pytest.mark.parametrize("plan", PLANS)
def test_activities_name_what_their_section_holds(plan):
    for lec in lectures(plan):
        act = lec["activity"]
        stem = chapter_of(act["section"])
        section = ext.sections(NOTEBOOKS[stem])[act["section"]]
        code = "\n".join(section["code"])
        if act["kind"] == "figure":
            assert re.search(r"interactive_\w+\(", code), act["section"]
        elif act["kind"] == "calculator":
            assert re.search(r"_(calculator|explorer)\(", code), act["section"]
        else:
            firsts = [c.lstrip().splitlines()[0] for c in section["code"]
                      if c.lstrip().startswith("# Check:")]
            assert any(line.startswith(f"# Check: {act['check']}") for line in firsts), \
                (act["section"], act["check"])


@pytest.mark.parametrize("stem", CHAPTERS)
def test_misconceptions_are_extracted_from_common_mistakes(stem):
    leads = ext.misconceptions(NOTEBOOKS[stem], stem)
    assert len(leads) >= 4, leads
    text = " ".join(markdown(stem).split())
    section = text[text.index(f"(ch-{stem}-mistakes)="):text.index(f"(ch-{stem}-takeaways)=")]
    for lead in leads:
        assert lead in section and "**" not in lead and "\n" not in lead
    assert "{eval}" not in " ".join(leads)   # a glued value pastes only on its own page


@pytest.mark.parametrize("stem", CHAPTERS)
def test_mistakes_show_each_lead_in_and_its_first_sentence(stem):
    items = ext.mistakes(NOTEBOOKS[stem], stem)
    leads = ext.misconceptions(NOTEBOOKS[stem], stem)
    assert len(items) == len(leads)
    text = " ".join(markdown(stem).split())
    section = text[text.index(f"(ch-{stem}-mistakes)="):text.index(f"(ch-{stem}-takeaways)=")]
    for item, lead in zip(items, leads):
        assert item.startswith("**" + lead) and item in section, item
        assert "{eval}" not in item and item.count("$") % 2 == 0 and item.count("`") % 2 == 0
        rest = item[item.index("**", 2) + 2:]
        assert rest == "" or rest.endswith("."), item   # a whole sentence, or the lead-in alone
    assert sum(item.endswith(".") for item in items) > len(items) / 2   # most have a sentence


def test_first_sentence_keeps_math_and_roles_whole():
    assert ext.first_sentence(" $a = 1.5. b$ holds. Next.") == "$a = 1.5. b$ holds."
    assert ext.first_sentence(" see {ref}`x. y` here, e.g. this. Next.") == \
        "see {ref}`x. y` here, e.g. this."
    assert ext.first_sentence(", which\n  spans lines") == ", which spans lines"
    nb = {"cells": [{"cell_type": "markdown", "source": (
        "(ch-x-mistakes)=\n## Common mistakes\n\n- **One.** First $2mkn$. Second.\n"
        "- **Two**, which runs on\n  over lines. Then more.\n"
        "- **Three.** It is {eval}`g.v` bytes. More.\n\nA closing paragraph.\n\n"
        "(ch-x-takeaways)=\n## Takeaways\n\n- **Not one.** text\n")}]}
    assert ext.mistakes(nb, "x") == ["**One.** First $2mkn$.",
                                     "**Two**, which runs on over lines.", "**Three.**"]


def test_misconception_extraction_reads_bullets_and_numbers():
    nb = {"cells": [{"cell_type": "markdown", "source": (
        "(ch-x-mistakes)=\n## Common mistakes\n\n- **One.** text\n"
        "- **Two** runs on,\n  over lines.\n1. **Three $2mkn$:** text\n\n"
        "(ch-x-takeaways)=\n## Takeaways\n\n- **Not one.** text\n")},
        {"cell_type": "markdown", "source": "(ch-x-exercises)=\n## Exercises\n"}]}
    assert ext.misconceptions(nb, "x") == ["One", "Two", "Three $2mkn$"]


def test_a_pre_reading_is_rendered_before_the_sections():
    plan = {"weeks": [{"title": "W", "problem_set": {"required": []}, "lectures": [{
        "title": "L", "pre_reading": ["ch-a-pre"], "sections": ["ch-a-b"], "reading": [],
        "objectives": ["o", "p"], "minutes": 65,
        "activity": {"kind": "figure", "section": "ch-a-b", "minutes": 15, "text": "t"}}]}]}
    text = ext.plan_markdown({"plans": {"p": plan}}, "p", [], {})
    assert text.index("**Read before the lecture.**") < text.index("ch-a-pre>") \
        < text.index("**Sections.**")


def test_the_extension_finds_no_problem():
    assert ext.problems(COURSE, NOTEBOOKS, CHAPTERS) == []
    assert ext.exercise_labels(NOTEBOOKS["inference"]) == exercises("inference")


def test_the_extension_reports_an_unplaced_exercise():
    plans = {k: dict(p, weeks=[dict(w, problem_set={"required": w["problem_set"]["required"][1:],
                                                   "optional": w["problem_set"].get("optional")})
                               for w in p["weeks"]]) for k, p in COURSE["plans"].items()}
    found = ext.problems(dict(COURSE, plans=plans), NOTEBOOKS, CHAPTERS)
    first = COURSE["plans"]["four-week"]["weeks"][0]["problem_set"]["required"][0]
    assert f"plan four-week: exercise {first} is in 0 problem sets, not 1" in found


def test_the_graph_draws_each_dependency_once():
    edges = ext.reduced_edges(COURSE["chapters"])
    drawn = {(a, b) for a, b, _ in edges}
    assert ("matmuls", "weight-flops") in drawn and ("matmuls", "attention") not in drawn
    layout = ext.graph_layout(COURSE["chapters"])
    assert set(layout) == set(CHAPTERS)
    assert all(layout[a][1] < layout[b][1] for a, b, kind in edges if kind == "requires")


def test_the_syllabus_is_in_the_toc_and_renders_both_plans():
    files = [f["file"] for part in TOC["parts"] for f in part["chapters"]]
    assert "book/syllabus" in files
    page = (ROOT / "book" / "syllabus.md").read_text()
    for plan in PLANS:
        assert f"```{{course-plan}} {plan}" in page
    for directive in ("course-graph", "course-chapters", "course-problem-sets",
                      "course-misconceptions"):
        assert f"```{{{directive}}}" in page
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["sphinx"]["local_extensions"]["course"] == "book/_ext"


@pytest.mark.parametrize("plan", PLANS)
def test_each_plan_has_a_handout_with_every_problem_set_in_order(plan):
    """book/problem-sets-<plan>.md: one {problem-set} per week, under its heading, in the toc."""
    page = (ROOT / "book" / f"problem-sets-{plan}.md").read_text()
    weeks = re.findall(r"^## Problem set (\d+)\n\n```\{problem-set\} ([\w-]+) (\d+)\n```", page, re.M)
    n = len(COURSE["plans"][plan]["weeks"])
    assert weeks == [(str(w), plan, str(w)) for w in range(1, n + 1)]
    assert page.count("{problem-set}") == n
    assert f"book/problem-sets-{plan}" in (ROOT / "_toc.yml").read_text()


# ---- the problems themselves (issue 18) ---------------------------------------------------------

def _exercises_with_class(stem):
    found = []
    for m in re.finditer(r"```\{exercise\}[^\n]*\n((?::[\w-]+:[^\n]*\n)*)", markdown(stem)):
        label = re.search(r":label: (ex-[\w-]+)", m.group(1))
        classes = re.search(r":class: ([^\n]*)", m.group(1))
        found.append((label.group(1), classes.group(1).split() if classes else []))
    return found


@pytest.mark.parametrize("stem", CHAPTERS)
def test_each_chapter_has_eight_exercises_a_third_of_them_derivations(stem):
    found = _exercises_with_class(stem)
    derivations = [label for label, classes in found if "derivation" in classes]
    assert len(found) >= 8, f"{stem}: {len(found)} exercises"
    assert 3 * len(derivations) >= len(found), f"{stem}: {len(derivations)} of {len(found)}"


def _instructor_cells(stem):
    return [c for c in NOTEBOOKS[stem]["cells"]
            if "instructor-only" in c.get("metadata", {}).get("tags", [])]


@pytest.mark.parametrize("stem", CHAPTERS)
def test_each_chapter_has_one_exam_question_with_a_marking_scheme_that_adds_up(stem):
    cells = _instructor_cells(stem)
    texts = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    exams = [t for t in texts if f"({'exam-' + stem})=" in t]
    assert len(exams) == 1, f"{stem}: {len(exams)} exam questions"
    total = re.search(r"```\{admonition\} Exam question \((\d+) marks\): [A-Z0-9]", exams[0])
    marks = [int(m) for m in re.findall(r"\*\*\((\d+) marks?\)\*\*", exams[0])]
    assert total and len(marks) >= 3 and sum(marks) == int(total.group(1)), (total, marks)
    assert "Marking scheme" in exams[0]
    # its numbers are computed in its own instructor-only code cell, and never shipped as answers
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert code and all("record_answer" not in c for c in code)
    keys = set(re.findall(r"\{eval\}`g\.(\w+)`", exams[0]))
    glued = set(re.findall(r"glue\(\s*[\"'](\w+)[\"']", "\n".join(code)))
    assert keys <= glued, f"{stem}: exam keys glued elsewhere: {sorted(keys - glued)}"
    assert ext.exams(NOTEBOOKS[stem]) and ext.exams(NOTEBOOKS[stem])[0][0] == f"exam-{stem}"


def test_the_student_edition_drops_the_exam_questions():
    from flopsbook import editions

    stem = CHAPTERS[0]
    assert ext.exams(NOTEBOOKS[stem])
    assert ext.exams(editions.student_notebook(NOTEBOOKS[stem])) == []
    text = ext.exams_markdown(COURSE, {stem: editions.student_notebook(NOTEBOOKS[stem])})
    assert "instructor edition" in text
