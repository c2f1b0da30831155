"""Page weight and time to readable of every page of the built site, side by side with a plain
Sphinx page measured in the same run, in headless Chromium from a loopback server.

    python .ci/page_weight.py [--site _build/html] [--runs 3]

For each page, in a fresh browser context (a first visit: empty cache): the bytes of every
response on first load, the load event, and the time to readable: the load event, or later
when the page loads MathJax, the moment MathJax's startup promise (its first typeset) resolved.
Each time is the median of --runs loads. The plain page is a tiny alabaster project built in a
temporary directory by the Sphinx that builds the book. Prints a table with ratios to the plain
page and the targets for chapter pages (first load <= 2 MB, readable <= 1.5 s) as met or not:
they are printed, not gated. Exits 1 only when a page requests anything off loopback.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

# The smoke test's loopback server, page list, browser and notion of "local" (one definition).
from smoke_site import (CHROMIUM, CHROMIUM_ARGS, HOST, block_off_loopback, find_pages as site_pages,
                        serve)

TARGET_BYTES = 2_000_000
TARGET_READABLE_S = 1.5
MATH_TIMEOUT_MS = 15_000

# Installed before any page script runs: MathJax creates its startup promise before its first
# typeset, so hooking it as soon as it exists timestamps the typeset's end, not our poll.
TIMING_INIT_JS = """
window.__fbMathDone = null;
const __fbPoll = setInterval(() => {
  const p = window.MathJax && window.MathJax.startup && window.MathJax.startup.promise;
  if (p) { clearInterval(__fbPoll); p.then(() => { window.__fbMathDone = performance.now(); }); }
}, 5);
"""

PLAIN_PAGE = """Plain page
==========

A plain Sphinx page for comparison: a title, two paragraphs and a list.

The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.

* one
* two
* three
"""


def build_plain(tmp: Path) -> Path:
    src, out = tmp / "src", tmp / "html"
    src.mkdir()
    (src / "conf.py").write_text('project = "plain"\nhtml_theme = "alabaster"\n', encoding="utf-8")
    (src / "index.rst").write_text(PLAIN_PAGE, encoding="utf-8")
    subprocess.run([sys.executable, "-m", "sphinx", "-q", "-b", "html", str(src), str(out)],
                   check=True)
    return out


def find_pages(site: Path) -> list[Path]:
    # index.html only redirects to the first chapter, measured on its own
    return [rel for rel in site_pages(site)
            if 'http-equiv="Refresh"' not in (site / rel).read_text(encoding="utf-8",
                                                                    errors="replace")]


def measure_once(browser, url: str, outside: list[str]) -> tuple[int, int, float, float]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(TIMING_INIT_JS)
    page = context.new_page()
    sizes: dict[str, int] = {}

    def on_response(r):
        try:
            sizes[r.url] = len(r.body())
        except Exception:  # a redirect or an aborted response has no body
            sizes.setdefault(r.url, 0)

    block_off_loopback(page, lambda request: outside.append(f"{url}: {request}"))
    page.on("response", on_response)
    try:
        page.goto(url, wait_until="load")
        load_ms = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
        if page.evaluate("() => !!(window.MathJax && window.MathJax.startup)"):
            page.wait_for_function("window.__fbMathDone !== null", timeout=MATH_TIMEOUT_MS)
            readable_ms = max(load_ms, page.evaluate("window.__fbMathDone"))
        else:
            readable_ms = load_ms  # no MathJax: the math (if any) is in the HTML at load
        page.wait_for_load_state("networkidle")  # bytes: count what loads just after, too
    finally:
        context.close()
    return sum(sizes.values()), len(sizes), load_ms / 1000, readable_ms / 1000


def measure(browser, url: str, runs: int, outside: list[str]) -> dict:
    results = [measure_once(browser, url, outside) for _ in range(runs)]
    return {"bytes": max(r[0] for r in results), "requests": max(r[1] for r in results),
            "load": statistics.median(r[2] for r in results),
            "readable": statistics.median(r[3] for r in results)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=Path("_build/html"))
    parser.add_argument("--runs", type=int, default=3, help="loads per page (median time)")
    args = parser.parse_args()
    if args.runs < 1:
        raise ValueError(f"--runs must be at least 1, got {args.runs}")
    site = args.site.resolve()
    pages = find_pages(site)
    if not pages:
        print(f"no pages under {site}: build the site first")
        return 1
    outside: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        plain_site = build_plain(Path(tmp))
        servers = [serve(site), serve(plain_site)]
        book_base, plain_base = (f"http://{HOST}:{s.server_address[1]}" for s in servers)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                measure_once(browser, f"{plain_base}/index.html", outside)  # warm the browser up
                plain = measure(browser, f"{plain_base}/index.html", args.runs, outside)
                rows = [(rel.as_posix(), measure(browser, f"{book_base}/{rel.as_posix()}",
                                                 args.runs, outside)) for rel in pages]
                browser.close()
        finally:
            for s in servers:
                s.shutdown()

    header = (f"{'page':<34} {'requests':>8} {'bytes':>11} {'x plain':>8} {'load s':>7} "
              f"{'x plain':>8} {'readable s':>10} {'x plain':>8}")
    print(f"page weight and time to readable, median of {args.runs} first loads each")
    print(header)
    print("-" * len(header))

    def line(name, m):
        print(f"{name:<34} {m['requests']:>8} {m['bytes']:>11,} {m['bytes'] / plain['bytes']:>8.1f} "
              f"{m['load']:>7.2f} {m['load'] / plain['load']:>8.1f} {m['readable']:>10.2f} "
              f"{m['readable'] / plain['readable']:>8.1f}")

    line("plain Sphinx page (alabaster)", plain)
    for name, m in rows:
        line(name, m)
    chapters = [(name, m) for name, m in rows if name.startswith("notebooks/")]
    print(f"\ntargets for a chapter page (printed, not gated): first load <= {TARGET_BYTES / 1e6:g} MB, "
          f"readable <= {TARGET_READABLE_S} s")
    for name, m in chapters:
        weight = "ok  " if m["bytes"] <= TARGET_BYTES else "MISS"
        speed = "ok  " if m["readable"] <= TARGET_READABLE_S else "MISS"
        print(f"  {name:<34} weight {weight} {m['bytes'] / 1e6:5.2f} MB   readable {speed} {m['readable']:.2f} s")
    if outside:
        print(f"\nFAIL: {len(outside)} request(s) left loopback (blocked):")
        for request in dict.fromkeys(outside):
            print(f"  {request}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
