"""Self-checking answers (flopsbook.check) and the student edition's notebooks (fast: no build).

The slow half, building the student site and searching it for solution text, runs in .ci/run
(`python -m flopsbook.editions student`); here the same leak search runs on the notebooks the
edition is built from, with the instructor notebooks as the control that it finds solutions.
"""

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import flopsbook as fb
from flopsbook import editions, exercises

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _nb(path):
    return json.loads(path.read_text())


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A chapter 'toy' with one-part, two-part and non-numeric exercises."""
    rows = [
        dict(label="ex-toy-one", part=None, unit="bytes", prompt="the cache", rtol=0.02,
             code=exercises._encode("ex-toy-one", None, 1.5e9)),
        dict(label="ex-toy-two", part="a", unit="ms", prompt="latency", rtol=0.02,
             code=exercises._encode("ex-toy-two", "a", 12.0)),
        dict(label="ex-toy-two", part="b", unit="sequences", prompt="batch", rtol=0.0,
             code=exercises._encode("ex-toy-two", "b", 83.0)),
        dict(label="ex-toy-words", no_number="it asks for an explanation"),
        dict(label="ex-toy-flops", part=None, unit="FLOPs", prompt="training", rtol=0.02,
             code=exercises._encode("ex-toy-flops", None, 6e23)),
        dict(label="ex-toy-days", part=None, unit="days", prompt="time", rtol=0.02,
             code=exercises._encode("ex-toy-days", None, 17.0)),
        dict(label="ex-toy-pct", part=None, unit="% of peak", prompt="MFU", rtol=0.02,
             code=exercises._encode("ex-toy-pct", None, 41.0)),
    ]
    monkeypatch.setattr(exercises, "ANSWERS_DIR", tmp_path)
    exercises.write_answers("toy", rows, tmp_path)
    yield tmp_path
    exercises._shipped.cache_clear()


# ---- check: verdicts and hints ------------------------------------------------------------

@pytest.mark.parametrize("answer, right", [(1.5e9, True), (1.529e9, True), (1.471e9, True),
                                           (1.531e9, False), (1.46e9, False), (np.float64(1.5e9), True),
                                           (np.array([1.5e9]), True), (1500000000, True)])
def test_within_the_tolerance(toy, answer, right):
    assert bool(fb.check("ex-toy-one", answer)) is right


@pytest.mark.parametrize("label, answer, words", [
    ("ex-toy-one", 3.0e9, "2 times too large. A classic slip: K and V both"),
    ("ex-toy-one", 0.75e9, "2 times too small"),
    ("ex-toy-one", 24e9, "16 times too large. A classic slip: 16 bytes per parameter"),
    ("ex-toy-one", 1.5e9 * 2**30 / 1e9, "GiB vs GB"),
    ("ex-toy-one", 1.5e6, "10^3 times too small; check the unit"),
    ("ex-toy-one", 1.5e15, "10^6 times too large"),
    ("ex-toy-one", 4.0e11, "more than 10 times too large"),
    ("ex-toy-one", -1.5e9, "sign"),
    ("ex-toy-one", 0, "sign"),
    ("ex-toy-one", 1.7e9, "not within 2% of the book's answer (yours is too large)"),
    ("ex-toy-one", 4.5e9, "not within 2%"),   # a factor of 3 is no slip for bytes
    ("ex-toy-flops", 1.2e24, "2 times too large. A classic slip: 2 FLOPs per multiply-add"),
    ("ex-toy-flops", 2e23, "3 times too small. A classic slip: training = forward + backward"),
    ("ex-toy-flops", 1e23, "6 times too small. A classic slip: 6ND"),
    ("ex-toy-flops", 6e23 * 1.0737, "not within 2%"),   # no GiB hint for FLOPs
    ("ex-toy-days", 17 * 24, "24 times too large. A classic slip: hours vs days"),
    ("ex-toy-days", 51, "3 times too large"),
    ("ex-toy-pct", 0.41, "100 times too small. A classic slip: a percentage, not a fraction"),
])
def test_hints_name_the_slip_for_the_unit_without_the_answer(toy, label, answer, words):
    result = fb.check(label, answer)
    assert not result and result.correct is False
    assert words in result.message
    for shown in ("1.5", "1500", "6e", "17", "41"):
        assert shown not in result.message.replace(label, "")


def test_exact_answers_and_parts(toy):
    assert fb.check("ex-toy-two", 83, part="b").message == "ex-toy-two (b): correct (exactly)."
    for near in (82, 84):   # a count: no direction to bisect it with
        assert fb.check("ex-toy-two", near, part="b").message == (
            "ex-toy-two (b): not the exact count: check < vs <= and rounding up or down.")
    both = fb.check("ex-toy-two", {"a": 12.1, "b": 83})
    assert both and both.message.count("correct") == 2
    assert fb.check("ex-toy-two", {"a": 12.1, "b": 82}).correct is False


def test_none_says_what_to_fill_in(toy):
    result = fb.check("ex-toy-two", {"a": None, "b": 83})
    assert result.correct is None and not result
    assert "ex-toy-two (a): replace None with your answer in ms." in result.message
    assert repr(fb.check("ex-toy-one")) == "ex-toy-one: replace None with your answer in bytes."


@pytest.mark.parametrize("call, words", [
    (lambda: fb.check("ex-toy-words", 3), "has no numeric answer to check: it asks for an explanation"),
    (lambda: fb.check("ex-toy-tow", 3), "label: no exercise 'ex-toy-tow'.*closest: ex-toy-two"),
    (lambda: fb.check(3, 3), "label must be an exercise label"),
    (lambda: fb.check("ex-toy-two", 3), "part: exercise 'ex-toy-two' has parts 'a', 'b'"),
    (lambda: fb.check("ex-toy-two", 3, part="c"), "part must be one of 'a', 'b'"),
    (lambda: fb.check("ex-toy-one", 3, part="a"), r"part must be one of None \(a one-part"),
    (lambda: fb.check("ex-toy-two", {"c": 1}), "answer: exercise 'ex-toy-two' has no part 'c'"),
    (lambda: fb.check("ex-toy-two", {"a": 1}, part="a"), "answer: a dict of parts"),
    (lambda: fb.check("ex-toy-one", "3"), "answer must be a number"),
    (lambda: fb.check("ex-toy-one", True), "answer must be a number"),
    (lambda: fb.check("ex-toy-one", float("inf")), "answer must be a finite number"),
    (lambda: fb.check("ex-toy-one", 10**400), "answer must be a finite number"),
    (lambda: fb.check("ex-toy-one", [1, 2]), "answer must be a number"),
])
def test_refusals_are_value_errors(toy, call, words):
    with pytest.raises(ValueError, match=words):
        call()


def test_record_answer_checks_the_shipped_answer(toy, monkeypatch):
    monkeypatch.setenv(exercises.VERIFY_ENV, "1")   # as the build and the test suite set it
    exercises.record_answer("ex-toy-one", 1.5e9, unit="bytes", prompt="the cache")
    exercises.record_no_number("ex-toy-words", "it asks for an explanation")
    for bad in (dict(value=1.6e9), dict(unit="GB"), dict(rtol=0.05), dict(part="a")):
        kwargs = dict(value=1.5e9, unit="bytes", prompt="the cache") | bad
        with pytest.raises(ValueError, match="editions answers"):
            exercises.record_answer("ex-toy-one", **kwargs)
    with pytest.raises(ValueError, match="editions answers"):
        exercises.record_no_number("ex-toy-one", "it asks for an explanation")


def test_a_changed_answer_outside_the_build_is_a_new_problem(toy, monkeypatch):
    """An instructor who edits an exercise's values and re-runs gets a consistent check."""
    monkeypatch.delenv(exercises.VERIFY_ENV, raising=False)
    monkeypatch.setattr(exercises, "_LOCAL", {})
    assert fb.check("ex-toy-two", 12.0, part="a")
    with pytest.warns(UserWarning, match="new problem"):
        exercises.record_answer("ex-toy-two", 24.0, unit="ms", prompt="latency", part="a")
    assert fb.check("ex-toy-two", 24.0, part="a") and not fb.check("ex-toy-two", 12.0, part="a")
    assert fb.check("ex-toy-two", 83.0, part="b")          # the part left alone keeps its answer
    with pytest.warns(UserWarning, match="new problem"):
        exercises.record_answer("ex-brand-new", 3.0, unit="s", prompt="time")
    assert fb.check("ex-brand-new", 3.0) and not fb.check("ex-brand-new", 6.0)
    with pytest.warns(UserWarning, match="new problem"):
        exercises.record_no_number("ex-toy-one", "it now asks for a sketch")
    with pytest.raises(ValueError, match="a sketch"):
        fb.check("ex-toy-one", 1.5e9)
    # a value changed back: the shipped answers are right again, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exercises.record_answer("ex-toy-two", 12.0, unit="ms", prompt="latency", part="a")
        exercises.record_answer("ex-toy-one", 1.5e9, unit="bytes", prompt="the cache")
    assert fb.check("ex-toy-two", 12.0, part="a") and fb.check("ex-toy-one", 1.5e9)
    # a one-part exercise re-made with named parts is judged by those parts alone
    with pytest.warns(UserWarning, match="new problem"):
        exercises.record_answer("ex-toy-flops", 7e23, unit="FLOPs", prompt="training", part="a")
    assert fb.check("ex-toy-flops", {"a": 7e23})


@pytest.mark.parametrize("value", ["", "0"])
def test_verification_is_off_when_the_switch_is_empty_or_zero(toy, monkeypatch, value):
    monkeypatch.setenv(exercises.VERIFY_ENV, value)
    monkeypatch.setattr(exercises, "_LOCAL", {})
    with pytest.warns(UserWarning, match="new problem"):
        exercises.record_answer("ex-toy-one", 1.6e9, unit="bytes", prompt="the cache")
    monkeypatch.setenv(exercises.VERIFY_ENV, "1")
    with pytest.raises(ValueError, match="editions answers"):
        exercises.record_answer("ex-toy-one", 1.7e9, unit="bytes", prompt="the cache")


def test_record_mode_appends_instead_of_checking(toy, tmp_path, monkeypatch):
    log = tmp_path / "rows.jsonl"
    monkeypatch.setenv(exercises.RECORD_ENV, str(log))
    exercises.record_answer("ex-new", 7.0, unit="s", prompt="time", part="a")
    exercises.record_answer("ex-new", 8.0, unit="s", prompt="time", part="b")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    exercises.write_answers("new", rows, tmp_path)
    monkeypatch.delenv(exercises.RECORD_ENV)
    assert fb.check("ex-new", {"a": 7.0, "b": 8.0})
    with pytest.raises(ValueError, match="recorded twice"):
        exercises.write_answers("new", rows + rows[:1], tmp_path)
    with pytest.raises(ValueError, match="all be named"):
        exercises.write_answers("new", [dict(rows[0], part=None)] + rows, tmp_path)


# ---- the shipped answers --------------------------------------------------------------------

def test_every_exercise_has_an_answer_key_from_its_own_chapter():
    keys = exercises.exercises()
    for path in CHAPTERS:
        labels = editions.exercise_labels(_nb(path))
        shipped = [label for label, key in keys.items() if key["chapter"] == path.stem]
        assert labels == shipped, path.name   # same exercises, in the book's order
    assert len(keys) >= 105 and sum("parts" in k for k in keys.values()) >= 102


def test_answers_are_not_readable_at_a_glance():
    for path in sorted(exercises.ANSWERS_DIR.glob("*.json")):
        text = path.read_text()
        for label, entry in json.loads(text)["exercises"].items():
            for p in entry.get("parts", ()):
                value = exercises._decode(label, p["part"], p["code"])
                if abs(value) >= 100 and value != int(value) or abs(value) >= 1000:
                    assert f"{value:.3g}".replace("+", "") not in text
                    assert str(int(value)) not in text, (label, p["part"])


@pytest.mark.parametrize("label, part, answer", [
    # worked by hand from the statements (and the releases' shapes), not from the solutions:
    # PaLM 540B's MQA cache in GB: 2 (k, v) x 118 layers x 1 head x 256 x 2 bytes x 64 x 2048
    ("ex-inference-palm", "a", 2 * 118 * 1 * 256 * 2 * 64 * 2048 / 1e9),
    # a 32 x 2048 batch through GPT-3's 12288 x 49152 matrix: 2 m k n FLOPs
    ("ex-matmuls-batch", None, 2 * 32 * 2048 * 12288 * 49152),
    # ZeRO's "24 GB" for 1.5B parameters: 16 bytes each with mixed-precision Adam
    ("ex-training-memory-gpt2", "a", 16 * 1.5e9 / 1e9),
    # a ring all-reduce sends 2 (n - 1) / n of its 1 GB from each device
    ("ex-collectives-ring", "a", 2 * 7 / 8),
    ("ex-collectives-ring", "b", 2 * 1023 / 1024),
])
def test_answers_worked_by_hand_pass(label, part, answer):
    assert fb.check(label, answer, part=part)


# ---- the student edition's notebooks ----------------------------------------------------------

@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_the_student_notebook_holds_no_solution(path):
    nb = _nb(path)
    student = editions.student_notebook(nb)
    kept, removed = editions.split_solutions(nb)
    fragments = {f for f in editions.fragments(removed) if f not in editions.searchable(kept)}
    # the control: the search finds the solutions where they are
    instructor = editions.searchable(nb["cells"])
    assert len(fragments) >= 20 and all(f in instructor for f in fragments)
    seen = editions.searchable(student["cells"])
    assert [f for f in fragments if f in seen] == []
    text = json.dumps(student)
    for marker in ("{solution", "record_answer(", "record_no_number(", "solution-end"):
        assert marker not in text, marker


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_a_check_cell_follows_every_numeric_exercise(path):
    keys = exercises.exercises()
    cells = editions.student_notebook(_nb(path))["cells"]
    for label in editions.exercise_labels(_nb(path)):
        at = next(i for i, c in enumerate(cells)
                  if c["cell_type"] == "markdown" and f":label: {label}" in editions.cell_text(c))
        follows = cells[at + 1]
        is_check = follows["cell_type"] == "code" and f'fb.check("{label}"' in editions.cell_text(follows)
        assert is_check == ("parts" in keys[label]), label


def test_a_check_cell_runs_and_asks_for_every_part():
    keys = exercises.exercises()
    label = next(k for k, v in keys.items() if len(v.get("parts", ())) >= 3)
    cell = editions.check_cell(label, keys[label], "x")
    result = eval(editions.cell_text(cell).split("\n", 1)[1], {"fb": fb})
    assert result.correct is None
    assert result.message.count("replace None") == len(keys[label]["parts"])


def test_instructor_only_cells_and_plain_solutions_are_cut():
    nb = {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "```{exercise}\n:label: ex-x\n\nQ?\n```\n"
                                                          "```{solution} ex-x\nThe plain answer is here.\n```\nafter"},
        {"cell_type": "markdown", "metadata": {"tags": ["instructor-only"]}, "source": "Exam question"},
        {"cell_type": "markdown", "metadata": {}, "source": "```{solution-start} ex-x\n```\nGated"},
        {"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": []},
        {"cell_type": "markdown", "metadata": {}, "source": "```{solution-end}\n```"},
        {"cell_type": "markdown", "metadata": {}, "source": "Next section"},
    ]}
    kept, removed = editions.split_solutions(nb)
    assert [editions.cell_text(c) for c in kept] == ["```{exercise}\n:label: ex-x\n\nQ?\n```\nafter",
                                                 "Next section"]
    assert len(removed) == 5
    with pytest.raises(ValueError, match="without its"):
        editions.split_solutions({"cells": nb["cells"][2:4]})


# ---- statements that follow the code (issue 18) ---------------------------------------------

def _glued_keys(cells):
    """Patterns of the keys the cells glue: glue("key", ...), or glue(f"ex_{name}_x", ...)."""
    names = {m for c in cells if c["cell_type"] == "code"
             for m in re.findall(r"glue\(\s*f?[\"']([\w{}\[\]\"'.]+)[\"']", editions.cell_text(c))}
    return [re.compile(re.sub(r"\\\{[^}]*\\\}", r"\\w+", re.escape(n)) + "$") for n in names]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_statements_paste_only_numbers_the_student_edition_computes(path):
    """A statement's {eval} numbers are glued outside the worked solutions, so the student
    edition (which deletes them) still prints every number of every statement."""
    student = editions.student_notebook(_nb(path))
    glued = _glued_keys(student["cells"])
    for cell in student["cells"]:
        if cell["cell_type"] == "markdown" and editions.exercise_labels({"cells": [cell]}):
            keys = set(re.findall(r"\{eval\}`g\.(\w+)`", editions.cell_text(cell)))
            lost = sorted(k for k in keys if not any(p.match(k) for p in glued))
            assert not lost, f"{path.stem}: {lost} glued only in a solution"


def _exercise_cells(nb, label):
    """The parameter cells just before exercise ``label`` and its solution's code cells."""
    cells = nb["cells"]
    at = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
              and label in editions.exercise_labels({"cells": [c]}))
    params = []
    for c in reversed(cells[:at]):
        if c["cell_type"] != "code" or "Exercise parameters" not in editions.cell_text(c):
            break
        params.insert(0, editions.cell_text(c))
    start = next(i for i in range(at, len(cells))
                 if f"{{solution-start}} {label}" in editions.cell_text(cells[i]))
    end = next(i for i in range(start, len(cells)) if "{solution-end}" in editions.cell_text(cells[i]))
    return params, [editions.cell_text(c) for c in cells[start:end] if c["cell_type"] == "code"]


def test_editing_an_exercise_value_makes_a_consistent_new_problem(monkeypatch):
    """The landing page's promise: change a number in an exercise's parameter cell and re-run:
    the statement, the worked solution and flopsbook.check follow (here 32 -> 5 sequences in the
    batched product of ex-matmuls-batch: 2 * (5 * 2048) * 12288 * 49152 FLOPs). The cells run
    in this process, with the plot style and the glued texts restored afterwards."""
    import matplotlib
    from IPython.core.inputtransformer2 import TransformerManager
    from flopsbook.viz import g

    nb = _nb(ROOT / "notebooks" / "matmuls.ipynb")
    setup = next(editions.cell_text(c) for c in nb["cells"] if c["cell_type"] == "code")
    params, solution = _exercise_cells(nb, "ex-matmuls-batch")
    assert params and solution and re.search(r"^batch_seqs = 32\b", params[0], re.M)
    params[0] = re.sub(r"^batch_seqs = 32\b", "batch_seqs = 5", params[0], flags=re.M)
    monkeypatch.delenv(exercises.VERIFY_ENV, raising=False)
    monkeypatch.delenv(exercises.RECORD_ENV, raising=False)
    monkeypatch.setattr(exercises, "_LOCAL", {})
    glued = dict(vars(g))
    try:
        with matplotlib.rc_context(), pytest.warns(UserWarning, match="new problem"):
            namespace = {}
            for code in [setup, *params, *solution]:
                exec(TransformerManager().transform_cell(code), namespace)
        assert str(g.ex_batch_seqs) == "5"                      # the statement's number
    finally:
        vars(g).clear()
        vars(g).update(glued)
    new, shipped = 2 * (5 * 2048) * 12288 * 49152, 2 * (32 * 2048) * 12288 * 49152
    assert fb.check("ex-matmuls-batch", new) and not fb.check("ex-matmuls-batch", shipped)


def test_every_exercise_but_three_has_a_number_to_check():
    """Exercises are checkable by flopsbook.check; the three exceptions (a reader's own
    measurements and a derivation whose ratio the statement gives) are named, so a new exercise
    without a number fails here. A derivation ends by evaluating its result."""
    keys = exercises.exercises()
    without = {label for label, key in keys.items() if "no_number" in key}
    assert without == {"ex-throughput-triad", "ex-throughput-threads", "ex-parallelism-sp-xla"}
    assert len(keys) >= 8 * len(CHAPTERS)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_derivation_checks_its_result_in_code(path):
    """A "show that" is checked, not only argued: its worked solution's code asserts the derived
    result against the package, the counting reference or a search."""
    nb = _nb(path)
    checked = 0
    for cell in nb["cells"]:
        text = editions.cell_text(cell)
        if cell["cell_type"] != "markdown" or not re.search(r"^:class:[^\n]*\bderivation\b", text, re.M):
            continue
        checked += 1
        label = re.search(r":label: (ex-[\w-]+)", text).group(1)
        code = "\n".join(_exercise_cells(nb, label)[1])
        assert re.search(r"^\s*assert\b", code, re.M), f"{label}: its solution asserts nothing"
    assert checked >= len(editions.exercise_labels(nb)) / 3   # it found the derivations


def test_the_student_edition_says_its_checks_know_the_printed_values():
    """The student notebooks keep the parameter cells but not the solutions that would make an
    edited value a new problem, so they do not invite the edit; the input is not changed."""
    nb = _nb(ROOT / "notebooks" / "matmuls.ipynb")
    before = json.dumps(nb)
    student = editions.student_notebook(nb)
    assert json.dumps(nb) == before
    params = [editions.cell_text(c) for c in student["cells"] if c["cell_type"] == "code"
              and editions.cell_text(c).startswith("# Exercise parameters (")]
    assert len(params) >= 8
    assert all("check cell knows the answers to these only" in p and "re-run for a new problem"
               not in p for p in params)
