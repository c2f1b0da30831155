"""Figures and calculator of the chapter "Many devices II: tensor, sequence, pipeline, context and
expert parallelism, and layouts for a cluster".

The pipeline diagram is drawn from a counted simulation's schedule
(``flopsbook.reference.model_parallel.schedule_table``: rows of ``(stage, kind, micro_batch,
start, end)``). The layout bars and the calculator show what ``flopsbook.parallel_layouts``
returns: each layout's predicted step time split into compute, bubble and the exposed
communication of each axis.
"""

from __future__ import annotations

import numpy as np

from .. import parallelism, registry, units
from .._validate import as_hardware

#: The parts of a predicted step, in the order the bars stack them.
PARTS = ("compute", "bubble", "tp", "cp", "pp", "dp", "ep")
PART_NAMES = {"compute": "compute", "bubble": "pipeline bubble", "tp": "TP (exposed)",
              "cp": "CP (exposed)", "pp": "PP (exposed)", "dp": "DP (exposed)",
              "ep": "EP (exposed)"}
PART_COLOURS = {"compute": "#4c72b0", "bubble": "#bbbbbb", "tp": "#dd8452", "cp": "#937860",
                "pp": "#55a868", "dp": "#c44e52", "ep": "#8172b3"}


def draw_schedule(ax, rows, n_stages=None, *, title=None):
    """A pipeline schedule as a Gantt chart on ``ax``: one row per stage (stage 0 at the top),
    time left to right, forwards light and backwards dark, each box labelled with its
    micro-batch. ``rows`` are ``(stage, kind, micro_batch, start, end)`` with kind "F" or "B"."""
    import matplotlib.pyplot as plt

    rows = list(rows)
    p = n_stages or (max(r[0] for r in rows) + 1)
    k = max(r[2] for r in rows) + 1
    cmap = plt.get_cmap("tab10")
    for stage, kind, mb, start, end in rows:
        colour = cmap(mb % 10)
        ax.barh(stage, end - start, left=start, height=0.8, color=colour,
                alpha=0.45 if kind == "F" else 0.95, edgecolor="black", linewidth=0.4)
        ax.text((start + end) / 2, stage, f"{kind}{mb}", ha="center", va="center", fontsize=6)
    ax.set_yticks(range(p))
    ax.set_yticklabels([f"stage {i}" for i in range(p)], fontsize=7)
    ax.set_ylim(p - 0.5, -0.5)
    ax.set_xlabel("time (clock units)", fontsize=8)
    ax.grid(False)
    makespan = max(r[4] for r in rows)
    ax.set_xlim(0, makespan)
    if title:
        ax.set_title(title, fontsize=9)
    return ax, k


def schedule_figure(tables, titles=None):
    """One :func:`draw_schedule` panel per schedule in ``tables`` (lists of rows), stacked.
    Returns the figure."""
    import matplotlib.pyplot as plt

    tables = list(tables)
    titles = list(titles) if titles is not None else [None] * len(tables)
    p = max(max(r[0] for r in t) + 1 for t in tables)
    fig, axes = plt.subplots(len(tables), 1, figsize=(7.2, 0.55 * p * len(tables) + 0.6),
                             squeeze=False, sharex=True)
    for ax, table, title in zip(axes[:, 0], tables, titles):
        draw_schedule(ax, table, p, title=title)
    for ax in axes[:-1, 0]:
        ax.set_xlabel("")
    fig.tight_layout()
    return fig


def layout_label(layout) -> str:
    """A layout in one line: its axes, ZeRO stage, recomputation and micro-batching."""
    axes = [f"{name.upper()}{getattr(layout, name)}" for name in ("tp", "cp", "pp", "dp", "ep")
            if getattr(layout, name) > 1 or name == "dp"]
    v = f" v{layout.interleave}" if layout.interleave > 1 else ""
    return (f"{' '.join(axes)}, ZeRO-{layout.zero_stage}, recompute {layout.recompute}, "
            f"mb {layout.micro_batch} x {layout.micro_batches}{v}")


def step_parts(layout) -> dict:
    """Seconds of each part of :data:`PARTS` in a layout's predicted step."""
    parts = {"compute": layout.compute, "bubble": layout.bubble}
    parts.update({k: layout.communication.get(k, 0.0) for k in PARTS[2:]})
    return parts


def draw_layouts(ax, layouts, labels=None, *, title=None):
    """Horizontal stacked bars of the predicted step time of each layout (fastest at the top):
    compute, bubble and each axis's exposed communication."""
    layouts = list(layouts)
    labels = list(labels) if labels is not None else [layout_label(x) for x in layouts]
    y = np.arange(len(layouts))
    left = np.zeros(len(layouts))
    for part in PARTS:
        width = np.array([step_parts(x)[part] for x in layouts])
        if np.any(width > 0):
            ax.barh(y, width, left=left, color=PART_COLOURS[part], label=PART_NAMES[part],
                    height=0.7)
        left = left + width
    for yi, x in zip(y, layouts):
        ax.text(x.step_time, yi, f" {x.step_time:.2f} s, MFU {x.mfu:.0%}, "
                f"{units.format_bytes(x.memory_per_device, binary=True)}", va="center",
                fontsize=6.5)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=6.5)
    ax.set_ylim(len(layouts) - 0.5, -0.5)
    ax.set_xlim(0, 1.55 * max(x.step_time for x in layouts))
    ax.set_xlabel("predicted seconds per optimizer step", fontsize=8)
    ax.legend(fontsize=6.5, loc="lower right", ncol=2)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def layouts_figure(layouts, labels=None, *, title=None):
    """:func:`draw_layouts` on a figure of its own; returns the figure."""
    import matplotlib.pyplot as plt

    layouts = list(layouts)
    fig, ax = plt.subplots(figsize=(7.2, 0.42 * len(layouts) + 1.2))
    draw_layouts(ax, layouts, labels, title=title)
    fig.tight_layout()
    return fig


def layouts_table(layouts, labels=None) -> str:
    """A Markdown table of layouts: axes, ZeRO, recomputation, micro-batches, memory, the parts
    of the predicted step and MFU."""
    layouts = list(layouts)
    labels = list(labels) if labels is not None else [None] * len(layouts)
    head = ("| | TP | CP | PP | DP | EP | ZeRO | recompute | micro-batch × count (v) | "
            "memory (GiB) | compute (s) | bubble (s) | exposed comm. (s) | step (s) | MFU |")
    rows = [head, "|" + "---|" * 16]
    for i, (x, label) in enumerate(zip(layouts, labels)):
        comm = sum(x.communication.values())
        v = f" ({x.interleave})" if x.interleave > 1 else ""
        rows.append(f"| {label or i + 1} | {x.tp} | {x.cp} | {x.pp} | {x.dp} | {x.ep} | "
                    f"{x.zero_stage} | {x.recompute} | {x.micro_batch} × {x.micro_batches}{v} | "
                    f"{x.memory_per_device / 2**30:.1f} | {x.compute:.2f} | {x.bubble:.2f} | "
                    f"{comm:.2f} | {x.step_time:.2f} | {x.mfu:.0%} |")
    return "\n".join(rows)


def best_layouts(model, hardware, n_devices, *, seq_len, global_batch_tokens, top=5,
                 **search):
    """The ``top`` fastest layouts by :func:`~flopsbook.parallel_layouts`, keeping only the
    fastest ZeRO stage and recomputation of each (dp, tp, pp, cp, ep, micro-batch, v) (the
    others differ only in memory), so that the list shows different layouts."""
    found = parallelism.parallel_layouts(model, hardware, n_devices, seq_len=seq_len,
                                         global_batch_tokens=global_batch_tokens, **search)
    seen, out = set(), []
    for x in found:
        key = (x.dp, x.tp, x.pp, x.cp, x.ep, x.micro_batch, x.interleave)
        if key in seen:
            continue
        seen.add(key)
        out.append(x)
        if len(out) == top:
            break
    return out


def parallelism_report(model="llama3.1-405b", hardware="h100-sxm", n_devices=8192,
                       seq_len=8192, global_batch_tokens=2**24, top=5, matmul_efficiency=0.5,
                       **search):
    """The best few layouts of a model on a cluster as text, one layout a line, then the parts
    of the fastest one's predicted step."""
    hw = as_hardware(hardware)
    m = registry.model(model) if isinstance(model, str) else model
    best = best_layouts(m, hw, n_devices, seq_len=seq_len,
                        global_batch_tokens=global_batch_tokens, top=top,
                        matmul_efficiency=matmul_efficiency, **search)
    head = (f"{m.name} on {n_devices:,} x {hw.name}, {global_batch_tokens:,} tokens per step "
            f"in sequences of {seq_len:,}, matmuls at {matmul_efficiency:.0%} of the 16-bit peak")
    if not best:
        return head + "\nno layout fits the device's memory"
    lines = [head]
    for i, x in enumerate(best, 1):
        lines.append(f"{i}. {layout_label(x)}: {x.step_time:.2f} s per step, MFU {x.mfu:.1%}, "
                     f"{units.format_bytes(x.memory_per_device, binary=True)} per device")
    first = best[0]
    parts = step_parts(first)
    lines.append("fastest: " + ", ".join(f"{PART_NAMES[k]} {v:.2f} s" for k, v in parts.items()
                                          if v > 0)
                 + "; links " + ", ".join(f"{k} {v}" for k, v in first.links.items()))
    return "\n".join(lines)


def parallelism_figure(model="llama3.1-405b", hardware="h100-sxm", n_devices=8192,
                       seq_len=8192, global_batch_tokens=2**24, top=6, **search):
    """The calculator's static face: the best ``top`` layouts of ``model`` on ``n_devices``
    devices as step-time bars. Returns the figure."""
    m = registry.model(model) if isinstance(model, str) else model
    hw = as_hardware(hardware)
    best = best_layouts(m, hw, n_devices, seq_len=seq_len,
                        global_batch_tokens=global_batch_tokens, top=top, **search)
    return layouts_figure(best, title=f"{m.name} on {n_devices:,} × {hw.name}: the fastest "
                                      f"layouts that fit ({global_batch_tokens / 2**20:.0f}Mi "
                                      f"tokens per step)")


def parallelism_calculator():
    """Widgets for :func:`parallelism_report` and the bars: model, accelerator, devices,
    sequence length, tokens per step, matmul efficiency, how many layouts, and optional fixed
    sizes for tp and pp (0 searches every size)."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    style = {"description_width": "initial"}
    linked = [h for h in registry.hardwares()
              if registry.hardware(h).inter_node_bandwidth is not None
              and registry.hardware(h).devices_per_node is not None]
    name = w.Dropdown(options=registry.models(), value="llama3.1-405b", description="model")
    hw = w.Dropdown(options=linked, value="h100-sxm", description="accelerator", style=style)
    n = w.BoundedIntText(value=8192, min=1, max=10**6, description="devices")
    s = w.BoundedIntText(value=8192, min=1, max=10**7, description="seq_len")
    tokens = w.BoundedIntText(value=2**24, min=1, max=10**10, description="tokens/step",
                              style=style)
    eff = w.FloatSlider(value=0.5, min=0.1, max=1.0, step=0.05, description="matmul eff.",
                        style=style)
    top = w.BoundedIntText(value=5, min=1, max=20, description="layouts")
    tp = w.BoundedIntText(value=0, min=0, max=64, description="fix tp (0: search)", style=style)
    pp = w.BoundedIntText(value=0, min=0, max=512, description="fix pp (0: search)", style=style)
    out = w.Output()

    def update(_=None):
        out.clear_output()
        with out:
            search = {k: v.value for k, v in (("tp", tp), ("pp", pp)) if v.value}
            try:
                print(parallelism_report(name.value, hw.value, n.value, s.value, tokens.value,
                                         top.value, eff.value, **search))
                best = best_layouts(name.value, hw.value, n.value, seq_len=s.value,
                                    global_batch_tokens=tokens.value, top=top.value,
                                    matmul_efficiency=eff.value, **search)
                if best:
                    layouts_figure(best)
                    plt.show()
            except ValueError as error:
                print(f"cannot compute: {error}")

    widgets = (name, hw, n, s, tokens, eff, top, tp, pp)
    for widget in widgets:
        widget.observe(update, names="value")
    update()
    display(w.VBox([w.HBox([name, hw]), w.HBox([n, s]), w.HBox([tokens, eff]),
                    w.HBox([top, tp, pp]), out]))


def interactive_parallelism(stages=(2, 4, 8, 16)):
    """The kernel-free figure of the calculator: the pipeline bubble (``pipeline_bubble``)
    against the micro-batches, one line per stage count; a slider over the interleaving and a
    dropdown over the convention. Returns a :class:`~flopsbook.viz.interactive.Interactive`."""
    from .interactive import dropdown, line_chart, slider

    micro = np.arange(1, 65)
    micro = micro[(micro <= 8) | (micro % 4 == 0)]
    rows = []
    for relative_to in ("ideal", "step"):
        for v in range(1, 5):
            for p in stages:
                bubble = parallelism.pipeline_bubble(p, micro, interleave=v,
                                                     relative_to=relative_to)
                rows += [{"micro_batches": int(k), "bubble": b, "stages": f"{p} stages",
                          "interleave": v, "relative_to": f"of the {relative_to} time"
                          if relative_to == "ideal" else "of the whole step"}
                         for k, b in zip(micro, bubble)]
    return line_chart(rows, x="micro_batches", y="bubble", color="stages", log_x=True, log_y=True,
                      controls=[slider("interleave", "interleave v"),
                                dropdown("relative_to", "bubble")],
                      x_title="micro-batches per step", y_title="pipeline bubble",
                      description="<interactive figure: pipeline bubble against micro-batches>")
