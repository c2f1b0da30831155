"""The book in print: what the LaTeX builder (``jupyter-book build . --builder pdflatex``) needs.

- The book's TeX macros, one source: ``_config.yml``'s ``mathjax3_config.tex.macros`` (which the
  website and JupyterLab use) become ``\\newcommand``s in the LaTeX preamble.
- Unicode text (≈, ×, ≤, Greek letters) is typeset by XeLaTeX with the GNU FreeFont faces
  (Debian's ``fonts-freefont-otf``), Sphinx's default for XeLaTeX.
- What only a browser shows is given its print form: the kernel-free figures become static
  PNGs (``flopsbook/viz/interactive.py``), and the worked solutions, folded in a dropdown on the
  website, are printed open (LaTeX has no dropdown).

The HTML build is unchanged by this extension.
"""

from __future__ import annotations

from docutils import nodes
from sphinx import addnodes

from handouts import handouts   # book/_ext is on sys.path (local_extensions)


def _newcommands(macros: dict) -> str:
    lines = []
    for name, body in macros.items():
        if isinstance(body, list):   # MathJax's [body, number of arguments] form
            body, nargs = body[0], body[1]
            lines.append(f"\\newcommand{{\\{name}}}[{nargs}]{{{body}}}")
        else:
            lines.append(f"\\newcommand{{\\{name}}}{{{body}}}")
    return "\n".join(lines)


def _configure(app, config):
    macros = (config.mathjax3_config or {}).get("tex", {}).get("macros", {})
    elements = dict(config.latex_elements or {})
    elements["preamble"] = (elements.get("preamble", "") + "\n% The book's macros (_config.yml)\n"
                            + _newcommands(macros) + "\n")
    # Sphinx's default chapter style upper-cases titles: "τT" printed as "TT".
    elements.setdefault("fncychap", r"\usepackage[Sonny]{fncychap}")
    config.latex_elements = elements


def _handout_documents(app, env):
    """Each plan's problem sets also print as a document of its own (book/_ext/handouts.py).

    Added once the sources are read: Jupyter Book rewrites a one-document ``latex_documents``
    after Sphinx starts (``targetname`` in _config.yml) and fails on a longer one.
    """
    config = app.config
    docs = list(config.latex_documents)
    book = env.titles[config.root_doc].astext()
    for key, doc in handouts(app.confdir).items():
        if doc in env.found_docs and all(d[0] != doc for d in docs):
            docs.append((doc, f"problem-sets-{key}.tex", f"{book}: {env.titles[doc].astext()}",
                         config.author or "", "howto"))
    config.latex_documents = docs


def _latex(text: str) -> str:
    for a, b in (("&", r"\&"), ("%", r"\%"), ("#", r"\#"), ("_", r"\_")):
        text = text.replace(a, b)
    return text


def _parts(app, doctree):
    """The root page's own sections print as an unnumbered preface; each part of the table of
    contents opens with ``\\part``; the unnumbered parts (instructors, reference) are appendices.

    Raw LaTeX nodes, which the HTML writer skips: the website is unchanged.
    """
    if app.env.docname != app.config.root_doc:
        return
    trees = list(doctree.findall(addnodes.toctree))
    if not trees:
        return
    doctree.insert(0, nodes.raw("", r"\edef\fbsecnumdepth{\the\value{secnumdepth}}"
                                    r"\setcounter{secnumdepth}{-1}", format="latex"))
    appendix = False
    for i, tree in enumerate(trees):
        latex = r"\setcounter{secnumdepth}{\fbsecnumdepth}" if i == 0 else ""
        if not tree.get("numbered") and not appendix:
            latex, appendix = latex + r"\appendix", True
        if tree.get("caption"):
            latex += rf"\part{{{_latex(tree['caption'])}}}"
        tree.parent.insert(tree.parent.index(tree), nodes.raw("", latex, format="latex"))


def _fold_hidden_inputs(app, doctree, docname):
    """In print, a hide-input cell shows its output only: a page has no fold to open."""
    if app.builder.format != "latex":
        return
    for cell in list(doctree.findall(nodes.container)):
        if "tag_hide-input" in cell.get("classes", ()):
            for child in list(cell.children):
                if "cell_input" in child.get("classes", ()):
                    cell.remove(child)


def setup(app):
    app.connect("config-inited", _configure)
    app.connect("doctree-read", _parts)
    app.connect("doctree-resolved", _fold_hidden_inputs)
    app.connect("env-updated", _handout_documents)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
