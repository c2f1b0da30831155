"""Figures and calculator of the chapter "Many devices I: collectives, the alpha-beta model and
data parallelism".

The message diagrams are drawn from a simulation's message log (``flopsbook.reference.
collectives``): anything whose ``messages`` are records with ``step``, ``sender``, ``receiver``,
``n_bytes`` (and optionally ``chunk``) fields. The calculator combines the package's formulas
(``data_parallel_bytes``, ``collective_time``, ``dp_overlap_tokens``, ``training_memory``).
"""

from __future__ import annotations

import numpy as np

from .. import communication, memory, registry, spec, units
from .._validate import as_hardware

ZERO_NAMES = {0: "plain data parallelism", 1: "ZeRO-1 (optimizer states sharded)",
              2: "ZeRO-2 (+ gradients sharded)", 3: "ZeRO-3 / FSDP (+ parameters sharded)"}


def _messages(log):
    """The messages of a collective (or a plain list of them) as (step, sender, receiver,
    n_bytes, chunk) tuples."""
    msgs = getattr(log, "messages", log)
    return [(int(m.step), int(m.sender), int(m.receiver), int(m.n_bytes),
             int(getattr(m, "chunk", -1))) for m in msgs]


def draw_messages(ax, log, n_devices=None, *, title=None):
    """One space-time diagram on ``ax``: devices top to bottom, steps left to right, one arrow
    per message from (step, sender) to (step + 1, receiver), coloured by the chunk it carries
    (grey when the log names none). Drawn with one ``quiver`` call, so that a log of hundreds
    of messages draws quickly. Returns ``ax``."""
    from matplotlib import colormaps

    msgs = np.array(_messages(log), dtype=float).reshape(-1, 5)
    n = n_devices or getattr(log, "n_devices", None) or int(msgs[:, 1:3].max()) + 1
    steps = int(msgs[:, 0].max()) + 1 if len(msgs) else 0
    step, sender, receiver, chunk = msgs[:, 0], msgs[:, 1], msgs[:, 2], msgs[:, 4]
    cmap = colormaps["tab10"]
    colours = [cmap(int(c) % 10) if c >= 0 else "0.3" for c in chunk]
    # Shorten each arrow a little at both ends so that it stops short of the device dots.
    dx, dy = np.ones_like(step), receiver - sender
    length = np.hypot(dx, dy) if len(msgs) else dx
    trim = 0.12 / np.maximum(length, 1e-9)
    ax.quiver(step + dx * trim, sender + dy * trim, dx * (1 - 2 * trim), dy * (1 - 2 * trim),
              color=colours, angles="xy", scale_units="xy", scale=1, width=0.012,
              headwidth=4, headlength=5, alpha=0.9)
    grid_t, grid_d = np.meshgrid(np.arange(steps + 1), np.arange(n))
    ax.scatter(grid_t.ravel(), grid_d.ravel(), s=14, color="0.15", zorder=3)
    ax.set_xlim(-0.3, steps + 0.3)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_yticks(range(n), [f"dev {i}" for i in range(n)], fontsize=7)
    ax.set_xticks(range(steps + 1))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("step", fontsize=8)
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def messages_figure(logs, titles=None, *, ncols=3):
    """A grid of :func:`draw_messages` panels, one per collective in ``logs``. Returns the
    figure."""
    import matplotlib.pyplot as plt

    logs = list(logs)
    titles = list(titles) if titles is not None else [
        f"{getattr(c, 'kind', '')} ({getattr(c, 'algorithm', '')})" for c in logs]
    nrows = -(-len(logs) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.5 * nrows), squeeze=False)
    for ax, log, title in zip(axes.flat, logs, titles):
        draw_messages(ax, log, title=title)
    for ax in list(axes.flat)[len(logs):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def ring_tree_figure(n_devices=None, simulated=()):
    """Ring against double binary tree all-reduce over ``n_devices`` (default 2..1024): bytes
    each device sends per byte of the buffer, and the steps (latencies) paid, from the formulas;
    ``simulated`` adds (n, algorithm, bytes per buffer byte, steps) points counted by the
    simulation. Returns the figure."""
    import matplotlib.pyplot as plt

    from . import plain_log_ticks

    n = np.unique(np.round(np.geomspace(2, 1024, 60))) if n_devices is None else np.asarray(n_devices)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.4))
    for algorithm, style in (("ring", "-"), ("tree", "--")):
        ax1.plot(n, communication.collective_bytes("all-reduce", 1.0, n, algorithm=algorithm),
                 style, label=algorithm)
        ax2.plot(n, communication.collective_steps("all-reduce", n, algorithm=algorithm), style,
                 label=algorithm)
    for k, (nn, algorithm, per_byte, steps) in enumerate(simulated):
        marker = "o" if algorithm == "ring" else "s"
        ax1.scatter(nn, per_byte, marker=marker, color="black", s=16, zorder=3,
                    label="simulated (counted)" if k == 0 else None)
        ax2.scatter(nn, steps, marker=marker, color="black", s=16, zorder=3)
    ax1.set_xscale("log", base=2)
    ax1.set_ylim(0, 2.2)
    ax1.set_xlabel("devices n")
    ax1.set_ylabel("bytes sent per byte of buffer")
    ax1.set_title("bandwidth term: about the same", fontsize=9)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("devices n")
    ax2.set_ylabel("steps (latencies paid)")
    ax2.set_title("latency term: 2(n-1) against 2 floor(log2 n)", fontsize=9)
    for ax in (ax1, ax2):
        plain_log_ticks(ax, "xy" if ax is ax2 else "x")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def alpha_beta_figure(measured, *, model_hardware="h100-sxm", n_devices=8):
    """Measured times of real collectives among host CPU devices and the alpha-beta line fitted
    to them, beside the model's line for ``model_hardware``'s intra-node link.

    Args:
        measured (dict): kind -> (buffer bytes, seconds, AlphaBeta fit) as the chapter measures.
        model_hardware (str): Registry accelerator whose link gives the model's line.
        n_devices (int): Devices of the collectives.

    Returns:
        matplotlib.figure.Figure: The figure.
    """
    import matplotlib.pyplot as plt

    from . import plain_log_ticks

    hw = as_hardware(model_hardware)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    sizes_all = []
    for k, (kind, (sizes, times, fit)) in enumerate(measured.items()):
        sizes = np.asarray(sizes, float)
        sizes_all.append(sizes)
        sent = communication.collective_bytes(kind, sizes, n_devices)
        ax.scatter(sizes, np.asarray(times) * 1e6, color=f"C{k}", s=18, zorder=3,
                   label=f"{kind}, measured on CPU devices")
        grid = np.geomspace(sizes.min(), sizes.max(), 50)
        fitted = fit.alpha + communication.collective_bytes(kind, grid, n_devices) / fit.beta
        ax.plot(grid, fitted * 1e6, color=f"C{k}", lw=1,
                label=f"fit: alpha {fit.alpha * 1e6:.0f} µs, beta {units.format_rate(fit.beta)}")
        del sent
    grid = np.geomspace(min(s.min() for s in sizes_all), max(s.max() for s in sizes_all), 50)
    model = communication.collective_time("all-reduce", grid, n_devices, hw)
    ax.plot(grid, model * 1e6, "k--", lw=1,
            label=f"model: all-reduce on {hw.name} NVLink ({n_devices} devices)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_ticks(ax)
    ax.set_xlabel("buffer (bytes)")
    ax.set_ylabel("time (µs)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


# --- the calculator -------------------------------------------------------------------------

def step_communication(m, hardware, n_devices, tokens_per_device, *, zero_stage=0,
                       micro_batches=1, bytes_per_value=2, param_bytes_per_value=None,
                       hierarchical=False):
    """Bytes, seconds and exposed seconds of one optimizer step's data-parallel traffic.

    Compute at the device's 16-bit peak (a lower bound on the step): 6 N T FLOPs for T tokens
    per device. Each collective is timed by the alpha-beta model (``collective_time``, the
    whole buffer as one collective: ZeRO-3's per-layer gathers pay more latencies than this).
    What it can hide behind (the best case): the all-reduce of stage 0 and the reduce-scatter
    of stage 1 come after the last micro-batch's backward (4 N T/k FLOPs); stage 2 reduce-
    scatters during every backward (4 N T); the parameter all-gather of stages 1 and 2 can run
    during the next step's first forward (2 N T/k); stage 3 gathers during every forward
    (2 N T) and gathers and reduce-scatters during every backward (4 N T). With k = 1 every
    stage is fully hidden from ``dp_overlap_tokens`` tokens per device on.

    Returns:
        dict: ``bytes`` (DataParallelBytes), ``t_compute``, ``t_grad``, ``t_param``,
        ``t_comm``, ``exposed`` (seconds) and ``exposed_fraction`` (of the step).
    """
    hw = as_hardware(hardware)
    if isinstance(m, str):
        m = registry.model(m)
    psi = float(m) if isinstance(m, (int, float)) else float(spec.param_count(m))
    k = micro_batches
    pb = bytes_per_value if param_bytes_per_value is None else param_bytes_per_value
    traffic = communication.data_parallel_bytes(psi, n_devices, zero_stage=zero_stage,
                                                bytes_per_value=bytes_per_value,
                                                param_bytes_per_value=pb, micro_batches=k)
    padded = np.ceil(psi / n_devices) * n_devices

    def t(kind, values, bpv):
        if n_devices == 1:
            return 0.0
        return float(communication.collective_time(kind, values * bpv, n_devices, hw,
                                                   hierarchical=hierarchical))

    flops_per_token = 6 * psi
    t_compute = flops_per_token * np.asarray(tokens_per_device, float) / hw.peak_16bit
    back, fwd = 4 / 6 * t_compute, 2 / 6 * t_compute
    if zero_stage == 0:
        t_grad, t_param = t("all-reduce", padded, bytes_per_value), 0.0
        hide_grad, hide_param = back / k, 0.0
    elif zero_stage == 1:
        t_grad, t_param = t("reduce-scatter", padded, bytes_per_value), t("all-gather", padded, pb)
        hide_grad, hide_param = back / k, fwd / k
    elif zero_stage == 2:
        t_grad = k * t("reduce-scatter", padded, bytes_per_value)
        t_param = t("all-gather", padded, pb)
        hide_grad, hide_param = back, fwd / k
    else:
        t_grad = k * t("reduce-scatter", padded, bytes_per_value)
        t_param = 2 * k * t("all-gather", padded, pb)
        # forward: one gather against 2NT; backward: a gather and the reduce-scatter against 4NT
        exposed = np.maximum(0.0, t_param / 2 - fwd) + np.maximum(0.0, t_param / 2 + t_grad - back)
    if zero_stage < 3:
        exposed = np.maximum(0.0, t_grad - hide_grad) + np.maximum(0.0, t_param - hide_param)
    step = t_compute + exposed
    fraction = np.divide(exposed, step, out=np.zeros_like(step), where=step > 0)
    return dict(bytes=traffic, t_compute=t_compute, t_grad=t_grad, t_param=t_param,
                t_comm=t_grad + t_param, exposed=exposed, exposed_fraction=fraction)


def collectives_report(model="llama2-7b", hardware="h100-sxm", n_devices=64,
                       tokens_per_device=4096, zero_stage=0, micro_batches=1,
                       grad_bytes=2, hierarchical=True):
    """Per device and optimizer step of data parallelism: the model states' memory (ZeRO),
    the bytes sent, the alpha-beta time of the collectives, the compute time at peak, and the
    part of the traffic that cannot hide behind compute. Text, one fact a line."""
    hw = as_hardware(hardware)
    m = registry.model(model) if isinstance(model, str) else model
    psi = spec.param_count(m)
    p = hw.devices_per_node or n_devices
    hier = bool(hierarchical and n_devices > p and n_devices % p == 0)
    r = step_communication(m, hw, n_devices, tokens_per_device, zero_stage=zero_stage,
                           micro_batches=micro_batches, bytes_per_value=grad_bytes,
                           param_bytes_per_value=2, hierarchical=hier)
    states = memory.training_memory(psi, zero_stage=zero_stage, n_devices=n_devices,
                                    grad_dtype="fp32" if grad_bytes == 4 else None).total
    where = "inside one node" if n_devices <= p else (
        "across nodes, hierarchical (in-node reduce-scatter, across-node ring, in-node "
        "all-gather)" if hier else "across nodes, one flat ring (a single channel) at the network's per-GPU share")
    link = "intra" if n_devices <= p else ("node" if hier else "inter")
    need = communication.dp_overlap_tokens(hw, link=link, bytes_per_value=grad_bytes,
                                           n_devices=n_devices)
    b = r["bytes"]
    lines = [
        f"{m.name} ({units.format_count(psi)} parameters) on {n_devices:,} x {hw.name}, "
        f"{ZERO_NAMES[zero_stage]}, {micro_batches} micro-batch(es), "
        f"{tokens_per_device:,} tokens per device per step",
        f"model states per device (mixed precision, Adam): "
        f"{units.format_bytes(states, binary=True)} of "
        f"{units.format_bytes(hw.memory_bytes, binary=True)} (activations not counted)",
        f"sent per device per step (flat-ring count): {units.format_bytes(b.total)} (gradients "
        f"{units.format_bytes(b.gradients)} at {grad_bytes:g} B/value, parameters "
        f"{units.format_bytes(b.parameters)} at 2 B/value)",
        f"collectives {where}: {units.format_duration(r['t_comm'])} by the alpha-beta model",
        f"compute at the 16-bit peak (6N per token): {units.format_duration(float(r['t_compute']))}",
        f"exposed communication (best-case overlap): "
        f"{units.format_duration(float(r['exposed']))}, {float(r['exposed_fraction']):.1%} of the step",
        f"tokens per device to hide it with one micro-batch (dp_overlap_tokens, link "
        f"'{link}'): {need:,.0f}",
    ]
    return "\n".join(lines)


def collectives_figure(model="llama2-7b", hardwares=("a100-80gb", "h100-sxm"),
                       n_devices=(8, 64)):
    """The calculator's static face: the exposed fraction of a data-parallel step against the
    tokens per device, for each accelerator in ``hardwares`` and each device count (inside one
    node, and across nodes hierarchically), stage 0, 16-bit gradients. Returns the figure."""
    import matplotlib.pyplot as plt

    from . import plain_log_ticks

    m = registry.model(model)
    tokens = np.geomspace(64, 65536, 40)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, name in enumerate(hardwares):
        hw = as_hardware(name)
        for j, n in enumerate(n_devices):
            hier = n > (hw.devices_per_node or n)
            frac = step_communication(m, hw, n, tokens, hierarchical=hier)["exposed_fraction"]
            ax.plot(tokens, frac, ["-", "--"][j % 2], color=f"C{i}",
                    label=f"{hw.name}, {n} devices" + (" (hierarchical)" if hier else ""))
    ax.set_xscale("log", base=2)
    plain_log_ticks(ax, "x")
    ax.set_xlabel("tokens per device per optimizer step")
    ax.set_ylabel("exposed fraction of the step")
    ax.set_title(f"{m.name}: the gradient all-reduce hidden behind the backward", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def collectives_calculator():
    """Widgets for :func:`collectives_report`: model, accelerator, devices, tokens per device,
    ZeRO stage, micro-batches, gradient bytes, hierarchical."""
    import ipywidgets as w
    from IPython.display import display

    style = {"description_width": "initial"}
    linked = [h for h in registry.hardwares()
              if registry.hardware(h).intra_node_bandwidth is not None]
    name = w.Dropdown(options=registry.models(), value="llama2-7b", description="model")
    hw = w.Dropdown(options=linked, value="h100-sxm", description="accelerator", style=style)
    n = w.BoundedIntText(value=64, min=1, max=10**6, description="devices")
    tokens = w.BoundedIntText(value=4096, min=1, max=10**8, description="tokens/device",
                              style=style)
    stage = w.Dropdown(options=[(v, k) for k, v in ZERO_NAMES.items()], value=0,
                       description="ZeRO")
    k = w.BoundedIntText(value=1, min=1, max=4096, description="micro-batches", style=style)
    grad = w.Dropdown(options=[("bf16 gradients", 2), ("fp32 gradients", 4)], value=2,
                      description="gradients")
    hier = w.Checkbox(value=True, description="hierarchical across nodes")
    out = w.Output()

    def update(_=None):
        out.clear_output()
        with out:
            try:
                print(collectives_report(name.value, hw.value, n.value, tokens.value,
                                         stage.value, k.value, grad.value, hier.value))
            except ValueError as error:
                print(f"cannot compute: {error}")

    widgets = (name, hw, n, tokens, stage, k, grad, hier)
    for widget in widgets:
        widget.observe(update, names="value")
    update()
    display(w.VBox([w.HBox([name, hw]), w.HBox([n, tokens]), w.HBox([stage, k]),
                    w.HBox([grad, hier]), out]))


def interactive_collectives(model="llama2-7b", hardwares=("a100-80gb", "h100-sxm")):
    """The kernel-free figure of the calculator: the exposed fraction of a data-parallel step
    (``step_communication``; hierarchical across nodes) against the tokens per device, one line
    per accelerator; a slider over log2 of the devices and a dropdown over the ZeRO stage.
    Returns a :class:`~flopsbook.viz.interactive.Interactive`."""
    from .interactive import dropdown, line_chart, slider

    m = registry.model(model)
    tokens = 2.0 ** np.arange(6, 17)
    rows = []
    for name in hardwares:
        hw = as_hardware(name)
        for e in range(1, 10):
            hier = 2**e > (hw.devices_per_node or 2**e)
            for stage in range(4):
                frac = step_communication(m, hw, 2**e, tokens, zero_stage=stage,
                                          hierarchical=hier)["exposed_fraction"]
                rows += [{"tokens": t, "exposed": f, "device": name, "log2_devices": e,
                          "zero": f"stage {stage}"}
                         for t, f in zip(tokens, np.broadcast_to(frac, tokens.shape))]
    return line_chart(rows, x="tokens", y="exposed", color="device", log_x=True,
                      controls=[slider("log2_devices", "log2 of the devices"),
                                dropdown("zero", "ZeRO")],
                      x_title="tokens per device per optimizer step",
                      y_title="exposed fraction of the step",
                      description=f"<interactive figure: exposed communication of {model}>")
