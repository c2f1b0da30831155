"""The model spec: one frozen dataclass that describes a transformer's shapes exactly.

Derived in the chapter "FLOPs and matrix multiplications" (notation) and used by every later
chapter. Parameter counts here are exact for the architecture described; what an architecture
has that the spec does not model goes in ``extra_params`` with a note in the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._validate import as_bool, as_spec, choice, nonnegative_int, positive_int, shown

FFN_KINDS = ("gelu", "swiglu", "geglu")
GATED_FFN_KINDS = ("swiglu", "geglu")  # a gate and an up projection, then a down projection
POSITIONAL_KINDS = ("learned", "rope", "none", "relative")
NORM_KINDS = ("layernorm", "rmsnorm")


@dataclass(frozen=True, kw_only=True)
class Transformer:
    """A decoder-only (or encoder) transformer, described precisely enough to count it.

    Every field is a keyword argument, and every default is the dense transformer of the first
    chapters. ``n_kv_heads`` defaults to ``n_heads`` (multi-head attention); 1 is multi-query
    attention, anything in between grouped-query attention. ``d_head`` defaults to
    ``d_model // n_heads`` and then ``n_heads`` must divide ``d_model``. ``d_ff`` defaults to
    ``4 * d_model`` for every FFN kind. ``positional="relative"`` is Transformer-XL's scheme
    (Gopher, Chinchilla): one extra ``d_model x n_heads*d_head`` projection of the position
    encodings per layer plus two bias vectors. ``extra_params`` holds parameters outside what the
    spec models (BERT's token-type embeddings and pooler); they do no per-token matmul. The
    defaults are resolved when the spec is made, so every attribute below is set (numpy integers
    become Python ints). Sizes are counts, not bytes.

    **Mixture of experts** (chapter "Beyond the dense transformer"). With ``n_experts > 1`` the
    FFN of every layer after the first ``n_dense_layers`` is replaced by a router (a
    ``d_model x n_experts`` matmul, with a bias when ``router_bias``), ``n_experts`` routed
    experts of hidden width ``d_ff_expert`` (each an FFN of kind ``ffn``) and
    ``n_shared_experts`` always-on experts of the same width. Routing is dropless: every token
    meets exactly ``top_k`` routed experts (capacity factors, which drop or pad tokens, are a
    serving and training detail the counts leave out). The first ``n_dense_layers`` keep a dense
    FFN of width ``d_ff`` (DeepSeek's do).

    **Multi-head latent attention** (MLA, DeepSeek-V2). ``kv_lora_rank`` set turns it on: keys
    and values are up-projected per head from a shared latent of width ``kv_lora_rank`` (made by
    a ``d_model x (kv_lora_rank + qk_rope_dim)`` down-projection, the latent normalised), and a
    rotary key of width ``qk_rope_dim`` is shared by all heads. Queries come from a
    ``d_model x q_lora_rank`` down-projection (normalised) and an up-projection when
    ``q_lora_rank`` is set, else from one ``d_model x d_attn`` projection. With MLA ``d_head``
    is the non-rotary part of a query or key head (it must be given), a query or key head is
    ``d_qk = d_head + qk_rope_dim`` wide, a value head ``v_head_dim``, and ``n_kv_heads`` equals
    ``n_heads`` (every head has its own up-projected key and value).

    **Local attention.** With ``window`` set, a local layer's token attends to itself and the
    ``window - 1`` tokens before it: ``window`` keys, as Hugging Face's Mistral implementation
    does (the Mistral paper's "positions i - W to i" would be W + 1). Windows are causal.
    ``global_every=k`` makes layers k, 2k, ... (counting from 1) global and the others local;
    None (the default) makes every layer local.

    Attributes:
        n_layers (int): Number of transformer layers (blocks), > 0.
        d_model (int): Model (residual stream) width, > 0.
        n_heads (int): Number of query heads, > 0.
        vocab_size (int): Vocabulary size, in tokens, > 0.
        seq_len (int): Training sequence length (context), in tokens, > 0.
        n_kv_heads (int): Number of key/value heads; must divide ``n_heads`` (equal it with
            MLA). Default ``n_heads``.
        d_head (int): Width of one head (with MLA: the non-rotary part of a query/key head, and
            then it must be given). Default ``d_model // n_heads``.
        d_ff (int): Hidden width of the dense feed-forward network. Default ``4 * d_model``.
        ffn (str): ``"gelu"`` (default: an up and a down projection), ``"swiglu"`` (a gate,
            an up and a down projection, SiLU on the gate) or ``"geglu"`` (the same three
            matrices, GELU on the gate: Gemma).
        tied_embeddings (bool): Whether the output layer shares the token embedding table.
            Default True.
        positional (str): ``"learned"`` (default: a ``seq_len x d_model`` table), ``"rope"``,
            ``"none"`` or ``"relative"`` (Transformer-XL, see above).
        norm (str): ``"layernorm"`` (default: a gain and a bias) or ``"rmsnorm"`` (a gain).
        bias (bool): Whether the projections, the FFN (and the experts) and the LayerNorms have
            biases. Default True; False is PaLM-style "no biases" (a LayerNorm keeps only its
            gain).
        n_experts (int): Routed experts per MoE layer; 1 (the default) is a dense model.
        top_k (int): Routed experts each token meets, 1 <= top_k <= n_experts; must be given
            when ``n_experts > 1``. Default 1 for a dense model.
        n_shared_experts (int): Always-on experts per MoE layer, >= 0 (DeepSeek, Qwen2-MoE).
            Default 0.
        d_ff_expert (int | None): Hidden width of one expert. Default ``d_ff`` for an MoE;
            None for a dense model.
        n_dense_layers (int): The first layers that keep a dense FFN of width ``d_ff``,
            0 <= n_dense_layers < n_layers. Default 0.
        router_bias (bool): Whether the router has a bias (gpt-oss). Default ``bias`` for an
            MoE, False for a dense model.
        q_lora_rank (int | None): MLA's query down-projection width; None (the default) is a
            plain query projection.
        kv_lora_rank (int | None): MLA's key/value latent width; None (the default) is no MLA.
        qk_rope_dim (int): MLA's rotary part of each query/key head, >= 0; 0 (the default)
            without MLA.
        v_head_dim (int | None): Width of one MLA value head. Default ``d_head`` with MLA;
            None without (a value head is then ``d_head`` wide, see ``d_v``).
        window (int | None): Keys a local layer's token attends to (itself included); None
            (the default) makes every layer global.
        global_every (int | None): With ``window``: layers k, 2k, ... are global. None (the
            default) makes every layer local.
        qk_norm (bool): A norm of kind ``norm`` over each query and each key head (one gain
            of width ``d_head`` for the queries and one for the keys, shared by the heads;
            Qwen3, Gemma 3). Default False.
        post_norms (bool): Two more norms per layer, on the attention's and the FFN's outputs
            before each residual add (Gemma 2 and 3: four norms per layer). Default False.
        attention_sinks (bool): One learned logit per query head and layer that joins every
            softmax's denominator (gpt-oss). Default False.
        extra_params (int): Parameters outside what the spec models, >= 0. Default 0.
        name (str): Registry name, or ``"custom"`` (the default).
        source (str): Key of ``book/references.bib`` for a published configuration.
        notes (str): What the spec leaves out or assumes; ignored by ``==``.

    Raises:
        ValueError: If a size is not a positive int, ``n_heads`` does not divide ``d_model``
            (when ``d_head`` is not given), ``n_kv_heads`` does not divide ``n_heads``, a kind
            is not one of its kinds, a switch is not True or False, the MoE, MLA or window
            fields do not fit together (``top_k`` missing or above ``n_experts``, expert fields
            on a dense model, MLA fields without ``kv_lora_rank``, ``global_every`` without
            ``window``, ...), ``extra_params`` is not an int >= 0, or ``name``, ``source`` or
            ``notes`` is not a str; the message names the field and the allowed values.
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
    n_experts: int = 1
    top_k: int | None = None
    n_shared_experts: int = 0
    d_ff_expert: int | None = None
    n_dense_layers: int = 0
    router_bias: bool | None = None
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_rope_dim: int = 0
    v_head_dim: int | None = None
    window: int | None = None
    global_every: int | None = None
    qk_norm: bool = False
    post_norms: bool = False
    attention_sinks: bool = False
    extra_params: int = 0
    name: str = "custom"
    source: str = ""
    notes: str = field(default="", compare=False)

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: resolve defaults and normalise types once, here
        for f in ("n_layers", "d_model", "n_heads", "vocab_size", "seq_len", "n_experts"):
            set_(self, f, positive_int(f, getattr(self, f)))  # numpy ints become Python ints
        for f in ("n_kv_heads", "d_head", "d_ff", "top_k", "d_ff_expert", "q_lora_rank",
                  "kv_lora_rank", "v_head_dim", "window", "global_every"):
            if getattr(self, f) is not None:
                set_(self, f, positive_int(f, getattr(self, f)))
        for f in ("n_shared_experts", "n_dense_layers", "qk_rope_dim", "extra_params"):
            set_(self, f, nonnegative_int(f, getattr(self, f)))
        for f in ("tied_embeddings", "bias", "qk_norm", "post_norms", "attention_sinks"):
            set_(self, f, as_bool(f, getattr(self, f)))
        choice("ffn", self.ffn, FFN_KINDS)
        choice("positional", self.positional, POSITIONAL_KINDS)
        choice("norm", self.norm, NORM_KINDS)
        mla = self.kv_lora_rank is not None
        if self.d_head is None:
            if mla:
                raise ValueError("d_head must be given with MLA (kv_lora_rank set): it is the "
                                 "non-rotary part of a query/key head, e.g. 128 for DeepSeek-V3")
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
        self._check_experts(set_)
        self._check_latent_attention(mla, set_)
        self._check_window()
        for f in ("name", "source", "notes"):
            if not isinstance(getattr(self, f), str):
                raise ValueError(f"{f} must be a str, got {shown(getattr(self, f))}")

    def _check_experts(self, set_):
        if self.n_experts == 1:
            for f, dense in (("top_k", 1), ("n_shared_experts", 0), ("n_dense_layers", 0),
                             ("d_ff_expert", None)):
                if getattr(self, f) not in (None, dense):
                    raise ValueError(f"{f}={getattr(self, f)!r} needs a mixture of experts "
                                     f"(n_experts > 1; got n_experts=1, a dense model)")
            if self.router_bias:
                raise ValueError("router_bias=True needs a mixture of experts (n_experts > 1)")
            set_(self, "top_k", 1)
            set_(self, "router_bias", False)
            return  # d_ff_expert stays None: a dense model has no experts
        else:
            if self.top_k is None:
                raise ValueError(f"top_k must be given with n_experts={self.n_experts} (allowed: "
                                 f"1 to {self.n_experts}, the routed experts each token meets)")
            if self.top_k > self.n_experts:
                raise ValueError(f"top_k={self.top_k} must be at most n_experts="
                                 f"{self.n_experts} (allowed: 1 to {self.n_experts})")
            if self.n_dense_layers >= self.n_layers:
                raise ValueError(f"n_dense_layers={self.n_dense_layers} must be below n_layers="
                                 f"{self.n_layers} (allowed: 0 to {self.n_layers - 1}); a model "
                                 "with no MoE layer is dense: n_experts=1")
            set_(self, "router_bias", self.bias if self.router_bias is None
                 else as_bool("router_bias", self.router_bias))
        if self.d_ff_expert is None:
            set_(self, "d_ff_expert", self.d_ff)

    def _check_latent_attention(self, mla, set_):
        if not mla:
            for f in ("q_lora_rank",):
                if getattr(self, f) is not None:
                    raise ValueError(f"{f} needs multi-head latent attention: set kv_lora_rank "
                                     "too (allowed: None without MLA)")
            if self.qk_rope_dim:
                raise ValueError(f"qk_rope_dim={self.qk_rope_dim} needs multi-head latent "
                                 "attention (set kv_lora_rank); without MLA rotary embeddings "
                                 "turn the whole head: positional='rope' and qk_rope_dim=0")
            if self.v_head_dim is not None:
                raise ValueError(f"v_head_dim={self.v_head_dim} needs multi-head latent "
                                 "attention (kv_lora_rank set); without MLA a value head is "
                                 "d_head wide (allowed: None)")
        else:
            if self.n_kv_heads != self.n_heads:
                raise ValueError(f"n_kv_heads={self.n_kv_heads} must equal n_heads="
                                 f"{self.n_heads} with MLA: every head up-projects its own key "
                                 "and value from the shared latent")
            for f in ("bias", "qk_norm", "attention_sinks"):
                if getattr(self, f):
                    raise ValueError(f"{f}=True with MLA (kv_lora_rank set) is not modelled "
                                     "(allowed: False)")
            if self.positional == "relative":
                raise ValueError("positional='relative' with MLA is not modelled (allowed: "
                                 "'rope', 'none', 'learned')")
        if mla and self.v_head_dim is None:
            set_(self, "v_head_dim", self.d_head)

    def _check_window(self):
        if self.window is None and self.global_every is not None:
            raise ValueError(f"global_every={self.global_every} needs window (the keys of a "
                             "local layer); allowed: None without a window")
        if self.window is not None and self.positional == "relative":
            raise ValueError("window with positional='relative' is not modelled (allowed: "
                             "'rope', 'none', 'learned')")

    # -- widths -----------------------------------------------------------------------------
    @property
    def d_qk(self) -> int:
        """int: Width of one query (or key) head, ``d_head + qk_rope_dim``.

        ``d_head`` without MLA; with MLA the non-rotary part plus the rotary part.
        """
        return self.d_head + self.qk_rope_dim

    @property
    def d_attn(self) -> int:
        """int: Width of all query heads together, ``n_heads * d_qk``.

        Equal to ``d_model`` for standard multi-head attention; with MLA the width of the
        queries (and of the up-projected keys) including their rotary parts.
        """
        return self.n_heads * self.d_qk

    @property
    def d_kv(self) -> int:
        """int: Width of all key heads together, ``n_kv_heads * d_qk``.

        Without MLA the values have the same width. With MLA it is the width of the keys a
        naive implementation up-projects per token (each head's non-rotary part, plus the shared
        rotary key repeated per head); the values are ``d_v`` wide and what a token caches is
        ``kv_cache_width``.
        """
        return self.n_kv_heads * self.d_qk

    @property
    def d_value_head(self) -> int:
        """int: Width of one value head: ``v_head_dim`` with MLA, else ``d_head``."""
        return self.d_head if self.v_head_dim is None else self.v_head_dim

    @property
    def d_v(self) -> int:
        """int: Width of all value heads together, ``n_kv_heads * d_value_head``."""
        return self.n_kv_heads * self.d_value_head

    @property
    def d_attn_output(self) -> int:
        """int: Width of the attention's output (the output projection's input),
        ``n_heads * d_value_head``; ``d_attn`` without MLA."""
        return self.n_heads * self.d_value_head

    @property
    def kv_cache_width(self) -> int:
        """int: Values one token caches per layer for decoding.

        ``2 * n_kv_heads * d_head`` (a key and a value per key/value head); with MLA
        ``kv_lora_rank + qk_rope_dim`` (the latent and the shared rotary key).
        """
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_dim
        return 2 * self.n_kv_heads * self.d_head

    # -- kinds of layer ---------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        """bool: Whether the model is a mixture of experts (``n_experts > 1``)."""
        return self.n_experts > 1

    @property
    def is_mla(self) -> bool:
        """bool: Whether the attention is multi-head latent attention (``kv_lora_rank`` set)."""
        return self.kv_lora_rank is not None

    @property
    def n_moe_layers(self) -> int:
        """int: Layers with a mixture-of-experts FFN (0 for a dense model)."""
        return self.n_layers - self.n_dense_layers if self.is_moe else 0

    @property
    def n_local_layers(self) -> int:
        """int: Layers with windowed (local) attention."""
        if self.window is None:
            return 0
        return self.n_layers - (self.n_layers // self.global_every if self.global_every else 0)

    def layer_window(self, layer: int) -> int | None:
        """Keys a token of ``layer`` (1-based) may attend to: ``window``, or None if global."""
        layer = self._layer_number(layer)
        if self.window is None or (self.global_every and layer % self.global_every == 0):
            return None
        return self.window

    def layer_is_moe(self, layer: int) -> bool:
        """Whether ``layer`` (1-based) has a mixture-of-experts FFN."""
        return self.is_moe and self._layer_number(layer) > self.n_dense_layers

    def _layer_number(self, layer) -> int:
        layer = positive_int("layer", layer)
        if layer > self.n_layers:
            raise ValueError(f"layer={layer} is beyond the model's n_layers={self.n_layers} "
                             f"(allowed: 1 to {self.n_layers}, counting from 1)")
        return layer


def _norm_params(m: Transformer, width: int | None = None) -> int:
    # LayerNorm has a gain and a bias; PaLM-style "no biases" keeps only the gain.
    width = m.d_model if width is None else width
    return 2 * width if (m.norm == "layernorm" and m.bias) else width


def ffn_params(m: Transformer, d_ff: int) -> int:
    """Parameters of one FFN of kind ``m.ffn`` and hidden width ``d_ff`` (a dense FFN or one
    expert): two matrices (GELU) or three (SwiGLU, GeGLU), with their biases when ``m.bias``."""
    n_in = 2 if m.ffn in GATED_FFN_KINDS else 1  # a gated FFN has a gate and an up projection
    return (n_in + 1) * m.d_model * d_ff + ((n_in * d_ff + m.d_model) if m.bias else 0)


def _attention_params(m: Transformer) -> int:
    """Parameters of one layer's attention (its norms are counted with the norms)."""
    d = m.d_model
    if m.is_mla:
        q = d * m.d_attn if m.q_lora_rank is None else m.q_lora_rank * (d + m.d_attn)
        kv_down = d * (m.kv_lora_rank + m.qk_rope_dim)   # the latent and the shared rotary key
        kv_up = m.kv_lora_rank * m.n_heads * (m.d_head + m.v_head_dim)
        return q + kv_down + kv_up + m.d_attn_output * d
    attn = d * m.d_attn + 2 * d * m.d_kv + m.d_attn * d
    if m.bias:
        attn += m.d_attn + 2 * m.d_kv + d
    if m.positional == "relative":
        attn += d * m.d_attn + 2 * m.d_attn  # W_R and the u, v biases of Transformer-XL
    if m.attention_sinks:
        attn += m.n_heads
    return attn


def _router_params(m: Transformer) -> int:
    """Parameters of one MoE layer's router: a d_model x n_experts matrix (and its bias)."""
    return m.d_model * m.n_experts + (m.n_experts if m.router_bias else 0)


def _layer_norm_params(m: Transformer) -> int:
    """Norm parameters of one layer: the block's norms, MLA's latent norms, q/k norms."""
    n = (4 if m.post_norms else 2) * _norm_params(m)
    if m.is_mla:
        n += _norm_params(m, m.kv_lora_rank)
        if m.q_lora_rank is not None:
            n += _norm_params(m, m.q_lora_rank)
    if m.qk_norm:
        n += 2 * _norm_params(m, m.d_head)
    return n


def param_breakdown(m) -> dict[str, int]:
    """Exact parameter counts by part: the pieces ``param_count`` adds up.

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name such as
            ``"llama3-8b"`` (see :func:`models`).

    Returns:
        dict[str, int]: Parameter counts (exact integers) under the keys ``token_embedding``,
        ``position_embedding``, ``output_embedding`` (0 when tied), ``attention`` (MLA's
        projections, attention sinks), ``ffn`` (the dense FFNs and the shared experts),
        ``router`` and ``experts`` (the routed experts, all of them; both 0 for a dense model),
        ``norms`` (every layer's, MLA's latent norms, q/k norms, the final norm), ``extra`` and
        ``total``.

    Raises:
        ValueError: If ``m`` is neither a ``Transformer`` nor a registry name; the message names
            ``m`` and the closest names.
    """
    m = as_spec(m)
    d, L = m.d_model, m.n_layers
    n_moe, n_dense = m.n_moe_layers, m.n_layers - m.n_moe_layers
    expert = ffn_params(m, m.d_ff_expert) if m.is_moe else 0
    parts = {
        "token_embedding": m.vocab_size * d,
        "position_embedding": m.seq_len * d if m.positional == "learned" else 0,
        "output_embedding": 0 if m.tied_embeddings else m.vocab_size * d,
        "attention": L * _attention_params(m),
        "ffn": n_dense * ffn_params(m, m.d_ff) + n_moe * m.n_shared_experts * expert,
        "router": n_moe * _router_params(m),
        "experts": n_moe * m.n_experts * expert,
        "norms": L * _layer_norm_params(m) + _norm_params(m),
        "extra": m.extra_params,
    }
    parts["total"] = sum(parts.values())
    return parts


EMBEDDING_PARTS = ("token_embedding", "position_embedding", "output_embedding")


def param_count(m, embeddings: bool = True, *, active: bool = False) -> int:
    """Exact number of parameters of ``m``.

    With ``embeddings=False`` the token, position and (untied) output embedding tables are left
    out: the non-embedding count N of Kaplan et al. (2020). With ``active=True`` the routed
    experts a token does not meet are left out, ``n_experts - top_k`` per MoE layer: the N of
    C = 6 N D for a mixture of experts (the router and the shared experts stay in). Sources
    count "active" differently (whether the embedding tables are in): the chapter "Beyond the
    dense transformer" shows each beside this one.

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        embeddings (bool): Whether the embedding tables are counted. Default True.

    Keyword Args:
        active (bool): Count only the parameters one token uses. Default False (all of them);
            the same for a dense model.

    Returns:
        int: The number of parameters (a count, exact).

    Raises:
        ValueError: If ``m`` is neither a ``Transformer`` nor a registry name, or ``embeddings``
            or ``active`` is not True or False; the message names the argument.
    """
    m = as_spec(m)
    parts = param_breakdown(m)
    total = parts["total"]
    if not as_bool("embeddings", embeddings):
        total -= sum(parts[k] for k in EMBEDDING_PARTS)
    if as_bool("active", active) and m.is_moe:
        total -= m.n_moe_layers * (m.n_experts - m.top_k) * ffn_params(m, m.d_ff_expert)
    return total
