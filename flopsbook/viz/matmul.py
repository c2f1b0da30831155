"""Calculator of the chapter "FLOPs and matrix multiplications"."""

import numpy as np

from .. import flops, registry, units


def predict_matmul(m, k, n, device="h100-sxm", dtype="bf16") -> dict:
    """The roofline's prediction for an (m x k) @ (k x n) product on a registry accelerator.

    Returns a dict: ``flops`` (2mkn), ``bytes`` (each operand read once, the output written
    once, in ``dtype``), ``time`` (``roofline_time``), ``rate`` (flops / time), ``fraction``
    (of the dtype's peak), ``peak`` and ``bound`` ("compute" or "memory")."""
    hw = registry.hardware(device)
    bytes_per_value = 4 if dtype in ("fp32", "tf32") else 1 if dtype in ("fp8", "int8") else 2
    # (tf32 values are stored as fp32; int8 "FLOPs" are integer operations)
    f = flops.matmul_flops(m, k, n)
    b = flops.matmul_bytes(m, k, n, bytes_per_value)
    peak = hw.peak(dtype)
    t = flops.roofline_time(f, b, peak, hw.bandwidth)
    compute = np.asarray(f / peak >= b / hw.bandwidth)   # arrays broadcast (the figures' grids)
    bound = (np.where(compute, "compute", "memory") if compute.ndim
             else "compute" if compute else "memory")
    return {"flops": f, "bytes": b, "time": t, "rate": f / t, "fraction": f / t / peak,
            "peak": peak, "bound": bound}


def matmul_report(m: int, k: int, n: int, device: str = "a100-80gb", dtype: str = "bf16") -> str:
    """FLOPs, bytes, arithmetic intensity and roofline time of an (m x k) @ (k x n) product."""
    hw = registry.hardware(device)
    p = predict_matmul(m, k, n, device, dtype)
    return "\n".join([
        f"FLOPs: {units.format_flops(p['flops'])}   bytes moved (at least): "
        f"{units.format_bytes(p['bytes'])}",
        f"intensity: {p['flops'] / p['bytes']:,.1f} FLOPs/byte   {hw.name} balance: "
        f"{p['peak'] / hw.bandwidth:,.0f}",
        f"time at peak (roofline): {units.format_duration(p['time'])}, {p['bound']}-bound",
    ])


def device_dtype_widgets(device):
    """A device dropdown and a dtype dropdown that offers only the dtypes the chosen device has
    a peak for (a V100 has no bf16), kept in step."""
    import ipywidgets as w

    hw = w.Dropdown(options=registry.hardwares(), value=device, description="device")
    dtype = w.Dropdown(options=list(registry.hardware(device).peak_flops), value="bf16",
                       description="dtype")

    def offer_dtypes(_=None):
        options = list(registry.hardware(hw.value).peak_flops)
        keep = dtype.value if dtype.value in options else ("bf16" if "bf16" in options else "fp16")
        with dtype.hold_trait_notifications():
            dtype.options, dtype.value = options, keep

    hw.observe(offer_dtypes, names="value")
    return hw, dtype


def matmul_calculator():
    """Sliders for ``matmul_report``."""
    import ipywidgets as w
    from IPython.display import display

    size = dict(min=1, max=65536, value=4096, step=1)
    m, k, n = (w.BoundedIntText(description=s, **size) for s in ("m", "k", "n"))
    hw, dtype = device_dtype_widgets("a100-80gb")
    out = w.Output()

    def update(_=None):
        out.clear_output()
        with out:
            try:
                print(matmul_report(m.value, k.value, n.value, hw.value, dtype.value))
            except ValueError as error:  # e.g. a dtype the device has no peak for
                print(f"cannot compute: {error}")

    for widget in (m, k, n, hw, dtype):
        widget.observe(update, names="value")
    update()
    display(w.VBox([w.HBox([m, k, n]), w.HBox([hw, dtype]), out]))


def interactive_matmuls(devices=None):
    """The kernel-free figure of the calculator: the roofline's rate of an (m x n) @ (n x n)
    16-bit product against n on each accelerator (``predict_matmul``), a slider over log2 m.
    Returns a :class:`~flopsbook.viz.interactive.Interactive`."""
    import numpy as np

    from .interactive import line_chart, slider

    n = 2.0 ** np.arange(6, 16)
    rows = []
    for name in devices or registry.hardwares():
        dtype = "bf16" if "bf16" in registry.hardware(name).peak_flops else "fp16"
        for e in range(0, 15, 2):
            rate = predict_matmul(2.0**e, n, n, name, dtype)["rate"]
            rows += [{"n": x, "tflops": r / 1e12, "device": name, "log2_m": e}
                     for x, r in zip(n, rate)]
    return line_chart(rows, x="n", y="tflops", color="device", log_x=True, log_y=True,
                      controls=[slider("log2_m", "log2 of the rows m")],
                      x_title="n (the product is m x n times n x n)",
                      y_title="TFLOP/s, roofline bound",
                      description="<interactive figure: roofline TFLOP/s of an m x n x n product>")
