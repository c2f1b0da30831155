"""Inference beyond the dense transformer (chapter "Beyond the dense transformer"): the KV cache
of latent attention and rolling windows, generation FLOPs of MoE, MLA and local layers, the
expected experts a decode batch reads, and the MoE decode roofline.

Expected values are the arithmetic of the derivation, written from the registry's published
shapes (never the package's output); the expected experts are also checked against a Monte
Carlo router (flopsbook.reference.routing), and generation against sums of ``layer_flops``
passes, an independent path through the package.
"""

import dataclasses
from types import MappingProxyType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flopsbook as fb
from flopsbook.reference.routing import HitEstimate, simulate_experts_hit
from flopsbook.registry import Hardware
from flopsbook.spec import ffn_params

MIXTRAL, DSV3, GEMMA, MISTRAL = (fb.model(n) for n in
                                 ("mixtral-8x7b", "deepseek-v3", "gemma3-27b", "mistral-7b"))
K32, K128 = 32768, 131072


def all_global(m):
    return dataclasses.replace(m, window=None, global_every=None)


# --- kv_cache_bytes ---------------------------------------------------------------------------

def test_mistral_rolling_cache_is_the_window():
    # 32 layers x 8 KV heads x 128, key and value, 16 bits; every layer keeps 4,096 tokens.
    per_token_layer = 2 * 8 * 128 * 2
    assert fb.kv_cache_bytes(MISTRAL, 1, K32) == 32 * 4096 * per_token_layer
    assert fb.kv_cache_bytes(all_global(MISTRAL), 1, K32) == 32 * K32 * per_token_layer
    assert fb.kv_cache_bytes(all_global(MISTRAL), 1, K32) / fb.kv_cache_bytes(MISTRAL, 1, K32) \
        == 32768 / 4096 == 8
    # Up to the window nothing is dropped.
    assert fb.kv_cache_bytes(MISTRAL, 3, 4096) == fb.kv_cache_bytes(all_global(MISTRAL), 3, 4096)
    assert fb.kv_cache_bytes(MISTRAL, 1, 4097) == fb.kv_cache_bytes(MISTRAL, 1, 4096)


def test_deepseek_v3_caches_its_latent_and_rotary_key():
    # 61 layers x (kv_lora_rank 512 + qk_rope_dim 64) values per token, 2 bytes each.
    assert fb.kv_cache_bytes(DSV3, 1, 1) == 61 * (512 + 64) * 2 == 70_272
    assert fb.kv_cache_bytes(DSV3, 4, K32, bytes_per_value=1) == 4 * K32 * 61 * 576
    # What a naive implementation would cache: 128 heads' keys (128 + 64) and values (128).
    naive = 61 * 128 * (128 + 64 + 128) * 2
    assert naive / fb.kv_cache_bytes(DSV3, 1, 1) == pytest.approx(71.11, abs=0.01)
    # DeepSeek-V2-Lite: 27 layers, the same latent width.
    assert fb.kv_cache_bytes("deepseek-v2-lite", 1, 1) == 27 * 576 * 2


def test_gemma3_five_local_to_one_global():
    # 62 layers, global_every=6: layers 6, 12, ..., 60 are global (10), 52 local of 1,024 keys;
    # 16 KV heads of 128.
    per = 2 * 16 * 128 * 2
    for s in (K32, K128):
        assert fb.kv_cache_bytes(GEMMA, 1, s) == per * (10 * s + 52 * 1024)
        assert fb.kv_cache_bytes(all_global(GEMMA), 1, s) == per * 62 * s
    ratio = [fb.kv_cache_bytes(all_global(GEMMA), 1, s) / fb.kv_cache_bytes(GEMMA, 1, s)
             for s in (K32, K128)]
    assert ratio == pytest.approx([62 * K32 / (10 * K32 + 52 * 1024),
                                   62 * K128 / (10 * K128 + 52 * 1024)], rel=1e-15)
    assert 5.0 < ratio[0] < ratio[1] < 6.2    # tends to 62 / 10 as the context grows
    assert fb.kv_cache_bytes(GEMMA, 1, 1000) == fb.kv_cache_bytes(all_global(GEMMA), 1, 1000)


def test_gpt_oss_alternates_banded_and_full_and_moe_leaves_the_cache_alone():
    # gpt-oss-20b: 24 layers, 12 banded (128 keys) and 12 full; 8 KV heads of 64.
    assert fb.kv_cache_bytes("gpt-oss-20b", 1, 4096) == 2 * 8 * 64 * 2 * (12 * 4096 + 12 * 128)
    # Mixtral: experts do not change the cache (32 layers, 8 KV heads of 128, no window).
    assert fb.kv_cache_bytes(MIXTRAL, 2, K32) == 2 * 32 * 2 * 8 * 128 * K32 * 2


# --- hand-countable toy models ----------------------------------------------------------------

# d=4, 2 heads of 2, GELU FFN of 16: per token per layer Q, K, V, O = 4 * 2*4*4 = 128 and
# FFN 2 * 2*4*16 = 256 (A = 384); per attended pair 2 heads * (2*2 + 2*2) = 16; logits 80.
BASE = dict(d_model=4, n_heads=2, d_ff=16, vocab_size=10, seq_len=64)
A, PAIR, LOGITS = 384, 16, 80
# Layer 1 local (window 3), layer 2 global.
WINDOWED = fb.Transformer(n_layers=2, window=3, global_every=2, **BASE)
# Layer 1 dense, layer 2 MoE: router 2*4*4 = 32, 2 routed + 1 shared expert of width 8:
# 3 * (2 * 2*4*8) = 384; the MoE layer's per-token FLOPs are 128 + 32 + 384 = 544.
MOE = fb.Transformer(n_layers=2, n_experts=4, top_k=2, n_shared_experts=1, d_ff_expert=8,
                     n_dense_layers=1, **BASE)
# MLA: d=8, 2 heads, d_head 4 + rotary 2 (d_qk 6, d_attn 12), latent 3, value heads 5, query
# latent 6. Naive per token (multiply-adds): query 6*(8 + 12) = 120, latent and rotary key
# 8*(3 + 2) = 40, key/value up-projection 3*2*(4 + 5) = 54, output 2*5*8 = 80; FFN 2*8*16.
# Absorbed step: no up-projection; q_nope to latent 2*4*3 = 24; latent to values 2*3*5 = 30.
MLA = fb.Transformer(n_layers=1, d_model=8, n_heads=2, d_head=4, qk_rope_dim=2, kv_lora_rank=3,
                     v_head_dim=5, q_lora_rank=6, d_ff=16, vocab_size=10, seq_len=64,
                     positional="rope", norm="rmsnorm", bias=False)
MLA_NAIVE = 2 * (120 + 40 + 54 + 80) + 2 * 2 * 8 * 16        # 588 + 512 per token
MLA_NAIVE_PAIR = 2 * 2 * 6 + 2 * 2 * 5                        # scores over d_qk, values 5
MLA_STEP = 2 * (120 + 40 + 24) + 2 * (30 + 80) + 2 * 2 * 8 * 16
MLA_STEP_PAIR = 2 * 2 * (3 + 2) + 2 * 2 * 3                   # latent + rotary, latent
MLA_LOGITS = 2 * 8 * 10


def test_windowed_generation_by_hand():
    # P=2, T=4. Cached: prefill of 2 (3 causal pairs in either layer), then steps at contexts
    # 3, 4, 5: the local layer sees 3, 3, 3 keys, the global one 3, 4, 5.
    assert fb.generation_flops(WINDOWED, 2, 4) == \
        2 * A * 5 + PAIR * ((3 + 9) + (3 + 12)) + 4 * LOGITS
    assert fb.generation_flops(WINDOWED, 2, 4, causal=False) == \
        2 * A * 5 + PAIR * ((4 + 9) + (4 + 12)) + 4 * LOGITS
    # Uncached: passes over 2, 3, 4, 5 tokens. Causal pairs with 3 keys at most: 3, 6, 9, 12;
    # global 3, 6, 10, 15. A dense kernel computes all s*s in both layers.
    assert fb.generation_flops(WINDOWED, 2, 4, kv_cache=False) == \
        2 * A * 14 + PAIR * ((3 + 6 + 9 + 12) + (3 + 6 + 10 + 15)) + 4 * LOGITS
    assert fb.generation_flops(WINDOWED, 2, 4, kv_cache=False, causal=False) == \
        2 * A * 14 + PAIR * 2 * (4 + 9 + 16 + 25) + 4 * LOGITS
    # A prompt beyond the window: P=5, T=2; local prefill 3+3+3 = 6 + 3 + 3 = 12 pairs.
    assert fb.generation_flops(WINDOWED, 5, 2) == \
        2 * A * 6 + PAIR * ((12 + 3) + (15 + 6)) + 2 * LOGITS


def test_moe_generation_by_hand():
    # P=3, T=2: 4 tokens through each layer; pairs 6 (prefill) + 4 (the step) per layer.
    assert fb.generation_flops(MOE, 3, 2) == (A + 544) * 4 + 2 * PAIR * 10 + 2 * LOGITS
    assert fb.generation_flops(MOE, 3, 2, kv_cache=False) == \
        (A + 544) * (3 + 4) + 2 * PAIR * (6 + 10) + 2 * LOGITS


def test_mla_generation_naive_prefill_absorbed_steps_by_hand():
    # P=3, T=3: a naive prefill of 3 tokens (6 pairs), then absorbed steps at contexts 4 and 5.
    assert fb.generation_flops(MLA, 3, 3) == \
        3 * MLA_NAIVE + 6 * MLA_NAIVE_PAIR + 2 * MLA_STEP + 9 * MLA_STEP_PAIR + 3 * MLA_LOGITS
    assert fb.generation_flops(MLA, 3, 3, causal=False) == \
        3 * MLA_NAIVE + 9 * MLA_NAIVE_PAIR + 2 * MLA_STEP + 9 * MLA_STEP_PAIR + 3 * MLA_LOGITS
    # Without a cache every pass is a naive full pass: 3 + 4 + 5 tokens, 6 + 10 + 15 pairs.
    assert fb.generation_flops(MLA, 3, 3, kv_cache=False) == \
        12 * MLA_NAIVE + 31 * MLA_NAIVE_PAIR + 3 * MLA_LOGITS
    assert fb.decode_step_time(MLA, "h100-sxm", 2, 7).flops == \
        2 * (MLA_STEP + 7 * MLA_STEP_PAIR + MLA_LOGITS)


# --- generation against layer_flops (the stack's own per-layer counts) --------------------------

GEN_MODELS = ["mistral-7b", "mixtral-8x7b", "gemma3-27b", "gpt-oss-20b", "qwen3-30b-a3b"]


@pytest.mark.parametrize("name", GEN_MODELS)
def test_cached_causal_generation_is_one_windowed_causal_pass(name):
    # Without MLA a decode step's keys are a causal pass's row, capped at the window: the cache
    # computes the pairs of one causal pass over P + T - 1 tokens exactly once.
    m = fb.model(name)
    P, T = np.array([1, 100, 2000, 5000]), np.array([1, 3000, 50, 9000])
    layers = m.n_layers * fb.layer_flops(m, P + T - 1, causal=True)["total"]
    assert np.allclose(fb.generation_flops(m, P, T), layers + T * 2 * m.d_model * m.vocab_size,
                       rtol=1e-12)


@pytest.mark.parametrize("m", [WINDOWED, MOE, MLA, GEMMA, DSV3, fb.model("gpt-oss-20b")],
                         ids=["windowed", "moe", "mla", "gemma3", "deepseek-v3", "gpt-oss"])
@pytest.mark.parametrize("causal", [True, False])
def test_uncached_generation_is_a_sum_of_full_passes(m, causal):
    # Full passes are naive for MLA: layer_flops counts exactly that.
    for P, T in ((1, 1), (2, 7), (1000, 40), (1100, 3)):
        passes = sum(m.n_layers * fb.layer_flops(m, s, causal=causal)["total"]
                     + 2 * m.d_model * m.vocab_size for s in range(P, P + T))
        assert fb.generation_flops(m, P, T, kv_cache=False, causal=causal) == \
            pytest.approx(passes, rel=1e-12)


@pytest.mark.parametrize("m", [MLA, DSV3, GEMMA, MIXTRAL, WINDOWED],
                         ids=["mla", "deepseek-v3", "gemma3", "mixtral", "windowed"])
def test_each_cached_step_is_a_decode_step(m):
    # One more token costs one decode step at the context it reaches; the first is the prefill.
    P, T = 1500, np.arange(1, 6)
    steps = fb.generation_flops(m, P, T + 1) - fb.generation_flops(m, P, T)
    one = fb.decode_step_time(m, "h100-sxm", 1, P + T).flops
    assert np.allclose(steps, one, rtol=1e-9)
    prefill = m.n_layers * fb.layer_flops(m, P, causal=True)["total"] \
        + 2 * m.d_model * m.vocab_size
    assert fb.generation_flops(m, P, 1) == pytest.approx(prefill, rel=1e-12)


def test_deepseek_v3_decode_step_by_hand():
    # 61 layers, 128 heads. Absorbed: each cached key costs 2*128*(512 + 64) + 2*128*512 FLOPs
    # per layer and 576 values of cache; the projections of one token: query 1536*(7168 +
    # 128*192), latent 7168*576, q_nope to latent 128*128*512, latent to values 128*512*128,
    # W_o 128*128*7168; 3 dense layers (SwiGLU 18432), 58 MoE (router 256, 8 + 1 experts of
    # 2048); logits 7168 x 129280.
    H, d = 128, 7168
    attn = 2 * (1536 * (d + H * 192) + d * 576 + H * 128 * 512 + H * 512 * 128 + H * 128 * d)
    dense, moe = 2 * 3 * d * 18432, 2 * d * 256 + 9 * 2 * 3 * d * 2048
    per_key = 2 * H * 576 + 2 * H * 512
    for c in (1, 4096, K128):
        expected = 61 * attn + 3 * dense + 58 * moe + 61 * per_key * c + 2 * d * 129280
        assert fb.decode_step_time(DSV3, "h100-sxm", 1, c).flops == expected
    # A cached key brings 278,528 FLOPs per 1,152 bytes of 16-bit cache: 241.8 FLOPs per byte
    # (test_mla_decode_stays_compute_hungry_at_long_contexts).
    assert per_key == 278_528 and per_key / (576 * 2) == pytest.approx(241.78, abs=0.01)


def test_mixtral_and_windowed_decode_steps_by_hand():
    # Mixtral: 32 layers; Q, K, V, O 2*4096*(4096 + 2*1024 + 4096); router 2*4096*8; 2 SwiGLU
    # experts of 14336; 2*32*128*2 FLOPs per key; logits 2*4096*32000.
    layer = 2 * 4096 * (4096 + 2048 + 4096) + 2 * 4096 * 8 + 2 * 3 * 2 * 4096 * 14336
    for c in (1, 777, K32):
        assert fb.decode_step_time(MIXTRAL, "h100-sxm", 3, c).flops == \
            3 * (32 * (layer + 2 * 32 * 128 * 2 * c) + 2 * 4096 * 32000)
    # Mistral attends to 4,096 keys at most; Gemma 3's 52 local layers to 1,024.
    f = [fb.decode_step_time(MISTRAL, "h100-sxm", 1, c).flops for c in (4095, 4096, K32)]
    assert f[0] < f[1] == f[2]
    pair = 2 * 32 * 128 * 2
    g = fb.decode_step_time(GEMMA, "h100-sxm", 1, np.array([1024, K32])).flops
    assert g[1] - g[0] == pair * 10 * (K32 - 1024)


# --- expected_experts -------------------------------------------------------------------------

def test_expected_experts_by_hand():
    # One token meets exactly k; two tokens 2k - k^2/E (the overlap); k = E: all of them.
    assert fb.expected_experts(8, 2, 1) == 2 and fb.expected_experts(256, 8, 1) == 8
    assert fb.expected_experts(8, 2, 2) == 2 * 2 - 2 ** 2 / 8 == 3.5
    assert fb.expected_experts(256, 8, 2) == 16 - 64 / 256
    assert fb.expected_experts(8, 8, 5) == 8
    assert fb.expected_experts(128, 8, 3) == pytest.approx(128 * (1 - (15 / 16) ** 3), rel=1e-15)
    # Many experts, few tokens: about k*B, not lost to rounding against 1 (E = 10^12).
    e = 1e12
    assert fb.expected_experts(e, 2, 8) == pytest.approx(16 - 28 * 4 / e, rel=1e-14)
    # Saturation: E as the batch grows.
    assert fb.expected_experts(8, 2, 10_000) == 8


def test_expected_experts_bounds_and_broadcasting():
    E = np.array([8, 64, 128, 256])[:, None]
    k = np.array([2, 4, 8, 8])[:, None]
    B = np.array([1, 2, 7, 64, 1024])
    out = fb.expected_experts(E, k, B)
    assert out.shape == (4, 5) and out.dtype == np.float64
    assert np.all(out <= np.minimum(E, k * B) * (1 + 1e-15)) and np.all(out >= k * (1 - 1e-15))
    assert np.all(np.diff(out, axis=1) > 0)
    assert out[2, 3] == fb.expected_experts(128, 8, 64)
    assert isinstance(fb.expected_experts(8, 2, 3), float)
    assert fb.expected_experts(8, 2, "1k") == fb.expected_experts(8, 2, 1000)


@pytest.mark.parametrize("args, word", [
    ((8, 9, 1), "top_k"), ((8, 9, 1), "n_experts"), ((0, 1, 1), "n_experts"),
    ((8, 1.5, 1), "top_k"), ((8, 2, 0), "batch"), ((8, 2, 2.5), "batch"),
    (([8, 4], [2, 6], 1), "top_k"), ((8, 2, ["3"]), "batch"), (("8", 2, 1), "n_experts"),
])
def test_expected_experts_errors(args, word):
    with pytest.raises(ValueError, match=word):
        fb.expected_experts(*args)


# (E, k) of Mixtral, DeepSeek-V3, Qwen3-30B-A3B and gpt-oss-20b, batches of 1 to 48 tokens,
# and trials enough that 4 standard errors are below 1% of the mean (about twice the need).
# Tolerance: within 4 standard errors of the Monte Carlo mean, and within 1% of it.
ROUTING = [(8, 2, 1, 200), (8, 2, 3, 10_000), (8, 2, 16, 1000), (256, 8, 1, 200),
           (256, 8, 4, 1000), (256, 8, 32, 500), (128, 8, 8, 1000), (128, 8, 48, 400),
           (32, 4, 5, 3000)]


@pytest.mark.parametrize("E, k, B, trials", ROUTING)
def test_expected_experts_against_a_monte_carlo_router(E, k, B, trials):
    est = simulate_experts_hit(E, k, B, n_trials=trials, seed=E * 1000 + B)
    formula = fb.expected_experts(E, k, B)
    assert abs(est.mean - formula) <= 4 * est.stderr + 1e-12
    assert abs(est.mean - formula) <= 0.01 * formula
    assert 4 * est.stderr <= 0.01 * formula       # the test can tell a 1% error


def test_monte_carlo_router_is_seeded_and_validated():
    a, b = simulate_experts_hit(16, 2, 4, 50, seed=3), simulate_experts_hit(16, 2, 4, 50, seed=3)
    assert isinstance(a, HitEstimate) and a == b and a.n_trials == 50
    assert simulate_experts_hit(8, 2, 1, 20) == (2.0, 0.0, 20)    # one token: always k
    assert simulate_experts_hit(8, 8, 3, 20).mean == 8.0
    for kwargs, word in ((dict(top_k=9), "top_k"), (dict(batch=0), "batch"),
                         (dict(n_trials=1), "n_trials"), (dict(seed=-1), "seed"),
                         (dict(n_experts=2.0), "n_experts")):
        args = dict(n_experts=8, top_k=2, batch=2, n_trials=10) | kwargs
        with pytest.raises(ValueError, match=word):
            simulate_experts_hit(**args)


# --- the decode roofline of a mixture of experts ----------------------------------------------

def _weights_at(m, batch, bytes_per_param=2):
    """Bytes of weights read at ``batch``: all but the routed experts, then E(1 - (1-k/E)^B)
    experts of each MoE layer (written out here, not through the package)."""
    parts = fb.param_breakdown(m)
    hit = m.n_experts * (1 - (1 - m.top_k / m.n_experts) ** np.asarray(batch, dtype=float))
    return (parts["total"] - parts["experts"]
            + m.n_moe_layers * hit * ffn_params(m, m.d_ff_expert)) * bytes_per_param


@pytest.mark.parametrize("name", ["mixtral-8x7b", "deepseek-v3", "qwen3-30b-a3b", "gpt-oss-120b"])
def test_decode_reads_the_experts_the_batch_hits(name):
    m = fb.model(name)
    # One sequence reads exactly its active parameters; a large batch all of them.
    one = fb.decode_step_time(m, "h100-sxm", 1, 100)
    assert one.bytes == 2 * fb.param_count(m, active=True) + fb.kv_cache_bytes(m, 1, 100)
    B = np.array([1, 2, 8, 64, 512, 100_000])
    step = fb.decode_step_time(m, "h100-sxm", B, 100, bytes_per_param=0.5)
    assert np.allclose(step.bytes, _weights_at(m, B, 0.5) + B * fb.kv_cache_bytes(m, 1, 100),
                       rtol=1e-12)
    assert step.bytes[-1] - B[-1] * fb.kv_cache_bytes(m, 1, 100) == \
        pytest.approx(0.5 * fb.param_count(m), rel=1e-12)


def test_mixtral_decode_bytes_by_hand():
    # Mixtral: 32 layers of 8 SwiGLU experts, each 3 x 4096 x 14336; at batch 2 the expected
    # experts are 3.5 per layer (test_expected_experts_by_hand).
    expert = 3 * 4096 * 14336
    rest = 46_702_792_704 - 32 * 8 * expert          # the released total less the experts
    step = fb.decode_step_time(MIXTRAL, "h100-sxm", 2, 10)
    assert step.bytes == 2 * (rest + 32 * 3.5 * expert) + 2 * 10 * (2 * 32 * 8 * 128 * 2)


CRIT_CASES = [("mixtral-8x7b", "h100-sxm"), ("mixtral-8x7b", "a100-80gb"),
              ("deepseek-v3", "h100-sxm"), ("deepseek-v3", "v100"), ("qwen3-30b-a3b", "h100-sxm"),
              ("gpt-oss-20b", "a100-80gb"), ("deepseek-v2-lite", "h100-sxm")]


@pytest.mark.parametrize("name, hw", CRIT_CASES)
def test_moe_critical_batch_is_the_root(name, hw):
    m, h = fb.model(name), fb.hardware(hw)
    ctx = np.array([1, 64, 512, 2048, 8192])[:, None]
    w = np.array([0.5, 1.0, 2.0])
    b = fb.critical_batch(m, h, ctx, bytes_per_param=w)
    assert b.shape == (5, 3)
    finite = np.isfinite(b)
    assert finite[0].all()
    # At b*, compute time equals memory time: b F / P = (W(b) + b K) / B_w, F and K of one
    # sequence, W(b) written out in _weights_at.
    F, K = (np.broadcast_to(x, b.shape) for x in (fb.decode_step_time(m, h, 1, ctx).flops,
                                                    fb.kv_cache_bytes(m, 1, ctx)))
    bb = np.where(finite, b, 1.0)
    compute = bb * F / h.peak_16bit
    memory = (_weights_at(m, bb, w) + bb * K) / h.bandwidth
    assert np.all(np.abs(compute / memory - 1)[finite] <= 1e-9)
    # Where it is inf, even an endless batch brings more cache bytes per FLOP than the balance.
    assert np.all((F * h.bandwidth / h.peak_16bit <= K)[~finite])
    # Batches below are memory-bound, from ceil(b*) on compute-bound.
    for c, wb in ((1, 2.0), (2048, 1.0)):
        b_star = fb.critical_batch(m, h, c, bytes_per_param=wb)
        if np.isfinite(b_star) and b_star > 1:
            lo, hi = int(np.floor(b_star)), int(np.ceil(b_star))
            bounds = fb.decode_step_time(m, h, [lo, hi], c, bytes_per_param=wb).bound
            assert list(bounds) == ["memory", "compute"]


def test_moe_critical_batch_exceeds_the_dense_estimate():
    # With every expert read at every batch, b* would be W / (B_w F / P - K); reading fewer at
    # small batches lowers the memory time, so the true b* is lower -- but above the estimate
    # that reads only the active experts (the batch hits more than top_k).
    m, h = MIXTRAL, fb.hardware("h100-sxm")
    F = fb.decode_step_time(m, h, 1, 1).flops
    headroom = h.bandwidth * F / h.peak_16bit - fb.kv_cache_bytes(m, 1, 1)
    b = fb.critical_batch(m, h, 1)
    assert 2 * fb.param_count(m, active=True) / headroom < b < 2 * fb.param_count(m) / headroom
    # Same arguments as the dense formula: n_devices does not move it.
    assert fb.critical_batch(m, h, 1, n_devices=8) == b


def test_dense_critical_batch_stays_closed_form():
    m, h = fb.model("llama3.1-405b"), fb.hardware("h100-sxm")
    F = fb.decode_step_time(m, h, 1, 1000).flops
    expected = 2 * fb.param_count(m) / (h.bandwidth * F / h.peak_16bit
                                        - fb.kv_cache_bytes(m, 1, 1000))
    assert fb.critical_batch(m, h, 1000) == pytest.approx(expected, rel=1e-14)


def test_mla_decode_stays_compute_hungry_at_long_contexts():
    # Each cached DeepSeek-V3 key brings 278,528 FLOPs per 1,152 bytes (241.8 FLOPs per byte):
    # above an A100's balance (312e12 / 2.039e12 = 153), below an H100's (989.4e12 / 3.35e12 =
    # 295). So on an A100 some batch is compute-bound at any context; on an H100 not beyond
    # some context.
    assert np.isfinite(fb.critical_batch(DSV3, "a100-80gb", [4096, K128, 10**6])).all()
    assert fb.critical_batch(DSV3, "h100-sxm", K128) == np.inf


def test_max_batch_holds_every_expert():
    # Mixtral on 8 H100s (80 GiB): all 46,702,792,704 parameters stay in memory; 32K-token
    # caches of 2 * 32 * 8 * 128 * 2 * 32768 bytes each.
    free = 8 * 80 * 2**30 - 2 * 46_702_792_704
    per_seq = 2 * 32 * 8 * 128 * 2 * K32
    assert fb.max_batch(MIXTRAL, "h100-sxm", K32, n_devices=8) == free // per_seq
    # DeepSeek-V3's latent cache at 128K on 16 H100s, 8-bit weights.
    free = 16 * 80 * 2**30 - 1 * fb.param_count(DSV3)
    assert fb.max_batch(DSV3, "h100-sxm", K128, bytes_per_param=1, n_devices=16) == \
        free // (61 * 576 * 2 * K128)
    # Gemma 3's rolling caches let more sequences fit than an all-global stack would.
    assert fb.max_batch(GEMMA, "h100-sxm", K128, n_devices=2) > \
        5 * fb.max_batch(all_global(GEMMA), "h100-sxm", K128, n_devices=2)


def test_serving_cost_of_a_moe_follows_the_roofline():
    step = fb.decode_step_time(MIXTRAL, "h100-sxm", 64, 4096, n_devices=2)
    assert fb.serving_cost(MIXTRAL, "h100-sxm", 64, 4096, 3.0, n_devices=2) == \
        pytest.approx(1e6 * 2 * 3.0 / 3600 / (64 / step.time), rel=1e-14)
    with pytest.raises(ValueError, match="does not fit"):
        fb.serving_cost(DSV3, "h100-sxm", 1, 4096, 3.0)  # 1.3 TB of weights on one device


# --- broadcasting: arrays equal their scalar evaluations ----------------------------------------

ARCH = [MIXTRAL, DSV3, GEMMA, fb.model("gpt-oss-20b"), MLA, WINDOWED]
ints = st.integers(1, 200_000)


@settings(max_examples=25, deadline=None)
@given(i=st.integers(0, len(ARCH) - 1), p=st.lists(ints, min_size=1, max_size=4),
       t=st.lists(st.integers(1, 5000), min_size=1, max_size=3), kv=st.booleans(),
       causal=st.booleans())
def test_generation_broadcasts_to_its_scalar_values(i, p, t, kv, causal):
    m = ARCH[i]
    out = fb.generation_flops(m, np.array(p)[:, None], np.array(t), kv_cache=kv, causal=causal)
    assert out.shape == (len(p), len(t))
    for a, pa in enumerate(p):
        for b, tb in enumerate(t):
            assert out[a, b] == fb.generation_flops(m, pa, tb, kv_cache=kv, causal=causal)


@settings(max_examples=25, deadline=None)
@given(i=st.integers(0, len(ARCH) - 1), batch=st.lists(st.integers(1, 4096), min_size=1,
                                                        max_size=3),
       ctx=st.lists(ints, min_size=1, max_size=3),
       w=st.sampled_from([0.5, 1.0, 2.0]))
def test_serving_formulas_broadcast_to_their_scalar_values(i, batch, ctx, w):
    m, h = ARCH[i], "h100-sxm"
    B, C = np.array(batch)[:, None], np.array(ctx)
    step = fb.decode_step_time(m, h, B, C, bytes_per_param=w)
    crit = fb.critical_batch(m, h, C, bytes_per_param=w)
    cache = fb.kv_cache_bytes(m, B, C)
    for a, ba in enumerate(batch):
        for b, cb in enumerate(ctx):
            one = fb.decode_step_time(m, h, ba, cb, bytes_per_param=w)
            assert (step.time[a, b], step.bytes[a, b], step.bound[a, b]) == \
                (one.time, one.bytes, one.bound)
            assert cache[a, b] == fb.kv_cache_bytes(m, ba, cb)
            assert crit[b] == fb.critical_batch(m, h, cb, bytes_per_param=w)


def test_moe_critical_batch_handles_every_kind_of_entry():
    # k = E (every expert always read) is the dense formula with all the weights; a router that
    # reads almost nothing extra is close to the active-parameter estimate.
    all_hit = dataclasses.replace(MIXTRAL, top_k=8)
    h = fb.hardware("h100-sxm")
    F = fb.decode_step_time(all_hit, h, 1, 1).flops
    expected = 2 * fb.param_count(all_hit) / (h.bandwidth * F / h.peak_16bit
                                              - fb.kv_cache_bytes(all_hit, 1, 1))
    assert fb.critical_batch(all_hit, h, 1) == pytest.approx(expected, rel=1e-12)
    slow = Hardware("slow", MappingProxyType({"bf16": 1e9}), 1e12, 1e12, "none")
    assert fb.critical_batch(MIXTRAL, slow, 1) < 1      # compute-bound from the first sequence
    with pytest.raises(ValueError, match="overflows float64"):
        fb.critical_batch(MIXTRAL, h, 1e300)


# --- against the counting reference model's generation loop -------------------------------------

REF_CONFIGS = {
    # Layer 1 dense, 2 and 3 MoE (a shared expert, a router bias); layers 1, 3 local (window 3).
    "moe-windowed": fb.Transformer(n_layers=3, d_model=8, n_heads=2, n_kv_heads=1, d_ff=12,
                                   ffn="swiglu", n_experts=4, top_k=2, n_shared_experts=1,
                                   d_ff_expert=6, n_dense_layers=1, router_bias=True,
                                   window=3, global_every=2, vocab_size=11, seq_len=32,
                                   positional="rope", norm="rmsnorm", bias=False),
    # MLA with a query latent, GeGLU, every layer local (window 4), post-norms.
    "mla-local": fb.Transformer(n_layers=2, d_model=8, n_heads=2, d_head=4, qk_rope_dim=2,
                                kv_lora_rank=3, v_head_dim=5, q_lora_rank=6, d_ff=10,
                                ffn="geglu", window=4, post_norms=True, vocab_size=9,
                                seq_len=32, positional="rope", norm="rmsnorm", bias=False),
    # DeepSeek's shape in small: MLA without a query latent, a dense layer then MoE layers.
    "mla-moe": fb.Transformer(n_layers=3, d_model=8, n_heads=2, d_head=2, qk_rope_dim=2,
                              kv_lora_rank=4, v_head_dim=3, d_ff=12, ffn="swiglu", n_experts=5,
                              top_k=3, n_shared_experts=2, d_ff_expert=4, n_dense_layers=1,
                              vocab_size=13, seq_len=32, positional="rope", norm="rmsnorm",
                              bias=False),
    # gpt-oss's shape in small: sinks, biases, banded and full layers alternating, q/k norms.
    "sinks-banded": fb.Transformer(n_layers=2, d_model=8, n_heads=4, n_kv_heads=2, d_head=2,
                                   d_ff=8, ffn="swiglu", n_experts=3, top_k=1, window=2,
                                   global_every=2, attention_sinks=True, qk_norm=True,
                                   vocab_size=7, seq_len=32, positional="rope", norm="rmsnorm",
                                   bias=True),
}


@pytest.mark.parametrize("name", REF_CONFIGS)
@pytest.mark.parametrize("P, T, batch", [(1, 1, 1), (2, 4, 2), (5, 3, 1), (6, 6, 2)])
def test_generation_matches_the_reference(name, P, T, batch):
    from flopsbook.reference.model import ReferenceTransformer

    m = REF_CONFIGS[name]
    ref = ReferenceTransformer(m, seed=2)
    prompt = np.random.default_rng(P * 10 + T).integers(0, m.vocab_size, (batch, P))
    for kv in (True, False):
        for causal in (True, False):
            with fb.count_flops(causal=causal) as c:
                ref.generate(prompt, T, kv_cache=kv)
            assert c.total() == batch * fb.generation_flops(m, P, T, kv_cache=kv, causal=causal)
        expected = fb.kv_cache_bytes(m, batch, P + T - 1, bytes_per_value=8) if kv else 0
        assert ref.kv_cache_nbytes == expected


@pytest.mark.parametrize("name", REF_CONFIGS)
def test_one_decode_step_matches_the_reference(name):
    # The counter's FLOPs of generating one more token (one more step) at each context are
    # decode_step_time's FLOPs there: the step's projections, experts, attended keys, logits.
    from flopsbook.reference.model import ReferenceTransformer

    m, batch, P = REF_CONFIGS[name], 2, 3
    ref = ReferenceTransformer(m, seed=3)
    prompt = np.random.default_rng(0).integers(0, m.vocab_size, (batch, P))
    counts = []
    for T in range(1, 7):
        with fb.count_flops(causal=True) as c:
            ref.generate(prompt, T)
        counts.append(c.total())
    steps = fb.decode_step_time(m, "h100-sxm", batch, P + np.arange(1, 6))
    assert np.diff(counts).tolist() == steps.flops.tolist()
