"""Open a chapter in a real JupyterLab, as a reader would, run it, and check the prose reads.

    python .ci/jupyterlab_check.py [notebooks/scaling-laws.ipynb] [--screenshot PATH]

Starts `jupyter lab` (this Python's, with jupyterlab-myst from requirements.txt) on 127.0.0.1
with a token, drives it from headless Chromium, runs all cells, and fails if a code cell raised,
if an `{eval}` expression did not evaluate, or if the markdown cells show a placeholder: a MyST
role or directive as text (`{eval}`, `{glue}`, ```` ```{ ````, `:::{`, `{term}` ...), an
unevaluated `g.key`, or a book macro (`\\params` ...) that the math renderer did not know. Any
request from the page that leaves 127.0.0.1 is blocked and fails the check. Needs the
`playwright` package and Debian's chromium at /usr/bin/chromium. Prints the time of each step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright

from smoke_site import CHROMIUM, CHROMIUM_ARGS, HOST, block_off_loopback

ROOT = Path(__file__).parents[1]
# Every cell in the DOM (JupyterLab 4 otherwise renders only the cells near the viewport), no
# news or update checks, which would reach the internet from the server, and no autosave: the
# run's outputs must never be written into the repository's notebook.
SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/extensionmanager-extension/plugin": {"enabled": False},
}
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
MACROS = CONFIG["sphinx"]["config"]["mathjax3_config"]["tex"]["macros"]
PLACEHOLDER = re.compile(
    r"\{(?:glue|eval)[^}]*\}|```\{|:::\s*\{|\{[a-z][\w:-]*\}(?=\S)"  # roles, directives as text
    r"|(?<![\w.])g\.[A-Za-z_]\w*"                                 # {eval} shown unevaluated
    r"|\\(?:" + "|".join(MACROS) + r")(?![A-Za-z])"               # a macro math did not know
    r"|\b(?:NameError|AttributeError|SyntaxError)\b")             # an {eval} that raised

PANEL = "window.jupyterapp.shell.currentWidget"
# The notebook is open and its kernel ready.
READY_JS = f"""() => {{
  const p = window.jupyterapp && {PANEL};
  return !!(p && p.sessionContext && p.sessionContext.session && p.sessionContext.session.kernel
            && p.sessionContext.kernelDisplayStatus === 'idle' && p.content.widgets.length);
}}"""
# Nothing queued or running ("[*]"), and the kernel idle.
IDLE_JS = f"""() => {PANEL}.sessionContext.kernelDisplayStatus === 'idle'
  && ![...{PANEL}.node.querySelectorAll('.jp-InputPrompt')]
       .some(e => e.textContent.includes('*'))"""
# jupyterlab-myst sends a markdown cell's {{eval}} expressions when the cell is "executed", and
# Run All executes cells concurrently: the expressions may reach the kernel before the code that
# defines them. So clear each markdown cell's results and run the markdown cells once more.
RERUN_MARKDOWN_JS = f"""async () => {{
  const nb = {PANEL}.content;
  for (let i = 0; i < nb.widgets.length; i++) {{
    const cell = nb.widgets[i];
    if (cell.model.type !== 'markdown') continue;
    cell.model.deleteMetadata('user_expressions');
    nb.activeCellIndex = i;
    nb.deselectAll();
    await window.jupyterapp.commands.execute('notebook:run-cell');
  }}
}}"""
# Per markdown cell with {{eval}}: how many expressions it has and how many came back "ok".
EVALS_JS = f"""() => {PANEL}.content.widgets.filter(c => c.model.type === 'markdown').map(c => {{
  const wanted = (c.model.sharedModel.getSource().match(/\\{{eval\\}}`[^`]*`/g) || []).length;
  const got = c.model.getMetadata('user_expressions') || [];
  return {{wanted, ok: got.filter(e => e.result && e.result.status === 'ok').length,
           failed: got.filter(e => !e.result || e.result.status !== 'ok').map(e => e.expression)}};
}}).filter(c => c.wanted)"""
ERRORS_JS = f"""() => {PANEL}.content.widgets.filter(c => c.model.type === 'code')
  .flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
  .map(o => `${{o.ename}}: ${{o.evalue}}`))"""
# Each markdown cell as jupyterlab-myst rendered it (null when it did not: the plain renderer or
# an unrendered cell): the text, collapsed dropdowns included, without the TeX source that KaTeX
# keeps for screen readers (it names every macro); and the messages of the warning marks it draws
# (an undefined macro, a citation it cannot resolve, a math error).
MARKDOWN_JS = f"""() => {PANEL}.content.widgets.filter(c => c.model.type === 'markdown')
  .map(c => {{
    const out = c.node.querySelector('.jp-Cell-inputWrapper .myst');
    if (!out) return null;
    const copy = out.cloneNode(true);
    copy.querySelectorAll('.katex-mathml, annotation, style, script').forEach(e => e.remove());
    const marks = [...out.querySelectorAll('.text-yellow-600, .text-red-500')];
    return {{text: copy.textContent, warnings: marks.map(e => e.title || e.textContent)}};
  }})"""
SCROLL_TO_PROSE_JS = f"""() => {{
  const cells = {PANEL}.content.widgets.filter(c => c.model.type === 'markdown');
  const count = c => (c.model.sharedModel.getSource().match(/\{{eval\}}/g) || []).length;
  const cell = cells.slice(3).find(c => count(c) >= 3) || cells[0];
  cell.node.scrollIntoView();
}}"""
# Degraded in JupyterLab and known: it has no bibliography, and a notebook cannot see another
# chapter's labels and equations. The website resolves both (its strict build checks them).
KNOWN_WARNINGS = {"Citation Not Found", "Cross Reference Not Found"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_lab(tmp: Path, port: int, token: str) -> subprocess.Popen:
    settings = tmp / "settings"
    for name, values in SETTINGS.items():
        path = settings / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    # The reader's own Jupyter config and runtime files stay out of it (and untouched).
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp / "config"),
               JUPYTER_RUNTIME_DIR=str(tmp / "rt"), JUPYTER_DATA_DIR=str(tmp / "data"),
               JUPYTER_PLATFORM_DIRS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
         f"--ServerApp.ip={HOST}", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT}",
         "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={settings}",
         f"--LabApp.workspaces_dir={tmp / 'workspaces'}"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"))


def wait_for_server(url: str, server: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"jupyter lab exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"jupyter lab did not answer in {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def check(notebook: str, screenshot: Path | None) -> list[str]:
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://{HOST}:{port}"
    problems, outside = [], []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = start_lab(tmp, port, token)
        try:
            wait_for_server(f"{base}/api/status?token={token}", server, tmp / "server.log")
            t_server = time.monotonic()
            print(f"jupyter lab up in {t_server - t0:.1f} s")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 1000})

                block_off_loopback(page, outside.append)
                page.goto(f"{base}/lab/tree/{notebook}?token={token}")
                page.wait_for_function(READY_JS, timeout=90_000, polling=250)
                t_open = time.monotonic()
                print(f"notebook open, kernel idle in {t_open - t_server:.1f} s")
                page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
                page.wait_for_timeout(500)
                page.wait_for_function(IDLE_JS, timeout=300_000, polling=250)
                t_run = time.monotonic()
                print(f"run all cells: {t_run - t_open:.1f} s")
                page.evaluate(RERUN_MARKDOWN_JS)
                page.wait_for_function(
                    f"() => ({EVALS_JS})().every(c => c.ok + c.failed.length === c.wanted)"
                    f" && ({IDLE_JS})()", timeout=120_000, polling=250)
                page.wait_for_timeout(500)   # React paints the results after the metadata lands
                # ... and on a slow machine it may still be painting the last cells of the re-run:
                # wait (bounded) until every markdown cell has its MyST rendering, then read.
                for attempt in range(2):   # a second re-run if some never painted (seen once)
                    try:
                        page.wait_for_function(
                            f"() => ({MARKDOWN_JS})().every(c => c !== null)",
                            timeout=45_000, polling=250)
                        break
                    except PlaywrightTimeout:
                        if attempt:
                            break   # the cells still unrendered are reported below
                        page.evaluate(RERUN_MARKDOWN_JS)
                        page.wait_for_function(
                            f"() => ({EVALS_JS})().every(c => c.ok + c.failed.length === c.wanted)"
                            f" && ({IDLE_JS})()", timeout=120_000, polling=250)
                t_md = time.monotonic()
                evals = page.evaluate(EVALS_JS)
                n_evals = sum(c["wanted"] for c in evals)
                print(f"markdown cells re-run, {n_evals} {{eval}} expressions back: "
                      f"{t_md - t_run:.1f} s")
                problems += [f"code cell raised {e}" for e in page.evaluate(ERRORS_JS)]
                problems += [f"{{eval}} failed: {e}" for c in evals for e in c["failed"]]
                cells = page.evaluate(MARKDOWN_JS)
                for i, cell in enumerate(cells):
                    if cell is None:
                        problems.append(f"markdown cell {i}: not rendered by jupyterlab-myst")
                        continue
                    for m in PLACEHOLDER.finditer(cell["text"]):
                        text = cell["text"]
                        context = text[max(0, m.start() - 40):m.end() + 40].replace("\n", " ")
                        problems.append(f"markdown cell {i}: {m.group()!r} visible in "
                                        f"...{context}...")
                    problems += [f"markdown cell {i}: warning {w[:120]!r}" for w in cell["warnings"]
                                 if w not in KNOWN_WARNINGS]
                if not n_evals:
                    problems.append("no {eval} expression found: is this a chapter notebook?")
                if screenshot:   # a stretch of prose with several {eval} in it, not the title
                    page.evaluate(SCROLL_TO_PROSE_JS)
                    page.wait_for_timeout(300)
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(screenshot))
                # Shut the kernel down through the session: "close and shut down" asks in a dialog.
                page.evaluate(f"{PANEL}.sessionContext.shutdown()")
                browser.close()
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
    problems += [f"request left {HOST}: {url}" for url in outside]
    print(f"{notebook}: {len(cells)} markdown cells, {n_evals} {{eval}}; "
          f"total {time.monotonic() - t0:.1f} s")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", nargs="?", default="notebooks/scaling-laws.ipynb",
                        help="path from the repository root (default: %(default)s)")
    parser.add_argument("--screenshot", type=Path, help="save the notebook's window as a PNG")
    args = parser.parse_args()
    if not (ROOT / args.notebook).is_file():
        parser.error(f"notebook not found: {args.notebook}")
    problems = check(args.notebook, args.screenshot)
    for problem in problems[:40]:
        print("FAIL", problem)
    if problems:
        sys.exit(f"{len(problems)} problems")
    print("JupyterLab check passed")


if __name__ == "__main__":
    main()
