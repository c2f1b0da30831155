"""Figure and explorer of the chapter "Scaling laws": where a budget should go, and where
published models went."""

from __future__ import annotations

import numpy as np

from .. import registry, scaling, units
from ..spec import param_count
from . import plain_log_ticks

# Training tokens of published runs (the registry holds their shapes, not their data).
# name in the registry: (training tokens, bib key of the figure)
FAMOUS_RUNS = {
    "gpt3-175b": (300e9, "brown2020gpt3"),
    "gopher-280b": (300e9, "rae2021gopher"),
    "chinchilla-70b": (1.4e12, "hoffmann2022chinchilla"),
    "palm-540b": (780e9, "chowdhery2022palm"),
    "llama-7b": (1.0e12, "touvron2023llama"),
    "llama-65b": (1.4e12, "touvron2023llama"),
    "llama2-7b": (2.0e12, "touvron2023llama2"),
    "llama2-70b": (2.0e12, "touvron2023llama2"),
    "llama3-8b": (15e12, "grattafiori2024llama3"),
    "llama3-70b": (15e12, "grattafiori2024llama3"),
}

# The chapter's other figures draw the fits in this order with matplotlib's default colours.
_STYLE = {"hoffmann2022": "C0", "hoffmann2022-tex": "C1", "besiroglu2024": "C2",
          "tokens-per-param-20": "C3"}
# Label offsets (points) for runs that would otherwise overlap on the plane: Chinchilla (70B,
# 1.4T) and LLaMA 65B (65B, 1.4T) sit on one spot, so one label goes right, the other further
# down, and the 7B runs' labels go to the left of their dots to make room.
_LABEL_OFFSET = {"gpt3-175b": (-50, -9), "gopher-280b": (4, -9), "chinchilla-70b": (-30, -21),
                 "llama-65b": (5, -11), "llama2-70b": (4, 4), "llama-7b": (-38, -3),
                 "llama2-7b": (-42, -3)}


def famous_runs():
    """{name: (parameters from the registry spec, training tokens)} of the runs in FAMOUS_RUNS."""
    return {name: (float(param_count(registry.model(name))), tokens)
            for name, (tokens, _source) in FAMOUS_RUNS.items()}


def plot_scaling_plane(ax=None, *, compute=None, fits=("hoffmann2022", "besiroglu2024",
                                                          "tokens-per-param-20"),
                       budgets=(1e20, 1e22, 1e24, 1e26), runs=True):
    """Parameters (x) against tokens (y), log-log: iso-FLOP lines C = 6ND, each fit's
    compute-optimal frontier, the published runs, and the optima at ``compute`` if given."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.6))
    # Iso-FLOP lines and frontiers are power laws, straight on log-log axes: two points each.
    n = np.array([3e7, 1e13])
    for c in budgets:
        ax.loglog(n, c / (6 * n), color="0.75", lw=0.8, ls="--", zorder=1)
        x = np.clip(c / (6 * 3e13), 4e7, 3e12)  # label each budget where its line meets D = 3e13
        ax.annotate(f"C = {units.power_of_ten(round(np.log10(c)))}", (x, c / (6 * x)),
                    color="0.45", fontsize=7)
    c_ends = np.array([1e17, 1e29])
    for i, name in enumerate(fits):
        n_opt, d_opt = scaling.chinchilla_optimal(c_ends, name)
        ax.loglog(n_opt, d_opt, color=_STYLE.get(name, "k"), lw=1.8, label=f"optimal: {name}")
        if compute is not None:
            # Rings shrink fit by fit and sit above the dots, so optima that coincide stay
            # visible one inside another.
            n_c, d_c = scaling.chinchilla_optimal(compute, name)
            ax.plot(n_c, d_c, "o", ms=16 - 3 * i, mfc="none", mew=1.6,
                    color=_STYLE.get(name, "k"), zorder=11 + i)
    if compute is not None:
        ax.loglog(n, compute / (6 * n), color="k", lw=1.2,
                  label=f"C = {units.format_sci(compute, 'FLOPs')}")
    if runs:
        for name, (n_run, d_run) in famous_runs().items():
            ax.plot(n_run, d_run, "k.", ms=7, zorder=10)
            ax.annotate(name, (n_run, d_run), fontsize=7, xytext=_LABEL_OFFSET.get(name, (3, 2)),
                        textcoords="offset points")
    ax.set_xlim(3e7, 1e13)
    ax.set_ylim(1e9, 3e14)
    plain_log_ticks(ax)
    ax.set_xlabel("parameters N")
    ax.set_ylabel("training tokens D")
    ax.legend(fontsize=8, loc="lower right")
    return ax


def scaling_explorer():
    """Compute budget and fit -> N_opt, D_opt, tokens per parameter, predicted loss; the plane
    with the published runs.

    Opening it only prints the numbers for the starting values; the plane (a matplotlib figure,
    the slow part) is drawn when a widget changes.
    """
    import ipywidgets as w
    from IPython.display import display

    style = {"description_width": "initial"}
    log_c = w.FloatSlider(value=float(np.log10(5.76e23)), min=18, max=28, step=0.05,
                          description="log10 C (FLOPs)", style=style, readout_format=".2f")
    fit = w.Dropdown(options=scaling.scaling_fits(), value="besiroglu2024", description="fit")
    out = w.Output()

    def update(_=None, *, draw=True):
        out.clear_output(wait=True)
        with out:
            c = 10.0 ** log_c.value
            f = scaling.scaling_fit(fit.value)
            n, d = scaling.chinchilla_optimal(c, f)
            print(f"C = {c:.3g} FLOPs, fit {f.name} ({f.source})")
            print(f"N_opt = {n:.3g} parameters, D_opt = {d:.3g} tokens, "
                  f"{d / n:.1f} tokens per parameter")
            if f.has_loss:
                print(f"predicted loss at the optimum: {scaling.chinchilla_loss(n, d, f):.3f} "
                      f"(cross-entropy per token on the fit's data, MassiveText)")
            else:
                print("this rule has no loss law")
            if not draw:
                print("(move the slider or change the fit to draw the plane)")
                return
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(6.4, 4.6))
            plot_scaling_plane(ax, compute=c, fits=(f.name,))
            plt.show()

    for widget in (log_c, fit):
        widget.observe(update, names="value")
    update(draw=False)
    display(w.VBox([w.HBox([log_c, fit]), out]))


def interactive_scaling(fits=("hoffmann2022", "besiroglu2024")):
    """The kernel-free figure of the calculator: the fitted loss (``chinchilla_loss``) against
    the parameters, one line per fit; a slider over log10 of the tokens. Returns a
    :class:`~flopsbook.viz.interactive.Interactive`."""
    from .interactive import line_chart, slider

    n = np.logspace(8, 12, 25)
    rows = []
    for fit in fits:
        for e in np.arange(10, 13.01, 0.5):
            loss = scaling.chinchilla_loss(n, 10.0**e, fit=fit)
            rows += [{"params": x, "loss": v, "fit": fit, "log10_tokens": float(e)}
                     for x, v in zip(n, loss)]
    return line_chart(rows, x="params", y="loss", color="fit", log_x=True,
                      controls=[slider("log10_tokens", "log10 of the tokens D")],
                      x_title="parameters N", y_title="loss (nats per token)",
                      description="<interactive figure: fitted loss against parameters>")
