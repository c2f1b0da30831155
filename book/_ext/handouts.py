"""Problem-set handouts: each problem set of a plan in ``book/course.yml`` with its exercises'
statements, copied from the chapters (numbers, math and links as the chapters print them).

``{problem-set} four-week 2`` writes one problem set: what it covers, then each exercise's
statement under its number ("Exercise 6.3, Inference"), required ones first. The statements are
copied at resolve time from the chapters' own doctrees, so a handout cannot drift from the
chapter, and a notebook's glued numbers appear as the chapter shows them. No solution is
copied. The handout pages are also LaTeX documents of their own (``book/_ext/print_edition.py``):
``problem-sets-four-week.pdf`` and ``problem-sets-ten-week.pdf`` beside the book's PDF.
"""

from __future__ import annotations

from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

from course import load_course, placements   # book/_ext is on sys.path (local_extensions)

logger = logging.getLogger(__name__)

def handouts(root) -> dict[str, str]:
    """Each plan's handout page, by plan: ``book/problem-sets-<plan>`` (tests/test_course.py)."""
    return {key: f"book/problem-sets-{key}" for key in load_course(Path(root)).get("plans", {})}


class exercise_copy(nodes.General, nodes.Element):
    """Where an exercise's statement goes; replaced before any writer sees it."""


class ProblemSet(SphinxDirective):
    required_arguments = 2   # plan, week number

    def run(self):
        root = Path(self.env.app.confdir)
        self.env.note_dependency(str(root / "book" / "course.yml"))
        plan_key, week = self.arguments[0], self.arguments[1]
        course = load_course(root)
        plans = course.get("plans", {})
        if plan_key not in plans or not week.isdigit() or not 1 <= int(week) <= len(plans[plan_key]["weeks"]):
            raise self.error(f"problem-set: no week {week!r} in plan {plan_key!r} "
                             f"(plans: {', '.join(plans)})")
        w = int(week)
        title = plans[plan_key]["weeks"][w - 1].get("title", "")
        chosen = [(label, optional) for label, wk, optional in placements(plans[plan_key]) if wk == w]
        required = sum(1 for _, optional in chosen if not optional)
        optional = len(chosen) - required
        intro = nodes.paragraph(text=f"Week {w}: {title}. {required} required "
                                + ("exercise" if required == 1 else "exercises")
                                + (f" and {optional} optional (marked)." if optional else "."))
        out = [intro]
        for label, optional in chosen:
            out.append(exercise_copy(label=label, optional=optional))
        # In print each set starts on a new page (the next heading follows this).
        out.append(nodes.raw("", r"\clearpage", format="latex"))
        return out


def _exercises(doctree) -> dict:
    found = {}
    for node in doctree.findall(lambda n: type(n).__name__ == "exercise_enumerable_node"):
        body = next((n for n in node.findall(nodes.section)
                     if "exercise-content" in n.get("ids", ())), None)
        for ident in node.get("ids", ()):
            found[ident] = (body, "derivation" in node.get("classes", ()))
    return found


class CopyExercises(SphinxPostTransform):
    """Fill each ``exercise_copy`` from its chapter: before myst-nb picks each pasted number's
    mime type (its ``SelectMimeType``, priority 4), so a glued number stays inline text as on its
    chapter's page, and before references are resolved, so the copied glossary terms and
    cross-references resolve in the handout."""

    default_priority = 3

    def run(self, **kwargs):
        labels = self.env.domaindata["std"]["labels"]
        exercises = {}   # docname -> {label id: the exercise's content section}, read once
        for node in list(self.document.findall(exercise_copy)):
            label = node["label"]
            if label not in labels:
                logger.warning(f"problem-set: no exercise {label!r}", location=node)
                node.replace_self([])
                continue
            docname, labelid, _ = labels[label]
            if docname not in exercises:
                exercises[docname] = _exercises(self.env.get_doctree(docname))
            body, derivation = exercises[docname].get(labelid, (None, False))
            if body is None:
                logger.warning(f"problem-set: {label!r} is not an exercise", location=node)
                node.replace_self([])
                continue
            number = ".".join(map(str, self.env.toc_fignumbers.get(docname, {})
                                  .get("exercise", {}).get(labelid, ())))
            chapter = self.env.titles[docname].astext()
            head = nodes.paragraph()
            link = addnodes.pending_xref("", refdomain="std", reftype="ref", reftarget=label,
                                         refexplicit=True, refdoc=self.env.docname)
            link += nodes.Text(f"Exercise {number}")   # links to it in its chapter
            head += nodes.strong("", "", link)
            if derivation:   # as its title says on the chapter's page (book/_static/course.css)
                head += nodes.emphasis(text=" · derivation")
            if node["optional"]:
                head += nodes.strong(text=" (optional)")
            head += nodes.Text(f" — {chapter}")
            box = nodes.container(classes=["fb-handout-exercise"])
            # In print a heading is not left alone at the foot of a page (Sphinx loads needspace).
            box += nodes.raw("", r"\needspace{6\baselineskip}", format="latex")
            box += head
            for child in body.children:
                piece = child.deepcopy()   # docutils's: copy.deepcopy would follow .parent up
                for n in list(piece.findall(nodes.Element)):
                    n["ids"] = []   # the chapter keeps the anchors; a copy must not repeat them
                    if isinstance(n, addnodes.pending_xref) and n.get("refdomain") == "math" \
                            and self.app.builder.format != "html":
                        self._equation_number(n)
                    elif isinstance(n, addnodes.pending_xref):
                        n["refdoc"] = self.env.docname   # resolve the link from the handout
                    elif isinstance(n, nodes.reference) and n.get("refid"):
                        self._to_chapter(n, docname)
                box += piece
            node.replace_self(box)

    def _equation_number(self, ref):
        """In print, an equation reference is its number as text: the equation is in the book's
        document, not the handout's, where LaTeX's \\eqref would print "??". Numbered as the
        math domain numbers it (``math_numfig``: by chapter)."""
        env, target = self.env, ref["reftarget"]
        found = env.get_domain("math").equations.get(target)
        if found is None:
            logger.warning(f"problem-set: no equation {target!r}", location=ref)
            ref.replace_self([])
            return
        docname, number = found
        if env.config.math_numfig and env.config.numfig:
            numbers = env.toc_fignumbers.get(docname, {}).get("displaymath", {}).get(
                nodes.make_id(f"equation-{target}"), ())
            if numbers:
                number = env.config.math_numsep.join(".".join(map(str, numbers)).rsplit(".", 1))
            else:   # not numbered by chapter: its number within its page
                logger.warning(f"problem-set: equation {target!r} has no chapter number",
                               location=ref)
        ref.replace_self(nodes.Text((env.config.math_eqref_format or "({number})")
                                    .format(number=number)))

    def _to_chapter(self, ref, docname):
        """A link to an anchor of the chapter's own page now points into that page."""
        if self.app.builder.format == "html":
            ref["refuri"] = (self.app.builder.get_relative_uri(self.env.docname, docname)
                             + "#" + ref["refid"])
            del ref["refid"]
        else:   # in print the handout is a document of its own: the text, without the link
            ref.replace_self(ref.children)


def _outdated(app, env, added, changed, removed):
    # A handout shows chapters' statements: rewrite it when a chapter changes.
    if any(doc.startswith("notebooks/") for doc in (added | changed | removed)):
        return [doc for doc in handouts(app.confdir).values() if doc in env.found_docs]
    return []


def _skip(self, node):
    raise nodes.SkipNode


def setup(app):
    app.add_node(exercise_copy, html=(_skip, None), latex=(_skip, None), text=(_skip, None))
    app.add_directive("problem-set", ProblemSet)
    app.add_post_transform(CopyExercises)
    app.connect("env-get-outdated", _outdated)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
