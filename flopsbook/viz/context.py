"""Figures and calculator of the chapter "Choosing the context length": the context sweep of
``flopsbook.experiments.context`` drawn as contextwise curves, U-curves of the best-context loss
and the optimal context against the budget."""

from __future__ import annotations

import numpy as np

from .. import units
from ..experiments import context as experiment
from . import plain_log_ticks

# One colour per width, the same in every figure of the chapter.
_WIDTH_COLOURS = ("C0", "C1", "C2", "C3", "C4")


def width_colour(results, width, kind="long"):
    """The colour of ``width`` in the chapter's figures (its place among the sweep's widths)."""
    return _WIDTH_COLOURS[experiment.widths(results, kind).index(width) % len(_WIDTH_COLOURS)]


def run(results, width, context, kind="long"):
    """The stored run of one (width, context) on ``kind`` data."""
    for r in results["runs"]:
        if (r["kind"], r["width"], r["context"]) == (kind, width, context):
            return r
    raise ValueError(f"no {kind!r} run of width {width} and context {context} in the results")


def checkpoint(results, width, context, budget, kind="long"):
    """The checkpoint of one run at ``budget`` FLOPs (one of the sweep's budgets)."""
    for c in run(results, width, context, kind)["checkpoints"]:
        if np.isclose(c["budget"], budget):
            return c
    raise ValueError(f"the {kind!r} run of width {width}, context {context} has no checkpoint "
                     f"at budget {budget:.3g}")


def nearest_budget(results, width, budget, kind="long"):
    """The budget of :func:`~flopsbook.experiments.context.optimal_context` nearest to
    ``budget`` in log(FLOPs)."""
    budgets = experiment.optimal_context(results, width, kind=kind).budgets
    return float(budgets[np.argmin(np.abs(np.log(budgets) - np.log(budget)))])


def curve_noise(curve, start: int = 16) -> float:
    """Noise of a contextwise curve per position, nats, from its roughness: the standard
    deviation of the second differences ``c[j-1] - 2 c[j] + c[j+1]`` over positions from
    ``start`` on, divided by sqrt(6) (independent noise of standard deviation sigma at each
    position gives second differences of variance 6 sigma**2; a smooth curve's own second
    differences are negligible there)."""
    c = np.asarray(curve, dtype=float)
    if c.ndim != 1 or len(c) < start + 2:
        raise ValueError(f"curve must be 1-D with more than start + 1 = {start + 1} positions, "
                         f"got shape {c.shape}")
    second = c[start - 1:-2] - 2 * c[start:-1] + c[start + 1:]
    return float(second.std() / np.sqrt(6.0))


def smoothed_end_loss(curve, context: int, fraction: float = 0.5) -> float:
    """The loss at the end of the training ``context`` read off a straight line in log(position)
    fitted to the curve's last ``fraction`` of the context (at least two positions): a
    best-context loss with the noise of one or a few positions averaged away."""
    c = np.asarray(curve, dtype=float)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if c.ndim != 1 or context < 2 or len(c) < context:
        raise ValueError(f"curve must be 1-D with at least context = {context} >= 2 positions, "
                         f"got shape {c.shape}")
    first = min(context - 1, max(1, int(np.floor((1 - fraction) * context)) + 1))
    pos = np.arange(first, context + 1)
    slope, intercept = np.polyfit(np.log(pos), c[first - 1:context], 1)
    return float(intercept + slope * np.log(context))


def plot_curves(ax, curves, *, averages=False, colours=None, styles=None):
    """Contextwise curves ``{label: losses at positions 1, 2, ...}`` against the position (log
    axis). ``averages``: True draws a dotted line at each curve's mean over its positions, the
    average training loss the curve implies; a dict ``{label: loss}`` draws it at the loss
    given (a stored training loss, say)."""
    colours = colours or {}
    styles = styles or {}
    for i, (label, curve) in enumerate(curves.items()):
        curve = np.asarray(curve, dtype=float)
        colour = colours.get(label, f"C{i}")
        pos = np.arange(1, len(curve) + 1)
        ax.plot(pos, curve, styles.get(label, "-"), color=colour, lw=1.3, label=label)
        if isinstance(averages, dict) and label in averages:
            ax.hlines(averages[label], 1, len(curve), colors=colour, linestyles=":", lw=1.6)
        elif averages is True:
            ax.hlines(curve.mean(), 1, len(curve), colors=colour, linestyles=":", lw=1.6)
    ax.set_xscale("log", base=2)
    plain_log_ticks(ax, "x")
    ax.set_xlabel("position j (tokens of context)")
    ax.set_ylabel("loss (nats)")
    return ax


def plot_beyond(ax, results, width, kind="long"):
    """Every ``kind`` run of ``width`` after its last step, to ``beyond_length(context)``
    positions: solid within the training context, dashed beyond it, a dot at the best-context
    loss; the optimum's expected curve in black."""
    runs = [r for r in results["runs"] if r["kind"] == kind and r["width"] == width]
    longest = max(len(r["curve_beyond"]) for r in runs)
    optimum = np.asarray(results["expected_bayes"][kind][:longest])
    ax.plot(np.arange(1, longest + 1), optimum, "k-", lw=1, label="optimum (expected)")
    for i, r in enumerate(sorted(runs, key=lambda r: r["context"])):
        curve, s = np.asarray(r["curve_beyond"]), r["context"]
        pos = np.arange(1, len(curve) + 1)
        colour = f"C{i}"
        ax.plot(pos[:s], curve[:s], "-", color=colour, lw=1.1, label=f"s = {s}")
        ax.plot(pos[s - 1:], curve[s - 1:], "--", color=colour, lw=0.8, alpha=0.7)
        ax.plot(s, experiment.best_context_loss(curve, s), "o", color=colour, mec="k", ms=5,
                zorder=5)
    ax.set_xscale("log", base=2)
    plain_log_ticks(ax, "x")
    ax.set_xlabel("position j (solid: inside the training context, dashed: beyond)")
    ax.set_ylabel("loss (nats)")
    return ax


def plot_u_curves(ax, results, width, kind="long"):
    """Best-context loss against the training context, one line per budget of ``width``
    (darker: more FLOPs), each budget's measured best context ringed."""
    import matplotlib as mpl

    opt = experiment.optimal_context(results, width, kind=kind)
    budgets, contexts, values = experiment.grid(results, width, kind=kind)
    cmap = mpl.colormaps["viridis_r"]
    logs = np.log10(budgets)
    span = max(logs[-1] - logs[0], 1e-9)
    for i, b in enumerate(budgets):
        if not np.isclose(opt.budgets, b).any():
            continue  # a budget not every context reached has no U
        colour = cmap(0.15 + 0.8 * (logs[i] - logs[0]) / span)
        ax.plot(contexts, values[i], "-o", color=colour, ms=3, lw=1.2,
                label=units.format_sci(b))
        j = int(np.nanargmin(values[i]))
        ax.plot(contexts[j], values[i, j], "o", mfc="none", mec="k", ms=8, mew=1.2)
    ax.set_xscale("log", base=2)
    ax.set_xticks(contexts, [str(c) for c in contexts])
    ax.minorticks_off()
    ax.set_xlabel("training context s")
    ax.set_ylabel("best-context loss (nats)")
    ax.set_title(f"width {width}", fontsize=9)
    return ax


def plot_optimal_context(ax, results, kind="long", widths=None):
    """The measured best context (dots) and the parabola's minimum (line) against the budget,
    one colour per width."""
    for width in widths or experiment.widths(results, kind):
        opt = experiment.optimal_context(results, width, kind=kind)
        colour = width_colour(results, width, kind)
        ax.plot(opt.budgets, opt.fitted, "-", color=colour, lw=1.4, label=f"width {width}")
        ax.plot(opt.budgets, opt.measured, "o", color=colour, ms=4, mfc="none")
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    plain_log_ticks(ax)
    ax.set_xlabel("training budget (FLOPs)")
    ax.set_ylabel("best training context s")
    return ax


def context_report(budget: float, width: int, results=None) -> str:
    """What the sweep says for ``budget`` training FLOPs at ``width``: the predicted best context
    (:func:`~flopsbook.experiments.context.predicted_best_context`), the nearest measured budget
    with its best context, best-context loss and tokens, and the attention share of a training
    token's FLOPs at that context."""
    from ..flops import flops_per_token

    results = experiment.load_results() if results is None else results
    opt = experiment.optimal_context(results, width)
    lo, hi = float(opt.budgets[0]), float(opt.budgets[-1])
    lines = [f"width {width}, budget {units.format_sci(budget, 'FLOPs')}"]
    if lo * (1 - 1e-12) <= budget <= hi * (1 + 1e-12):
        predicted = experiment.predicted_best_context(budget, width, results=results)
        lines.append(f"predicted best training context: {predicted:,.0f} tokens "
                     "(interpolated between the measured budgets)")
    else:
        lines.append(f"outside the budgets measured for width {width} "
                     f"({units.format_sci(lo)} to {units.format_sci(hi)} FLOPs): no prediction")
    near = nearest_budget(results, width, budget)
    i = int(np.argmin(np.abs(opt.budgets - near)))
    best = int(opt.measured[i])
    c = checkpoint(results, width, best, near)
    m = experiment.model_spec(width, best)
    total = flops_per_token(m, causal=True)
    share = 1 - flops_per_token(m, causal=True, include_attention=False) / total
    lines.append(f"nearest measured budget {units.format_sci(near, 'FLOPs')}: best context "
                 f"{best:,} (parabola's minimum {opt.fitted[i]:,.0f}), best-context loss "
                 f"{opt.loss[i]:.3f} nats after {c['steps']:,} steps, "
                 f"{units.format_count(c['tokens'])} tokens")
    lines.append(f"a training token at s = {best:,} costs {total:,.0f} FLOPs (causal, logits "
                 f"in), {share:.0%} of them in the attention products")
    return "\n".join(lines)


def optimal_context_trend(results, width, kind="long"):
    """A straight line through log2 of the fitted optimal context against log10 of the budget
    (:func:`~flopsbook.experiments.context.optimal_context`, comparable budgets only).

    Returns ``(slope, intercept, scatter)``: doublings of context per decade of FLOPs, the
    line's log2 context at 1 FLOP, and the standard deviation of the fitted optima about the
    line (doublings; 0 for fewer than three budgets)."""
    opt = experiment.optimal_context(results, width, kind=kind)
    x, y = np.log10(opt.budgets), np.log2(opt.fitted)
    if len(x) < 2:
        raise ValueError(f"width {width} has {len(x)} comparable budget(s): a line needs two")
    slope, intercept = np.polyfit(x, y, 1)
    scatter = float(np.std(y - (slope * x + intercept))) if len(x) > 2 else 0.0
    return float(slope), float(intercept), scatter


def context_figure(results=None, budget=None, *, trend=True):
    """Two panels: the predicted best context against the budget for every width, and the
    U-curves of all widths at the budget nearest ``budget`` (default: the largest budget that
    every width reached). The predicted line joins the per-budget parabola minima, which
    scatter within the noise; ``trend`` adds each width's straight-line fit
    (:func:`optimal_context_trend`, dashed) with a band of one standard deviation of that
    scatter, which is what the sweep resolves. Returns the figure."""
    import matplotlib.pyplot as plt

    results = experiment.load_results() if results is None else results
    widths = experiment.widths(results)
    if budget is None:
        budget = min(float(experiment.optimal_context(results, w).budgets[-1]) for w in widths)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for width in widths:
        opt = experiment.optimal_context(results, width)
        colour = width_colour(results, width)
        fine = np.logspace(np.log10(opt.budgets[0]), np.log10(opt.budgets[-1]), 60)
        ax1.plot(fine, experiment.predicted_best_context(fine, width, results=results), "-",
                 color=colour, lw=1.4, label=f"width {width}")
        ax1.plot(opt.budgets, opt.measured, "o", color=colour, ms=4, mfc="none")
        if trend and len(opt.budgets) >= 2:
            slope, intercept, scatter = optimal_context_trend(results, width)
            line = slope * np.log10(fine) + intercept
            ax1.plot(fine, 2.0 ** line, "--", color=colour, lw=1)
            if scatter > 0:
                ax1.fill_between(fine, 2.0 ** (line - scatter), 2.0 ** (line + scatter),
                                 color=colour, alpha=0.15, lw=0)
        near = nearest_budget(results, width, budget)
        budgets, contexts, values = experiment.grid(results, width)
        row = values[int(np.argmin(np.abs(budgets - near)))]
        ax2.plot(contexts, row, "-o", color=colour, ms=3, lw=1.3,
                 label=f"width {width} at {units.format_sci(near)}")
        j = int(np.nanargmin(row))
        ax2.plot(contexts[j], row[j], "o", mfc="none", mec="k", ms=8, mew=1.2)
    ax1.axvline(budget, color="0.5", ls=":", lw=1)
    ax1.set_xscale("log")
    ax1.set_yscale("log", base=2)
    plain_log_ticks(ax1)
    ax1.set_xlabel("training budget (FLOPs)")
    ax1.set_ylabel("best training context (tokens)")
    ax1.set_title("predicted (line), measured (rings);\nstraight-line fit ± its scatter (dashed, band)"
                  if trend else "predicted (line) and measured (rings)", fontsize=9)
    ax1.legend(fontsize=8)
    ax2.set_xscale("log", base=2)
    contexts = experiment.grid(results, widths[0])[1]
    ax2.set_xticks(contexts, [str(c) for c in contexts])
    ax2.minorticks_off()
    ax2.set_xlabel("training context s")
    ax2.set_ylabel("best-context loss (nats)")
    ax2.set_title(f"U-curves near {units.format_sci(budget, 'FLOPs')}", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def context_calculator(results=None):
    """Widgets for :func:`context_report`: a budget slider and a width dropdown; the U-curve of
    that width at the nearest measured budget is drawn when a widget changes."""
    import ipywidgets as w
    from IPython.display import display

    results = experiment.load_results() if results is None else results
    widths = experiment.widths(results)
    spans = [experiment.optimal_context(results, x).budgets for x in widths]
    lo, hi = min(float(b[0]) for b in spans), max(float(b[-1]) for b in spans)
    style = {"description_width": "initial"}
    log_c = w.FloatSlider(value=float(np.log10(spans[0][-1])), min=float(np.log10(lo)),
                          max=float(np.log10(hi)), step=0.05, readout_format=".2f",
                          description="log10 budget (FLOPs)", style=style)
    width = w.Dropdown(options=widths, value=widths[0], description="width")
    out = w.Output()

    def update(_=None, *, draw=True):
        out.clear_output(wait=True)
        with out:
            budget = 10.0 ** log_c.value
            print(context_report(budget, width.value, results))
            if not draw:
                print("(move the slider or change the width to draw the U-curve)")
                return
            import matplotlib.pyplot as plt

            near = nearest_budget(results, width.value, budget)
            budgets, contexts, values = experiment.grid(results, width.value)
            _, ax = plt.subplots(figsize=(5.6, 3.4))
            ax.plot(contexts, values[int(np.argmin(np.abs(budgets - near)))], "-o",
                    color=width_colour(results, width.value))
            ax.set_xscale("log", base=2)
            ax.set_xticks(contexts, [str(c) for c in contexts])
            ax.minorticks_off()
            ax.set_xlabel("training context s")
            ax.set_ylabel("best-context loss (nats)")
            ax.set_title(f"width {width.value} at {units.format_sci(near, 'FLOPs')}")
            plt.show()

    for widget in (log_c, width):
        widget.observe(update, names="value")
    update(draw=False)
    display(w.VBox([w.HBox([log_c, width]), out]))


def interactive_context(results=None):
    """The kernel-free figure of the calculator: the best-context loss against the training
    context (the sweep's U-curves, ``experiment.grid``), one line per width; a dropdown over the
    training budget. Returns a :class:`~flopsbook.viz.interactive.Interactive`."""
    from .interactive import dropdown, line_chart

    results = experiment.load_results() if results is None else results
    points = []
    for width in experiment.widths(results):
        budgets, contexts, values = experiment.grid(results, width)
        points += [(float(b), width, int(c), float(v)) for b, row in zip(budgets, values)
                   for c, v in zip(contexts, row) if np.isfinite(v)]
    # Sorted by budget, so that the dropdown lists the budgets in increasing order.
    rows = [{"context": c, "loss": v, "width": f"width {w}",
             "budget": units.format_sci(b, "FLOPs")} for b, w, c, v in sorted(points)]
    return line_chart(rows, x="context", y="loss", color="width", log_x=True,
                      controls=[dropdown("budget", "training budget")],
                      x_title="training context s (tokens)", y_title="best-context loss (nats)",
                      description="<interactive figure: U-curves of the best-context loss>")
