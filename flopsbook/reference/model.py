"""A transformer in plain numpy (float64) whose every matrix product is counted.

The book's FLOP and memory formulas are checked against this model, so it is written to be
read, not to be fast, and it imports no formula module: only the spec (the shapes). The
backward pass is written out by hand, one function per forward function, so that every product
of training is visible and counted.

The architecture, from a :class:`flopsbook.spec.Transformer` ``m`` (layers ``i`` from 0 here;
the spec's ``layer_window`` and ``layer_is_moe`` count from 1, so layer ``i`` is the spec's
``i + 1``)::

    x = token_embedding[tokens] (+ position_embedding[positions] if m.positional == "learned")
    for each of m.n_layers pre-norm blocks:
        a = out_proj(attention(norm1(x)))       # causal, windowed in a local layer; RoPE if "rope"
        x = x + (post_attn_norm(a) if m.post_norms else a)
        f = ffn(norm2(x))                       # dense FFN, or an MoE layer's experts
        x = x + (post_ffn_norm(f) if m.post_norms else f)
    logits = final_norm(x) @ output_embedding.T        # token_embedding.T when tied
    loss = mean cross-entropy of predicting targets (the next tokens)

- **FFN** of kind ``m.ffn``: GELU (``w_in``, ``w_out``), SwiGLU ``silu(gate) * up`` or GeGLU
  ``gelu(gate) * up`` (``w_gate``, ``w_up``, ``w_down``), with biases when ``m.bias``.
- **Mixture of experts** (layers with ``m.layer_is_moe``): router logits ``h @ w_router``
  (``+ b_router`` when ``m.router_bias``), component "router"; each token takes its ``top_k``
  experts by logit (ties go to the lower expert index: a stable sort) and weights them by a
  softmax over its ``top_k`` logits (Mixtral's and gpt-oss's order; DeepSeek and Qwen take a
  softmax or sigmoid over all experts first and may renormalise, which changes only
  elementwise work, never a product). Each routed expert is an FFN of kind ``m.ffn`` and width
  ``d_ff_expert`` applied only to the rows of the tokens routed to it (gathered rows, dropless:
  the routed "ffn" FLOPs are exactly N*top_k times one token's expert FLOPs, however the routing
  falls); the ``n_shared_experts`` see every token. Output = sum of weight * expert output +
  the shared experts' outputs. The first ``n_dense_layers`` keep a dense FFN of width ``d_ff``.
  The backward pass reaches the router through the routing weights (only the top_k logits get
  a gradient) and every expert through its tokens.
- **Attention**: ``n_heads`` query heads, query heads ``j*g .. j*g + g - 1`` share key/value
  head ``j`` (``g = n_heads // n_kv_heads``). With ``m.qk_norm`` a norm of kind ``m.norm`` over
  each head's ``d_head`` features of q and of k (gains ``attn.q_norm``, ``attn.k_norm``, shared
  by the heads), before RoPE. With ``m.attention_sinks`` one learned logit per query head
  (``attn.sinks``) joins each softmax's denominator (after the 1/sqrt scale, as gpt-oss does):
  probabilities over the keys sum to less than 1. A local layer (``m.layer_window(i + 1) = W``)
  masks keys more than W - 1 positions back: a token sees itself and the W - 1 before it.
- **Multi-head latent attention** (``m.is_mla``, DeepSeek-V2): ``q = h @ w_q``, or with
  ``q_lora_rank`` ``q = q_a_norm(h @ w_qa) @ w_qb``; ``h @ w_kva`` gives the latent
  ``c`` (``kv_lora_rank``) and one rotary key ``k_rope`` (``qk_rope_dim``) shared by all heads;
  ``c`` is normalised (``kv_a_norm``) and ``c @ w_kvb`` gives every head's ``k_nope``
  (``d_head``) and value (``v_head_dim``), in that order per head. RoPE (``positional="rope"``)
  turns only the rotary parts: the last ``qk_rope_dim`` features of each query head, and
  ``k_rope``. A head's key is ``concat(k_nope, k_rope)``, the scale 1/sqrt(d_head +
  qk_rope_dim), and the heads' outputs (``n_heads * v_head_dim``) go to ``w_o``. Norms of MLA's
  latents are of kind ``m.norm`` (no bias: MLA models have none).

Choices the spec leaves open, fixed here:

- GELU (and GeGLU's gate) is the tanh approximation ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715
  x^3)))`` of GPT-2.
- RoPE rotates the two halves of each head (or of MLA's rotary parts) ("rotate-half", as in
  GPT-NeoX and LLaMA's Hugging Face code) with base 10,000, so ``d_head`` (MLA:
  ``qk_rope_dim``) must be even.
- Norms use eps = 1e-5; LayerNorm has a bias only when ``m.bias``; RMSNorm never has one.
- Weights start with standard deviation 1/sqrt(fan_in), embeddings 1/sqrt(d_model), gains
  1 +- 0.1, biases and attention sinks 0.1: activations are O(1), so finite differences exercise
  every nonlinearity (and nonzero biases take part in every other gradient).

**What the training forward pass keeps** (recorded by every open counter as saved bytes, by
layer and name; the backward functions read nothing else). Per layer, with ``N = batch*seq``
tokens and ``h = d_model``:

- ``norm1_input`` (N*h): norm-1 backward; it is also the layer's input (the residual stream)
- ``norm1_mean``, ``norm1_rstd`` (N each, per-token statistics; RMSNorm keeps rstd only):
  norm-1 backward (every ``*_mean`` and ``*_rstd`` below is such a statistic)
- ``norm1_output`` (N*h): dW of the q, k and v projections (MLA: of ``w_q``/``w_qa`` and
  ``w_kva``)
- qk_norm only: ``q_norm_input`` (N*d_attn), ``k_norm_input`` (N*d_kv) and their statistics
  (N*n_heads, N*n_kv_heads): the q/k norms' backward
- MLA only: with ``q_lora_rank``, ``q_a_norm_input`` and ``q_a_norm_output`` (N*q_lora_rank
  each, and its statistics): the query latent's norm backward and dW of ``w_qb``;
  ``kv_a_norm_input`` and ``kv_a_norm_output`` (N*kv_lora_rank each, and its statistics): the
  latent's norm backward and dW of ``w_kvb``
- ``q``, ``k``, ``v`` (N*d_attn, N*d_kv, N*d_v): the backward products of attention (MLA: the
  up-projected keys, ``k_rope`` repeated per head, and values of the naive form)
- ``attention_probs`` (batch*n_heads*s*s; a local layer keeps the full masked matrix too): dV =
  A^T dO and the softmax backward (the sinks' gradient needs nothing more)
- ``attention_output`` (N*d_attn_output): dW of the output projection
- post_norms only: ``post_attn_norm_input`` (N*h) and its statistics
- ``norm2_input`` (N*h), ``norm2_mean``, ``norm2_rstd``: norm-2 backward
- ``norm2_output`` (N*h): dW of the first FFN matrices (dense), of the router, of the shared
  experts, and the rows the routed experts gather (their inputs are not kept: the backward
  pass gathers them again by ``router_indices``)
- dense FFN: ``ffn_preact`` (N*d_ff, GELU) or ``ffn_gate`` and ``ffn_up`` (N*d_ff each, SwiGLU,
  GeGLU): the activation's backward; ``ffn_act`` (N*d_ff): dW of the last FFN matrix
- MoE FFN: ``router_weights`` (N*top_k): the routing softmax's backward; ``router_indices``
  (N*top_k int64, marked a statistic: integers, like the norms' per-token numbers);
  ``expert_preact``/``expert_gate``, ``expert_up``, ``expert_act`` (N*top_k*d_ff_expert each,
  the tokens' rows grouped by expert): the routed experts' backward; ``expert_output``
  (N*top_k*h): the routing weights' gradient (dy . expert output); with shared experts
  ``shared_preact``/``shared_gate``, ``shared_up``, ``shared_act`` (N*n_shared*d_ff_expert
  each)
- post_norms only: ``post_ffn_norm_input`` (N*h) and its statistics

For MHA with d_ff = 4h that is 16*N*h + n_heads*s*s*batch values per layer: Korthikanti et al.
(2022)'s 34sbh + 5as^2b bytes without the dropout masks and outputs, at 2 bytes per value. q and
k are kept after the rotation (RoPE's backward needs only the angles, which are constants).
Outside the layers: ``tokens`` (part "embedding", for the embedding gradient) and, in part
"head", ``final_norm_input``, ``final_norm_mean``/``final_norm_rstd``, ``final_norm_output`` and
``output_probs`` (N*vocab softmax of the logits; the loss gradient is probs - one_hot) and
``targets``. With ``recompute=True`` each layer keeps only ``layer_input`` (N*h); the rest is
rebuilt, one layer at a time, during the backward pass (not recorded: it lives only while that
layer is differentiated). Every product is also recorded under its layer (``in_layer``; the
logits under "head").

**Inference** (``generate``, ``_last_logits``) with a KV cache:

- A global layer caches every token's keys and values (``n_kv_heads * d_head`` each per token);
  a local layer of window W keeps a rolling buffer of at most W tokens (each step drops the
  oldest keys a new token can no longer see). ``kv_cache_nbytes`` is the cache at its largest:
  per layer ``min(context, W)`` tokens (``context`` for a global layer), with ``context = P +
  new_tokens - 1`` the tokens fed.
- MLA caches, per token and layer, the normalised latent ``c`` and the rotated shared rotary key:
  ``kv_lora_rank + qk_rope_dim`` values. The prefill (the prompt pass, the cache empty) uses the
  naive form, counted exactly as training's forward (every token's key and value up-projected,
  scores over ``d_head + qk_rope_dim``, values of ``v_head_dim``). Each later step (new tokens
  with a cache) uses the *absorbed* form MLA is served with (DeepSeek-V2 §2.1.2: W_UK absorbed
  into the query, W_UV into the output), per new token: the query projections as in training
  and ``w_kva`` ("qkv"; no ``w_kvb`` product of the tokens); each head's non-rotary query mapped
  into latent space, ``q_lat = q_nope @ W_UK_h^T``: 2*n_heads*d_head*kv_lora_rank FLOPs
  ("qkv"); scores ``q_lat . c + q_rope . k_rope`` over the cached tokens:
  2*n_heads*(kv_lora_rank + qk_rope_dim) per attended (query, key) pair ("scores"); ``o_lat =
  probs @ c``: 2*n_heads*kv_lora_rank per pair ("weighted_values"); ``o_h = o_lat @ W_UV_h``:
  2*n_heads*kv_lora_rank*v_head_dim ("out_proj"); then ``w_o`` ("out_proj"). A decode step's
  new token attends to ``min(context so far, W)`` keys (all the cache's, itself included).
"""

from __future__ import annotations

import math

import numpy as np

from ..spec import Transformer
from .counter import elementwise, in_layer, matmul, save_for_backward

EPS = 1e-5          # added to the variance (mean square) of the norms
ROPE_BASE = 10000.0
GELU_C = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715

# Saved tensors that are per-token statistics (one or two numbers per token), not activations.
_STAT_SUFFIXES = ("_mean", "_rstd")
# ... and saved integers that are per-token too (the routing choices): left out like them.
_STAT_NAMES = ("router_indices",)


def _is_stat(name: str) -> bool:
    return name.endswith(_STAT_SUFFIXES) or name in _STAT_NAMES


# --------------------------------------------------------------------------------------------
# Building blocks. Each forward returns its output and what its backward needs; each backward
# takes exactly that and the gradient of the output.
# --------------------------------------------------------------------------------------------

def causal_mask(n_queries: int, n_keys: int, window: int | None = None) -> np.ndarray:
    """Boolean (n_queries, n_keys): True where the query may attend to the key.

    The queries are the last ``n_queries`` positions of the ``n_keys`` (a full sequence when the
    two are equal, the new tokens of a KV-cache step otherwise): query i sits at position
    ``n_keys - n_queries + i`` and sees every key up to and including its own position; with a
    ``window`` of W only the W keys ending at its own position (itself and the W - 1 before).
    """
    query_pos = (n_keys - n_queries + np.arange(n_queries))[:, None]
    key_pos = np.arange(n_keys)[None, :]
    mask = key_pos <= query_pos
    if window is not None:
        mask &= key_pos > query_pos - window
    return mask


def _sum_over_tokens(dy: np.ndarray) -> np.ndarray:
    """Gradient of a per-feature parameter (bias, gain) broadcast over batch and sequence."""
    return dy.reshape(-1, dy.shape[-1]).sum(axis=0)


def linear_forward(x, w, b, component, pass_):
    """``x @ w (+ b)``: x is (..., d_in), w is (d_in, d_out)."""
    y = matmul(x, w, component=component, pass_=pass_)
    if b is not None:
        y = y + b
        elementwise("bias", y.size, pass_)
    return y


def linear_backward(x, w, dy, component, has_bias):
    """Gradients of ``x @ w + b``: dX = dY W^T (backward_input), dW = X^T dY (backward_weight)."""
    dx = matmul(dy, w.T, component=component, pass_="backward_input")
    # Tokens of every sequence are rows of one big (N x d_in) matrix: dW sums over all of them.
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    dw = matmul(x2.T, dy2, component=component, pass_="backward_weight")
    db = None
    if has_bias:
        db = _sum_over_tokens(dy)
        elementwise("bias", dy.size, "backward")
    return dx, dw, db


def norm_forward(kind, x, gain, bias, pass_):
    """LayerNorm or RMSNorm over the last axis. Returns y and the per-token statistics."""
    if kind == "layernorm":
        mean = x.mean(axis=-1, keepdims=True)
        centred = x - mean
        rstd = 1.0 / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + EPS)
        xhat = centred * rstd
        stats = {"mean": mean, "rstd": rstd}
    else:  # rmsnorm: no centring, scale by the root mean square
        rstd = 1.0 / np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + EPS)
        xhat = x * rstd
        stats = {"rstd": rstd}
    y = xhat * gain
    elementwise(kind, x.size, pass_)  # after the work it records (counter.timing charges it)
    if bias is not None:
        y = y + bias
        elementwise("bias", y.size, pass_)
    return y, stats


def norm_backward(kind, x, stats, gain, has_bias, dy):
    """Gradients of :func:`norm_forward` from its input x and statistics (xhat is rebuilt)."""
    rstd = stats["rstd"]
    xhat = (x - stats["mean"]) * rstd if kind == "layernorm" else x * rstd
    dgain = _sum_over_tokens(dy * xhat)
    dxhat = dy * gain
    # xhat depends on every element of its row through the mean and rstd: subtract the parts of
    # dxhat along the directions that normalisation removes (the mean, and xhat itself).
    proj = (dxhat * xhat).mean(axis=-1, keepdims=True)
    if kind == "layernorm":
        dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * proj)
    else:
        dx = rstd * (dxhat - xhat * proj)
    elementwise(kind, x.size, "backward")
    dbias = None
    if has_bias:
        dbias = _sum_over_tokens(dy)
        elementwise("bias", dy.size, "backward")
    return dx, dgain, dbias


# z * z * z, not z ** 3: numpy sends a cube to the general pow(), ten times slower than two
# products, and the GELUs were most of a small model's training step.
def gelu(z):
    return 0.5 * z * (1.0 + np.tanh(GELU_C * (z + GELU_A * (z * z * z))))


def gelu_grad(z):
    z2 = z * z
    t = np.tanh(GELU_C * (z + GELU_A * (z2 * z)))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * z2)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def rope_angles(positions: np.ndarray, d_head: int):
    """cos and sin of the rotation angles, each (len(positions), d_head // 2)."""
    half = d_head // 2
    inv_freq = ROPE_BASE ** (-2.0 * np.arange(half) / d_head)
    angles = positions[:, None] * inv_freq[None, :]
    return np.cos(angles), np.sin(angles)


def rope_rotate(x, cos, sin):
    """Rotate each head's pairs (x[i], x[i + d_head/2]) by its angle. x: (b, s, heads, d_head).

    A rotation is orthogonal, so the backward pass is the same function with ``-sin``.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]  # broadcast over batch and heads
    return np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)


def group_queries(x, n_kv_heads):
    """(b, s, n_heads, d_head) -> (b, n_kv_heads, g*s, d_head).

    The g query heads that share a key/value head are stacked as rows, so one product with that
    head's keys serves all of them (and dK, dV sum over the group inside the product).
    """
    b, s, n_heads, d_head = x.shape
    g = n_heads // n_kv_heads
    x = x.reshape(b, s, n_kv_heads, g, d_head).transpose(0, 2, 3, 1, 4)
    return x.reshape(b, n_kv_heads, g * s, d_head)


def ungroup_queries(x, s):
    """Inverse of :func:`group_queries`, merged into (b, s, n_heads * d_head)."""
    b, n_kv, gs, d_head = x.shape
    g = gs // s
    return x.reshape(b, n_kv, g, s, d_head).transpose(0, 3, 1, 2, 4).reshape(b, s, -1)


def split_kv_heads(x):
    """(b, s, n_kv_heads, d_head) -> (b, n_kv_heads, s, d_head)."""
    return x.transpose(0, 2, 1, 3)


def merge_kv_heads(x):
    """(b, n_kv_heads, s, d_head) -> (b, s, n_kv_heads, d_head)."""
    return x.transpose(0, 2, 1, 3)


def _named(prefix: str, stats: dict) -> dict:
    """A norm's statistics under the names the tape keeps them by (``norm1_rstd``, ...)."""
    return {f"{prefix}_{k}": v for k, v in stats.items()}


def _last(x: np.ndarray, n: int, axis: int) -> np.ndarray:
    """The last ``n`` entries of ``x`` along ``axis`` (none when n <= 0)."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(max(x.shape[axis] - n, 0), None)
    return x[tuple(index)]


# --------------------------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------------------------

class ReferenceTransformer:
    """A decoder-only transformer built from a spec, with a hand-written backward pass.

    ``params`` is a dict of named float64 arrays that add up to
    ``param_count(m) - m.extra_params``. Typical use::

        model = ReferenceTransformer(m, seed=0)
        with count_flops() as c:
            loss, grads = model.train_step(tokens, targets)
        c.total("forward"), c.by_component("forward"), c.saved_by_name()
    """

    def __init__(self, m: Transformer, seed: int = 0):
        if not isinstance(m, Transformer):
            raise ValueError(f"m must be a flopsbook.spec.Transformer, got {type(m).__name__}")
        if m.positional not in ("learned", "rope", "none"):
            raise ValueError(f"positional={m.positional!r} is not supported: the reference model "
                             f"implements learned, rope and none")
        if m.positional == "rope":
            width, name = (m.qk_rope_dim, "qk_rope_dim") if m.is_mla else (m.d_head, "d_head")
            if width % 2:
                raise ValueError(f"rope rotates pairs of features: {name} must be even, "
                                 f"got {width}")
        self.m = m
        self.params = self._init_params(np.random.default_rng(seed))
        self.kv_cache_nbytes = 0  # set by generate(): bytes of the key/value cache at its largest
        self._tape = None         # what forward() kept for backward()

    # -- parameters -----------------------------------------------------------------------------
    def _init_params(self, rng) -> dict[str, np.ndarray]:
        m = self.m
        d = m.d_model

        def weight(d_in, d_out):
            return rng.normal(0.0, 1.0 / math.sqrt(d_in), (d_in, d_out))

        def vector(n):  # biases (and attention sinks)
            return rng.normal(0.0, 0.1, n)

        def norm(prefix, width=d):
            out = {f"{prefix}.gain": 1.0 + rng.normal(0.0, 0.1, width)}
            if m.norm == "layernorm" and m.bias:
                out[f"{prefix}.bias"] = vector(width)
            return out

        def ffn(prefix, width):  # a dense FFN or one expert
            if m.ffn == "gelu":
                f = {"w_in": weight(d, width), "w_out": weight(width, d)}
                if m.bias:
                    f.update(b_in=vector(width), b_out=vector(d))
            else:
                f = {"w_gate": weight(d, width), "w_up": weight(d, width),
                     "w_down": weight(width, d)}
                if m.bias:
                    f.update(b_gate=vector(width), b_up=vector(width), b_down=vector(d))
            return {f"{prefix}.{k}": v for k, v in f.items()}

        p = {"token_embedding": rng.normal(0.0, 1.0 / math.sqrt(d), (m.vocab_size, d))}
        if m.positional == "learned":
            p["position_embedding"] = rng.normal(0.0, 1.0 / math.sqrt(d), (m.seq_len, d))
        for i in range(m.n_layers):
            pre = f"layers.{i}"
            layer = norm("norm1")
            layer.update(self._attention_init(weight, vector, norm))
            if m.post_norms:
                layer.update(norm("post_attn_norm"))
            layer.update(norm("norm2"))
            if m.layer_is_moe(i + 1):
                layer["moe.w_router"] = weight(d, m.n_experts)
                if m.router_bias:
                    layer["moe.b_router"] = vector(m.n_experts)
                for e in range(m.n_experts):
                    layer.update(ffn(f"moe.expert{e}", m.d_ff_expert))
                for j in range(m.n_shared_experts):
                    layer.update(ffn(f"moe.shared{j}", m.d_ff_expert))
            else:
                layer.update(ffn("ffn", m.d_ff))
            if m.post_norms:
                layer.update(norm("post_ffn_norm"))
            p.update({f"{pre}.{k}": v for k, v in layer.items()})
        p.update(norm("final_norm"))
        if not m.tied_embeddings:
            p["output_embedding"] = rng.normal(0.0, 1.0 / math.sqrt(d), (m.vocab_size, d))
        return p

    def _attention_init(self, weight, vector, norm) -> dict[str, np.ndarray]:
        m, d = self.m, self.m.d_model
        if m.is_mla:  # the spec allows no biases, q/k norms or sinks with MLA
            a = {}
            if m.q_lora_rank is None:
                a["attn.w_q"] = weight(d, m.d_attn)
            else:
                a["attn.w_qa"] = weight(d, m.q_lora_rank)
                a.update(norm("attn.q_a_norm", m.q_lora_rank))
                a["attn.w_qb"] = weight(m.q_lora_rank, m.d_attn)
            a["attn.w_kva"] = weight(d, m.kv_lora_rank + m.qk_rope_dim)
            a.update(norm("attn.kv_a_norm", m.kv_lora_rank))
            a["attn.w_kvb"] = weight(m.kv_lora_rank, m.n_heads * (m.d_head + m.v_head_dim))
            a["attn.w_o"] = weight(m.d_attn_output, d)
            return a
        a = {"attn.w_q": weight(d, m.d_attn), "attn.w_k": weight(d, m.d_kv),
             "attn.w_v": weight(d, m.d_kv), "attn.w_o": weight(m.d_attn, d)}
        if m.bias:
            a.update({"attn.b_q": vector(m.d_attn), "attn.b_k": vector(m.d_kv),
                      "attn.b_v": vector(m.d_kv), "attn.b_o": vector(d)})
        if m.qk_norm:
            a.update(norm("attn.q_norm", m.d_head))
            a.update(norm("attn.k_norm", m.d_head))
        if m.attention_sinks:
            a["attn.sinks"] = vector(m.n_heads)
        return a

    @property
    def n_params(self) -> int:
        return sum(v.size for v in self.params.values())

    def _layer(self, i: int) -> dict[str, np.ndarray]:
        """Layer i's parameters under short names ("attn.w_q", "norm1.gain", ...)."""
        prefix = f"layers.{i}."
        return {k[len(prefix):]: v for k, v in self.params.items() if k.startswith(prefix)}

    def _norm_params(self, p, prefix):
        return p[f"{prefix}.gain"], p.get(f"{prefix}.bias")

    @property
    def _output_matrix(self) -> np.ndarray:
        """(vocab, d_model): logits = h @ this.T."""
        return self.params["token_embedding" if self.m.tied_embeddings else "output_embedding"]

    # -- input checks ---------------------------------------------------------------------------
    def _check_tokens(self, tokens, name="tokens") -> np.ndarray:
        arr = np.asarray(tokens)
        if arr.ndim == 1:
            arr = arr[None, :]  # one sequence
        if arr.ndim != 2 or arr.size == 0:
            raise ValueError(f"{name} must be a (batch, seq) array of token ids, "
                             f"got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be integer token ids, got dtype {arr.dtype}")
        if arr.min() < 0 or arr.max() >= self.m.vocab_size:
            raise ValueError(f"{name} must be in [0, vocab_size={self.m.vocab_size}), got values "
                             f"from {arr.min()} to {arr.max()}")
        return arr

    def _check_positions(self, last_position: int) -> None:
        if self.m.positional == "learned" and last_position >= self.m.seq_len:
            raise ValueError(f"position {last_position} is beyond the learned position table "
                             f"(seq_len={self.m.seq_len}): sequences may have at most "
                             f"{self.m.seq_len} tokens")

    # -- forward pieces (pass_ is "forward", or "recompute" when the backward pass rebuilds) ---
    def _embed(self, tokens, positions, pass_="forward"):
        self._check_positions(int(positions[-1]))
        x = self.params["token_embedding"][tokens]
        if self.m.positional == "learned":
            x = x + self.params["position_embedding"][positions]
            elementwise("embedding", x.size, pass_)
        return x

    def _cached(self, cache, window, axis, **new):
        """Append this call's keys and values (or MLA's latents) to ``cache`` along ``axis`` and
        return what attention sees: the cached entries, then the new ones.

        A local layer (``window`` W) keeps a rolling buffer: before appending, only the W - 1
        newest cached tokens (all that a new token can still see), afterwards the W newest. The
        largest size the cache reaches is kept under "max_nbytes".
        """
        seen = []
        for name, arr in new.items():
            if name in cache:
                old = cache[name] if window is None else _last(cache[name], window - 1, axis)
                arr = np.concatenate([old, arr], axis=axis)
            seen.append(arr)
            cache[name] = arr if window is None else _last(arr, window, axis)
        cache["max_nbytes"] = max(cache.get("max_nbytes", 0),
                                  sum(cache[name].nbytes for name in new))
        return seen

    def _sink_rows(self, p, rows):
        """Each grouped query row's sink logit, (n_kv_heads, rows, 1), or None without sinks.

        Rows follow :func:`group_queries`: row ``j*s + t`` of key/value head ``kv`` is query
        head ``kv*g + j`` at position t.
        """
        if "attn.sinks" not in p:
            return None
        m = self.m
        g = m.n_heads // m.n_kv_heads
        return np.repeat(p["attn.sinks"].reshape(m.n_kv_heads, g), rows // g, axis=1)[..., None]

    def _softmax(self, p, scores, mask, scale, pass_):
        """Masked softmax of the scaled scores over the keys; a sink logit, when the model has
        them, joins each row's denominator (it takes probability but adds no value)."""
        scores = np.where(mask, scores * scale, -np.inf)
        sinks = self._sink_rows(p, scores.shape[-2])
        top = scores.max(axis=-1, keepdims=True)
        if sinks is not None:
            top = np.maximum(top, sinks)
        e = np.exp(scores - top)
        z = e.sum(axis=-1, keepdims=True)
        if sinks is not None:
            z = z + np.exp(sinks - top)
        probs = e / z
        elementwise("softmax", probs.size, pass_, mask=mask)
        return probs

    def _attend(self, p, q, k, v, mask, scale, pass_):
        """softmax(q k^T * scale) v for q (b, G, rows, d), k (b, G, keys, d), v (b, G, keys, dv);
        ``mask`` is (rows, keys). Returns the output and the probabilities."""
        scores = matmul(q, k.swapaxes(-1, -2), component="scores", pass_=pass_, mask=mask)
        probs = self._softmax(p, scores, mask, scale, pass_)
        o = matmul(probs, v, component="weighted_values", pass_=pass_, mask=mask)
        return o, probs

    def _rotate(self, x, positions, pass_, inverse=False):
        """RoPE on x (b, s, heads, width) at ``positions``; ``inverse`` turns it back (its
        backward). Counted as "rope" work per element."""
        cos, sin = rope_angles(positions, x.shape[-1])
        out = rope_rotate(x, cos, -sin if inverse else sin)
        elementwise("rope", x.size, "backward" if inverse else pass_)  # after, as norm_forward
        return out

    def _attention_forward(self, i, p, h, positions, pass_, cache=None):
        """Causal (windowed in a local layer) self-attention of h (b, s, d_model); with
        ``cache`` the keys and values of earlier positions are read from it and this call's are
        appended to it. Returns the output and the tape."""
        m = self.m
        window = m.layer_window(i + 1)
        if m.is_mla:
            if cache is not None and "c" in cache:  # a step after the prefill: absorbed form
                return self._mla_absorbed(p, h, positions, window, pass_, cache), {}
            return self._mla_forward(p, h, positions, window, pass_, cache)
        b, s, _ = h.shape
        q = linear_forward(h, p["attn.w_q"], p.get("attn.b_q"), "qkv", pass_)
        k = linear_forward(h, p["attn.w_k"], p.get("attn.b_k"), "qkv", pass_)
        v = linear_forward(h, p["attn.w_v"], p.get("attn.b_v"), "qkv", pass_)
        q = q.reshape(b, s, m.n_heads, m.d_head)
        k = k.reshape(b, s, m.n_kv_heads, m.d_head)
        v = v.reshape(b, s, m.n_kv_heads, m.d_head)
        tape = {}
        if m.qk_norm:  # over each head's features, before the rotation
            tape["q_norm_input"], tape["k_norm_input"] = q, k
            q, stats = norm_forward(m.norm, q, *self._norm_params(p, "attn.q_norm"), pass_)
            tape.update(_named("q_norm", stats))
            k, stats = norm_forward(m.norm, k, *self._norm_params(p, "attn.k_norm"), pass_)
            tape.update(_named("k_norm", stats))
        if m.positional == "rope":
            q, k = self._rotate(q, positions, pass_), self._rotate(k, positions, pass_)
        q = group_queries(q, m.n_kv_heads)                       # (b, kv, g*s, d_head)
        k, v = split_kv_heads(k), split_kv_heads(v)
        if cache is not None:
            k, v = self._cached(cache, window, 2, k=k, v=v)      # (b, kv, keys, d_head)
        g = m.n_heads // m.n_kv_heads
        qmask = np.tile(causal_mask(s, k.shape[2], window), (g, 1))  # rows as group_queries
        o, probs = self._attend(p, q, k, v, qmask, 1.0 / math.sqrt(m.d_head), pass_)
        o = ungroup_queries(o, s)                                # (b, s, n_heads * d_head)
        out = linear_forward(o, p["attn.w_o"], p.get("attn.b_o"), "out_proj", pass_)
        tape.update(q=q, k=k, v=v, attention_probs=probs, attention_output=o)
        return out, tape

    # -- multi-head latent attention --------------------------------------------------------------
    def _mla_query(self, p, h, pass_, tape):
        """MLA's queries (b, s, n_heads, d_qk), before the rotation."""
        m = self.m
        b, s, _ = h.shape
        if m.q_lora_rank is None:
            q = linear_forward(h, p["attn.w_q"], None, "qkv", pass_)
        else:
            cq = linear_forward(h, p["attn.w_qa"], None, "qkv", pass_)
            cqn, stats = norm_forward(m.norm, cq, *self._norm_params(p, "attn.q_a_norm"), pass_)
            tape.update(q_a_norm_input=cq, **_named("q_a_norm", stats), q_a_norm_output=cqn)
            q = linear_forward(cqn, p["attn.w_qb"], None, "qkv", pass_)
        return q.reshape(b, s, m.n_heads, m.d_qk)

    def _mla_latent(self, p, h, positions, pass_, tape):
        """The normalised latent (b, s, kv_lora_rank) and the rotated shared rotary key
        (b, s, qk_rope_dim): what MLA caches per token."""
        m = self.m
        kva = linear_forward(h, p["attn.w_kva"], None, "qkv", pass_)
        c, k_rope = kva[..., :m.kv_lora_rank], kva[..., m.kv_lora_rank:]
        cn, stats = norm_forward(m.norm, c, *self._norm_params(p, "attn.kv_a_norm"), pass_)
        tape.update(kv_a_norm_input=c, **_named("kv_a_norm", stats), kv_a_norm_output=cn)
        if m.positional == "rope" and m.qk_rope_dim:
            k_rope = self._rotate(k_rope[:, :, None, :], positions, pass_)[:, :, 0, :]
        return cn, k_rope

    def _mla_rotate_query(self, q, positions, pass_, inverse=False):
        """RoPE on the last qk_rope_dim features of each query head (or its inverse)."""
        m = self.m
        if m.positional != "rope" or not m.qk_rope_dim:
            return q
        rotated = self._rotate(q[..., m.d_head:], positions, pass_, inverse)
        return np.concatenate([q[..., :m.d_head], rotated], axis=-1)

    def _mla_forward(self, p, h, positions, window, pass_, cache):
        """MLA in its naive form (training, and the prefill): every token's keys and values
        are up-projected from the latent. With ``cache`` (empty: the prefill) the latents and
        rotary keys are stored in it."""
        m = self.m
        b, s, _ = h.shape
        n_heads, dh = m.n_heads, m.d_head
        tape = {}
        q = self._mla_rotate_query(self._mla_query(p, h, pass_, tape), positions, pass_)
        cn, k_rope = self._mla_latent(p, h, positions, pass_, tape)
        if cache is not None:
            self._cached(cache, window, 1, c=cn, k_rope=k_rope)
        kv = linear_forward(cn, p["attn.w_kvb"], None, "qkv", pass_)
        kv = kv.reshape(b, s, n_heads, dh + m.v_head_dim)
        shared = np.broadcast_to(k_rope[:, :, None, :], (b, s, n_heads, m.qk_rope_dim))
        k = np.concatenate([kv[..., :dh], shared], axis=-1)     # (b, s, heads, d_qk)
        q = group_queries(q, n_heads)                            # (b, heads, s, d_qk)
        k, v = split_kv_heads(k), split_kv_heads(kv[..., dh:])
        mask = causal_mask(s, s, window)
        o, probs = self._attend(p, q, k, v, mask, 1.0 / math.sqrt(m.d_qk), pass_)
        o = ungroup_queries(o, s)                                # (b, s, heads * v_head_dim)
        out = linear_forward(o, p["attn.w_o"], None, "out_proj", pass_)
        tape.update(q=q, k=k, v=v, attention_probs=probs, attention_output=o)
        return out, tape

    def _mla_absorbed(self, p, h, positions, window, pass_, cache):
        """MLA's absorbed form for new tokens after the prefill (DeepSeek-V2 §2.1.2): W_UK is
        absorbed into the query and W_UV into the output, so attention runs in latent space
        over the cached latents and rotary keys (see the module docstring for the counts)."""
        m = self.m
        b, s, _ = h.shape
        n_heads, dh, dv, r = m.n_heads, m.d_head, m.v_head_dim, m.kv_lora_rank
        q = self._mla_rotate_query(self._mla_query(p, h, pass_, {}), positions, pass_)
        cn, k_rope = self._mla_latent(p, h, positions, pass_, {})
        c, k_rope = self._cached(cache, window, 1, c=cn, k_rope=k_rope)  # (b, keys, r), (.., dr)
        w_kvb = p["attn.w_kvb"].reshape(r, n_heads, dh + dv)
        w_uk = w_kvb[..., :dh].transpose(1, 2, 0)                # (heads, dh, r)
        w_uv = w_kvb[..., dh:].transpose(1, 0, 2)                # (heads, r, dv)
        q = q.transpose(0, 2, 1, 3)                              # (b, heads, s, d_qk)
        q_lat = matmul(q[..., :dh], w_uk, component="qkv", pass_=pass_)  # (b, heads, s, r)
        mask = causal_mask(s, c.shape[1], window)
        c, k_rope = c[:, None], k_rope[:, None]                  # one "head", shared by all
        scores = (matmul(q_lat, c.swapaxes(-1, -2), component="scores", pass_=pass_, mask=mask)
                  + matmul(q[..., dh:], k_rope.swapaxes(-1, -2), component="scores",
                           pass_=pass_, mask=mask))
        probs = self._softmax(p, scores, mask, 1.0 / math.sqrt(m.d_qk), pass_)
        o_lat = matmul(probs, c, component="weighted_values", pass_=pass_, mask=mask)
        o = matmul(o_lat, w_uv, component="out_proj", pass_=pass_)  # (b, heads, s, dv)
        o = o.transpose(0, 2, 1, 3).reshape(b, s, n_heads * dv)
        return linear_forward(o, p["attn.w_o"], None, "out_proj", pass_)

    # -- feed-forward ---------------------------------------------------------------------------
    def _ffn_forward(self, p, h, prefix, pass_):
        """An FFN of kind m.ffn with weights under ``prefix`` ("ffn", "moe.expert3", ...).
        Its tape has short names: preact, act (GELU) or gate, up, act (SwiGLU, GeGLU)."""
        ffn = self.m.ffn
        if ffn == "gelu":
            z = linear_forward(h, p[f"{prefix}.w_in"], p.get(f"{prefix}.b_in"), "ffn", pass_)
            a = gelu(z)
            elementwise("gelu", z.size, pass_)
            y = linear_forward(a, p[f"{prefix}.w_out"], p.get(f"{prefix}.b_out"), "ffn", pass_)
            return y, {"preact": z, "act": a}
        gate = linear_forward(h, p[f"{prefix}.w_gate"], p.get(f"{prefix}.b_gate"), "ffn", pass_)
        up = linear_forward(h, p[f"{prefix}.w_up"], p.get(f"{prefix}.b_up"), "ffn", pass_)
        a = (gate * sigmoid(gate) if ffn == "swiglu" else gelu(gate)) * up
        elementwise(ffn, a.size, pass_)
        y = linear_forward(a, p[f"{prefix}.w_down"], p.get(f"{prefix}.b_down"), "ffn", pass_)
        return y, {"gate": gate, "up": up, "act": a}

    def _dispatch(self, chosen):
        """The (token, choice) slots of ``chosen`` (N, top_k) grouped by expert.

        Returns ``slots`` (indices into chosen.flat, expert by expert, tokens in order),
        ``tokens`` (each slot's token) and ``bounds`` (expert e has slots bounds[e]:bounds[e+1]).
        """
        flat = chosen.reshape(-1)
        slots = np.argsort(flat, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=self.m.n_experts))])
        return slots, slots // self.m.top_k, bounds

    def _moe_forward(self, p, h, pass_):
        """Router, top_k routed experts on their tokens' rows, shared experts on every token."""
        m = self.m
        x = h.reshape(-1, h.shape[-1])
        logits = linear_forward(x, p["moe.w_router"], p.get("moe.b_router"), "router", pass_)
        # A stable sort of -logits: equal logits go to the lower expert index.
        chosen = np.argsort(-logits, axis=-1, kind="stable")[:, :m.top_k]
        top = np.take_along_axis(logits, chosen, axis=-1)
        e = np.exp(top - top.max(axis=-1, keepdims=True))
        weights = e / e.sum(axis=-1, keepdims=True)               # softmax over the top_k
        elementwise("router_softmax", weights.size, pass_)
        slots, tokens, bounds = self._dispatch(chosen)
        outputs, inner = [], []
        for expert in range(m.n_experts):  # each expert sees only the rows routed to it
            rows = tokens[bounds[expert]:bounds[expert + 1]]
            y, t = self._ffn_forward(p, x[rows], f"moe.expert{expert}", pass_)
            outputs.append(y)
            inner.append(t)
        y_slots = np.concatenate(outputs)                         # (N*top_k, d), by expert
        out = np.zeros_like(x)
        np.add.at(out, tokens, weights.reshape(-1)[slots][:, None] * y_slots)
        elementwise("moe_combine", y_slots.size, pass_)
        tape = {"router_weights": weights, "router_indices": chosen, "expert_output": y_slots,
                **{f"expert_{k}": np.concatenate([t[k] for t in inner]) for k in inner[0]}}
        shared = []
        for j in range(m.n_shared_experts):
            y, t = self._ffn_forward(p, x, f"moe.shared{j}", pass_)
            out = out + y
            elementwise("residual", out.size, pass_)
            shared.append(t)
        if shared:
            tape.update({f"shared_{k}": np.stack([t[k] for t in shared]) for k in shared[0]})
        return out.reshape(h.shape), tape

    def _layer_forward(self, i, x, positions, pass_="forward", cache=None):
        """One pre-norm block. Returns its output and its tape (see the module docstring)."""
        m, p, kind = self.m, self._layer(i), self.m.norm
        h1, stats = norm_forward(kind, x, *self._norm_params(p, "norm1"), pass_)
        tape = {"norm1_input": x, **_named("norm1", stats), "norm1_output": h1}
        a, attn_tape = self._attention_forward(i, p, h1, positions, pass_, cache)
        tape.update(attn_tape)
        a = self._post_norm(p, a, "post_attn_norm", tape, pass_)
        x2 = x + a
        elementwise("residual", x2.size, pass_)
        h2, stats = norm_forward(kind, x2, *self._norm_params(p, "norm2"), pass_)
        tape.update({"norm2_input": x2, **_named("norm2", stats), "norm2_output": h2})
        if m.layer_is_moe(i + 1):
            f, ffn_tape = self._moe_forward(p, h2, pass_)
        else:
            f, ffn_tape = self._ffn_forward(p, h2, "ffn", pass_)
            ffn_tape = {f"ffn_{k}": v for k, v in ffn_tape.items()}
        tape.update(ffn_tape)
        f = self._post_norm(p, f, "post_ffn_norm", tape, pass_)
        out = x2 + f
        elementwise("residual", out.size, pass_)
        return out, tape

    def _post_norm(self, p, y, prefix, tape, pass_):
        """Gemma 2/3's norm of a block's output before the residual add (identity without)."""
        if not self.m.post_norms:
            return y
        out, stats = norm_forward(self.m.norm, y, *self._norm_params(p, prefix), pass_)
        tape.update({f"{prefix}_input": y, **_named(prefix, stats)})
        return out

    def _head_forward(self, x, targets):
        """Final norm, logits at every position, mean cross-entropy. Returns loss and tape."""
        p = self.params
        gain, bias = p["final_norm.gain"], p.get("final_norm.bias")
        h, stats = norm_forward(self.m.norm, x, gain, bias, "forward")
        logits = matmul(h, self._output_matrix.T, component="logits", pass_="forward")
        shifted = logits - logits.max(axis=-1, keepdims=True)  # for a stable exp
        e = np.exp(shifted)
        z = e.sum(axis=-1, keepdims=True)
        probs = e / z
        elementwise("cross_entropy", logits.size, "forward")
        picked = np.take_along_axis(shifted, targets[..., None], axis=-1)
        loss = float(np.mean(np.log(z) - picked))  # -log softmax(logits)[target]
        tape = {"final_norm_input": x, **_named("final_norm", stats),
                "final_norm_output": h, "output_probs": probs, "targets": targets}
        return loss, tape

    # -- training -------------------------------------------------------------------------------
    def forward(self, tokens, targets, *, recompute: bool = False) -> float:
        """Mean cross-entropy loss of predicting ``targets`` from ``tokens`` (both (batch, s)).

        Keeps what :meth:`backward` needs and records its bytes in every open counter. With
        ``recompute=True`` (full activation recomputation) each layer keeps only its input.
        """
        tokens = self._check_tokens(tokens)
        targets = self._check_tokens(targets, "targets")
        if targets.shape != tokens.shape:
            raise ValueError(f"targets must have the shape of tokens {tokens.shape}, "
                             f"got {targets.shape}")
        s = tokens.shape[1]
        positions = np.arange(s)
        x = self._embed(tokens, positions)
        save_for_backward("embedding", "tokens", tokens)
        layer_tapes = []
        for i in range(self.m.n_layers):
            x_in = x
            with in_layer(i):
                x, tape = self._layer_forward(i, x, positions)
            if recompute:
                tape = {"layer_input": x_in}  # the rest is dropped and rebuilt in backward()
            for name, arr in tape.items():
                save_for_backward(i, name, arr, stat=_is_stat(name))
            layer_tapes.append(tape)
        with in_layer("head"):
            loss, head_tape = self._head_forward(x, targets)
        for name, arr in head_tape.items():
            save_for_backward("head", name, arr, stat=_is_stat(name))
        self._tape = {"tokens": tokens, "layers": layer_tapes, "head": head_tape,
                      "recompute": recompute}
        return loss

    def backward(self) -> dict[str, np.ndarray]:
        """Gradients of the last :meth:`forward`'s loss, a dict keyed like ``params``."""
        if self._tape is None:
            raise ValueError("call forward(tokens, targets) before backward()")
        tape, self._tape = self._tape, None  # one backward per forward: free the activations
        m, grads = self.m, {}
        tokens = tape["tokens"]
        s = tokens.shape[1]
        positions = np.arange(s)

        with in_layer("head"):
            dx = self._head_backward(tape["head"], grads)
        for i in reversed(range(m.n_layers)):
            t = tape["layers"][i]
            with in_layer(i):
                if tape["recompute"]:  # rebuild this layer's tape from its input
                    _, t = self._layer_forward(i, t["layer_input"], positions, "recompute")
                dx = self._layer_backward(i, t, dx, positions, grads)

        # Embeddings: each token's row receives the gradient of every place it was used.
        d_tok = np.zeros_like(self.params["token_embedding"])
        np.add.at(d_tok, tokens, dx)
        elementwise("embedding", dx.size, "backward")
        if m.tied_embeddings:
            grads["token_embedding"] = d_tok + grads.pop("token_embedding")  # plus the logits'
        else:
            grads["token_embedding"] = d_tok
        if m.positional == "learned":
            d_pos = np.zeros_like(self.params["position_embedding"])
            d_pos[:s] = dx.sum(axis=0)  # position j is used once by every sequence
            elementwise("embedding", dx.size, "backward")
            grads["position_embedding"] = d_pos
        return {k: grads[k] for k in self.params}  # same order as params

    def train_step(self, tokens, targets, *, recompute: bool = False):
        """``forward`` then ``backward``: returns (loss, grads)."""
        loss = self.forward(tokens, targets, recompute=recompute)
        return loss, self.backward()

    # -- backward pieces ------------------------------------------------------------------------
    def _head_backward(self, t, grads):
        n_tokens = t["targets"].size
        # d(mean cross-entropy)/d(logits) = (softmax - one_hot(target)) / N
        dlogits = t["output_probs"].copy()
        np.put_along_axis(dlogits, t["targets"][..., None],
                          np.take_along_axis(dlogits, t["targets"][..., None], axis=-1) - 1.0,
                          axis=-1)
        dlogits /= n_tokens
        elementwise("cross_entropy", dlogits.size, "backward")
        w = self._output_matrix
        dh, dw_t, _ = linear_backward(t["final_norm_output"], w.T, dlogits, "logits", False)
        grads["token_embedding" if self.m.tied_embeddings else "output_embedding"] = dw_t.T
        stats = {k: t[f"final_norm_{k}"] for k in ("mean", "rstd") if f"final_norm_{k}" in t}
        dx, dgain, dbias = norm_backward(self.m.norm, t["final_norm_input"], stats,
                                         self.params["final_norm.gain"],
                                         "final_norm.bias" in self.params, dh)
        grads["final_norm.gain"] = dgain
        if dbias is not None:
            grads["final_norm.bias"] = dbias
        return dx

    def _norm_backward(self, p, t, prefix, dy, g, pre, param=None):
        """Backward of the norm whose tape entries start with ``prefix`` and whose parameters
        are ``param`` (default: the same prefix; "attn.q_norm" for the tape's "q_norm")."""
        param = prefix if param is None else param
        stats = {k: t[f"{prefix}_{k}"] for k in ("mean", "rstd") if f"{prefix}_{k}" in t}
        dx, dgain, dbias = norm_backward(self.m.norm, t[f"{prefix}_input"], stats,
                                         p[f"{param}.gain"], f"{param}.bias" in p, dy)
        g[f"{pre}{param}.gain"] = dgain
        if dbias is not None:
            g[f"{pre}{param}.bias"] = dbias
        return dx

    def _linear_backward(self, p, x, name, dy, component, g, pre):
        """Backward of the layer's linear ``name`` ("attn.q" -> attn.w_q, attn.b_q;
        "moe.expert3.gate" -> moe.expert3.w_gate, ...)."""
        part, short = name.rsplit(".", 1)
        dx, dw, db = linear_backward(x, p[f"{part}.w_{short}"], dy, component,
                                     f"{part}.b_{short}" in p)
        g[f"{pre}{part}.w_{short}"] = dw
        if db is not None:
            g[f"{pre}{part}.b_{short}"] = db
        return dx

    def _ffn_backward(self, p, prefix, h, t, dy, g, pre):
        """Backward of :meth:`_ffn_forward` from its input h and tape t (short names)."""
        ffn = self.m.ffn
        if ffn == "gelu":
            da = self._linear_backward(p, t["act"], f"{prefix}.out", dy, "ffn", g, pre)
            dz = da * gelu_grad(t["preact"])
            elementwise("gelu", dz.size, "backward")
            return self._linear_backward(p, h, f"{prefix}.in", dz, "ffn", g, pre)
        da = self._linear_backward(p, t["act"], f"{prefix}.down", dy, "ffn", g, pre)
        gate, up = t["gate"], t["up"]
        if ffn == "swiglu":
            sig = sigmoid(gate)
            d_up = da * gate * sig
            d_gate = da * up * sig * (1.0 + gate * (1.0 - sig))  # silu' = s(1 + x(1 - s))
        else:  # geglu
            d_up = da * gelu(gate)
            d_gate = da * up * gelu_grad(gate)
        elementwise(ffn, da.size, "backward")
        # h fed both projections: its gradient is the sum (not counted: a fused gate-and-up
        # product would produce it directly).
        return (self._linear_backward(p, h, f"{prefix}.gate", d_gate, "ffn", g, pre)
                + self._linear_backward(p, h, f"{prefix}.up", d_up, "ffn", g, pre))

    def _moe_backward(self, p, t, dout, g, pre):
        """Backward of :meth:`_moe_forward`: through every expert on its tokens' rows, and
        through the routing weights into the router (only the top_k logits get a gradient)."""
        m = self.m
        h = t["norm2_output"]
        x = h.reshape(-1, h.shape[-1])
        dy = dout.reshape(x.shape)
        weights, chosen = t["router_weights"], t["router_indices"]
        slots, tokens, bounds = self._dispatch(chosen)
        dx = np.zeros_like(x)
        # The gradients that reach x from the shared experts, the routed experts and the router
        # are summed (not counted, like the fused-projection sums elsewhere).
        for j in range(m.n_shared_experts):
            tj = {k[len("shared_"):]: v[j] for k, v in t.items() if k.startswith("shared_")}
            dx += self._ffn_backward(p, f"moe.shared{j}", x, tj, dy, g, pre)
        y_slots = t["expert_output"]
        dy_slots = dy[tokens]
        dw_slots = (dy_slots * y_slots).sum(axis=-1)              # d loss / d routing weight
        dy_slots = dy_slots * weights.reshape(-1)[slots][:, None]
        elementwise("moe_combine", y_slots.size, "backward")
        inner = [k for k in t if k.startswith("expert_") and k != "expert_output"]
        for expert in range(m.n_experts):
            lo, hi = bounds[expert], bounds[expert + 1]
            te = {k[len("expert_"):]: t[k][lo:hi] for k in inner}
            rows = tokens[lo:hi]  # the expert's inputs, gathered again from norm2_output
            dxe = self._ffn_backward(p, f"moe.expert{expert}", x[rows], te, dy_slots[lo:hi],
                                     g, pre)
            np.add.at(dx, rows, dxe)
        dweights = np.empty(chosen.size)
        dweights[slots] = dw_slots
        dweights = dweights.reshape(chosen.shape)
        # Softmax over the top_k, row by row: dz = w * (dw - sum(dw * w)).
        dtop = weights * (dweights - (dweights * weights).sum(axis=-1, keepdims=True))
        elementwise("router_softmax", dtop.size, "backward")
        dlogits = np.zeros((x.shape[0], m.n_experts))
        np.put_along_axis(dlogits, chosen, dtop, axis=-1)
        dx += self._linear_backward(p, x, "moe.router", dlogits, "router", g, pre)
        return dx.reshape(h.shape)

    def _attend_backward(self, p, t, do, mask, scale, g, pre):
        """Backward of :meth:`_attend` (and of the sinks): dq, dk, dv in the grouped layout."""
        m = self.m
        q, k, v, probs = t["q"], t["k"], t["v"], t["attention_probs"]
        # o = A v: dA = dO v^T and dv = A^T dO. No weights: both are backward_input.
        dprobs = matmul(do, v.swapaxes(-1, -2), component="weighted_values",
                        pass_="backward_input", mask=mask)
        dv = matmul(probs.swapaxes(-1, -2), do, component="weighted_values",
                    pass_="backward_input", mask=mask)
        # Softmax backward, row by row: dS = A * (dA - sum(dA * A)), times the 1/sqrt(d) scale.
        row = (dprobs * probs).sum(axis=-1, keepdims=True)
        dscores = probs * (dprobs - row)
        if "attn.sinks" in p:
            # The sink's probability 1 - sum(A) takes part in the same softmax: its logit's
            # gradient is -(1 - sum(A)) * sum(dA * A), summed over every row of its head.
            drows = (-(1.0 - probs.sum(axis=-1, keepdims=True)) * row)[..., 0].sum(axis=0)
            g[f"{pre}attn.sinks"] = drows.reshape(m.n_kv_heads, m.n_heads // m.n_kv_heads,
                                                  -1).sum(axis=-1).reshape(-1)
        dscores *= scale
        elementwise("softmax", dscores.size, "backward", mask=mask)
        # S = q k^T: dq = dS k and dk = dS^T q (the latter sums over the group's query heads).
        dq = matmul(dscores, k, component="scores", pass_="backward_input", mask=mask)
        dk = matmul(dscores.swapaxes(-1, -2), q, component="scores", pass_="backward_input",
                    mask=mask)
        return dq, dk, dv

    def _attention_backward(self, i, p, t, dy, positions, g, pre):
        m = self.m
        if m.is_mla:
            return self._mla_backward(i, p, t, dy, positions, g, pre)
        b, s, _ = dy.shape
        gq = m.n_heads // m.n_kv_heads
        qmask = np.tile(causal_mask(s, s, m.layer_window(i + 1)), (gq, 1))
        do = self._linear_backward(p, t["attention_output"], "attn.o", dy, "out_proj", g, pre)
        do = group_queries(do.reshape(b, s, m.n_heads, m.d_head), m.n_kv_heads)
        dq, dk, dv = self._attend_backward(p, t, do, qmask, 1.0 / math.sqrt(m.d_head), g, pre)
        dq = ungroup_queries(dq, s).reshape(b, s, m.n_heads, m.d_head)
        dk, dv = merge_kv_heads(dk), merge_kv_heads(dv)
        if m.positional == "rope":
            dq = self._rotate(dq, positions, "backward", inverse=True)
            dk = self._rotate(dk, positions, "backward", inverse=True)
        if m.qk_norm:
            dq = self._norm_backward(p, t, "q_norm", dq, g, pre, "attn.q_norm")
            dk = self._norm_backward(p, t, "k_norm", dk, g, pre, "attn.k_norm")
        h = t["norm1_output"]
        # h fed three projections: its gradient is the sum (not counted: a fused QKV product
        # would produce it directly).
        return (self._linear_backward(p, h, "attn.q", dq.reshape(b, s, -1), "qkv", g, pre)
                + self._linear_backward(p, h, "attn.k", dk.reshape(b, s, -1), "qkv", g, pre)
                + self._linear_backward(p, h, "attn.v", dv.reshape(b, s, -1), "qkv", g, pre))

    def _mla_backward(self, i, p, t, dy, positions, g, pre):
        """Backward of :meth:`_mla_forward` (the naive form)."""
        m = self.m
        b, s, _ = dy.shape
        n_heads, dh, dv_head = m.n_heads, m.d_head, m.v_head_dim
        mask = causal_mask(s, s, m.layer_window(i + 1))
        do = self._linear_backward(p, t["attention_output"], "attn.o", dy, "out_proj", g, pre)
        do = group_queries(do.reshape(b, s, n_heads, dv_head), n_heads)
        dq, dk, dv = self._attend_backward(p, t, do, mask, 1.0 / math.sqrt(m.d_qk), g, pre)
        dq = ungroup_queries(dq, s).reshape(b, s, n_heads, m.d_qk)
        dk, dv = merge_kv_heads(dk), merge_kv_heads(dv)
        # Every head's key repeats the one rotary key: its gradient sums over the heads (not
        # counted, like the other sums of gradient paths).
        dk_rope = dk[..., dh:].sum(axis=2)
        dq = self._mla_rotate_query(dq, positions, "backward", inverse=True)
        if m.positional == "rope" and m.qk_rope_dim:
            dk_rope = self._rotate(dk_rope[:, :, None, :], positions, "backward",
                                   inverse=True)[:, :, 0, :]
        dkv = np.concatenate([dk[..., :dh], dv], axis=-1).reshape(b, s, -1)
        dcn = self._linear_backward(p, t["kv_a_norm_output"], "attn.kvb", dkv, "qkv", g, pre)
        dc = self._norm_backward(p, t, "kv_a_norm", dcn, g, pre, "attn.kv_a_norm")
        h = t["norm1_output"]
        dh1 = self._linear_backward(p, h, "attn.kva", np.concatenate([dc, dk_rope], axis=-1),
                                    "qkv", g, pre)
        dq = dq.reshape(b, s, -1)
        if m.q_lora_rank is None:
            return dh1 + self._linear_backward(p, h, "attn.q", dq, "qkv", g, pre)
        dcq = self._linear_backward(p, t["q_a_norm_output"], "attn.qb", dq, "qkv", g, pre)
        dcq = self._norm_backward(p, t, "q_a_norm", dcq, g, pre, "attn.q_a_norm")
        return dh1 + self._linear_backward(p, h, "attn.qa", dcq, "qkv", g, pre)

    def _layer_backward(self, i, t, dout, positions, grads):
        m, p, pre = self.m, self._layer(i), f"layers.{i}."
        # out = x2 + post_ffn_norm(ffn(norm2(x2))): the gradient reaches x2 directly and
        # through the FFN.
        df = dout
        if m.post_norms:
            df = self._norm_backward(p, t, "post_ffn_norm", dout, grads, pre)
        if m.layer_is_moe(i + 1):
            dh2 = self._moe_backward(p, t, df, grads, pre)
        else:
            ffn_tape = {k[len("ffn_"):]: v for k, v in t.items() if k.startswith("ffn_")}
            dh2 = self._ffn_backward(p, "ffn", t["norm2_output"], ffn_tape, df, grads, pre)
        dx2 = dout + self._norm_backward(p, t, "norm2", dh2, grads, pre)
        elementwise("residual", dx2.size, "backward")
        # x2 = x + post_attn_norm(attention(norm1(x))): likewise.
        da = dx2
        if m.post_norms:
            da = self._norm_backward(p, t, "post_attn_norm", dx2, grads, pre)
        dh1 = self._attention_backward(i, p, t, da, positions, grads, pre)
        dx = dx2 + self._norm_backward(p, t, "norm1", dh1, grads, pre)
        elementwise("residual", dx.size, "backward")
        return dx

    # -- inference ------------------------------------------------------------------------------
    def _last_logits(self, tokens, start: int, caches=None) -> np.ndarray:
        """Run ``tokens`` (b, s), which sit at positions start .. start+s-1, through the layers
        and return the logits of the last position only, (b, vocab). Without ``caches`` start
        must be 0 (the whole sequence is given); with them earlier keys come from the cache
        (empty caches: the prefill)."""
        s = tokens.shape[1]
        positions = start + np.arange(s)
        x = self._embed(tokens, positions)
        for i in range(self.m.n_layers):
            with in_layer(i):
                x, _ = self._layer_forward(i, x, positions, "forward",
                                           None if caches is None else caches[i])
        p = self.params
        with in_layer("head"):
            h, _ = norm_forward(self.m.norm, x[:, -1:, :], p["final_norm.gain"],
                                p.get("final_norm.bias"), "forward")
            return matmul(h, self._output_matrix.T, component="logits",
                          pass_="forward")[:, 0, :]

    def logits(self, tokens) -> np.ndarray:
        """Logits at every position, (batch, s, vocab): an inference forward (nothing saved)."""
        tokens = self._check_tokens(tokens)
        s = tokens.shape[1]
        positions = np.arange(s)
        x = self._embed(tokens, positions)
        for i in range(self.m.n_layers):
            with in_layer(i):
                x, _ = self._layer_forward(i, x, positions)
        p = self.params
        h, _ = norm_forward(self.m.norm, x, p["final_norm.gain"], p.get("final_norm.bias"),
                            "forward")
        with in_layer("head"):
            return matmul(h, self._output_matrix.T, component="logits", pass_="forward")

    def generate(self, prompt, new_tokens: int, *, kv_cache: bool = True) -> np.ndarray:
        """Greedy decoding: the ``new_tokens`` most likely next tokens, (batch, new_tokens).

        With ``kv_cache=True``: one prefill pass over the prompt (logits at its last position
        give the first new token), then ``new_tokens - 1`` one-token steps that attend to the
        cached keys and values (MLA: the absorbed form over the cached latents; see the module
        docstring). Without: ``new_tokens`` full passes over the growing sequence (lengths P,
        P+1, ...), each taking the logits at its last position only. Both give the same tokens.
        Afterwards ``kv_cache_nbytes`` is the size of the cache at its largest, 8 bytes a value:
        per layer ``batch * kv_cache_width * min(P + new_tokens - 1, W)`` values (W the layer's
        window; no minimum for a global layer), where ``kv_cache_width`` is ``2 * n_kv_heads *
        d_head``, or ``kv_lora_rank + qk_rope_dim`` with MLA; 0 without the cache.
        """
        prompt = self._check_tokens(prompt, "prompt")
        if isinstance(new_tokens, bool) or not isinstance(new_tokens, (int, np.integer)) \
                or new_tokens < 1:
            raise ValueError(f"new_tokens must be a positive int, got {new_tokens!r}")
        b, n_prompt = prompt.shape
        # The last generated token is returned, never fed back: positions 0 .. P+new-2 are used.
        self._check_positions(n_prompt + new_tokens - 2)
        out = []
        if kv_cache:
            caches = [{} for _ in range(self.m.n_layers)]
            logits = self._last_logits(prompt, 0, caches)                      # prefill
            out.append(logits.argmax(axis=-1))
            for step in range(1, new_tokens):
                logits = self._last_logits(out[-1][:, None], n_prompt + step - 1, caches)
                out.append(logits.argmax(axis=-1))
            self.kv_cache_nbytes = sum(c["max_nbytes"] for c in caches)
        else:
            seq = prompt
            for _ in range(new_tokens):
                logits = self._last_logits(seq, 0)
                out.append(logits.argmax(axis=-1))
                seq = np.concatenate([seq, out[-1][:, None]], axis=1)
            self.kv_cache_nbytes = 0
        return np.stack(out, axis=1)
