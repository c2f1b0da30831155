"""The notebooks' face: glue, plot setup and the calculators' reports and widgets."""

import pytest

import flopsbook as fb
from flopsbook.viz.matmul import matmul_report
from flopsbook.viz.training import training_report


def test_glue_returns_the_value_and_text_displays_without_quotes():
    assert fb.viz.glue("x", 3.5, "{:.1f}") == 3.5
    assert repr(fb.viz._Text("1,024")) == "1,024"


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
