"""The model spec and exact parameter counts.

Expected counts come from the sources: the released checkpoints' tensors (GPT-2, BERT, the LLaMA
families) or the papers' tables (models never released), never from this package's output.
"""

import pytest

import flopsbook as fb
from flopsbook import Transformer

# Parameter counts of the released checkpoints (sum of all tensor sizes).
RELEASED = {
    "gpt2-small": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "bert-base": 109_482_240,     # BertModel: with token-type embeddings and pooler
    "llama-7b": 6_738_415_616,
    "llama-65b": 65_285_660_672,
    "llama2-7b": 6_738_415_616,
    # meta-llama/Llama-2-13b-hf: 363 tensors, 13,015,864,320 elements (DeepSpeed's reconstruction
    # of the fp32 state dict prints the same total).
    "llama2-13b": 13_015_864_320,
    "llama2-70b": 68_976_648_192,
    "llama3-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496,
}
# Papers' figures for models never released.
PUBLISHED = {
    "gpt3-175b": 175.0e9,          # Brown et al. 2020, Table 2.1
    "gopher-280b": 280e9,          # Rae et al. 2021, Table 1
    "chinchilla-70b": 70e9,        # Hoffmann et al. 2022, Table 4
    "palm-540b": 540.35e9,         # Chowdhery et al. 2022, Table 1
}


@pytest.mark.parametrize("name, count", RELEASED.items())
def test_released_checkpoints_match_exactly(name, count):
    assert fb.param_count(fb.model(name)) == count


@pytest.mark.parametrize("name, count", PUBLISHED.items())
def test_unreleased_models_within_half_a_percent(name, count):
    assert abs(fb.param_count(fb.model(name)) / count - 1) < 0.005


def test_gpt2_small_by_hand():
    d, V, s, L = 768, 50257, 1024, 12
    per_layer = (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (2 * d) + (d * 4 * d + 4 * d) \
        + (4 * d * d + d)
    assert fb.param_count(fb.model("gpt2-small")) == V * d + s * d + L * per_layer + 2 * d


def test_non_embedding_count_is_kaplans_n():
    # Kaplan et al. (2020): N excludes the token and position embeddings.
    m = fb.model("gpt2-small")
    assert fb.param_count(m, embeddings=False) == 124_439_808 - 50257 * 768 - 1024 * 768
    # Untied models also drop the output matrix.
    m = fb.model("llama-7b")
    assert fb.param_count(m, embeddings=False) == 6_738_415_616 - 2 * 32000 * 4096


def test_breakdown_adds_up():
    for name in fb.models():
        parts = fb.param_breakdown(fb.model(name))
        assert parts["total"] == sum(v for k, v in parts.items() if k != "total")


def test_defaults_are_resolved():
    m = Transformer(n_layers=2, d_model=64, n_heads=4, vocab_size=100, seq_len=16)
    assert (m.n_kv_heads, m.d_head, m.d_ff) == (4, 16, 256)
    assert m.d_attn == 64 and m.d_kv == 64
    gqa = Transformer(n_layers=2, d_model=64, n_heads=8, n_kv_heads=2, vocab_size=100, seq_len=16)
    assert gqa.d_kv == 16


def test_palm_heads_need_not_divide_d_model_when_d_head_given():
    m = fb.model("palm-540b")
    assert m.n_heads * m.d_head != m.d_model
    assert (m.n_heads, m.d_head, m.n_kv_heads) == (48, 256, 1)


def test_spec_is_frozen():
    m = fb.model("gpt2-small")
    with pytest.raises(AttributeError):
        m.n_layers = 3


BASE = dict(n_layers=2, d_model=64, n_heads=4, vocab_size=100, seq_len=16)


@pytest.mark.parametrize("field, value, message", [
    ("n_layers", 0, "n_layers must be a positive int"),
    ("d_model", -64, "d_model must be a positive int"),
    ("n_heads", 2.0, "n_heads must be a positive int"),
    ("vocab_size", True, "vocab_size must be a positive int"),
    ("seq_len", "16", "seq_len must be a positive int"),
    ("d_ff", 0, "d_ff must be a positive int"),
    ("d_head", -1, "d_head must be a positive int"),
    ("n_kv_heads", 3, "n_kv_heads=3 must divide n_heads=4"),
    ("n_heads", 5, "n_heads=5 must divide d_model=64"),
    ("ffn", "relu", "ffn must be one of 'gelu' | 'swiglu'"),
    ("positional", "alibi", "positional must be one of 'learned' | 'rope' | 'none'"),
    ("norm", "batchnorm", "norm must be one of 'layernorm' | 'rmsnorm'"),
    ("bias", "yes", "bias must be True or False"),
    ("tied_embeddings", 1, "tied_embeddings must be True or False"),
    ("extra_params", -5, "extra_params must be an int >= 0"),
])
def test_bad_spec_raises_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("|", r"\|")):
        Transformer(**{**BASE, field: value})


def test_param_count_takes_a_spec_or_a_name():
    assert fb.param_count("gpt2-small") == fb.param_count(fb.model("gpt2-small"))
    with pytest.raises(ValueError, match="m must be a Transformer or a model name"):
        fb.param_count(["gpt2-small"])
