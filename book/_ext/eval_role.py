"""``{eval}`g.key``` in the prose: one source for the website and for JupyterLab.

JupyterLab (jupyterlab-myst) renders ``{eval}`` by evaluating the expression in the kernel, where
``flopsbook.viz.glue`` has left each glued text as ``g.<key>``; it has no ``{glue}`` role. myst-nb
renders ``{eval}`` only in its inline execution mode, which has no execution cache (every build
would re-run every notebook) and needs each value defined before its first use in the text.
So on the website ``{eval}`g.key``` pastes the glued value ``key`` exactly as ``{glue}`key```
did, from the cached outputs, in any order. Anything but ``g.<key>`` is reported (the strict
build fails), because the website has nothing else to evaluate it against.
"""

from __future__ import annotations

import re

from myst_nb.ext.glue.roles import PasteRoleAny
from myst_nb.ext.glue.utils import glue_warning

NAMESPACE = "g."
_KEY = re.compile(r"[A-Za-z_]\w*")


class EvalGlueRole(PasteRoleAny):
    """``{eval}`g.key``` → the glued output ``key`` (see the module docstring)."""

    def run(self):
        key = self.text[len(NAMESPACE):]
        if not self.text.startswith(NAMESPACE) or not _KEY.fullmatch(key):
            message = f"{{eval}} takes {NAMESPACE}<glue key> on this site, not {self.text!r}"
            return [], [glue_warning(message, self.document, self.line)]
        self.text = key
        return super().run()


def setup(app):
    app.setup_extension("myst_nb")   # our role must replace myst-nb's, so register after it
    app.add_role("eval", EvalGlueRole(), override=True)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
