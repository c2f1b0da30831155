"""Re-execute every notebook when the ``flopsbook`` package changes.

Jupyter Book's ``execute_notebooks: cache`` re-runs a notebook only when its own code cells
change (jupyter-cache hashes them), and Sphinx re-reads only changed sources. A change to a
formula in ``flopsbook/`` changes neither, so a cached build kept printing the old numbers.

The mechanism: a SHA-256 of every ``.py`` file of the package is kept beside the execution
cache (``<cache>/flopsbook.sha256``). On each build, before Sphinx decides what to read, a
different (or missing) digest empties the execution cache and marks every notebook outdated,
so the build executes them all against the package as it is now. ``tests/test_repository.py``
pins it.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

STAMP = "flopsbook.sha256"


def package_digest(package: Path) -> str:
    """SHA-256 over the package's Python files, their paths included (a rename counts)."""
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def refresh_cache(cache: Path, package: Path) -> bool:
    """Empty ``cache`` if it was filled with another version of ``package``; True if it was.

    Leaves the new digest in ``cache`` so that the next build with the same package keeps it.
    """
    digest = package_digest(package)
    stamp = cache / STAMP
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return False
    changed = cache.exists()
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")
    return changed


def _outdated(app, env, added, changed, removed):
    cache = Path(env.mystnb_config.execution_cache_path)
    package = Path(app.confdir) / "flopsbook"
    if not refresh_cache(cache, package):
        return []
    return [doc for doc in env.found_docs
            if Path(env.doc2path(doc)).suffix == ".ipynb" and doc not in added]


def setup(app):
    app.connect("env-get-outdated", _outdated)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
