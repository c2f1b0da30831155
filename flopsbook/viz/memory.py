"""Calculator of the chapter "Memory budgets for training": will it fit?"""

from __future__ import annotations

from .. import memory, registry, units
from .._validate import as_hardware

# Stacked-bar segments, bottom to top, with their colours.
SEGMENTS = {
    "weights": "#4c72b0", "gathered_weights": "#8fa8d6", "master_weights": "#64b5cd", "gradients": "#dd8452",
    "optimizer_states": "#55a868", "activations": "#c44e52",
    "recompute_working_set": "#e8a3a5", "logits": "#8172b3", "buffers": "#937860",
}


def plot_budget(ax, budgets, *, title=None):
    """Stacked bars (GB = 1e9 bytes) of ``budgets``, a list of (label, MemoryBudget, hardware)
    triples, each against its device's memory (a black tick)."""
    labels = [label for label, _, _ in budgets]
    legend = set()  # each segment named once in the legend
    tops = []
    for i, (_, bud, hw) in enumerate(budgets):
        device = as_hardware(hw).memory_bytes
        bottom = 0.0
        for name, colour in SEGMENTS.items():
            value = float(getattr(bud, name)) / 1e9
            if value > 0:
                ax.bar(i, value, bottom=bottom, color=colour, width=0.6,
                       label=None if name in legend else name.replace("_", " "))
                legend.add(name)
                bottom += value
        ax.hlines(device / 1e9, i - 0.4, i + 0.4, color="black", lw=2,
                  label="device memory" if i == 0 else None)
        ax.annotate("fits" if bud.fits(hw) else "does not fit", (i, bottom),
                    ha="center", va="bottom", fontsize=7)
        tops.append(max(float(bud.total), device))
    ax.set_ylim(0, 1.15 * max(tops) / 1e9)          # room for the annotations under the title
    ax.set_xticks(range(len(budgets)), labels, fontsize=8)
    ax.set_ylabel("GB per device (1 GB = 1e9 bytes)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def memory_calculator():
    """Model, batch, sequence length, precision, optimizer, recomputation, dropout, ZeRO stage,
    devices, accelerator -> a stacked bar of the per-device budget and the largest batch that
    fits."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    style = {"description_width": "initial"}
    name = w.Dropdown(options=registry.models(), value="llama2-7b", description="model")
    batch = w.BoundedIntText(value=1, min=1, max=10**5, description="micro-batch", style=style)
    seq = w.BoundedIntText(value=4096, min=1, max=10**7, description="seq. length", style=style)
    precision = w.Dropdown(options=[("mixed, 16-bit grads (16 B/param)", ("mixed", None)),
                                    ("mixed, fp32 grads (18 B/param)", ("mixed", "fp32")),
                                    ("fp32", ("fp32", None)), ("pure bf16", ("bf16", None))],
                           description="precision")
    optimizer = w.Dropdown(options=list(memory.OPTIMIZER_STATES), value="adamw",
                           description="optimizer")
    recompute = w.Dropdown(options=list(memory.RECOMPUTE), value="full",
                           description="recompute")
    flash = w.Checkbox(value=True, description="FlashAttention")
    dropout = w.Checkbox(value=False, description="dropout (Llama: off)")
    stage = w.Dropdown(options=list(memory.ZERO_STAGES), value=3, description="ZeRO stage")
    devices = w.BoundedIntText(value=8, min=1, max=10**6, description="devices")
    hw = w.Dropdown(options=registry.hardwares(), value="a100-80gb", description="device")
    out = w.Output()

    def update(_=None):
        out.clear_output(wait=True)
        with out:
            m = registry.model(name.value)
            prec, grads = precision.value
            kw = dict(precision=prec, grad_dtype=grads, optimizer=optimizer.value,
                      recompute=recompute.value, flash_attention=flash.value,
                      dropout=dropout.value, zero_stage=stage.value, n_devices=devices.value)
            bud = memory.memory_budget(m, batch.value, seq.value, **kw)
            largest = memory.largest_micro_batch(m, seq.value, hw.value, **kw)
            device = registry.hardware(hw.value).memory_bytes
            fig, ax = plt.subplots(figsize=(5.5, 3.4))
            plot_budget(ax, [(f"{m.name}\nb={batch.value}, s={seq.value}", bud, hw.value)],
                        title=f"per device: {units.format_bytes(bud.total)} of "
                              f"{units.format_bytes(device)}")
            plt.show()
            for k, v in bud.as_dict().items():
                print(f"{k.replace('_', ' '):>24}: {units.format_bytes(v)}")
            print(f"largest micro-batch that fits: {largest}" if largest else
                  "does not fit: not even one sequence (add devices, a higher ZeRO stage or "
                  "recomputation)")

    for widget in (name, batch, seq, precision, optimizer, recompute, flash, dropout, stage,
                   devices, hw):
        widget.observe(update, names="value")
    update()
    display(w.VBox([w.HBox([name, hw, devices]), w.HBox([batch, seq, precision]),
                    w.HBox([optimizer, recompute, flash, dropout, stage]), out]))


def interactive_memory(models=("gpt2-xl", "llama2-7b", "llama2-13b"), seq_len=2048, n_devices=8):
    """The kernel-free figure of the calculator: GB per device (``memory_budget``, mixed-precision
    Adam, ``n_devices`` data-parallel devices) against the micro-batch, one line per
    recomputation; a dropdown over the model and a slider over the ZeRO stage. Returns a
    :class:`~flopsbook.viz.interactive.Interactive`."""
    import numpy as np

    from .interactive import dropdown, line_chart, slider

    batch = np.arange(1, 17)
    rows = []
    for name in models:
        m = registry.model(name)
        for stage in range(4):
            for recompute in ("none", "selective", "full"):
                total = memory.memory_budget(m, batch, seq_len, zero_stage=stage,
                                             n_devices=n_devices, recompute=recompute).total
                rows += [{"batch": int(b), "gb": t / 1e9, "recompute": recompute,
                          "model": name, "zero": stage} for b, t in zip(batch, total)]
    return line_chart(rows, x="batch", y="gb", color="recompute", log_y=True,
                      controls=[dropdown("model", "model"), slider("zero", "ZeRO stage")],
                      x_title=f"micro-batch (sequences of {seq_len:,} tokens)",
                      y_title=f"GB per device ({n_devices} devices)",
                      description="<interactive figure: training memory per device>")
