"""The reference model's newer architectures: mixtures of experts, latent attention, windows,
GeGLU, q/k norms, post-norms and attention sinks.

Gradients are held against finite differences, counts against hand derivations from the shapes
and against the formulas of flopsbook.flops (two independent computations); no expected value
is copied from the code under test.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flopsbook as fb
from flopsbook.reference import ReferenceTransformer, causal_mask, count_flops
from flopsbook.spec import Transformer, param_count

from gradcheck import assert_gradients_match, batch

F64 = 8  # bytes per float64


def tiny(**kw):
    base = dict(n_layers=2, d_model=8, n_heads=2, vocab_size=11, seq_len=16)
    return Transformer(**{**base, **kw})


CONFIGS = {
    # MoE: a dense first layer, a shared expert, biases on the experts and the router.
    "moe-shared-dense-bias": tiny(n_layers=3, d_ff=10, n_experts=4, top_k=2,
                                  n_shared_experts=1, d_ff_expert=6, n_dense_layers=1,
                                  ffn="swiglu", positional="rope"),
    "moe-gelu-top1": tiny(n_experts=3, top_k=1, d_ff_expert=5, norm="rmsnorm", bias=False,
                          router_bias=True, tied_embeddings=False),
    "moe-geglu-top3": tiny(n_layers=1, n_experts=3, top_k=3, n_shared_experts=2,
                           d_ff_expert=4, ffn="geglu", bias=False),
    "mla-q-lora": tiny(n_heads=2, d_head=4, kv_lora_rank=6, q_lora_rank=5, qk_rope_dim=2,
                       v_head_dim=3, positional="rope", norm="rmsnorm", bias=False),
    "mla-plain": tiny(n_heads=3, d_head=3, kv_lora_rank=4, qk_rope_dim=4, v_head_dim=5,
                      positional="learned", bias=False, d_ff=12),  # layernorm without bias
    "mla-no-rope-part": tiny(d_head=4, kv_lora_rank=3, positional="rope", bias=False,
                             ffn="swiglu", d_ff=6),
    "windows": tiny(n_layers=3, n_heads=4, n_kv_heads=2, d_head=4, window=2, global_every=2,
                    positional="rope", ffn="swiglu", d_ff=12),
    "geglu": tiny(ffn="geglu", d_ff=12),
    "qk-norm": tiny(n_heads=4, n_kv_heads=2, d_head=4, qk_norm=True, positional="rope"),
    "qk-norm-rms": tiny(qk_norm=True, norm="rmsnorm", bias=False, positional="none"),
    "post-norms": tiny(post_norms=True, norm="rmsnorm", ffn="swiglu", d_ff=8),
    "sinks": tiny(n_heads=4, n_kv_heads=2, d_head=4, attention_sinks=True, positional="rope"),
    "gpt-oss-like": tiny(n_layers=2, n_heads=4, n_kv_heads=2, d_head=4, n_experts=4,
                         top_k=2, d_ff_expert=6, ffn="swiglu", norm="rmsnorm",
                         positional="rope", window=3, global_every=2, attention_sinks=True,
                         tied_embeddings=False),
    "gemma-like": tiny(n_layers=3, n_heads=2, n_kv_heads=1, d_head=6, ffn="geglu", d_ff=10,
                       norm="rmsnorm", bias=False, positional="rope", window=2,
                       global_every=3, qk_norm=True, post_norms=True),
    "deepseek-like": tiny(n_layers=2, n_heads=2, d_head=4, kv_lora_rank=5, q_lora_rank=6,
                          qk_rope_dim=2, v_head_dim=4, n_experts=4, top_k=2,
                          n_shared_experts=1, d_ff_expert=4, n_dense_layers=1, d_ff=10,
                          ffn="swiglu", norm="rmsnorm", bias=False, positional="rope",
                          window=3, tied_embeddings=False),
}


# --------------------------------------------------------------------------------------------
# Gradients against central finite differences
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CONFIGS)
def test_gradients_match_finite_differences(name):
    m = CONFIGS[name]
    assert_gradients_match(ReferenceTransformer(m, seed=3), *batch(m, 2, 6))


def test_every_new_parameter_gets_a_gradient():
    # A zero gradient would pass the finite-difference test if the loss ignored the parameter.
    for name in ("sinks", "gpt-oss-like", "gemma-like", "deepseek-like"):
        m = CONFIGS[name]
        tokens, targets = batch(m, 2, 6)
        _, grads = ReferenceTransformer(m, seed=3).train_step(tokens, targets)
        for pname, g in grads.items():
            if ".moe.expert" in pname:
                continue  # an expert no token chose has, rightly, no gradient
            assert np.abs(g).max() > 0, (name, pname)


def test_recompute_gives_the_same_gradients():
    m = CONFIGS["deepseek-like"]
    model = ReferenceTransformer(m)
    tokens, targets = batch(m, 2, 5)
    loss, grads = model.train_step(tokens, targets)
    loss_r, grads_r = model.train_step(tokens, targets, recompute=True)
    assert loss == loss_r
    for k in grads:
        np.testing.assert_allclose(grads_r[k], grads[k], rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------------------------
# Forward semantics
# --------------------------------------------------------------------------------------------

def test_window_mask_by_hand():
    # Window 3: a token sees itself and the 2 before it.
    assert causal_mask(5, 5, 3).astype(int).tolist() == [
        [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    # Two new queries at the end of six keys.
    assert causal_mask(2, 6, 2).astype(int).tolist() == [[0, 0, 0, 1, 1, 0],
                                                         [0, 0, 0, 0, 1, 1]]


def test_a_window_hides_exactly_the_old_tokens():
    # Changing token 0 changes the logits of positions < window only (one local layer; the
    # residual stream carries nothing further back).
    m = tiny(n_layers=1, window=3, positional="rope")
    model = ReferenceTransformer(m)
    tokens, _ = batch(m, 1, 7)
    other = tokens.copy()
    other[0, 0] = (other[0, 0] + 1) % m.vocab_size
    changed = np.abs(model.logits(tokens) - model.logits(other)).max(axis=-1)[0]
    assert (changed[:3] > 1e-9).all() and (changed[3:] == 0).all()


def test_sinks_take_probability():
    m = CONFIGS["sinks"]  # 4 query heads of 4, 2 kv heads
    model = ReferenceTransformer(m)
    sinks = np.array([0.0, 1.0, 2.0, -50.0])
    model.params["layers.0.attn.sinks"][:] = sinks
    tokens, targets = batch(m, 1, 4)
    model.forward(tokens, targets)
    t = model._tape["layers"][0]
    g, s = 2, 4
    totals = t["attention_probs"].sum(axis=-1)[0].reshape(4, s)  # (query head, position)
    # The first query sees one key: its probability is 1 / (1 + exp(sink - score)).
    for head in range(4):
        kv, j = divmod(head, g)
        score = t["q"][0, kv, j * s] @ t["k"][0, kv, 0] / math.sqrt(m.d_head)
        assert totals[head, 0] == pytest.approx(1 / (1 + math.exp(sinks[head] - score)))
    assert np.all(totals[:3] < 1) and np.allclose(totals[3], 1.0, rtol=0, atol=1e-15)


def test_mla_absorbed_equals_naive():
    # The absorbed decode and the naive form compute the same attention (to rounding).
    m = CONFIGS["mla-q-lora"]
    model = ReferenceTransformer(m)
    tokens, _ = batch(m, 2, 6)
    full = model.logits(tokens)[:, -1]
    caches = [{} for _ in range(m.n_layers)]
    model._last_logits(tokens[:, :5], 0, caches)
    step = model._last_logits(tokens[:, 5:], 5, caches)
    np.testing.assert_allclose(step, full, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Counts by hand
# --------------------------------------------------------------------------------------------

def test_moe_counts_by_hand():
    m = CONFIGS["moe-shared-dense-bias"]  # L=3 (first dense), d=8, E=4, k=2, 1 shared, f=6
    b, s, d, E, k, f, dff = 2, 5, 8, 4, 2, 6, 10
    N = b * s
    tokens, targets = batch(m, b, s)
    with count_flops() as c:
        ReferenceTransformer(m).forward(tokens, targets)
    assert c.by_component("forward", layer=0)["ffn"] == 3 * 2 * N * d * dff
    assert "router" not in c.by_component("forward", layer=0)
    for layer in (1, 2):
        fwd = c.by_component("forward", layer=layer)
        assert fwd["router"] == 2 * N * d * E
        assert fwd["ffn"] == 3 * 2 * N * d * f * (k + 1)  # two routed, one shared per token
    assert c.total("forward", layer="head") == 2 * N * d * m.vocab_size


@pytest.mark.parametrize("routing", ["random", "all-to-one", "ties"])
def test_routed_expert_flops_do_not_depend_on_the_routing(routing):
    m = tiny(n_layers=1, n_experts=5, top_k=2, d_ff_expert=3, ffn="gelu", router_bias=True)
    b, s, d, k, f = 2, 6, 8, 2, 3
    model = ReferenceTransformer(m)
    router = model.params["layers.0.moe.w_router"]
    if routing != "random":  # every token's logits are the bias alone
        router[:] = 0.0
        model.params["layers.0.moe.b_router"][:] = ([0, 0, 0, 5, 4] if routing == "all-to-one"
                                                     else 0.0)
    tokens, targets = batch(m, b, s)
    with count_flops() as c:
        model.forward(tokens, targets)
    chosen = model._tape["layers"][0]["router_indices"]
    if routing == "all-to-one":
        assert (chosen == [3, 4]).all()
    if routing == "ties":  # equal logits: the lowest expert indices
        assert (chosen == [0, 1]).all()
    assert c.total("forward", component="ffn") == b * s * k * 2 * (2 * d * f)
    model.backward()


def test_mla_counts_by_hand():
    m = CONFIGS["mla-q-lora"]  # d=8, H=2, dh=4, rq=5, r=6, dr=2, dv=3
    b, s, d, H, dh, rq, r, dr, dv = 2, 4, 8, 2, 4, 5, 6, 2, 3
    N, pairs = b * s, s * (s + 1) // 2
    tokens, targets = batch(m, b, s)
    with count_flops() as dense, count_flops(causal=True) as causal:
        ReferenceTransformer(m).forward(tokens, targets)
    qkv = 2 * N * (d * rq + rq * H * (dh + dr) + d * (r + dr) + r * H * (dh + dv))
    for c, p in ((dense, s * s), (causal, pairs)):
        fwd = c.by_component("forward", layer=1)
        assert fwd["qkv"] == qkv
        assert fwd["scores"] == 2 * b * H * (dh + dr) * p
        assert fwd["weighted_values"] == 2 * b * H * dv * p
        assert fwd["out_proj"] == 2 * N * H * dv * d


def test_window_counts_by_hand():
    m = CONFIGS["windows"]  # window 2, layers 1 and 3 local, layer 2 global; 4 heads of 4
    b, s, H, dh = 2, 5, 4, 4
    tokens, targets = batch(m, b, s)
    with count_flops() as dense, count_flops(causal=True) as causal:
        ReferenceTransformer(m).forward(tokens, targets)
    local_pairs = 1 + 2 * (s - 1)       # the first query sees 1 key, the others 2
    global_pairs = s * (s + 1) // 2
    for layer, pairs in ((0, local_pairs), (1, global_pairs), (2, local_pairs)):
        assert causal.by_component("forward", layer=layer)["scores"] == 2 * b * H * dh * pairs
        assert dense.by_component("forward", layer=layer)["scores"] == 2 * b * H * dh * s * s


# --------------------------------------------------------------------------------------------
# Against the formulas, over random configurations
# --------------------------------------------------------------------------------------------

@st.composite
def new_configs(draw):
    n_layers = draw(st.integers(1, 3))
    mla = draw(st.booleans())
    kw = dict(n_layers=n_layers, d_model=draw(st.integers(2, 10)),
              vocab_size=draw(st.integers(2, 12)), seq_len=12,
              ffn=draw(st.sampled_from(["gelu", "swiglu", "geglu"])),
              d_ff=draw(st.integers(1, 8)),
              norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
              positional=draw(st.sampled_from(["learned", "rope", "none"])),
              tied_embeddings=draw(st.booleans()))
    if mla:
        kw.update(n_heads=draw(st.integers(1, 3)), d_head=draw(st.integers(1, 4)),
                  kv_lora_rank=draw(st.integers(1, 5)), qk_rope_dim=2 * draw(st.integers(0, 2)),
                  v_head_dim=draw(st.integers(1, 4)), bias=False,
                  q_lora_rank=draw(st.one_of(st.none(), st.integers(1, 5))))
    else:
        n_kv = draw(st.integers(1, 2))
        kw.update(n_heads=n_kv * draw(st.integers(1, 2)), n_kv_heads=n_kv,
                  d_head=2 * draw(st.integers(1, 2)), bias=draw(st.booleans()),
                  qk_norm=draw(st.booleans()), attention_sinks=draw(st.booleans()))
    if draw(st.booleans()):
        n_experts = draw(st.integers(2, 4))
        kw.update(n_experts=n_experts, top_k=draw(st.integers(1, n_experts)),
                  n_shared_experts=draw(st.integers(0, 1)), d_ff_expert=draw(st.integers(1, 5)),
                  n_dense_layers=draw(st.integers(0, n_layers - 1)))
        if kw["bias"]:
            kw["router_bias"] = draw(st.booleans())
    if draw(st.booleans()):
        kw.update(window=draw(st.integers(1, 4)),
                  global_every=draw(st.one_of(st.none(), st.integers(1, 3))))
    kw["post_norms"] = draw(st.booleans())
    m = Transformer(**kw)
    return m, draw(st.integers(1, 7)), draw(st.integers(1, 2))


@settings(max_examples=35, deadline=None)
@given(new_configs(), st.booleans())
def test_counted_training_equals_the_formulas(config, causal):
    m, s, b = config
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, m.vocab_size, (b, s + 1))
    model = ReferenceTransformer(m, seed=1)
    assert model.n_params == param_count(m) - m.extra_params
    with count_flops(causal=causal) as c:
        model.train_step(tokens[:, :-1], tokens[:, 1:])
    components = ("qkv", "scores", "weighted_values", "out_proj", "router", "ffn")
    for i in range(m.n_layers):  # every layer exactly, its own kind
        counted = c.by_component("forward", layer=i)
        formula = fb.layer_flops(m, s, b, causal=causal, layer=i + 1)
        for comp in components:
            assert counted.get(comp, 0) == formula[comp], (i, comp)
    average = fb.layer_flops(m, s, b, causal=causal)
    counted = c.by_component("forward")
    for comp in components:
        assert counted.get(comp, 0) == pytest.approx(m.n_layers * average[comp], rel=1e-12)
    assert c.total() == pytest.approx(
        fb.flops_per_token(m, s, training=True, causal=causal) * s * b, rel=1e-12)
    assert c.total() == 3 * c.total("forward")


# --------------------------------------------------------------------------------------------
# Generation with the cache
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CONFIGS)
def test_generation_with_and_without_cache(name):
    m = CONFIGS[name]
    b, P, n = 2, 4, 5
    prompt, _ = batch(m, b, P, seed=4)
    model = ReferenceTransformer(m, seed=2)
    with count_flops() as c:
        cached = model.generate(prompt, n)
    context = P + n - 1
    per_token = (m.kv_lora_rank + m.qk_rope_dim if m.is_mla
                 else 2 * m.n_kv_heads * m.d_head)
    tokens_kept = [context if m.layer_window(i) is None else min(context, m.layer_window(i))
                   for i in range(1, m.n_layers + 1)]
    assert model.kv_cache_nbytes == sum(tokens_kept) * b * per_token * F64
    full = model.generate(prompt, n, kv_cache=False)
    np.testing.assert_array_equal(cached, full)
    seq = np.concatenate([prompt, cached], axis=1)
    np.testing.assert_array_equal(model.logits(seq[:, :-1])[:, P - 1:].argmax(-1), cached)
    assert not c.saved_bytes


def test_mla_decode_is_counted_in_the_absorbed_form():
    m = CONFIGS["mla-q-lora"]  # d=8, H=2, dh=4, rq=5, r=6, dr=2, dv=3, V=11
    b, P, d, H, dh, rq, r, dr, dv = 1, 3, 8, 2, 4, 5, 6, 2, 3
    model = ReferenceTransformer(m)
    prompt, _ = batch(m, b, P)
    caches = [{} for _ in range(m.n_layers)]
    model._last_logits(prompt, 0, caches)
    with count_flops() as c, count_flops(causal=True) as cc:
        model._last_logits(prompt[:, :1], P, caches)  # one new token, P + 1 keys
    keys = P + 1
    expected = {
        "qkv": 2 * (d * rq + rq * H * (dh + dr) + d * (r + dr)) + 2 * H * dh * r,
        "scores": 2 * H * (r + dr) * keys,
        "weighted_values": 2 * H * r * keys,
        "out_proj": 2 * H * r * dv + 2 * H * dv * d}
    for layer in range(m.n_layers):
        for counter in (c, cc):  # one query sees every key: causal or not, the same
            counted = counter.by_component("forward", layer=layer)
            assert counted.pop("ffn") == 2 * 2 * d * m.d_ff  # a gelu FFN of width 4d
            assert counted == expected


def test_window_decode_attends_to_the_window():
    m = CONFIGS["windows"]  # window 2: layers 0 and 2 local
    b, P, n, H, dh = 1, 3, 4, 4, 4
    model = ReferenceTransformer(m)
    prompt, _ = batch(m, b, P)
    caches = [{} for _ in range(m.n_layers)]
    model._last_logits(prompt, 0, caches)
    position = P
    for _ in range(n):
        with count_flops(causal=True) as c:
            model._last_logits(prompt[:, :1], position, caches)
        position += 1
        assert c.by_component("forward", layer=0)["scores"] == 2 * H * dh * 2
        assert c.by_component("forward", layer=1)["scores"] == 2 * H * dh * position
        assert caches[0]["k"].shape[2] == 2 and caches[1]["k"].shape[2] == position


@settings(max_examples=25, deadline=None)
@given(new_configs(), st.booleans())
def test_saved_tensors_equal_activation_breakdown(config, recompute):
    m, s, b = config
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, m.vocab_size, (b, s + 1))
    with count_flops() as c:
        ReferenceTransformer(m, seed=1).forward(tokens[:, :-1], tokens[:, 1:],
                                                recompute=recompute)
    kw = dict(dropout=False, bytes_per_value=F64, recompute="full" if recompute else "none")
    for i in range(m.n_layers):
        assert c.saved_by_name(i, stats=False) == fb.memory.activation_breakdown(
            m, b, s, **kw, layer=i + 1), i
    assert sum(c.saved_total(i, stats=False) for i in range(m.n_layers)) == \
        fb.activation_memory(m, b, s, **kw)
