"""Serve the kernel-free figures' JavaScript, only on the pages that hold one.

``flopsbook.viz.interactive.MystNbRenderer`` writes each figure as ``<div class="fb-interactive">``
with its Vega-Lite spec. Pages with such a div get ``fb-interactive.js`` (3 KB, deferred), which
loads the vendored Vega libraries (``vendor/``, ~0.8 MB) only when a figure nears the viewport.
The files are copied into the built site at ``build-finished``, not kept in the book's
``_static/``, because Jupyter Book adds every script there to every page.
"""

from __future__ import annotations

import shutil
from pathlib import Path

VENDOR = Path(__file__).parent / "vendor"
TARGET = Path("_static") / "vega"
FILES = ["fb-interactive.js", "vega.min.js", "vega-lite.min.js", "vega-embed.min.js",
         "LICENSE-vega", "LICENSE-vega-lite", "LICENSE-vega-embed"]
MARKER = 'class="fb-interactive"'


def _add_script(app, pagename, templatename, context, doctree):
    if MARKER in context.get("body", ""):
        # Called from html-page-context, add_js_file adds the script to this page only.
        app.add_js_file((TARGET / "fb-interactive.js").relative_to("_static").as_posix(),
                        defer="defer")


def _copy(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / TARGET
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(VENDOR / name, target / name)


def setup(app):
    # Before other html-page-context handlers: one that replaces context["script_files"] with a
    # filtered copy (offline_site does) would otherwise hide a script added after it.
    app.connect("html-page-context", _add_script, priority=400)
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
