"""The ledger of published training runs (flopsbook.registry.TrainingRun).

Every input is checked against the number its paper prints, typed here from the paper (the
section or table is cited beside it), never from the package's output; the recomputed MFU is
checked against a printed MFU wherever the paper prints one with the same numerator, and by
hand elsewhere.
"""

import re
from pathlib import Path

import pytest

import flopsbook as fb

ROOT = Path(__file__).parents[1]
BIB_KEYS = set(re.findall(r"@\w+\{([^,]+),", (ROOT / "book" / "references.bib").read_text()))
RUNS = fb.training_runs()

# (n_params, n_tokens, hardware, n_devices, tokens_per_second, device_flop_rate, device_hours,
#  days, printed_mfu, printed_hfu), typed from the sources named in each comment.
PRINTED = {
    # Brown et al. 2020, Table D.1 (174.6B, 300B tokens); PaLM Sec. 4.1 (24.6 TFLOP/s, 21.3%);
    # Patterson et al. 2021 as quoted (10,000 V100, 14.8 days).
    "gpt3-175b": (174.6e9, 300e9, "v100", 10_000, None, 24.6e12, None, 14.8, 0.213, None),
    # Kim et al. 2021 as quoted by Bahdanau 2022 / Epoch: 82B, 150B tokens, 1,024 A100, 13.4 days.
    "hyperclova-82b": (82e9, 150e9, "a100-80gb", 1024, None, None, None, 13.4, None, None),
    # PaLM App. B: "65.43K tokens/second (1920x2048/60.1) on 2240 GPUs", 530B, 30.2% with
    # attention; Smith et al. Sec. 2.4 as quoted: 126 TFLOP/s per GPU.
    "mt-nlg-530b": (530e9, 270e9, "a100-80gb", 2240, 65.43e3, 126e12, None, None, 0.302, None),
    # PaLM Sec. 4.1 / App. B: 540.35B, 780B tokens, 6144 TPU v4, 238.3K tokens/s, 46.2% / 57.8%,
    # "6144 TPU v4 chips for 1200 hours and 3072 TPU v4 chips for 336 hours".
    "palm-540b": (540.35e9, 780e9, "tpu-v4", 6144, 238.3e3, None, 6144 * 1200 + 3072 * 336, None,
                  0.462, 0.578),
    # OPT Sec. 2.4: 992 80GB A100, "up to 147 TFLOP/s per GPU"; 175B (Table 1); 300B: the LR
    # schedule's horizon (Sec. 2.2); 809,472 GPU-hours: LLaMA Table 15.
    "opt-175b": (175e9, 300e9, "a100-80gb", 992, None, 147e12, 809_472, None, None, None),
    # BLOOM Table 3 (176,247M, 366B tokens) and Sec. 3.4.1 (1,082,990 hours, 384 A100 80GB), as
    # quoted; model card: "About 150 TFLOP per GPU per second".
    "bloom-176b": (176.247e9, 366e9, "a100-80gb", 384, None, 150e12, 1_082_990, None, None, None),
    # LLaMA Table 2 (6.7B, 1.0T) and Table 15 (82,432 GPU-hours).
    "llama-7b": (6.7e9, 1.0e12, "a100-80gb", None, None, None, 82_432, None, None, None),
    # LLaMA Sec. 2.4 ("around 380 tokens/sec/GPU on 2048 A100 ... approximately 21 days"),
    # Table 2 (65.2B, 1.4T), Table 15 (1,022,362 GPU-hours).
    "llama-65b": (65.2e9, 1.4e12, "a100-80gb", 2048, 380 * 2048, None, 1_022_362, 21, None, None),
    # Llama 2 Table 2 / carbon table: 70B, 2.0T tokens, 1,720,320 GPU-hours.
    "llama2-70b": (70e9, 2.0e12, "a100-80gb", None, None, None, 1_720_320, None, None, None),
    # Llama 3 Sec. 1 (405B, 15.6T), Table 4 row 2 (16,384 GPUs, 400 TFLOPs/GPU, 41%); Llama 3.1
    # model card: 405B "30.84M" GPU-hours.
    "llama3-405b": (405e9, 15.6e12, "h100-sxm", 16_384, None, 400e12, 30.84e6, None, 0.41, None),
    # DeepSeek-V3 Table 1 ("Pre-Training 2664K"), abstract (14.8T tokens), Sec. 3.1 (2048 H800);
    # N: the book's active count, both embedding tables (chapter "Beyond the dense transformer").
    "deepseek-v3": (37_552_282_624, 14.8e12, "h800", 2048, None, None, 2_664_000, None, None,
                    None),
}
FIELDS = ("n_params", "n_tokens", "hardware", "n_devices", "tokens_per_second",
          "device_flop_rate", "device_hours", "days", "printed_mfu", "printed_hfu")


def test_the_ledger_has_at_least_ten_runs_and_every_one_is_checked():
    assert len(RUNS) >= 10 and sorted(RUNS) == sorted(PRINTED)
    assert {"opt-175b", "bloom-176b", "llama3-405b", "deepseek-v3"} <= set(RUNS)


@pytest.mark.parametrize("name", RUNS)
def test_inputs_are_the_printed_numbers(name):
    run = fb.training_run(name)
    for f, printed in zip(FIELDS, PRINTED[name]):
        assert getattr(run, f) == printed, (name, f)


@pytest.mark.parametrize("name", RUNS)
def test_sources_hardware_and_models_are_known(name):
    run = fb.training_run(name)
    assert run.source in BIB_KEYS
    # every bib key a note names (e.g. "touvron2023llama") is in the bibliography too
    assert set(re.findall(r"\b[a-z]+20\d\d[a-z0-9]+\b", run.notes)) <= BIB_KEYS
    assert run.hardware in fb.hardwares() and run.peak == fb.hardware(run.hardware).peak_16bit
    assert run.model is None or run.model in fb.models()
    assert run.numerator and run.notes


@pytest.mark.parametrize("name", [n for n in RUNS if fb.training_run(n).model])
def test_n_params_is_the_models_count_to_a_few_percent(name):
    run = fb.training_run(name)
    assert abs(run.n_params / fb.param_count(run.model, active=True) - 1) < 0.03


def test_deepseek_v3_uses_the_books_active_count():
    # The architectures chapter computes 6 N_active D with param_count(m, active=True).
    assert fb.training_run("deepseek-v3").n_params == fb.param_count("deepseek-v3", active=True)


def test_mfu_is_six_n_d_over_device_time_and_peak():
    # Worked by hand from the printed numbers, peaks 312 (A100), 989.4 (H100/H800), 125 (V100).
    by_hand = {
        "llama-7b": 6 * 6.7e9 * 1.0e12 / (82_432 * 3600 * 312e12),
        "llama-65b": 380 * 6 * 65.2e9 / 312e12,
        "llama2-70b": 6 * 70e9 * 2.0e12 / (1_720_320 * 3600 * 312e12),
        "hyperclova-82b": 6 * 82e9 * 150e9 / (1024 * 13.4 * 86400 * 312e12),
        "opt-175b": 6 * 175e9 * 300e9 / (809_472 * 3600 * 312e12),
        "bloom-176b": 6 * 176.247e9 * 366e9 / (1_082_990 * 3600 * 312e12),
        "llama3-405b": 6 * 405e9 * 15.6e12 / (30.84e6 * 3600 * 989.4e12),
        "deepseek-v3": 6 * 37_552_282_624 * 14.8e12 / (2.664e6 * 3600 * 989.4e12),
        "gpt3-175b": 6 * 174.6e9 * 300e9 / (10_000 * 14.8 * 86400 * 125e12),
        "palm-540b": 238.3e3 * 6 * 540.35e9 / (6144 * 275e12),
        "mt-nlg-530b": 65.43e3 * 6 * 530e9 / (2240 * 312e12),
    }
    assert sorted(by_hand) == sorted(RUNS)
    for name, u in by_hand.items():
        run = fb.training_run(name)
        assert run.mfu == pytest.approx(u, rel=1e-12), name
        assert run.mfu == pytest.approx(run.model_flops / (run.device_seconds * run.peak))


def test_palm_printed_mfu_and_hfu_from_its_own_numerator():
    palm = fb.training_run("palm-540b")
    # PaLM App. B: "45.7% without self-attention ((238.3x6x540)/(275x6144)) or 46.2% with it".
    assert round(100 * palm.mfu, 1) == 45.7
    L, H, Q, T = 118, 48, 256, 2048                     # PaLM Table 1; 6N + 12LHQT (App. B)
    with_attention = 6 * palm.n_params + 12 * L * H * Q * T
    assert round(palm.mfu_from(flops_per_token=with_attention), 3) == palm.printed_mfu
    # The 6N-only MFU relates to the printed one by the ratio of the numerators:
    assert palm.mfu * with_attention / (6 * palm.n_params) == \
        pytest.approx(palm.mfu_from(flops_per_token=with_attention))
    assert round(palm.mfu_from(flops_per_token=fb.flops_per_token("palm-540b")), 3) == 0.462
    # HFU: Table 22's 4.10 TFLOPs per token with rematerialisation (3.28 without).
    assert round(palm.mfu_from(flops_per_token=4.10e12), 3) == palm.printed_hfu
    # Over the chip-hours (downtime and repeated steps in) the same run is at about 30%.
    assert 0.29 < palm.mfu_from("device_hours") < 0.32


def test_mt_nlg_is_palms_29_7_percent():
    # PaLM App. B: "29.7% without attention ((65.43x6x530)/(312x2240))". Its own arithmetic
    # gives 29.77%: PaLM truncates (rounding would print 29.8%).
    u = fb.training_run("mt-nlg-530b").mfu
    assert u == pytest.approx(65.43 * 6 * 530 / (312 * 2240)) and int(1000 * u) / 10 == 29.7


def test_printed_flop_rates_over_the_peak():
    # Llama 3 Table 4: 430 -> 43%, 400 -> 41%, 380 -> 38% of 989.4; the ledger holds row 2,
    # whose 400 / 989.4 = 40.4% the paper prints as 41% (a rounding it does not explain).
    for rate, printed in ((430e12, 0.43), (400e12, 0.41), (380e12, 0.38)):
        assert abs(rate / 989.4e12 - printed) < 0.006
    llama3 = fb.training_run("llama3-405b")
    assert llama3.flop_rate_mfu == pytest.approx(400 / 989.4) and llama3.printed_mfu == 0.41
    # ... and the GPU-hours (all of the training) give less than the steady-state 38-43%.
    assert llama3.mfu < 0.38
    # GPT-3: PaLM's 21.3% is not 24.6 / 125 = 19.7% (PaLM's V100 peak is not printed).
    gpt3 = fb.training_run("gpt3-175b")
    assert round(gpt3.flop_rate_mfu, 3) == 0.197 and gpt3.printed_mfu == 0.213
    assert round(gpt3.mfu, 3) == 0.197     # 6ND over 10,000 V100 x 14.8 days: the same 24.6
    # OPT's "up to 147" and BLOOM's "about 150": 47.1% and 48.1% of 312, above their 6ND MFUs.
    for name, u in (("opt-175b", 147 / 312), ("bloom-176b", 150 / 312)):
        run = fb.training_run(name)
        assert run.flop_rate_mfu == pytest.approx(u) and run.mfu < run.flop_rate_mfu
    assert fb.training_run("llama-7b").flop_rate_mfu is None


def test_wall_time_and_device_time():
    llama65 = fb.training_run("llama-65b")
    # LLaMA Sec. 2.4: 1.4T tokens at 380 tokens/s/GPU on 2048 GPUs "takes approximately 21 days".
    assert round(llama65.seconds / 86400) == 21
    assert round(llama65.mfu_from("days"), 3) == round(6 * 65.2e9 * 1.4e12 / (
        2048 * 21 * 86400 * 312e12), 3)
    assert llama65.mfu_from("device_hours") == pytest.approx(
        6 * 65.2e9 * 1.4e12 / (1_022_362 * 3600 * 312e12))
    v3 = fb.training_run("deepseek-v3")
    assert v3.seconds == pytest.approx(2.664e6 * 3600 / 2048)
    # "less than two months" (DeepSeek-V3 Sec. 1)
    assert v3.seconds / 86400 < 61
    assert v3.mfu_from(peak=fb.hardware("h800").peak("fp8")) == pytest.approx(v3.mfu / 2, rel=1e-3)
    assert v3.mfu_from(peak="h800") == v3.mfu
    assert fb.training_run("hyperclova-82b").seconds == 13.4 * 86400


def test_errors_name_what_is_missing_or_wrong():
    with pytest.raises(ValueError, match="unknown training run name 'palm'.*palm-540b"):
        fb.training_run("palm")
    with pytest.raises(ValueError, match="name"):
        fb.training_run(3)
    llama7 = fb.training_run("llama-7b")
    with pytest.raises(ValueError, match="n_devices"):
        llama7.seconds
    assert llama7.mfu > 0                  # device-hours need no device count
    with pytest.raises(ValueError, match="basis.*device_hours"):
        llama7.mfu_from("days")
    with pytest.raises(ValueError, match="peak"):
        llama7.mfu_from(peak=-1)
    with pytest.raises(ValueError, match="flops_per_token"):
        llama7.mfu_from(flops_per_token="lots")
    with pytest.raises(ValueError, match="above 1"):
        llama7.mfu_from(flops_per_token=1e13)
    bare = fb.TrainingRun("toy", None, 1e9, 1e10, "a100-80gb", n_devices=8)
    assert bare.basis is None and bare.flop_rate_mfu is None
    with pytest.raises(ValueError, match="tokens_per_second, device_hours, days"):
        bare.seconds
    with pytest.raises(ValueError, match="tokens_per_second, device_hours, days"):
        bare.mfu


def _run(**change):
    fields = dict(name="toy", model=None, n_params=1e9, n_tokens=1e10, hardware="a100-80gb",
                  n_devices=8, days=1.0)
    return fb.TrainingRun(**(fields | change))


@pytest.mark.parametrize("change, word", [
    (dict(name=3), "name"), (dict(name=""), "name"), (dict(model="gpt-2"), "model"),
    (dict(hardware="a100"), "hardware"), (dict(hardware=None), "hardware"),
    (dict(n_params=0), "n_params"), (dict(n_params="lots"), "n_params"),
    (dict(n_tokens=[1e9, 2e9]), "n_tokens"), (dict(n_tokens=float("nan")), "n_tokens"),
    (dict(n_devices=2.5), "n_devices"), (dict(n_devices=0), "n_devices"),
    (dict(days=-1), "days"), (dict(tokens_per_second=True), "tokens_per_second"),
    (dict(device_hours=float("inf")), "device_hours"),
    (dict(device_flop_rate="fast"), "device_flop_rate"),
    (dict(printed_mfu=46.2), "printed_mfu"), (dict(printed_hfu=0), "printed_hfu"),
    (dict(peak=0), "peak"), (dict(numerator=None), "numerator"), (dict(source=1), "source"),
    (dict(notes=None), "notes"), (dict(basis="device_hours"), "basis"),
    (dict(basis="weeks"), "basis"),
])
def test_training_run_is_validated(change, word):
    with pytest.raises(ValueError, match=f"TrainingRun.{word}"):
        _run(**change)


def test_a_run_s_figures_must_describe_one_possible_run():
    # 1e9 params, 1e10 tokens: 6e19 FLOPs; on 8 A100s at 312 TFLOP/s that is 6.7 h at peak.
    with pytest.raises(ValueError, match="disagree by more than 3x"):
        _run(tokens_per_second=1e3)                      # 116 days against the 1 day printed
    with pytest.raises(ValueError, match="TrainingRun.days.*faster than the peak"):
        _run(days=0.1)                                   # 2.4 h: faster than 6.7 h at peak
    with pytest.raises(ValueError, match="device_flop_rate"):
        _run(device_flop_rate=400e12)                    # above the A100's 312 TFLOP/s
    both = _run(tokens_per_second=1e10 / 86400 * 1.5)   # 1.5x faster than its days: kept
    assert both.mfu_from("days") == _run().mfu and both.mfu == pytest.approx(1.5 * _run().mfu)


def test_training_run_reads_text_and_defaults_its_peak():
    # 6 * 7B * 1M tokens/s over 512 devices at 312 TFLOP/s: MFU 26%; its 40 days: the same run.
    run = _run(n_params="7B", n_tokens="1T", device_flop_rate="150 TFLOP/s", peak="312 TFLOP/s",
               tokens_per_second="1M", n_devices=512, days=12)
    assert (run.n_params, run.n_tokens, run.device_flop_rate, run.peak) == (7e9, 1e12, 150e12,
                                                                            312e12)
    assert run.basis == "tokens_per_second"              # the first printed, before days
    assert _run(hardware="v100").peak == 125e12          # peak_16bit: fp16 where no bf16
    assert _run(model="llama-7b").model == "llama-7b"
    assert fb.training_run("palm-540b") is fb.training_run("palm-540b")
