"""Registry of models and accelerators: names, errors and sources."""

import re
from pathlib import Path

import pytest

import flopsbook as fb

BIB = (Path(__file__).parents[1] / "book" / "references.bib").read_text()
BIB_KEYS = set(re.findall(r"@\w+\{([^,]+),", BIB))

REQUIRED_MODELS = ["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt3-175b",
                   "bert-base", "llama-7b", "llama-65b", "llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b",
                   "llama3-70b", "chinchilla-70b", "gopher-280b", "palm-540b"]
REQUIRED_HARDWARE = ["v100", "a100-40gb", "a100-80gb", "h100-sxm", "h200", "tpu-v4"]


def test_required_models_and_hardware_present():
    assert set(REQUIRED_MODELS) <= set(fb.models())
    assert set(REQUIRED_HARDWARE) <= set(fb.hardwares())


@pytest.mark.parametrize("name", fb.models())   # every model, not only the required ones
def test_every_model_cites_a_bib_key(name):
    m = fb.model(name)
    assert m.name == name and m.source in BIB_KEYS


@pytest.mark.parametrize("name", fb.hardwares())
def test_every_accelerator_cites_a_bib_key(name):
    assert fb.hardware(name).source in BIB_KEYS


def test_unknown_model_lists_closest_names():
    with pytest.raises(ValueError, match=r"unknown model name 'gpt3'.*Closest: .*gpt3-175b"):
        fb.model("gpt3")
    with pytest.raises(ValueError, match="Allowed: .*palm-540b"):
        fb.model("no-such-model")


def test_unknown_hardware_and_dtype():
    with pytest.raises(ValueError, match=r"unknown hardware name 'a100'.*Closest: .*a100-80gb"):
        fb.hardware("a100")
    with pytest.raises(ValueError, match=r"unknown dtype \(for v100\) name 'bf16'.*Allowed: fp16, fp32"):
        fb.hardware("v100").peak("bf16")


def test_datasheet_figures():
    # Dense peaks and memory from the vendors' datasheets (see book/references.bib).
    a100 = fb.hardware("a100-80gb")
    assert a100.peak("bf16") == 312e12 and a100.peak("tf32") == 156e12
    assert a100.peak("fp32") == 19.5e12
    assert a100.memory_bytes == 80 * 2**30 and a100.bandwidth == 2.039e12
    assert fb.hardware("a100-40gb").bandwidth == 1.555e12
    h100 = fb.hardware("h100-sxm")
    assert h100.peak("bf16") == pytest.approx(1979e12 / 2, rel=1e-3)  # half the sparse figure
    assert h100.bandwidth == 3.35e12
    h200 = fb.hardware("h200")
    # Datasheet "141 GB"; nvidia-smi's total is 143,771 MiB (140.4 GiB), which the registry holds.
    assert h200.memory_bytes == 143_771 * 2**20 and h200.bandwidth == 4.8e12
    assert h200.peak("bf16") == h100.peak("bf16")
    assert fb.hardware("v100").peak("fp16") == 125e12
    assert fb.hardware("tpu-v4").peak("bf16") == 275e12


def test_hardware_is_immutable():
    h = fb.hardware("h100-sxm")
    with pytest.raises(TypeError):
        h.peak_flops["bf16"] = 1.0


def test_default_16bit_peak_and_balance():
    # bf16 where the device has it; the V100 has only fp16 tensor cores.
    assert fb.hardware("v100").peak_16bit == 125e12
    assert fb.hardware("a100-80gb").peak_16bit == 312e12
    assert fb.hardware("a100-40gb").balance == pytest.approx(312e12 / 1.555e12)


@pytest.mark.parametrize("name", fb.models())
def test_every_model_says_what_it_does_not_model(name):
    # The notes reach the book's tables (flopsbook.viz.registry_notes): none may be empty.
    assert len(fb.model(name).notes) > 20
