"""The model spec: one frozen dataclass that describes a transformer's shapes exactly.

Derived in the chapter "FLOPs and matrix multiplications" (notation) and used by every later
chapter. Parameter counts here are exact for the architecture described; what an architecture
has that the spec does not model goes in ``extra_params`` with a note in the registry.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from ._validate import as_bool, as_spec, choice, positive_int

FFN_KINDS = ("gelu", "swiglu")
POSITIONAL_KINDS = ("learned", "rope", "none", "relative")
NORM_KINDS = ("layernorm", "rmsnorm")


@dataclass(frozen=True, kw_only=True)
class Transformer:
    """A decoder-only (or encoder) transformer, described precisely enough to count it.

    Every field is a keyword argument. ``n_kv_heads`` defaults to ``n_heads`` (multi-head
    attention); 1 is multi-query attention, anything in between grouped-query attention.
    ``d_head`` defaults to ``d_model // n_heads`` and then ``n_heads`` must divide ``d_model``.
    ``d_ff`` defaults to ``4 * d_model`` for both FFN kinds. ``positional="relative"`` is
    Transformer-XL's scheme (Gopher, Chinchilla): one extra ``d_model x n_heads*d_head``
    projection of the position encodings per layer plus two bias vectors. ``extra_params`` holds
    parameters outside what the spec models (BERT's token-type embeddings and pooler); they do no
    per-token matmul. The defaults are resolved when the spec is made, so every attribute below
    is set (numpy integers become Python ints). Sizes are counts, not bytes.

    Attributes:
        n_layers (int): Number of transformer layers (blocks), > 0.
        d_model (int): Model (residual stream) width, > 0.
        n_heads (int): Number of query heads, > 0.
        vocab_size (int): Vocabulary size, in tokens, > 0.
        seq_len (int): Training sequence length (context), in tokens, > 0.
        n_kv_heads (int): Number of key/value heads; must divide ``n_heads``. Default
            ``n_heads``.
        d_head (int): Width of one head. Default ``d_model // n_heads``.
        d_ff (int): Hidden width of the feed-forward network. Default ``4 * d_model``.
        ffn (str): ``"gelu"`` (default: an up and a down projection) or ``"swiglu"`` (a gate,
            an up and a down projection).
        tied_embeddings (bool): Whether the output layer shares the token embedding table.
            Default True.
        positional (str): ``"learned"`` (default: a ``seq_len x d_model`` table), ``"rope"``,
            ``"none"`` or ``"relative"`` (Transformer-XL, see above).
        norm (str): ``"layernorm"`` (default: a gain and a bias) or ``"rmsnorm"`` (a gain).
        bias (bool): Whether the projections, the FFN and the LayerNorms have biases. Default
            True; False is PaLM-style "no biases" (a LayerNorm keeps only its gain).
        extra_params (int): Parameters outside what the spec models, >= 0. Default 0.
        name (str): Registry name, or ``"custom"`` (the default).
        source (str): Key of ``book/references.bib`` for a published configuration.
        notes (str): What the spec leaves out or assumes; ignored by ``==``.

    Raises:
        ValueError: If a size is not a positive int, ``n_heads`` does not divide ``d_model``
            (when ``d_head`` is not given), ``n_kv_heads`` does not divide ``n_heads``, ``ffn``,
            ``positional`` or ``norm`` is not one of its kinds, ``tied_embeddings`` or ``bias``
            is not True or False, ``extra_params`` is not an int >= 0, or ``name``, ``source``
            or ``notes`` is not a str; the message names the field.
    """

    n_layers: int
    d_model: int
    n_heads: int
    vocab_size: int
    seq_len: int
    n_kv_heads: int | None = None
    d_head: int | None = None
    d_ff: int | None = None
    ffn: str = "gelu"
    tied_embeddings: bool = True
    positional: str = "learned"
    norm: str = "layernorm"
    bias: bool = True
    extra_params: int = 0
    name: str = "custom"
    source: str = ""
    notes: str = field(default="", compare=False)

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: resolve defaults and normalise types once, here
        for f in ("n_layers", "d_model", "n_heads", "vocab_size", "seq_len"):
            set_(self, f, positive_int(f, getattr(self, f)))  # numpy ints become Python ints
        for f in ("n_kv_heads", "d_head", "d_ff"):
            if getattr(self, f) is not None:
                set_(self, f, positive_int(f, getattr(self, f)))
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"n_heads={self.n_heads} must divide d_model={self.d_model} when d_head is "
                    f"not given (allowed: a divisor of {self.d_model}, or pass d_head)")
            set_(self, "d_head", self.d_model // self.n_heads)
        if self.n_kv_heads is None:
            set_(self, "n_kv_heads", self.n_heads)
        if self.d_ff is None:
            set_(self, "d_ff", 4 * self.d_model)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} "
                f"(allowed: a divisor of {self.n_heads})")
        choice("ffn", self.ffn, FFN_KINDS)
        choice("positional", self.positional, POSITIONAL_KINDS)
        choice("norm", self.norm, NORM_KINDS)
        for f in ("tied_embeddings", "bias"):
            set_(self, f, as_bool(f, getattr(self, f)))
        if isinstance(self.extra_params, (bool, np.bool_)) \
                or not isinstance(self.extra_params, numbers.Integral) or self.extra_params < 0:
            raise ValueError(f"extra_params must be an int >= 0, got {self.extra_params!r}")
        set_(self, "extra_params", int(self.extra_params))
        for f in ("name", "source", "notes"):
            if not isinstance(getattr(self, f), str):
                raise ValueError(f"{f} must be a str, got {getattr(self, f)!r}")

    @property
    def d_attn(self) -> int:
        """int: Width of all query heads together, ``n_heads * d_head``.

        Equal to ``d_model`` for standard multi-head attention.
        """
        return self.n_heads * self.d_head

    @property
    def d_kv(self) -> int:
        """int: Width of all key (or value) heads together, ``n_kv_heads * d_head``."""
        return self.n_kv_heads * self.d_head


def _norm_params(m: Transformer) -> int:
    # LayerNorm has a gain and a bias; PaLM-style "no biases" keeps only the gain.
    return 2 * m.d_model if (m.norm == "layernorm" and m.bias) else m.d_model


def param_breakdown(m) -> dict[str, int]:
    """Exact parameter counts by part: the pieces ``param_count`` adds up.

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name such as
            ``"llama3-8b"`` (see :func:`models`).

    Returns:
        dict[str, int]: Parameter counts (exact integers) under the keys ``token_embedding``,
        ``position_embedding``, ``output_embedding`` (0 when tied), ``attention``, ``ffn``,
        ``norms`` (all layers plus the final norm), ``extra`` and ``total``.

    Raises:
        ValueError: If ``m`` is neither a ``Transformer`` nor a registry name; the message names
            ``m`` and the closest names.
    """
    m = as_spec(m)
    d, L = m.d_model, m.n_layers
    attn = d * m.d_attn + 2 * d * m.d_kv + m.d_attn * d
    if m.bias:
        attn += m.d_attn + 2 * m.d_kv + d
    if m.positional == "relative":
        attn += d * m.d_attn + 2 * m.d_attn  # W_R and the u, v biases of Transformer-XL
    n_in = 2 if m.ffn == "swiglu" else 1  # SwiGLU has a gate and an up projection
    ffn = (n_in + 1) * d * m.d_ff + (n_in * m.d_ff + d if m.bias else 0)
    parts = {
        "token_embedding": m.vocab_size * d,
        "position_embedding": m.seq_len * d if m.positional == "learned" else 0,
        "output_embedding": 0 if m.tied_embeddings else m.vocab_size * d,
        "attention": L * attn,
        "ffn": L * ffn,
        "norms": (2 * L + 1) * _norm_params(m),
        "extra": m.extra_params,
    }
    parts["total"] = sum(parts.values())
    return parts


EMBEDDING_PARTS = ("token_embedding", "position_embedding", "output_embedding")


def param_count(m, embeddings: bool = True) -> int:
    """Exact number of parameters of ``m``.

    With ``embeddings=False`` the token, position and (untied) output embedding tables are left
    out: the non-embedding count N of Kaplan et al. (2020).

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        embeddings (bool): Whether the embedding tables are counted. Default True.

    Returns:
        int: The number of parameters (a count, exact).

    Raises:
        ValueError: If ``m`` is neither a ``Transformer`` nor a registry name, or ``embeddings``
            is not True or False; the message names the argument.
    """
    parts = param_breakdown(m)
    if as_bool("embeddings", embeddings):
        return parts["total"]
    return parts["total"] - sum(parts[k] for k in EMBEDDING_PARTS)
