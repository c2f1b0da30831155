"""Calculator of the chapter "Weight FLOPs"."""

from .. import flops, registry, units


def training_report(n_params, n_tokens, device: str = "a100-80gb", n_devices: int = 1024,
                    mfu: float = 0.4, price_per_device_hour: float = 2.0) -> str:
    """C = 6ND, wall-clock time, device-hours and cost of a training run.

    ``n_params`` and ``n_tokens`` may be numbers or strings such as "175B" and "300B".
    """
    n = units.parse_quantity(n_params)
    d = units.parse_quantity(n_tokens)
    hw = registry.hardware(device)
    peak = hw.peak_16bit
    c = flops.training_flops(n, d)
    t = flops.training_time(c, n_devices, peak, mfu)
    hours = t / 3600 * n_devices
    return "\n".join([
        f"N = {n:.4g} parameters, D = {d:.4g} tokens",
        f"C = 6ND = {units.format_flops(c)}",
        f"time on {n_devices:,} x {hw.name} at {mfu:.0%} MFU: {units.format_duration(t)}",
        f"device-hours: {hours:,.0f}   cost: ${hours * price_per_device_hour:,.0f}",
    ])


def training_calculator():
    """Model (or custom N), tokens, accelerator, devices, MFU, price -> ``training_report``."""
    import ipywidgets as w
    from IPython.display import display

    from ..spec import param_count

    style = {"description_width": "initial"}
    name = w.Dropdown(options=["custom"] + registry.models(), value="gpt3-175b",
                      description="model", style=style)
    n_params = w.Text(value="175B", description="N (custom)", style=style)
    n_tokens = w.Text(value="300B", description="tokens D", style=style)
    hw = w.Dropdown(options=registry.hardwares(), value="a100-80gb", description="device")
    devices = w.BoundedIntText(value=1024, min=1, max=10**6, description="devices")
    util = w.FloatSlider(value=0.4, min=0.05, max=1.0, step=0.01, description="MFU")
    price = w.BoundedFloatText(value=2.0, min=0, max=1e4, description="$/device-h", style=style)
    out = w.Output()

    def update(_=None):
        out.clear_output()
        with out:
            try:
                n = (n_params.value if name.value == "custom"
                     else param_count(registry.model(name.value)))
                print(training_report(n, n_tokens.value, hw.value, devices.value, util.value,
                                      price.value))
            except ValueError as error:  # the reader typed something we cannot read
                print(f"cannot compute: {error}")

    for widget in (name, n_params, n_tokens, hw, devices, util, price):
        widget.observe(update, names="value")
    update()
    display(w.VBox([w.HBox([name, n_params]), w.HBox([n_tokens, hw, devices]),
                    w.HBox([util, price]), out]))


def interactive_weight_flops(model="gpt3-175b", devices=("v100", "a100-80gb", "h100-sxm", "tpu-v4"),
                             tokens=("300B", "1T", "2T", "15T")):
    """The kernel-free figure of the calculator: days to train ``model`` (6ND, ``training_time``)
    against the device count, one line per accelerator; a slider over the MFU and a dropdown
    over the tokens. Returns a :class:`~flopsbook.viz.interactive.Interactive`."""
    import numpy as np

    from .. import spec
    from .interactive import dropdown, line_chart, slider

    n_params = spec.param_count(registry.model(model))
    n_devices = 2.0 ** np.arange(6, 15)
    rows = []
    for d in tokens:
        c = flops.training_flops(n_params, units.parse_quantity(d))
        for name in devices:
            peak = registry.hardware(name).peak_16bit
            for mfu in range(20, 65, 10):
                days = flops.training_time(c, n_devices, peak, mfu / 100) / 86400
                rows += [{"devices": x, "days": t, "device": name, "mfu": mfu, "tokens": d}
                         for x, t in zip(n_devices, days)]
    return line_chart(rows, x="devices", y="days", color="device", log_x=True, log_y=True,
                      controls=[slider("mfu", "MFU (%)"), dropdown("tokens", "tokens D")],
                      x_title="devices", y_title=f"days to train {model} (6ND)",
                      description=f"<interactive figure: days to train {model} against devices>")
