"""Figure and calculator of the chapter "Beyond the dense transformer" (mixtures of experts,
multi-head latent attention, sliding windows)."""

import dataclasses

from .. import flops, inference, registry, spec, units

# The registry's models that the chapter's figure compares: dense, MoE, MLA and windowed ones.
FIGURE_MODELS = ("mistral-7b", "mixtral-8x7b", "mixtral-8x22b", "qwen3-30b-a3b", "gpt-oss-20b",
                 "gpt-oss-120b", "deepseek-v2-lite", "deepseek-v3", "gemma3-27b",
                 "llama3.1-405b")


def all_global(m):
    """``m`` with every layer's attention global (the window and ``global_every`` removed)."""
    return dataclasses.replace(m, window=None, global_every=None, name=f"{m.name}, all global")


def architectures_figure(names=FIGURE_MODELS, context=32768):
    """Two panels for the registry models ``names``: total and active parameters (log scale),
    and the 16-bit KV cache of one sequence of ``context`` tokens with the model's own
    attention against the same model with every layer global. Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    from . import plain_log_ticks

    models = [registry.model(n) for n in names]
    y = np.arange(len(models))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 4.2), sharey=True)
    total = np.array([spec.param_count(m) for m in models]) / 1e9
    active = np.array([spec.param_count(m, active=True) for m in models]) / 1e9
    ax1.barh(y + 0.2, total, 0.4, label="total (in memory)", color="C0")
    ax1.barh(y - 0.2, active, 0.4, label="active (per token)", color="C1")
    ax1.set_xscale("log")
    plain_log_ticks(ax1, "x")
    ax1.set_xlabel("parameters (billions), both embedding tables in")
    ax1.set_yticks(y, [m.name for m in models])
    ax1.invert_yaxis()
    ax1.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False)
    own = np.array([inference.kv_cache_bytes(m, 1, context) for m in models]) / 2**30
    glob = np.array([inference.kv_cache_bytes(all_global(m), 1, context) for m in models]) / 2**30
    ax2.barh(y + 0.2, glob, 0.4, label="every layer global", color="C7")
    ax2.barh(y - 0.2, own, 0.4, label="as built (MLA, windows)", color="C2")
    ax2.set_xscale("log")
    plain_log_ticks(ax2, "x")
    ax2.set_xlabel(f"KV cache of one {context:,}-token sequence (GiB, 16-bit)")
    ax2.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def architecture_report(model: str = "mixtral-8x7b", batch: int = 1, context: int = 32768,
                        bytes_per_value: float = 2.0) -> str:
    """Parameters (total, active), the experts a decode step reads at ``batch`` (uniform
    routing), the KV cache of one sequence of ``context`` tokens and the attention FLOPs per
    token at that context (forward, causal), each beside the same model with every layer
    global."""
    m = registry.model(model)
    total, active = spec.param_count(m), spec.param_count(m, active=True)
    lines = [f"{m.name}: {units.format_count(total)} parameters, "
             f"{units.format_count(active)} active per token (both embedding tables in), "
             f"{active / total:.1%} of them"]
    if m.is_moe:
        hit = inference.expected_experts(m.n_experts, m.top_k, batch)
        lines.append(f"mixture of experts: {m.top_k} of {m.n_experts} routed experts per token "
                     f"in {m.n_moe_layers} of {m.n_layers} layers (+ {m.n_shared_experts} "
                     f"shared); a decode step of batch {batch:,} reads {hit:,.1f} of "
                     f"{m.n_experts} experts per layer on average (uniform routing)")
    else:
        lines.append("dense FFN: every token uses every parameter")
    glob = all_global(m)
    own_kv = inference.kv_cache_bytes(m, 1, context, bytes_per_value)
    glob_kv = inference.kv_cache_bytes(glob, 1, context, bytes_per_value)
    kind = ("multi-head latent attention" if m.is_mla else
            f"{m.n_kv_heads} key/value heads of {m.n_heads} query heads")
    if m.window is not None:
        kind += (f", {m.n_local_layers} of {m.n_layers} layers local ({m.window:,}-token "
                 "window)")
    lines.append(f"attention: {kind}")
    tokens = f"{context:,} token" + ("s" if context != 1 else "")
    lines.append(f"KV cache, one sequence of {tokens} at {bytes_per_value:g} bytes "
                 f"per value: {units.format_bytes(own_kv)} "
                 f"({units.format_bytes(glob_kv)} with every layer global)")

    def attention_per_token(x):
        lf = flops.layer_flops(x, context, causal=True)
        return x.n_layers * (lf["scores"] + lf["weighted_values"]) / context

    lines.append(f"attention products per token, causal, forward: "
                 f"{units.format_flops(attention_per_token(m))} "
                 f"({units.format_flops(attention_per_token(glob))} with every layer global); "
                 f"the whole forward: "
                 f"{units.format_flops(flops.flops_per_token(m, context, training=False, causal=True))}"
                 " per token")
    return "\n".join(lines)


def architectures_calculator():
    """Widgets for ``architecture_report``."""
    import ipywidgets as w
    from IPython.display import display

    name = w.Dropdown(options=registry.models(), value="mixtral-8x7b", description="model")
    batch = w.BoundedIntText(value=1, min=1, max=10**6, description="batch")
    context = w.BoundedIntText(value=32768, min=1, max=10**7, description="context")
    value = w.Dropdown(options=[("16-bit", 2.0), ("8-bit", 1.0), ("4-bit", 0.5)], value=2.0,
                       description="KV values")
    out = w.Output()

    def update(_=None):
        out.clear_output()
        with out:
            try:
                print(architecture_report(name.value, batch.value, context.value, value.value))
            except ValueError as error:
                print(f"cannot compute: {error}")

    for widget in (name, batch, context, value):
        widget.observe(update, names="value")
    update()
    display(w.VBox([w.HBox([name, value]), w.HBox([batch, context]), out]))


def interactive_architectures(names=FIGURE_MODELS):
    """The kernel-free figure of the calculator: the 16-bit KV cache (``kv_cache_bytes``)
    against the context, one line per model; a dropdown between the attention as built and
    every layer global, a slider over log2 of the batch. Returns a
    :class:`~flopsbook.viz.interactive.Interactive`."""
    import numpy as np

    from .interactive import dropdown, line_chart, slider

    contexts = 2 ** np.arange(10, 18)
    rows = []
    for name in names:
        m = registry.model(name)
        for label, spec_ in (("as built", m), ("every layer global", all_global(m))):
            for e in range(0, 7, 2):
                gib = inference.kv_cache_bytes(spec_, 2**e, contexts) / 2**30
                rows += [{"context": int(c), "gib": g, "model": name, "attention": label,
                          "log2_batch": e} for c, g in zip(contexts, gib)]
    return line_chart(rows, x="context", y="gib", color="model", log_x=True, log_y=True,
                      controls=[dropdown("attention", "attention"),
                                slider("log2_batch", "log2 of the batch")],
                      x_title="context (tokens)", y_title="KV cache (GiB, 16-bit)",
                      description="<interactive figure: KV cache against context>")
