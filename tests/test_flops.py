"""Transformer FLOP formulas against hand derivations and published figures.

The exact comparison with the counting reference model is in tests/test_reference_vs_formulas.py.
"""

import numpy as np
import pytest

import flopsbook as fb
from flopsbook import Transformer

# GPT-3, Brown et al. (2020) Table D.1: params (millions) and total training FLOPs, 300B tokens.
GPT3_TABLE_D1 = [(125, 2.25e20), (356, 6.41e20), (760, 1.37e21), (1320, 2.38e21),
                 (2650, 4.77e21), (6660, 1.20e22), (12850, 2.31e22), (174600, 3.14e23)]


@pytest.mark.parametrize("params_m, flops", GPT3_TABLE_D1)
def test_gpt3_table_d1_is_6nd(params_m, flops):
    assert float(f"{fb.training_flops(params_m * 1e6, 300e9):.3g}") == flops


def test_training_flops_broadcasts():
    out = fb.training_flops(np.array([1e9, 2e9]), np.array([[1e10], [2e10]]))
    assert out.shape == (2, 2) and out[1, 1] == 6 * 2e9 * 2e10


def test_layer_flops_standard_attention_is_24bsd2_plus_4bs2d():
    m = Transformer(n_layers=1, d_model=768, n_heads=12, vocab_size=10, seq_len=4096)
    b, s, d = 3, 512, 768
    parts = fb.layer_flops(m, s, b)
    assert parts["total"] == 24 * b * s * d**2 + 4 * b * s**2 * d
    assert parts["qkv"] == 6 * b * s * d**2 and parts["out_proj"] == 2 * b * s * d**2
    assert parts["ffn"] == 16 * b * s * d**2
    assert parts["scores"] == parts["weighted_values"] == 2 * b * s**2 * d


def test_layer_flops_gqa_swiglu_and_wide_heads():
    # PaLM-like: 4 query heads of 32 on d_model 64, one KV head, SwiGLU with d_ff 96.
    m = Transformer(n_layers=1, d_model=64, n_heads=4, d_head=32, n_kv_heads=1, d_ff=96,
                    ffn="swiglu", vocab_size=10, seq_len=64)
    s = 10
    parts = fb.layer_flops(m, s)
    assert parts["qkv"] == 2 * s * 64 * (4 * 32 + 2 * 32)
    assert parts["out_proj"] == 2 * s * 128 * 64
    assert parts["ffn"] == 2 * s * 64 * 96 * 3
    assert parts["scores"] == 2 * 4 * s * s * 32


def test_causal_counts_s_times_s_plus_1_over_2_pairs():
    m = fb.model("gpt2-small")
    s = 1024
    full, causal = fb.layer_flops(m, s), fb.layer_flops(m, s, causal=True)
    assert causal["scores"] == full["scores"] * (s + 1) / (2 * s)
    assert causal["qkv"] == full["qkv"]


def test_flops_per_token_without_attention_is_6_per_matmul_weight():
    d, L, V = 768, 12, 50257
    matmul_weights = L * 12 * d * d + d * V  # Q, K, V, O (4d^2) + FFN (8d^2); tied logits
    m = fb.model("gpt2-small")
    assert fb.flops_per_token(m, include_attention=False) == 6 * matmul_weights
    assert fb.flops_per_token(m, include_attention=False, training=False) == 2 * matmul_weights
    assert fb.flops_per_token(m, include_attention=False, include_logits=False) \
        == 6 * L * 12 * d * d


def test_flops_per_token_attention_and_recompute_terms():
    m = fb.model("gpt2-small")
    d, L, s = 768, 12, 1024
    attention = L * 4 * s * d  # per token, forward, non-causal
    base = fb.flops_per_token(m, include_attention=False)
    assert fb.flops_per_token(m) == base + 3 * attention
    layers_forward = L * (24 * d * d + 4 * s * d)
    assert fb.flops_per_token(m, recompute=True) == fb.flops_per_token(m) + layers_forward
    assert fb.flops_per_token(m, context=np.array([1, s]))[1] == fb.flops_per_token(m)


def test_palm_mfu_and_its_numerator():
    # Chowdhery et al. (2022), App. B: 6N + 12*L*H*Q*T with N = 540.35B; 238.3K tokens/s on
    # 6144 TPU v4 chips at 275 TFLOP/s gives MFU 46.2%.
    palm = fb.model("palm-540b")
    L, H, Q, T = 118, 48, 256, 2048
    paper = 6 * 540.35e9 + 12 * L * H * Q * T
    assert fb.flops_per_token(palm) == pytest.approx(paper, rel=1e-5)
    assert round(100 * fb.mfu(238.3e3, paper, 6144, 275e12), 1) == 46.2


def test_hyperclova_time_at_peak():
    # Seed blog: 82B parameters, 150B tokens, 1024 A100 at 312 TFLOP/s: at least 2.67 days.
    c = fb.training_flops(82e9, 150e9)
    assert c == pytest.approx(7.38e22)
    days = fb.training_time(c, 1024, 312e12, mfu=1.0) / 86400
    assert round(days, 2) == 2.67
    assert fb.training_time(c, 1024, 312e12, mfu=0.5) == 2 * days * 86400


def test_relative_positions_add_a_projection_and_position_scores():
    base = dict(n_layers=1, d_model=64, n_heads=4, vocab_size=10, seq_len=32, bias=False)
    plain = fb.layer_flops(Transformer(**base, positional="none"), 16)
    rel = fb.layer_flops(Transformer(**base, positional="relative"), 16)
    assert rel["qkv"] - plain["qkv"] == 2 * 16 * 64 * 64
    assert rel["scores"] == 2 * plain["scores"]


@pytest.mark.parametrize("call, message", [
    (lambda: fb.mfu(1e3, 1e12, 1, 312e12), r"implied MFU is 3.21 > 1"),
    (lambda: fb.hfu(1e3, 1e12, 1, 312e12), r"implied HFU is 3.21 > 1"),
    (lambda: fb.training_time(1e20, 8, 312e12, mfu=1.2), "mfu must be <= 1"),
    (lambda: fb.training_time(1e20, 8, 312e12, mfu=0), "mfu must be > 0"),
    (lambda: fb.training_time(1e20, 0.5, 312e12, mfu=0.4), "n_devices must be a whole number"),
    (lambda: fb.training_flops(-1, 10), "n_params must be > 0"),
    (lambda: fb.training_flops(1, "many"), "n_tokens: cannot read 'many' as a count"),
    (lambda: fb.training_flops(1, ["15T"]), "n_tokens must be a number"),
    (lambda: fb.flops_per_token(["gpt2-small"]), "m must be a Transformer or a model name"),
    (lambda: fb.flops_per_token("gpt-2"), "m: unknown model name"),
    (lambda: fb.flops_per_token(fb.model("gpt2-small"), context=0), "context must be > 0"),
    (lambda: fb.layer_flops(fb.model("gpt2-small"), 128, batch=-2), "batch must be > 0"),
    (lambda: fb.layer_flops(fb.model("gpt2-small"), 128, causal="yes"),
     "causal must be True or False"),
    (lambda: fb.flops_per_token(fb.model("gpt2-small"), training=1),
     "training must be True or False"),
    (lambda: fb.flops_per_token(fb.model("gpt2-small"), include_attention=None),
     "include_attention must be True or False"),
])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
