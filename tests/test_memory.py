"""Memory formulas against hand derivations, published figures and the reference model.

Expected values are the sources' (ZeRO's Figure 1 and Section 3.1, Korthikanti et al.'s
Equation 1 and Table 2) or arithmetic written out here, never the code's own output.
"""

import dataclasses

import numpy as np
import pytest

import flopsbook as fb
from flopsbook import Transformer
from flopsbook.memory import TrainingMemory, activation_breakdown
from flopsbook.reference.model import ReferenceTransformer

GPT3 = fb.model("gpt3-175b")


# --- model states ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, parts", [
    (dict(precision="fp32"), (4, 0, 4, 8)),                              # 16
    (dict(), (2, 4, 2, 8)),                                              # ZeRO's 16
    (dict(grad_dtype="fp32"), (2, 4, 4, 8)),                             # the seed's 18
    (dict(precision="fp32", optimizer="sgd-momentum"), (4, 0, 4, 4)),    # 12
    (dict(optimizer="sgd-momentum"), (2, 4, 2, 4)),                      # 12
    (dict(optimizer="lion"), (2, 4, 2, 4)),
    (dict(precision="fp32", optimizer="sgd"), (4, 0, 4, 0)),             # 8
    (dict(precision="bf16"), (2, 0, 2, 4)),                              # 8
    (dict(precision="bf16", grad_dtype="fp32", optimizer="adam"), (2, 0, 4, 4)),
])
def test_bytes_per_parameter(kwargs, parts):
    mem = fb.training_memory(1, **kwargs)
    assert (mem.weights, mem.master_weights, mem.gradients, mem.optimizer_states) == parts
    assert mem.total == sum(parts)


# Rajbhandari et al. (2020), Figure 1: Psi = 7.5B, N_d = 64, K = 12, GB = 1e9 bytes.
@pytest.mark.parametrize("stage, gb", [(0, 120), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_figure_1(stage, gb):
    assert round(fb.training_memory(7.5e9, zero_stage=stage, n_devices=64).total / 1e9, 1) == gb


def test_zero_stage_formulas():
    psi, nd, k = 7.5e9, 64, 12
    totals = [fb.training_memory(psi, zero_stage=s, n_devices=nd).total for s in range(4)]
    assert totals == [(2 + 2 + k) * psi, 4 * psi + k * psi / nd, 2 * psi + (2 + k) * psi / nd,
                      (2 + 2 + k) * psi / nd]
    # Stage 1 shards the master copy with the moments; stage 2 adds the gradients.
    s1 = fb.training_memory(psi, zero_stage=1, n_devices=nd)
    assert s1.master_weights == 4 * psi / nd and s1.gradients == 2 * psi and s1.weights == 2 * psi
    s2 = fb.training_memory(psi, zero_stage=2, n_devices=nd, grad_dtype="fp32")
    assert s2.gradients == 4 * psi / nd and s2.weights == 2 * psi


def test_zero_gpt2_24gb():
    # ZeRO Section 3.1: a 1.5B-parameter GPT-2 needs at least 24 GB of model states.
    assert fb.training_memory(1.5e9).total == 24e9


def test_n_devices_is_ignored_without_zero():
    assert fb.training_memory(1e9, n_devices=64).total == fb.training_memory(1e9).total == 16e9


def test_training_memory_broadcasts():
    mem = fb.training_memory(np.array([1e9, 2e9]), zero_stage=3, n_devices=np.array([[1], [4]]))
    assert mem.total.shape == (2, 2) and mem.weights.shape == (2, 2)
    assert mem.total[1, 1] == 16 * 2e9 / 4


def test_training_memory_is_frozen_and_float():
    mem = fb.training_memory(1e9)
    assert isinstance(mem, TrainingMemory) and isinstance(mem.total, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        mem.weights = 0
    d = mem.as_dict()
    assert d["total"] == 16e9 and set(d) == {"weights", "master_weights", "gradients",
                                             "optimizer_states", "total"}


@pytest.mark.parametrize("kwargs, word", [
    (dict(n_params=0), "n_params"), (dict(n_params=-1.0), "n_params"),
    (dict(n_params=float("nan")), "n_params"), (dict(n_params=["7B"]), "n_params"),
    (dict(n_devices=1.5), "n_devices"), (dict(n_devices=0), "n_devices"),
    (dict(precision="fp8"), "precision"), (dict(optimizer="adagrad"), "optimizer"),
    (dict(zero_stage=4), "zero_stage"), (dict(zero_stage=True), "zero_stage"),
    (dict(zero_stage="1"), "zero_stage"), (dict(grad_dtype="int8"), "grad_dtype"),
])
def test_training_memory_errors(kwargs, word):
    args = dict(n_params=1e9) | kwargs
    n = args.pop("n_params")
    with pytest.raises(ValueError, match=word):
        fb.training_memory(n, **args)


# --- activations ----------------------------------------------------------------------------

def sbh(s, b, h):
    return s * b * h


@pytest.mark.parametrize("name, s, b", [("gpt3-175b", 2048, 1), ("bert-base", 512, 32),
                                        ("gpt2-small", 1024, 4)])
def test_korthikanti_equation_1(name, s, b):
    m = fb.model(name)
    h, a = m.d_model, m.n_heads
    expected = m.n_layers * sbh(s, b, h) * (34 + 5 * a * s / h)
    assert np.isclose(fb.activation_memory(m, b, s), expected, rtol=1e-12)


def test_korthikanti_table_2_gpt3():
    # Korthikanti et al. (2022), Table 2, per layer, t = 8.
    s, b, t, h, a = 2048, 2, 8, 12288, 96
    u = sbh(s, b, h)
    rows = [
        (dict(), u * (34 + 5 * a * s / h)),
        (dict(tensor_parallel=t), u * (10 + 24 / t + 5 * a * s / (h * t))),
        (dict(tensor_parallel=t, sequence_parallel=True), u * (34 / t + 5 * a * s / (h * t))),
        (dict(tensor_parallel=t, recompute="selective"), u * (10 + 24 / t)),
        (dict(tensor_parallel=t, sequence_parallel=True, recompute="selective"), u * 34 / t),
        (dict(recompute="full"), u * 2),
    ]
    for kwargs, per_layer in rows:
        assert np.isclose(fb.activation_memory(GPT3, b, s, **kwargs), 96 * per_layer, rtol=1e-12)


def test_flash_attention_removes_the_s2_terms():
    s, b = 2048, 1
    assert fb.activation_memory(GPT3, b, s, flash_attention=True) == 96 * 34 * sbh(s, b, 12288)
    assert fb.activation_memory(GPT3, b, s, flash_attention=True, recompute="full") == \
        96 * 2 * sbh(s, b, 12288)


def test_full_recompute_with_sequence_parallel_splits_the_layer_input():
    assert fb.activation_memory(GPT3, 1, 2048, recompute="full", tensor_parallel=8,
                                sequence_parallel=True) == 96 * 2 * sbh(2048, 1, 12288) / 8


def test_dropout_free_is_16sbh_plus_as2b_values():
    s, b = 2048, 3
    values = 16 * sbh(s, b, 12288) + 96 * s * s * b
    assert fb.activation_memory(GPT3, b, s, dropout=False) == 96 * 2 * values
    assert fb.activation_memory(GPT3, b, s, dropout=False, bytes_per_value=8) == 96 * 8 * values
    # Masks are 1 byte whatever the value size: fp32 activations are not 2x the 16-bit ones.
    with_masks = fb.activation_memory(GPT3, b, s, bytes_per_value=4)
    masks = 2 * sbh(s, b, 12288) + 96 * s * s * b
    assert with_masks == 96 * (4 * (values + 96 * s * s * b) + masks)


def test_gqa_swiglu_by_hand():
    # h = 64, 8 query heads and 2 KV heads of 16, SwiGLU with d_ff 160, no dropout, 2 bytes.
    m = Transformer(n_layers=3, d_model=64, n_heads=8, n_kv_heads=2, d_head=16, d_ff=160,
                    ffn="swiglu", vocab_size=100, seq_len=32, norm="rmsnorm", bias=False)
    s, b = 32, 2
    per_token = 4 * 64 + 2 * 8 * 16 + 2 * 2 * 16 + 3 * 160 + 8 * s
    assert fb.activation_memory(m, b, s, dropout=False) == 3 * 2 * s * b * per_token
    parts = activation_breakdown(m, b, s, dropout=False)
    assert parts["k"] == parts["v"] == s * b * 32 * 2 and parts["q"] == s * b * 128 * 2
    assert {"ffn_gate", "ffn_up", "ffn_act"} <= set(parts) and "ffn_preact" not in parts


def test_tensor_parallel_splits_only_the_inner_tensors():
    parts = activation_breakdown(GPT3, 1, 2048, tensor_parallel=4)
    full = activation_breakdown(GPT3, 1, 2048)
    for name in ("norm1_input", "norm1_output", "norm2_input", "norm2_output",
                 "attention_out_dropout_mask", "ffn_dropout_mask"):
        assert parts[name] == full[name]
    for name in ("q", "k", "v", "attention_probs", "attention_dropout_mask",
                 "attention_dropout_output", "attention_output", "ffn_preact", "ffn_act"):
        assert parts[name] == full[name] / 4


def test_activation_memory_broadcasts():
    out = fb.activation_memory(GPT3, np.array([1, 2]), np.array([[1024], [2048]]),
                               tensor_parallel=np.array([[[1]], [[8]]]))
    assert out.shape == (2, 2, 2)
    assert out[0, 1, 1] == fb.activation_memory(GPT3, 2, 2048)
    assert out[1, 0, 0] == fb.activation_memory(GPT3, 1, 1024, tensor_parallel=8)
    assert isinstance(fb.activation_memory(GPT3, 1, 2048), float)


@pytest.mark.parametrize("kwargs, word", [
    (dict(m=["gpt3-175b"]), "m must be a Transformer or a model name"), (dict(batch=0), "batch"),
    (dict(seq_len=1.5), "seq_len"), (dict(seq_len=-4), "seq_len"),
    (dict(recompute="partial"), "recompute"), (dict(recompute=True), "recompute"),
    (dict(tensor_parallel=0), "tensor_parallel"), (dict(tensor_parallel=2.5), "tensor_parallel"),
    (dict(sequence_parallel=1), "sequence_parallel"), (dict(flash_attention="yes"), "flash"),
    (dict(dropout=None), "dropout"), (dict(bytes_per_value=0), "bytes_per_value"),
    (dict(batch=np.array([1, np.inf])), "batch"),
])
def test_activation_memory_errors(kwargs, word):
    args = dict(m=GPT3, batch=1, seq_len=2048) | kwargs
    with pytest.raises(ValueError, match=word):
        fb.activation_memory(args.pop("m"), args.pop("batch"), args.pop("seq_len"), **args)


# --- against the reference model ------------------------------------------------------------

REFERENCE_SPECS = [
    Transformer(n_layers=2, d_model=32, n_heads=4, vocab_size=53, seq_len=16, name="gpt-like"),
    Transformer(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=80, ffn="swiglu",
                vocab_size=53, seq_len=16, positional="rope", norm="rmsnorm", bias=False,
                tied_embeddings=False, name="llama-like"),
    Transformer(n_layers=1, d_model=24, n_heads=2, d_head=16, n_kv_heads=1, d_ff=40,
                vocab_size=31, seq_len=16, positional="none", name="mqa-wide-heads"),
]


@pytest.mark.parametrize("m", REFERENCE_SPECS, ids=lambda m: m.name)
@pytest.mark.parametrize("recompute", [False, True])
def test_reference_saved_tensors_exactly(m, recompute):
    b, s = 2, 16
    ref = ReferenceTransformer(m, seed=1)
    tokens = np.random.default_rng(1).integers(0, m.vocab_size, (b, s + 1))
    with fb.count_flops() as c:
        ref.forward(tokens[:, :-1], tokens[:, 1:], recompute=recompute)
    kw = dict(dropout=False, bytes_per_value=8, recompute="full" if recompute else "none")
    for layer in range(m.n_layers):
        assert c.saved_by_name(layer, stats=False) == activation_breakdown(m, b, s, **kw)
    layers = sum(c.saved_total(i, stats=False) for i in range(m.n_layers))
    assert layers == fb.activation_memory(m, b, s, **kw)
    # The statistics the formula leaves out: mean and rstd (LayerNorm) or rstd (RMSNorm),
    # per token, per norm, 8 bytes each; none kept with recomputation.
    stats = sum(c.saved_total(i) - c.saved_total(i, stats=False) for i in range(m.n_layers))
    per_norm = 2 if m.norm == "layernorm" else 1
    assert stats == (0 if recompute else m.n_layers * 2 * per_norm * b * s * 8)


NEW_ARCHITECTURE_SPECS = [
    Transformer(n_layers=3, d_model=16, n_heads=4, n_kv_heads=2, vocab_size=29, seq_len=8,
                n_experts=4, top_k=2, n_shared_experts=1, d_ff_expert=6, n_dense_layers=1,
                d_ff=20, ffn="swiglu", norm="rmsnorm", positional="rope", window=3,
                global_every=2, attention_sinks=True, name="moe-windows-sinks"),
    Transformer(n_layers=2, d_model=16, n_heads=2, d_head=6, kv_lora_rank=8, q_lora_rank=10,
                qk_rope_dim=4, v_head_dim=5, n_experts=3, top_k=1, d_ff_expert=7, ffn="gelu",
                bias=False, vocab_size=29, seq_len=8, positional="rope", name="mla-moe-gelu"),
    Transformer(n_layers=2, d_model=12, n_heads=2, n_kv_heads=1, d_head=8, ffn="geglu", d_ff=18,
                norm="rmsnorm", bias=False, qk_norm=True, post_norms=True, window=4,
                vocab_size=29, seq_len=8, positional="rope", name="gemma-like"),
]


@pytest.mark.parametrize("m", NEW_ARCHITECTURE_SPECS, ids=lambda m: m.name)
@pytest.mark.parametrize("recompute", [False, True])
def test_reference_saved_tensors_of_the_new_architectures(m, recompute):
    b, s = 2, 8
    ref = ReferenceTransformer(m, seed=1)
    tokens = np.random.default_rng(1).integers(0, m.vocab_size, (b, s + 1))
    with fb.count_flops() as c:
        ref.forward(tokens[:, :-1], tokens[:, 1:], recompute=recompute)
    kw = dict(dropout=False, bytes_per_value=8, recompute="full" if recompute else "none")
    for layer in range(m.n_layers):  # each layer its own kind (dense or MoE FFN)
        assert c.saved_by_name(layer, stats=False) == activation_breakdown(m, b, s, **kw,
                                                                           layer=layer + 1)
    layers = sum(c.saved_total(i, stats=False) for i in range(m.n_layers))
    assert layers == fb.activation_memory(m, b, s, **kw)
    average = activation_breakdown(m, b, s, **kw)
    assert sum(average.values()) * m.n_layers == pytest.approx(layers, rel=1e-12)


def test_moe_layer_tensors_by_hand():
    m = NEW_ARCHITECTURE_SPECS[0]  # h=16, 4 heads of 4, 2 kv heads, top 2 of 4, 1 shared, f=6
    b, s, h, k, f = 2, 8, 16, 2, 6
    N = b * s
    moe = activation_breakdown(m, b, s, dropout=False, bytes_per_value=1, layer=2)
    dense = activation_breakdown(m, b, s, dropout=False, bytes_per_value=1, layer=1)
    assert {n: moe[n] for n in moe if n not in dense} == {
        "router_weights": N * k, "expert_gate": N * k * f, "expert_up": N * k * f,
        "expert_act": N * k * f, "expert_output": N * k * h, "shared_gate": N * f,
        "shared_up": N * f, "shared_act": N * f}
    assert {n for n in dense if n not in moe} == {"ffn_gate", "ffn_up", "ffn_act"}
    assert dense["ffn_gate"] == N * 20
    # Windows keep the full masked probabilities: layer 2 (global) and 1 (local) alike.
    assert moe["attention_probs"] == dense["attention_probs"] == b * 4 * s * s


def test_mla_tensors_by_hand():
    m = NEW_ARCHITECTURE_SPECS[1]  # h=16, 2 heads, dh=6, rq=10, r=8, dr=4, dv=5
    b, s = 1, 8
    parts = activation_breakdown(m, b, s, dropout=False, bytes_per_value=1, layer=1)
    assert {n: parts[n] for n in ("q_a_norm_input", "q_a_norm_output", "kv_a_norm_input",
                                  "kv_a_norm_output", "q", "k", "v", "attention_output")} == {
        "q_a_norm_input": s * 10, "q_a_norm_output": s * 10, "kv_a_norm_input": s * 8,
        "kv_a_norm_output": s * 8, "q": s * 2 * (6 + 4), "k": s * 2 * (6 + 4), "v": s * 2 * 5,
        "attention_output": s * 2 * 5}


# --- memory_budget: will it fit? -------------------------------------------------------------

A100 = fb.hardware("a100-80gb")


def test_largest_micro_batch_is_the_boundary():
    m = fb.model("gpt2-medium")
    for kwargs in (dict(), dict(recompute="full"), dict(recompute="selective"),
                   dict(recompute="selective", dropout=False), dict(buffers=0.1),
                   dict(flash_attention=True, zero_stage=2, n_devices=4), dict(buffers="2GB")):
        b_max = fb.largest_micro_batch(m, 1024, A100, **kwargs)
        assert b_max >= 1
        assert fb.memory_budget(m, b_max, 1024, **kwargs).fits(A100)
        assert not fb.memory_budget(m, b_max + 1, 1024, **kwargs).fits("a100-80gb")
    # States of 16 bytes/param plus one layer's working set under full recomputation.
    bud = fb.memory_budget(m, 2, 1024, recompute="full")
    assert bud.recompute_working_set == fb.activation_memory(m, 2, 1024) / m.n_layers
    assert np.isclose(bud.weights + bud.master_weights + bud.gradients + bud.optimizer_states,
                      16 * fb.param_count(m))


def test_memory_budget_nothing_fits():
    assert fb.largest_micro_batch(GPT3, 2048, A100) == 0
    assert not fb.memory_budget(GPT3, 1, 2048).fits(A100)


def test_memory_budget_logits_and_buffers_by_hand():
    m, b, s = fb.model("gpt2-medium"), 3, 1024
    # fp32 logits: b*s*V values of 4 bytes; split over the vocabulary by tensor parallelism.
    assert fb.memory_budget(m, b, s).logits == b * s * 50257 * 4
    assert fb.memory_budget(m, b, s, logits_dtype="bf16").logits == b * s * 50257 * 2
    assert fb.memory_budget(m, b, s, logits_dtype=None).logits == 0
    assert fb.memory_budget(m, b, s, tensor_parallel=2, n_devices=2).logits == b * s * 50257 * 2
    # Buffers: a fraction of the rest, or bytes.
    plain = fb.memory_budget(m, b, s)
    assert np.isclose(fb.memory_budget(m, b, s, buffers=0.25).total, 1.25 * plain.total)
    assert fb.memory_budget(m, b, s, buffers="1GB").buffers == 1e9
    assert fb.memory_budget(m, b, s, buffers=5e8).buffers == 5e8
    # Tensor parallelism splits the states t ways; ZeRO shards over the n/t data-parallel copies.
    tp = fb.memory_budget(m, b, s, tensor_parallel=4, n_devices=8, zero_stage=3)
    assert np.isclose(tp.optimizer_states, 8 * fb.param_count(m) / 4 / 2)
    d = plain.as_dict()
    assert set(d) == {"weights", "gathered_weights", "master_weights", "gradients",
                      "optimizer_states",
                      "activations", "recompute_working_set", "logits", "buffers", "total"}
    assert np.isclose(d["total"], sum(v for k, v in d.items() if k != "total"))
    # ZeRO-3 gathers the rest of one layer's matrices and biases (attention 4h^2 + 4h, FFN
    # 8h^2 + 5h at h = 1,024), 16-bit, 7/8 of it from the other 7 devices.
    z3 = fb.memory_budget(m, b, s, zero_stage=3, n_devices=8)
    assert z3.gathered_weights == (4 * 1024**2 + 4 * 1024 + 8 * 1024**2 + 4096 + 1024) * 2 * 7 / 8
    assert fb.memory_budget(m, b, s, zero_stage=2, n_devices=8).gathered_weights == 0
    assert fb.memory_budget(m, b, s, zero_stage=3, n_devices=1).gathered_weights == 0


def test_memory_budget_broadcasts():
    m = fb.model("gpt2-small")
    bud = fb.memory_budget(m, [1, 2, 4], 512)
    assert bud.total.shape == (3,) and bud.weights.shape == (3,)
    assert np.allclose(bud.total, [fb.memory_budget(m, b, 512).total for b in (1, 2, 4)])
    assert bud.fits(A100).tolist() == [True, True, True]


@pytest.mark.parametrize("kwargs, word", [
    (dict(tensor_parallel=3, n_devices=8), "tensor_parallel"),
    (dict(logits_dtype="fp8"), "logits_dtype"), (dict(buffers=-1), "buffers"),
    (dict(buffers="lots"), "buffers"), (dict(recompute="some"), "recompute"),
    (dict(zero_stage=np.array([1, 2])), "zero_stage"), (dict(n_params=["7B"]), "n_params"),
])
def test_memory_budget_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        fb.memory_budget("gpt2-small", 1, 512, **kwargs)


def test_memory_budget_recompute_working_sets_by_hand():
    # gpt2-medium: L = 24, h = 1024, a = 16; b = 2, s = 1024; 16-bit values, 1-byte masks.
    m, b, s = fb.model("gpt2-medium"), 2, 1024
    sbh_, as2b = s * b * 1024, 16 * s * s * b
    work = lambda **kw: fb.memory_budget(m, b, s, **kw).recompute_working_set
    acts = lambda **kw: fb.memory_budget(m, b, s, **kw).activations
    # Selective: the layer being differentiated rebuilds its s^2 tensors, softmax output (2),
    # dropout mask (1) and dropout output (2): 5as^2b bytes; without dropout 2as^2b.
    assert work(recompute="selective") == 5 * as2b
    assert work(recompute="selective", dropout=False) == 2 * as2b
    assert acts(recompute="selective") == 24 * 34 * sbh_
    assert acts(recompute="selective", dropout=False) == 24 * 2 * 16 * sbh_
    # FlashAttention never materialises them: nothing to rebuild.
    assert work(recompute="selective", flash_attention=True) == 0
    # Full: one whole layer, 34sbh + 5as^2b bytes (2(16sbh + as^2b) without dropout).
    assert work(recompute="full") == 34 * sbh_ + 5 * as2b
    assert work(recompute="full", dropout=False) == 2 * (16 * sbh_ + as2b)
    assert work(recompute="full", flash_attention=True, dropout=False) == 2 * 16 * sbh_
    assert work() == 0 and acts(dropout=False) == 24 * 2 * (16 * sbh_ + as2b)
    # The working set counts against the largest batch: one sequence costs layers + one layer
    # (and its fp32 logits).
    per_seq = 24 * 34 * s * 1024 + 5 * 16 * s * s + s * 50257 * 4
    states = 16 * fb.param_count(m)
    assert fb.largest_micro_batch(m, s, A100, recompute="selective") == \
        int((A100.memory_bytes - states) // per_seq)
