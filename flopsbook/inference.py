"""Inference: the key/value cache, generation FLOPs and the decode roofline.

Derived in the chapter "Inference: the KV cache, prefill versus decode, batching and the
memory-bandwidth roofline" (``notebooks/inference``). Conventions: a multiply-add is 2 FLOPs;
forward only; matmul FLOPs only (norms, softmax, activations and embedding lookups are left
out); logits are computed for the last position of each step only, as a sampler needs. Sizes
are counts, memory is in bytes, times in seconds and costs in dollars.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import as_array, as_bool, as_hardware, as_peak, as_spec, formula, result
from .flops import _attended_pairs, _layer_coefficients


@formula
def kv_cache_bytes(m, batch, seq_len, bytes_per_value=2):
    """Bytes of the key/value cache of ``batch`` sequences of ``seq_len`` tokens.

    Each token keeps one key and one value vector per key/value head in every layer:
    ``2 * n_layers * n_kv_heads * d_head * bytes_per_value`` bytes per token. Multi-query
    (``n_kv_heads=1``) and grouped-query attention shrink it by ``n_heads / n_kv_heads``.
    Broadcasts over ``batch``, ``seq_len`` and ``bytes_per_value``.

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        batch (int | str | array-like): Sequences, a whole number > 0, an array of them, or one
            text count such as ``"1k"``.
        seq_len (int | str | array-like): Tokens cached per sequence, as ``batch`` (e.g.
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
    return result(2.0 * m.n_layers * m.n_kv_heads * m.d_head * b * s * v)


def _token_flops(m):
    """Forward matmul FLOPs of one token through one layer that do not depend on the context
    (projections and FFN; with relative positions also the projection of one new position
    encoding), and the FLOPs per attended (query, key) pair per layer."""
    projections, ffn, per_pair = _layer_coefficients(m)
    return projections + ffn, per_pair


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
    linear, per_pair = _token_flops(m)
    logits = 2.0 * m.d_model * m.vocab_size
    if kv_cache:
        tokens = p + t - 1                             # every token goes through the layers once
        pairs = _attended_pairs(p, causal) + (t - 1) * p + t * (t - 1) / 2
    else:
        tokens = t * p + t * (t - 1) / 2               # sum of s for s = P .. P+T-1
        last, first = p + t - 1, p - 1
        squares = (last * (last + 1) * (2 * last + 1) - first * (first + 1) * (2 * first + 1)) / 6
        pairs = (squares + tokens) / 2 if causal else squares
    return result(m.n_layers * (linear * tokens + per_pair * pairs) + t * logits)


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
        bytes (float | numpy.ndarray): Bytes read: the weights plus the KV cache.
        tokens_per_second (float | numpy.ndarray): Tokens generated per second:
            ``batch / time``.
    """

    time: object             # seconds: max(compute_time, memory_time)
    compute_time: object     # flops / (n_devices * peak FLOP/s)
    memory_time: object      # bytes / (n_devices * bandwidth)
    intensity: object        # flops / bytes (FLOPs per byte)
    bound: object            # "compute" where compute_time >= memory_time, else "memory"
    flops: object            # matmul FLOPs of the step (all sequences of the batch)
    bytes: object            # weights + KV cache read
    tokens_per_second: object  # batch / time


def _step_parts(m, batch, context, bytes_per_param, kv_bytes_per_value):
    from .spec import param_count

    m = as_spec(m)
    b = as_array("batch", batch, integer=True, kind="count")
    ctx = as_array("context", context, integer=True, kind="count")
    w = as_array("bytes_per_param", bytes_per_param)
    kv = as_array("kv_bytes_per_value", kv_bytes_per_value)
    linear, per_pair = _token_flops(m)
    flops_per_seq = m.n_layers * (linear + per_pair * ctx) + 2.0 * m.d_model * m.vocab_size
    weight_bytes = param_count(m) * w
    kv_per_seq = kv_cache_bytes(m, 1, ctx, kv)
    return b, flops_per_seq, weight_bytes, kv_per_seq


_SERVING = """``n_devices`` is tensor-parallel serving: the weights, each sequence's KV cache and
    the FLOPs are split evenly over that many devices, each with its own peak and bandwidth (the
    time the devices spend exchanging activations is left to the chapters on many devices).
    An even split is an idealisation when ``n_devices`` does not divide the heads: a server
    with more devices than key/value heads replicates them, which holds more cache than this
    counts."""


@formula
def decode_step_time(m, hardware, batch, context, *, bytes_per_param=2, kv_bytes_per_value=2,
                     dtype=None, n_devices=1):
    """Roofline time of one decode step: ``batch`` sequences each add one token.

    Each new token attends to ``context`` keys (itself included). Returns a
    :class:`~flopsbook.inference.DecodeStep`.

    FLOPs: per sequence, the layers' projections, ``context`` (query, key) pairs per layer and
    the logits of one position (as :func:`generation_flops` counts a step). Bytes: every
    parameter read once (``param_count(m) * bytes_per_param``, shared by the batch; for untied
    embeddings this overcounts the input table, of which only ``batch`` rows are read) plus the
    whole KV cache of every sequence (``kv_cache_bytes``). Activations are left out.

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


decode_step_time.__doc__ = decode_step_time.__doc__.format(serving=_SERVING)


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
    _, flops_per_seq, weight_bytes, kv_per_seq = _step_parts(m, 1, context, bytes_per_param,
                                                             kv_bytes_per_value)
    headroom = h.bandwidth * flops_per_seq / peak - kv_per_seq
    if not np.isfinite(headroom).all():
        result(headroom)   # raises: a context so long that its FLOPs overflow float64
    with np.errstate(divide="ignore"):
        b = np.where(headroom > 0, weight_bytes / np.where(headroom > 0, headroom, 1.0), np.inf)
    return result(np.broadcast_to(b, np.broadcast_shapes(np.shape(b), np.shape(n))),
                  allow_inf=True)


@formula
def max_batch(m, hardware, context, *, bytes_per_param=2, kv_bytes_per_value=2, n_devices=1):
    """How many sequences of ``context`` tokens fit, with their KV caches, beside the weights.

    ``floor((n_devices * memory - param_count(m) * bytes_per_param) / kv_cache_bytes(m, 1,
    context, kv_bytes_per_value))``, and 0 where the weights alone do not fit.

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
