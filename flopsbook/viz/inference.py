"""Calculator of the chapter "Inference" (KV cache, prefill versus decode, the decode roofline)."""

import math

from .. import inference, registry, spec, units

# Bytes per stored value for the precisions the calculator offers (quantisation scales left out).
PRECISIONS = {"fp32": 4.0, "bf16/fp16": 2.0, "int8/fp8": 1.0, "int4": 0.5}


def _experts_read(m, batch) -> str:
    if not m.is_moe:
        return ""
    hit = float(inference.expected_experts(m.n_experts, m.top_k, batch))
    return f" (about {hit:,.1f} of {m.n_experts} experts per layer, uniform routing)"


def inference_report(model: str = "llama3-8b", device: str = "h100-sxm", batch: int = 1,
                     context: int = 2048, weights: str = "bf16/fp16",
                     cache: str = "bf16/fp16", n_devices: int = 1) -> str:
    """Roofline of one decode step on ``n_devices`` (tensor-parallel serving): latency per
    token, tokens/s, KV memory, the bound; or, when the weights and caches do not fit, says so
    and how many devices would hold them, instead of a throughput."""
    m, hw = registry.model(model), registry.hardware(device)
    if weights not in PRECISIONS or cache not in PRECISIONS:
        raise ValueError(f"weights and cache must be one of {', '.join(PRECISIONS)}, "
                         f"got {weights!r} and {cache!r}")
    w, kv = PRECISIONS[weights], PRECISIONS[cache]
    kw = dict(bytes_per_param=w, kv_bytes_per_value=kv, n_devices=n_devices)
    step = inference.decode_step_time(m, hw, batch, context, **kw)
    cache_bytes = inference.kv_cache_bytes(m, batch, context, kv)
    # Every expert of a mixture must be held, though a step reads only those its tokens hit.
    weight_bytes = spec.param_count(m) * w
    need, have = weight_bytes + cache_bytes, n_devices * hw.memory_bytes
    head = [f"{m.name} on {n_devices:,} x {hw.name}: batch {batch:,}, context {context:,} tokens",
            f"weights {units.format_bytes(weight_bytes)} + KV cache "
            f"{units.format_bytes(cache_bytes)} ({units.format_bytes(cache_bytes / batch)} per "
            f"sequence) = {units.format_bytes(need)} of {units.format_bytes(have)}"]
    room = inference.max_batch(m, hw, context, **kw)
    if need > have:
        return "\n".join(head + [
            f"does not fit: it needs at least {math.ceil(need / hw.memory_bytes):,} devices "
            f"(or a batch of at most {room:,.0f} at this context); no throughput to report"])
    b_star = inference.critical_batch(m, hw, context, **kw)
    crit = ("never: each sequence's KV cache brings more bytes per FLOP than the device's "
            "balance allows" if b_star == float("inf") else f"{math.ceil(b_star):,}")
    return "\n".join(head + [
        f"fits (room for {room:,.0f} sequences of this context)",
        f"one decode step: {units.format_flops(step.flops)}, {units.format_bytes(step.bytes)} "
        f"read{_experts_read(m, batch)}, intensity {step.intensity:,.1f} FLOPs/byte "
        f"(the device's balance: {hw.balance:,.0f})",
        f"compute {units.format_duration(step.compute_time)}, memory "
        f"{units.format_duration(step.memory_time)}: {step.bound}-bound",
        f"latency per token: {units.format_duration(step.time)}   throughput: "
        f"{step.tokens_per_second:,.0f} tokens/s ({step.tokens_per_second / batch:,.1f} per "
        f"sequence)",
        f"compute-bound from batch: {crit}",
    ])


def inference_calculator():
    """Widgets for ``inference_report``."""
    import ipywidgets as w
    from IPython.display import display

    style = {"description_width": "initial"}
    name = w.Dropdown(options=registry.models(), value="llama3-8b", description="model")
    hw = w.Dropdown(options=registry.hardwares(), value="h100-sxm", description="device")
    batch = w.BoundedIntText(value=1, min=1, max=10**6, description="batch")
    context = w.BoundedIntText(value=2048, min=1, max=10**7, description="context")
    devices = w.BoundedIntText(value=1, min=1, max=4096, description="devices")
    weights = w.Dropdown(options=list(PRECISIONS), value="bf16/fp16", description="weights",
                         style=style)
    cache = w.Dropdown(options=list(PRECISIONS), value="bf16/fp16", description="KV cache",
                       style=style)
    out = w.Output()

    def update(_=None):
        out.clear_output()
        with out:
            try:
                print(inference_report(name.value, hw.value, batch.value, context.value,
                                       weights.value, cache.value, devices.value))
            except ValueError as error:
                print(f"cannot compute: {error}")

    for widget in (name, hw, batch, context, devices, weights, cache):
        widget.observe(update, names="value")
    update()
    display(w.VBox([w.HBox([name, hw]), w.HBox([batch, context, devices]), w.HBox([weights, cache]),
                    out]))


def interactive_inference(models=("llama2-7b", "llama3-8b", "llama2-13b"),
                          devices=("a100-80gb", "h100-sxm", "h200")):
    """The kernel-free figure of the calculator: decode tokens per second
    (``decode_step_time``) against the batch, up to the largest batch that fits
    (``max_batch``), one line per accelerator; a dropdown over the model and a slider over
    log2 of the context. Returns a :class:`~flopsbook.viz.interactive.Interactive`."""
    import numpy as np

    from .interactive import dropdown, line_chart, slider

    rows = []
    for name in models:
        m = registry.model(name)
        for device in devices:
            hw = registry.hardware(device)
            for e in range(10, 16):
                top = int(inference.max_batch(m, hw, 2**e))
                batch = 2 ** np.arange(0, int(np.log2(max(top, 1))) + 1)
                if top < 1:
                    continue
                rate = inference.decode_step_time(m, hw, batch, 2**e).tokens_per_second
                rows += [{"batch": int(b), "tokens_s": r, "device": device, "model": name,
                          "log2_context": e} for b, r in zip(batch, rate)]
    return line_chart(rows, x="batch", y="tokens_s", color="device", log_x=True, log_y=True,
                      controls=[dropdown("model", "model"),
                                slider("log2_context", "log2 of the context")],
                      x_title="batch (sequences decoded together)",
                      y_title="tokens per second (roofline)",
                      description="<interactive figure: decode throughput against batch>")
