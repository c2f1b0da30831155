"""Figures and calculator of the chapter "Measured throughput: from one matmul to a training step".

The measurements come from ``flopsbook.measure`` (numpy on this CPU) and, where present, the
JSON that ``python -m flopsbook.measure_gpu`` writes (PyTorch on a CUDA device); the
predictions from the package's roofline (``matmul_flops``, ``matmul_bytes``, ``roofline_time``,
the registry's accelerators). Nothing here asserts on a time.
"""

from __future__ import annotations

import numpy as np

from .. import registry, units
from .matmul import device_dtype_widgets, predict_matmul

# Seed 004's A100 case study (Bahdanau 2022), as printed, in teraWFLOP/s: the seed's weight-FLOP
# convention, 6 x batch x weights per training step (2 x m x k x n for the matmul). The
# matmul is 8192 x 1600 x 6400; the MLP has d = 1600, d_ff = 6400 and a batch of 8192; GPT-2 is
# Hugging Face's, 8 layers, B = 32 x L = 256. Fractions are of the first row.
SEED_A100_LADDER = (
    ("matmul", 237.0),
    ("linear MLP step (fp16)", 230.0),
    ("fp32 weights, mixed precision", 207.6),
    ("+ ReLU + residual", 185.7),
    ("GPT-2 (Hugging Face)", 68.0),
)

# Which of the seed's rows each rung of flopsbook.measure.mlp_ladder stands for, cumulatively
# (None: no analogue). The seed's order is matmul -> linear fp16 step -> fp32 weights with mixed
# precision -> + ReLU + residual (on top of the mixed precision) -> GPT-2; ours adds the ReLU,
# the residual and a layer norm first and the master weights last, so only our last rung (master
# weights, ReLU, residual, and a layer norm the seed lacks) matches the seed's 185.7 row.
SEED_RUNG_OF = {
    "matmul": "matmul",
    "linear MLP step": "linear MLP step (fp16)",
    "+ activation": None,
    "+ residual": None,
    "+ layer norm": None,
    "fp32 weights, fp64 master": "+ ReLU + residual",
}

# Like with like: what a change costs on each ladder, as the ratio of the rate after it to the rate
# before it. Each entry: (the change, our rung before, our rung after, the seed's row before, the
# seed's row after).
SEED_STEPS = (
    ("a training step instead of one matmul", "matmul", "linear MLP step",
     "matmul", "linear MLP step (fp16)"),
    ("ReLU and residual", "linear MLP step", "+ residual",
     "fp32 weights, mixed precision", "+ ReLU + residual"),
    ("master weights", "+ layer norm", "fp32 weights, fp64 master",
     "linear MLP step (fp16)", "fp32 weights, mixed precision"),
)

PART_COLOURS = {"matmuls": "tab:blue", "attention products": "tab:cyan", "softmax": "tab:orange",
                "norms": "tab:green", "elementwise": "tab:red", "other": "0.6"}

_TORCH_DTYPES = {"float32": "fp32", "tf32": "tf32", "bfloat16": "bf16", "float16": "fp16"}


def seed_fractions() -> dict[str, float]:
    """The seed's A100 rates as fractions of its matmul's 237 teraWFLOP/s, by its row name."""
    top = SEED_A100_LADDER[0][1]
    return {name: rate / top for name, rate in SEED_A100_LADDER}


def ladder_table(rungs, large_rate: float) -> str:
    """A Markdown table of a measured ladder (``mlp_ladder``'s rungs) beside the seed's A100.

    Columns: the rung, its fastest time, its median time and spread, its best weight-FLOP/s
    (weight FLOPs over the fastest run), that as a fraction of its own matmul rung's best rate and
    of ``large_rate`` (the large-matmul rate measured on the same machine), and the seed's row
    it stands for (``SEED_RUNG_OF``) with that row's fraction of 237.
    """
    seed = seed_fractions()
    top = rungs[0].best_rate
    rows = ["| rung | fastest time | median (spread) | best weight-FLOP/s | of its matmul "
            "| of the large matmul | seed's A100 row | seed's fraction of 237 |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rungs:
        s = SEED_RUNG_OF.get(r.name)
        rows.append(
            f"| {r.name} | {units.format_duration(r.timing.low)} "
            f"| {units.format_duration(r.timing.median)} ({100 * r.timing.spread:.0f}%) "
            f"| {units.format_flops(r.best_rate, per_second=True)} | {r.best_rate / top:.0%} "
            f"| {r.best_rate / large_rate:.0%} | {s or '—'} | "
            f"{'—' if s is None else f'{seed[s]:.0%}'} |")
    rows.append(f"| GPT-2 / the reference transformer | see below | | | | | GPT-2 (Hugging Face) | "
                f"{seed['GPT-2 (Hugging Face)']:.0%} |")
    return "\n".join(rows)


def seed_step_ratios(rungs) -> list[tuple[str, float, float]]:
    """For each change of ``SEED_STEPS``: (the change, our ratio of best rates after/before, the
    seed's ratio of its printed rates after/before)."""
    ours = {r.name: r.best_rate for r in rungs}
    seed = dict(SEED_A100_LADDER)
    return [(what, ours[a] / ours[b], seed[sa] / seed[sb]) for what, b, a, sb, sa in SEED_STEPS]


def knee_figure(points, *, seed_shapes=None, ax=None):
    """Measured matmul rate against the batch dimension ``m`` (``matmul_throughput`` points of
    one (k, n)), log x axis: each point's fastest run (``best_rate``), an error bar down to its
    slowest, and its median as a cross. ``seed_shapes`` is an
    optional list of (label, MatmulPoint) drawn as labelled markers. Returns the figure."""
    import matplotlib.pyplot as plt

    from . import plain_log_ticks

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots()
    m = np.array([p.m for p in points])
    best = np.array([p.best_rate for p in points]) / 1e9
    median = np.array([p.rate for p in points]) / 1e9
    slowest = np.array([p.flops / p.timing.high for p in points]) / 1e9
    ax.errorbar(m, best, yerr=[best - slowest, 0 * best], fmt="o-", capsize=3,
                label=f"(m x {points[0].k}) @ ({points[0].k} x {points[0].n}), {points[0].dtype}: "
                      "fastest run")
    ax.plot(m, median, "x", color="0.4", label="median run")
    for label, p in seed_shapes or []:
        ax.plot([p.m], [p.best_rate / 1e9], "s", ms=7, label=label)
    ax.set_xscale("log", base=2)
    plain_log_ticks(ax, "x")
    ax.set_xlabel("batch rows m")
    ax.set_ylabel("achieved GFLOP/s (fastest run; bars down to the slowest)")
    ax.set_ylim(bottom=0)
    ax.set_title("Matmul throughput against the batch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def ladder_figure(series: dict, labels, *, ax=None, title="The ladder: fraction of the matmul rate",
                  xlabel="weight-FLOP/s as a fraction of the ladder's own matmul rate"):
    """Grouped horizontal bars: for each rung in ``labels``, one bar per entry of ``series``
    (a dict name -> list of fractions, None where a series has no such rung). Returns the
    figure."""
    import matplotlib.pyplot as plt

    labels = list(labels)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.4, 0.5 + 0.55 * len(labels)))
    height = 0.8 / max(len(series), 1)
    y = np.arange(len(labels))
    for j, (name, values) in enumerate(series.items()):
        vals = np.array([np.nan if v is None else v for v in values], dtype=float)
        ax.barh(y + (j - (len(series) - 1) / 2) * height, vals, height, label=name)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="0.3", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def roofline_figure(ops, ceiling: float, bandwidth: float, *, ax=None,
                    title="The elementwise operations on this machine's roofline"):
    """This machine's roofline, ``min(ceiling, intensity * bandwidth)``, with each operation of
    ``ops`` (a list of (name, flops, bytes)) placed at its arithmetic intensity on the line
    (its best possible rate). ``ceiling`` is the large-matmul rate measured here (the attained
    compute ceiling), ``bandwidth`` the triad's. Returns the figure."""
    import matplotlib.pyplot as plt

    from . import plain_log_ticks

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots()
    x = np.logspace(-3, 4, 200)
    ax.loglog(x, np.minimum(ceiling, x * bandwidth) / 1e9, color="0.2", lw=1.5,
              label="roofline (measured ceiling and triad)")
    ax.axvline(ceiling / bandwidth, color="0.5", ls=":", lw=1)
    for name, f, b in ops:
        i = f / b
        ax.plot([i], [min(ceiling, i * bandwidth) / 1e9], "o", label=f"{name} ({i:.2g} FLOP/B)")
    ax.set_xlabel("arithmetic intensity, FLOPs per byte")
    ax.set_ylabel("best possible GFLOP/s")
    plain_log_ticks(ax)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def added_time_figure(names, predicted, measured, *, within_noise=None, ax=None):
    """Grouped bars, milliseconds: the time each rung adds to the one before, predicted from its
    bytes over the triad bandwidth and measured (difference of the fastest runs, which can be
    negative where the noise exceeds the effect). ``within_noise`` (booleans, one per rung)
    draws those measured bars hatched and pale: their rungs' ranges of runs overlap. The title
    states no verdict. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots()
    x = np.arange(len(names))
    noise = list(within_noise) if within_noise is not None else [False] * len(names)
    ax.bar(x - 0.2, np.asarray(predicted) * 1e3, 0.4, label="predicted: added bytes / triad bandwidth")
    bars = ax.bar(x + 0.2, np.asarray(measured) * 1e3, 0.4,
                  label="measured: difference of the fastest runs")
    for bar, n in zip(bars, noise):
        if n:
            bar.set_alpha(0.35)
            bar.set_hatch("//")
    if any(noise):
        ax.bar([np.nan], [0], color="C1", alpha=0.35, hatch="//",
               label="measured, within the noise (ranges of runs overlap)")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(x, names, fontsize=8, rotation=15)
    ax.set_ylabel("added time, ms")
    ax.set_title("What each rung adds: predicted from its bytes, and measured", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def breakdown_figure(breakdown, *, ax=None):
    """Two stacked horizontal bars, one of a training step's time by part and one of its FLOPs by
    the same parts (a ``measure.step_breakdown`` result). Returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.4, 2.6))
    rows = {"time": breakdown.fractions(), "FLOPs": breakdown.flop_fractions()}
    for y, (label, fr) in enumerate(rows.items()):
        left = 0.0
        for part, colour in PART_COLOURS.items():
            v = fr.get(part, 0.0)
            ax.barh(y, v, left=left, color=colour, label=part if y == 0 else None)
            if v > 0.06:
                ax.text(left + v / 2, y, f"{v:.0%}", ha="center", va="center", fontsize=8,
                        color="white")
            left += v
    ax.set_yticks([0, 1], list(rows))
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the training step")
    ax.set_title("Where the reference transformer's step goes: time versus FLOPs", fontsize=10)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    return fig


def gpu_fractions(report: dict, dtype: str = "bf16") -> dict[str, float]:
    """A ``measure_gpu`` report's ladder as fractions of its matmul rung, by the CPU ladder's
    rung names (``measure.LADDER_RUNGS``).

    The rungs of ``dtype`` with 16-bit weights give their own names; the "+ layer norm" rung
    with fp32 master weights stands for the CPU's "fp32 weights, fp64 master". Uses each rung's
    ``fraction_of_matmul``."""
    out = {}
    for r in report.get("ladder", []):
        if r.get("dtype") != dtype or r.get("fraction_of_matmul") is None:
            continue
        if not r.get("master"):
            out[r["name"]] = r["fraction_of_matmul"]
        elif r["name"] == "+ layer norm":
            out["fp32 weights, fp64 master"] = r["fraction_of_matmul"]
    return out


def throughput_report(m, k, n, *, dtype="float32", device="h100-sxm", device_dtype="bf16",
                      measure_here=True, repeats=3) -> str:
    """The calculator's text: an (m x k) @ (k x n) product measured here with numpy (``dtype``
    float32 or float64) and predicted by the roofline on ``device`` in ``device_dtype``."""
    lines = []
    if measure_here:
        from .. import measure

        p = measure.matmul_throughput([(m, k, n)], dtype=dtype, repeats=repeats)[0]
        lines.append(f"here (numpy {dtype}, {measure.blas_threads()} BLAS thread(s)): "
                     f"{p.timing}, {units.format_flops(p.rate, per_second=True)}")
    pred = predict_matmul(m, k, n, device, device_dtype)
    hw = registry.hardware(device)
    lines += [
        f"FLOPs: {units.format_flops(pred['flops'])}   bytes (at least): "
        f"{units.format_bytes(pred['bytes'])}   intensity: {pred['flops'] / pred['bytes']:,.1f} FLOP/B",
        f"{hw.name} {device_dtype}: roofline {units.format_duration(pred['time'])}, "
        f"{units.format_flops(pred['rate'], per_second=True)} = {pred['fraction']:.0%} of peak, "
        f"{pred['bound']}-bound (a lower bound on time: real kernels reach less)",
    ]
    return "\n".join(lines)


def throughput_figure(k=1600, n=6400, *, devices=("a100-80gb", "h100-sxm", "tpu-v5p"),
                      measured=None, ax=None):
    """The calculator's static figure: the roofline's best fraction of the 16-bit peak of an
    (m x k) @ (k x n) product against m on ``devices``, and, if given, ``measured`` (a list of
    ``matmul_throughput`` points) as fractions of their largest rate. Returns the figure."""
    import matplotlib.pyplot as plt

    from . import plain_log_ticks

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots()
    m = 2.0 ** np.arange(0, 15)
    for name in devices:
        hw = registry.hardware(name)
        dtype = "bf16" if "bf16" in hw.peak_flops else "fp16"
        frac = [predict_matmul(int(x), k, n, name, dtype)["fraction"] for x in m]
        ax.plot(m, frac, label=f"{name} {dtype}, roofline (x {k} x {n})")
    if measured:
        top = max(p.best_rate for p in measured)
        ax.plot([p.m for p in measured], [p.best_rate / top for p in measured], "ko--",
                label=f"this CPU, measured (x {measured[0].k} x {measured[0].n}), of its best")
    ax.set_xscale("log", base=2)
    plain_log_ticks(ax, "x")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("batch rows m")
    ax.set_ylabel("fraction of peak")
    ax.set_title("Small batches cannot fill a fast device", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def throughput_calculator():
    """Widgets for :func:`throughput_report`: m, k, n, numpy's dtype, the accelerator and its
    dtype; a button measures (so that typing does not start a timing)."""
    import ipywidgets as w
    from IPython.display import display

    size = dict(min=1, max=16384, step=1)
    m = w.BoundedIntText(description="m", value=128, **size)
    k = w.BoundedIntText(description="k", value=400, **size)
    n = w.BoundedIntText(description="n", value=1600, **size)
    here = w.Dropdown(options=["float32", "float64"], value="float32", description="numpy")
    hw, dtype = device_dtype_widgets("h100-sxm")
    go = w.Button(description="measure and predict")
    out = w.Output()

    def update(_=None):
        out.clear_output()
        with out:
            if m.value * k.value * n.value > 2**33:
                print("too large to measure quickly here: predicting only")
                print(throughput_report(m.value, k.value, n.value, dtype=here.value,
                                        device=hw.value, device_dtype=dtype.value,
                                        measure_here=False))
                return
            try:
                print(throughput_report(m.value, k.value, n.value, dtype=here.value,
                                        device=hw.value, device_dtype=dtype.value))
            except ValueError as error:
                print(f"cannot compute: {error}")

    go.on_click(update)
    update()
    display(w.VBox([w.HBox([m, k, n]), w.HBox([here, hw, dtype]), go, out]))


def interactive_throughput(devices=("v100", "a100-80gb", "h100-sxm", "tpu-v5p")):
    """The kernel-free figure of the calculator: the roofline's fraction of the 16-bit peak of an
    (m x k) @ (k x 4k) product against m (``predict_matmul``: predictions, no timing), one line
    per accelerator; a slider over log2 k. Returns a
    :class:`~flopsbook.viz.interactive.Interactive`."""
    from .interactive import line_chart, slider

    m = 2.0 ** np.arange(0, 15)
    rows = []
    for name in devices:
        dtype = "bf16" if "bf16" in registry.hardware(name).peak_flops else "fp16"
        for e in range(8, 15):
            frac = predict_matmul(m, 2.0**e, 4 * 2.0**e, name, dtype)["fraction"]
            rows += [{"m": x, "fraction": f, "device": name, "log2_k": e}
                     for x, f in zip(m, frac)]
    return line_chart(rows, x="m", y="fraction", color="device", log_x=True,
                      controls=[slider("log2_k", "log2 of k (n = 4k)")],
                      x_title="batch rows m", y_title="fraction of the 16-bit peak (roofline)",
                      description="<interactive figure: roofline fraction of peak against m>")
