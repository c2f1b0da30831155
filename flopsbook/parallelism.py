"""Model parallelism: tensor, sequence, pipeline, context and expert parallelism, and layouts.

Derived in the chapter "Many devices II: model parallelism and layouts for a cluster"
(``notebooks/parallelism``) and held against a counted simulation of the reference transformer
split over devices (``flopsbook.reference.model_parallel``) and the collectives a real SPMD
compiler emits (``flopsbook.reference.xla``). Conventions are the collectives chapter's: bytes
"sent" are what one device puts on its links (ring collectives), bandwidths are bytes/s in ONE
direction per device, times are seconds, ``batch`` is the micro-batch in sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from ._validate import as_array, as_bool, as_peak, as_spec, choice, formula, result, shown
from .communication import _link_bandwidth


@dataclass(frozen=True)
class ParallelBytes:
    """Bytes one device sends for one layer (or stage boundary) and one micro-batch.

    Attributes:
        forward (float | numpy.ndarray): Bytes sent in the forward pass.
        backward (float | numpy.ndarray): Bytes sent in the backward pass.
        total (float | numpy.ndarray): ``forward + backward``.
    """

    forward: object
    backward: object
    total: object


def _bytes(forward, backward) -> ParallelBytes:
    forward, backward = np.broadcast_arrays(np.asarray(forward, dtype=np.float64),
                                            np.asarray(backward, dtype=np.float64))
    return ParallelBytes(result(forward), result(backward), result(forward + backward))


def _ring(n):
    """The (n - 1)/n of a ring pass: the share of a buffer one device sends."""
    return (n - 1) / n


def _sequence_parallel_replicated(m) -> float:
    """Parameters of the average layer that every tensor-parallel device holds whole but, with
    sequence parallelism, computes on its own slice of the tokens: their gradients are partial
    sums and are all-reduced (Megatron marks them ``sequence_parallel``): the block's norms,
    the row-parallel projections' output biases, MLA's latent norms and the MoE router."""
    from .spec import _layer_norm_params, _router_params

    # The layer's norms but the q/k norms, which _head_shared counts (all-reduced either way).
    n = _layer_norm_params(m) - _head_shared(m)
    if m.bias:
        n += 2 * m.d_model                       # the output projection's and the FFN's
    if m.is_moe:
        n += _router_params(m) * m.n_moe_layers / m.n_layers
    return n


def _tensor_parallel_ok(m, t):
    """Where tp can split the layers: it divides the query heads, the key/value heads (or is a
    multiple of them, which are then replicated) and the FFN width (an expert's, in an MoE)."""
    d_ff = m.d_ff_expert if m.is_moe else m.d_ff
    kv = (m.n_kv_heads % t == 0) | (t % m.n_kv_heads == 0)
    return (m.n_heads % t == 0) & kv & (d_ff % t == 0)


def check_tensor_parallel(m, t, name="tp"):
    """Refuse a tensor-parallel size that cannot split ``m``'s heads or FFN, naming ``name``."""
    if not np.all(_tensor_parallel_ok(m, t)):
        d_ff = m.d_ff_expert if m.is_moe else m.d_ff
        allowed = [x for x in range(1, m.n_heads + 1) if _tensor_parallel_ok(m, x)]
        raise ValueError(f"{name} must divide n_heads={m.n_heads} and the FFN width {d_ff}, and "
                         f"divide or be a multiple of n_kv_heads={m.n_kv_heads}; allowed for "
                         f"{m.name}: {', '.join(map(str, allowed))}")


def _head_shared(m) -> float:
    """Parameters shared by every head, which a split of the heads makes partial: q/k norms."""
    from .spec import _norm_params

    return 2 * _norm_params(m, m.d_head) if m.qk_norm else 0


@formula
def tensor_parallel_bytes(m, batch, seq_len, tp, *, sequence_parallel=False,
                          bytes_per_value=2):
    """Bytes each device sends per layer and micro-batch with Megatron tensor parallelism.

    Each sublayer (attention, FFN) splits its first matrices by columns (heads, hidden units)
    and its last by rows, so its output is a sum of ``tp`` partial ``b x s x d`` results: one
    ring all-reduce of b*s*d values, 2(t - 1)/t of them sent per device, after each sublayer in
    the forward pass and one for the gradient of each sublayer's input in the backward pass
    (Megatron's f and g). With ``sequence_parallel`` the norms and dropouts between the
    sublayers work on a 1/t slice of the tokens: each all-reduce becomes an all-gather before
    the sublayer and a reduce-scatter after it, (t - 1)/t each, the same bytes; the backward
    pass also all-reduces the gradients of the parameters computed on those slices (the norms,
    the row-parallel output biases, MLA's latent norms, the router). q/k norms, one gain shared
    by every head, are all-reduced in the backward pass either way. The buffer is padded to a
    multiple of ``tp`` values as the ring does. Embeddings and logits are outside the layers
    and not counted. Broadcasts over the numeric arguments.

    Args:
        m (Transformer | str): The model: a :class:`~flopsbook.Transformer` or a registry name.
        batch (int | str | array-like): Sequences in the micro-batch, a whole number > 0.
        seq_len (int | str | array-like): Tokens per sequence, a whole number > 0.
        tp (int | str | array-like): Tensor-parallel devices t, a whole number > 0.

    Keyword Args:
        sequence_parallel (bool): Split the tokens between the sublayers (Korthikanti et al.
            2022); ``batch * seq_len`` must then be a multiple of ``tp``. Default False.
        bytes_per_value (float | array-like): Bytes per activation and gradient value, > 0.
            Default 2.

    Returns:
        ParallelBytes: ``forward``, ``backward`` and ``total`` bytes one device sends for one
        layer (the stack's average layer for a mixture of experts) and one micro-batch.

    Raises:
        ValueError: If an argument is not valid, or with ``sequence_parallel`` the tokens do
            not split evenly; the message names the argument.
    """
    m = as_spec(m)
    b = as_array("batch", batch, integer=True, kind="count")
    s = as_array("seq_len", seq_len, integer=True, kind="count")
    t = as_array("tp", tp, integer=True, kind="count")
    sp = as_bool("sequence_parallel", sequence_parallel)
    v = as_array("bytes_per_value", bytes_per_value)
    check_tensor_parallel(m, t)
    tokens = b * s
    if sp and np.any(tokens % t):
        raise ValueError(f"seq_len: with sequence_parallel=True batch * seq_len must be a "
                         f"multiple of tp={shown(tp)} (each device takes an equal slice)")

    def all_reduce(values):
        return 2 * _ring(t) * np.ceil(values / t) * t

    sublayer = all_reduce(tokens * m.d_model)          # = an all-gather plus a reduce-scatter
    shared = _head_shared(m) + (_sequence_parallel_replicated(m) if sp else 0)
    forward = 2 * sublayer * v
    backward = forward + (all_reduce(shared) * v if shared else 0 * forward)
    return _bytes(forward, backward)


@formula
def pipeline_p2p_bytes(m, batch, seq_len, *, tensor_parallel=1, sequence_parallel=False,
                       bytes_per_value=2):
    """Bytes one device sends across one pipeline-stage boundary per micro-batch.

    The forward pass sends the boundary layer's output, b*s*d values, to the next stage; the
    backward pass sends its gradient back. With tensor parallelism each of the ``t`` devices of
    a stage holds the whole tensor and sends it (plain Megatron); with ``sequence_parallel``
    each holds and sends a 1/t slice (Megatron's scatter/gather optimisation does the same
    without sequence parallelism, then all-gathers inside the node). Broadcasts over the
    numeric arguments.

    Args:
        m (Transformer | str): The model: a :class:`~flopsbook.Transformer` or a registry name.
        batch (int | str | array-like): Sequences in the micro-batch, a whole number > 0.
        seq_len (int | str | array-like): Tokens per sequence, a whole number > 0.

    Keyword Args:
        tensor_parallel (int | str | array-like): Devices t of each stage, > 0. Default 1.
        sequence_parallel (bool): Whether the boundary tensor is split over the t devices.
            Default False.
        bytes_per_value (float | array-like): Bytes per value, > 0. Default 2.

    Returns:
        ParallelBytes: ``forward`` (activations), ``backward`` (their gradients) and ``total``
        bytes one device sends per boundary and micro-batch.

    Raises:
        ValueError: If an argument is not valid; the message names it.
    """
    m = as_spec(m)
    b = as_array("batch", batch, integer=True, kind="count")
    s = as_array("seq_len", seq_len, integer=True, kind="count")
    t = as_array("tensor_parallel", tensor_parallel, integer=True, kind="count")
    sp = as_bool("sequence_parallel", sequence_parallel)
    v = as_array("bytes_per_value", bytes_per_value)
    check_tensor_parallel(m, t, "tensor_parallel")
    if sp and np.any((b * s) % t):
        raise ValueError(f"seq_len: with sequence_parallel=True batch * seq_len must be a "
                         f"multiple of tensor_parallel={shown(tensor_parallel)}")
    values = b * s * m.d_model / (t if sp else 1)
    return _bytes(values * v, values * v)


BUBBLE_CONVENTIONS = ("ideal", "step")


@formula
def pipeline_bubble(stages, micro_batches, *, interleave=1, relative_to="ideal"):
    """The pipeline bubble: idle time of a synchronous pipeline schedule, as a fraction.

    With p stages and m micro-batches every stage waits p - 1 micro-batch slots while the
    pipeline fills and drains, whatever the order (GPipe: all forwards, then all backwards;
    1F1B: one forward, one backward), against the m slots of useful work: (p - 1)/m of the
    ideal step time (Narayanan et al. 2021). With ``interleave`` = v model chunks per device
    (the interleaved 1F1B schedule) a slot is 1/v as long: (p - 1)/(v m). ``relative_to="step"``
    gives the other convention, the fraction of the whole step spent idle (GPipe's
    (p - 1)/(m + p - 1), here (p - 1)/(v m + p - 1)). The schedules differ in memory, not in
    this bubble: GPipe keeps every micro-batch's activations (m), 1F1B at most p on the first
    stage, interleaving a little more (see :func:`~flopsbook.memory_budget`). Broadcasts.

    Args:
        stages (int | array-like): Pipeline stages p, a whole number > 0.
        micro_batches (int | array-like): Micro-batches m per optimizer step, > 0.

    Keyword Args:
        interleave (int | array-like): Model chunks v per device, > 0. Default 1.
        relative_to (str): ``"ideal"`` (the default: bubble time over ideal time) or
            ``"step"`` (bubble time over the whole step).

    Returns:
        float | numpy.ndarray: The bubble fraction.

    Raises:
        ValueError: If an argument is not valid; the message names it.
    """
    p = as_array("stages", stages, integer=True, kind="count")
    k = as_array("micro_batches", micro_batches, integer=True, kind="count")
    v = as_array("interleave", interleave, integer=True, kind="count")
    choice("relative_to", relative_to, BUBBLE_CONVENTIONS)
    idle = p - 1
    return result(idle / (v * k) if relative_to == "ideal" else idle / (v * k + idle))


PIPELINE_SCHEDULES = ("1f1b", "zb1p", "dualpipe")


@formula
def pipeline_bubble_time(stages, forward, backward, *, schedule="1f1b", weight_backward=0.0,
                         overlapped=None):
    """The bubble of one pipeline step in time, by DeepSeek-V3's Table 2 (DeepSeek-AI 2024).

    ``forward`` (F) and ``backward`` (B) are the times of one micro-batch chunk's forward and
    whole backward on one stage, ``weight_backward`` (W) the part of B that computes the
    weights' gradients, ``overlapped`` (F&B) the time of a forward and a backward chunk run
    together (DualPipe overlaps one's communication with the other's compute):

    - ``"1f1b"``: (p - 1)(F + B), the same as (p - 1)/m of the ideal m(F + B);
    - ``"zb1p"`` (zero-bubble, Qi et al. 2023): (p - 1)(F + B - 2W);
    - ``"dualpipe"``: (p/2 - 1)(F&B + B - 3W), with p even (micro-batches fed from both
      ends); it keeps two copies of the parameters and p + 1 micro-batches' activations.

    Broadcasts over the numeric arguments; the times may be in any one unit.

    Args:
        stages (int | array-like): Pipeline stages p, a whole number > 0 (even for DualPipe).
        forward (float | array-like): F, > 0.
        backward (float | array-like): B, > 0.

    Keyword Args:
        schedule (str): ``"1f1b"`` (the default), ``"zb1p"`` or ``"dualpipe"``.
        weight_backward (float | array-like): W, 0 <= W <= B. Default 0.
        overlapped (float | array-like | None): F&B, > 0; None (the default) is F + B (no
            overlap gained).

    Returns:
        float | numpy.ndarray: The bubble, in the unit of the times.

    Raises:
        ValueError: If an argument is not valid, ``stages`` is odd for DualPipe, or the bubble
            would be negative (W too large for the schedule); the message names the argument.
    """
    p = as_array("stages", stages, integer=True, kind="count")
    f = as_array("forward", forward)
    b = as_array("backward", backward)
    w = as_array("weight_backward", weight_backward, allow_zero=True)
    choice("schedule", schedule, PIPELINE_SCHEDULES)
    fb = f + b if overlapped is None else as_array("overlapped", overlapped)
    if schedule == "1f1b" and np.any(w != 0):
        raise ValueError("weight_backward does not enter the 1F1B bubble: leave it 0, or use "
                         "schedule='zb1p' or 'dualpipe'")
    if schedule != "dualpipe" and overlapped is not None:
        raise ValueError(f"overlapped (F&B) enters only schedule='dualpipe', not {schedule!r}")
    if np.any(w > b):
        raise ValueError("weight_backward must be at most backward (W is part of B)")
    if schedule == "1f1b":
        bubble = (p - 1) * (f + b)
    elif schedule == "zb1p":
        bubble = (p - 1) * (f + b - 2 * w)
    else:
        if np.any(p % 2):
            raise ValueError(f"stages must be even for schedule='dualpipe', got {shown(stages)}")
        bubble = (p / 2 - 1) * (fb + b - 3 * w)
    if np.any(bubble < 0):
        parts = "weight_backward (W)" + (" against overlapped (F&B) and backward (B)"
                                         if schedule == "dualpipe" else " against forward + backward")
        raise ValueError(f"{parts}: the bubble formula goes negative, W is too large (the "
                         "schedule cannot hide more than it has)")
    return result(bubble)


@dataclass(frozen=True)
class RingAttentionBlock:
    """The smallest Ring Attention block that hides its communication.

    Attributes:
        block (float | numpy.ndarray): Tokens c per block: c = (b / 2) F / B.
        min_seq_len (float | numpy.ndarray): Tokens per device, 6c (Liu et al. 2023).
    """

    block: object
    min_seq_len: object


@formula
def ring_attention_block(hardware_or_peak, bandwidth=None, *, link="intra", bytes_per_value=2,
                         dtype=None):
    """The smallest per-device block for Ring Attention to hide its transfers.

    Each device holds a block of c queries and passes its key and value blocks round the ring.
    While it sends one key/value block (2 c d values, 4cd bytes in 16 bits) it computes its
    queries against the block it has (q k^T and the probabilities times v: 4 d c^2 FLOPs).
    The transfer hides when 4 d c^2 / F >= 4 c d / B, i.e. c >= F / B with F the peak FLOP/s
    and B the one-direction bandwidth (Liu et al. 2023, Section 3; for other value sizes
    c = (b / 2) F / B). d cancels: the block depends on the device, not the model. The paper
    states, without deriving the factor, that a device needs s = 6c tokens. The count is for a
    full (unmasked) block in the forward pass. A causal mask leaves, with contiguous chunks,
    some ring steps with no useful work at all (a device's queries before the block's keys), so
    the condition fails on those steps; load-balanced (zig-zag) chunks give every step half a
    block's work, and then c >= 2F/B. Grouped-query attention shrinks the bytes by
    n_kv_heads / n_heads.
    ``link`` picks B from a ``Hardware`` as :func:`~flopsbook.dp_overlap_tokens` does.
    Broadcasts over arrays.

    Args:
        hardware_or_peak (Hardware | str | float | array-like): A ``Hardware`` or name (its
            ``peak_16bit``, or ``peak(dtype)``, and its link), or a peak in FLOP/s.
        bandwidth (float | str | array-like | None): One-direction bytes/s; needed with a
            numeric peak; with a ``Hardware`` it replaces the link's figure.

    Keyword Args:
        link (str): ``"intra"`` (the default), ``"inter"`` or ``"node"``.
        bytes_per_value (float | array-like): Bytes per key/value element, > 0. Default 2.
        dtype (str | None): With a ``Hardware``, the dtype whose peak is taken.

    Returns:
        RingAttentionBlock: ``block`` (tokens) and ``min_seq_len`` (tokens per device).

    Raises:
        ValueError: If an argument is not valid or the hardware lacks the link; the message
            names the argument.
    """
    peak = as_peak("hardware_or_peak", hardware_or_peak, dtype)
    w = _link_bandwidth(hardware_or_peak, bandwidth, link)
    v = as_array("bytes_per_value", bytes_per_value)
    block = np.asarray(peak / w * v / 2, dtype=np.float64)
    return RingAttentionBlock(result(block), result(6 * block))


@formula
def expert_parallel_bytes(m, tokens, ep, *, bytes_per_value=2):
    """Bytes one device sends in one MoE layer's all-to-alls with expert parallelism.

    The experts are split over ``ep`` devices, each holding n_experts/ep of them. Each of the
    device's ``tokens`` goes to its top_k experts: with routing spread evenly, (ep - 1)/ep of
    the tokens*top_k*d values leave the device (dispatch) and come back weighted (combine); the
    backward pass sends their gradients the opposite way. Shared experts and the router stay
    local. Real routers are not balanced: the busiest device sends more (DeepSeek-V3 limits
    each token to 4 nodes). Broadcasts over the numeric arguments.

    Args:
        m (Transformer | str): A mixture-of-experts model (``n_experts > 1``) or its name.
        tokens (int | str | array-like): Tokens on the device in the micro-batch, > 0.
        ep (int | str | array-like): Expert-parallel devices, a whole number > 0 dividing
            ``n_experts``.

    Keyword Args:
        bytes_per_value (float | array-like): Bytes per value, > 0 (DeepSeek-V3 dispatches in
            FP8, 1, and combines in BF16, 2). Default 2.

    Returns:
        ParallelBytes: ``forward`` (dispatch and combine, half each), ``backward`` and
        ``total`` bytes per MoE layer and micro-batch.

    Raises:
        ValueError: If ``m`` is dense, ``ep`` does not divide the experts, or an argument is
            not valid; the message names the argument.
    """
    m = as_spec(m)
    if not m.is_moe:
        raise ValueError(f"m: {m.name} is dense (n_experts=1); expert parallelism needs a "
                         "mixture of experts")
    t = as_array("tokens", tokens, integer=True, kind="count")
    e = as_array("ep", ep, integer=True, kind="count")
    if np.any(m.n_experts % e):
        raise ValueError(f"ep={shown(ep)} must divide n_experts={m.n_experts}")
    v = as_array("bytes_per_value", bytes_per_value)
    one_way = _ring(e) * t * m.top_k * m.d_model * v
    return _bytes(2 * one_way, 2 * one_way)


# --- choosing a layout --------------------------------------------------------------------

AXES = ("tp", "cp", "pp", "dp")        # the mesh, fastest link first (Llama 3's order)
MAX_DEVICES = 10**7                     # a search bound far beyond any cluster built
MAX_MICRO_BATCH = 64


@dataclass(slots=True)   # not frozen: a search builds 10^5 of them, and frozen inits are slow
class Layout:
    """One way to lay a training step out on a cluster (see :func:`parallel_layouts`).

    Attributes:
        dp (int): Data-parallel copies.
        tp (int): Tensor-parallel ways (with sequence parallelism when ``tp > 1`` and asked).
        pp (int): Pipeline stages.
        cp (int): Context-parallel ways (each sequence split over cp devices).
        ep (int): Expert-parallel ways, within the data-parallel devices (1 for a dense model).
        zero_stage (int): ZeRO stage of the model states, 0 to 3.
        recompute (str): ``"none"``, ``"selective"`` or ``"full"``.
        micro_batch (int): Sequences per micro-batch.
        micro_batches (int): Micro-batches per optimizer step on each data-parallel copy.
        interleave (int): Model chunks per device in the pipeline schedule (1: plain 1F1B).
        memory_per_device (float): Bytes per device (:func:`~flopsbook.memory_budget`).
        step_time (float): Predicted seconds per optimizer step: ``compute + bubble`` plus the
            exposed communication of every axis.
        mfu (float): Model FLOPs (6 N D plus attention, causal, no recomputation) over the step
            time times the cluster's peak.
        compute (float): Seconds of matmuls on the busiest stage (recomputation included).
        bubble (float): Seconds the pipeline idles.
        communication (dict[str, float]): Exposed seconds by axis (``"tp"``, ``"cp"``,
            ``"pp"``, ``"dp"``, ``"ep"``).
        links (dict[str, str]): ``"intra"`` or ``"inter"``: the link each axis runs on.
    """

    dp: int
    tp: int
    pp: int
    cp: int
    ep: int
    zero_stage: int
    recompute: str
    micro_batch: int
    micro_batches: int
    interleave: int
    memory_per_device: float
    step_time: float
    mfu: float
    compute: float
    bubble: float
    communication: dict
    links: dict

    def as_dict(self) -> dict:
        """Every field by name (the per-axis dictionaries flattened as ``comm_tp``, ...).

        Returns:
            dict[str, object]: For tables (one row per layout).
        """
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("communication", "links")}
        out.update({f"comm_{k}": v for k, v in self.communication.items()})
        return out


def _divisors(n: int, limit: int | None = None) -> list[int]:
    """The divisors of n (those up to ``limit``), ascending: a loop to sqrt(n)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    found = sorted(set(small) | {n // d for d in small})
    return found if limit is None else [d for d in found if d <= limit]


def _candidates(name, given, default):
    """The sizes to search for one axis: all of ``default``, or the caller's (an int or ints)."""
    if given is None:
        return default
    if isinstance(given, np.ndarray):
        if given.ndim > 1:
            raise ValueError(f"{name} must be a whole number or a flat list of them, got an "
                             f"array of shape {given.shape}")
        given = given.tolist()
    values = list(given) if isinstance(given, (list, tuple)) else [given]
    if not values:
        raise ValueError(f"{name} must be a whole number > 0 or a non-empty list of them")
    values = sorted({int(as_array(name, v, integer=True, kind="count", upper=MAX_DEVICES))
                     for v in values})
    wrong = [v for v in values if v not in default]
    if wrong:   # an explicit size the model or the cluster cannot take: say so, not []
        shown_default = ", ".join(map(str, default[:24])) + (" ..." if len(default) > 24 else "")
        raise ValueError(f"{name}={', '.join(map(str, wrong))} is not possible here; allowed: "
                         f"{shown_default}")
    return values


@formula
def parallel_layouts(m, hardware, n_devices, *, seq_len, global_batch_tokens,
                     matmul_efficiency=0.5, precision="mixed", optimizer="adamw",
                     grad_dtype=None, flash_attention=True, dropout=False, logits_dtype="fp32",
                     buffers=0.0, sequence_parallel=True, interleave=1, zero_stages=(0, 1, 2, 3),
                     recompute=("none", "selective", "full"), tp=None, pp=None, cp=None,
                     ep=None, micro_batch=None, mesh_order=AXES, ep_overlap=False, top=None):
    """Every layout of a training step that fits memory, fastest predicted step first.

    Searches the data- (dp), tensor- (tp), pipeline- (pp), context- (cp) and expert-parallel
    (ep) sizes whose product dp * tp * pp * cp is ``n_devices``, ZeRO stages, recomputation and
    micro-batch sizes; keeps those whose :func:`~flopsbook.memory_budget` fits the device
    (the pipeline's first stage holding min(p, m) micro-batches, times 1 + (p - 1)/(p v) when
    interleaved); predicts each one's step time. Constraints: tp within a node
    (``devices_per_node``) and dividing the heads (query and key/value heads, or a multiple of
    the key/value heads, which are then replicated) and the FFN width; pp at most the layers
    (the busiest stage holds ceil(L / p)); cp dividing ``seq_len``; dp dividing the batch's
    sequences; ep dividing the experts and dp * cp; with sequence parallelism, tp dividing the
    micro-batch's tokens per device.

    The step-time model, per optimizer step, for the busiest device:

    - **compute**: the training FLOPs of the step (causal attention, logits, recomputation's
      extra forward) over the devices, at ``matmul_efficiency`` of the 16-bit peak, scaled by
      the busiest stage's share of the layers; but at least three reads of the stage's
      weights from memory per micro-batch (forward, and the backward's two products; four
      with full recomputation) at the HBM ``bandwidth``: the roofline of a small micro-batch;
    - **bubble**: :func:`pipeline_bubble` (p, m, v) times the compute;
    - **tp**: :func:`tensor_parallel_bytes` of every layer of the stage and micro-batch (the
      forward's again with full recomputation), not overlapped (Megatron's default);
    - **cp**: the key/value blocks (forward) and their gradients (backward) that Ring Attention
      passes, (c - 1)/c of 2 s d_kv values per layer and micro-batch forward and twice that
      backward, hidden behind the layer's attention compute as far as it lasts;
    - **pp**: :func:`pipeline_p2p_bytes` per micro-batch and model chunk, not overlapped;
    - **dp**: :func:`~flopsbook.data_parallel_bytes` of the stage's parameters (expert
      parameters over their own smaller group) hidden behind the backward of the last
      micro-batch (stages 0 and 1), of every micro-batch (stage 2) or all compute (stage 3);
    - **ep**: :func:`expert_parallel_bytes` of the stage's MoE layers, not overlapped, or
      with ``ep_overlap`` hidden behind the MoE layers' compute as far as it lasts
      (DeepSeek-V3's DualPipe runs one micro-batch's all-to-alls during another's compute).

    Collectives are priced by bandwidth alone (no per-message latency: see
    :func:`~flopsbook.collective_time` for small messages), and an axis whose group spans
    nodes is priced entirely at the inter-node rate, even if most of its hops stay inside one.

    Each axis runs on the intra-node link when the devices of its group, with the axes inside
    it in ``mesh_order`` (default [tp, cp, pp, dp], fastest link first, as Llama 3 orders
    them), fit in one node, else on the inter-node link (one network card per device); ep is
    carved from the inside of dp. Sorted by predicted step time.

    Args:
        m (Transformer | str): The model: a :class:`~flopsbook.Transformer` or a registry name.
        hardware (Hardware | str): The device, with its links (``intra_node_bandwidth``,
            ``inter_node_bandwidth``, ``devices_per_node``).
        n_devices (int | str): Devices in the job, a whole number from 1 to 10^7.

    Keyword Args:
        seq_len (int | str): Tokens per sequence, > 0.
        global_batch_tokens (int | str | float): Tokens per optimizer step, a multiple of
            ``seq_len``.
        matmul_efficiency (float): Fraction of the 16-bit peak the matmuls reach, in (0, 1].
            Default 0.5.
        precision (str): As :func:`~flopsbook.memory_budget`. Default ``"mixed"``.
        optimizer (str): As :func:`~flopsbook.memory_budget`. Default ``"adamw"``.
        grad_dtype (str | None): As :func:`~flopsbook.memory_budget`. Default None.
        flash_attention (bool): A fused attention kernel (no s^2 tensors). Default True.
        dropout (bool): Whether the model uses dropout. Default False.
        logits_dtype (str | None): As :func:`~flopsbook.memory_budget`. Default ``"fp32"``.
        buffers (float | str): As :func:`~flopsbook.memory_budget`. Default 0.
        sequence_parallel (bool): Sequence parallelism with tp > 1. Default True.
        interleave (int | list[int]): Model chunks v per device in the pipeline schedule
            (interleaved 1F1B), > 0, or several to search (a list or tuple). Default 1.
        zero_stages (int | list[int]): ZeRO stages to search. Default all four.
        recompute (str | list[str]): Recomputation options to search. Default all three.
        tp (int | list[int] | None): Tensor-parallel sizes to search; None (the default)
            searches every valid size. So do ``pp``, ``cp``, ``ep`` and ``micro_batch``
            (micro-batches up to 64 sequences).
        pp (int | list[int] | None): Pipeline stages to search.
        cp (int | list[int] | None): Context-parallel sizes to search.
        ep (int | list[int] | None): Expert-parallel sizes to search.
        micro_batch (int | list[int] | None): Micro-batch sizes (sequences, 1 to 64) to
            search; each layout takes those that divide its copy's batch.
        mesh_order (tuple[str, ...]): The axes ``"tp"``, ``"cp"``, ``"pp"``, ``"dp"`` from
            the fastest link outward. Default ``("tp", "cp", "pp", "dp")``.
        ep_overlap (bool): Hide the expert all-to-alls behind compute (DualPipe). Default
            False.
        top (int | None): Return only the fastest ``top``; None (the default) returns all.

    Returns:
        list[Layout]: The layouts that fit, fastest first (empty when none fits).

    Raises:
        ValueError: If an argument is not valid (the batch not a whole number of sequences,
            the hardware without its link figures, an unknown axis); the message names it.
    """
    from ._validate import as_hardware
    from .communication import data_parallel_bytes
    from .flops import flops_per_token
    from .memory import RECOMPUTE, ZERO_STAGES, memory_budget
    from .spec import param_breakdown

    m = as_spec(m)
    hw = as_hardware(hardware)
    n = int(_one("n_devices", n_devices, integer=True, kind="count", upper=MAX_DEVICES))
    s = int(_one("seq_len", seq_len, integer=True, kind="count"))
    tokens = _one("global_batch_tokens", global_batch_tokens, integer=True, kind="count")
    if tokens % s:
        raise ValueError(f"global_batch_tokens={shown(global_batch_tokens)} must be a multiple "
                         f"of seq_len={s} (whole sequences)")
    sequences = int(tokens // s)
    eff = _one("matmul_efficiency", matmul_efficiency, upper=1.0)
    sp = as_bool("sequence_parallel", sequence_parallel)
    ep_overlap = as_bool("ep_overlap", ep_overlap)
    stages = _options("zero_stages", zero_stages, ZERO_STAGES)
    recomputes = _options("recompute", recompute, RECOMPUTE)
    order = list(mesh_order) if isinstance(mesh_order, (list, tuple)) else None
    if order is None or sorted(map(str, order)) != sorted(AXES):
        raise ValueError(f"mesh_order must order the axes {', '.join(AXES)} (each once), got "
                         f"{shown(mesh_order)}")
    for name in ("intra_node_bandwidth", "inter_node_bandwidth", "devices_per_node"):
        if getattr(hw, name) is None:
            raise ValueError(f"hardware: {hw.name} has no {name} in the registry; pass a "
                             "Hardware with its links")
    if top is not None:
        top = int(_one("top", top, integer=True, kind="count"))
    node = hw.devices_per_node

    divisors = _divisors(n)
    tps = _candidates("tp", tp, [t for t in divisors if t <= node and _tensor_parallel_ok(m, t)])
    pps = _candidates("pp", pp, [p for p in divisors if p <= m.n_layers])
    cps = _candidates("cp", cp, [c for c in divisors if s % c == 0])
    interleaves = _candidates("interleave", interleave, list(range(1, m.n_layers + 1)))
    # A dense model takes ep=1 only (its error lists just that).
    eps = _candidates("ep", ep, _divisors(m.n_experts) if m.is_moe else [1])
    # Micro-batch sizes are checked here and matched to each layout's batch below.
    micro_batches = None if micro_batch is None else \
        _candidates("micro_batch", micro_batch, list(range(1, MAX_MICRO_BATCH + 1)))
    rows = []
    for t in tps:
        for p in pps:
            for c in cps:
                if n % (t * p * c):
                    continue
                dp = n // (t * p * c)
                if sequences % dp:
                    continue
                local = sequences // dp
                sizes = range(1, min(local, MAX_MICRO_BATCH) + 1) if micro_batches is None \
                    else micro_batches
                for mb in sizes:
                    # Sequence parallelism splits each micro-batch's tokens t ways evenly.
                    if local % mb or (sp and (mb * (s // c)) % t):
                        continue
                    for e in eps:
                        if m.is_moe and (m.n_experts % e or (dp * c) % e):
                            continue
                        for v in interleaves:
                            if v > 1 and (p == 1 or p * v > m.n_layers):
                                continue
                            rows.append((dp, t, p, c, e, mb, local // mb, v))
    if not rows:
        return []
    dp, t, p, c, e, mb, k, v = (np.array(col, dtype=np.float64) for col in zip(*rows))

    # Compute: FLOPs per token of the step, model (MFU's numerator) and recomputed.
    model_per_token = float(flops_per_token(m, s, causal=True))
    fwd = dict(training=False, causal=True, include_logits=False)
    layers_fwd = float(flops_per_token(m, s, **fwd))
    attention_fwd = layers_fwd - float(flops_per_token(m, s, include_attention=False, **fwd))
    peak = hw.peak_16bit
    stage_layers = np.ceil(m.n_layers / (p * v)) * v   # v chunks of ceil(L / (p v)) layers
    imbalance = stage_layers * p / m.n_layers
    moe_layers = stage_layers * m.n_moe_layers / m.n_layers

    # Links: an axis is inside a node when its group and the axes inside it fit in one.
    sizes = {"tp": t, "cp": c, "pp": p, "dp": dp}
    inner, bandwidth, link = np.ones_like(t), {}, {}
    for axis in order:
        inner = inner * sizes[axis]
        if axis == "dp":
            ep_inside = inner / dp * e <= node
            bandwidth["ep"] = np.where(ep_inside, hw.intra_node_bandwidth,
                                       hw.inter_node_bandwidth)
            link["ep"] = ep_inside
        inside = inner <= node
        bandwidth[axis] = np.where(inside, hw.intra_node_bandwidth, hw.inter_node_bandwidth)
        link[axis] = inside

    b_act = 4 if precision == "fp32" else 2
    tokens_per_mb = mb * s / c
    tp_bytes = tensor_parallel_bytes(m, mb, s / c, t, bytes_per_value=b_act)
    p2p = pipeline_p2p_bytes(m, mb, s / c, tensor_parallel=t, sequence_parallel=sp,
                             bytes_per_value=b_act).total
    cp_forward = (c - 1) / c * 2 * mb * s * m.d_kv * b_act
    # One layer's attention, forward and backward: what the ring's transfers hide behind.
    cp_compute = 3 * attention_fwd / m.n_layers * tokens_per_mb / (peak * eff)
    parts = param_breakdown(m)
    grad_b = (4 if precision == "fp32" else 2) if grad_dtype is None else \
        {"fp32": 4, "bf16": 2, "fp16": 2}[grad_dtype]
    param_b = 4 if precision == "fp32" else 2
    expert_params = parts["experts"] * np.where(p == 1, 1.0, stage_layers / m.n_layers)
    stage_params = parts["total"] * np.where(p == 1, 1.0, stage_layers / m.n_layers) \
        - expert_params
    ep_bytes = expert_parallel_bytes(m, tokens_per_mb, e, bytes_per_value=b_act).total \
        if m.is_moe else 0.0 * t

    # A micro-batch of few tokens cannot keep the matmuls busy: each pass (forward, and the
    # backward's two products) reads the stage's weights from memory, so a micro-batch takes
    # at least 3 reads of them at the HBM bandwidth (the roofline of the first chapter).
    weight_reads = k * 3 * (stage_params / t + expert_params / (t * e)) * param_b \
        / hw.bandwidth
    columns = []                       # per (recompute, stage): the fitting layouts' values
    for r in recomputes:
        extra = {"none": 0.0, "selective": attention_fwd, "full": layers_fwd}[r]
        compute = np.maximum(tokens * (model_per_token + extra) / (n * peak * eff) * imbalance,
                             weight_reads * (4 / 3 if r == "full" else 1))
        bubble = pipeline_bubble(p, k, interleave=v) * compute
        tp_time = stage_layers * k * (tp_bytes.total + (tp_bytes.forward if r == "full"
                                                        else 0)) / bandwidth["tp"]
        cp_time = np.maximum(0.0, stage_layers * k * (3 * cp_forward / bandwidth["cp"]
                                                      - cp_compute))
        pp_time = np.where(p > 1, k * v * p2p / bandwidth["pp"], 0.0)
        ep_time = moe_layers * k * ep_bytes / bandwidth["ep"]
        if ep_overlap:     # DualPipe: one micro-batch's all-to-alls behind another's compute
            ep_time = np.maximum(0.0, ep_time - compute * moe_layers / stage_layers)
        in_flight = np.ceil(np.minimum(p, k) * (1 + (p - 1) / (p * v) * (v > 1)))
        for z in stages:
            dp_sent = data_parallel_bytes(stage_params / t, dp * c, zero_stage=z,
                                          bytes_per_value=grad_b, param_bytes_per_value=param_b,
                                          micro_batches=k).total
            if m.is_moe:
                dp_sent = dp_sent + np.where(
                    dp * c / e > 1, data_parallel_bytes(
                        np.maximum(expert_params / (t * e), 1.0), np.maximum(dp * c / e, 1),
                        zero_stage=z, bytes_per_value=grad_b, param_bytes_per_value=param_b,
                        micro_batches=k).total, 0.0)
            window = {0: 2 / 3 / k, 1: 2 / 3 / k, 2: 2 / 3, 3: 1.0}[z] * compute
            dp_time = np.maximum(0.0, dp_sent / bandwidth["dp"] - window)
            memory = memory_budget(
                m, mb, s, n_devices=n, tensor_parallel=t, sequence_parallel=sp,
                pipeline_parallel=p, micro_batches_in_flight=in_flight, context_parallel=c,
                expert_parallel=e, zero_stage=z, recompute=r, flash_attention=flash_attention,
                dropout=dropout, precision=precision, optimizer=optimizer,
                grad_dtype=grad_dtype, logits_dtype=logits_dtype, buffers=buffers).total
            step = compute + bubble + tp_time + cp_time + pp_time + dp_time + ep_time
            fits = np.asarray(memory) <= hw.memory_bytes
            block = {"dp": dp, "tp": t, "pp": p, "cp": c, "ep": e, "zero_stage": z + 0 * t,
                     "recompute": np.full(t.shape, RECOMPUTE.index(r)), "micro_batch": mb,
                     "micro_batches": k, "interleave": v, "memory_per_device": memory,
                     "step_time": step, "compute": compute, "bubble": bubble,
                     "comm_tp": tp_time, "comm_cp": cp_time, "comm_pp": pp_time,
                     "comm_dp": dp_time, "comm_ep": ep_time}
            block.update({f"link_{key}": value for key, value in link.items()})
            columns.append({key: np.broadcast_to(value, t.shape)[fits]
                            for key, value in block.items()})
    table = {key: np.concatenate([col[key] for col in columns]) for key in columns[0]}
    # Fastest first; ties (ZeRO stages whose traffic hides alike) go to the smaller memory,
    # then to the fewer devices split by model parallelism.
    order = np.lexsort((table["tp"] * table["pp"] * table["cp"] * table["ep"],
                        table["memory_per_device"], table["step_time"]))
    if top is not None:
        order = order[:top]
    rows = {key: value[order].tolist() for key, value in table.items()}
    model_flops = tokens * model_per_token / (n * peak)
    axes = ("tp", "cp", "pp", "dp", "ep")
    out = []
    for (dp_, tp_, pp_, cp_, ep_, z, r, mb_, k_, v_, memory, step, compute, bubble, *rest) in zip(
            *(rows[key] for key in ("dp", "tp", "pp", "cp", "ep", "zero_stage", "recompute",
                                    "micro_batch", "micro_batches", "interleave",
                                    "memory_per_device", "step_time", "compute", "bubble")),
            *(rows[f"comm_{key}"] for key in axes), *(rows[f"link_{key}"] for key in link)):
        out.append(Layout(int(dp_), int(tp_), int(pp_), int(cp_), int(ep_), int(z),
                          RECOMPUTE[r], int(mb_), int(k_), int(v_), memory, step,
                          model_flops / step, compute, bubble, dict(zip(axes, rest[:5])),
                          {key: "intra" if inside else "inter"
                           for key, inside in zip(link, rest[5:])}))
    return out


def _one(name, value, **kw):
    """A single number (the search is over its own lists, not broadcast arrays)."""
    arr = as_array(name, value, **kw)
    if arr.ndim:
        raise ValueError(f"{name} must be a single value for parallel_layouts (search several "
                         f"sizes through tp=, pp=, ... lists), got {shown(value)}")
    return float(arr)


def _options(name, value, allowed):
    """One allowed value or a list/tuple of them, as a list (numpy integers read as ints)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError(f"{name} must name at least one of {', '.join(map(repr, allowed))}")
    chosen = [choice(name, int(v) if isinstance(v, np.integer) else v, allowed) for v in values]
    return list(dict.fromkeys(chosen))             # each once: no duplicate layouts
