"""Calculator of the chapter "Where attention overtakes the matmuls"."""

from __future__ import annotations

import numpy as np

from .. import flops, registry, units

# Bottom to top in the stacked bars: the weight matmuls first, the s**2 products on top.
COMPONENTS = ("qkv", "out_proj", "ffn", "scores", "weighted_values")
LABELS = {"qkv": "Q, K, V projections", "out_proj": "output projection", "ffn": "feed-forward",
          "scores": "scores $QK^T$", "weighted_values": "weighted values $AV$"}
COLORS = {"qkv": "#4c72b0", "out_proj": "#8fa8d6", "ffn": "#55a868", "scores": "#c44e52",
          "weighted_values": "#e8989a"}


def tokens_label(n) -> str:
    """Context lengths as papers write them: 4K = 4,096 and 1M = 1,048,576 tokens (binary)."""
    n = int(n)
    if n >= 2**20 and n % 2**20 == 0:
        return f"{n // 2**20}M"
    if n >= 2**10 and n % 2**10 == 0:
        return f"{n // 2**10}K"
    return f"{n:,}"


def component_shares(m, contexts, *, causal=False):
    """Share of each ``layer_flops`` component in one layer's forward FLOPs, per context."""
    parts = flops.layer_flops(m, np.asarray(contexts), causal=causal)
    return {k: np.asarray(parts[k] / parts["total"]) for k in COMPONENTS}


def crossovers(m, *, causal=False):
    """The two crossover lengths of ``m`` (``flops.crossover_seq_len``), by name."""
    return {against: float(flops.crossover_seq_len(m, against=against, causal=causal))
            for against in flops.CROSSOVER_AGAINST}


def plot_component_shares(m, contexts, *, causal=False, highlight=None, ax=None):
    """Stacked bars of the per-component shares at each context (log2-spaced x axis), with the
    crossovers against the projections and against the whole layer as vertical lines."""
    import matplotlib.pyplot as plt

    contexts = np.asarray(contexts)
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.8))
    x = np.log2(contexts)
    shares = component_shares(m, contexts, causal=causal)
    bottom = np.zeros(len(contexts))
    for k in COMPONENTS:
        ax.bar(x, 100 * shares[k], 0.8, bottom=bottom, color=COLORS[k], label=LABELS[k])
        bottom += 100 * shares[k]
    styles = {"projections": ":", "layer": "--"}
    for against, s in crossovers(m, causal=causal).items():
        ax.axvline(np.log2(s), color="black", ls=styles[against], lw=1.2)
        ax.text(np.log2(s), 101, f"{against}\n{s:,.0f}", ha="center", va="bottom", fontsize=7)
    if highlight is not None:
        ax.bar(np.log2(highlight), 100, 0.9, fill=False, edgecolor="black", lw=1.5)
    ax.axhline(50, color="grey", lw=0.6)
    ax.set_xticks(x, [tokens_label(c) for c in contexts], rotation=45, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("% of one layer's forward FLOPs")
    ax.set_title(f"{m.name}: {'causal' if causal else 'non-causal'} attention", pad=22)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return ax


def attention_explorer():
    """Model, context length, causal on/off -> per-component FLOPs shares and the crossovers."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    powers = [2**k for k in range(8, 23)]
    name = w.Dropdown(options=registry.models(), value="llama2-7b", description="model")
    context = w.SelectionSlider(options=[(f"{c:,}", c) for c in powers], value=4096,
                                description="context", continuous_update=False)
    causal = w.Checkbox(value=False, description="causal (skip masked blocks)")
    out = w.Output()

    def update(_=None):
        out.clear_output(wait=True)
        m = registry.model(name.value)
        with out:
            parts = flops.layer_flops(m, context.value, causal=causal.value)
            print(f"{m.name}, context {context.value:,} (trained at {m.seq_len:,}), "
                  f"{'causal' if causal.value else 'non-causal'}: one layer, forward, "
                  f"{units.format_flops(parts['total'])} per sequence")
            for k in COMPONENTS:
                print(f"  {LABELS[k].replace('$', ''):>22}: {parts[k] / parts['total']:6.1%}")
            for against, s in crossovers(m, causal=causal.value).items():
                print(f"  attention's s^2 terms pass the {against} at s = {s:,.0f}")
            plot_component_shares(m, powers, causal=causal.value, highlight=context.value)
            plt.show()

    for widget in (name, context, causal):
        widget.observe(update, names="value")
    update()
    display(w.VBox([w.HBox([name, causal]), context, out]))


def interactive_attention(models=("gpt2-small", "llama2-7b", "llama3-70b", "mistral-7b")):
    """The kernel-free figure of the calculator: each component's share of one layer's forward
    FLOPs (``component_shares``) against the context; dropdowns over the model and causal.
    Returns a :class:`~flopsbook.viz.interactive.Interactive`."""
    from .interactive import dropdown, line_chart

    contexts = 2 ** np.arange(8, 23)
    rows = []
    for name in models:
        for causal in (False, True):
            shares = component_shares(registry.model(name), contexts, causal=causal)
            rows += [{"context": int(s), "share": float(shares[k][i]), "component": k,
                      "model": name, "causal": "causal" if causal else "non-causal"}
                     for k in COMPONENTS for i, s in enumerate(contexts)]
    return line_chart(rows, x="context", y="share", color="component", log_x=True,
                      controls=[dropdown("model", "model"), dropdown("causal", "attention")],
                      x_title="context (tokens)", y_title="share of the layer's forward FLOPs",
                      description="<interactive figure: FLOP shares of a layer against context>")
