"""FLOP counts. Convention: a multiply-add is 2 FLOPs.

``matmul_flops`` is derived in the chapter "FLOPs and matrix multiplications".
"""

from __future__ import annotations

import numpy as np

from ._validate import as_array, as_bandwidth, as_bool, as_peak, as_spec, choice, result
from .spec import Transformer


def matmul_flops(m, k, n, batch=1):
    """FLOPs of ``batch`` products of an (m x k) by a (k x n) matrix: 2*m*k*n each.

    Each of the m*n outputs is a dot product of length k: k multiplies and k - 1 adds, which
    the convention rounds to k multiply-adds = 2k FLOPs. Broadcasts over arrays.
    """
    m, k, n, batch = (as_array(name, v, integer=True) for name, v in
                      (("m", m), ("k", k), ("n", n), ("batch", batch)))
    return result(2.0 * m * k * n * batch)


def matmul_bytes(m, k, n, bytes_per_value=2, batch=1):
    """Bytes an (m x k) @ (k x n) product must at least move: read both inputs, write the output.

    With ``matmul_flops`` this gives the product's arithmetic intensity (FLOPs per byte).
    """
    m, k, n, batch = (as_array(name, v, integer=True) for name, v in
                      (("m", m), ("k", k), ("n", n), ("batch", batch)))
    b = as_array("bytes_per_value", bytes_per_value)
    return result((m * k + k * n + m * n) * b * batch)


def roofline_time(flops, bytes_moved, peak_flops, bandwidth=None, *, dtype=None):
    """Lower bound on the time of a kernel: max(FLOPs / peak, bytes / bandwidth), in seconds.

    The roofline model of Williams et al. (2009): a kernel can go no faster than its compute at
    peak FLOP/s, nor than moving its bytes at full memory bandwidth. ``flops`` is a FLOP count,
    ``bytes_moved`` bytes (a number or text such as "2GB"); ``peak_flops`` is FLOP/s or a
    ``Hardware``/name (then its ``peak_16bit``, or ``peak(dtype)``); ``bandwidth`` is bytes/s
    (or "3.35 TB/s") and may be left out when ``peak_flops`` is a Hardware/name: then its HBM
    ``bandwidth`` is used.
    """
    f = as_array("flops", flops, allow_zero=True, kind="count")
    b = as_array("bytes_moved", bytes_moved, allow_zero=True, kind="bytes")
    p = as_peak("peak_flops", peak_flops, dtype)
    if bandwidth is None:
        from ._validate import as_hardware
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

LAYER_COMPONENTS = ("qkv", "scores", "weighted_values", "out_proj", "ffn")


def _attended_pairs(s, causal: bool):
    """(query, key) pairs a kernel computes for one head of one sequence of length s."""
    return s * (s + 1) / 2 if causal else s * s


def layer_flops(m, seq_len, batch=1, *, causal=False):
    """Forward matmul FLOPs of one layer, by component, for ``batch`` sequences of ``seq_len``.

    Derived term by term from the shapes in the chapter "Where attention overtakes the matmuls";
    with b*s tokens: qkv 2*b*s*d*(H*d_h + 2*H_kv*d_h), scores and weighted_values
    2*b*H*d_h*s**2 each, out_proj 2*b*s*H*d_h*d, ffn 2*b*s*d*d_ff times 2 (GELU) or 3 (SwiGLU).
    Returns a dict with keys ``qkv``, ``scores``, ``weighted_values``, ``out_proj``, ``ffn`` and
    ``total``. With ``causal=True`` the two attention products count only the s(s+1)/2
    unmasked (query, key) pairs per head, as a kernel that skips masked blocks does. For
    standard multi-head attention with d_ff = 4d the total is 24*b*s*d**2 + 4*b*s**2*d.
    ``positional="relative"`` (Transformer-XL) adds the projection of the s position encodings
    to ``qkv`` and the position-score product to ``scores``, once per sequence (as if each
    sequence projected its own position encodings), so both scale with ``batch``.
    """
    m = as_spec(m)
    s = as_array("seq_len", seq_len, integer=True, kind="count")
    b = as_array("batch", batch, integer=True, kind="count")
    causal = as_bool("causal", causal)
    d, tokens = m.d_model, b * s
    pairs = b * m.n_heads * _attended_pairs(s, causal)
    relative = m.positional == "relative"
    n_ffn = 3 if m.ffn == "swiglu" else 2
    parts = {
        "qkv": 2 * tokens * d * (m.d_attn + 2 * m.d_kv + (m.d_attn if relative else 0)),
        "scores": 2 * pairs * m.d_head * (2 if relative else 1),
        "weighted_values": 2 * pairs * m.d_head,
        "out_proj": 2 * tokens * m.d_attn * d,
        "ffn": 2 * tokens * d * m.d_ff * n_ffn,
    }
    parts = {k: result(v) for k, v in parts.items()}
    parts["total"] = result(sum(parts.values()))
    return parts


def flops_per_token(m, context=None, *, training=True, causal=False, recompute=False,
                    include_logits=True, include_attention=True):
    """Matmul FLOPs of one sequence of ``context`` tokens (default ``m.seq_len``), per token.

    Counts every matrix product of the layers (``layer_flops``) and, with ``include_logits``,
    the logits (2*d*V per token forward). Embedding lookups, biases, norms, softmax and
    activations are not matmuls and are left out. ``training`` multiplies the forward count by
    3 (forward, gradients with respect to inputs, gradients with respect to weights);
    ``recompute`` adds one more forward of the layers (full activation recomputation), the
    numerator of HFU rather than MFU. ``include_attention=False`` drops the two s-dependent
    attention products, leaving 2 FLOPs per matmul weight per token (6 in training).
    """
    m = as_spec(m)
    s = as_array("context", m.seq_len if context is None else context, integer=True,
                 kind="count")
    training, recompute = as_bool("training", training), as_bool("recompute", recompute)
    include_logits = as_bool("include_logits", include_logits)
    include_attention = as_bool("include_attention", include_attention)
    layer = layer_flops(m, s, causal=causal)
    per_layer = layer["total"]
    if not include_attention:
        per_layer = per_layer - layer["scores"] - layer["weighted_values"]
    layers = m.n_layers * per_layer
    logits = 2 * s * m.d_model * m.vocab_size if include_logits else 0.0
    total = (3 if training else 1) * (layers + logits) + (layers if recompute else 0.0)
    return result(total / s)


def training_flops(n_params, n_tokens):
    """C = 6 N D: training FLOPs of N parameters on D tokens (2 forward + 4 backward each).

    ``n_params`` is a count, text ("7B"), a ``Transformer`` or a model name (then
    ``param_count``, embeddings included); ``n_tokens`` a count or text ("15T").
    """
    n = as_array("n_params", n_params, kind="params")
    d = as_array("n_tokens", n_tokens, kind="count")
    return result(6.0 * n * d)


def training_time(flops, n_devices, peak_flops_per_device, mfu, *, dtype=None):
    """Seconds to compute ``flops`` on ``n_devices`` at a fraction ``mfu`` of their peak: T = C / tau.

    ``flops`` is a FLOP count (or text, "3.1e23"); ``n_devices`` the devices the job spans;
    ``peak_flops_per_device`` FLOP/s per device, or a ``Hardware``/name (then its
    ``peak_16bit``, or ``peak(dtype)``); ``mfu`` in (0, 1].
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


def mfu(tokens_per_second, flops_per_token, n_devices, peak_flops_per_device, *, dtype=None):
    """Model FLOPs utilisation: achieved model FLOP/s over the cluster's peak.

    ``tokens_per_second`` is the whole job's throughput; ``flops_per_token`` counts what the
    model needs (e.g. ``flops_per_token(m)`` or PaLM's 6N + 12*L*H*Q*T), not recomputation;
    ``n_devices`` the devices the job spans; ``peak_flops_per_device`` FLOP/s, or a
    ``Hardware``/name (its ``peak_16bit``, or ``peak(dtype)``). A cluster at exactly its peak
    (to rounding, 1e-6) gives 1.
    """
    return _utilisation("MFU", tokens_per_second, "flops_per_token", flops_per_token,
                        n_devices, peak_flops_per_device, dtype)


def hfu(tokens_per_second, hardware_flops_per_token, n_devices, peak_flops_per_device, *,
        dtype=None):
    """Hardware FLOPs utilisation: like ``mfu`` but counting every FLOP executed, recomputation
    included (e.g. ``flops_per_token(m, recompute=True)``)."""
    return _utilisation("HFU", tokens_per_second, "hardware_flops_per_token",
                        hardware_flops_per_token, n_devices, peak_flops_per_device, dtype)


# --- Where attention overtakes the matmuls -------------------------------------------------
# Derived in the chapter "Where attention overtakes the matmuls" (notebooks/02).

CROSSOVER_AGAINST = ("projections", "layer")



def _layer_coefficients(m):
    """Per-token FLOPs of the projections and of the FFN, and attention FLOPs per (query, key)
    pair, of one layer of ``m`` (forward): the coefficients of b*s and of the attended pairs in
    ``layer_flops`` (the tests hold the two together)."""
    relative = m.positional == "relative"
    d = m.d_model
    projections = 2 * d * (m.d_attn + 2 * m.d_kv + (m.d_attn if relative else 0)) \
        + 2 * m.d_attn * d
    ffn = 2 * d * m.d_ff * (3 if m.ffn == "swiglu" else 2)
    per_pair = 2 * m.n_heads * m.d_head * ((2 if relative else 1) + 1)
    return projections, ffn, per_pair


def crossover_seq_len(m_or_d_model, *, against="projections", causal=False):
    """Sequence length at which attention's two s**2 products equal the chosen matmuls.

    Derived in the chapter "Where attention overtakes the matmuls". One layer, forward, any
    batch (it cancels): the score and weighted-value products cost ``a`` FLOPs per (query, key)
    pair and the matmuls with weights cost ``w`` per token, so with s**2 pairs they are equal at
    ``s = w / a``. ``against="projections"`` takes ``w`` from the Q, K, V and output projections
    only (the textbook's "n = 2d" for multi-head attention); ``against="layer"`` adds the FFN
    (6d for multi-head attention with a GELU FFN of width 4d).

    ``m_or_d_model`` is a ``Transformer`` (its own shapes: GQA, SwiGLU, n_heads*d_head != d_model)
    or a d_model (int or array of ints, broadcast), meaning multi-head attention with
    d_head*n_heads = d_model and a two-matrix FFN of width 4*d_model.

    ``causal=True`` counts the s(s+1)/2 pairs that a kernel skipping masked blocks computes (as
    ``layer_flops(..., causal=True)`` does): a s(s+1)/2 = w s gives the exact root
    ``s = 2 w / a - 1``, which is returned; "causal doubles the crossover" is this plus one
    (4d and 12d versus the exact 4d - 1 and 12d - 1). At the returned s, the components of
    ``layer_flops`` with the same ``causal`` are equal. The result is a real number (for GQA it
    need not be whole); attention is the larger for every longer sequence.
    """
    choice("against", against, CROSSOVER_AGAINST)
    causal = as_bool("causal", causal)
    if isinstance(m_or_d_model, str):
        try:  # a d_model written as text ("4k"), else a model name
            m_or_d_model = as_array("m_or_d_model", m_or_d_model, integer=True, kind="count")
        except ValueError:
            m_or_d_model = as_spec(m_or_d_model.strip(), "m_or_d_model")
    if isinstance(m_or_d_model, Transformer):
        projections, ffn, per_pair = _layer_coefficients(m_or_d_model)
        per_token = projections + (ffn if against == "layer" else 0)
        ratio = np.float64(per_token) / per_pair
    else:
        d = as_array("m_or_d_model", m_or_d_model, integer=True, kind="count")
        # MHA, d_ff = 4d: projections 8 d**2 and FFN 16 d**2 per token, 4 d per pair.
        ratio = (2.0 if against == "projections" else 6.0) * d
    return result(2 * ratio - 1 if causal else ratio)


def context_flops_ratio(d_model, new_context, old_context=4096):
    """Per-dataset FLOPs of training at ``new_context`` over ``old_context``, tokens held fixed.

    Derived in the chapter "Where attention overtakes the matmuls", after Liu et al. (2023,
    Ring Attention, App. D): a sequence of s tokens costs (24 s h**2 + 4 s**2 h) n forward
    FLOPs (multi-head attention, FFN width 4h, non-causal, logits left out), i.e.
    4 n h (6h + s) per token, so at a fixed number of tokens the ratio is
    (6h + s2) / (6h + s1). Training (3x forward) and recomputation (4x) scale both contexts
    alike and leave it unchanged. Broadcasts over all three arguments.
    """
    h = as_array("d_model", d_model, integer=True)
    s2 = as_array("new_context", new_context, integer=True, kind="count")
    s1 = as_array("old_context", old_context, integer=True, kind="count")
    return result((6 * h + s2) / (6 * h + s1))
