"""FLOP counts, roofline times and utilisations. Convention: a multiply-add is 2 FLOPs.

``matmul_flops`` is derived in the chapter "FLOPs and matrix multiplications", which also uses
``matmul_bytes`` and ``roofline_time``; ``flops_per_token``, ``training_flops``,
``training_time``, ``mfu`` and ``hfu`` in "Weight FLOPs"; ``layer_flops``,
``crossover_seq_len`` and ``context_flops_ratio`` in "Where attention overtakes the matmuls".
Counts are FLOPs, times are seconds, rates FLOP/s and bandwidths bytes/s.
"""

from __future__ import annotations

import numpy as np

from ._validate import (as_array, as_bandwidth, as_bool, as_hardware, as_peak, as_spec,
                        choice, formula, result)
from .spec import GATED_FFN_KINDS, Transformer


@formula
def matmul_flops(m, k, n, batch=1):
    """FLOPs of ``batch`` products of an (m x k) by a (k x n) matrix: 2*m*k*n each.

    Each of the m*n outputs is a dot product of length k: k multiplies and k - 1 adds, which the
    convention rounds to k multiply-adds = 2k FLOPs. Broadcasts over arrays.

    Args:
        m (int | array-like): Rows of the left matrix and of the output: a whole number > 0 or
            an array of them (numbers only, not text).
        k (int | array-like): The shared (inner) dimension, as ``m``.
        n (int | array-like): Columns of the right matrix and of the output, as ``m``.
        batch (int | array-like): Number of independent products, as ``m``. Default 1.

    Returns:
        float | numpy.ndarray: FLOPs: a float (numpy float64) for scalar arguments, an array
        when they broadcast.

    Raises:
        ValueError: If an argument is not a positive whole number (or an array of them); the
            message names it.
    """
    m, k, n, batch = (as_array(name, v, integer=True) for name, v in
                      (("m", m), ("k", k), ("n", n), ("batch", batch)))
    return result(2.0 * m * k * n * batch)


@formula
def matmul_bytes(m, k, n, bytes_per_value=2, batch=1):
    """Bytes an (m x k) @ (k x n) product must at least move: read both inputs, write the output.

    That is ``(m*k + k*n + m*n) * bytes_per_value * batch``. With ``matmul_flops`` this gives the
    product's arithmetic intensity (FLOPs per byte). Broadcasts over arrays.

    Args:
        m (int | array-like): Rows of the left matrix and of the output: a whole number > 0 or
            an array of them (numbers only, not text).
        k (int | array-like): The shared (inner) dimension, as ``m``.
        n (int | array-like): Columns of the right matrix and of the output, as ``m``.
        bytes_per_value (float | array-like): Bytes per matrix element (2 for 16-bit, 4 for
            fp32, 1 for 8-bit), > 0; numbers only. Default 2.
        batch (int | array-like): Number of independent products, as ``m``. Default 1.

    Returns:
        float | numpy.ndarray: Bytes: a float (numpy float64) for scalar arguments, an array
        when they broadcast.

    Raises:
        ValueError: If a size is not a positive whole number or ``bytes_per_value`` not a
            positive number; the message names the argument.
    """
    m, k, n, batch = (as_array(name, v, integer=True) for name, v in
                      (("m", m), ("k", k), ("n", n), ("batch", batch)))
    b = as_array("bytes_per_value", bytes_per_value)
    return result((m * k + k * n + m * n) * b * batch)


@formula
def roofline_time(flops, bytes_moved, peak_flops, bandwidth=None, *, dtype=None):
    """Lower bound on the time of a kernel: max(FLOPs / peak, bytes / bandwidth), in seconds.

    The roofline model of Williams et al. (2009): a kernel can go no faster than its compute at
    peak FLOP/s, nor than moving its bytes at full memory bandwidth. Broadcasts over arrays.

    Args:
        flops (float | str | array-like): FLOPs of the kernel, >= 0, or one text count such as
            ``"3.1e23"`` or ``"2T"``.
        bytes_moved (float | str | array-like): Bytes the kernel moves to and from memory,
            >= 0, or one text size such as ``"2GB"``.
        peak_flops (float | str | Hardware | array-like): Peak compute in FLOP/s, one text rate
            such as ``"989 TFLOP/s"``, or a :class:`Hardware` or registry name: then its
            ``peak_16bit``, or ``peak(dtype)``.
        bandwidth (float | str | Hardware | array-like | None): Memory bandwidth in bytes/s, one
            text rate such as ``"3.35 TB/s"``, or a ``Hardware`` or registry name (its HBM
            ``bandwidth``). May be left out (None, the default) when ``peak_flops`` is a
            ``Hardware`` or a registry name: then its HBM ``bandwidth`` is used.

    Keyword Args:
        dtype (str | None): With a ``Hardware`` (or name) as ``peak_flops``, the dtype whose
            peak is taken (``"bf16"``, ``"fp8"``, ...); None (the default) takes
            ``peak_16bit``.

    Returns:
        float | numpy.ndarray: Seconds: a float (numpy float64) for scalar arguments, an array
        when they broadcast.

    Raises:
        ValueError: If an argument is not a valid number, text or name (the message names it),
            ``dtype`` is given with a numeric ``peak_flops``, or ``bandwidth`` is left out when
            ``peak_flops`` is a number.
    """
    f = as_array("flops", flops, allow_zero=True, kind="count")
    b = as_array("bytes_moved", bytes_moved, allow_zero=True, kind="bytes")
    p = as_peak("peak_flops", peak_flops, dtype)
    if bandwidth is None:
        from .registry import Hardware

        if not isinstance(peak_flops, (Hardware, str)):
            raise ValueError("bandwidth is needed (bytes/s) when peak_flops is a number; pass "
                             "a Hardware (or its name) as peak_flops to use its bandwidth")
        bandwidth = as_hardware(peak_flops, "peak_flops")
    bw = as_bandwidth("bandwidth", bandwidth)
    return result(np.maximum(f / p, b / bw))


# --- Transformer FLOPs --------------------------------------------------------------------
# Derived in the chapters "Weight FLOPs" (flops_per_token, training_flops, MFU) and "Where
# attention overtakes the matmuls" (layer_flops).

LAYER_COMPONENTS = ("qkv", "scores", "weighted_values", "out_proj", "router", "ffn")


def _attended_pairs(s, causal: bool, window=None):
    """(query, key) pairs a kernel computes for one head of one sequence of length s.

    Without ``causal`` every pair (a dense kernel computes the masked ones too, window or not).
    Causal: query i (from 1) meets min(i, window) keys, s(s+1)/2 in all without a window.
    """
    if not causal:
        return s * s
    if window is None:
        return s * (s + 1) / 2
    w = window
    return np.where(s <= w, s * (s + 1) / 2, w * (w + 1) / 2 + (s - w) * w)


def _layer_kinds(m):
    """The distinct kinds of layer of ``m`` as (how many, MoE?, window or None), count > 0.

    The first ``n_dense_layers`` have a dense FFN, the rest an MoE one (dense models: all
    dense); layers k, 2k, ... are global when ``global_every=k``, the others local.
    """
    n_dense = m.n_layers - m.n_moe_layers
    if m.window is None:
        global_dense, global_moe = n_dense, m.n_moe_layers
    elif m.global_every is None:
        global_dense = global_moe = 0
    else:
        global_dense = n_dense // m.global_every
        global_moe = m.n_layers // m.global_every - global_dense
    kinds = [(global_dense, False, None), (n_dense - global_dense, False, m.window),
             (global_moe, True, None), (m.n_moe_layers - global_moe, True, m.window)]
    return [k for k in kinds if k[0] > 0]


def _ffn_matrices(m):
    return 3 if m.ffn in GATED_FFN_KINDS else 2


def _projection_flops(m):
    """Forward FLOPs per token of one layer's attention projections, (into q, k, v; out).

    MLA counts every projection a naive implementation makes per token: the query down and up
    projections (or one query projection), the key/value down-projection to the latent and the
    rotary key, and the up-projection of the latent to every head's key and value.
    """
    d = m.d_model
    if m.is_mla:
        q = d * m.d_attn if m.q_lora_rank is None else m.q_lora_rank * (d + m.d_attn)
        kv = d * (m.kv_lora_rank + m.qk_rope_dim) \
            + m.kv_lora_rank * m.n_heads * (m.d_head + m.v_head_dim)
        qkv = q + kv
    else:
        qkv = d * (m.d_attn + 2 * m.d_kv + (m.d_attn if m.positional == "relative" else 0))
    return 2 * qkv, 2 * m.d_attn_output * d


def _ffn_flops(m, moe: bool):
    """Forward FLOPs per token of one layer's FFN, (router, FFN): a dense FFN of width d_ff,
    or the router plus top_k routed and the shared experts of width d_ff_expert."""
    per_width = 2 * m.d_model * _ffn_matrices(m)
    if not moe:
        return 0, per_width * m.d_ff
    return 2 * m.d_model * m.n_experts, \
        per_width * m.d_ff_expert * (m.top_k + m.n_shared_experts)


def _ffn_per_token(m, kinds, n):
    """(router, FFN) forward FLOPs per token summed over ``kinds`` ((count, moe, window), as
    ``_layer_kinds`` gives them) and divided by ``n``: the average layer's when ``kinds`` is the
    whole stack and ``n`` its layers."""
    router = ffn = 0
    for count, moe, _ in kinds:
        r, f = _ffn_flops(m, moe)
        router, ffn = router + count * r, ffn + count * f
    return router / n, ffn / n


def _pair_flops(m):
    """Forward FLOPs per attended (query, key) pair of one layer, (scores, weighted values),
    all query heads together."""
    scores = 2 * m.n_heads * m.d_qk * (2 if m.positional == "relative" else 1)
    return scores, 2 * m.d_attn_output


def _stack_flops(m, s, b, causal, kinds, n):
    """``layer_flops``'s components summed over ``kinds`` ((count, moe, window), as
    ``_layer_kinds`` gives them) and divided by ``n``. Only the FFN depends on moe and only the
    attended pairs on the window, so each is evaluated once per distinct value (few array
    operations: 10^6 contexts stay fast)."""
    tokens = b * s
    qkv, out = _projection_flops(m)
    router, ffn = _ffn_per_token(m, kinds, n)
    pairs_by_window = {}
    for count, _, window in kinds:
        pairs_by_window[window] = pairs_by_window.get(window, 0) + count
    if len(pairs_by_window) == 1:  # a uniform stack: no weighting (keeps the sum exact)
        pairs = b * _attended_pairs(s, causal, next(iter(pairs_by_window)))
    else:
        pairs = sum(count * _attended_pairs(s, causal, window)
                    for window, count in pairs_by_window.items()) * b / n
    scores, values = _pair_flops(m)
    return {"qkv": qkv * tokens, "scores": scores * pairs, "weighted_values": values * pairs,
            "out_proj": out * tokens, "router": router * tokens, "ffn": ffn * tokens}


@formula
def layer_flops(m, seq_len, batch=1, *, causal=False, layer=None):
    """Forward matmul FLOPs of one layer, by component, for ``batch`` sequences of ``seq_len``.

    Derived term by term from the shapes in the chapter "Where attention overtakes the matmuls";
    with b*s tokens: qkv 2*b*s*d*(H*d_h + 2*H_kv*d_h), scores and weighted_values 2*b*H*d_h*s**2
    each, out_proj 2*b*s*H*d_h*d, ffn 2*b*s*d*d_ff times 2 (GELU) or 3 (SwiGLU, GeGLU). With
    ``causal=True`` the two attention products count only the (query, key) pairs the mask
    keeps, as a kernel that skips masked blocks does: s(s+1)/2 per head, or with a window of W
    keys W(W+1)/2 + (s - W)W once s > W. Without ``causal`` every pair is counted (a dense
    kernel computes the masked ones too, so a window saves nothing). For standard multi-head
    attention with d_ff = 4d the total is 24*b*s*d**2 + 4*b*s**2*d. ``positional="relative"``
    (Transformer-XL) adds the projection of the s position encodings to ``qkv`` and the
    position-score product to ``scores``, once per sequence (as if each sequence projected its
    own position encodings), so both scale with ``batch``.

    The chapter "Beyond the dense transformer" adds: a mixture of experts' ``router``
    (2*b*s*d*n_experts) and, in ``ffn``, the top_k routed and the shared experts of width
    d_ff_expert (dropless routing: every token meets exactly top_k); MLA's projections in
    ``qkv`` (every down- and up-projection, as a naive implementation makes them per token),
    its scores over heads of width d_head + qk_rope_dim and values of width v_head_dim.

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        seq_len (int | str | array-like): Tokens per sequence s: a whole number > 0, an array of
            them, or one text count such as ``"128k"``.
        batch (int | str | array-like): Number of sequences b, as ``seq_len``. Default 1.

    Keyword Args:
        causal (bool): Count only the (query, key) pairs a causal mask keeps. Default False.
        layer (int | None): Which layer, counting from 1 (as ``global_every`` does), for stacks
            whose layers differ (dense and MoE FFNs, local and global attention). None (the
            default) is the average layer: the total over the stack divided by ``n_layers``
            (a uniform stack's every layer).

    Returns:
        dict[str, float | numpy.ndarray]: FLOPs by component under the keys ``qkv``,
        ``scores``, ``weighted_values``, ``out_proj``, ``router`` (0 for a dense FFN), ``ffn``
        and ``total``; each a float, or an array when ``seq_len`` or ``batch`` is one.

    Raises:
        ValueError: If ``m`` is not a ``Transformer`` or registry name, a count is not a
            positive whole number, ``causal`` is not True or False, or ``layer`` is not a layer
            of ``m`` (1 to n_layers); the message names it.
    """
    m = as_spec(m)
    s = as_array("seq_len", seq_len, integer=True, kind="count")
    b = as_array("batch", batch, integer=True, kind="count")
    causal = as_bool("causal", causal)
    if layer is not None:
        kinds, n = [(1, m.layer_is_moe(layer), m.layer_window(layer))], 1
    else:
        kinds, n = _layer_kinds(m), m.n_layers
    shape = np.broadcast(s, b).shape
    parts = {k: result(np.broadcast_to(v, shape))
             for k, v in _stack_flops(m, s, b, causal, kinds, n).items()}
    parts["total"] = result(sum(parts.values()))
    return parts


@formula
def flops_per_token(m, context=None, *, training=True, causal=False, recompute=False,
                    include_logits=True, include_attention=True):
    """Matmul FLOPs of one sequence of ``context`` tokens (default ``m.seq_len``), per token.

    Counts every matrix product of the layers (``layer_flops``) and, with ``include_logits``, the
    logits (2*d*V per token forward). Embedding lookups, biases, norms, softmax and activations
    are not matmuls and are left out. ``training`` multiplies the forward count by 3 (forward,
    gradients with respect to inputs, gradients with respect to weights); ``recompute`` adds one
    more forward of the layers (full activation recomputation), the numerator of HFU rather than
    MFU. ``include_attention=False`` drops the two s-dependent attention products, leaving 2
    FLOPs per matmul weight per token (6 in training). Derived in the chapter "Weight FLOPs".

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        context (int | str | array-like | None): Tokens in the sequence: a whole number > 0, an
            array of them, or one text count such as ``"8k"``. None (the default) is
            ``m.seq_len``.

    Keyword Args:
        training (bool): Count forward and backward, 3x the forward. Default True.
        causal (bool): Count only the (query, key) pairs a causal mask keeps (as
            :func:`layer_flops`). Default False.
        recompute (bool): Add one more forward of the layers (full recomputation). Default
            False.
        include_logits (bool): Count the output layer's logits, 2*d*V per token forward.
            Default True.
        include_attention (bool): Count the two attention products (scores and weighted
            values). Default True.

    Returns:
        float | numpy.ndarray: FLOPs per token, averaged over the sequence: a float, or an
        array when ``context`` is one.

    Raises:
        ValueError: If ``m`` is not a ``Transformer`` or registry name, ``context`` is not a
            positive whole number, or a switch is not True or False; the message names it.
    """
    m = as_spec(m)
    s = as_array("context", m.seq_len if context is None else context, integer=True,
                 kind="count")
    training, recompute = as_bool("training", training), as_bool("recompute", recompute)
    include_logits = as_bool("include_logits", include_logits)
    include_attention = as_bool("include_attention", include_attention)
    layer = layer_flops(m, s, causal=causal)  # the average layer
    per_layer = layer["total"]
    if not include_attention:
        per_layer = per_layer - layer["scores"] - layer["weighted_values"]
    layers = m.n_layers * per_layer
    logits = 2 * s * m.d_model * m.vocab_size if include_logits else 0.0
    total = (3 if training else 1) * (layers + logits) + (layers if recompute else 0.0)
    return result(total / s)


@formula
def training_flops(n_params, n_tokens):
    """C = 6 N D: training FLOPs of N parameters on D tokens (2 forward + 4 backward each).

    Derived in the chapter "Weight FLOPs"; for a mixture of experts N is the active count.
    Broadcasts over both arguments.

    Args:
        n_params (float | str | Transformer | array-like): Parameters N, a count > 0 (not
            billions), one text count such as ``"7B"``, or a :class:`Transformer` or model name:
            then ``param_count(m, active=True)``, embeddings included: every parameter of a
            dense model, the parameters one token uses of a mixture of experts (the chapter
            "Beyond the dense transformer").
        n_tokens (float | str | array-like): Training tokens D, a count > 0, or one text count
            such as ``"15T"``.

    Returns:
        float | numpy.ndarray: Training FLOPs C: a float, or an array when an argument is one.

    Raises:
        ValueError: If an argument is not a positive finite number, readable text or (for
            ``n_params``) a model; the message names it.
    """
    n = as_array("n_params", n_params, kind="active_params")
    d = as_array("n_tokens", n_tokens, kind="count")
    return result(6.0 * n * d)


@formula
def training_time(flops, n_devices, peak_flops_per_device, mfu, *, dtype=None):
    """Seconds to compute ``flops`` on ``n_devices`` at a fraction ``mfu`` of their peak: T = C/tau.

    tau = ``n_devices * peak * mfu`` is the cluster's throughput in FLOP/s. Derived in the chapter
    "Weight FLOPs". Broadcasts over arrays.

    Args:
        flops (float | str | array-like): The FLOPs to compute (C), >= 0, or one text count such
            as ``"3.1e23"``.
        n_devices (int | str | array-like): The devices the job spans, a whole number > 0 (or
            one text count such as ``"2k"``).
        peak_flops_per_device (float | str | Hardware | array-like): Dense peak of one device in
            FLOP/s, one text rate such as ``"989 TFLOP/s"``, or a :class:`Hardware` or registry
            name: then its ``peak_16bit``, or ``peak(dtype)``.
        mfu (float | array-like): Model FLOPs utilisation, a fraction in (0, 1]; numbers only.

    Keyword Args:
        dtype (str | None): With a ``Hardware`` (or name) as ``peak_flops_per_device``, the dtype
            whose peak is taken; None (the default) takes ``peak_16bit``.

    Returns:
        float | numpy.ndarray: Seconds: a float, or an array when an argument is one.

    Raises:
        ValueError: If an argument is not valid (``mfu`` outside (0, 1], a non-whole
            ``n_devices``, unreadable text, ``dtype`` with a numeric peak); the message names it.
    """
    c = as_array("flops", flops, allow_zero=True, kind="count")
    n = as_array("n_devices", n_devices, integer=True, kind="count")
    peak = as_peak("peak_flops_per_device", peak_flops_per_device, dtype)
    u = as_array("mfu", mfu, upper=1.0)
    return result(c / (n * peak * u))


# Utilisations computed from rounded published figures can land a hair above 1.
_AT_PEAK_TOLERANCE = 1e-6


def _utilisation(name, tokens_per_second, flops_name, flops_per_token, n_devices,
                 peak_flops_per_device, dtype):
    tps = as_array("tokens_per_second", tokens_per_second, kind="count")
    fpt = as_array(flops_name, flops_per_token, kind="count")
    n = as_array("n_devices", n_devices, integer=True, kind="count")
    peak = as_peak("peak_flops_per_device", peak_flops_per_device, dtype)
    u = tps * fpt / (n * peak)
    if (u > 1 + _AT_PEAK_TOLERANCE).any():
        raise ValueError(f"implied {name} is {float(u.max()):.3g} > 1: the achieved FLOP/s "
                         f"exceed the peak; check tokens_per_second, {flops_name}, n_devices "
                         "and peak_flops_per_device (dense peak, per device)")
    return result(np.minimum(u, 1.0))


@formula
def mfu(tokens_per_second, flops_per_token, n_devices, peak_flops_per_device, *, dtype=None):
    """Model FLOPs utilisation: achieved model FLOP/s over the cluster's peak.

    MFU = tokens_per_second * flops_per_token / (n_devices * peak). ``flops_per_token`` counts
    what the model needs (e.g. ``flops_per_token(m)`` or PaLM's 6N + 12*L*H*Q*T), not
    recomputation. A cluster at exactly its peak (to rounding, 1e-6) gives 1. Derived in the
    chapter "Weight FLOPs". Broadcasts over arrays.

    Args:
        tokens_per_second (float | str | array-like): The whole job's throughput, tokens/s, > 0
            (one text count such as ``"1.5M"`` is read).
        flops_per_token (float | str | array-like): Model FLOPs per token, > 0 (text is read as
            a count).
        n_devices (int | str | array-like): The devices the job spans, a whole number > 0.
        peak_flops_per_device (float | str | Hardware | array-like): Dense peak of one device in
            FLOP/s, one text rate such as ``"989 TFLOP/s"``, or a :class:`Hardware` or registry
            name (its ``peak_16bit``, or ``peak(dtype)``).

    Keyword Args:
        dtype (str | None): With a ``Hardware`` (or name) as ``peak_flops_per_device``, the dtype
            whose peak is taken; None (the default) takes ``peak_16bit``.

    Returns:
        float | numpy.ndarray: The utilisation, a fraction in (0, 1].

    Raises:
        ValueError: If an argument is not valid (the message names it), or the implied MFU is
            above 1: the achieved FLOP/s exceed the peak.
    """
    return _utilisation("MFU", tokens_per_second, "flops_per_token", flops_per_token,
                        n_devices, peak_flops_per_device, dtype)


@formula
def hfu(tokens_per_second, hardware_flops_per_token, n_devices, peak_flops_per_device, *,
        dtype=None):
    """Hardware FLOPs utilisation: like :func:`mfu`, but counting every FLOP executed.

    Recomputation is included: pass e.g. ``flops_per_token(m, recompute=True)``. Derived in the
    chapter "Weight FLOPs". Broadcasts over arrays.

    Args:
        tokens_per_second (float | str | array-like): The whole job's throughput, tokens/s, > 0
            (one text count such as ``"1.5M"`` is read).
        hardware_flops_per_token (float | str | array-like): FLOPs executed per token,
            recomputation included, > 0 (text is read as a count).
        n_devices (int | str | array-like): The devices the job spans, a whole number > 0.
        peak_flops_per_device (float | str | Hardware | array-like): Dense peak of one device in
            FLOP/s, one text rate such as ``"989 TFLOP/s"``, or a :class:`Hardware` or registry
            name (its ``peak_16bit``, or ``peak(dtype)``).

    Keyword Args:
        dtype (str | None): With a ``Hardware`` (or name) as ``peak_flops_per_device``, the dtype
            whose peak is taken; None (the default) takes ``peak_16bit``.

    Returns:
        float | numpy.ndarray: The utilisation, a fraction in (0, 1].

    Raises:
        ValueError: If an argument is not valid (the message names it), or the implied HFU is
            above 1: the achieved FLOP/s exceed the peak.
    """
    return _utilisation("HFU", tokens_per_second, "hardware_flops_per_token",
                        hardware_flops_per_token, n_devices, peak_flops_per_device, dtype)


# --- Where attention overtakes the matmuls -------------------------------------------------
# Derived in the chapter "Where attention overtakes the matmuls" (notebooks/02).

CROSSOVER_AGAINST = ("projections", "layer")



def _layer_coefficients(m):
    """Per-token FLOPs of the projections and of the FFN (router included), and attention FLOPs
    per (query, key) pair, of the average layer of ``m`` (forward): the coefficients of b*s and
    of the attended pairs in ``layer_flops`` (the tests hold the two together). Dense and MoE
    layers are averaged over the stack; windows change only the pairs, not the coefficients."""
    qkv, out = _projection_flops(m)
    return qkv + out, sum(_ffn_per_token(m, _layer_kinds(m), m.n_layers)), sum(_pair_flops(m))


@formula
def crossover_seq_len(m_or_d_model, *, against="projections", causal=False):
    """Sequence length at which attention's two s**2 products equal the chosen matmuls.

    Derived in the chapter "Where attention overtakes the matmuls". One layer, forward, any
    batch (it cancels): the score and weighted-value products cost ``a`` FLOPs per (query, key)
    pair and the matmuls with weights cost ``w`` per token, so with s**2 pairs they are equal at
    ``s = w / a``. ``against="projections"`` takes ``w`` from the Q, K, V and output projections
    only (the textbook's "n = 2d" for multi-head attention); ``against="layer"`` adds the FFN
    (6d for multi-head attention with a GELU FFN of width 4d).

    ``causal=True`` counts the s(s+1)/2 pairs that a kernel skipping masked blocks computes (as
    ``layer_flops(..., causal=True)`` does): a s(s+1)/2 = w s gives the exact root
    ``s = 2 w / a - 1``, which is returned; "causal doubles the crossover" is this plus one
    (4d and 12d versus the exact 4d - 1 and 12d - 1). At the returned s, the components of
    ``layer_flops`` with the same ``causal`` are equal. The result is a real number (for GQA it
    need not be whole); attention is the larger for every longer sequence.

    Args:
        m_or_d_model (Transformer | str | int | array-like): A :class:`Transformer` or a model
            name (its own shapes: GQA, SwiGLU, n_heads*d_head != d_model), or a d_model: a whole
            number > 0, an array of them (broadcast) or one text count such as ``"4k"``, meaning
            multi-head attention with d_head*n_heads = d_model and a two-matrix FFN of width
            4*d_model.

    Keyword Args:
        against (str): ``"projections"`` (the default) or ``"layer"``: which matmuls attention
            is compared with.
        causal (bool): Count the pairs a causal mask keeps. Default False.

    Returns:
        float | numpy.ndarray: The crossover sequence length, in tokens (a real number): a
        float, or an array for an array of d_model.

    Raises:
        ValueError: If ``m_or_d_model`` is neither a model nor a positive whole number, is a
            model with local attention (no single crossover), or ``against`` or ``causal`` is
            not one of its values; the message names the argument.
    """
    choice("against", against, CROSSOVER_AGAINST)
    causal = as_bool("causal", causal)
    if isinstance(m_or_d_model, str):
        try:  # a d_model written as text ("4k"), else a model name
            m_or_d_model = as_array("m_or_d_model", m_or_d_model, integer=True, kind="count")
        except ValueError:
            m_or_d_model = as_spec(m_or_d_model.strip(), "m_or_d_model")
    if isinstance(m_or_d_model, Transformer):
        if m_or_d_model.window is not None:
            raise ValueError(f"m_or_d_model: {m_or_d_model.name} has local attention (window="
                             f"{m_or_d_model.window}): a local layer's attention grows only up "
                             "to the window, so there is no single crossover; compare "
                             "layer_flops(m, s, causal=True, layer=...) per layer instead")
        projections, ffn, per_pair = _layer_coefficients(m_or_d_model)
        per_token = projections + (ffn if against == "layer" else 0)
        ratio = np.float64(per_token) / per_pair
    else:
        d = as_array("m_or_d_model", m_or_d_model, integer=True, kind="count")
        # MHA, d_ff = 4d: projections 8 d**2 and FFN 16 d**2 per token, 4 d per pair.
        ratio = (2.0 if against == "projections" else 6.0) * d
    return result(2 * ratio - 1 if causal else ratio)


@formula
def context_flops_ratio(d_model, new_context, old_context=4096):
    """Per-dataset FLOPs of training at ``new_context`` over ``old_context``, tokens held fixed.

    Derived in the chapter "Where attention overtakes the matmuls", after Liu et al. (2023, Ring
    Attention, App. D): a sequence of s tokens costs (24 s h**2 + 4 s**2 h) n forward FLOPs
    (multi-head attention, FFN width 4h, non-causal, logits left out), i.e. 4 n h (6h + s) per
    token, so at a fixed number of tokens the ratio is (6h + s2) / (6h + s1). Training (3x
    forward) and recomputation (4x) scale both contexts alike and leave it unchanged. Broadcasts
    over all three arguments.

    Args:
        d_model (int | array-like): Model width h, a whole number > 0 (numbers only, not text).
        new_context (int | str | array-like): The new context s2, tokens: a whole number > 0 or
            one text count such as ``"32k"``.
        old_context (int | str | array-like): The old context s1, tokens, as ``new_context``.
            Default 4096.

    Returns:
        float | numpy.ndarray: The ratio (dimensionless): a float, or an array when an argument
        is one.

    Raises:
        ValueError: If an argument is not a positive whole number (or readable text); the
            message names it.
    """
    h = as_array("d_model", d_model, integer=True)
    s2 = as_array("new_context", new_context, integer=True, kind="count")
    s1 = as_array("old_context", old_context, integer=True, kind="count")
    return result((6 * h + s2) / (6 * h + s1))


# --- Attention-free layers -------------------------------------------------------------------
# Derived in the chapter "Beyond the dense transformer": linear attention (Katharopoulos et al.
# 2020) in place of softmax attention, the simplest layer with a constant state per token.

def _linear_attention_spec(m):
    m = as_spec(m)
    if m.is_mla:
        raise ValueError("m: linear attention replaces standard (MHA/GQA/MQA) attention; "
                         f"{m.name} uses multi-head latent attention (kv_lora_rank set)")
    if m.positional == "relative":
        raise ValueError("m: linear attention with positional='relative' is not modelled "
                         "(allowed: 'rope', 'none', 'learned')")
    return m


@formula
def linear_attention_flops(m, seq_len, batch=1):
    """Forward matmul FLOPs of one layer of ``m`` with its attention made linear, by component.

    Linear attention drops the softmax, so ``(q k^T) v`` can be computed as ``q (k^T v)``: each
    key/value head keeps a ``d_head x d_head`` state S = sum over past tokens of k v^T. Per
    token a key/value head adds its k v^T (``state_update``: 2*d_head**2 FLOPs) and each query
    head reads q S (``state_readout``: 2*d_head**2): 2*b*s*d_head**2*(n_kv_heads + n_heads) in
    all, linear in s, where softmax attention's two products grow as s**2 (causal: the s(s+1)/2
    pairs). The projections and the FFN (and an MoE's router) are those of ``layer_flops``, for
    the average layer; windows do not apply (every layer's attention is replaced). Causal and
    non-causal cost the same (a running sum, or one sum over the sequence). The feature map and
    normaliser of Katharopoulos et al. are elementwise and left out. Broadcasts over ``seq_len``
    and ``batch``.

    Args:
        m (Transformer | str): The model whose attention is replaced: a :class:`Transformer`
            (MHA, GQA or MQA) or a registry name.
        seq_len (int | str | array-like): Tokens per sequence s: a whole number > 0, an array of
            them, or one text count such as ``"128k"``.
        batch (int | str | array-like): Number of sequences b, as ``seq_len``. Default 1.

    Returns:
        dict[str, float | numpy.ndarray]: FLOPs under the keys ``qkv``, ``state_update``,
        ``state_readout``, ``out_proj``, ``router``, ``ffn`` and ``total``.

    Raises:
        ValueError: If ``m`` is not a model, uses MLA or relative positions (not modelled), or a
            count is not a positive whole number; the message names the argument.
    """
    m = _linear_attention_spec(m)
    s = as_array("seq_len", seq_len, integer=True, kind="count")
    b = as_array("batch", batch, integer=True, kind="count")
    tokens = b * s
    qkv, out = _projection_flops(m)
    router, ffn = _ffn_per_token(m, _layer_kinds(m), m.n_layers)
    square = 2 * m.d_head * m.d_head
    parts = {"qkv": qkv * tokens, "state_update": square * m.n_kv_heads * tokens,
             "state_readout": square * m.n_heads * tokens, "out_proj": out * tokens,
             "router": router * tokens, "ffn": ffn * tokens}
    parts = {k: result(v) for k, v in parts.items()}
    parts["total"] = result(sum(parts.values()))
    return parts


@formula
def linear_attention_state_bytes(m, batch, bytes_per_value=2):
    """Bytes of the recurrent state of ``batch`` sequences when ``m``'s attention is linear.

    The analogue of the KV cache: every layer keeps one ``d_head x d_head`` state per key/value
    head, ``n_layers * n_kv_heads * d_head**2 * bytes_per_value`` per sequence, whatever the
    context. A softmax KV cache holds ``2 * n_kv_heads * d_head`` values per token and layer, so
    the two are equal at ``d_head / 2`` tokens and the state is the smaller beyond. Broadcasts
    over ``batch`` and ``bytes_per_value``.

    Args:
        m (Transformer | str): The model whose attention is replaced (MHA, GQA or MQA): a
            :class:`Transformer` or a registry name.
        batch (int | str | array-like): Sequences, a whole number > 0, an array of them, or one
            text count.
        bytes_per_value (float | array-like): Bytes per state value, > 0; numbers only.
            Default 2.

    Returns:
        float | numpy.ndarray: Bytes: a float, or an array when an argument is one.

    Raises:
        ValueError: If ``m`` is not a model or uses MLA, or a count or ``bytes_per_value`` is
            not valid; the message names the argument.
    """
    m = _linear_attention_spec(m)
    b = as_array("batch", batch, integer=True, kind="count")
    v = as_array("bytes_per_value", bytes_per_value)
    return result(float(m.n_layers * m.n_kv_heads * m.d_head ** 2) * b * v)
