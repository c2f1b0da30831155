"""Chapter "Beyond the dense transformer": the spec's MoE, MLA and window fields, the exact
counts of released checkpoints, active parameters, and per-layer FLOPs derived by hand.

Expected counts come from the released checkpoints (the safetensors index totals of the Hugging
Face repositories, Keras-Hub preset metadata, the model cards), never from this package: where
a release stores more than the model's code defines as parameters, the subtraction is spelled
out beside the total.
"""

import dataclasses

import numpy as np
import pytest

import flopsbook as fb
from flopsbook import Transformer

RELEASED = {
    # mistralai/Mistral-7B-v0.1 safetensors total; Keras-Hub preset mistral_7b_en.
    "mistral-7b": 7_241_732_096,
    # mistralai/Mixtral-8x7B-v0.1 safetensors total; Keras-Hub preset mixtral_8_7b_en.
    "mixtral-8x7b": 46_702_792_704,
    # mistralai/Mixtral-8x22B-v0.3 (and -Instruct-v0.1), vocabulary 32,768.
    "mixtral-8x22b": 140_630_071_296,
    # deepseek-ai/DeepSeek-V2-Lite safetensors total.
    "deepseek-v2-lite": 15_706_484_224,
    # deepseek-ai/DeepSeek-V3: the index's 684,531,386,000 stored values hold the MTP module
    # (13,463,426,304 stored, its own copies of the embedding and output head included), the
    # FP8 weight-scale tensors (41,540,496) and the routers' bias-correction buffers
    # (256 in each of the main model's 58 MoE layers).
    "deepseek-v3": 684_531_386_000 - 13_463_426_304 - 41_540_496 - 58 * 256,
    # Qwen/Qwen3-30B-A3B safetensors total.
    "qwen3-30b-a3b": 30_532_122_624,
    # openai/gpt-oss-20b and -120b, bf16 tensor shapes (the card's 20.91B and 116.83B totals);
    # the MXFP4 scales are not parameters.
    "gpt-oss-20b": 20_914_757_184,
    "gpt-oss-120b": 116_829_156_672,
    # google/gemma-3-27b-pt: 27,432,406,640 in all, less the SigLIP vision tower and its
    # multimodal projector (423,060,336).
    "gemma3-27b": 27_432_406_640 - 423_060_336,
    # meta-llama/Llama-3.1-405B (bf16) safetensors total.
    "llama3.1-405b": 405_853_388_800,
}


@pytest.mark.parametrize("name, count", RELEASED.items())
def test_released_checkpoints_match_exactly(name, count):
    assert fb.param_count(name) == count


def test_mixtral_8x22b_base_release_has_the_smaller_vocabulary():
    # mistralai/Mixtral-8x22B-v0.1, the first base release: 140,620,634,112 (vocabulary 32,000).
    v01 = dataclasses.replace(fb.model("mixtral-8x22b"), vocab_size=32_000)
    assert fb.param_count(v01) == 140_620_634_112


def test_deepseek_v3_mtp_module_is_one_more_moe_layer_and_a_projection():
    # The checkpoint's MTP module, without its own copies of the embedding and head
    # (2 x 129,280 x 7,168) and its 256-value bias-correction buffer.
    m = fb.model("deepseek-v3")
    unique_mtp = 13_463_426_304 - 2 * 129_280 * 7_168 - 256
    parts = fb.param_breakdown(m)
    n_moe = m.n_moe_layers
    moe_layer = (parts["attention"] / m.n_layers
                 + (parts["norms"] - m.d_model) / m.n_layers  # every layer's norms are alike
                 + parts["router"] / n_moe
                 + (parts["experts"] + parts["ffn"] - m.n_dense_layers * 3 * 7168 * 18432)
                 / n_moe)
    # two input norms, the 2d -> d projection, the shared head's norm
    assert unique_mtp == moe_layer + 2 * 7168 + 2 * 7168 * 7168 + 7168


# --- active parameters against each source's convention ------------------------------------

def _tables(name):
    p = fb.param_breakdown(name)
    return p["token_embedding"], p["output_embedding"]


@pytest.mark.parametrize("name, published, leaves_out, rel", [
    # Mistral AI's Mixtral announcement: "12.9B active" with both tables (rounded to 0.1B).
    ("mixtral-8x7b", 12.9e9, (), 0.005),
    # Mixtral 8x22B announcement: "39B active parameters out of 141B".
    ("mixtral-8x22b", 39e9, (), 0.01),
    # gpt-oss model card, Table 1: "Unembedding parameters are counted towards active, but not
    # embeddings": 3.61B and 5.13B.
    ("gpt-oss-20b", 3.61e9, ("token",), 0.002),
    ("gpt-oss-120b", 5.13e9, ("token",), 0.002),
    # DeepSeek-V2 paper: DeepSeek-V2-Lite "15.7B total, 2.4B activated" (to 0.1B, truncated:
    # the input table left out, as gpt-oss does).
    ("deepseek-v2-lite", 2.4e9, ("token",), 0.025),
    # DeepSeek-V3 report: "37B activated" (both tables in; the report does not say).
    ("deepseek-v3", 37e9, (), 0.02),
    # Qwen3-30B-A3B model card: "3.3B activated".
    ("qwen3-30b-a3b", 3.3e9, (), 0.02),
])
def test_active_counts_follow_each_sources_convention(name, published, leaves_out, rel):
    token, _ = _tables(name)
    ours = fb.param_count(name, active=True) - (token if "token" in leaves_out else 0)
    assert abs(ours / published - 1) < rel


def test_active_is_total_minus_the_routed_experts_a_token_skips():
    m = fb.model("mixtral-8x7b")
    expert = 3 * 4096 * 14336
    assert fb.param_count(m) - fb.param_count(m, active=True) == 32 * 6 * expert
    # The router and shared experts stay in; a dense model is unchanged.
    assert fb.param_count("llama3-8b", active=True) == fb.param_count("llama3-8b")
    v3 = fb.model("deepseek-v3")
    assert fb.param_count(v3) - fb.param_count(v3, active=True) \
        == 58 * (256 - 8) * 3 * 7168 * 2048


def test_breakdown_has_router_and_experts_parts():
    p = fb.param_breakdown("gpt-oss-20b")
    assert p["router"] == 24 * (2880 * 32 + 32)                     # with its bias
    assert p["experts"] == 24 * 32 * (3 * 2880 * 2880 + 2 * 2880 + 2880)
    assert sum(v for k, v in p.items() if k != "total") == p["total"]
    dense = fb.param_breakdown("llama3-8b")
    assert dense["router"] == dense["experts"] == 0


def test_mla_attention_parameters_by_hand():
    m = fb.model("deepseek-v3")
    d, h = 7168, 128
    per_layer = (d * 1536 + 1536 * h * 192          # query down and up (d_head 128 + rope 64)
                 + d * (512 + 64)                    # latent and shared rotary key
                 + 512 * h * (128 + 128)             # keys' non-rotary parts and values
                 + h * 128 * d)                      # output
    assert fb.param_breakdown(m)["attention"] == 61 * per_layer
    assert m.kv_cache_width == 576 and m.d_qk == 192 and m.d_attn_output == h * 128


def test_gemma3_norms_and_qk_norms_by_hand():
    p = fb.param_breakdown("gemma3-27b")
    assert p["norms"] == 62 * (4 * 5376 + 2 * 128) + 5376
    assert p["output_embedding"] == 0                   # tied


# --- the spec's validation ------------------------------------------------------------------

BASE = dict(n_layers=4, d_model=64, n_heads=4, vocab_size=100, seq_len=32)


@pytest.mark.parametrize("kwargs, words", [
    (dict(n_experts=8), "top_k"),
    (dict(n_experts=8, top_k=9), "top_k"),
    (dict(n_experts=8, top_k=0), "top_k"),
    (dict(top_k=2), "top_k"),
    (dict(n_shared_experts=1), "n_shared_experts"),
    (dict(n_experts=4, top_k=1, n_shared_experts=-1), "n_shared_experts"),
    (dict(n_dense_layers=1), "n_dense_layers"),
    (dict(n_experts=4, top_k=1, n_dense_layers=4), "n_dense_layers"),
    (dict(d_ff_expert=32), "d_ff_expert"),
    (dict(router_bias=True), "router_bias"),
    (dict(n_experts=4, top_k=1, router_bias="yes"), "router_bias"),
    (dict(n_experts=2.0, top_k=1), "n_experts"),
    (dict(kv_lora_rank=32), "d_head"),
    (dict(q_lora_rank=32), "q_lora_rank"),
    (dict(qk_rope_dim=8), "qk_rope_dim"),
    (dict(v_head_dim=8), "v_head_dim"),
    (dict(kv_lora_rank=32, d_head=16, n_kv_heads=2), "n_kv_heads"),
    (dict(kv_lora_rank=32, d_head=16, bias=True), "bias"),
    (dict(kv_lora_rank=32, d_head=16, qk_rope_dim=-1), "qk_rope_dim"),
    (dict(global_every=2), "global_every"),
    (dict(window=0), "window"),
    (dict(window=8, global_every=0), "global_every"),
    (dict(ffn="reglu"), "ffn"),
    (dict(qk_norm=1), "qk_norm"),
    (dict(post_norms="no"), "post_norms"),
    (dict(attention_sinks=None), "attention_sinks"),
])
def test_bad_architecture_fields_name_themselves(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Transformer(**{**BASE, "bias": False, **kwargs} if "bias" not in kwargs
                    else {**BASE, **kwargs})


def test_defaults_are_the_dense_model_and_replace_keeps_working():
    m = Transformer(**BASE)
    assert (m.n_experts, m.top_k, m.n_shared_experts, m.d_ff_expert, m.n_dense_layers,
            m.router_bias) == (1, 1, 0, None, 0, False)
    assert (m.kv_lora_rank, m.qk_rope_dim, m.v_head_dim, m.window) == (None, 0, None, None)
    assert m.d_qk == m.d_head and m.d_v == m.d_kv and m.d_attn_output == m.d_attn
    assert m.kv_cache_width == 2 * m.d_kv
    # dataclasses.replace re-validates with the resolved fields: it must not trip on them.
    assert dataclasses.replace(m, d_ff=96).d_ff == 96
    moe = Transformer(**BASE, n_experts=4, top_k=2, bias=False)
    assert moe.router_bias is False and moe.d_ff_expert == moe.d_ff
    assert Transformer(**BASE, n_experts=4, top_k=2).router_bias is True   # follows bias
    assert dataclasses.replace(fb.model("deepseek-v3"), n_layers=8).n_moe_layers == 5


def test_layer_kinds_follow_global_every_and_n_dense_layers():
    g = fb.model("gemma3-27b")
    assert [g.layer_window(i) for i in range(1, 13)] == [1024] * 5 + [None] + [1024] * 5 + [None]
    assert g.n_local_layers == 62 - 10
    o = fb.model("gpt-oss-20b")
    assert [o.layer_window(i) for i in (1, 2, 3, 4)] == [128, None, 128, None]
    v3 = fb.model("deepseek-v3")
    assert [v3.layer_is_moe(i) for i in (1, 3, 4, 61)] == [False, False, True, True]
    assert fb.model("mistral-7b").n_local_layers == 32
    for bad in (0, 63, 1.0, "1"):
        with pytest.raises(ValueError, match="layer"):
            g.layer_window(bad)


# --- FLOPs by hand --------------------------------------------------------------------------

def test_moe_layer_flops_by_hand():
    m, s, b = fb.model("mixtral-8x7b"), 512, 3
    p = fb.layer_flops(m, s, b)
    n = b * s
    assert p["router"] == 2 * n * 4096 * 8
    assert p["ffn"] == 2 * n * 4096 * 14336 * 3 * 2             # top 2 of 8 SwiGLU experts
    assert p["qkv"] == 2 * n * 4096 * (4096 + 2 * 1024)
    assert p["total"] == sum(p[k] for k in fb.flops.LAYER_COMPONENTS)


def test_dense_and_moe_layers_of_deepseek_v3_by_hand():
    m, s = fb.model("deepseek-v3"), 4096
    dense, moe = fb.layer_flops(m, s, layer=1), fb.layer_flops(m, s, layer=4)
    assert dense["router"] == 0 and dense["ffn"] == 2 * s * 7168 * 18432 * 3
    assert moe["router"] == 2 * s * 7168 * 256
    assert moe["ffn"] == 2 * s * 7168 * 2048 * 3 * (8 + 1)       # 8 routed + 1 shared
    avg = fb.layer_flops(m, s)
    assert avg["ffn"] == pytest.approx((3 * dense["ffn"] + 58 * moe["ffn"]) / 61, rel=1e-15)
    # MLA: every projection a naive implementation makes per token.
    qkv = 2 * s * (7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256)
    assert moe["qkv"] == qkv and moe["out_proj"] == 2 * s * 128 * 128 * 7168
    assert moe["scores"] == 2 * 128 * 192 * s * s                 # heads of d_qk = 192
    assert moe["weighted_values"] == 2 * 128 * 128 * s * s        # values of 128


def test_window_pairs_by_hand():
    m, s, w = fb.model("gemma3-27b"), 32768, 1024
    local, glob = (fb.layer_flops(m, s, causal=True, layer=i) for i in (1, 6))
    per_pair = 2 * 32 * 128
    assert local["scores"] == per_pair * (w * (w + 1) / 2 + (s - w) * w)
    assert glob["scores"] == per_pair * s * (s + 1) / 2
    # A dense kernel computes every pair and masks: no saving without causal counting.
    assert fb.layer_flops(m, s, layer=1)["scores"] == fb.layer_flops(m, s, layer=6)["scores"]
    # Below the window a local layer is a global one.
    short = fb.layer_flops(m, 1000, causal=True, layer=1)["scores"]
    assert short == fb.layer_flops(m, 1000, causal=True, layer=6)["scores"]
    # The stack is 52 local and 10 global layers.
    stack = fb.layer_flops(m, s, causal=True)["scores"] * 62
    assert stack == pytest.approx(52 * local["scores"] + 10 * glob["scores"], rel=1e-15)


def test_the_average_layer_sums_to_the_stack_per_layer():
    for name in ("gemma3-27b", "deepseek-v3", "gpt-oss-20b", "llama3-8b"):
        m = fb.model(name)
        s = np.array([100, 5000])
        avg = fb.layer_flops(m, s, 2, causal=True)["total"]
        each = sum(fb.layer_flops(m, s, 2, causal=True, layer=i)["total"]
                   for i in range(1, m.n_layers + 1))
        np.testing.assert_allclose(avg * m.n_layers, each, rtol=1e-14)


@pytest.mark.parametrize("name", ["mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3", "mistral-7b"])
def test_six_n_active_d_is_the_weight_flops_with_the_router(name):
    # 2 FLOPs per matmul weight a token meets: the active parameters less the input lookup
    # table and the norms (not matmuls), all models here without biases.
    m = fb.model(name)
    p = fb.param_breakdown(m)
    weights = fb.param_count(m, active=True) - p["token_embedding"] - p["norms"]
    per_token = fb.flops_per_token(m, training=True, include_attention=False)
    assert per_token == pytest.approx(6 * weights, rel=1e-14)


def test_geglu_counts_like_swiglu():
    a = Transformer(**BASE, ffn="swiglu", bias=False)
    b = dataclasses.replace(a, ffn="geglu")
    assert fb.param_count(a) == fb.param_count(b)
    assert fb.layer_flops(a, 16) == fb.layer_flops(b, 16)


def test_crossover_refuses_local_attention_and_averages_moe():
    with pytest.raises(ValueError, match="local attention"):
        fb.crossover_seq_len("mistral-7b")
    m = fb.model("mixtral-8x7b")
    s = fb.crossover_seq_len(m, against="layer")
    p = fb.layer_flops(m, int(s))
    assert p["scores"] + p["weighted_values"] == p["qkv"] + p["out_proj"] + p["router"] + p["ffn"]


# --- attention-free layers ------------------------------------------------------------------

def test_linear_attention_by_hand_and_against_softmax():
    m, s, b = fb.model("llama3-8b"), 8192, 2
    lin = fb.linear_attention_flops(m, s, b)
    soft = fb.layer_flops(m, s, b, causal=True)
    assert lin["state_update"] == 2 * b * s * 8 * 128 * 128
    assert lin["state_readout"] == 2 * b * s * 32 * 128 * 128
    for k in ("qkv", "out_proj", "router", "ffn"):
        assert lin[k] == soft[k]
    # The state equals the KV cache at d_head/2 = 64 tokens, whatever the batch.
    assert fb.linear_attention_state_bytes(m, 3) == fb.kv_cache_bytes(m, 3, 64)
    assert fb.linear_attention_state_bytes(m, 1) == 32 * 8 * 128 * 128 * 2
    with pytest.raises(ValueError, match="latent"):
        fb.linear_attention_flops("deepseek-v3", 16)
    with pytest.raises(ValueError, match="batch"):
        fb.linear_attention_state_bytes(m, 0)


def test_zero3_gathers_a_whole_moe_layer_with_every_expert():
    # Plain ZeRO-3 over 64 devices: the other 63/64 of the largest layer, bf16 weights.
    attention = 2 * 4096 * 4096 + 2 * 4096 * 1024
    moe_layer = attention + 4096 * 8 + 8 * 3 * 4096 * 14336
    got = fb.memory_budget("mixtral-8x7b", 1, 4096, zero_stage=3, n_devices=64).gathered_weights
    assert got == moe_layer * 2 * 63 / 64
    # DeepSeek-V3: its MoE layers (256 + 1 experts) are larger than its three dense ones.
    v3 = fb.model("deepseek-v3")
    dense = fb.memory_budget(dataclasses.replace(v3, n_experts=1, top_k=None, n_shared_experts=0,
                                                 n_dense_layers=0, d_ff_expert=None),
                             1, 4096, zero_stage=3, n_devices=64).gathered_weights
    moe = fb.memory_budget(v3, 1, 4096, zero_stage=3, n_devices=64).gathered_weights
    assert moe - dense == (7168 * 256 + 257 * 3 * 7168 * 2048 - 3 * 7168 * 18432) * 2 * 63 / 64
