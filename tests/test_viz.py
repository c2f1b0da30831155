"""The notebooks' face: glue, plot setup and the calculators' reports and widgets."""

import pytest

import flopsbook as fb
from flopsbook.viz.matmul import matmul_report
from flopsbook.viz.training import training_report


def test_glue_returns_the_value_and_text_displays_without_quotes():
    assert fb.viz.glue("x", 3.5, "{:.1f}") == 3.5
    assert repr(fb.viz._Text("1,024")) == "1,024"


def test_glue_keeps_the_text_for_eval_in_jupyterlab():
    fb.viz.glue("tokens_per_param", 20.04, "{:.0f}")
    assert repr(fb.viz.g.tokens_per_param) == "20"   # what {eval}`g.tokens_per_param` shows
    for bad in ["g-1", "1st", "lambda", ""]:
        with pytest.raises(ValueError, match="name"):
            fb.viz.glue(bad, 1)


def test_setup_is_seeded():
    a, b = fb.viz.setup().standard_normal(3), fb.viz.setup().standard_normal(3)
    assert (a == b).all()


def test_matmul_report():
    # The seed blog's 4096 x 8192 x 4096 bf16 product on an A100: 2*4096*8192*4096 FLOPs,
    # (4096*8192*2 + 4096*4096) * 2 bytes, compute-bound at 2.75e11 / 312e12 s = 0.881 ms.
    text = matmul_report(4096, 8192, 4096, "a100-80gb", "bf16")
    assert "2.75e11 FLOPs" in text and "168 MB" in text
    assert "881 µs, compute-bound" in text
    assert "memory-bound" in matmul_report(1, 8192, 8192, "h100-sxm", "bf16")
    with pytest.raises(ValueError, match="unknown dtype"):
        matmul_report(8, 8, 8, "v100", "bf16")


def test_training_report():
    # GPT-3: 6 * 175e9 * 300e9 = 3.15e23 FLOPs; on 1024 A100 at 40%:
    # 3.15e23 / (1024 * 312e12 * 0.4) = 2.465e6 s = 28.5 days; GPU-hours
    # 3.15e23 / (312e12 * 0.4 * 3600) = 701,121.7, at $2: $1,402,243.6.
    text = training_report("175B", "300B", "a100-80gb", 1024, 0.4, 2.0)
    assert "C = 6ND = 3.15e23 FLOPs" in text
    assert "28.5 days" in text
    assert "device-hours: 701,122" in text and "cost: $1,402,244" in text
    with pytest.raises(ValueError, match="mfu must be <= 1"):
        training_report("175B", "300B", mfu=1.5)
    with pytest.raises(ValueError, match="cannot read 'lots'"):
        training_report("lots", "300B")


@pytest.mark.parametrize("calculator", [fb.viz.matmul_calculator, fb.viz.training_calculator])
def test_calculators_build_their_widgets(calculator, capsys):
    calculator()
    assert "VBox" in capsys.readouterr().out


def test_plain_log_ticks_labels_powers_of_ten_and_plain_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.loglog([1, 64], [1e18, 1e21])
    fb.viz.plain_log_ticks(ax)
    fmt_x, fmt_y = ax.xaxis.get_major_formatter(), ax.yaxis.get_major_formatter()
    assert [fmt_x(v, 0) for v in (0.1, 1, 2, 10, 64, 1000)] == ["0.1", "1", "2", "10", "64", "10³"]
    assert fmt_y(1e19, 0) == "10¹⁹"
    plt.close(fig)


def test_architecture_report():
    # Mixtral 8x7B: 46.7B parameters (46,702,792,704 in the released tensors), 12.9B active with
    # both embedding tables; batch 1 reads top_k = 2 experts; a 32K cache of 32 layers x 8 KV
    # heads x 128 x 2 values x 2 bytes x 32,768 tokens = 4 GiB, the same all-global (no window).
    from flopsbook.viz.architectures import architecture_report

    text = architecture_report("mixtral-8x7b", 1, 32768)
    assert "46.7B parameters, 12.9B active" in text
    assert "reads 2.0 of 8 experts" in text
    assert "4.29 GB (4.29 GB with every layer global)" in text
    # DeepSeek-V3's MLA caches 512 + 64 values per token and layer: 61 x 576 x 2 bytes = 70,272
    # bytes per token; 8 experts of 256 are read at batch 1, E(1 - (1 - 8/256)^2) at batch 2.
    v3 = architecture_report("deepseek-v3", 2, 1)
    assert "70.3 kB" in v3 and f"reads {256 * (1 - (1 - 8 / 256) ** 2):,.1f} of 256" in v3
    # Mistral 7B's rolling cache holds 4,096 tokens: 8x less than all-global at 32K.
    mistral = architecture_report("mistral-7b", 1, 32768)
    assert "537 MB (4.29 GB with every layer global)" in mistral and "dense FFN" in mistral
    with pytest.raises(ValueError, match="Closest: mixtral-8x7b"):
        architecture_report("mixtral-9x7b")


def test_architectures_figure_and_calculator(capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = fb.viz.architectures_figure(["mixtral-8x7b", "deepseek-v3"])
    assert len(fig.axes) == 2
    plt.close(fig)
    fb.viz.architectures_calculator()
    assert "VBox" in capsys.readouterr().out


def test_collectives_figures_are_drawn_from_the_message_log():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from flopsbook.reference import collectives as C
    from flopsbook.viz import collectives as vc

    run = C.all_reduce([np.arange(8.0) for _ in range(4)])
    fig, ax = plt.subplots()
    vc.draw_messages(ax, run)
    # One arrow per message of the log: 2(n - 1) steps of n messages for a ring all-reduce.
    (arrows,) = [c for c in ax.collections if hasattr(c, "U")]
    assert len(arrows.U) == len(run.messages) == 2 * 3 * 4
    assert list(arrows.V) == pytest.approx([(m.receiver - m.sender) * (1 - 2 * 0.12 / np.hypot(
        1, m.receiver - m.sender)) for m in run.messages])
    assert ax.get_xlim()[1] == pytest.approx(run.n_steps + 0.3)
    plt.close(fig)
    fig = vc.messages_figure([run, C.all_gather(C.shard(np.arange(8.0), 4))], ["a", "b"])
    assert [a.get_title() for a in fig.axes if a.get_visible()] == ["a", "b"]
    plt.close(fig)
    fig = vc.ring_tree_figure(simulated=[(8, "ring", 1.75, 14), (8, "tree", 2.0, 6)])
    assert len(fig.axes) == 2
    plt.close(fig)
    fit = type("Fit", (), {"alpha": 1e-4, "beta": 1e9})()
    fig = vc.alpha_beta_figure({"all-reduce": ([1024, 4096], [1e-4, 1.1e-4], fit)})
    assert len(fig.axes) == 1
    plt.close(fig)


def test_step_communication_matches_the_overlap_threshold():
    # With one micro-batch, plain data parallelism's all-reduce is hidden exactly from
    # dp_overlap_tokens tokens per device on (no latency: a bare-bandwidth accelerator).
    import dataclasses

    import numpy as np

    from flopsbook.viz.collectives import step_communication

    h100 = dataclasses.replace(fb.hardware("h100-sxm"), intra_node_latency=0.0)
    threshold = fb.dp_overlap_tokens(h100, n_devices=8)
    below, above = step_communication(7e9, h100, 8, np.array([0.99, 1.01]) * threshold)[
        "exposed_fraction"]
    assert below > 0 and above == 0
    for stage in (1, 2, 3):   # every stage is hidden from the same threshold with k = 1
        r = step_communication(7e9, h100, 8, np.array([0.99, 1.01]) * threshold, zero_stage=stage)
        assert r["exposed_fraction"][1] == 0
    r = step_communication(7e9, h100, 8, 100.0, zero_stage=3, micro_batches=4)
    assert r["bytes"].total == fb.data_parallel_bytes(7e9, 8, zero_stage=3, micro_batches=4).total
    assert 0 < r["exposed_fraction"] < 1


def test_collectives_report_and_calculator(capsys):
    from flopsbook.viz.collectives import collectives_report

    # Llama 2 7B (6.74B parameters), 64 H100s: 2 * 63/64 * 6.74e9 * 2 bytes = 26.5 GB sent;
    # 16 bytes per parameter of model states = 108 GB = 100 GiB, more than an 80 GiB GPU
    # (memory is printed in GiB, the unit the GPU's capacity is stated in).
    text = collectives_report("llama2-7b", "h100-sxm", 64, 4096, zero_stage=0)
    assert "26.5 GB" in text and "100 GiB of 80 GiB" in text and "hierarchical" in text
    z3 = collectives_report("llama2-7b", "h100-sxm", 64, 4096, zero_stage=3)
    assert "ZeRO-3" in z3 and "1.57 GiB of 80 GiB" in z3   # 6.74e9 * 16 / 64 / 2**30
    assert "inside one node" in collectives_report("llama2-7b", "h100-sxm", 8, 4096)
    fb.viz.collectives_calculator()
    assert "VBox" in capsys.readouterr().out
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = fb.viz.collectives_figure(hardwares=("h100-sxm",), n_devices=(8,))
    assert len(fig.axes[0].lines) == 1
    plt.close(fig)


def _toy_context_results():
    # Best-context losses set by hand for two widths, three contexts and two budgets: at both
    # budgets width 16's U bottoms out at s = 16, width 32's at s = 8 (an edge).
    table = {16: {8: (3.0, 2.6), 16: (2.9, 2.4), 32: (3.1, 2.7)},
             32: {8: (2.8, 2.3), 16: (2.9, 2.5), 32: (3.0, 2.6)}}
    runs = []
    for width, row in table.items():
        for s, losses in row.items():
            checkpoints = [{"budget": b, "steps": 10 * (i + 1), "tokens": 2048 * 10 * (i + 1),
                            "flops": b, "train_loss": loss + 0.3, "best_context_loss": loss,
                            "curve": [loss] * s}
                           for i, (b, loss) in enumerate(zip((1e9, 1e10), losses))]
            runs.append({"width": width, "context": s, "kind": "long", "checkpoints": checkpoints,
                         "step_flops": 1.0, "n_params": 0, "curve_beyond": [losses[-1]] * (4 * s)})
    # a warm-up of 10 steps: both budgets (10 and 20 steps) count
    return {"runs": runs, "expected_bayes": {"long": [2.0] * 128, "control": [2.0] * 128},
            "provenance": {"training": {"adam": {"warmup_steps": 10}}}}


def test_context_report_reads_the_sweep():
    from flopsbook.viz.context import context_report

    results = _toy_context_results()
    # Width 16 at 1e10: the parabola through (log2 s, loss) = (3, 2.6), (4, 2.4), (5, 2.7) is
    # 0.25 (x - 4)^2 + 0.05 (x - 4) + 2.4, lowest at x = 3.9: s = 2**3.9 = 14.9. A token at s = 16
    # costs 3 (2 (24 * 16**2 + 2 * 16 * 17) + 2 * 16 * 32) = 43,200 FLOPs, 1,088 * 3 of them in the
    # attention products: 7.6%.
    text = context_report(1e10, 16, results)
    assert "predicted best training context: 15 tokens" in text
    assert "best context 16 (parabola's minimum 15), best-context loss 2.400 nats after 20 steps" in text
    assert "costs 43,200 FLOPs (causal, logits in), 8% of them" in text
    # Width 32's best is its shortest context: no parabola, and nothing outside the budgets.
    assert "best context 8 (parabola's minimum 8)" in context_report(1e9, 32, results)
    assert "no prediction" in context_report(1e11, 16, results)


def test_context_noise_and_smoothed_end_loss():
    import numpy as np

    from flopsbook.viz.context import curve_noise, smoothed_end_loss

    pos = np.arange(1, 513)
    smooth = 3.0 - 0.2 * np.log(pos)
    noisy = smooth + np.random.default_rng(0).normal(0, 0.05, len(pos))
    assert curve_noise(noisy) == pytest.approx(0.05, rel=0.1)
    assert curve_noise(smooth) < 1e-3
    assert smoothed_end_loss(smooth, 64) == pytest.approx(3.0 - 0.2 * np.log(64))
    with pytest.raises(ValueError, match="fraction"):
        smoothed_end_loss(smooth, 64, fraction=0)
    with pytest.raises(ValueError, match="context = 600"):
        smoothed_end_loss(smooth, 600)


def test_context_optimal_context_trend():
    import numpy as np

    from flopsbook.viz.context import optimal_context_trend

    results = _toy_context_results()
    # Width 32's best is s = 8 at both budgets: a flat line at log2(8) = 3, no scatter.
    assert optimal_context_trend(results, 32) == pytest.approx((0.0, 3.0, 0.0))
    # Width 16: parabola minima at 1e9 and 1e10 (two points: the line goes through both).
    slope, intercept, scatter = optimal_context_trend(results, 16)
    from flopsbook.experiments.context import optimal_context
    fitted = optimal_context(results, 16).fitted
    assert slope == pytest.approx(np.log2(fitted[1]) - np.log2(fitted[0]))
    assert intercept + 10 * slope == pytest.approx(np.log2(fitted[1])) and scatter == 0.0


def test_context_figures_and_calculator(capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flopsbook.viz import context as vc

    results = _toy_context_results()
    fig = fb.viz.context_figure(results)
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) == 2 * 2   # a U and a ring per width
    # the left panel: per width the interpolated line, the rings and the dashed straight-line fit
    assert len(fig.axes[0].lines) == 2 * 3 + 1                       # and the marked budget
    plt.close(fig)
    fig = fb.viz.context_figure(results, trend=False)
    assert len(fig.axes[0].lines) == 2 * 2 + 1
    plt.close(fig)
    fig, ax = plt.subplots()
    vc.plot_beyond(ax, results, 16)
    vc.plot_u_curves(ax, results, 16)
    plt.close(fig)
    fb.viz.context_calculator(results)
    assert "VBox" in capsys.readouterr().out


def test_interactive_figure_is_a_vegalite_v5_bundle_with_its_controls():
    from flopsbook.viz.interactive import MIME, dropdown, line_chart, slider

    rows = [{"x": x, "y": x * k, "k": k, "fit": fit}
            for fit in ("a", "b") for k in (1, 2, 3) for x in (1.0, 10.0, 100.0)]
    fig = line_chart(rows, x="x", y="y", color="fit", log_x=True,
                     controls=[slider("k", "k"), dropdown("fit", "fit")], description="y vs x")
    bundle = fig._repr_mimebundle_()
    assert set(bundle) == {MIME, "text/plain"} and bundle["text/plain"] == "y vs x"
    spec = bundle[MIME]
    assert "$schema" not in spec and spec["data"]["values"][0] == rows[0]
    bindings = [p["bind"] for p in spec["params"]]
    assert bindings[0]["input"] == "range" and (bindings[0]["min"], bindings[0]["max"],
                                                bindings[0]["step"]) == (1, 3, 1)
    assert bindings[1] == {"input": "select", "options": ["a", "b"], "name": "fit "}
    assert "control_0" in spec["transform"][0]["filter"]
    assert spec["encoding"]["x"]["scale"] == {"domain": [1.0, 100.0], "zero": False, "type": "log"}


def test_interactive_figure_refuses_bad_input():
    from flopsbook.viz.interactive import MAX_DATA_BYTES, line_chart, slider

    big = [{"x": float(i), "y": float(i), "label": "z" * 100} for i in range(MAX_DATA_BYTES // 100)]
    with pytest.raises(ValueError, match="rows: .* bytes of JSON"):
        line_chart(big, x="x", y="y")
    with pytest.raises(ValueError, match="rows: no rows"):
        line_chart([], x="x", y="y")
    with pytest.raises(ValueError, match="lack the column"):
        line_chart([{"x": 1}], x="x", y="y")
    uneven = [{"x": 1.0, "y": 1.0, "k": k} for k in (1, 2, 5)]
    with pytest.raises(ValueError, match="controls: .* evenly spaced"):
        line_chart(uneven, x="x", y="y", controls=[slider("k")])
    with pytest.raises(ValueError, match="rows: a log axis"):
        line_chart([{"x": 0.0, "y": 1.0}], x="x", y="y", log_x=True)


def test_mystnb_plugin_writes_the_figure_div():
    import json

    from flopsbook.viz.interactive import MIME, MystNbRenderer

    class Data:
        mime_type, content = MIME, json.dumps({"title": "t", "data": {"values": [{"a": "</b>"}]}})

    (node,) = MystNbRenderer.handle_mime(None, Data, inline=False)
    text = node.astext()
    assert text.startswith('<div class="fb-interactive">') and "fb-interactive-figure" in text
    assert '<script type="application/json">' in text and "</b>" not in text
    assert MystNbRenderer.handle_mime(None, Data, inline=True) is None


def test_the_mystnb_plugin_is_declared_as_an_entry_point():
    import tomllib
    from pathlib import Path

    from flopsbook.viz import interactive

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    (target,) = pyproject["project"]["entry-points"]["myst_nb.mime_renderers"].values()
    module, name = target.split(":")
    assert module == interactive.__name__ and hasattr(interactive, name)


def test_mystnb_plugin_prints_a_static_png_for_latex(monkeypatch):
    """The PDF gets the figure as an image (the controls at their first values), not its text."""
    import base64
    import dataclasses
    import json
    import types

    from flopsbook.viz import interactive

    @dataclasses.dataclass
    class Data:
        mime_type: str
        content: str

    seen = {}
    monkeypatch.setattr(interactive, "static_png", lambda spec: seen.setdefault("spec", spec) and b"PNG")
    env = types.SimpleNamespace(app=types.SimpleNamespace(builder=types.SimpleNamespace(format="latex")))
    renderer = types.SimpleNamespace(renderer=types.SimpleNamespace(sphinx_env=env),
                                     render_image=lambda data: [data])
    (image,) = interactive.MystNbRenderer.handle_mime(
        renderer, Data(interactive.MIME, json.dumps({"title": "t"})), inline=False)
    assert image.mime_type == "image/png" and base64.b64decode(image.content) == b"PNG"
    assert seen["spec"] == {"title": "t"}
    assert ("latex", interactive.MIME, 5) in interactive.MystNbRenderer.mime_priority_overrides
