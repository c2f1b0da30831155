"""Typeset the book's math at build time: pages carry MathJax CHTML markup and load no MathJax
JavaScript (1.2 MB that every page used to download and run before its math was readable).

The HTML math renderer registered here writes each formula's TeX into a ``<fb-math>``
placeholder (inside the usual ``span.math``/``div.math``, equation numbers included). At
``build-finished`` one ``node`` process (``prerender_math.js``) typesets every formula of the
site with the MathJax 3 that the pinned ``django-static-mathjax`` wheel ships, and the
placeholders are replaced by its markup. The macros are ``_config.yml``'s
``mathjax3_config.tex.macros``, the same ones JupyterLab readers get from each notebook's
frontmatter. The CHTML stylesheet (only the glyphs the book uses) goes to
``_static/mathjax/chtml.css``, and the fonts it names to ``_static/mathjax/woff-v2``.

An incremental build rewrites only some pages, while the stylesheet must cover every page: the
formulas of each page are kept in the doctree directory, and each build typesets them all
(3 to 5 s for the whole book). A formula MathJax cannot typeset (a TeX error, an undefined
macro) is a warning naming the page and the formula, which the strict build (``-W``) fails on.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

from docutils import nodes
from sphinx.errors import ExtensionError
from sphinx.locale import _
from sphinx.util import logging
from sphinx.util.math import get_node_equation_number

logger = logging.getLogger(__name__)

RENDERER = "prerender_math"
NODE_SCRIPT = Path(__file__).with_name("prerender_math.js")
STATIC_DIR = "_static/mathjax"
STYLESHEET = f"{STATIC_DIR}/chtml.css"
MANIFEST = "prerender_math.json"
PLACEHOLDER = re.compile(r'<fb-math display="(inline|block)">(.*?)</fb-math>', re.S)


def _placeholder(self, tex: str, display: bool) -> str:
    return f'<fb-math display="{"block" if display else "inline"}">{self.encode(tex)}</fb-math>'


def visit_math(self, node):
    self.body.append(self.starttag(node, "span", "", CLASS="math notranslate nohighlight"))
    self.body.append(_placeholder(self, node.astext(), display=False))
    self.body.append("</span>")
    raise nodes.SkipNode


def _equation_number(self, node):
    self.body.append(f'<span class="eqno">({get_node_equation_number(self, node)})')
    self.add_permalink_ref(node, _("Link to this equation"))
    self.body.append("</span>")


def visit_displaymath(self, node):
    # The TeX is assembled as sphinx.ext.mathjax (and myst-parser's amsmath override of it)
    # did, so equations typeset as they did in the browser: several paragraphs become aligned
    # rows; an amsmath environment or a `nowrap` block is taken as written.
    amsmath = "amsmath" in node.get("classes", [])
    self.body.append(self.starttag(
        node, "div", CLASS="math notranslate nohighlight" + (" amsmath" if amsmath else "")))
    if node["number"] and (amsmath or not node["nowrap"]):
        _equation_number(self, node)
    if amsmath or node["nowrap"]:
        tex = node.astext()
    else:
        parts = [part for part in node.astext().split("\n\n") if part.strip()]
        tex = r"\\".join(rf"\begin{{split}}{part}\end{{split}}" if r"\\" in part else part
                         for part in parts)
        if len(parts) > 1:
            tex = rf"\begin{{align}}\begin{{aligned}}{tex}\end{{aligned}}\end{{align}}"
    self.body.append(_placeholder(self, tex, display=True))
    self.body.append("</div>\n")
    raise nodes.SkipNode


def _use_this_renderer(app, config):
    if not config.html_math_renderer:
        config.html_math_renderer = RENDERER


def _needs_node(app):
    if app.builder.format == "html" and shutil.which("node") is None:
        raise ExtensionError(
            "book/_ext/prerender_math.py typesets the math at build time with Node.js, which is "
            "not installed: install it (Debian/Ubuntu: `apt-get install nodejs`) and build again")


def _no_stylesheet_checksum(app):
    # Sphinx links a stylesheet with `?v=<checksum>` of the file it finds at writing time, which
    # would be last build's: the browser could keep a cached copy without this build's glyphs.
    if getattr(app.builder, "math_renderer_name", None) == RENDERER:
        (Path(app.outdir) / STYLESHEET).unlink(missing_ok=True)


def _mathjax_dir() -> Path:
    import mathjax  # the django-static-mathjax wheel

    return Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"


def _typeset(app, formulas: list[tuple[str, bool]]) -> dict:
    request = {
        "mathjax": str(_mathjax_dir()),
        "fontURL": "woff-v2",  # relative to the stylesheet, which sits next to the fonts
        "macros": (app.config.mathjax3_config or {}).get("tex", {}).get("macros", {}),
        "items": formulas,
    }
    done = subprocess.run([shutil.which("node"), str(NODE_SCRIPT)], input=json.dumps(request),
                          capture_output=True, text=True, encoding="utf-8")
    if done.returncode != 0:
        raise ExtensionError(f"{NODE_SCRIPT.name} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def _docname(app, rel: str) -> str | None:
    docname = rel.removesuffix(".html")
    return docname if docname in app.env.all_docs else None


def _prerender(app, exception):
    if exception is not None or getattr(app.builder, "math_renderer_name", None) != RENDERER:
        return
    start = time.perf_counter()
    outdir = Path(app.outdir)
    manifest_path = Path(app.doctreedir) / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
    written: dict[str, str] = {}  # the pages this build wrote, still holding placeholders
    for path in sorted(outdir.rglob("*.html")):
        text = path.read_text(encoding="utf-8")
        if "<fb-math " in text:
            rel = path.relative_to(outdir).as_posix()
            written[rel] = text
            manifest[rel] = [[html.unescape(tex), display == "block"]
                             for display, tex in PLACEHOLDER.findall(text)]
    manifest = {rel: items for rel, items in manifest.items() if (outdir / rel).exists()}
    formulas = list(dict.fromkeys(tuple(item) for items in manifest.values() for item in items))
    result = _typeset(app, formulas)
    markup = dict(zip(formulas, result["html"]))

    for index, message in result["errors"]:
        tex, _display = formulas[index]
        for rel, items in manifest.items():
            if [tex, _display] in items:
                logger.warning("MathJax cannot typeset a formula on %s: %s: %r", rel, message, tex,
                               location=_docname(app, rel), type="prerender_math")

    def replace(match):
        tex = html.unescape(match.group(2))
        rendered = markup[(tex, match.group(1) == "block")]
        # A formula that failed stays as TeX (the warning above fails the strict build).
        return rendered if rendered is not None else html.escape(tex)

    for rel, text in written.items():
        (outdir / rel).write_text(PLACEHOLDER.sub(replace, text), encoding="utf-8")

    static = outdir / STATIC_DIR
    shutil.rmtree(static, ignore_errors=True)  # also the whole MathJax that older builds copied
    shutil.copytree(_mathjax_dir() / "output" / "chtml" / "fonts" / "woff-v2", static / "woff-v2")
    (outdir / STYLESHEET).write_text(result["css"], encoding="utf-8")
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    logger.info("prerender_math: typeset %d formulas of %d pages (%d rewritten) in %.1f s",
                len(formulas), len(manifest), len(written), time.perf_counter() - start)


def setup(app):
    app.add_html_math_renderer(RENDERER, (visit_math, None), (visit_displaymath, None))
    # Every page shows math: the sidebar and the previous/next links carry chapter titles.
    app.add_css_file(STYLESHEET.removeprefix("_static/"))
    app.connect("config-inited", _use_this_renderer)
    app.connect("builder-inited", _needs_node)
    app.connect("builder-inited", _no_stylesheet_checksum)
    app.connect("build-finished", _prerender)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
