"""Smoke-test the built site in headless Chromium: every page must load with no console
errors, no broken local resource, no image that failed to load, math typeset at build time and
drawn (no MathJax JavaScript) and no Markdown table left as text, using nothing but the site
itself (any request that leaves 127.0.0.1 is blocked and reported).

    python .ci/smoke_site.py [--site _build/html] [--screenshots _build/screenshots]

Needs the `playwright` package and Debian's chromium at /usr/bin/chromium (no browser is
downloaded). Prints one line per page, then `N passed, M failed`; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import TimeoutError as PlaywrightTimeoutError, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SKIP_DIRS = {"_static", "_sources", "_images"}
HOST = "127.0.0.1"
TIMEOUT_MS = 30_000

# Waits for every <img> to settle; lazy images are switched to eager first, since a
# headless page never scrolls them into view. Returns the sources that did not load.
BROKEN_IMAGES_JS = """async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(img => { img.loading = "eager"; });
  await Promise.all(imgs.map(img => img.complete ? null :
      new Promise(done => { img.addEventListener("load", done); img.addEventListener("error", done); })));
  return imgs.filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.currentSrc || img.src);
}"""

# A Markdown pipe table that was printed as a paragraph (its `|---|` row, or `|—|` once
# smartquotes turned the dashes into an em dash) instead of being rendered as a table.
RAW_TABLES_JS = r"""() => Array.from(document.querySelectorAll("article p, article li"))
  .filter(el => /\|\s*:?(-{3,}|[\u2013\u2014]+):?\s*\|/.test(el.textContent)).length"""

# The math is typeset at build time (book/_ext/prerender_math.py): each `.math` element holds
# MathJax's CHTML markup, drawn by a stylesheet and webfonts. A glyph that the stylesheet lacks
# draws nothing (its `::before` has no content), and a webfont that fails draws boxes. TeX errors
# fail the build, but an `merror` (or noundefined's red text) is still looked for.
MATH_JS = r"""async () => {
  await document.fonts.ready;
  const containers = Array.from(document.querySelectorAll(".math mjx-container"));
  return {
    containers: containers.length,
    raw: Array.from(document.querySelectorAll(".math"))
        .filter(el => !el.querySelector("mjx-container")).length,
    undrawn: Array.from(document.querySelectorAll("mjx-container mjx-c"))
        .filter(c => ["none", "normal", ""].includes(getComputedStyle(c, "::before").content)).length,
    fonts: Array.from(document.fonts).filter(f => f.status === "error").map(f => f.family),
    // CHTML draws glyphs with CSS, so the offending TeX is read from the assistive MathML.
    errors: containers
        .filter(c => c.querySelector("mjx-merror, [style*='color: red']"))
        .map(c => (c.querySelector("mjx-assistive-mml merror, mjx-assistive-mml [mathcolor='red']")
                   || c).textContent.trim()).slice(0, 5),
  };
}"""


# Every chapter (a page under notebooks/) has at least one kernel-free figure.
CHAPTER_DIR = "notebooks"
VEGA_TIMEOUT_MS = 15_000

# One kernel-free figure (book/_ext/interactive.py), already drawn: move each of its controls
# (a slider to an end, a dropdown to its next option) and record whether the SVG changed.
DRIVE_FIGURE_JS = r"""async (figure) => {
  const svg = () => figure.querySelector(".fb-interactive-figure svg")?.innerHTML ?? "";
  await figure.fbView.runAsync();
  let before = svg();
  const controls = [...figure.querySelectorAll(".vega-bind input[type=range], .vega-bind select")];
  const moved = [];
  for (const control of controls) {
    if (control.tagName === "SELECT") {
      control.selectedIndex = (control.selectedIndex + 1) % control.options.length;
    } else {
      control.value = control.value === control.min ? control.max : control.min;
    }
    for (const type of ["input", "change"]) control.dispatchEvent(new Event(type, {bubbles: true}));
    await figure.fbView.runAsync();
    const after = svg();
    const label = control.closest(".vega-bind")?.querySelector(".vega-bind-name");
    moved.push({name: label?.textContent.trim() || control.tagName, changed: after !== before});
    before = after;
  }
  return {drawn: svg().length > 0, moved};
}"""


def check_interactive(page, rel: Path) -> list[str]:
    figures = page.locator(".fb-interactive")
    if not figures.count():
        vega = page.evaluate("() => Array.from(document.scripts).some(s => /vega/.test(s.src))")
        problems = ["Vega scripts on a page without a kernel-free figure"] if vega else []
        if rel.parts[0] == CHAPTER_DIR:
            problems.append("chapter without a kernel-free figure (.fb-interactive)")
        return problems
    problems = []
    for i in range(figures.count()):
        figure = figures.nth(i)
        figure.scroll_into_view_if_needed()   # the Vega scripts load only when a figure nears view
        try:
            page.wait_for_function("el => el.fbView", arg=figure.element_handle(),
                                   timeout=VEGA_TIMEOUT_MS)
        except PlaywrightTimeoutError:
            problems.append(f"kernel-free figure {i + 1}: not drawn")
            continue
        result = figure.evaluate(DRIVE_FIGURE_JS)
        if not result["drawn"]:
            problems.append(f"kernel-free figure {i + 1}: no SVG drawn")
        if not result["moved"]:
            problems.append(f"kernel-free figure {i + 1}: no slider or dropdown")
        problems += [f"kernel-free figure {i + 1}: moving {c['name']!r} did not change it"
                     for c in result["moved"] if not c["changed"]]
    return problems


def serve(site: Path) -> http.server.ThreadingHTTPServer:
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # one line per request would drown the report
            pass

    server = http.server.ThreadingHTTPServer(
        (HOST, 0), functools.partial(QuietHandler, directory=str(site)))  # port 0: a free one
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def find_pages(site: Path) -> list[Path]:
    return sorted(p.relative_to(site) for p in site.rglob("*.html")
                  if not SKIP_DIRS & set(p.relative_to(site).parts[:-1]))


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname == HOST


def block_off_loopback(page, blocked) -> None:
    """Abort every request of ``page`` that would leave loopback, telling ``blocked`` its URL."""
    def route(r):
        if is_local(r.request.url):
            r.continue_()
        else:
            blocked(r.request.url)
            r.abort()

    page.route("**/*", route)


def check_math(page) -> list[str]:
    scripts = page.evaluate("() => Array.from(document.scripts).map(s => s.src).filter(s => /mathjax/i.test(s))")
    problems = [f"MathJax JavaScript loaded (the math is typeset at build time): {scripts}"] if scripts else []
    math = page.evaluate(MATH_JS)
    problems += [f"math error: {text!r}" for text in math["errors"]]
    if not math["containers"]:
        problems.append("math not typeset: no mjx-container")
    if math["raw"]:
        problems.append(f"math not typeset: {math['raw']} math elements hold no MathJax markup")
    if math["undrawn"]:
        problems.append(f"math not drawn: {math['undrawn']} glyphs missing from the math stylesheet")
    if math["fonts"]:
        problems.append(f"math fonts failed to load: {sorted(set(math['fonts']))}")
    return problems


def check_page(browser, base: str, site: Path, rel: Path, shots: Path) -> list[str]:
    problems: list[str] = []
    url = f"{base}/{rel.as_posix()}"
    # A fresh context per page: every page is seen as by a first-time visitor (empty
    # localStorage), so errors that only happen on a first visit are not hidden.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and problems.append(
        f"console error: {m.text} [{m.location.get('url', '')}:{m.location.get('lineNumber', '')}]"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    # Blocked external requests are reported by the route handler; only local ones here.
    page.on("requestfailed", lambda r: is_local(r.url) and problems.append(
        f"request failed: {r.url} ({r.failure})"))
    page.on("response", lambda r: r.status >= 400 and problems.append(
        f"HTTP {r.status}: {r.url}"))

    block_off_loopback(page, lambda url: problems.append(f"external request blocked: {url}"))
    try:
        page.goto(url, wait_until="load")
        # index.html is a meta-refresh to the first chapter: check where it lands.
        if 'http-equiv="Refresh"' in (site / rel).read_text(encoding="utf-8", errors="replace"):
            page.wait_for_url(lambda u: u != url, wait_until="load")
        page.wait_for_load_state("networkidle")
        broken = page.evaluate(BROKEN_IMAGES_JS)
        problems += [f"broken image: {src}" for src in broken]
        if raw_tables := page.evaluate(RAW_TABLES_JS):
            problems.append(f"Markdown table shown as text in {raw_tables} paragraph(s)")
        if page.locator(".math").count():
            problems += check_math(page)
        problems += check_interactive(page, rel)
        page.screenshot(path=str(shots / (rel.with_suffix("").as_posix().replace("/", "__") + ".png")),
                        full_page=True)
    except Exception as exc:  # a timeout or crash fails this page, not the run
        problems.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    finally:
        context.close()
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=Path("_build/html"))
    parser.add_argument("--screenshots", type=Path, default=Path("_build/screenshots"))
    args = parser.parse_args()
    site = args.site.resolve()
    pages = find_pages(site)
    if not pages:
        print(f"no pages under {site}: build the site first")
        return 1
    args.screenshots.mkdir(parents=True, exist_ok=True)
    server = serve(site)
    base = f"http://{HOST}:{server.server_address[1]}"
    failed = 0
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            for rel in pages:
                problems = check_page(browser, base, site, rel, args.screenshots)
                failed += bool(problems)
                print(f"{'FAIL' if problems else 'OK  '} {rel.as_posix()}", flush=True)
                for problem in dict.fromkeys(problems):  # dedupe, keep order
                    print(f"       {problem}")
            browser.close()
    finally:
        server.shutdown()
    print(f"{len(pages) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
