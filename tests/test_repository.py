"""The repository's own rules: notebooks, table of contents, citations, package import."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
BIB_KEYS = set(re.findall(r"@\w+\{([^,]+),", (ROOT / "book" / "references.bib").read_text()))
# Sections every chapter has, in this order (CONTRIBUTING.md, "The chapter outline").
OUTLINE = ["Overview", "Prerequisites", "## Common mistakes", "## Takeaways", "## Exercises",
           "## References"]


def toc_files(node):
    if isinstance(node, dict):
        if "file" in node:
            yield node["file"]
        for value in node.values():
            yield from toc_files(value)
    elif isinstance(node, list):
        for item in node:
            yield from toc_files(item)


def load(path):
    return json.loads(path.read_text())


def markdown(nb):
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


def test_notebooks_equal_toc_entries():
    listed = {f for f in toc_files(TOC) if f.startswith("notebooks/")}
    on_disk = {f"notebooks/{p.stem}" for p in NOTEBOOKS}
    assert listed == on_disk
    assert all(re.fullmatch(r"[a-z][a-z0-9-]*", p.stem) for p in NOTEBOOKS)  # no numbers: the toc orders


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_committed_without_outputs(path):
    for cell in load(path)["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:1]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_follows_the_outline(path):
    text = markdown(load(path))
    assert re.search(r"^# \S", text, re.M), "a level-1 title"
    positions = [text.find(heading) for heading in OUTLINE]
    assert -1 not in positions, dict(zip(OUTLINE, positions))
    assert positions == sorted(positions)
    assert text.count("{exercise") >= 5 and text.count("{solution") >= 5
    assert ":class: dropdown" in text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_setup_installs_from_the_configured_repository(path):
    cells = load(path)["cells"]
    setup = next(c for c in cells if "remove-cell" in c["metadata"].get("tags", []))
    assert f"git+{CONFIG['repository']['url']}" in "".join(setup["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_citation_is_in_the_bibliography(path):
    cited = re.findall(r"\{cite(?::[tp])?\}`([^`]+)`", markdown(load(path)))
    keys = {k.strip() for group in cited for k in group.split(",")}
    assert keys and keys <= BIB_KEYS, keys - BIB_KEYS


def test_import_is_light():
    code = ("import sys, flopsbook; heavy = {'matplotlib', 'ipywidgets', 'IPython'} & "
            "set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_formulas_never_import_the_reference():
    for path in (ROOT / "flopsbook").glob("*.py"):
        assert "reference" not in "".join(
            line for line in path.read_text().splitlines(True)
            if line.startswith(("import", "from"))) or path.name == "__init__.py", path


def test_the_imported_package_is_this_repositorys():
    # An editable install of another checkout would otherwise be tested instead of this one.
    import flopsbook

    assert Path(flopsbook.__file__).resolve().parent == (ROOT / "flopsbook").resolve()


def test_the_landing_page_links_every_chapter_in_toc_order():
    text = (ROOT / "book" / "intro.md").read_text()
    chapters = [f for f in toc_files(TOC) if f.startswith("notebooks/")]
    positions = [text.find(f"../{f}>") for f in chapters]
    assert -1 not in positions, dict(zip(chapters, positions))
    assert positions == sorted(positions)


def test_readme_types_no_test_counts():
    # Counts typed by hand go stale: the README says how to count instead.
    readme = (ROOT / "README.md").read_text()
    assert not re.search(r"\d+ (items|tests|notebooks)\b", readme)


def test_a_package_change_empties_the_execution_cache(tmp_path):
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        from package_cache import refresh_cache
    finally:
        sys.path.pop(0)
    package, cache = tmp_path / "pkg", tmp_path / "cache"
    package.mkdir()
    (package / "formula.py").write_text("SIX = 6\n")
    assert refresh_cache(cache, package) is False          # first build: nothing to empty
    (cache / "executed.db").write_text("outputs")
    assert refresh_cache(cache, package) is False and (cache / "executed.db").exists()
    (package / "formula.py").write_text("SIX = 8\n")     # a formula changed
    assert refresh_cache(cache, package) is True and not (cache / "executed.db").exists()
    assert refresh_cache(cache, package) is False
    assert "package_cache" in CONFIG["sphinx"]["local_extensions"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_cell_has_a_unique_id(path):
    # nbformat 4.5 requires cell ids; a cell inserted by a script without one warns at every run.
    ids = [c.get("id") for c in load(path)["cells"]]
    assert None not in ids and len(set(ids)) == len(ids)


def test_the_api_page_documents_every_public_name():
    import flopsbook as fb

    api = (ROOT / "book" / "api.md").read_text()
    documented = set(re.findall(r"\.\. auto(?:function|class):: flopsbook\.(\w+)\n", api))
    assert set(fb.__all__) - documented == set()
