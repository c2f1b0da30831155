"""Kernel-free interactive figures: precomputed rows and a Vega-Lite spec with sliders/dropdowns.

A figure is data computed by ``flopsbook`` over a grid when the notebook runs, plus controls
that pick among those rows, so nothing is recomputed (and no formula re-implemented) in the
browser. Its output is the ``application/vnd.vegalite.v5+json`` mimetype, which JupyterLab 4
draws with its built-in renderer (it knows v3-v5, not Altair 6's v6). On the website the myst-nb
plugin :class:`MystNbRenderer` (an entry point in ``pyproject.toml``) turns the same output into
a ``<div class="fb-interactive">`` that ``book/_ext/interactive.py`` draws with the vendored
Vega libraries.
"""

from __future__ import annotations

import html
import json
import math

MIME = "application/vnd.vegalite.v5+json"
MAX_DATA_BYTES = 200_000   # per figure: the page ships the rows in its HTML


class Interactive:
    """A Vega-Lite figure: ``spec`` (a dict) and a one-line ``description`` (the text fallback)."""

    def __init__(self, spec: dict, description: str):
        self.spec = spec
        self.description = description

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {MIME: self.spec, "text/plain": self.description}

    def __repr__(self) -> str:
        return self.description

    @property
    def data_bytes(self) -> int:
        """Size of the precomputed rows as the page carries them (compact JSON)."""
        return len(json.dumps(self.spec["data"]["values"], separators=(",", ":")))


def slider(field: str, label: str | None = None) -> dict:
    """A range slider over ``field``, whose values in the rows must be evenly spaced."""
    return {"input": "range", "field": field, "label": label or field}


def dropdown(field: str, label: str | None = None) -> dict:
    """A dropdown over the distinct values of ``field`` (in the order the rows first show them)."""
    return {"input": "select", "field": field, "label": label or field}


def _compact(value):
    # Four significant digits are more than a figure can show and halve the JSON.
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else None
    if hasattr(value, "item"):   # numpy scalars
        return _compact(value.item())
    return value


def _evenly_spaced(values: list, field: str) -> float:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"controls: the slider over {field!r} needs numbers (use a dropdown)")
    values = sorted(values)
    if len(values) < 2:
        raise ValueError(f"controls: the slider over {field!r} needs at least 2 values")
    step = values[1] - values[0]
    if any(not math.isclose(b - a, step, rel_tol=1e-6, abs_tol=1e-12)
           for a, b in zip(values, values[1:])):
        raise ValueError(f"controls: the slider over {field!r} needs evenly spaced values, "
                         f"got {values}")
    return step


def _domain(rows, field, log):
    values = [r[field] for r in rows if r.get(field) is not None]
    if log and any(v <= 0 for v in values):
        raise ValueError(f"rows: a log axis over {field!r} needs positive values")
    return [min(values), max(values)]


def line_chart(rows, *, x: str, y: str, color: str | None = None, controls=(),
               x_title: str | None = None, y_title: str | None = None, title: str | None = None,
               log_x: bool = False, log_y: bool = False, description: str | None = None,
               width: int = 520, height: int = 300) -> Interactive:
    """A line chart of ``y`` against ``x`` (one line per ``color``) over the rows the controls pick.

    Args:
        rows: list of dicts, one per point, every key a column (numbers or strings).
        x, y, color: the columns drawn; ``color`` splits the rows into lines (optional).
        controls: up to three :func:`slider` / :func:`dropdown` entries; each shows only the rows
            whose column equals the control's value. The axes keep the whole grid's range, so a
            curve moves when a control does.
        log_x, log_y: logarithmic axes.
        description: the one-line text fallback (default: ``"y against x"``).

    Raises ValueError if the rows are empty, lack a column, or take more than
    ``MAX_DATA_BYTES`` as JSON, or a slider's values are not evenly spaced.
    """
    rows = [{k: _compact(v) for k, v in r.items()} for r in rows]
    if not rows:
        raise ValueError("rows: no rows to draw")
    controls = list(controls)
    if len(controls) > 3:
        raise ValueError(f"controls: at most 3, got {len(controls)}")
    fields = [x, y] + ([color] if color else []) + [c["field"] for c in controls]
    missing = [f for f in fields if any(f not in r for r in rows)]
    if missing:
        raise ValueError(f"rows: some rows lack the column(s) {missing}")
    size = len(json.dumps(rows, separators=(",", ":")))
    if size > MAX_DATA_BYTES:
        raise ValueError(f"rows: {size:,} bytes of JSON, more than the {MAX_DATA_BYTES:,} a "
                         "figure may carry; use a coarser grid")

    params, filters = [], []
    for i, c in enumerate(controls):
        name, field = f"control_{i}", c["field"]
        values = list(dict.fromkeys(r[field] for r in rows))
        ref = f"datum[{json.dumps(field)}]"
        if c["input"] == "range":
            step = _evenly_spaced(values, field)
            low, high = min(values), max(values)
            start = sorted(values)[len(values) // 2]
            bind = {"input": "range", "min": low, "max": high, "step": step}
            # Half a step of tolerance: the slider's value is a float sum of steps.
            filters.append(f"abs({ref} - {name}) < {step / 2!r}")
        elif c["input"] == "select":
            start = values[0]
            bind = {"input": "select", "options": values}
            filters.append(f"{ref} == {name}")
        else:
            raise ValueError(f"controls: unknown input {c['input']!r} (use slider() or dropdown())")
        bind["name"] = c["label"] + " "
        params.append({"name": name, "value": start, "bind": bind})

    def axis(field, log, axis_title):
        enc = {"field": field, "type": "quantitative", "title": axis_title or field,
               "scale": {"domain": _domain(rows, field, log), "zero": False,
                         **({"type": "log"} if log else {})}}
        if enc["scale"]["domain"][1] >= 1e5:   # 100k, 10M, 1G rather than 100,000,000,000
            enc["axis"] = {"format": "~s"}
        return enc

    def kind(field):
        return "quantitative" if isinstance(rows[0][field], (int, float)) else "nominal"

    encoding = {"x": axis(x, log_x, x_title), "y": axis(y, log_y, y_title),
                "tooltip": [{"field": f, "type": kind(f)} for f in dict.fromkeys(fields)]}
    if color:
        encoding["color"] = {"field": color, "type": "nominal", "sort": None,
                             "title": color}
    spec = {
        "width": width, "height": height,
        "data": {"values": rows},
        "params": params,
        "transform": [{"filter": " && ".join(filters)}] if filters else [],
        "mark": {"type": "line", "point": True, "clip": True},
        "encoding": encoding,
    }
    if title:
        spec["title"] = title
    return Interactive(spec, description or f"<interactive figure: {y} against {x}>")


def static_png(spec: dict, scale: float = 2.0) -> bytes:
    """The figure as a PNG, its controls at their first values: the print edition's fallback.

    Rendered by vl-convert (the Vega project's own converter, bundled fonts, no browser), which
    only the PDF build needs (``requirements-pdf.txt``).
    """
    try:
        import vl_convert
    except ImportError:
        raise ImportError("the PDF's static figures need vl-convert-python: "
                          "pip install -r requirements-pdf.txt") from None
    values = [f"{p['bind'].get('name', p['name']).strip()} = {p['value']}"
              for p in spec.get("params", ()) if "bind" in p]
    if values:   # print says which controls' values the figure shows
        title = spec.get("title", "")
        text = title.get("text", "") if isinstance(title, dict) else title
        at = "at " + ", ".join(values)
        # (Vega draws no subtitle under an empty title.)
        spec = dict(spec, title={"text": text, "subtitle": at} if text else
                    {"text": at, "fontSize": 11, "fontWeight": "normal"})
    return vl_convert.vegalite_to_png(spec, scale=scale)


class MystNbRenderer:
    """myst-nb mime-render plugin: the site's HTML for a Vega-Lite v5 output.

    The output becomes ``<div class="fb-interactive">`` holding an empty container for the
    figure and its controls and the spec as JSON; ``fb-interactive.js`` (added by
    ``book/_ext/interactive.py`` to the pages that hold one) draws it. The bundle cannot carry
    that HTML itself: JupyterLab would rank text/html above the Vega-Lite renderer.
    """

    mime_priority_overrides = [("html", MIME, 5), ("dirhtml", MIME, 5), ("singlehtml", MIME, 5),
                               ("latex", MIME, 5)]

    @staticmethod
    def handle_mime(renderer, data, inline):
        if data.mime_type != MIME or inline:
            return None
        from docutils import nodes

        env = getattr(getattr(renderer, "renderer", None), "sphinx_env", None)
        if env is not None and env.app.builder.format == "latex":
            # In print, the figure at its controls' first values.
            import base64
            import dataclasses

            png = static_png(data.content if isinstance(data.content, dict)
                             else json.loads(data.content))
            return renderer.render_image(dataclasses.replace(
                data, mime_type="image/png", content=base64.b64encode(png).decode()))

        spec = data.content if isinstance(data.content, str) else json.dumps(data.content)
        # Inside <script>, only "</" could end the element early.
        spec = spec.replace("</", "<\\/")
        title = json.loads(spec).get("title")
        label = html.escape(title if isinstance(title, str) else "interactive figure", quote=True)
        return [nodes.raw("", '<div class="fb-interactive">'
                          '<div class="fb-interactive-figure" role="figure" '
                          f'aria-label="{label}"></div>'
                          f'<script type="application/json">{spec}</script></div>',
                          format="html")]
