"""Make the built site work with no internet, with a clean browser console, and as the theme
intends. (The math is typeset at build time by book/_ext/prerender_math.py: no MathJax here.)

1. sphinx-thebe (which Jupyter Book always loads) adds an inline ``const THEBE_JS_URL = ...``
   script with ``app.add_js_file(None, body=...)``. The HTML builder ends up holding it twice,
   once as given (filename ``None``) and once copied from the registry (filename ``''``), and
   its duplicate check compares filenames, so every page declared the constant twice
   ("Identifier 'THEBE_JS_URL' has already been declared"). Thebe is off in ``_config.yml``,
   so we unhook its listeners (the per-page kernel config they add is dead weight too) and
   drop its stylesheet.
2. sphinx-book-theme empties pydata-sphinx-theme's top navbar in its ``theme.conf``, but
   pydata-sphinx-theme 0.17.1 re-adds ``navbar_persistent = ["search-button-field"]`` unless
   ``html_theme_options`` names it (executablebooks/sphinx-book-theme#999). The navbar then
   showed a second search field above the page and a hidden sidebar toggle that pydata's
   script binds instead of the visible one, so the sidebar buttons did nothing. We name it.
3. Files no page needs are not linked: sphinx-design's ``design-tabs.js`` only syncs tab sets
   (the book has none, and its tabs switch with CSS alone), the thebe stylesheet and the
   saved ipywidgets state (no widget manager reads it). Figures load lazily (as they near the
   viewport). The template override ``book/_templates/layout.html`` drops FontAwesome's
   JavaScript and the search index outside search.html.
"""

from __future__ import annotations

import re

# design-tabs.js only syncs tab sets (the book has none); thebe is off.
UNUSED_FILES = ("design-tabs.js", "sphinx-thebe.css")
# The saved ipywidgets state that myst-nb embeds (up to 95 KB a page) is read only by the
# widget manager, which the site does not load (`nb_ipywidgets_js: {}`).
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
LAZY_IMG = re.compile(r"<img (?![^>]*\bloading=)")


def _no_thebe_scripts(app):
    # Thebe (live code cells) is off in _config.yml, so its scripts are dead weight:
    # init_thebe_core adds the inline config (the duplicate `const THEBE_JS_URL`) and loader;
    # update_thebe_context appends a per-page kernel config that names a placeholder Binder repo.
    import sphinx_thebe

    unwanted = {sphinx_thebe.init_thebe_core, sphinx_thebe.update_thebe_context}
    for listeners in app.events.listeners.values():
        for listener in list(listeners):
            if listener.handler in unwanted:
                app.disconnect(listener.id)


def _drop_unused_files(app, pagename, templatename, context, doctree):
    # Per page, so it also catches files that extensions register at builder-inited after us.
    # In place: the lists are the builder's own (which it restores before each page), so a
    # script that a later html-page-context handler adds still reaches the page.
    for key in ("script_files", "css_files"):
        if key in context:
            context[key][:] = [
                f for f in context[key]
                if not str(getattr(f, "filename", "") or "").endswith(UNUSED_FILES)
                and getattr(f, "attributes", {}).get("type") != WIDGET_STATE]


def _lazy_images(app, pagename, templatename, context, doctree):
    # A chapter holds up to 1 MB of figures, most of them far below the first screen: the
    # browser fetches a lazy image only as it nears the viewport, so the page is readable
    # (its load event) without waiting for them.
    if "body" in context:
        context["body"] = LAZY_IMG.sub('<img loading="lazy" ', context["body"])


def _no_top_navbar(app, config):
    # Jupyter Book builds `html_theme_options` itself, so this cannot go in _config.yml
    # without replacing the launch-button and repository options it holds.
    config.html_theme_options.setdefault("navbar_persistent", [])


def setup(app):
    app.connect("config-inited", _no_top_navbar)
    app.connect("builder-inited", _no_thebe_scripts)
    # Late, after myst-nb adds the widget state (in html-page-context too).
    app.connect("html-page-context", _drop_unused_files, priority=900)
    app.connect("html-page-context", _lazy_images)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
