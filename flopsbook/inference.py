"""Inference: the key/value cache, generation FLOPs and the decode roofline.

Derived in the chapter "Inference: the KV cache, prefill versus decode, batching and the
memory-bandwidth roofline" (``notebooks/inference``); mixtures of experts, multi-head latent
attention (MLA) and local windows in the chapter "Beyond the dense transformer". Conventions: a
multiply-add is 2 FLOPs; forward only; matmul FLOPs only (norms, softmax, activations and
embedding lookups are left out); logits are computed for the last position of each step only,
as a sampler needs. Sizes are counts, memory is in bytes, times in seconds and costs in dollars.

Generation follows the counting reference model's conventions: a local layer keeps a rolling
cache of at most ``window`` tokens, so a decode step's token there attends to
``min(context, window)`` keys; an MoE layer runs its router, ``top_k`` routed and the shared
experts for every token (dropless); MLA caches its latent and shared rotary key
(``kv_cache_width`` values per token and layer), runs a full pass over a prompt in the naive
form (every projection of the layer, heads of width ``d_qk`` and ``v_head_dim``) and every
one-token decode step in the absorbed form (see :func:`~flopsbook.generation_flops`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import as_array, as_bool, as_hardware, as_peak, as_spec, formula, result
from .flops import _attended_pairs, _ffn_flops, _layer_kinds, _pair_flops, _projection_flops


def _cached_tokens(m, s):
    """Tokens cached per sequence, summed over the layers, after ``s`` tokens: a global layer
    keeps all ``s``, a local one its rolling buffer of ``min(s, window)``."""
    return sum(count * (s if w is None else np.minimum(s, w)) for count, _, w in _layer_kinds(m))


@formula
def kv_cache_bytes(m, batch, seq_len, bytes_per_value=2):
    """Bytes of the key/value cache of ``batch`` sequences of ``seq_len`` tokens.

    Each token keeps ``kv_cache_width`` values in every layer that holds it: one key and one
    value vector per key/value head, ``2 * n_kv_heads * d_head``; multi-query
    (``n_kv_heads=1``) and grouped-query attention shrink it by ``n_heads / n_kv_heads``. With
    multi-head latent attention (MLA) a token keeps its latent and the rotary key all heads
    share, ``kv_lora_rank + qk_rope_dim`` values, whatever the number of heads. A local layer
    (``window``) keeps a rolling buffer of the last ``min(seq_len, window)`` tokens, since no
    later token attends further back; a global layer keeps all ``seq_len``. So the bytes are
    ``batch * kv_cache_width * bytes_per_value`` times the sum over layers of the tokens each
    keeps. Derived in the chapters "Inference" and "Beyond the dense transformer". Broadcasts
    over ``batch``, ``seq_len`` and ``bytes_per_value``.

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        batch (int | str | array-like): Sequences, a whole number > 0, an array of them, or one
            text count such as ``"1k"``.
        seq_len (int | str | array-like): Tokens of each sequence so far, as ``batch`` (e.g.
            ``"128k"``).
        bytes_per_value (float | array-like): Bytes per cached value: 2 for 16-bit, 1 for
            int8/fp8, 0.5 for int4 (quantisation scales left out), 8 for the reference model's
            float64; > 0, numbers only. Default 2.

    Returns:
        float | numpy.ndarray: Bytes: a float, or an array when an argument is one.

    Raises:
        ValueError: If ``m`` is not a model, or a count or ``bytes_per_value`` is not valid; the
            message names the argument.
    """
    m = as_spec(m)
    b = as_array("batch", batch, integer=True, kind="count")
    s = as_array("seq_len", seq_len, integer=True, kind="count")
    v = as_array("bytes_per_value", bytes_per_value)
    return result(1.0 * m.kv_cache_width * _cached_tokens(m, s) * b * v)


def _decode_projection_flops(m):
    """Forward FLOPs per new token of one layer's attention projections in a one-token decode
    step, (into q, k, v and the latent; out): the naive ones of ``_projection_flops``, except
    with MLA's absorbed form. There the cached latent is never up-projected: the new token's
    key/value up-projection is skipped, each head's non-rotary query is mapped into latent
    space instead (H * d_head * kv_lora_rank multiply-adds), and the attention's output, a
    latent per head, is mapped to the value heads (H * kv_lora_rank * v_head_dim) before W_o."""
    qkv, out = _projection_flops(m)
    if not m.is_mla:
        return qkv, out
    kv_up = m.kv_lora_rank * m.n_heads * (m.d_head + m.v_head_dim)
    q_to_latent = m.n_heads * m.d_head * m.kv_lora_rank
    latent_to_v = m.n_heads * m.kv_lora_rank * m.v_head_dim
    return qkv - 2 * kv_up + 2 * q_to_latent, out + 2 * latent_to_v


def _decode_pair_flops(m):
    """Forward FLOPs per attended (query, key) pair of one layer in a decode step. MLA's
    absorbed form scores a head's latent query and rotary query against the cached latent and
    rotary key (kv_lora_rank + qk_rope_dim) and weights the cached latents (kv_lora_rank)."""
    if not m.is_mla:
        return sum(_pair_flops(m))
    return 2 * m.n_heads * (m.kv_lora_rank + m.qk_rope_dim) + 2 * m.n_heads * m.kv_lora_rank


def _kind_coefficients(m, moe, decode):
    """(FLOPs per token, FLOPs per attended pair) of one layer of a kind (MoE FFN or dense),
    in a full pass (``decode=False``: MLA naive) or a one-token decode step (MLA absorbed)."""
    qkv, out = _decode_projection_flops(m) if decode else _projection_flops(m)
    per_pair = _decode_pair_flops(m) if decode else sum(_pair_flops(m))
    return qkv + out + sum(_ffn_flops(m, moe)), per_pair


def _window_key_sum(lo, hi, window):
    """sum of min(c, window) for c = lo+1 .. hi (hi >= lo): the keys of the decode steps whose
    contexts are lo+1 .. hi. Without a window, (hi - lo) lo + (hi - lo)(hi - lo + 1)/2."""
    if window is None:
        n = hi - lo
        return n * lo + n * (n + 1) / 2
    below = np.maximum(np.minimum(hi, window) - lo, 0)   # contexts lo+1 .. min(hi, window)
    above = np.maximum(hi - np.maximum(lo, window), 0)   # contexts beyond the window
    return below * lo + below * (below + 1) / 2 + above * window


def _square_sum(lo, hi):
    """sum of s**2 for s = lo .. hi (lo >= 1)."""
    return (hi * (hi + 1) * (2 * hi + 1) - (lo - 1) * lo * (2 * lo - 1)) / 6


def _pass_pairs_to(n, window):
    """sum over s = 1 .. n (n >= 0) of the causal pairs of a pass over s tokens,
    _attended_pairs(s, True, window): n(n+1)(n+2)/6 without a window. With one of W, the e =
    max(n - W, 0) passes beyond it add W(W+1)/2 + jW each (j = 1 .. e): eW(W + e + 2)/2."""
    if window is None:
        return n * (n + 1) * (n + 2) / 6
    beyond = np.maximum(n - window, 0)
    short = n - beyond
    return short * (short + 1) * (short + 2) / 6 + beyond * window * (window + beyond + 2) / 2


def _causal_pass_pair_sum(lo, hi, window):
    """sum over s = lo .. hi of the causal pairs of a pass over s tokens (windowed)."""
    return _pass_pairs_to(hi, window) - _pass_pairs_to(lo - 1, window)


@formula
def generation_flops(m, prompt_len, new_tokens, *, kv_cache=True, causal=True):
    """Forward matmul FLOPs to generate ``new_tokens`` tokens after a ``prompt_len`` prompt.

    For one sequence (multiply by the batch). With ``kv_cache=True``: one prefill over the
    prompt (its last position's logits give the first new token), then ``new_tokens - 1``
    one-token steps; step j (j = 1, 2, ...) attends to the ``prompt_len + j`` keys cached so
    far, itself included. Without: ``new_tokens`` full forwards over the growing sequence
    (lengths P, P+1, ..., P+T-1). Logits (2*d*V) only at the last position of each step.

    ``causal`` says how a pass over ``s`` tokens counts attention: ``True`` (the default) counts
    the s(s+1)/2 (query, key) pairs the causal mask keeps, as a kernel that skips masked blocks
    does; ``False`` counts all s*s, as a dense kernel does. It changes the prefill and the
    uncached passes only: a one-token step sees every cached key, so both count the same. With
    ``causal=True`` the cache computes every (query, key) pair exactly once. Broadcasts over
    ``prompt_len`` and ``new_tokens``.

    Beyond the dense transformer (the chapter of that name), each kind of layer is counted with
    its own shapes:

    - a **local layer** (``window`` W) keeps a rolling cache of W tokens: a decode step there
      attends to ``min(context, W)`` keys, a causal pass over s tokens to
      W(W+1)/2 + (s - W)W pairs once s > W (a non-causal pass still counts all s*s);
    - an **MoE layer** runs its router and the ``top_k`` routed and the shared experts for
      every token (dropless routing), a dense layer its FFN of width ``d_ff``;
    - **MLA** runs the prefill and the uncached passes in the naive form (every projection of
      ``layer_flops``, scores over heads of width ``d_qk``, values of width ``v_head_dim``)
      and each one-token decode step in the absorbed form: the new token's key/value
      up-projection is skipped; its non-rotary queries are mapped into latent space
      (2*H*d_head*kv_lora_rank FLOPs); each attended pair costs 2*H*(kv_lora_rank +
      qk_rope_dim) for the score and 2*H*kv_lora_rank for the weighted latent; the latent
      output is mapped back to the value heads (2*H*kv_lora_rank*v_head_dim) before W_o
      (2*H*v_head_dim*d_model).

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        prompt_len (int | str | array-like): Prompt tokens P, a whole number > 0, an array of
            them, or one text count such as ``"4k"``.
        new_tokens (int | str | array-like): Tokens to generate T, as ``prompt_len``.

    Keyword Args:
        kv_cache (bool): Decode with a key/value cache. Default True.
        causal (bool): Count only the pairs the causal mask keeps (see above). Default True.

    Returns:
        float | numpy.ndarray: FLOPs for one sequence: a float, or an array when an argument is
        one.

    Raises:
        ValueError: If ``m`` is not a model, a count is not a positive whole number, or a switch
            is not True or False; the message names the argument.
    """
    m = as_spec(m)
    p = as_array("prompt_len", prompt_len, integer=True, kind="count")
    t = as_array("new_tokens", new_tokens, integer=True, kind="count")
    kv_cache, causal = as_bool("kv_cache", kv_cache), as_bool("causal", causal)
    total = t * 2.0 * m.d_model * m.vocab_size          # logits of one position per step
    last = p + t - 1
    for count, moe, window in _layer_kinds(m):
        linear, per_pair = _kind_coefficients(m, moe, decode=False)
        if kv_cache:
            step_linear, step_pair = _kind_coefficients(m, moe, decode=True)
            layer = (linear * p + per_pair * _attended_pairs(p, causal, window)
                     + step_linear * (t - 1) + step_pair * _window_key_sum(p, last, window))
        else:
            tokens = t * p + t * (t - 1) / 2             # sum of s for s = P .. P+T-1
            pairs = (_causal_pass_pair_sum(p, last, window) if causal
                     else _square_sum(p, last))          # a dense kernel: all s*s, window or not
            layer = linear * tokens + per_pair * pairs
        total = total + count * layer
    return result(total)


@formula
def expected_experts(n_experts, top_k, batch):
    """Expected number of distinct routed experts that ``batch`` tokens hit in one MoE layer.

    Under uniform routing (each token meets ``top_k`` distinct experts chosen uniformly at
    random, tokens independent) a given expert is missed by one token with probability
    1 - k/E and by all B tokens with (1 - k/E)**B, so by linearity of expectation
    ``E * (1 - (1 - k/E)**B)`` experts are hit: k for one token, close to k*B while k*B is
    much less than E, and E as B grows. This is what a decode step at batch B reads of a
    layer's experts. Derived in the chapter "Beyond the dense transformer"; checked against
    ``flopsbook.reference.routing.simulate_experts_hit`` (a Monte Carlo router).

    For tokens routed independently by any one router, the expected count is
    sum over experts of 1 - (1 - p_e)**B, with p_e the chance that a token meets expert e
    (the p_e sum to k); 1 - (1 - p)**B is concave in p, so this is largest when every p_e is
    k/E (Jensen). The uniform count is thus an upper bound for independent tokens, reached by
    a perfectly balanced router; a skewed router hits fewer experts. Tokens that are not
    independent (a batch of similar prompts) may hit fewer or more, never more than
    ``min(E, k*B)``.

    Args:
        n_experts (int | array-like): Routed experts per layer E, a whole number > 0 (an array
            of them broadcasts); numbers only.
        top_k (int | array-like): Experts each token meets k, a whole number, 1 <= k <= E.
        batch (int | str | array-like): Tokens routed together B (a decode step's batch), a
            whole number > 0, an array of them, or one text count such as ``"1k"``.

    Returns:
        float | numpy.ndarray: Expected distinct experts (a real number between k and
        ``min(E, k*B)``): a float, or an array when an argument is one.

    Raises:
        ValueError: If an argument is not a positive whole number, or ``top_k`` exceeds
            ``n_experts``; the message names the argument.
    """
    e = as_array("n_experts", n_experts, integer=True)
    k = as_array("top_k", top_k, integer=True)
    b = as_array("batch", batch, integer=True, kind="count")
    if np.any(k > e):
        bad = np.broadcast_arrays(k, e)
        i = np.argmax(bad[0] > bad[1])
        raise ValueError(f"top_k={bad[0].flat[i]:g} must be at most n_experts="
                         f"{bad[1].flat[i]:g} (allowed: 1 to n_experts)")
    return result(_expected_experts(e, k, b))


def _expected_experts(e, k, b):
    # E(1 - (1 - k/E)**B) as written is exact for one token when k/E is a binary fraction
    # (Mixtral's 2/8: 2 experts, not 1.9999999999999998), but loses k/E against 1 when it is
    # tiny; there -E expm1(B log1p(-k/E)), the same number, keeps every digit.
    p = k / e
    with np.errstate(divide="ignore"):
        return np.where(p < 1e-3, -e * np.expm1(b * np.log1p(-p)), e * (1 - (1 - p) ** b))


def _expected_experts_slope(e, k, b):
    """d/dB of E(1 - (1 - k/E)**B): -E ln(1 - k/E) (1 - k/E)**B, 0 when k = E."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = np.log1p(-k / e)
        return np.where(k < e, -e * log_q * np.exp(b * np.where(k < e, log_q, 0.0)), 0.0)


@dataclass(frozen=True)
class DecodeStep:
    """Roofline estimate of one decode step (see :func:`~flopsbook.decode_step_time`).

    Fields are floats, or arrays when the arguments broadcast; ``bound`` is "compute" or
    "memory" (an array of them when broadcasting). ``flops`` and ``bytes`` are the whole step's,
    summed over the ``n_devices`` devices that share it; the times are per device, which is the
    step's time.

    Attributes:
        time (float | numpy.ndarray): Seconds: ``max(compute_time, memory_time)``.
        compute_time (float | numpy.ndarray): Seconds: ``flops / (n_devices * peak FLOP/s)``.
        memory_time (float | numpy.ndarray): Seconds: ``bytes / (n_devices * bandwidth)``.
        intensity (float | numpy.ndarray): ``flops / bytes``, FLOPs per byte.
        bound (str | numpy.ndarray): ``"compute"`` where ``compute_time >= memory_time``, else
            ``"memory"``.
        flops (float | numpy.ndarray): Matmul FLOPs of the step (all sequences of the batch).
        bytes (float | numpy.ndarray): Bytes read: the weights the step uses (for a mixture of
            experts the expected experts hit, :func:`~flopsbook.expected_experts`) plus the KV cache.
        tokens_per_second (float | numpy.ndarray): Tokens generated per second:
            ``batch / time``.
    """

    time: object             # seconds: max(compute_time, memory_time)
    compute_time: object     # flops / (n_devices * peak FLOP/s)
    memory_time: object      # bytes / (n_devices * bandwidth)
    intensity: object        # flops / bytes (FLOPs per byte)
    bound: object            # "compute" where compute_time >= memory_time, else "memory"
    flops: object            # matmul FLOPs of the step (all sequences of the batch)
    bytes: object            # weights read (expected experts for an MoE) + KV cache
    tokens_per_second: object  # batch / time


def _step_flops(m, ctx):
    """Forward matmul FLOPs of one sequence's decode step at ``ctx`` keys: every layer's
    one-token projections and FFN (MLA absorbed), min(ctx, window) pairs in a local layer,
    the logits of one position."""
    flops = 2.0 * m.d_model * m.vocab_size
    for count, moe, window in _layer_kinds(m):
        linear, per_pair = _kind_coefficients(m, moe, decode=True)
        keys = ctx if window is None else np.minimum(ctx, window)
        flops = flops + count * (linear + per_pair * keys)
    return flops


def _weight_parts(m):
    """(parameters every step reads whatever the batch, parameters of one routed expert,
    MoE layers): everything but the routed experts is read once per step; of each MoE layer's
    experts only those the batch hits."""
    from .spec import ffn_params, param_breakdown

    parts = param_breakdown(m)
    if not m.is_moe:
        return parts["total"], 0, 0
    return parts["total"] - parts["experts"], ffn_params(m, m.d_ff_expert), m.n_moe_layers


def _step_parts(m, batch, context, bytes_per_param, kv_bytes_per_value):
    m = as_spec(m)
    b = as_array("batch", batch, integer=True, kind="count")
    ctx = as_array("context", context, integer=True, kind="count")
    w = as_array("bytes_per_param", bytes_per_param)
    kv = as_array("kv_bytes_per_value", kv_bytes_per_value)
    shared, expert, n_moe = _weight_parts(m)
    weights = shared if not n_moe else \
        shared + n_moe * expert * _expected_experts(m.n_experts, m.top_k, b)
    return b, _step_flops(m, ctx), weights * w, kv_cache_bytes(m, 1, ctx, kv)


_SERVING = """``n_devices`` is tensor-parallel serving: the weights, each sequence's KV cache and
    the FLOPs are split evenly over that many devices, each with its own peak and bandwidth (the
    time the devices spend exchanging activations is left to the chapters on many devices).
    An even split is an idealisation when ``n_devices`` does not divide the heads: a server
    with more devices than key/value heads replicates them, which holds more cache than this
    counts."""

_EXPERT_TRAFFIC = """A mixture of experts reads, per step, every weight but the routed experts
    (attention, router, shared experts, dense layers, embeddings) and, per MoE layer, only the
    experts its ``batch`` tokens hit: ``expected_experts(n_experts, top_k, batch)`` of them,
    the expectation under uniform routing (each token meets ``top_k`` distinct experts at
    random, tokens independent). For any router that routes the tokens of a batch
    independently, that is an upper bound on the expected traffic, reached by a balanced
    router (one that sends a token to each expert with the same probability top_k/n_experts):
    a skewed router hits fewer experts and reads less (see :func:`~flopsbook.expected_experts`). At
    ``batch=1`` it is exactly the ``top_k`` experts: ``param_count(m, active=True)`` weights in
    all. Every expert must still be held in memory (:func:`max_batch`)."""


@formula
def decode_step_time(m, hardware, batch, context, *, bytes_per_param=2, kv_bytes_per_value=2,
                     dtype=None, n_devices=1):
    """Roofline time of one decode step: ``batch`` sequences each add one token.

    Each new token attends to ``context`` keys (itself included; in a local layer to
    ``min(context, window)``, its rolling cache). Returns a
    :class:`~flopsbook.inference.DecodeStep`.

    FLOPs: per sequence, the layers' one-token projections and FFNs (an MoE layer's router,
    ``top_k`` routed and shared experts; MLA in its absorbed form), the attended (query, key)
    pairs of every layer and the logits of one position (as :func:`~flopsbook.generation_flops` counts a
    step). Bytes: the weights the step uses read once, shared by the batch (a dense model: all
    ``param_count(m)`` of them, times ``bytes_per_param``; for untied embeddings this
    overcounts the input table, of which only ``batch`` rows are read) plus the whole KV cache
    of every sequence (``kv_cache_bytes``). Activations are left out.

    {experts}

    Of ``hardware``, ``bandwidth`` (HBM, bytes/s) and ``peak(dtype)`` are used, by default its
    bf16 peak (fp16 where there is no bf16): quantised weights are assumed dequantised to 16
    bits for the arithmetic, so they save bytes, not FLOPs.

    {serving}

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        hardware (Hardware | str): The accelerator: a :class:`Hardware` or a registry name.
        batch (int | str | array-like): Sequences decoded together, a whole number > 0, an array
            of them, or one text count such as ``"1k"``.
        context (int | str | array-like): Keys each new token attends to (itself included), in
            tokens, as ``batch`` (e.g. ``"128k"``).

    Keyword Args:
        bytes_per_param (float | array-like): Bytes per weight: 2 for 16-bit, 1 for 8-bit, 0.5
            for 4-bit; > 0, numbers only. Default 2.
        kv_bytes_per_value (float | array-like): Bytes per cached key or value element, as
            ``bytes_per_param``. Default 2.
        dtype (str | None): The dtype whose peak is used (``"bf16"``, ``"fp8"``, ...; see
            :meth:`Hardware.peak`); None (the default) takes ``peak_16bit``.
        n_devices (int | str | array-like): Devices serving the model by tensor parallelism (see
            above), a whole number > 0. Default 1.

    Returns:
        DecodeStep: The step's times (seconds), FLOPs, bytes, intensity (FLOPs per byte), bound
        and tokens per second; broadcast over ``batch``, ``context``, ``bytes_per_param``,
        ``kv_bytes_per_value`` and ``n_devices``.

    Raises:
        ValueError: If an argument is not valid, e.g. an unknown model or hardware name, a count
            that is not a positive whole number, or a ``dtype`` the hardware has no peak for; the
            message names the argument.
    """
    h = as_hardware(hardware)
    peak = as_peak("hardware", h, dtype)
    n = as_array("n_devices", n_devices, integer=True, kind="count")
    b, flops_per_seq, weight_bytes, kv_per_seq = _step_parts(m, batch, context, bytes_per_param,
                                                             kv_bytes_per_value)
    flops = b * flops_per_seq
    moved = weight_bytes + b * kv_per_seq
    compute_time, memory_time = flops / (n * peak), moved / (n * h.bandwidth)
    time = np.maximum(compute_time, memory_time)
    bound = np.where(compute_time >= memory_time, "compute", "memory")
    shape = np.broadcast_shapes(np.shape(time), np.shape(flops), np.shape(moved))
    full = [np.broadcast_to(x, shape) for x in (time, compute_time, memory_time, flops, moved)]
    time, compute_time, memory_time, flops, moved = full
    bound = np.broadcast_to(bound, shape)
    return DecodeStep(time=result(time), compute_time=result(compute_time),
                      memory_time=result(memory_time), intensity=result(flops / moved),
                      bound=str(bound[()]) if bound.ndim == 0 else bound.copy(),
                      flops=result(flops), bytes=result(moved),
                      tokens_per_second=result(np.broadcast_to(b, shape) / time))


decode_step_time.__doc__ = decode_step_time.__doc__.format(serving=_SERVING,
                                                           experts=_EXPERT_TRAFFIC)

# Newton's method from above the root of a convex function converges without overshooting;
# quadratically once close, and a few steps bring it close (the tests check the root).
_NEWTON_STEPS = 60


def _moe_critical_batch(headroom, fixed, expert_bytes, e, k):
    """The root b > 0 of f(b) = b headroom - fixed - expert_bytes E(b), E(b) the expected
    experts (increasing, concave, from 0 to e), where headroom > 0. f(0) = -fixed < 0 and f is
    convex, so the root is unique; it lies in [fixed, fixed + e expert_bytes] / headroom, and
    Newton's method from the upper end decreases to it monotonically."""
    b = (fixed + expert_bytes * e) / headroom
    for _ in range(_NEWTON_STEPS):
        f = b * headroom - fixed - expert_bytes * _expected_experts(e, k, b)
        slope = headroom - expert_bytes * _expected_experts_slope(e, k, b)
        step = np.where(f > 0, f / slope, 0.0)   # f <= 0 only at the root (to rounding)
        b = b - step
        if not np.any(step > 4e-16 * b):
            break
    return b


@formula
def critical_batch(m, hardware, context, *, bytes_per_param=2, kv_bytes_per_value=2,
                   dtype=None, n_devices=1):
    """The batch from which a decode step is compute-bound (``inf`` if it never is).

    Setting compute time equal to memory time, b F / P = (W + b K) / B_w, with F the FLOPs and K
    the KV bytes of one sequence, W the weight bytes, P the peak and B_w the bandwidth:
    b* = W / (B_w F / P - K). When K >= B_w F / P every added sequence brings as many bytes per
    FLOP as the hardware's balance allows, and no batch is compute-bound. A real number: batches
    from ``ceil(b*)`` up are compute-bound. Same arguments and conventions as
    :func:`decode_step_time` (without ``batch``). Splitting over ``n_devices`` divides both sides
    by the same n, so b* does not depend on it (the argument is accepted so that every serving
    function takes the same arguments, and broadcasts).

    For a mixture of experts the weights read grow with the batch (:func:`decode_step_time`):
    W(b) = W_0 + L X E(b), with W_0 the bytes of everything but the routed experts, X those
    of one expert, L the MoE layers and E(b) = :func:`~flopsbook.expected_experts` (uniform routing, E(b)
    taken at real b). b F / P = (W(b) + b K) / B_w then has no closed form; since E(b) is
    concave, b (B_w F / P - K) - W(b) is convex and negative at 0, so there is exactly one root,
    found by Newton's method (vectorised; to float64 precision, compute and memory time equal
    there to about 1e-15). Below it a step is memory-bound, from it on compute-bound.

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        hardware (Hardware | str): The accelerator: a :class:`Hardware` or a registry name.
        context (int | str | array-like): Keys each new token attends to (itself included), in
            tokens: a whole number > 0, an array of them, or one text count such as ``"128k"``.

    Keyword Args:
        bytes_per_param (float | array-like): Bytes per weight: 2 for 16-bit, 1 for 8-bit, 0.5
            for 4-bit; > 0, numbers only. Default 2.
        kv_bytes_per_value (float | array-like): Bytes per cached key or value element, as
            ``bytes_per_param``. Default 2.
        dtype (str | None): The dtype whose peak is used; None (the default) takes
            ``peak_16bit``.
        n_devices (int | str | array-like): Devices serving the model, a whole number > 0; it
            does not change b*. Default 1.

    Returns:
        float | numpy.ndarray: b*, in sequences (a real number; ``inf`` where no batch is
        compute-bound): a float, or an array when an argument is one.

    Raises:
        ValueError: If an argument is not valid (as for :func:`decode_step_time`); the message
            names it.
    """
    h = as_hardware(hardware)
    peak = as_peak("hardware", h, dtype)
    n = as_array("n_devices", n_devices, integer=True, kind="count")
    m = as_spec(m)
    _, flops_per_seq, _, kv_per_seq = _step_parts(m, 1, context, bytes_per_param,
                                                  kv_bytes_per_value)
    w = as_array("bytes_per_param", bytes_per_param)
    shared, expert, n_moe = _weight_parts(m)
    headroom = h.bandwidth * flops_per_seq / peak - kv_per_seq
    if not np.isfinite(headroom).all():
        result(headroom)   # raises: a context so long that its FLOPs overflow float64
    fits = headroom > 0
    safe = np.where(fits, headroom, 1.0)
    with np.errstate(divide="ignore"):
        if n_moe:
            shape = np.broadcast_shapes(np.shape(safe), np.shape(w))
            b = _moe_critical_batch(np.broadcast_to(safe, shape), shared * w,
                                    n_moe * expert * w, m.n_experts, m.top_k)
        else:
            b = shared * w / safe
        b = np.where(fits, b, np.inf)
    return result(np.broadcast_to(b, np.broadcast_shapes(np.shape(b), np.shape(n))),
                  allow_inf=True)


@formula
def max_batch(m, hardware, context, *, bytes_per_param=2, kv_bytes_per_value=2, n_devices=1):
    """How many sequences of ``context`` tokens fit, with their KV caches, beside the weights.

    ``floor((n_devices * memory - param_count(m) * bytes_per_param) / kv_cache_bytes(m, 1,
    context, kv_bytes_per_value))``, and 0 where the weights alone do not fit. A mixture of
    experts needs every expert in memory (any token may be routed to any of them), so its
    weights are all ``param_count(m)`` parameters, though a step reads fewer
    (:func:`decode_step_time`). The cache is :func:`kv_cache_bytes`: MLA's latents, rolling
    buffers of ``window`` tokens in local layers.

    {serving}

    Nothing is duplicated, so the memory of the devices is pooled. Activations, the
    framework's buffers and quantisation scales are left out, so real servers fit somewhat
    fewer. Derived in the chapter "Inference". Of ``hardware``, ``memory_bytes`` is used.

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        hardware (Hardware | str): The accelerator: a :class:`Hardware` or a registry name.
        context (int | str | array-like): Tokens per sequence (its KV cache): a whole number > 0,
            an array of them, or one text count such as ``"128k"``.

    Keyword Args:
        bytes_per_param (float | array-like): Bytes per weight: 2 for 16-bit, 1 for 8-bit, 0.5
            for 4-bit; > 0, numbers only. Default 2.
        kv_bytes_per_value (float | array-like): Bytes per cached key or value element, as
            ``bytes_per_param``. Default 2.
        n_devices (int | str | array-like): Devices serving the model by tensor parallelism, a
            whole number > 0. Default 1.

    Returns:
        float | numpy.ndarray: Sequences: a whole number as float64 (0 where the weights do not
        fit); an array when broadcasting over ``context``, ``bytes_per_param``,
        ``kv_bytes_per_value`` and ``n_devices``.

    Raises:
        ValueError: If an argument is not valid; the message names it.
    """
    from .spec import param_count

    m = as_spec(m)
    h = as_hardware(hardware)
    ctx = as_array("context", context, integer=True, kind="count")
    w = as_array("bytes_per_param", bytes_per_param)
    kv = as_array("kv_bytes_per_value", kv_bytes_per_value)
    n = as_array("n_devices", n_devices, integer=True, kind="count")
    free = n * h.memory_bytes - param_count(m) * w
    per_seq = kv_cache_bytes(m, 1, ctx, kv)
    return result(np.maximum(np.floor(free / per_seq), 0.0))


max_batch.__doc__ = max_batch.__doc__.format(serving=_SERVING)


@formula
def serving_cost(m, hardware, batch, context, price_per_device_hour, *, n_devices=1,
                 bytes_per_param=2, kv_bytes_per_value=2, dtype=None):
    """Dollars per million generated tokens, from the decode roofline: a lower bound.

    ``price_per_device_hour`` dollars for each of ``n_devices`` devices, divided by the tokens
    per second of :func:`decode_step_time` at ``batch`` sequences that each attend to
    ``context`` keys: 1e6 * n_devices * price / 3600 / tokens_per_second. The context is held
    fixed at every step (pass the longest context a generation reaches for a bound that covers
    it, or the mean for an average); prefill is not included (its FLOPs are compute-bound and
    are billed per prompt token), nor idle time, communication or a batch that is not full.
    Arguments as :func:`decode_step_time`; broadcasts.

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        hardware (Hardware | str): The accelerator: a :class:`Hardware` or a registry name.
        batch (int | str | array-like): Sequences decoded together, a whole number > 0 that fits
            (:func:`max_batch`), an array of them, or one text count.
        context (int | str | array-like): Keys each new token attends to, in tokens, as
            ``batch`` (e.g. ``"32k"``).
        price_per_device_hour (float | array-like): Dollars per device per hour, > 0; numbers
            only.

    Keyword Args:
        n_devices (int | str | array-like): Devices serving the model by tensor parallelism, a
            whole number > 0; each is paid for. Default 1.
        bytes_per_param (float | array-like): Bytes per weight: 2 for 16-bit, 1 for 8-bit, 0.5
            for 4-bit; > 0, numbers only. Default 2.
        kv_bytes_per_value (float | array-like): Bytes per cached key or value element, as
            ``bytes_per_param``. Default 2.
        dtype (str | None): The dtype whose peak is used; None (the default) takes
            ``peak_16bit``.

    Returns:
        float | numpy.ndarray: Dollars per million generated tokens: a float, or an array when
        an argument is one.

    Raises:
        ValueError: If the KV caches of ``batch`` sequences do not fit beside the weights
            (:func:`max_batch`; the message says how many fit), or another argument is not
            valid; the message names the argument.
    """
    price = as_array("price_per_device_hour", price_per_device_hour)
    fits = max_batch(m, hardware, context, bytes_per_param=bytes_per_param,
                     kv_bytes_per_value=kv_bytes_per_value, n_devices=n_devices)
    b = as_array("batch", batch, integer=True, kind="count")
    too_big = b > fits
    if np.any(too_big):
        from .spec import param_count

        shape = too_big.shape
        most = float(np.broadcast_to(fits, shape)[too_big].min())
        devices = np.broadcast_to(as_array("n_devices", n_devices, integer=True, kind="count"),
                                  shape)[too_big].min()
        h = as_hardware(hardware)
        weights = float(np.max(param_count(as_spec(m)) * as_array("bytes_per_param",
                                                                    bytes_per_param)))
        if most == 0 and weights >= devices * h.memory_bytes:
            raise ValueError(f"batch does not fit: the weights alone ({weights / 2**30:,.1f} "
                             f"GiB) exceed {devices:,.0f} x {h.name} "
                             f"({devices * h.memory_bytes / 2**30:,.1f} GiB); add devices or "
                             "quantise the weights")
        raise ValueError(f"batch does not fit: at most {most:,.0f} sequences of this context "
                         f"fit beside the weights on {devices:,.0f} x {h.name} (max_batch); "
                         "lower batch or context, or add devices")
    step = decode_step_time(m, hardware, b, context, bytes_per_param=bytes_per_param,
                            kv_bytes_per_value=kv_bytes_per_value, dtype=dtype,
                            n_devices=n_devices)
    n = as_array("n_devices", n_devices, integer=True, kind="count")
    return result(1e6 * n * price / 3600.0 / step.tokens_per_second)
