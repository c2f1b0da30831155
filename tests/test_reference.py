"""The counting reference transformer: gradients, exact counts, saved tensors, generation.

Every expected count below is written out from the shapes by hand, never copied from the code.
"""

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

import flopsbook as fb
from flopsbook.reference import (ELEMENTWISE_FLOPS, ReferenceTransformer, causal_mask,
                                 count_flops, elementwise, matmul)
from flopsbook.spec import Transformer, param_count

from gradcheck import assert_gradients_match, batch

REFERENCE_DIR = Path(__file__).parents[1] / "flopsbook" / "reference"
F64 = 8  # bytes per float64 (and per int64 token id)


def tiny(**kw):
    base = dict(n_layers=2, d_model=8, n_heads=2, vocab_size=11, seq_len=16)
    return Transformer(**{**base, **kw})


# Small configurations covering every feature the reference model implements.
CONFIGS = {
    "gpt2-like": tiny(d_ff=16),  # gelu, layernorm with bias, learned, tied, MHA
    "llama-like-gqa": tiny(n_heads=4, n_kv_heads=2, d_head=4, d_ff=12, ffn="swiglu",
                           tied_embeddings=False, positional="rope", norm="rmsnorm", bias=False),
    "palm-like-mqa": tiny(n_heads=3, n_kv_heads=1, d_head=6, d_ff=10, ffn="swiglu",
                          positional="rope", bias=False),  # layernorm without bias, tied
    "no-positions": tiny(n_heads=6, n_kv_heads=3, d_head=2, d_ff=12, tied_embeddings=False,
                         positional="none", norm="rmsnorm"),  # biases on linears, gelu
    "odd-head-learned": tiny(n_layers=1, n_heads=2, n_kv_heads=1, d_head=5, d_ff=9,
                             bias=False, vocab_size=7),
    "swiglu-bias-rope": tiny(n_layers=3, d_model=6, n_heads=2, d_head=4, d_ff=8, ffn="swiglu",
                             positional="rope", tied_embeddings=False),
}


# --------------------------------------------------------------------------------------------
# Gradients against central finite differences
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CONFIGS)
def test_gradients_match_finite_differences(name):
    # A random direction checks every entry at once; four single entries besides.
    m = CONFIGS[name]
    assert_gradients_match(ReferenceTransformer(m, seed=3), *batch(m, 2, 5), entries=4)


def test_recompute_gives_the_same_loss_and_gradients():
    m = CONFIGS["llama-like-gqa"]
    model = ReferenceTransformer(m)
    tokens, targets = batch(m, 2, 6)
    loss, grads = model.train_step(tokens, targets)
    loss_r, grads_r = model.train_step(tokens, targets, recompute=True)
    assert loss == loss_r
    for k in grads:
        np.testing.assert_allclose(grads_r[k], grads[k], rtol=1e-13, atol=1e-15)


def test_loss_is_mean_cross_entropy_of_the_logits():
    m = CONFIGS["no-positions"]
    model = ReferenceTransformer(m)
    tokens, targets = batch(m, 3, 4)
    logits = model.logits(tokens)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean(np.take_along_axis(logp, targets[..., None], -1))
    assert model.forward(tokens, targets) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

def _scaled_down(m):
    """A registry model shrunk to a few thousand parameters, keeping its features: MoE (with
    its shared experts and dense first layers), MLA (with or without a query latent), local
    and global layers, and every switch of the spec, unchanged."""
    kw = dict(n_layers=2, d_model=16, n_heads=4, d_ff=24, vocab_size=37, seq_len=8)
    if m.is_mla:
        kw.update(n_kv_heads=4, d_head=6, kv_lora_rank=8, qk_rope_dim=4, v_head_dim=5,
                  q_lora_rank=None if m.q_lora_rank is None else 10)
    else:
        kw.update(n_kv_heads=4 if m.n_kv_heads == m.n_heads else (1 if m.n_kv_heads == 1 else 2),
                  d_head=None if m.d_head == m.d_model // m.n_heads else 6)
    if m.is_moe:  # layer 1 dense when the model has dense first layers, layer 2 an MoE
        kw.update(n_experts=4, top_k=min(m.top_k, 2), n_shared_experts=min(m.n_shared_experts, 1),
                  d_ff_expert=10, n_dense_layers=min(m.n_dense_layers, 1))
    if m.window is not None:  # layer 1 local, layer 2 global when the model has both
        kw.update(window=3, global_every=None if m.global_every is None else 2)
    return dataclasses.replace(m, **kw)


REGISTRY_SMALL = [_scaled_down(fb.model(n)) for n in fb.models()
                  if fb.model(n).positional != "relative"]


def test_registry_small_keeps_every_feature():
    # The scaled-down registry exercises each architecture the spec describes.
    assert any(m.is_moe and m.n_shared_experts and m.n_dense_layers for m in REGISTRY_SMALL)
    assert any(m.is_mla and m.q_lora_rank for m in REGISTRY_SMALL)
    assert any(m.is_mla and m.q_lora_rank is None for m in REGISTRY_SMALL)
    assert any(m.window and m.global_every for m in REGISTRY_SMALL)
    assert any(m.window and not m.global_every for m in REGISTRY_SMALL)
    for switch in ("router_bias", "qk_norm", "post_norms", "attention_sinks"):
        assert any(getattr(m, switch) for m in REGISTRY_SMALL), switch
    assert {m.ffn for m in REGISTRY_SMALL} == {"gelu", "swiglu", "geglu"}


@pytest.mark.parametrize("m", list(CONFIGS.values()) + REGISTRY_SMALL, ids=lambda m: m.name)
def test_parameters_add_up_to_param_count(m):
    model = ReferenceTransformer(m)
    assert model.n_params == sum(p.size for p in model.params.values())
    assert model.n_params == param_count(m) - m.extra_params
    assert all(p.dtype == np.float64 for p in model.params.values())


def test_registry_shapes_scaled_down_train():
    assert any(m.extra_params for m in REGISTRY_SMALL)  # BERT's extras are left out above
    for m in REGISTRY_SMALL:
        tokens, targets = batch(m, 1, 4)
        with count_flops() as c:
            ReferenceTransformer(m).train_step(tokens, targets)
        assert c.total() == 3 * c.total("forward"), m.name


def test_parameter_shapes_by_hand():
    m = CONFIGS["llama-like-gqa"]  # d=8, 4 heads of 4, 2 kv heads, d_ff=12, untied, no bias
    p = ReferenceTransformer(m).params
    assert p["layers.0.attn.w_q"].shape == (8, 16)
    assert p["layers.0.attn.w_k"].shape == p["layers.0.attn.w_v"].shape == (8, 8)
    assert p["layers.1.attn.w_o"].shape == (16, 8)
    assert p["layers.1.ffn.w_gate"].shape == p["layers.1.ffn.w_up"].shape == (8, 12)
    assert p["layers.1.ffn.w_down"].shape == (12, 8)
    assert p["output_embedding"].shape == p["token_embedding"].shape == (11, 8)
    assert "position_embedding" not in p and not any(".b_" in k or "bias" in k for k in p)


# --------------------------------------------------------------------------------------------
# Exact FLOP counts, by hand from the shapes
# --------------------------------------------------------------------------------------------

def test_forward_counts_mha_gelu_by_hand():
    m = tiny(d_ff=32)  # L=2, d=8, a=2 heads of 4, d_ff=32, V=11
    L, b, s, d, a, dh, dff, V = 2, 2, 5, 8, 2, 4, 32, 11
    N = b * s
    tokens, targets = batch(m, b, s)
    model = ReferenceTransformer(m)
    with count_flops() as dense, count_flops(causal=True) as causal:
        model.forward(tokens, targets)
    expected = {
        "qkv": L * 2 * N * d * (3 * d),                     # 2 * 2*10*8*24 = 7,680
        "scores": L * b * a * 2 * s * dh * s,               # 2 * 2*2 * 2*5*4*5 = 1,600
        "weighted_values": L * b * a * 2 * s * s * dh,      # 1,600
        "out_proj": L * 2 * N * d * d,                      # 2,560
        "ffn": L * (2 * N * d * dff + 2 * N * dff * d),     # 20,480
        "logits": 2 * N * d * V,                            # 1,760
    }
    assert expected["qkv"] == 7680 and expected["ffn"] == 20480 and expected["logits"] == 1760
    assert dense.by_component("forward") == expected
    pairs = s * (s + 1) // 2  # 15 of the 25 (query, key) pairs are unmasked
    assert causal.by_component("forward") == {
        **expected,
        "scores": L * b * a * 2 * dh * pairs,               # 2 * 2*2 * 2*4*15 = 960
        "weighted_values": L * b * a * 2 * pairs * dh}
    assert causal.total("forward") == dense.total("forward") - 2 * L * b * a * 2 * dh * (25 - 15)


def test_forward_counts_gqa_swiglu_by_hand():
    m = CONFIGS["llama-like-gqa"]  # d=8, 4 query heads of 4, 2 kv heads, d_ff=12, V=11
    L, b, s, d, a, kv, dh, dff, V = 2, 3, 4, 8, 4, 2, 4, 12, 11
    N = b * s
    tokens, targets = batch(m, b, s)
    with count_flops() as dense, count_flops(causal=True) as causal:
        ReferenceTransformer(m).forward(tokens, targets)
    expected = {
        "qkv": L * 2 * N * d * (a * dh + 2 * kv * dh),   # keys and values are narrower
        "scores": L * b * a * 2 * s * s * dh,            # every query head scores every key
        "weighted_values": L * b * a * 2 * s * s * dh,
        "out_proj": L * 2 * N * (a * dh) * d,
        "ffn": L * 3 * 2 * N * d * dff,                  # gate, up, down
        "logits": 2 * N * d * V,
    }
    assert dense.by_component("forward") == expected
    pairs = s * (s + 1) // 2
    assert causal.by_component("forward")["scores"] == L * b * a * 2 * pairs * dh


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", ["gpt2-like", "palm-like-mqa"])
def test_training_is_three_forwards(name, causal):
    m = CONFIGS[name]
    tokens, targets = batch(m, 2, 6)
    with count_flops(causal=causal) as c:
        ReferenceTransformer(m).train_step(tokens, targets)
    fwd = c.by_component("forward")
    attention = fwd["scores"] + fwd["weighted_values"]
    # Weight products: one dX and one dW product per forward product, of the same size.
    assert c.by_component("backward_weight") == {k: v for k, v in fwd.items()
                                                 if k not in ("scores", "weighted_values")}
    # Attention products have no weights: both of their backward products are backward_input.
    assert c.total("backward_input") == c.total("forward") + attention
    assert c.total("backward") == 2 * c.total("forward")
    assert c.total() == 3 * c.total("forward")
    assert c.total("recompute") == 0


def test_recompute_adds_one_forward_of_the_layers():
    m = CONFIGS["gpt2-like"]
    tokens, targets = batch(m, 2, 6)
    with count_flops() as plain:
        ReferenceTransformer(m).train_step(tokens, targets)
    with count_flops() as c:
        ReferenceTransformer(m).train_step(tokens, targets, recompute=True)
    fwd = plain.by_component("forward")
    layers_forward = {k: v for k, v in fwd.items() if k != "logits"}
    assert c.by_component("recompute") == layers_forward
    assert c.total() == 3 * plain.total("forward") + sum(layers_forward.values())
    for p in ("forward", "backward_input", "backward_weight"):
        assert c.total(p) == plain.total(p)
    assert c.total("backward") == plain.total("backward")  # "backward" never includes recompute


# --------------------------------------------------------------------------------------------
# The counter
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("q, k", [(5, 5), (1, 9), (3, 7), (4, 4)])
def test_causal_pairs_for_new_queries_at_the_end(q, k):
    mask = causal_mask(q, k)
    assert mask.sum() == q * (k - q) + q * (q + 1) // 2
    dh, heads = 3, 2
    Q, K = np.ones((heads, q, dh)), np.ones((heads, k, dh))
    with count_flops() as dense, count_flops(causal=True) as causal:
        S = matmul(Q, K.swapaxes(-1, -2), component="scores", mask=mask)
        matmul(S.swapaxes(-1, -2), Q, component="scores", pass_="backward_input", mask=mask)
    assert dense.total("forward") == 2 * heads * q * k * dh
    assert causal.total("forward") == 2 * heads * dh * (q * (k - q) + q * (q + 1) // 2)
    assert causal.total("backward_input") == causal.total("forward")
    assert dense.total("backward") == dense.total("forward")


def test_counter_basics_and_bad_input():
    a, w = np.ones((4, 3, 5)), np.ones((5, 2))
    with count_flops() as outer:
        with count_flops() as inner:
            matmul(a, w, component="ffn")
        matmul(a, w, component="ffn", pass_="backward_weight")
    assert inner.total() == 2 * 4 * 3 * 5 * 2 and inner.by_component() == {"ffn": 240}
    assert outer.total() == 480 and outer.total("backward") == 240
    assert outer.total("forward", component="qkv") == 0
    with pytest.raises(ValueError, match="pass_"):
        matmul(a, w, pass_="sideways")
    with pytest.raises(ValueError, match="pass_"):
        outer.total("backwards")
    with pytest.raises(ValueError, match="mask"):
        matmul(a, w, mask=np.ones((7, 7), bool))
    with pytest.raises(ValueError, match="causal"):
        with count_flops(causal="yes"):
            pass


def test_other_work_follows_the_per_element_convention():
    m = tiny(d_ff=32)  # layernorm with bias, gelu, learned positions
    L, b, s, d, a, dff, V = 2, 2, 5, 8, 2, 32, 11
    N = b * s
    tokens, targets = batch(m, b, s)
    with count_flops() as dense, count_flops(causal=True) as causal:
        ReferenceTransformer(m).forward(tokens, targets)
    fwd = {kind: f for kind, (f, _) in ELEMENTWISE_FLOPS.items()}
    other = dense.other_by_kind("forward")
    assert other["softmax"] == fwd["softmax"] * L * b * a * s * s
    causal_softmax = causal.other_by_kind("forward")["softmax"]
    assert causal_softmax == fwd["softmax"] * L * b * a * s * (s + 1) // 2
    assert other["layernorm"] == fwd["layernorm"] * (2 * L + 1) * N * d
    assert other["gelu"] == fwd["gelu"] * L * N * dff
    assert other["residual"] == fwd["residual"] * 2 * L * N * d
    assert other["embedding"] == fwd["embedding"] * N * d
    assert other["cross_entropy"] == fwd["cross_entropy"] * N * V
    # biases: q, k, v, o, ffn in, ffn out per layer, and every layernorm
    assert other["bias"] == fwd["bias"] * (L * N * (3 * d + d + dff + d) + (2 * L + 1) * N * d)
    assert dense.other_total() == sum(dense.other.values()) == sum(other.values())
    assert dense.total() == dense.total("forward")  # other work is never in total()
    with count_flops() as c:
        elementwise("rope", 10, "backward")
    assert c.other == {"rope": 10 * ELEMENTWISE_FLOPS["rope"][1]}


# --------------------------------------------------------------------------------------------
# Saved tensors
# --------------------------------------------------------------------------------------------

def test_saved_bytes_match_korthikanti_without_dropout():
    m = tiny(d_ff=32)  # pre-norm, layernorm, gelu, MHA, d_ff = 4h
    L, b, s, h, a, V = 2, 2, 5, 8, 2, 11
    tokens, targets = batch(m, b, s)
    with count_flops() as c:
        ReferenceTransformer(m).forward(tokens, targets)
    for layer in range(L):
        assert c.saved_total(layer, stats=False) == (16 * s * b * h + a * s * s * b) * F64
        # Per-token statistics, separate: mean and rstd of both norms.
        assert c.saved_total(layer) - c.saved_total(layer, stats=False) == 4 * s * b * F64
    by_name = c.saved_by_name(0, stats=False)
    assert by_name == {
        "norm1_input": s * b * h * F64, "norm1_output": s * b * h * F64,
        "q": s * b * h * F64, "k": s * b * h * F64, "v": s * b * h * F64,
        "attention_probs": a * s * s * b * F64, "attention_output": s * b * h * F64,
        "norm2_input": s * b * h * F64, "norm2_output": s * b * h * F64,
        "ffn_preact": s * b * 4 * h * F64, "ffn_act": s * b * 4 * h * F64}
    assert c.saved_by_name("embedding") == {"tokens": s * b * F64}
    assert c.saved_by_name("head") == {
        "final_norm_input": s * b * h * F64, "final_norm_mean": s * b * F64,
        "final_norm_rstd": s * b * F64, "final_norm_output": s * b * h * F64,
        "output_probs": s * b * V * F64, "targets": s * b * F64}
    assert c.saved_by_layer().keys() == {0, 1, "embedding", "head"}
    assert c.saved_total() == sum(c.saved_by_layer().values())


def test_saved_bytes_gqa_swiglu_rmsnorm_and_recompute():
    m = CONFIGS["llama-like-gqa"]  # h=8, 4 heads of 4 (d_attn=16), 2 kv heads (d_kv=8), d_ff=12
    L, b, s, h, a, d_attn, d_kv, dff = 2, 2, 6, 8, 4, 16, 8, 12
    N = b * s
    tokens, targets = batch(m, b, s)
    with count_flops() as c:
        ReferenceTransformer(m).forward(tokens, targets)
    assert c.saved_by_name(1) == {
        "norm1_input": N * h * F64, "norm1_rstd": N * F64, "norm1_output": N * h * F64,
        "q": N * d_attn * F64, "k": N * d_kv * F64, "v": N * d_kv * F64,
        "attention_probs": b * a * s * s * F64, "attention_output": N * d_attn * F64,
        "norm2_input": N * h * F64, "norm2_rstd": N * F64, "norm2_output": N * h * F64,
        "ffn_gate": N * dff * F64, "ffn_up": N * dff * F64, "ffn_act": N * dff * F64}
    with count_flops() as r:
        ReferenceTransformer(m).forward(tokens, targets, recompute=True)
    for layer in range(L):
        assert r.saved_by_name(layer) == {"layer_input": N * h * F64}
    assert r.saved_by_name("head") == c.saved_by_name("head")


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------

def _layers_forward(m, b, n_queries, pairs_per_head):
    """Forward FLOPs of the layers for n_queries new tokens, by component (hand-derived)."""
    d, a, kv, dh, dff = m.d_model, m.n_heads, m.n_kv_heads, m.d_head, m.d_ff
    n_ffn = 3 if m.ffn == "swiglu" else 2
    t = b * n_queries
    return {"qkv": m.n_layers * 2 * t * d * (a * dh + 2 * kv * dh),
            "scores": m.n_layers * 2 * b * a * pairs_per_head * dh,
            "weighted_values": m.n_layers * 2 * b * a * pairs_per_head * dh,
            "out_proj": m.n_layers * 2 * t * a * dh * d,
            "ffn": m.n_layers * n_ffn * 2 * t * d * dff}


def _add(total, part):
    for k, v in part.items():
        total[k] = total.get(k, 0) + v


@pytest.mark.parametrize("name", ["llama-like-gqa", "gpt2-like"])
def test_generation_with_and_without_cache(name):
    m = CONFIGS[name]
    b, P, n = 2, 3, 4
    prompt, _ = batch(m, b, P)
    model = ReferenceTransformer(m)
    with count_flops() as cd, count_flops(causal=True) as cc:
        cached = model.generate(prompt, n)
    assert model.kv_cache_nbytes == 2 * m.n_layers * b * m.n_kv_heads * m.d_head * (P + n - 1) * F64
    with count_flops() as fd, count_flops(causal=True) as fc:
        full = model.generate(prompt, n, kv_cache=False)
    assert model.kv_cache_nbytes == 0
    np.testing.assert_array_equal(cached, full)
    assert cached.shape == (b, n)
    # Greedy: each new token is the argmax of the logits of the whole sequence before it.
    seq = np.concatenate([prompt, cached], axis=1)
    np.testing.assert_array_equal(model.logits(seq[:, :-1])[:, P - 1:].argmax(-1), cached)

    logits = 2 * b * m.d_model * m.vocab_size  # one position per pass
    # With the cache: prefill over P tokens, then n-1 one-token steps over P+1, ..., P+n-1 keys.
    dense, causal = {"logits": n * logits}, {"logits": n * logits}
    _add(dense, _layers_forward(m, b, P, P * P))
    _add(causal, _layers_forward(m, b, P, P * (P + 1) // 2))
    for keys in range(P + 1, P + n):
        _add(dense, _layers_forward(m, b, 1, keys))   # 1 query sees every key: no masking
        _add(causal, _layers_forward(m, b, 1, keys))
    assert cd.by_component("forward") == dense and cc.by_component("forward") == causal
    # Without: n full passes over P, P+1, ..., P+n-1 tokens.
    dense, causal = {"logits": n * logits}, {"logits": n * logits}
    for length in range(P, P + n):
        _add(dense, _layers_forward(m, b, length, length * length))
        _add(causal, _layers_forward(m, b, length, length * (length + 1) // 2))
    assert fd.by_component("forward") == dense and fc.by_component("forward") == causal
    assert cd.total() == cd.total("forward") and not cd.saved_bytes  # inference keeps nothing


# --------------------------------------------------------------------------------------------
# Bad input and independence from the formulas
# --------------------------------------------------------------------------------------------

def test_bad_inputs():
    m = CONFIGS["gpt2-like"]  # vocab 11, learned positions, seq_len 16
    model = ReferenceTransformer(m)
    ok = np.zeros((2, 4), dtype=int)
    with pytest.raises(ValueError, match="vocab_size"):
        model.forward(np.full((2, 4), 11), ok)
    with pytest.raises(ValueError, match="vocab_size"):
        model.forward(ok, np.full((2, 4), -1))
    with pytest.raises(ValueError, match="integer"):
        model.forward(ok.astype(float), ok)
    with pytest.raises(ValueError, match="shape"):
        model.forward(ok, ok[:, :3])
    with pytest.raises(ValueError, match="seq_len=16"):
        model.forward(np.zeros((1, 17), dtype=int), np.zeros((1, 17), dtype=int))
    model.forward(np.zeros((1, 16), dtype=int), np.zeros((1, 16), dtype=int))  # fits exactly
    with pytest.raises(ValueError, match="seq_len=16"):
        model.generate(np.zeros((1, 10), dtype=int), 8)  # positions up to 16 would be fed
    model.generate(np.zeros((1, 10), dtype=int), 7)  # the last fed position is 15
    with pytest.raises(ValueError, match="new_tokens"):
        model.generate(ok, 0)
    with pytest.raises(ValueError, match="forward"):
        ReferenceTransformer(m).backward()
    with pytest.raises(ValueError, match="learned, rope and none"):
        ReferenceTransformer(tiny(positional="relative"))
    with pytest.raises(ValueError, match="even"):
        ReferenceTransformer(tiny(d_head=3, positional="rope"))
    # RoPE and no positions have no table: longer sequences are fine.
    long = np.zeros((1, 20), dtype=int)
    ReferenceTransformer(CONFIGS["llama-like-gqa"]).forward(long, long)


def test_reference_imports_no_formula_module():
    allowed = {"numpy", "math", "numbers", "typing", "collections", "contextlib", "importlib",
               "__future__", "spec", "counter"}
    # xla.py drives a real compiler (JAX) and uses the standard library to read its output; it
    # too may import no formula module.
    engine = allowed | {"os", "re", "time", "dataclasses", "jax", "sharding", "functools"}
    # model_parallel.py reuses the model's blocks and the counted collectives.
    splitter = allowed | {"dataclasses", "model", "collectives"}
    for path in REFERENCE_DIR.glob("*.py"):
        ok = {"xla.py": engine, "model_parallel.py": splitter}.get(path.name, allowed)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for full in names:
                assert full.split(".")[-1] in ok and "flops." not in full, (path.name, full)
                assert not full.startswith(("flopsbook.flops", "flopsbook.communication",
                                            "flopsbook.inference", "flopsbook.memory")), full
