"""The formulas against the counting reference model: two independent computations, equal.

The reference (flopsbook.reference) counts every product it actually computes; the formulas
(flopsbook.flops) are derived from the shapes. Random architectures come from hypothesis.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import flopsbook as fb
from flopsbook.reference.model import ReferenceTransformer


@st.composite
def small_configs(draw):
    n_kv_heads = draw(st.integers(1, 2))
    n_heads = n_kv_heads * draw(st.integers(1, 3))
    d_head = 2 * draw(st.integers(1, 4))                     # even, for RoPE
    spec = fb.Transformer(
        n_layers=draw(st.integers(1, 2)),
        d_model=draw(st.integers(2, 16)),
        n_heads=n_heads, n_kv_heads=n_kv_heads, d_head=d_head,
        d_ff=draw(st.integers(1, 24)),
        ffn=draw(st.sampled_from(["gelu", "swiglu", "geglu"])),
        vocab_size=draw(st.integers(2, 20)),
        seq_len=draw(st.integers(1, 12)),
        tied_embeddings=draw(st.booleans()),
        positional=draw(st.sampled_from(["learned", "rope", "none"])),
        norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
        bias=draw(st.booleans()),
        qk_norm=draw(st.booleans()),
        post_norms=draw(st.booleans()),
        attention_sinks=draw(st.booleans()),
    )
    context = draw(st.integers(1, spec.seq_len))
    batch = draw(st.integers(1, 2))
    return spec, context, batch


def train_counts(spec, context, batch, causal, recompute=False):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, spec.vocab_size, (batch, context + 1))
    ref = ReferenceTransformer(spec, seed=1)
    with fb.count_flops(causal=causal) as c:
        ref.train_step(tokens[:, :-1], tokens[:, 1:], recompute=recompute)
    return c


@settings(max_examples=30, deadline=None)
@given(small_configs(), st.booleans(), st.booleans())
def test_flops_per_token_equals_the_counted_training_step(config, causal, recompute):
    spec, context, batch = config
    c = train_counts(spec, context, batch, causal, recompute)
    tokens = batch * context
    assert c.total() == tokens * fb.flops_per_token(spec, context, causal=causal,
                                                    recompute=recompute)
    assert c.total("forward") == tokens * fb.flops_per_token(spec, context, training=False,
                                                             causal=causal)


@settings(max_examples=20, deadline=None)
@given(small_configs(), st.booleans())
def test_layer_flops_equals_the_counted_forward_by_component(config, causal):
    spec, context, batch = config
    c = train_counts(spec, context, batch, causal)
    counted = c.by_component("forward")
    layer = fb.layer_flops(spec, context, batch, causal=causal)
    for component in ("qkv", "scores", "weighted_values", "out_proj", "ffn"):
        assert counted[component] == spec.n_layers * layer[component], component
    assert "router" not in counted and layer["router"] == 0  # dense: no router
    # MoE, MLA and windows: tests/test_reference_architectures.py, layer by layer.
    assert counted["logits"] == 2 * batch * context * spec.d_model * spec.vocab_size


@settings(max_examples=20, deadline=None)
@given(small_configs())
def test_reference_holds_exactly_the_specs_parameters(config):
    spec, _, _ = config
    ref = ReferenceTransformer(spec, seed=0)
    assert sum(p.size for p in ref.params.values()) == fb.param_count(spec) - spec.extra_params
