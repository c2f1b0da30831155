"""KV cache bytes, generation FLOPs and the decode roofline (chapter "Inference").

Expected values are written as the arithmetic of the derivation or taken from the cited sources;
generation FLOPs and cache bytes are also held exactly against the reference model's generation
loop with a real cache.
"""

import dataclasses
from types import MappingProxyType

import numpy as np
import pytest

import flopsbook as fb
from flopsbook.inference import DecodeStep, critical_batch, max_batch
from flopsbook.reference.model import ReferenceTransformer
from flopsbook.registry import Hardware

# A model small enough to count by hand: 1 layer, d=4, 2 heads of 2, d_ff=16, vocab 10.
# Per token per layer: Q, K, V, O = 4 * 2*4*4 = 128, FFN = 2 * 2*4*16 = 256: A = 384.
# Per attended (query, key) pair: scores + weighted values = 2 heads * (2*2 + 2*2) = 16.
# Logits of one position: 2*4*10 = 80.
TOY = fb.Transformer(n_layers=1, d_model=4, n_heads=2, d_ff=16, vocab_size=10, seq_len=16)
# A device with round numbers: 1e12 FLOP/s (bf16), 1e9 bytes/s, 1e6 bytes.
TOY_HW = Hardware("toy", MappingProxyType({"bf16": 1e12, "fp8": 2e12}), 1e6, 1e9, "none")


# --- kv_cache_bytes ---------------------------------------------------------------------------

def test_kv_cache_bytes_published_figures():
    # kipply, "Transformer Inference Arithmetic": 52B model (64 layers, d_model 8192), 16 bits.
    m52 = fb.Transformer(n_layers=64, d_model=8192, n_heads=64, vocab_size=50257, seq_len=2048)
    assert fb.kv_cache_bytes(m52, 1, 1) == 2_097_152
    # GPT-3: "about 9.7 GB" per 2048-token sequence in 16 bits.
    assert fb.kv_cache_bytes(fb.model("gpt3-175b"), 1, 2048) == 2 * 96 * 96 * 128 * 2048 * 2
    assert round(fb.kv_cache_bytes(fb.model("gpt3-175b"), 1, 2048) / 1e9, 1) == 9.7


def test_kv_cache_bytes_uses_kv_heads():
    # Llama 2 70B: 80 layers, 8 KV heads of 128 (GQA); PaLM: 118 layers, one KV head of 256.
    assert fb.kv_cache_bytes(fb.model("llama2-70b"), 1, 1) == 2 * 80 * 8 * 128 * 2
    assert fb.kv_cache_bytes(fb.model("palm-540b"), 1, 1) == 2 * 118 * 1 * 256 * 2
    mha = dataclasses.replace(fb.model("llama2-70b"), n_kv_heads=64)
    assert fb.kv_cache_bytes(mha, 3, 100) == 8 * fb.kv_cache_bytes(fb.model("llama2-70b"), 3, 100)


def test_kv_cache_bytes_gpt2_seed_counts_values():
    # The textbook's "2 x 12 x 1 x 256 x 768 = 4.7 MB" is values; bytes are 2x (16-bit).
    g2 = fb.model("gpt2-small")
    assert fb.kv_cache_bytes(g2, 1, 256) == 2 * (2 * 12 * 1 * 256 * 768) == 9_437_184
    assert fb.kv_cache_bytes(g2, 1, 256, bytes_per_value=0.5) == 2 * 12 * 256 * 768 / 2


def test_kv_cache_bytes_broadcasts():
    out = fb.kv_cache_bytes(TOY, np.array([1, 2, 3])[:, None], np.array([10, 20]), 2)
    per_token = 2 * 1 * 2 * 2 * 2  # 2 (k, v) * layers * kv heads * d_head * bytes
    assert out.shape == (3, 2) and out.dtype == np.float64
    assert np.array_equal(out, per_token * np.array([[10, 20], [20, 40], [30, 60]]))
    assert isinstance(fb.kv_cache_bytes(TOY, 1, 1), float)


@pytest.mark.parametrize("kwargs, word", [
    (dict(batch=0, seq_len=1), "batch"), (dict(batch=1, seq_len=1.5), "seq_len"),
    (dict(batch=1, seq_len=1, bytes_per_value=-1), "bytes_per_value"),
    (dict(batch=["2"], seq_len=1), "batch"), (dict(batch=1, seq_len=np.nan), "seq_len"),
])
def test_kv_cache_bytes_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        fb.kv_cache_bytes(TOY, **kwargs)


def test_kv_cache_bytes_takes_a_transformer_or_a_name():
    assert fb.kv_cache_bytes("gpt2-small", 1, 1) == fb.kv_cache_bytes(fb.model("gpt2-small"), 1, 1)
    with pytest.raises(ValueError, match="m must be a Transformer or a model name"):
        fb.kv_cache_bytes(["gpt2-small"], 1, 1)


# --- generation_flops ---------------------------------------------------------------------------

def test_generation_flops_by_hand():
    A, pair, logits = 384, 16, 80
    # P=2, T=3. Cached: prefill of 2 tokens, then steps attending to 3 and 4 keys.
    assert fb.generation_flops(TOY, 2, 3) == A * 4 + pair * (3 + 3 + 4) + 3 * logits
    assert fb.generation_flops(TOY, 2, 3, causal=False) == A * 4 + pair * (4 + 3 + 4) + 3 * logits
    # Uncached: full passes over 2, 3 and 4 tokens.
    assert fb.generation_flops(TOY, 2, 3, kv_cache=False) == \
        A * (2 + 3 + 4) + pair * (3 + 6 + 10) + 3 * logits
    assert fb.generation_flops(TOY, 2, 3, kv_cache=False, causal=False) == \
        A * (2 + 3 + 4) + pair * (4 + 9 + 16) + 3 * logits


def test_one_new_token_is_one_forward_with_or_without_cache():
    for m in (TOY, fb.model("llama2-70b"), fb.model("chinchilla-70b")):
        for causal in (True, False):
            assert fb.generation_flops(m, 37, 1, causal=causal) == \
                fb.generation_flops(m, 37, 1, kv_cache=False, causal=causal)


@pytest.mark.parametrize("name", ["gpt2-small", "llama3-8b", "palm-540b", "chinchilla-70b"])
def test_cached_causal_generation_is_one_causal_pass(name):
    # Each (query, key) pair once: the layers of one causal forward over P + T - 1 tokens.
    m = fb.model(name)
    P, T = np.array([1, 100, 2000]), np.array([1, 50, 3000])
    layers = m.n_layers * fb.layer_flops(m, P + T - 1, causal=True)["total"]
    assert np.allclose(fb.generation_flops(m, P, T), layers + T * 2 * m.d_model * m.vocab_size,
                       rtol=1e-12)


def test_seed_speedups():
    # From a one-token prompt the weights' ratio is sum(s)/T = (T+1)/2 -- 128.5 for n = 256, not
    # the textbook's 64 -- and attention's is [T(T+1)(T+2)/6] / [T(T+1)/2] = (T+2)/3.
    T = 256
    m = dataclasses.replace(TOY, vocab_size=1)  # logits: 2*4*1 = 8 per step
    sum_s, pairs_uncached, pairs_cached = T * (T + 1) / 2, T * (T + 1) * (T + 2) / 6, T * (T + 1) / 2
    expected = (384 * sum_s + 16 * pairs_uncached + 8 * T) / (384 * T + 16 * pairs_cached + 8 * T)
    ratio = fb.generation_flops(m, 1, T, kv_cache=False) / fb.generation_flops(m, 1, T)
    assert ratio == pytest.approx(expected, rel=1e-12)
    assert (T + 2) / 3 < ratio < (T + 1) / 2
    g2 = fb.model("gpt2-small")
    ratio_g2 = fb.generation_flops(g2, 1, T, kv_cache=False) / fb.generation_flops(g2, 1, T)
    assert ratio_g2 < (T + 1) / 2  # the logits are computed once per step either way


CONFIGS = [
    TOY,
    fb.Transformer(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=80, ffn="swiglu",
                   vocab_size=53, seq_len=32, positional="rope", norm="rmsnorm", bias=False,
                   tied_embeddings=False),
    fb.Transformer(n_layers=1, d_model=16, n_heads=4, n_kv_heads=1, d_head=6, vocab_size=20,
                   seq_len=32, positional="none"),
]


@pytest.mark.parametrize("m", CONFIGS, ids=["toy-mha", "gqa-swiglu-rope", "mqa"])
@pytest.mark.parametrize("P, T, batch", [(1, 1, 1), (4, 1, 2), (3, 6, 2), (6, 5, 1)])
def test_generation_matches_reference(m, P, T, batch):
    ref = ReferenceTransformer(m, seed=1)
    prompt = np.random.default_rng(P * 10 + T).integers(0, m.vocab_size, (batch, P))
    for kv in (True, False):
        for causal in (True, False):
            with fb.count_flops(causal=causal) as c:
                ref.generate(prompt, T, kv_cache=kv)
            assert c.total() == batch * fb.generation_flops(m, P, T, kv_cache=kv, causal=causal)
        expected = fb.kv_cache_bytes(m, batch, P + T - 1, bytes_per_value=8) if kv else 0
        assert ref.kv_cache_nbytes == expected


def test_generation_flops_broadcasts():
    out = fb.generation_flops(TOY, np.array([1, 2])[:, None], np.array([1, 2, 3]), kv_cache=False)
    assert out.shape == (2, 3)
    assert out[1, 2] == fb.generation_flops(TOY, 2, 3, kv_cache=False)
    assert isinstance(fb.generation_flops(TOY, 1, 1), float)


@pytest.mark.parametrize("args, kwargs, word", [
    ((0, 1), {}, "prompt_len"), ((1, 0), {}, "new_tokens"), ((1, 2.5), {}, "new_tokens"),
    ((1, 1), {"kv_cache": "yes"}, "kv_cache"), ((1, 1), {"causal": 1}, "causal"),
])
def test_generation_flops_errors(args, kwargs, word):
    with pytest.raises(ValueError, match=word):
        fb.generation_flops(TOY, *args, **kwargs)
    with pytest.raises(ValueError, match="Transformer"):
        fb.generation_flops(None, 1, 1)


# --- decode_step_time and critical_batch ----------------------------------------------------------

def test_decode_step_by_hand():
    n = fb.param_count(TOY)
    step = fb.decode_step_time(TOY, TOY_HW, 3, 5)
    flops = 3 * (384 + 16 * 5 + 80)
    moved = 2 * n + 3 * (5 * 2 * 1 * 2 * 2 * 2)  # weights + 3 caches of 5 tokens
    assert isinstance(step, DecodeStep)
    assert step.flops == flops and step.bytes == moved
    assert step.compute_time == flops / 1e12 and step.memory_time == moved / 1e9
    assert step.time == moved / 1e9 and step.bound == "memory"
    assert step.intensity == flops / moved and step.tokens_per_second == 3 / step.time
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.time = 0


def test_decode_step_precisions_and_dtype():
    n = fb.param_count(TOY)
    step = fb.decode_step_time(TOY, TOY_HW, 1, 2, bytes_per_param=0.5, kv_bytes_per_value=1,
                               dtype="fp8")
    assert step.bytes == 0.5 * n + 2 * (2 * 1 * 2 * 2 * 1)
    assert step.compute_time == (384 + 16 * 2 + 80) / 2e12
    with pytest.raises(ValueError, match="dtype"):
        fb.decode_step_time(TOY, TOY_HW, 1, 2, dtype="fp4")


def test_decode_one_sequence_reads_weights_for_about_one_flop_per_byte():
    # Short context, 16 bits: ~2N FLOPs for ~2N bytes (kipply's intensity ~ batch).
    step = fb.decode_step_time(fb.model("llama2-7b"), "a100-80gb", 1, 1)
    assert 0.95 < step.intensity < 1.0 and step.bound == "memory"
    assert np.isclose(step.time, 2 * fb.param_count(fb.model("llama2-7b")) / 2039e9, rtol=1e-3)


def test_decode_step_broadcasts_with_bound_array():
    step = fb.decode_step_time(fb.model("llama2-7b"), "h100-sxm", np.array([1, 10_000]), 1)
    assert list(step.bound) == ["memory", "compute"]
    assert step.time.shape == (2,) and step.time[1] == step.compute_time[1]
    grid = fb.decode_step_time(TOY, TOY_HW, np.arange(1, 4)[:, None], np.arange(1, 6))
    assert grid.time.shape == grid.bound.shape == (3, 5)


def test_decode_step_v100_uses_fp16():
    # The V100 has no bf16: the default peak is its 125 TFLOP/s fp16 tensor-core peak.
    step = fb.decode_step_time(TOY, "v100", 1, 1)
    assert step.compute_time == (384 + 16 + 80) / 125e12


@pytest.mark.parametrize("kwargs, word", [
    (dict(batch=0, context=1), "batch"), (dict(batch=1, context=0), "context"),
    (dict(batch=1, context=1, bytes_per_param=0), "bytes_per_param"),
    (dict(batch=1, context=1, kv_bytes_per_value=-2), "kv_bytes_per_value"),
])
def test_decode_step_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        fb.decode_step_time(TOY, TOY_HW, **kwargs)


def test_decode_step_hardware_errors():
    with pytest.raises(ValueError, match="hardware"):
        fb.decode_step_time(TOY, "a100", 1, 1)        # a name not in the registry
    with pytest.raises(ValueError, match="hardware"):
        fb.decode_step_time(TOY, 312e12, 1, 1)


def test_critical_batch_by_hand():
    # b* = W / (B_w F / P - K), F = 384 + 16 + 80 = 480 FLOPs, K = 16 bytes at context 1.
    w = 2 * fb.param_count(TOY)
    # On TOY_HW one sequence's 480 FLOPs may bring at most 1e9 * 480 / 1e12 = 0.48 bytes, but
    # its cache is 16 bytes: never compute-bound. On a device 1000x slower, from b*.
    assert critical_batch(TOY, TOY_HW, 1) == np.inf
    slow = Hardware("slow", MappingProxyType({"bf16": 1e9}), 1e6, 1e9, "none")
    b_star = critical_batch(TOY, slow, 1)
    assert b_star == pytest.approx(w / (1e9 * 480 / 1e9 - 16))
    below, above = fb.decode_step_time(TOY, slow, [int(np.floor(b_star)), int(np.ceil(b_star))], 1).bound
    assert (below, above) == ("memory", "compute")


def test_critical_batch_registry():
    # At context 1 it is close to the device's balance (A100-40GB: 312e12 / 1.555e12).
    b = critical_batch(fb.model("llama2-7b"), "a100-40gb", 1)
    assert 0.95 < b / (312e12 / 1.555e12) < 1.1
    # GPT-3 at 2048 tokens: each sequence's 9.7 GB cache outweighs its ~0.36 TFLOPs.
    assert critical_batch(fb.model("gpt3-175b"), "h100-sxm", 2048) == np.inf
    out = critical_batch(fb.model("llama2-70b"), "a100-80gb", np.array([1, 2048, 8192]))
    assert out.shape == (3,) and np.isfinite(out[:2]).all() and out[2] == np.inf
    # Fewer weight bytes (int4): compute-bound sooner.
    assert critical_batch(fb.model("llama2-7b"), "a100-40gb", 1, bytes_per_param=0.5) < b / 3


# --- max_batch ------------------------------------------------------------------------------------

# TOY's parameters by hand: embeddings 10*4 + positions 16*4 = 104; one layer: QKV 4*12 + 12 = 60,
# output 4*4 + 4 = 20, FFN (4*16 + 16) + (16*4 + 4) = 148, two LayerNorms 2*8 = 16; final
# LayerNorm 8. 104 + 244 + 8 = 356 parameters, 712 bytes at 16 bits. KV cache: 2 (k, v) * 1 layer
# * 2 heads * d_head 2 = 8 values per token, 16 bytes at 16 bits: 80 bytes for 5 tokens.
TOY_PARAMS, TOY_KV_PER_TOKEN = 356, 16


def test_max_batch_by_hand():
    assert fb.param_count(TOY) == TOY_PARAMS
    # TOY_HW holds 1e6 bytes: (1e6 - 712) / 80 = 12,491.1 sequences of 5 tokens.
    assert max_batch(TOY, TOY_HW, 5) == 12_491
    assert max_batch(TOY, TOY_HW, 5, kv_bytes_per_value=1) == (1e6 - 712) // 40 == 24_982
    assert max_batch(TOY, TOY_HW, 5, bytes_per_param=0.5) == (1e6 - 178) // 80 == 12_497
    assert max_batch(TOY, TOY_HW, 5, n_devices=2) == (2e6 - 712) // 80 == 24_991
    assert isinstance(max_batch(TOY, TOY_HW, 5), float)


def test_max_batch_edges():
    # Exactly three caches beside the weights fit; one byte less and only two do.
    exact = Hardware("exact", MappingProxyType({"bf16": 1e12}), 712 + 3 * 80, 1e9, "none")
    assert max_batch(TOY, exact, 5) == 3
    short = Hardware("short", MappingProxyType({"bf16": 1e12}), 712 + 3 * 80 - 1, 1e9, "none")
    assert max_batch(TOY, short, 5) == 2
    # Weights alone too large: 0, not a negative count.
    tiny = Hardware("tiny", MappingProxyType({"bf16": 1e12}), 700, 1e9, "none")
    assert max_batch(TOY, tiny, 5) == 0
    assert max_batch(TOY, tiny, 5, n_devices=2) == (1400 - 712) // 80 == 8


def test_max_batch_registry():
    # Llama 2 70B (68,976,648,192 parameters, released checkpoint) on two H100s (80 GiB each),
    # 4,096 tokens: 2 * 80 * 2**30 - 2 * 68,976,648,192 = 33,845,395,456 bytes free; a sequence's
    # cache is 2 * 80 layers * 8 KV heads * 128 * 2 bytes * 4096 = 1,342,177,280 bytes: 25.2.
    l70 = fb.model("llama2-70b")
    free = 2 * 80 * 2**30 - 2 * 68_976_648_192
    assert free == 33_845_395_456
    per_seq = 2 * 80 * 8 * 128 * 2 * 4096
    assert max_batch(l70, "h100-sxm", 4096, n_devices=2) == free // per_seq == 25
    assert max_batch(l70, "h100-sxm", 4096, n_devices=2, kv_bytes_per_value=1) == 50
    # One H100 cannot hold its 138 GB of 16-bit weights.
    assert max_batch(l70, "h100-sxm", 4096) == 0


def test_max_batch_broadcasts():
    out = max_batch(TOY, TOY_HW, np.array([5, 10])[:, None], n_devices=np.array([1, 2, 3]))
    assert out.shape == (2, 3) and out.dtype == np.float64
    expected = [[(k * 1e6 - 712) // (TOY_KV_PER_TOKEN * c) for k in (1, 2, 3)] for c in (5, 10)]
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("kwargs, word", [
    (dict(context=0), "context"), (dict(context=2.5), "context"),
    (dict(context=5, bytes_per_param=0), "bytes_per_param"),
    (dict(context=5, kv_bytes_per_value=-1), "kv_bytes_per_value"),
    (dict(context=5, n_devices=0), "n_devices"), (dict(context=5, n_devices=1.5), "n_devices"),
    (dict(context=["5"]), "context"), (dict(context="5 tokens"), "context"),
])
def test_max_batch_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        max_batch(TOY, TOY_HW, **kwargs)


def test_max_batch_needs_a_model_and_hardware():
    with pytest.raises(ValueError, match="m: unknown model name"):
        max_batch("llama-2-7b", TOY_HW, 5)
    with pytest.raises(ValueError, match="hardware"):
        max_batch(TOY, "a100", 5)


def test_calculator_report():
    from flopsbook.viz.inference import inference_report

    text = inference_report("llama3-8b", "h100-sxm", 1, 2048)
    assert "memory-bound" in text and "fits" in text
    # 80 GiB - 2 * 8,030,261,248 bytes of weights, 2 * 32 * 8 * 128 * 2 * 2048 bytes per sequence.
    room = (80 * 2**30 - 2 * 8_030_261_248) // (2 * 32 * 8 * 128 * 2 * 2048)
    assert room == 260 and "room for 260 sequences" in text
    # GPT-3's 2 x 174.6B bytes of weights need 5 H100s (80 GiB each); then it fits and the
    # step splits over the 5 devices.
    alone = inference_report("gpt3-175b", "h100-sxm", 1, 2048)
    assert "does not fit: it needs at least 5 devices" in alone and "tokens/s" not in alone
    assert "tokens/s" in inference_report("gpt3-175b", "h100-sxm", 1, 2048, n_devices=5)
    # Latencies are scaled to a unit, never "5,461,333,360.54 ms".
    slow = inference_report("llama3-8b", "h100-sxm", 1, 2048)
    assert " ms " in slow and not any(len(w) > 10 and w[0].isdigit() for w in slow.split())
    with pytest.raises(ValueError, match="weights and cache"):
        inference_report(weights="int3")
