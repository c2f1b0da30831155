"""Chapter "Where attention overtakes the matmuls": layer_flops by component, the crossovers,
and the per-dataset context ratio of Liu et al. (2023, Ring Attention, App. D, Figure 5).

Expected values are hand derivations written as arithmetic, or published figures.
"""

import numpy as np
import pytest

import flopsbook as fb
from flopsbook import Transformer
from flopsbook.flops import LAYER_COMPONENTS
from flopsbook.reference.model import ReferenceTransformer

# --- layer_flops against the counting reference, per component, exactly ---------------------

SMALL = [
    Transformer(n_layers=1, d_model=16, n_heads=2, vocab_size=11, seq_len=12, name="mha-gelu"),
    Transformer(n_layers=1, d_model=16, n_heads=4, d_head=6, n_kv_heads=2, d_ff=20,
                ffn="swiglu", vocab_size=11, seq_len=12, positional="rope", norm="rmsnorm",
                bias=False, tied_embeddings=False, name="gqa-swiglu-wide"),
    Transformer(n_layers=2, d_model=12, n_heads=3, n_kv_heads=1, d_ff=28, vocab_size=11,
                seq_len=12, positional="none", name="mqa-gelu"),
]


@pytest.mark.parametrize("m", SMALL, ids=lambda m: m.name)
@pytest.mark.parametrize("causal", [False, True])
def test_layer_flops_equal_the_reference_counter_per_component(m, causal):
    batch, s = 2, 9
    tokens = np.random.default_rng(1).integers(0, m.vocab_size, (batch, s + 1))
    with fb.count_flops(causal=causal) as c:
        ReferenceTransformer(m, seed=0).forward(tokens[:, :-1], tokens[:, 1:])
    counted = c.by_component("forward")
    formula = fb.layer_flops(m, s, batch, causal=causal)
    for k in LAYER_COMPONENTS:
        assert counted.get(k, 0) == m.n_layers * formula[k], k


def test_layer_flops_by_hand_for_gqa_swiglu_wide_heads():
    m = SMALL[1]  # d 16, 4 query heads of 6 (d_attn 24), 2 KV heads (d_kv 12), SwiGLU 20
    b, s = 2, 9
    p = fb.layer_flops(m, s, b)
    assert p["qkv"] == 2 * b * s * 16 * (24 + 12 + 12)
    assert p["scores"] == p["weighted_values"] == 2 * b * 4 * s * s * 6
    assert p["out_proj"] == 2 * b * s * 24 * 16
    assert p["ffn"] == 3 * 2 * b * s * 16 * 20
    pc = fb.layer_flops(m, s, b, causal=True)
    assert pc["scores"] == 2 * b * 4 * (s * (s + 1) // 2) * 6


# --- crossover_seq_len ---------------------------------------------------------------------

def test_textbook_bert_base_crossover_is_1536():
    # Textbook seed: "For d = 768, this occurs around n = 1536."
    assert fb.crossover_seq_len(768) == 1536
    assert fb.crossover_seq_len(fb.model("bert-base")) == 1536


def test_crossover_rules_for_standard_mha():
    d = 1024
    assert fb.crossover_seq_len(d, against="projections") == 2 * d
    assert fb.crossover_seq_len(d, against="layer") == 6 * d
    # causal: 4d * s(s+1)/2 = w s  =>  s = 2 w / (4d) - 1
    assert fb.crossover_seq_len(d, causal=True) == 4 * d - 1
    assert fb.crossover_seq_len(d, against="layer", causal=True) == 12 * d - 1


@pytest.mark.parametrize("name", ["gpt2-small", "gpt3-175b", "bert-base"])
def test_int_form_agrees_with_the_mha_models(name):
    m = fb.model(name)
    for against in ("projections", "layer"):
        for causal in (False, True):
            assert fb.crossover_seq_len(m.d_model, against=against, causal=causal) == \
                fb.crossover_seq_len(m, against=against, causal=causal)


def test_crossover_gqa_swiglu_by_hand():
    m = fb.model("llama2-70b")  # d 8192, 64 heads of 128, 8 KV heads, SwiGLU 28672
    proj = 8192 * (64 + 8) * 128 / (64 * 128)              # d (H + H_kv) / H
    layer = proj + 3 * 8192 * 28672 / (2 * 64 * 128)        # + k d d_ff / (2 H d_h)
    assert fb.crossover_seq_len(m) == proj == 9216
    assert fb.crossover_seq_len(m, against="layer") == layer == 52224
    assert fb.crossover_seq_len(m, against="layer", causal=True) == 2 * layer - 1


def test_crossover_mqa_wide_heads_by_hand():
    m = fb.model("palm-540b")  # d 18432, 48 heads of 256, 1 KV head, SwiGLU 73728
    assert fb.crossover_seq_len(m) == 18432 * 49 / 48
    assert fb.crossover_seq_len(m, against="layer") == \
        18432 * 49 / 48 + 3 * 18432 * 73728 / (2 * 48 * 256)


@pytest.mark.parametrize("name, d", [("chinchilla-70b", 8192), ("gopher-280b", 16384)])
def test_crossover_relative_positions_by_hand(name, d):
    # Transformer-XL, H d_h = d, GELU 4d: per token 8d^2 + 2d^2 (position projection) for the
    # projections and 16d^2 for the FFN; per pair 4d + 2d (position scores).
    m = fb.model(name)
    assert np.isclose(fb.crossover_seq_len(m), 10 * d**2 / (6 * d))            # 5d/3
    assert np.isclose(fb.crossover_seq_len(m, against="layer"), 26 * d**2 / (6 * d))  # 13d/3
    assert np.isclose(fb.crossover_seq_len(m, causal=True), 2 * 10 * d**2 / (6 * d) - 1)


@pytest.mark.parametrize("name", fb.models())
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("against", ["projections", "layer"])
def test_components_are_equal_at_the_crossover(name, causal, against):
    m = fb.model(name)
    if m.window is not None:  # local layers: no single crossover
        with pytest.raises(ValueError, match="local attention"):
            fb.crossover_seq_len(m, against=against, causal=causal)
        return
    x = fb.crossover_seq_len(m, against=against, causal=causal)

    def gap(n):
        p = fb.layer_flops(m, n, causal=causal)
        linear = p["qkv"] + p["out_proj"] + (p["ffn"] + p["router"] if against == "layer" else 0)
        return p["scores"] + p["weighted_values"] - linear

    if x == int(x):
        assert gap(int(x)) == 0
        assert gap(int(x) - 1) < 0 < gap(int(x) + 1)
    else:  # Transformer-XL relative positions give a non-whole root
        assert gap(np.floor(x)) < 0 < gap(np.ceil(x))


def test_crossover_broadcasts_and_returns_float64():
    d = np.array([[768], [4096]])
    out = fb.crossover_seq_len(d, against="layer")
    assert out.shape == (2, 1) and out.dtype == np.float64
    assert out[1, 0] == 6 * 4096
    scalar = fb.crossover_seq_len(768)
    assert isinstance(scalar, float) and np.ndim(scalar) == 0
    assert isinstance(fb.crossover_seq_len(fb.model("llama2-7b")), float)


@pytest.mark.parametrize("kwargs, word", [
    (dict(against="ffn"), "against"),
    (dict(against=None), "against"),
    (dict(causal="yes"), "causal"),
    (dict(causal=1), "causal"),
])
def test_crossover_bad_options(kwargs, word):
    with pytest.raises(ValueError, match=word) as info:
        fb.crossover_seq_len(768, **kwargs)
    if word == "against":
        assert "'projections'" in str(info.value) and "'layer'" in str(info.value)


@pytest.mark.parametrize("bad", [0, -768, 768.5, np.nan, np.inf, ["768"], "seven", None, True,
                                 1 + 2j, np.array([768, 0])])
def test_crossover_bad_d_model(bad):
    with pytest.raises(ValueError, match="m_or_d_model"):
        fb.crossover_seq_len(bad)


# --- context_flops_ratio and Figure 5 ------------------------------------------------------

# Liu et al. (2023), App. D, Figure 5 as printed; columns are multiples of 4,096 tokens.
MULTIPLES = [2, 4, 8, 16, 32, 64, 256, 3072, 32768]
FIGURE5 = {
    36864: [1.0, 1.1, 1.1, 1.3, 1.6, 2.1, 5.6, 56.8, 596.8],          # "1TB"
    12288: [1.1, 1.2, 1.4, 1.8, 2.6, 4.3, 14.4, 162.6, 1725.6],       # GPT3-175B
    8192: [1.1, 1.2, 1.5, 2.2, 3.4, 5.8, 20.6, 237.2, 2521.5],        # LLaMA-65B
    7168: [1.1, 1.3, 1.6, 2.3, 3.7, 6.5, 23.2, 268.0, 2850.3],        # "LLaMA-33B" as listed
    5120: [1.1, 1.4, 1.8, 2.8, 4.6, 8.4, 31.0, 362.3, 3855.9],        # LLaMA-13B (released)
    4096: [1.1, 1.4, 2.0, 3.1, 5.4, 10.0, 37.4, 439.7, 4682.0],       # LLaMA-7B
}


@pytest.mark.parametrize("h, printed", FIGURE5.items())
def test_figure5_every_cell(h, printed):
    new = np.array(MULTIPLES) * 4096
    assert list(np.round(fb.context_flops_ratio(h, new), 1)) == printed


def test_figure5_13b_row_uses_5120_not_the_listed_5140():
    new = np.array(MULTIPLES[-3:]) * 4096  # 1M, 10M, 100M
    assert list(np.round(fb.context_flops_ratio(5140, new), 1)) != FIGURE5[5120][-3:]
    assert list(np.round(fb.context_flops_ratio(5140, new), 1)) == [30.9, 361.1, 3842.7]


def test_figure5_33b_row_would_change_with_the_released_6656():
    new = np.array(MULTIPLES) * 4096
    released = np.round(fb.context_flops_ratio(6656, new), 1)
    changed = [m for m, a, b in zip(MULTIPLES, released, FIGURE5[7168]) if a != b]
    assert changed == [8, 16, 32, 64, 256, 3072, 32768]


def test_context_ratio_by_hand():
    # (6h + s2) / (6h + s1) with h 4096: 4K -> 1M is (24576 + 1048576) / (24576 + 4096)
    assert fb.context_flops_ratio(4096, 2**20) == (6 * 4096 + 2**20) / (6 * 4096 + 4096)
    assert fb.context_flops_ratio(4096, 2048, old_context=2048) == 1.0
    assert fb.context_flops_ratio(1000, 1000, 7000) == (6000 + 1000) / (6000 + 7000)


def test_context_ratio_is_the_per_token_layer_flops_ratio():
    m = Transformer(n_layers=1, d_model=512, n_heads=8, vocab_size=10, seq_len=8)
    s1, s2 = 4096, 65536
    per_token = [fb.layer_flops(m, s)["total"] / s for s in (s1, s2)]
    assert np.isclose(fb.context_flops_ratio(512, s2, s1), per_token[1] / per_token[0])
    # training = 3 x forward term by term, so the ratio is the same for training FLOPs
    train = [fb.flops_per_token(m, s, include_logits=False) for s in (s1, s2)]
    assert np.isclose(fb.context_flops_ratio(512, s2, s1), train[1] / train[0])


def test_context_ratio_broadcasts():
    out = fb.context_flops_ratio(np.array([[4096], [8192]]), np.array([8192, 16384]),
                                 np.array([4096, 2048]))
    assert out.shape == (2, 2) and out.dtype == np.float64
    assert out[1, 1] == (6 * 8192 + 16384) / (6 * 8192 + 2048)
    assert isinstance(fb.context_flops_ratio(4096, 8192), float)


@pytest.mark.parametrize("args, name", [
    ((0, 8192), "d_model"), ((4096.5, 8192), "d_model"), (("4096", 8192), "d_model"),
    ((4096, -1), "new_context"), ((4096, np.nan), "new_context"), ((4096, None), "new_context"),
    ((4096, 8192, 0), "old_context"), ((4096, 8192, 1.5), "old_context"),
])
def test_context_ratio_bad_input(args, name):
    with pytest.raises(ValueError, match=name):
        fb.context_flops_ratio(*args)


# --- the explorer's helpers ----------------------------------------------------------------

def test_component_shares_sum_to_one_and_halve_at_6d():
    from flopsbook.viz.attention import component_shares, crossovers, tokens_label

    m = fb.model("gpt2-small")
    shares = component_shares(m, [512, 6 * 768])
    total = sum(shares.values())
    assert np.allclose(total, 1.0)
    assert shares["scores"][1] + shares["weighted_values"][1] == 0.5
    assert crossovers(m) == {"projections": 1536.0, "layer": 4608.0}
    assert [tokens_label(n) for n in (512, 4096, 2**20, 3072 * 4096)] == ["512", "4K", "1M", "12M"]
