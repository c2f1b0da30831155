"""Formatting and parsing of FLOPs, bytes and durations."""

import pytest

import flopsbook as fb


def test_format_flops():
    assert fb.format_flops(3.14e23) == "3.14e23 FLOPs"
    assert fb.format_flops(312e12, per_second=True) == "312 TFLOP/s"
    assert fb.format_flops(989.4e12, per_second=True, digits=4) == "989.4 TFLOP/s"
    assert fb.format_flops(12) == "12 FLOPs"
    assert fb.format_flops(0.5) == "0.5 FLOPs"


def test_format_bytes_decimal_and_binary():
    assert fb.format_bytes(80 * 2**30, binary=True) == "80 GiB"
    assert fb.format_bytes(80 * 2**30) == "85.9 GB"
    assert fb.format_bytes(141e9) == "141 GB"
    assert fb.format_bytes(512) == "512 B"
    assert fb.format_bytes(1536, binary=True) == "1.5 KiB"


def test_format_duration():
    assert fb.format_duration(13.4 * 86400) == "13.4 days"
    assert fb.format_duration(0.0123) == "12.3 ms"
    assert fb.format_duration(90) == "1.5 min"
    assert fb.format_duration(2 * 365.25 * 86400) == "2 years"
    assert fb.format_duration(0) == "0 s"


def test_parse_quantity():
    assert fb.parse_quantity("175B") == 175e9
    assert fb.parse_quantity("1.4T") == 1.4e12
    assert fb.parse_quantity("82 b") == 82e9
    assert fb.parse_quantity("6.7e9") == 6.7e9
    assert fb.parse_quantity("300") == 300
    assert fb.parse_quantity(42) == 42


def test_parse_bytes():
    assert fb.parse_bytes("80GiB") == 80 * 2**30
    assert fb.parse_bytes("141 GB") == 141e9
    assert fb.parse_bytes("512MiB") == 512 * 2**20
    assert fb.parse_bytes("2TB") == 2e12


@pytest.mark.parametrize("text", ["", "abc", "175X", "1.2.3B", "-5B", "B175", "nan"])
def test_parse_quantity_rejects_nonsense(text):
    with pytest.raises(ValueError, match="cannot read .* as a count|must be a finite number"):
        fb.parse_quantity(text)


@pytest.mark.parametrize("text", ["80", "80 GiBs", "eighty GB", "-1GB", "1e400 GB"])
def test_parse_bytes_rejects_nonsense(text):
    with pytest.raises(ValueError, match="cannot read .* as a size|must be a finite number"):
        fb.parse_bytes(text)


@pytest.mark.parametrize("fmt", [fb.format_flops, fb.format_bytes, fb.format_duration])
@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "12", None, True])
def test_formatters_reject_bad_numbers(fmt, bad):
    with pytest.raises(ValueError, match="must be a"):
        fmt(bad)


def test_format_sci_and_count():
    assert fb.format_sci(5.76e23) == "5.76 × 10²³"
    assert fb.format_sci(3.59e11, "FLOPs") == "3.59 × 10¹¹ FLOPs"
    assert fb.format_sci(0.0015, digits=2) == "1.5 × 10⁻³"
    assert fb.units.power_of_ten(-12) == "10⁻¹²"
    assert fb.format_count(40.3e9) == "40.3B"
    assert fb.format_count(358e6) == "358M"
    assert fb.format_count(1.43e12) == "1.43T"
    assert fb.format_count(2048) == "2.05K" and fb.format_count(12) == "12"
    assert fb.parse_quantity(fb.format_count(175e9)) == 175e9


@pytest.mark.parametrize("fmt", [fb.format_sci, fb.format_count])
@pytest.mark.parametrize("bad", [-1, float("nan"), "12", None])
def test_sci_and_count_reject_bad_numbers(fmt, bad):
    with pytest.raises(ValueError, match="must be a"):
        fmt(bad)


def test_rates_and_datasheet_spellings():
    assert fb.parse_rate("3.35 TB/s") == 3.35e12 and fb.parse_rate("900GBps") == 900e9
    assert fb.parse_rate("50 GiB/s") == 50 * 2**30
    assert fb.parse_flop_rate("989 TFLOPS") == fb.parse_flop_rate("989 TFLOP/s") == 989e12
    assert fb.format_rate(3.35e12) == "3.35 TB/s"
    assert fb.parse_rate(fb.format_rate(4.8e12)) == 4.8e12


@pytest.mark.parametrize("text", ["80Gb", "400 Gb/s", "1 kb"])
def test_a_lowercase_b_is_bits_not_bytes(text):
    parse = fb.parse_rate if "/" in text else fb.parse_bytes
    with pytest.raises(ValueError, match="lowercase b means bits"):
        parse(text)


def test_rounding_happens_before_the_unit_is_chosen():
    assert fb.format_bytes(999_999) == "1 MB" and fb.format_bytes(999_499) == "999 kB"
    assert fb.format_duration(59.9996) == "1 min" and fb.format_duration(59.4) == "59.4 s"
    assert fb.format_flops(999.95e12, per_second=True) == "1 PFLOP/s"
    assert fb.format_count(999_950) == "1M"
    assert fb.format_bytes(1e200) == "1e+185 PB"          # beyond the largest unit: an exponent


@pytest.mark.parametrize("kwargs, word", [
    (dict(digits=0), "digits"), (dict(digits=2.5), "digits"), (dict(digits=True), "digits"),
])
def test_formatter_options_are_validated(kwargs, word):
    with pytest.raises(ValueError, match=word):
        fb.format_bytes(1e9, **kwargs)
    with pytest.raises(ValueError, match="binary"):
        fb.format_bytes(1e9, binary="yes")
    with pytest.raises(ValueError, match="per_second"):
        fb.format_flops(1e9, per_second=1)
