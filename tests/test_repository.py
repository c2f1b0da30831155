"""The repository's own rules: notebooks, table of contents, citations, package import."""

import ast
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
    setup = next(c for c in cells
                 if c["cell_type"] == "code" and "remove-cell" in c["metadata"].get("tags", []))
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
def test_jupyterlab_gets_the_books_math_macros(path):
    # jupyterlab-myst reads macros only from YAML frontmatter in the first cell; myst-nb ignores
    # it there, and shows the cell unless it is removed (then -W fails on a stray heading).
    first = load(path)["cells"][0]
    assert first["cell_type"] == "markdown" and "remove-cell" in first["metadata"].get("tags", [])
    text = "".join(first["source"])
    assert text.startswith("---\n") and text.rstrip().endswith("\n---")
    macros = yaml.safe_load(text.strip().strip("-"))["math"]
    tex = CONFIG["sphinx"]["config"]["mathjax3_config"]["tex"]["macros"]
    assert {name.removeprefix("\\"): body for name, body in macros.items()} == tex
    assert all(name.startswith("\\") for name in macros)


def rebinds(source, name):
    """Whether a code cell assigns or imports ``name`` in the notebook's namespace."""
    own_scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp,
                  ast.SetComp, ast.DictComp, ast.GeneratorExp)

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, own_scopes):
                continue
            stored = isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store)
            if (stored and child.id == name
                    or isinstance(child, ast.alias) and (child.asname or child.name) == name
                    or walk(child)):
                return True
        return False

    return walk(ast.parse(re.sub(r"^\s*[%!].*$", "", source, flags=re.M)))   # no IPython magics


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_jupyterlab_can_evaluate_the_prose(path):
    # The prose's numbers are {eval}`g.key` (book/_ext/eval_role.py): in JupyterLab `g` is
    # flopsbook.viz.g, so the setup cell imports it and no other code cell may rebind it.
    cells = load(path)["cells"]
    text = markdown(load(path))
    assert "{glue" not in text, "use {eval}`g.key`: JupyterLab cannot show {glue}"
    assert all(re.fullmatch(r"g\.[A-Za-z_]\w*", e) for e in re.findall(r"\{eval\}`([^`]*)`", text))
    code = [c for c in cells if c["cell_type"] == "code"]
    setup = next(c for c in code if "remove-cell" in c["metadata"].get("tags", []))
    assert re.search(r"^from flopsbook\.viz import .*\bg\b", "".join(setup["source"]), re.M)
    assert [c["id"] for c in code if c is not setup and rebinds("".join(c["source"]), "g")] == []


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


BINDER = ROOT / "binder"
# The readers' environment has no test or build tools.
NOT_FOR_READERS = {"pytest", "pytest-xdist", "nbval", "hypothesis", "playwright", "jupyter-book",
                   "sphinx", "myst-nb", "sphinx-exercise", "sphinxcontrib-bibtex"}


def requirement_pins(path):
    """{normalized name: version} of the `name==version` lines of a requirements file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if match := re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*==\s*(\S+)", line):
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(3)
    return pins


def test_binder_has_a_lean_environment_with_the_books_pins():
    lines = [line.split("#", 1)[0].strip() for line in (BINDER / "requirements.txt").read_text().splitlines()]
    lines = [line for line in lines if line]
    assert ".[viz]" in lines  # this package, with what the figures and calculators need
    named = {re.sub(r"[-_.]+", "-", re.split(r"[\[=<>~! ;]", line, maxsplit=1)[0]).lower() for line in lines}
    assert not named & NOT_FOR_READERS, named & NOT_FOR_READERS
    pins, book_pins = requirement_pins(BINDER / "requirements.txt"), requirement_pins(ROOT / "requirements.txt")
    assert "jupyterlab-myst" in pins  # the MyST prose renders in Binder's JupyterLab
    assert {name: book_pins.get(name) for name in pins} == pins


def test_binder_python_satisfies_requires_python():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert re.fullmatch(r"python-3\.\d+", runtime), runtime
    minor = int(runtime.split(".")[1])
    pyproject = (ROOT / "pyproject.toml").read_text()
    required = re.search(r'^requires-python\s*=\s*">=\s*3\.(\d+)"', pyproject, re.M)
    assert required and minor >= int(required.group(1))


class _Config(dict):
    __getattr__ = dict.__getitem__


def test_launch_buttons_follow_the_repository_setting():
    # The theme's own code, fed _config.yml the way Jupyter Book translates it.
    from types import SimpleNamespace

    from jupyter_book.config import yaml_to_sphinx
    from sphinx_book_theme.header_buttons import update_context_with_repository_info
    from sphinx_book_theme.header_buttons.launch import add_launch_buttons

    theme_options = yaml_to_sphinx(CONFIG)[0]["html_theme_options"]
    docname = f"notebooks/{NOTEBOOKS[0].stem}"
    app = SimpleNamespace(
        config=_Config(html_theme_options=theme_options, html_context={}),
        builder=SimpleNamespace(theme_options=theme_options),
        env=SimpleNamespace(doc2path=lambda name: ROOT / f"{name}.ipynb",
                            metadata={docname: {"kernelspec": {"name": "python3"}}}))
    update_context_with_repository_info(app)
    context = {**app.config.html_context, "pagename": docname, "header_buttons": [],
               "sourcename": f"{docname}.ipynb"}
    add_launch_buttons(app, docname, "page.html", context, None)
    urls = {b["text"]: b["url"] for group in context["header_buttons"] for b in group["buttons"]}

    repository = CONFIG["repository"]
    org_repo = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)/?", repository["url"]).group(1)
    path = f"{repository['path_to_book'].strip('/') + '/' if repository['path_to_book'] else ''}{docname}.ipynb"
    branch = repository["branch"]
    assert (ROOT / path).is_file()
    assert urls == {
        "Binder": f"https://mybinder.org/v2/gh/{org_repo}/{branch}?urlpath=lab/tree/{path}",
        "Colab": f"https://colab.research.google.com/github/{org_repo}/blob/{branch}/{path}",
    }
