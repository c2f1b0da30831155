"""Test-suite setup that must run before any test module imports JAX or runs a notebook.

The suite also sets FLOPSBOOK_VERIFY_ANSWERS: a worked solution whose number is not the shipped
answer then fails, in the tests and in the notebooks' kernels, which inherit the environment.

XLA fixes the number of host CPU devices once, when JAX first starts a backend, from the
``XLA_FLAGS`` environment variable: ``tests/test_xla.py`` compiles for 8 of them. pytest imports
this file before the test modules in every process, each pytest-xdist worker included (a worker
is a fresh interpreter), so the flag is set here, appended to any flags the user already passes.
Kernels that nbval starts for the notebooks inherit the environment too.
"""

import os

_DEVICES = "--xla_force_host_platform_device_count"

# A worked solution whose number is not the shipped answer fails the suite (a stale answer
# file) instead of making a new problem, as it does in a reader's kernel (flopsbook.exercises).
os.environ["FLOPSBOOK_VERIFY_ANSWERS"] = "1"

if _DEVICES not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES}=8".strip()


def _skip_rewriting_hypothesis():
    """pytest marks every module of every installed plugin's distribution for assertion
    rewriting, hypothesis's 73 included, and where PYTHONDONTWRITEBYTECODE is set (as on the
    book's machines) it rewrites and recompiles them in every worker at every run: about 1.5 s
    of a suite that has a 40 s budget. The book's asserts are in tests/, not in hypothesis;
    its modules import as plain, precompiled modules instead."""
    import sys

    for finder in sys.meta_path:
        marked = getattr(finder, "_must_rewrite", None)
        if isinstance(marked, set):
            marked -= {name for name in marked if name.split(".")[0] in
                       ("hypothesis", "_hypothesis_globals")}


_skip_rewriting_hypothesis()
